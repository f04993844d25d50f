//! How layers store their weights: in the compute type itself (`f32`, `f64`), in half
//! precision (`f16`, `bf16`, from the `half` crate) with `f32` arithmetic, which halves the
//! flash a `static` layer takes on a microcontroller, or as symmetric `i8` integers with one
//! `f32` scale per output feature (a quarter of `f32`).
//!
//! [`crate::Linear`], [`crate::MultiHead`], [`crate::SelfAttention`] and
//! [`crate::GroupedQuery`] take the storage type as their last parameter, `W`, which defaults
//! to the compute type `T`: `MultiHead<16, 32, 4>` stores `f32`, `MultiHead<16, 32, 4, f32,
//! f16>` stores `f16` and computes in `f32`. Biases stay in `T` (they are few).
//!
//! **Widened (every kernel but one, and every decoding step).** The kernels widen
//! half-precision weights to `f32` as they read them (with F16C on x86-64, a shift for `bf16`);
//! every product and sum is then the `f32` one, so a half-precision layer gives what an `f32`
//! layer with the same (rounded) weights gives.
//!
//! **`bf16` products ([`Kernel::Avx512Bf16`](crate::kernels::Kernel::Avx512Bf16),
//! [`Kernel::NeonBf16`](crate::kernels::Kernel::NeonBf16)).** Where the CPU has AVX512-BF16
//! or Arm's BF16 extension, the selected kernel multiplies `bf16` weights in `bf16` products
//! (`vdpbf16ps`, `BFDOT`, and on a CPU with AMX the tile products `tdpbf16ps`) for
//! projections of more than two tokens, faster than `f32` weights: each projection's inputs are rounded to `bf16` (to nearest, ties to even), each product of
//! two `bf16` values is exact in `f32`, and the sums are `f32` sums (rounded to nearest on
//! x86-64; `BFDOT` rounds to odd, an error below one `f32` ulp, which the `2⁻²³` below
//! allows for). For a projection `y = x·Wᵀ + b` with `din` inputs, against the `f32` map
//! with the same weights, every output keeps this contract (property-tested on every kernel,
//! `tests/half_weights.rs`):
//!
//! ```text
//! |ŷ − y| ≤ (u + 2·(1 + u)·γ(din + 1)) · (Σ_p |x_p·w_p| + |b|) + η
//! u = 2⁻⁸ (bf16's unit roundoff),  γ(n) = n·2⁻²³ / (1 − n·2⁻²³),
//! η = 2⁻¹²⁶ · (din + 1) · (1 + max|w|)
//! ```
//!
//! `u` is the rounding of the inputs; `γ` the two paths' `f32` sums; `η` the instructions'
//! flushing of `bf16` inputs and `f32` sums below `2⁻¹²⁶` to zero. NaN and infinities
//! propagate as in `f32` (except that an input below `2⁻¹²⁶`, read as zero, times an infinite
//! weight gives NaN); an input beyond `bf16`'s largest finite value (about `3.39·10³⁸`)
//! becomes an infinity.
//!
//! **The attention of a `bf16` layer** runs in `bf16` products too on
//! [`Kernel::Avx512Bf16`](crate::kernels::Kernel::Avx512Bf16) without AMX (on the Xeons
//! with AMX `vdpbf16ps` runs at half the `f32` FMA rate, so there the `f32` attention runs
//! instead, as it does on Arm), for calls of more than two
//! tokens with heads of at most 128 features, a mask that is only a pattern (none, causal,
//! sliding window) and no soft-cap or sink, when every query, key and value is finite and
//! far from overflow (anything else runs the `f32` attention). Queries, keys, the softmax's
//! weights and values are rounded to `bf16`; scores, the softmax and the sums stay `f32`. Against
//! the exact attention on the same `f32` inputs every output keeps (tested over every
//! pattern, odd shapes and logits up to about ±30, `kernels::tests`):
//!
//! ```text
//! |ŷ − y| ≤ (4u + 2·(e^(2Δ) − 1) + n·2⁻²³) · max|v|
//! Δ = |scale| · (2u + u² + γ(dk)·(1 + u)²) · max_j Σ_e |q_e·k_je|
//! ```
//!
//! (`Δ` bounds how far the rounding of `q` and `k` can move a row's scores; `n·2⁻²³` the
//! `f32` sums over the row's `n` keys, which the `4u` covers up to about 2¹⁷ keys.) Through a whole
//! layer the roundings add up: on the tested and benchmarked layers (`MultiHead` up to
//! `<512, 512, 8>`, `GroupedQuery`) every output is within `2⁻⁶ · max|y|` of the `f32`
//! layer's (measured worst: `1.62 · 2⁻⁸ · max|y|`), and the tests hold them to that. Decoding
//! steps of one or two tokens widen their projections and run the `f32` attention (reading
//! each weight once per token, a product in `bf16` would not be faster). To run a `bf16`
//! layer exactly as its `f32` twin on such a CPU, pick
//! [`Kernel::Avx512`](crate::kernels::Kernel::Avx512) (or
//! [`Kernel::Neon`](crate::kernels::Kernel::Neon)) with
//! [`with_kernel`](crate::kernels::with_kernel).
//!
//! `bf16` weights are stored with their input rows paired (the pairs a `bf16` dot product
//! multiplies), a layout of the kernels' own: read and write weights through
//! [`crate::Linear::weight_at`] and its siblings, never by position.
//!
//! **`i8` weights (W8A8).** `Linear<IN, OUT, f32, i8>` (and every layer with `W = i8`) stores
//! each weight as an integer `q` in `−127 ..= 127` and each output feature's scale `s_n`:
//! the weight is `ŵ_np = q_np · s_n` ([`crate::Linear::to_weights`] picks
//! `s_n = max_p |w_np| / 127` and rounds each weight to the nearest multiple, ties to even;
//! [`crate::Linear::from_quantized`] takes integers and scales as they are, and
//! [`crate::Linear::from_f32_rows`] quantizes `f32` rows as `to_weights` does, both `const
//! fn`s for `static` layers). A projection quantizes each token's inputs on the fly with the
//! token's own scale and sums the integer products exactly in `i32`:
//!
//! ```text
//! a = max_p |x_p|,  r = 127 / a,  x̂_p = round(x_p · r)  (ties to even, within ±127)
//! y_n = f(Σ_p x̂_p · q_np) · ((a / 127) · s_n) + b_n
//! ```
//!
//! (`f` rounds the sum to `f32`; every operation rounds once, none is fused). Every kernel
//! gives the same bits, as the sums are exact: AMX multiplies bytes in tiles with `tdpbssd`
//! ([`Kernel::Avx512Bf16`](crate::kernels::Kernel::Avx512Bf16) where the CPU has AMX
//! and Linux grants the tiles), AVX512-VNNI with `vpdpbusd` (that kernel elsewhere, as it
//! requires VNNI, and [`Kernel::Avx512`](crate::kernels::Kernel::Avx512) where the CPU has
//! it); AVX2 multiplies 16-bit pairs with `vpmaddwd`, or bytes with 256-bit `vpdpbusd` where
//! the CPU has AVX-VNNI ([`Kernel::Avx2Fma`](crate::kernels::Kernel::Avx2Fma), and
//! [`Kernel::Avx512`](crate::kernels::Kernel::Avx512) without VNNI the pairs); aarch64's dot product
//! multiplies bytes with `SDOT` ([`Kernel::NeonBf16`](crate::kernels::Kernel::NeonBf16),
//! which requires it); plain NEON ([`Kernel::Neon`](crate::kernels::Kernel::Neon)) multiplies
//! the integers as `f32` in its GEMM, exact for projections of up to 1 040 inputs (every
//! partial sum stays below 2²⁴); the scalar kernel, and NEON beyond 1 040 inputs, sum in
//! `i32` (on a Cortex-M with the DSP extension two products per `SMLAD`). A token whose inputs are all zero gives `y = b`; one
//! with a NaN or infinite input gives NaN in every output. Against the exact product with the
//! dequantized weights, every output keeps (property-tested on every kernel,
//! `tests/int8_weights.rs`):
//!
//! ```text
//! |ŷ_n − y_n| ≤ (a/127)·(½ + 2⁻¹⁴)·Σ_p |ŵ_np| + 2⁻²¹·(Σ_p |x_p·ŵ_np| + |b_n|)
//!              + 2⁻¹²¹·Σ_p |ŵ_np| + 2⁻¹³⁵·din
//! ```
//!
//! (the first term is the inputs' rounding to integers, at most half a step `a/127` each; the
//! second the `f32` roundings of the scales and the result; the last two matter only for a
//! token whose largest input is below about `3.7·10⁻³⁷`, where `127/a` overflows and each
//! input that is not zero becomes `±127`, and for products of scales below `f32`'s normal
//! range).
//!
//! **The attention of an `i8` layer** runs in `i8` tile products on
//! [`Kernel::Avx512Bf16`](crate::kernels::Kernel::Avx512Bf16) where the CPU has AMX and
//! Linux grants the tiles, for calls of more than two tokens with heads of at most 64
//! features, a mask that is only a pattern (none, causal, sliding window) and no soft-cap or
//! sink, when every query, key and value is finite and far from overflow, and no row of
//! queries or keys has a largest magnitude below `2⁻¹⁰⁰` other than 0 (no key's values below
//! `2⁻⁶⁰`); anything else, and every other kernel, runs the `f32` attention. Each query, each key and each key's values are
//! quantized as a projection's inputs are, per row (`α = a_q/127` for a query, `β_j =
//! a_k/127` for key `j`, `d_j = max_e |v_je| / 127` for its values), so no output depends on
//! a key or value its query does not see. A score is `f(Σ_e q̂_e·k̂_je) · (α·(β_j·scale))`,
//! the sum exact; the online softmax stays `f32`. In each block of 64 keys, the weights
//! `p_j = e^(s_j − m)` (`m` the row's running maximum) times their keys' value scales,
//! `u_j = p_j·d_j`, are rounded to 16-bit fixed point against the block's largest,
//! `w_j = round(65535·u_j / max u)`, and `P·V` sums `Σ_j w_j·v̂_je` exactly, scaled by
//! `max u / 65535`; the denominator sums the `f32` weights `p_j`. Against the exact attention
//! on the same `f32` inputs every output keeps (tested over every pattern, odd shapes,
//! negative scales and logits up to about ±30, `kernels::tests`):
//!
//! ```text
//! |ŷ − y| ≤ (2·(e^(2Δ) − 1) + (½ + 2⁻¹⁴)/127 + 2⁻¹⁰ + n·2⁻²⁸) · max|v|
//! Δ = |scale|·max_j [(½ + 2⁻¹⁴)·(α·‖k_j‖₁ + β_j·‖q‖₁) + (½ + 2⁻¹⁴)²·dk·α·β_j + 2⁻²⁰·Σ_e |q_e·k_je|]
//! ```
//!
//! (`Δ` bounds how far the rounding of `q` and `k` can move a row's scores, the two
//! products of rounding errors included; `(½ + 2⁻¹⁴)/127` is the values' rounding; `2⁻¹⁰`
//! the weights': at most 64 keys of a block, each within half a step of `max u`, against a
//! denominator of at least each block's largest weight; `n·2⁻²⁸` the `f32` sums over the
//! row's `n` keys, a block at a time.) Through a whole layer,
//! against the `f32` layer holding the dequantized weights, every output of the tested
//! layers stays within `2⁻⁵ · max|y|` (initialised as PyTorch does, with and without causal
//! masks and sliding windows) or `2⁻⁴ · max|y|` (weights uniform in `[−1, 1]`, whose larger
//! logits the rounding of the scores moves more), `tests/int8_weights.rs`. To run an `i8`
//! layer's attention in `f32` on such a CPU, pick
//! [`Kernel::Avx512`](crate::kernels::Kernel::Avx512) with
//! [`with_kernel`](crate::kernels::with_kernel): its projections give the same bits (every
//! kernel's do). Saved to safetensors, a projection is `weight` (`I8`) beside
//! `weight_scale` (`F32`, one per output feature; `in_proj_weight_scale` for
//! `nn.MultiheadAttention`'s packed weight); loading checks the scales are finite and not
//! negative. `i8` weights are stored with their input rows in fours (the four bytes a
//! `vpdpbusd` or `SDOT` word multiplies), again a layout of the kernels' own.
//!
//! ```
//! use static_attention::{Alignment, Mask, MultiHead, SMatrix, f16};
//!
//! let full = MultiHead::<4, 8, 2>::from_seed(5);
//! let half = full.to_weights::<f16>(); // every weight rounded to f16
//! // 4 weights of 8 × 8 in 2 bytes instead of 4 (the biases stay f32).
//! assert_eq!(MultiHead::<4, 8, 2>::PARAM_BYTES - MultiHead::<4, 8, 2, f32, f16>::PARAM_BYTES, 4 * 64 * 2);
//! // The same as f32 weights holding the rounded values.
//! let rounded = half.to_weights::<f32>();
//! let x = SMatrix::<f32, 4, 8>::from_fn(|i, j| (i as f32 - j as f32) * 0.1);
//! let mask = Mask::causal(Alignment::TopLeft);
//! assert!((half.forward(&x, &mask) - rounded.forward(&x, &mask)).amax() < 1e-6);
//!
//! // bf16 weights: the same on every kernel that widens; within 2⁻⁶·max|y| where the
//! // kernel multiplies in bf16.
//! let b = full.to_weights::<static_attention::bf16>();
//! let y = b.to_weights::<f32>().forward(&x, &mask);
//! assert!((b.forward(&x, &mask) - y).amax() <= 2f32.powi(-6) * y.amax());
//! ```

