//! The kernel layer: the inner loops every forward pass runs, chosen once per call.
//!
//! Each kernel works on plain column-major slices (nalgebra's storage order), so the public
//! types hand their storage straight through with no copies:
//!
//! - `linear`: `out = x · Wᵀ + b` for a whole sequence (the Q/K/V and output projections);
//! - `attention`: fused streaming attention for one head: scores, online softmax and the
//!   weighted sum of values in one pass over the keys, never holding more than a block of
//!   scores, so no `SQ × SKV` matrix exists. It can write each output over the query it came
//!   from, which is how a layer's heads end up where its queries were;
//! - `attention_with_weights`: the same result plus the post-softmax weights, written into a
//!   caller-provided `SQ × SKV` matrix (only when the caller asked for weights).
//!
//! Both attention kernels take two logit variants with the problem (`Problem`), in every path:
//!
//! - **soft-capping** (Gemma 2): with a cap `c > 0`, a score `z = scale · q·k` becomes
//!   `c · tanh(z / c)` before the mask's additive bias and ALiBi are added; a masked key
//!   stays `−∞`, so its NaN still never leaks;
//! - **attention sinks** (gpt-oss): a sink logit `s` joins every row's softmax denominator and
//!   carries no value, so row `i`'s weights are `e^(z_ij − m) / (e^(s − m) + Σ_j e^(z_ij − m))`
//!   (`m` the maximum over the row's scores and `s`) and sum to `1 − e^(s − m)/denominator`.
//!   The online softmax starts each row at `m = s`, `l = 1` instead of `m = −∞`, `l = 0`. A row
//!   whose keys are all masked still gets zero outputs and zero weights; a sink of `−∞` is no
//!   sink; a NaN or `+∞` sink makes every output and weight of the call NaN.
//!
//! Neither costs the plain problem anything in its inner loops: the sink only sets the
//! starting state, and the cap is a pass of its own over each block of scores (each key, in
//! the scalar kernel), taken only when a cap is set, after which the scaling step multiplies
//! by 1. The vector kernels cap with a vectorised `tanh` (`Simd::tanh`, relative error below
//! 2e-7 for `f32` and 5e-16 for `f64`), the scalar kernel with the platform's.
//!
//! Two implementations sit behind them, chosen by [`Kernel`]:
//!
//! - `scalar.rs`, the portable reference: plain loops, the kernel every other one is tested
//!   against, and the one `force-scalar` pins;
//! - `vector/`, the SIMD kernels, written once over the `Simd` instruction-set trait
//!   (`simd.rs`) and compiled per instruction set: on x86-64 (`x86.rs`) AVX2 + FMA (8 `f32` or
//!   4 `f64` lanes, 16 registers, micro-tiles 6 wide) and AVX-512F (16 `f32` or 8 `f64` lanes,
//!   32 registers, micro-tiles 12 wide), each compiled with `#[target_feature]` so the default
//!   target (no `-C target-cpu`) gets them all; on aarch64 (`arm.rs`) NEON;
//! - `bf16.rs` and `arm_bf16.rs`, the projections of `bf16` weights in `bf16` products with
//!   AVX512-BF16 (`vdpbf16ps`) and Arm's BF16 extension (`BFDOT`), and on AVX512-BF16 the
//!   attention of `bf16` layers: the entries by which [`Kernel::Avx512Bf16`]'s and
//!   [`Kernel::NeonBf16`]'s tables differ from AVX-512's and NEON's (see [`crate::Weight`] for
//!   their accuracy);
//! - `bf16_widen.rs`, the x86-64 projections of `bf16` weights in exact `f32` products (AVX-512
//!   and AVX2), each weight widened as the micro-kernel broadcasts it (a masked 16-bit
//!   broadcast; on AVX2 a 32-bit broadcast and an `and`);
//! - `int8.rs`, `int8_avx2.rs` and `arm_int8.rs`, the projections of `i8` weights in integer
//!   products, bit for bit as the scalar kernel's: AVX512-VNNI (`vpdpbusd`), AVX2 (16-bit
//!   pairs with `vpmaddwd`, or `vpdpbusd` on 256 bits with AVX-VNNI) and Arm's dot product
//!   (`SDOT`); `amx.rs`, the same projections in AMX tile products (`tdpbssd`); `amx_bf16.rs`,
//!   the projections of `bf16` weights in AMX tile products (`tdpbf16ps`);
//!   `amx_attention.rs`, the attention of `i8` layers in AMX tile products; `dsp.rs`, the
//!   scalar kernel's `i8` inner loop on a Cortex-M with the DSP extension (`SMLAD`).
//!
//! **Dispatch happens once per call.** Each instruction set has one table of functions per
//! scalar type (`Table`); an entry point asks for the table of the [`selected`] kernel once
//! and passes it down, so the inner loops never ask which instruction set they run on, and
//! threads sharing a call's work run the caller's kernel. [`detect`] picks the best kernel the
//! CPU runs, once per process (with `std` through `is_x86_feature_detected!`; without, through
//! `cfg!(target_feature)` or CPUID and XGETBV); with `std`, [`with_kernel`] overrides the
//! choice on one thread (the benchmarks compare kernels that way).
//!
//! The layer sits at the bottom of the crate: it depends on the scalar and weight types and
//! on what it owns (the weight layout, mask patterns, the argument types), never on the
//! modules built on it.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_attention;
#[cfg(target_arch = "x86_64")]
mod amx_bf16;
mod args;
#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "aarch64")]
mod arm_bf16;
#[cfg(target_arch = "aarch64")]
mod arm_int8;
#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(target_arch = "x86_64")]
mod bf16_widen;
#[cfg(any(test, static_attention_dsp))]
mod dsp;
mod float;
#[cfg(target_arch = "x86_64")]
mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_avx2;
pub(crate) mod layout;
pub(crate) mod math;
pub(crate) mod pattern;
mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd;
mod table;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod vector;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use args::{Dims, LinearIo, MaskView, PANEL_ROWS, Problem, QueryIo, Work, WorkRef};
pub use args::{KEY_BLOCK, TILE_QUERIES};
pub use float::Float;
pub(crate) use table::{Projection, Table};

