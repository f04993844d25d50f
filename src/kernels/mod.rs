//! The kernel layer: the inner loops every forward pass runs, behind one dispatch point.
//!
//! Each kernel works on plain column-major slices (nalgebra's storage order), so the public
//! types hand their storage straight through with no copies:
//!
//! - `linear`: `out = x · Wᵀ + b` for a whole sequence (the Q/K/V and output projections),
//!   also in place;
//! - `attention`: fused streaming attention for one head: scores, online softmax and the
//!   weighted sum of values in one pass over the keys, never holding more than a block of
//!   scores, so no `SQ × SKV` matrix exists;
//! - `attention_with_weights`: the same result plus the post-softmax weights, written into a
//!   caller-provided `SQ × SKV` matrix (only when the caller asked for weights).
//!
//! Two implementations sit behind them, chosen by [`Kernel`]:
//!
//! - `scalar.rs`, the portable reference: plain loops, the kernel every other one is tested
//!   against, and the one `force-scalar` pins;
//! - `vector.rs`, the SIMD kernels, written once over the `Simd` instruction-set trait
//!   (`simd.rs`) and compiled twice for x86-64 (`x86.rs`): AVX2 + FMA (8 `f32` or 4 `f64`
//!   lanes, 16 registers, micro-tiles 6 wide) and AVX-512F (16 `f32` or 8 `f64` lanes, 32
//!   registers, micro-tiles 12 wide). Each instruction set's functions are compiled with
//!   `#[target_feature]`, so the default target (no `-C target-cpu`) gets them all.
//!
//! [`detect`] picks the best kernel the CPU runs, once per process (with `std`, through
//! `is_x86_feature_detected!`; without, through `cfg!(target_feature)` or CPUID and XGETBV),
//! and [`selected`] returns that choice; every entry point reads it once and runs its whole
//! call on it. With `std`, [`with_kernel`] overrides the choice on one thread (the benchmarks
//! compare kernels that way).
//!
//! Kernels are generic over the scalar type only, not over shapes: shapes arrive as
//! `Dims` and masks as a `MaskView` of slices, so each kernel is compiled once per scalar
//! type however many shapes a program uses.

#[cfg(target_arch = "aarch64")]
pub(crate) mod arm;
pub(crate) mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod simd;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod vector;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use crate::mask::{Additive, Mask, Pattern};
use crate::{Float, Weight, WeightKind};

/// Queries a tile of the attention kernels holds at most, and rows of a projection panel:
/// two vectors of `f32` of the widest instruction set the target can have (32 on x86-64, for
/// AVX-512), or the scalar kernel's 8 where there is no vector kernel. The working memory of
/// a call is sized by it (see [`crate::Scratch`]).
pub const TILE_QUERIES: usize = if cfg!(target_arch = "x86_64") { 32 } else { 8 };
/// Keys per block of the vector attention kernels (0 where there is none: the scalar kernel
/// needs no block buffers).
pub const KEY_BLOCK: usize = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
    64
} else {
    0
};

pub(crate) const MQ_MAX: usize = TILE_QUERIES;
pub(crate) const KB: usize = KEY_BLOCK;

/// An attention kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Portable Rust loops; the reference every other kernel is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA: 8 `f32` or 4 `f64` lanes, register-blocked micro-kernels and a
    /// vectorised `exp`.
    Avx2Fma,
    /// aarch64 NEON: the same kernels on 4 `f32` or 2 `f64` lanes, 12-wide micro-tiles (32
    /// registers). Part of the aarch64 baseline, so always chosen there.
    Neon,
    /// x86-64 AVX-512F: the same kernels on 16 `f32` or 8 `f64` lanes, with micro-tiles twice
    /// as wide (32 vector registers).
    Avx512,
}