pub(crate) mod sealed {
    /// Weights as the kernels read them: in the compute type itself, or as the bits of a
    /// half-precision type (which [`Weight::KIND`] names).
    pub enum Stored<'a, T> {
        /// The compute type.
        Native(&'a [T]),
        /// `f16` or `bf16` bits.
        Half(&'a [u16]),
        /// Symmetric `i8` weights, with one scale per output feature (see [`Storage::scales`]).
        Int8(&'a [i8]),
    }

    /// How the kernels reach a weight type's values; implemented for the four storage types.
    pub trait Storage<T>: Sized {
        /// The weights as the kernels read them.
        fn stored(w: &[Self]) -> Stored<'_, T>;
        /// The per-output-feature scales as the kernels read them (empty where there are none).
        fn scales(s: &[<Self as super::Weight<T>>::Scale]) -> &[T]
        where
            Self: super::Weight<T>;
        /// [`Storage::scales`], to write.
        fn scales_mut(s: &mut [<Self as super::Weight<T>>::Scale]) -> &mut [T]
        where
            Self: super::Weight<T>;
    }
}

/// How the kernels read a weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightKind {
    /// The compute type itself.
    Native,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the upper half of an `f32`).
    Bf16,
    /// Symmetric 8-bit integers with one `f32` scale per output feature.
    I8,
}