/// An attention kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Portable Rust loops; the reference every other kernel is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA (with F16C for half-precision weights): 8 `f32` or 4 `f64` lanes,
    /// register-blocked micro-kernels and a vectorised `exp`; `bf16` weights are widened to
    /// `f32` in registers as the micro-kernel broadcasts them; `i8` weights multiply as
    /// 16-bit integer pairs (`vpmaddwd`, exact `i32` sums) or, where the CPU has AVX-VNNI
    /// (detected once), as bytes (`vpdpbusd` on 256 bits).
    Avx2Fma,
    /// aarch64 NEON: the same kernels on 4 `f32` or 2 `f64` lanes, 12-wide micro-tiles (32
    /// registers). Part of the aarch64 baseline, so chosen there wherever
    /// [`Kernel::NeonBf16`] is not.
    Neon,
    /// x86-64 AVX-512F and AVX512-BW (with AVX2, FMA and F16C): the same kernels on 16 `f32`
    /// or 8 `f64` lanes, with micro-tiles twice as wide (32 vector registers); `bf16` weights
    /// are widened to `f32` in registers as the micro-kernel broadcasts them; `i8` weights
    /// multiply in `vpdpbusd` on 512 bits where the CPU has AVX512-VNNI (Cascade Lake, Ice
    /// Lake), as [`Kernel::Avx2Fma`]'s 16-bit pairs otherwise.
    Avx512,
    /// x86-64 AVX-512F with AVX512-BF16, AVX512-BW and AVX512-VNNI (every CPU with BF16 has
    /// VNNI): [`Kernel::Avx512`], except that layers with `bf16` weights compute their
    /// projections in `bf16` products (`vdpbf16ps`, summed in `f32`; AMX tile products,
    /// `tdpbf16ps`, where the CPU has AMX), their inputs rounded to `bf16` (see
    /// [`crate::Weight`] for the accuracy this gives), and their attention too except with
    /// AMX (where `vdpbf16ps` runs at half the `f32` FMA rate and the `f32` attention is the
    /// faster), and layers with `i8` weights theirs in `i8` products (exact `i32` sums): AMX
    /// tile products (`tdpbssd`) where the CPU has AMX (AMX-TILE, AMX-INT8 and AMX-BF16:
    /// Sapphire Rapids and later) and the OS lets the process use the tiles (Linux: asked for
    /// once, with `arch_prctl`), 512-bit
    /// `vpdpbusd` otherwise; both give the same bits. With AMX, the attention of layers with
    /// `i8` weights runs in tile products too (`QKᵀ` and `P·V` in integers, the softmax in
    /// `f32`; see [`crate::Weight`] for its accuracy). Everything else is
    /// [`Kernel::Avx512`]'s.
    Avx512Bf16,
    /// aarch64 NEON with the BF16 and dot-product extensions (FEAT_BF16 and FEAT_DotProd:
    /// Neoverse V1/N2 and later, Apple M2 and later; the dot product is part of Armv8.4-A and
    /// BF16 of Armv8.6-A, and the cores with BF16 have both): [`Kernel::Neon`], except that
    /// layers with `bf16` weights compute their projections in `bf16` products (`BFDOT`) and
    /// layers with `i8` weights theirs in `i8` products (`SDOT`, exact `i32` sums), as
    /// [`Kernel::Avx512Bf16`] does.
    NeonBf16,
}