impl Kernel {
    /// A short name for reports and benchmarks.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2Fma => "avx2+fma",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
        }
    }

    /// Every kernel this crate has, whether or not this CPU runs it.
    pub const ALL: [Kernel; 4] = [
        Kernel::Scalar,
        Kernel::Avx2Fma,
        Kernel::Avx512,
        Kernel::Neon,
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
            Kernel::Avx2Fma => x86_supports(Kernel::Avx2Fma),
            Kernel::Avx512 => x86_supports(Kernel::Avx512),
            Kernel::Neon => cfg!(all(target_arch = "aarch64", target_feature = "neon")),
        }
    }
}

/// Whether this x86-64 CPU runs an x86 kernel.
#[cfg(target_arch = "x86_64")]
fn x86_supports(kernel: Kernel) -> bool {
    match kernel {
        Kernel::Avx2Fma => x86::Avx2::detect().is_some(),
        Kernel::Avx512 => x86::Avx512::detect().is_some(),
        Kernel::Scalar => true,
        Kernel::Neon => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_supports(_: Kernel) -> bool {
    false
}

/// The best kernel this build and CPU support: [`Kernel::Avx512`] on x86-64 with AVX-512F,
/// else [`Kernel::Avx2Fma`] with AVX2 and FMA; [`Kernel::Neon`] on aarch64; else
/// [`Kernel::Scalar`]. With the
/// `force-scalar` feature it is always [`Kernel::Scalar`]. Each call runs the detection;
/// [`selected`] caches it.
#[must_use]
pub fn detect() -> Kernel {
    if cfg!(feature = "force-scalar") {
        return Kernel::Scalar;
    }
    [Kernel::Avx512, Kernel::Avx2Fma, Kernel::Neon]
        .into_iter()
        .find(|k| k.is_supported())
        .unwrap_or(Kernel::Scalar)
}

/// The kernel the forward passes use: [`detect`]'s choice, made once per process (or the
/// thread's override, see [`with_kernel`]).
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
        _ => {
            let k = detect();
            CHOICE.store(
                match k {
                    Kernel::Scalar => 1,
                    Kernel::Avx2Fma => 2,
                    Kernel::Avx512 => 3,
                    Kernel::Neon => 4,
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
/// Benchmarks and tests use it to compare kernels; nothing else needs it.
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

/// Shape of one head's attention problem: `sq` queries of width `dk`, `skv` keys and values of
/// widths `dk` and `dv`. Keys and values are the first `skv` rows of column-major matrices
/// with leading dimension `ldkv ≥ skv` (a KV cache's capacity; `skv` otherwise).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub sq: usize,
    pub skv: usize,
    pub dk: usize,
    pub dv: usize,
    pub ldkv: usize,
}

impl Dims {
    /// Dense keys and values (`ldkv = skv`).
    pub(crate) const fn new(sq: usize, skv: usize, dk: usize, dv: usize) -> Self {
        Self {
            sq,
            skv,
            dk,
            dv,
            ldkv: skv,
        }
    }

    /// Scalars a key (`width = dk`) or value (`width = dv`) slice must hold.
    pub(crate) const fn kv_len(&self, width: usize) -> usize {
        if width == 0 {
            0
        } else {
            (width - 1) * self.ldkv + self.skv
        }
    }
}

/// A [`Mask`] lowered to slices for the kernels (column-major `sq_total × skv` matrices), for
/// the `sq` queries starting at `q_offset` (a block of a larger problem when `sq < sq_total`;
/// the kernels index their queries from 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MaskView<'a, T> {
    pub pattern: Pattern,
    pub sq: usize,
    pub skv: usize,
    pub q_offset: usize,
    pub sq_total: usize,
    pub attend: Option<&'a [bool]>,
    pub block: Option<&'a [bool]>,
    pub pad: Option<&'a [bool]>,
    pub additive: Option<&'a [T]>,
    pub alibi: Option<AlibiView<T>>,
}

/// ALiBi as the kernels apply it: `slope · (key position − query position)` added to the
/// scaled score. Query `i` sits at `q_offset + i + skv − sq_total` (queries aligned with the
/// last keys, as in decoding); key `j` at `j`, or, for a ring of keys whose oldest entry is at
/// index `key_rotate`, at `(j − key_rotate) mod skv` (shifted by `skv` so it stays positive).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AlibiView<T> {
    pub slope: T,
    pub key_rotate: usize,
}

impl<T> AlibiView<T> {
    /// The position of key `j` of `skv`.
    #[inline(always)]
    pub(crate) fn key_position(&self, j: usize, skv: usize) -> usize {
        if self.key_rotate == 0 {
            j
        } else {
            let p = j + skv - self.key_rotate;
            if p >= skv { p - skv } else { p }
        }
    }
}

impl<'a, T: Float> MaskView<'a, T> {
    /// The view of `mask`.
    pub(crate) fn of<const SQ: usize, const SKV: usize, A: Additive<T, SQ, SKV>>(
        mask: &'a Mask<'a, SQ, SKV, A>,
    ) -> Self {
        Self {
            pattern: mask.pattern(),
            sq: SQ,
            skv: SKV,
            q_offset: 0,
            sq_total: SQ,
            attend: mask.attend_where_matrix().map(|m| m.as_slice()),
            block: mask.block_where_matrix().map(|m| m.as_slice()),
            pad: mask.key_padding().map(|p| &p[..]),
            additive: mask.additive_part().matrix().map(|m| m.as_slice()),
            // One head of one; layers set each head's slope with `with_alibi_slope`.
            alibi: mask.alibi().map(|a| AlibiView {
                slope: T::of(a.slope(0, 1)),
                key_rotate: 0,
            }),
        }
    }

    /// A view with only a structural pattern, for `sq` queries and `skv` keys.
    pub(crate) fn structural(pattern: Pattern, sq: usize, skv: usize) -> Self {
        Self {
            pattern,
            sq,
            skv,
            q_offset: 0,
            sq_total: sq,
            attend: None,
            block: None,
            pad: None,
            additive: None,
            alibi: None,
        }
    }

    /// This view with ALiBi at `slope` (keys in order).
    pub(crate) fn with_alibi_slope(self, slope: Option<f64>) -> Self {
        self.with_alibi(slope, 0)
    }

    /// This view with ALiBi at `slope`, the oldest key at index `key_rotate` (a ring; see
    /// [`AlibiView::key_rotate`]).
    pub(crate) fn with_alibi(self, slope: Option<f64>, key_rotate: usize) -> Self {
        Self {
            alibi: slope.map(|m| AlibiView {
                slope: T::of(m),
                key_rotate,
            }),
            ..self
        }
    }

    /// The position of query `i` for ALiBi: aligned so the last query meets the last key
    /// (`q_offset + i + skv − sq_total`), as an exact signed integer.
    #[inline(always)]
    pub(crate) fn query_position(&self, i: usize) -> i64 {
        (self.q_offset + i) as i64 + self.skv as i64 - self.sq_total as i64
    }

    /// ALiBi's bias for query `i`, key `j` (0 without ALiBi).
    #[inline]
    pub(crate) fn alibi_bias(&self, i: usize, j: usize) -> T {
        match self.alibi {
            None => T::ZERO,
            Some(a) => {
                let d = a.key_position(j, self.skv) as i64 - self.query_position(i);
                a.slope * T::of(d as f64)
            }
        }
    }

    /// The view of queries `start .. start + count` of this one.
    #[cfg(feature = "rayon")]
    pub(crate) fn rows(&self, start: usize, count: usize) -> Self {
        debug_assert!(start + count <= self.sq);
        Self {
            sq: count,
            q_offset: self.q_offset + start,
            ..*self
        }
    }

    /// Index of query `i`, key `j` in the mask's matrices.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> usize {
        self.q_offset + i + j * self.sq_total
    }

    /// The keys the pattern lets query `i` see, `[lo, hi)`.
    #[inline]
    pub(crate) fn key_range(&self, i: usize) -> (usize, usize) {
        if i >= self.sq {
            return (0, 0);
        }
        self.pattern
            .key_range(self.q_offset + i, self.sq_total, self.skv)
    }

    /// Whether some part must be looked up per (query, key) pair.
    #[inline]
    pub(crate) fn is_dense(&self) -> bool {
        self.attend.is_some()
            || self.block.is_some()
            || self.pad.is_some()
            || self.additive.is_some()
            || self.alibi.is_some()
    }

    /// For a key inside the pattern's range: `None` if a matrix or padding part masks it,
    /// otherwise its additive bias (0 without one).
    #[inline]
    pub(crate) fn dense_entry(&self, i: usize, j: usize) -> Option<T> {
        let at = self.at(i, j);
        if self.pad.is_some_and(|p| p[j])
            || self.attend.is_some_and(|m| !m[at])
            || self.block.is_some_and(|m| m[at])
        {
            return None;
        }
        let bias = match self.additive {
            None => T::ZERO,
            // NaN fails the comparison, so NaN and −∞ both mask the key.
            Some(a) if a[at] > T::NEG_INFINITY => a[at],
            Some(_) => return None,
        };
        Some(match self.alibi {
            None => bias,
            Some(_) => bias + self.alibi_bias(i, j),
        })
    }
}

/// The operands of `linear`: separate input and output, or one buffer transformed in place.
pub(crate) enum LinearIo<'a, T> {
    /// `out = x · Wᵀ + b`.
    Out { x: &'a [T], out: &'a mut [T] },
    /// `out += x · Wᵀ`, the bias not added (the half-precision path adds chunks of input
    /// features).
    Add { x: &'a [T], out: &'a mut [T] },
    /// `buf = buf · Wᵀ + b` (square `W`).
    InPlace(&'a mut [T]),
}

/// Per-call working memory of the attention kernels: the running output sums of a query tile
/// (`D` value columns × 16 lanes), and one block of scores and of key masks (`KB` × 16 each).
/// `D` is the largest value width it serves.
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub(crate) struct Work<T, const D: usize> {
    pub(crate) acc: [[T; MQ_MAX]; D],
    pub(crate) p: [[T; MQ_MAX]; KB],
    pub(crate) allowed: [[T; MQ_MAX]; KB],
}

impl<T: Float, const D: usize> Work<T, D> {
    /// Zeroed working memory.
    #[must_use]
    pub(crate) const fn new() -> Self {
        Self {
            acc: [[T::ZERO; MQ_MAX]; D],
            p: [[T::ZERO; MQ_MAX]; KB],
            allowed: [[T::ZERO; MQ_MAX]; KB],
        }
    }

    /// The buffers, borrowed for one call.
    pub(crate) fn parts(&mut self) -> WorkRef<'_, T> {
        WorkRef {
            acc: self.acc.as_flattened_mut(),
            p: self.p.as_flattened_mut(),
            allowed: self.allowed.as_flattened_mut(),
        }
    }
}