/// A type weights of a layer computing in `T` can be stored in: `T` itself, or, for `T = f32`,
/// [`half::f16`] and [`half::bf16`]. Sealed.
pub trait Weight<T>:
    Copy + PartialEq + core::fmt::Debug + bytemuck::Pod + sealed::Storage<T> + 'static
{
    /// Zero.
    const ZERO_WEIGHT: Self;
    /// What the storage keeps per output feature besides the weights: `()` for floating-point
    /// storage (nothing), the `f32` scale for `i8`.
    type Scale: Copy + PartialEq + core::fmt::Debug + bytemuck::Pod + Send + Sync;
    /// The scale of a fresh layer (`()`, or `0.0`).
    const ZERO_SCALE: Self::Scale;
    /// How the kernels widen it.
    const KIND: WeightKind;
    /// The name safetensors gives its dtype (`F32`, `F64`, `F16`, `BF16`).
    const DTYPE: &'static str;
    /// The value in the compute type (exact).
    fn widen(self) -> T;
    /// `x` rounded to this type (to nearest, ties to even).
    fn narrow(x: T) -> Self;
}

/// One storage type for one compute type: its constants, its conversions, and how the kernels
/// read a slice of it.
macro_rules! weight {
    ($w:ty => $t:ty, $kind:ident, $dtype:literal, $zero:expr,
     widen: |$a:ident| $widen:expr, narrow: |$b:ident| $narrow:expr, stored: $stored:expr) => {
        impl Weight<$t> for $w {
            const ZERO_WEIGHT: Self = $zero;
            type Scale = ();
            const ZERO_SCALE: () = ();
            const KIND: WeightKind = WeightKind::$kind;
            const DTYPE: &'static str = $dtype;
            #[inline(always)]
            fn widen(self) -> $t {
                let $a = self;
                $widen
            }
            #[inline(always)]
            fn narrow($b: $t) -> Self {
                $narrow
            }
        }

        impl sealed::Storage<$t> for $w {
            fn stored(w: &[Self]) -> sealed::Stored<'_, $t> {
                $stored(w)
            }
            fn scales(_: &[()]) -> &[$t] {
                &[]
            }
            fn scales_mut(_: &mut [()]) -> &mut [$t] {
                &mut []
            }
        }
    };
}