impl Kernel {
    /// A short name for reports and benchmarks, and what `STATIC_ATTENTION_REQUIRE_KERNEL`
    /// names in the crate's tests: `scalar`, `avx2+fma`, `avx512`, `avx512+bf16`, `neon`,
    /// `neon+bf16`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2Fma => "avx2+fma",
            Kernel::Avx512 => "avx512",
            Kernel::Avx512Bf16 => "avx512+bf16",
            Kernel::Neon => "neon",
            Kernel::NeonBf16 => "neon+bf16",
        }
    }

    /// Every kernel this crate has, whether or not this CPU runs it.
    pub const ALL: [Kernel; 6] = [
        Kernel::Scalar,
        Kernel::Avx2Fma,
        Kernel::Avx512,
        Kernel::Avx512Bf16,
        Kernel::Neon,
        Kernel::NeonBf16,
    ];

    /// The kernels this CPU (and build) runs, [`Kernel::Scalar`] first: what to loop over to
    /// compare them through [`with_kernel`].
    ///
    /// ```
    /// use static_attention::kernels::Kernel;
    ///
    /// let mut here = Kernel::supported();
    /// assert_eq!(here.next(), Some(Kernel::Scalar));
    /// assert!(here.all(|k| k.is_supported()));
    /// ```
    pub fn supported() -> impl Iterator<Item = Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_supported())
    }

    /// Whether this CPU (and build) can run the kernel.
    #[must_use]
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => x86::avx2_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => x86::avx512_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => x86::avx512_bf16_available(),
            Kernel::Neon => cfg!(all(target_arch = "aarch64", target_feature = "neon")),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonBf16 => arm::bf16_dotprod_available(),
            #[cfg(not(target_arch = "aarch64"))]
            Kernel::NeonBf16 => false,
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 | Kernel::Avx512Bf16 => false,
        }
    }
}

/// The best kernel this build and CPU support: [`Kernel::Avx512Bf16`] on x86-64 with
/// AVX-512F, AVX512-BF16, AVX512-BW and AVX512-VNNI, else [`Kernel::Avx512`] with AVX-512F and
/// AVX512-BW, else
/// [`Kernel::Avx2Fma`] with AVX2 and FMA; [`Kernel::NeonBf16`] on aarch64 with the BF16 and
/// dot-product extensions, else [`Kernel::Neon`]; else
/// [`Kernel::Scalar`]. With the `force-scalar` feature it is always [`Kernel::Scalar`]. Each
/// call runs the detection; [`selected`] caches it.
#[must_use]
pub fn detect() -> Kernel {
    if cfg!(feature = "force-scalar") {
        return Kernel::Scalar;
    }
    [
        Kernel::Avx512Bf16,
        Kernel::Avx512,
        Kernel::Avx2Fma,
        Kernel::NeonBf16,
        Kernel::Neon,
    ]
    .into_iter()
    .find(|k| k.is_supported())
    .unwrap_or(Kernel::Scalar)
}