/// [`Work`] as slices.
pub(crate) struct WorkRef<'a, T> {
    /// Running output sums: `dv` rows of [`MQ_MAX`].
    pub acc: &'a mut [T],
    /// A block of scores: [`KB`] rows of [`MQ_MAX`].
    pub p: &'a mut [T],
    /// A block of key masks: [`KB`] rows of [`MQ_MAX`].
    pub allowed: &'a mut [T],
}

impl<T> WorkRef<'_, T> {
    /// A shorter-lived copy of the borrow.
    pub(crate) fn reborrow(&mut self) -> WorkRef<'_, T> {
        WorkRef {
            acc: self.acc,
            p: self.p,
            allowed: self.allowed,
        }
    }
}

/// Rows of a GEMM row panel: the pack buffer of an in-place projection holds this many rows
/// of every input feature.
pub(crate) const PANEL_ROWS: usize = MQ_MAX;
/// `out = x · Wᵀ + b` for `s` tokens (see `LinearIo`), `W` in the tile layout of
/// [`crate::Linear`] stored as `Wt`. Half-precision weights go to the scalar kernel as they are
/// (it widens each as it reads it) and to the vector kernels a strip of 12 output features and
/// at most [`HALF_CHUNK`] input features at a time, widened into a buffer first.
pub(crate) fn linear<T: Float, Wt: Weight<T>>(
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[Wt],
    dout: usize,
    bias: &[T],
    pack: &mut [T],
) {
    let kernel = selected();
    match (kernel, Wt::KIND) {
        (Kernel::Scalar, _) => scalar::linear(io, s, din, w, dout, bias, pack),
        (_, WeightKind::Native) => {
            linear_native(
                kernel,
                io,
                s,
                din,
                bytemuck::cast_slice(w),
                dout,
                bias,
                pack,
            );
        }
        (_, kind) => linear_half(
            kernel,
            kind,
            io,
            s,
            din,
            bytemuck::cast_slice(w),
            dout,
            bias,
            pack,
        ),
    }
}