weight!(f32 => f32, Native, "F32", 0.0, widen: |x| x, narrow: |x| x, stored: sealed::Stored::Native);
weight!(f64 => f64, Native, "F64", 0.0, widen: |x| x, narrow: |x| x, stored: sealed::Stored::Native);
weight!(half::f16 => f32, F16, "F16", half::f16::ZERO,
    widen: |x| x.to_f32(), narrow: |x| half::f16::from_f32(x),
    stored: |w| sealed::Stored::Half(bytemuck::cast_slice(w)));
weight!(half::bf16 => f32, Bf16, "BF16", half::bf16::ZERO,
    widen: |x| x.to_f32(), narrow: |x| half::bf16::from_f32(x),
    stored: |w| sealed::Stored::Half(bytemuck::cast_slice(w)));

/// `x` rounded to the nearest integer (ties to even) and saturated to `±127`; NaN is `0`.
/// The quantization of every `i8` path: weights here (a `const fn`, for
/// [`crate::Linear::from_f32_rows`]), activations in the kernels.
#[inline]
#[must_use]
pub(crate) const fn quantize(x: f32) -> i8 {
    // Adding and subtracting 1.5·2²³ rounds to an integer, ties to even, for |x| < 2²²;
    // beyond that the value saturates anyway.
    const MAGIC: f32 = 12_582_912.0;
    if x.is_nan() {
        0
    } else if x >= 127.0 {
        127
    } else if x <= -127.0 {
        -127
    } else {
        ((x + MAGIC) - MAGIC) as i8
    }
}

/// Symmetric `i8` weights: the stored value is an integer `q` in `−127 ..= 127` and the weight
/// is `q · scale[n]`, one `f32` scale per output feature `n` (`-128` is never produced).
impl Weight<f32> for i8 {
    const ZERO_WEIGHT: Self = 0;
    type Scale = f32;
    const ZERO_SCALE: f32 = 0.0;
    const KIND: WeightKind = WeightKind::I8;
    const DTYPE: &'static str = "I8";
    /// The stored integer (the weight is this times its feature's scale).
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from(self)
    }
    /// `x` rounded to an integer (ties to even), saturated to `±127`, NaN to `0`.
    #[inline(always)]
    fn narrow(x: f32) -> Self {
        quantize(x)
    }
}

impl sealed::Storage<f32> for i8 {
    fn stored(w: &[Self]) -> sealed::Stored<'_, f32> {
        sealed::Stored::Int8(w)
    }
    fn scales(s: &[f32]) -> &[f32] {
        s
    }
    fn scales_mut(s: &mut [f32]) -> &mut [f32] {
        s
    }
}