/// The kernel the forward passes use: [`detect`]'s choice, made once per process, or the
/// thread's override (see [`with_kernel`]). Every entry point reads it once, at its start.
#[inline]
#[must_use]
pub fn selected() -> Kernel {
    #[cfg(feature = "std")]
    if let Some(k) = OVERRIDE.with(core::cell::Cell::get) {
        return k;
    }
    cached()
}

/// [`detect`], run once and remembered (an atomic byte: 0 = not yet detected).
fn cached() -> Kernel {
    use core::sync::atomic::{AtomicU8, Ordering};
    static CHOICE: AtomicU8 = AtomicU8::new(0);
    match CHOICE.load(Ordering::Relaxed) {
        1 => Kernel::Scalar,
        2 => Kernel::Avx2Fma,
        3 => Kernel::Avx512,
        4 => Kernel::Neon,
        5 => Kernel::Avx512Bf16,
        6 => Kernel::NeonBf16,
        _ => {
            let k = detect();
            CHOICE.store(
                match k {
                    Kernel::Scalar => 1,
                    Kernel::Avx2Fma => 2,
                    Kernel::Avx512 => 3,
                    Kernel::Neon => 4,
                    Kernel::Avx512Bf16 => 5,
                    Kernel::NeonBf16 => 6,
                },
                Ordering::Relaxed,
            );
            k
        }
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    static OVERRIDE: core::cell::Cell<Option<Kernel>> = const { core::cell::Cell::new(None) };
}

/// Why [`with_kernel`] could not run a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported(pub Kernel);

impl core::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "the {} kernel does not run on this CPU", self.0.name())
    }
}

impl core::error::Error for Unsupported {}

/// Runs `f` with `kernel` in place of the detected one, on this thread only (with `std`).
/// Calls made inside `f` that spread their work over threads (the `rayon` feature) run the
/// same kernel on every thread. Benchmarks and tests use it to compare kernels; nothing else
/// needs it.
///
/// ```
/// use static_attention::kernels::{Kernel, selected, with_kernel};
/// use static_attention::{Mask, MultiHead, SMatrix};
///
/// let layer = MultiHead::<8, 16, 2>::from_seed(1);
/// let x = SMatrix::<f32, 8, 16>::repeat(0.25);
/// let fast = layer.forward(&x, &Mask::none());
/// let slow = with_kernel(Kernel::Scalar, || {
///     assert_eq!(selected(), Kernel::Scalar);
///     layer.forward(&x, &Mask::none())
/// })?;
/// assert!((fast - slow).amax() < 2e-6);
/// # Ok::<(), static_attention::kernels::Unsupported>(())
/// ```
///
/// # Errors
///
/// [`Unsupported`] if the CPU cannot run `kernel`; `f` is not called then.
#[cfg(feature = "std")]
pub fn with_kernel<R>(kernel: Kernel, f: impl FnOnce() -> R) -> Result<R, Unsupported> {
    if !kernel.is_supported() {
        return Err(Unsupported(kernel));
    }
    let previous = OVERRIDE.with(|o| o.replace(Some(kernel)));
    // Restore the previous choice even if `f` panics.
    struct Restore(Option<Kernel>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(previous);
    Ok(f())
}

/// The table of `kernel` for scalar type `T`; the scalar kernel's if the CPU cannot run
/// `kernel` (a kernel only reaches here through [`selected`], which never names one it
/// cannot run, so that is a safety net, not a path).
#[must_use]
pub(crate) fn table<T: Float>(kernel: Kernel) -> &'static Table<T> {
    let kernel = if kernel.is_supported() {
        kernel
    } else {
        Kernel::Scalar
    };
    // SAFETY: the CPU runs `kernel` (checked just above).
    unsafe { <T as float::sealed::Element>::table(kernel) }
}

/// The table of the [`selected`] kernel: what an entry point resolves once, at its start.
#[must_use]
pub(crate) fn current<T: Float>() -> &'static Table<T> {
    table(selected())
}