/// Input features per widened chunk of a half-precision strip (a buffer of `12 ·` this many
/// scalars on the stack).
pub(crate) const HALF_CHUNK: usize = 256;

/// `linear` on a vector kernel for weights in the compute type.
#[allow(clippy::too_many_arguments)]
fn linear_native<T: Float>(
    kernel: Kernel,
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[T],
    dout: usize,
    bias: &[T],
    pack: &mut [T],
) {
    match kernel {
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => arm::linear(io, s, din, w, dout, bias, pack),
        #[cfg(target_arch = "x86_64")]
        k @ (Kernel::Avx2Fma | Kernel::Avx512) => x86::linear(k, io, s, din, w, dout, bias, pack),
        _ => scalar::linear(io, s, din, w, dout, bias, pack),
    }
}

/// `linear` on a vector kernel for half-precision weights (`T` is `f32`): each strip of 12
/// output features (the tile layout keeps a strip's `din × 12` weights together) is widened
/// [`HALF_CHUNK`] input features at a time and multiplied by the matching input columns, the
/// first chunk writing the strip's outputs and the others adding to them. In place is not
/// supported here (the layers give the input and output separately).
#[allow(clippy::too_many_arguments)]
fn linear_half<T: Float>(
    kernel: Kernel,
    kind: WeightKind,
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[u16],
    dout: usize,
    bias: &[T],
    pack: &mut [T],
) {
    const STRIP: usize = crate::linear::WEIGHT_TILE;
    let LinearIo::Out { x, out } = io else {
        unreachable!("half-precision weights are applied out of place")
    };
    assert!(w.len() >= din * dout && x.len() >= s * din && out.len() >= s * dout);
    let mut buf = [T::ZERO; STRIP * HALF_CHUNK];
    let full = dout / STRIP * STRIP;
    let mut t0 = 0;
    while t0 < dout {
        let (cols, base) = if t0 < full {
            (STRIP, t0 * din)
        } else {
            (dout - full, full * din)
        };
        let out_strip = &mut out[t0 * s..(t0 + cols) * s];
        let mut pc = 0;
        while pc < din {
            let kc = HALF_CHUNK.min(din - pc);
            let n = kc * cols;
            widen(
                kind,
                &w[base + pc * cols..base + pc * cols + n],
                &mut buf[..n],
            );
            let x_chunk = &x[pc * s..(pc + kc) * s];
            // A strip of `cols` features over `kc` inputs is itself in the tile layout.
            let io = if pc == 0 {
                LinearIo::Out {
                    x: x_chunk,
                    out: &mut *out_strip,
                }
            } else {
                LinearIo::Add {
                    x: x_chunk,
                    out: &mut *out_strip,
                }
            };
            // `Add` never reads the bias: it enters with the first chunk only.
            let b = &bias[t0..t0 + cols];
            linear_native(kernel, io, s, kc, &buf[..n], cols, b, pack);
            pc += kc;
        }
        t0 += cols;
    }
}