/// `eˣ` over a slice with the selected kernel's `exp` (the scalar kernel uses the platform's
/// `exp`). Exposed for tests and benchmarks of the vectorised `exp`.
pub fn exp_in_place<T: Float>(xs: &mut [T]) {
    current::<T>().exp(xs);
}

/// `rounds` rounds of 12 independent fused multiply-adds on whole vectors of the selected
/// kernel (`f32`): the loop a core's FMA peak is measured with (the benchmarks' `peak` group).
/// Returns the floating-point operations done (two per lane per FMA) and a sum that depends on
/// every one of them, so nothing can be optimised away.
///
/// ```
/// let (flops, sum) = static_attention::kernels::fma_loop(1000);
/// assert!(flops >= 1000 * 12 * 2 && sum.is_finite());
/// ```
#[must_use]
pub fn fma_loop(rounds: usize) -> (u64, f32) {
    current::<f32>().fma_loop(rounds)
}

/// `rounds` rounds of independent `bf16` dot-product instructions of the selected kernel's
/// `bf16` projections: AMX's `tdpbf16ps`, four tiles of 16 tokens × 12 features × 32
/// inputs, the projections' tile shape ([`Kernel::Avx512Bf16`] where the CPU has AMX and the
/// OS allows it), 12 on whole vectors otherwise (`vdpbf16ps` on [`Kernel::Avx512Bf16`]: 16
/// lanes, each adding two products of `bf16` pairs to an `f32`; `BFDOT` on
/// [`Kernel::NeonBf16`]: 4 lanes): the loop a core's `bf16` peak is measured with (the
/// benchmarks' `peak` group), beside [`fma_loop`]. Returns the floating-point operations done
/// (two per product) and a sum that depends on every one of them; `None` where the selected
/// kernel has no `bf16` dot product.
///
/// ```
/// use static_attention::kernels::{Kernel, bf16_dot_loop, selected};
///
/// match bf16_dot_loop(1000) {
///     // 12 instructions a round, each 4 FLOPs per lane.
///     Some((flops, sum)) => assert!(flops >= 1000 * 12 * 16 && sum.is_finite()),
///     None => assert!(!matches!(selected(), Kernel::Avx512Bf16 | Kernel::NeonBf16)),
/// }
/// ```
#[must_use]
pub fn bf16_dot_loop(rounds: usize) -> Option<(u64, f32)> {
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = rounds;
    match selected() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 if x86::amx_available() => {
            // SAFETY: AMX (TILE, INT8, BF16) was detected and the OS lets us use it.
            let (flops, bits) = unsafe { amx::dot_loop::<amx_bf16::Bf16>(rounds, 0x3f80_3f80) };
            Some((flops, f32::from_bits(bits.cast_unsigned())))
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `selected` names only kernels the CPU runs, and this one has AVX512-BF16,
        // AVX512-BW and AVX-512F, the loop's features.
        Kernel::Avx512Bf16 => Some(unsafe { bf16::dot_loop(rounds) }),
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `selected` names only kernels the CPU runs, and this one has BF16.
        Kernel::NeonBf16 => Some(unsafe { arm_bf16::dot_loop(rounds) }),
        _ => None,
    }
}

/// The core's `i8` dot-product peak loop of the selected kernel's `i8` projections: `rounds`
/// rounds of independent products, as `(operations, checksum)` (each product and its
/// addition counted as two operations): AMX's `tdpbssd`, four tiles of 16 tokens × 12
/// features × 64 inputs, the projections' tile shape ([`Kernel::Avx512Bf16`] where the CPU
/// has AMX and the OS allows it), 12 on whole vectors otherwise: `vpdpbusd` on 512 bits
/// ([`Kernel::Avx512Bf16`] without AMX, and [`Kernel::Avx512`] with AVX512-VNNI) or
/// on 256 bits ([`Kernel::Avx2Fma`] with AVX-VNNI), `vpmaddwd` with `vpaddd` (16-bit pairs:
/// [`Kernel::Avx2Fma`] without AVX-VNNI, [`Kernel::Avx512`] without AVX512-VNNI), or `SDOT`
/// ([`Kernel::NeonBf16`]); `None` elsewhere.
#[must_use]
pub fn i8_dot_loop(rounds: usize) -> Option<(u64, i32)> {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = rounds;
    match selected() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 if x86::amx_available() => {
            // SAFETY: AMX (TILE, INT8, BF16) was detected and the OS lets us use it.
            Some(unsafe { amx::dot_loop::<amx::I8>(rounds, 0x0101_0101) })
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `selected` names only kernels the CPU runs, and this one has AVX512-VNNI,
        // AVX512-BW and AVX-512F, the loop's features.
        Kernel::Avx512Bf16 => Some(unsafe { int8::dot_loop(rounds) }),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if x86::avx512_vnni_available() => {
            // SAFETY: AVX512-VNNI was detected, and AVX-512F and AVX512-BW (the kernel has
            // them).
            Some(unsafe { int8::dot_loop(rounds) })
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma if x86::avx_vnni_available() => {
            // SAFETY: AVX-VNNI was detected, and AVX2 (the kernel has it).
            Some(unsafe { int8_avx2::dot_loop_quads(rounds) })
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `selected` names only kernels the CPU runs, and both have AVX2, the loop's
        // feature.
        Kernel::Avx2Fma | Kernel::Avx512 => Some(unsafe { int8_avx2::dot_loop_pairs(rounds) }),
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `selected` names only kernels the CPU runs, and this one has the dot
        // product.
        Kernel::NeonBf16 => Some(unsafe { arm_int8::dot_loop(rounds) }),
        _ => None,
    }
}

/// The power of two `2^−k` (`2^k > SKV`) that keeps the attention sums `Σ p·v` finite, if
/// some finite value is large enough for the unscaled sum to overflow; `None` otherwise (a
/// non-finite output then comes from non-finite inputs and is what the rules ask for).
///
/// The sums are bounded by `SKV · max|v|` (every `p ≤ 1`), so they can overflow only when a
/// value exceeds `T::MAX / SKV`. A kernel that finds a non-finite output in a tile asks for
/// this and, given a scale, redoes the tile with every `p` scaled by it (exact: a power of
/// two) and the tile's outputs scaled back after the division by the softmax denominator.
pub(crate) fn overflow_rescale<T: Float>(v: &[T], dims: Dims) -> Option<T> {
    let skv = dims.skv;
    let limit = T::MAX.to_f64() / (skv as f64 + 1.0);
    let big = (0..dims.dv).any(|e| {
        v[e * dims.ldkv..e * dims.ldkv + skv]
            .iter()
            .any(|&x| x.is_finite_() && x.abs_().to_f64() > limit)
    });
    if !big {
        return None;
    }
    let k = usize::BITS - skv.leading_zeros() + 1;
    Some(T::of(math::powi2(-(k as i32))))
}

/// What an attention call works out about its values only when it needs to, at most once:
/// whether they are all finite (masked products can then be skipped by multiplying by 0) and
/// the rescale that keeps sums of huge values finite. (The scalar kernel skips masked keys
/// outright and asks only for the rescale.)
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) struct Lazy<T> {
    finite: Option<bool>,
    rescale: Option<Option<T>>,
}

impl<T: Float> Lazy<T> {
    pub(crate) const fn new() -> Self {
        Self {
            finite: None,
            rescale: None,
        }
    }

    /// Whether every value (the first `skv` rows of each of the `dv` columns) is finite.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) fn values_finite(&mut self, v: &[T], dims: Dims) -> bool {
        *self.finite.get_or_insert_with(|| {
            (0..dims.dv).all(|e| {
                v[e * dims.ldkv..e * dims.ldkv + dims.skv]
                    .iter()
                    .all(|x| x.is_finite_())
            })
        })
    }

    /// [`overflow_rescale`] of the values.
    pub(crate) fn rescale(&mut self, v: &[T], dims: Dims) -> Option<T> {
        *self
            .rescale
            .get_or_insert_with(|| overflow_rescale(v, dims))
    }
}

#[cfg(all(test, feature = "std"))]
mod tests;