/// Half-precision bits (`f16` or `bf16`) widened to `T = f32`: with F16C on x86-64 where the
/// CPU has it, else value by value.
fn widen<T: Float>(kind: WeightKind, src: &[u16], dst: &mut [T]) {
    let dst: &mut [f32] = bytemuck::cast_slice_mut(dst);
    match kind {
        WeightKind::Bf16 => {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = f32::from_bits(u32::from(b) << 16);
            }
        }
        _ => {
            #[cfg(target_arch = "x86_64")]
            if x86::widen_f16(src, dst) {
                return;
            }
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = half::f16::from_bits(b).to_f32();
            }
        }
    }
}

/// Streaming attention for one head: `out[sq × dv] = softmax(scale·q·kᵀ + mask) · v`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    out: &mut [T],
    mut work: WorkRef<'_, T>,
) {
    let kernel = selected();
    let run = |vscale: T, out: &mut [T], work: WorkRef<'_, T>| match kernel {
        Kernel::Scalar => scalar::attention(q, k, v, dims, scale, mask, out, work, vscale),
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => arm::attention(q, k, v, dims, scale, mask, out, work, vscale),
        #[cfg(target_arch = "x86_64")]
        kernel @ (Kernel::Avx2Fma | Kernel::Avx512) => {
            x86::attention(kernel, q, k, v, dims, scale, mask, out, work, vscale)
        }
        _ => scalar::attention(q, k, v, dims, scale, mask, out, work, vscale),
    };
    // The running sums Σ p·v are bounded by SKV · max|v| (every p ≤ 1), so they can overflow
    // only when some value exceeds T::MAX / SKV. Then the pass is repeated with the values
    // scaled by a power of two (exact), and the output scaled back after the division by the
    // softmax denominator. Ordinary inputs pay the kernel's finiteness check of its output.
    if run(T::ONE, out, work.reborrow()) {
        return;
    }
    if let Some(vscale) = overflow_rescale(v, dims) {
        run(vscale, out, work);
    }
}

/// The power of two `2^−k` (`2^k > SKV`) that keeps `Σ p·v` finite, if some finite value is
/// large enough for the unscaled sum to overflow; `None` otherwise (a non-finite output then
/// comes from non-finite inputs and is what the rules ask for).
fn overflow_rescale<T: Float>(v: &[T], dims: Dims) -> Option<T> {
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
    Some(T::of(crate::float::math::powi2(-(k as i32))))
}

/// Attention for one head that also writes the post-softmax weights (`sq × skv`, column-major).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with_weights<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    out: &mut [T],
    weights: &mut [T],
) {
    match selected() {
        Kernel::Scalar => scalar::attention_with_weights(q, k, v, dims, scale, mask, out, weights),
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => arm::attention_with_weights(q, k, v, dims, scale, mask, out, weights),
        #[cfg(target_arch = "x86_64")]
        kernel @ (Kernel::Avx2Fma | Kernel::Avx512) => {
            x86::attention_with_weights(kernel, q, k, v, dims, scale, mask, out, weights)
        }
        _ => scalar::attention_with_weights(q, k, v, dims, scale, mask, out, weights),
    }
}

/// `eˣ` over a slice with the selected kernel's `exp` (the scalar kernel uses the platform's
/// `exp`). Exposed for tests and benchmarks of the vectorised `exp`.
pub fn exp_in_place<T: Float>(xs: &mut [T]) {
    match selected() {
        Kernel::Scalar => xs.iter_mut().for_each(|x| *x = x.exp_()),
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => arm::exp_in_place(xs),
        #[cfg(target_arch = "x86_64")]
        kernel @ (Kernel::Avx2Fma | Kernel::Avx512) => x86::exp_in_place(kernel, xs),
        _ => xs.iter_mut().for_each(|x| *x = x.exp_()),
    }
}

#[cfg(all(test, feature = "std"))]
mod tests;
