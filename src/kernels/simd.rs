//! The vector instruction set the SIMD kernels are written against, and the constants of the
//! vectorised `exp`.
//!
//! A [`Simd`] implementation is a zero-sized *token*: a value of it exists only when the CPU
//! can run its instructions (see `kernels::detect`), so its arithmetic methods are safe to call.
//! Memory access goes through raw pointers and is `unsafe`: the kernels check their slice
//! bounds once, up front, and each `unsafe` block says which check covers it.
//!
//! The kernels (`kernels::vector`) are written once, generically over `Simd`, and compiled per
//! instruction set inside `#[target_feature]` functions, so every method here is
//! `#[inline(always)]` and becomes the instruction itself.

use super::Float;

/// One instruction set for one element type: `LANES` elements per vector.
pub(crate) trait Simd: Copy {
    /// The element type (`f32` or `f64`).
    type E: Float + ExpConstants;
    /// A vector of `LANES` elements.
    type V: Copy;
    /// A lane mask (the result of a comparison).
    type M: Copy;
    /// Elements per vector.
    const LANES: usize;
    /// Width of the micro-tiles (output features, keys, value columns per tile of two query
    /// vectors): 6 or 12, as the register file allows (`2 · TILE` accumulators).
    const TILE: usize;

    /// Every lane `x`.
    fn splat(self, x: Self::E) -> Self::V;
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum; a NaN in `a` gives `b` (so a running maximum `max(x, m)` skips NaN).
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `m ? a : b`, lane by lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// `a` where `m`, `+0` elsewhere (exactly zero even where `a` is NaN).
    fn keep(self, a: Self::V, m: Self::M) -> Self::V;
    /// `a < b` (false for NaN).
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// `a ≥ b` (false for NaN).
    fn ge(self, a: Self::V, b: Self::V) -> Self::M;
    /// `a == b` (false for NaN).
    fn eq(self, a: Self::V, b: Self::V) -> Self::M;
    /// `a` and `b`.
    fn and(self, a: Self::M, b: Self::M) -> Self::M;
    /// `a` and not `b`.
    fn and_not(self, a: Self::M, b: Self::M) -> Self::M;
    /// Whether every lane is set.
    fn all(self, m: Self::M) -> bool;
    /// Each lane rounded to the nearest integer (ties to even).
    fn round(self, v: Self::V) -> Self::V;
    /// `2ⁿ` for integral `n` in the normal exponent range, built from its exponent bits.
    fn pow2(self, n: Self::V) -> Self::V;
    /// `eˣ` lane by lane: relative error ≤ 2 ulp for `x` in `[ln(MIN_POSITIVE), 0]`, `+0` below
    /// (`e^(−∞) = 0`), NaN for NaN. (Correct up to `x ≈ 88` for `f32`; softmax never needs
    /// more than 0.)
    ///
    /// `eˣ = 2ⁿ · eʳ` with `n = round(x / ln 2)` and `r = x − n·ln 2` (`|r| ≤ ln 2 / 2`,
    /// computed in two steps so that it is exact to working precision), `eʳ = 1 + r·p(r)`
    /// (Horner), and the result assembled as `2ⁿ + (r·2ⁿ)·p(r)` with a single rounding. Below
    /// `ln(MIN_POSITIVE)` the result is 0 (this also covers −∞, for which the arithmetic gives
    /// NaN); NaN stays NaN. Every instruction set runs this same sequence.
    #[inline(always)]
    fn exp(self, x: Self::V) -> Self::V {
        let e = |c: Self::E| self.splat(c);
        let c = <Self::E as ExpConstants>::POLY;
        let n = self.round(self.mul(x, e(Self::E::LOG2E)));
        // `fma(n, −c, x)` is `x − n·c` rounded once (the negation is exact).
        let r = self.fma(n, e(-Self::E::LN2_HI), x);
        let r = self.fma(n, e(-Self::E::LN2_LO), r);
        let last = c.len() - 1;
        let mut p = e(c[last]);
        for &ci in c[..last].iter().rev() {
            p = self.fma(p, r, e(ci));
        }
        // 2ⁿ; n is in the normal range wherever the result is kept.
        let two_n = self.pow2(n);
        let y = self.fma(self.mul(r, two_n), p, two_n);
        let tiny = self.lt(x, e(Self::E::CUTOFF));
        self.select(tiny, e(Self::E::ZERO), y)
    }
    /// The sum of the lanes.
    fn reduce_add(self, v: Self::V) -> Self::E;

    /// `LANES` elements from `p`.
    ///
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load(self, p: *const Self::E) -> Self::V;
    /// The first `n ≤ LANES` elements from `p`, zero in the other lanes; nothing past
    /// `p + n` is read (a masked load: no fault even at the end of memory).
    ///
    /// # Safety
    /// `p .. p + n` must be readable and `n ≤ LANES`.
    unsafe fn load_partial(self, p: *const Self::E, n: usize) -> Self::V;
    /// Stores `v` at `p`.
    ///
    /// # Safety
    /// `p .. p + LANES` must be writable.
    unsafe fn store(self, p: *mut Self::E, v: Self::V);
    /// `*p` in every lane.
    ///
    /// # Safety
    /// `p` must be valid for reads and aligned for `E` (a pointer into a slice of `E`).
    unsafe fn broadcast(self, p: *const Self::E) -> Self::V;
    /// The mask of `LANES` booleans from `p` (`true` sets the lane).
    ///
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load_bools(self, p: *const bool) -> Self::M;
}

/// Coefficients of `eʳ ≈ 1 + r·(c1 + r·(c2 + … + r·c6))` on `|r| ≤ ln 2 / 2` for `f32`
/// (Chebyshev fit of `(eʳ − 1)/r`, degree 5: approximation error 3.9e-9 relative, far below
/// one f32 ulp, so the result's error is the arithmetic's rounding; the tests check every
/// f32 in `[−87.3, 0]`). Bit patterns, so the constants are exactly the fitted f32 values.
const EXP_F32: [f32; 6] = [
    f32::from_bits(0x3f80_0000),
    f32::from_bits(0x3f00_0000),
    f32::from_bits(0x3e2a_aa3e),
    f32::from_bits(0x3d2a_aa75),
    f32::from_bits(0x3c09_1ec1),
    f32::from_bits(0x3ab6_a18b),
];

/// Coefficients of `eʳ ≈ 1 + r·(d1 + … + r·d11)` on `|r| ≤ ln 2 / 2` for `f64` (Chebyshev fit,
/// degree 10: error 6.3e-18 relative).
const EXP_F64: [f64; 11] = [
    f64::from_bits(0x3ff0_0000_0000_0000),
    f64::from_bits(0x3fe0_0000_0000_0005),
    f64::from_bits(0x3fc5_5555_5555_5557),
    f64::from_bits(0x3fa5_5555_5555_20af),
    f64::from_bits(0x3f81_1111_1111_00df),
    f64::from_bits(0x3f56_c16c_17f4_3a58),
    f64::from_bits(0x3f2a_01a0_1abe_62dd),
    f64::from_bits(0x3efa_019a_66a7_5dd4),
    f64::from_bits(0x3ec7_1de0_2375_656c),
    f64::from_bits(0x3e92_8a2c_0a72_09fb),
    f64::from_bits(0x3e5a_f4dd_d848_82fe),
];

/// `1 / ln 2`.
const LOG2E_F32: f32 = f32::from_bits(0x3fb8_aa3b);
/// `ln 2` split so that `n · LN2_HI` is exact for every exponent `n` (`f32`).
const LN2_HI_F32: f32 = f32::from_bits(0x3f31_7200);
/// `ln 2 − LN2_HI_F32`.
const LN2_LO_F32: f32 = f32::from_bits(0x35bf_be8e);
/// `ln(f32::MIN_POSITIVE)`: below it `exp` returns 0.
const EXP_CUTOFF_F32: f32 = f32::from_bits(0xc2ae_ac50);
/// `1 / ln 2`.
const LOG2E_F64: f64 = f64::from_bits(0x3ff7_1547_652b_82fe);
/// `ln 2` split for `f64` (fdlibm's values).
const LN2_HI_F64: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
/// `ln 2 − LN2_HI_F64`.
const LN2_LO_F64: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// `ln(f64::MIN_POSITIVE)`.
const EXP_CUTOFF_F64: f64 = f64::from_bits(0xc086_232b_dd7a_bcd2);

/// The constants of [`Simd::exp`] for one element type.
pub(crate) trait ExpConstants: Sized + 'static {
    /// `p(r)`'s coefficients, constant term first.
    const POLY: &'static [Self];
    /// `1 / ln 2`.
    const LOG2E: Self;
    /// `ln 2` split so that `n · LN2_HI` is exact.
    const LN2_HI: Self;
    /// `ln 2 − LN2_HI`.
    const LN2_LO: Self;
    /// `ln(MIN_POSITIVE)`: below it the result is 0.
    const CUTOFF: Self;
}

impl ExpConstants for f32 {
    const POLY: &'static [f32] = &EXP_F32;
    const LOG2E: f32 = LOG2E_F32;
    const LN2_HI: f32 = LN2_HI_F32;
    const LN2_LO: f32 = LN2_LO_F32;
    const CUTOFF: f32 = EXP_CUTOFF_F32;
}

impl ExpConstants for f64 {
    const POLY: &'static [f64] = &EXP_F64;
    const LOG2E: f64 = LOG2E_F64;
    const LN2_HI: f64 = LN2_HI_F64;
    const LN2_LO: f64 = LN2_LO_F64;
    const CUTOFF: f64 = EXP_CUTOFF_F64;
}

/// The methods of a [`Simd`] implementation that are one intrinsic each, written once for
/// every instruction set: `splat`, `load`, `store`, the lane-wise arithmetic and comparisons
/// named in `ops` and `cmps`, and `fma` when its intrinsic takes `a · b + c` in that order;
/// then, as `name: |args| body`, those whose intrinsic takes its operands in another order or
/// needs more than the operands (`fma`, `max`, `select`, `keep`, `and`, `and_not`, `all`,
/// `round`, `reduce_add`, `broadcast`: the arguments in the trait's order).
///
/// Every `unsafe` block calls intrinsics of the implementation's instruction set, which is
/// sound because `self` is the token proving the CPU runs it; `load`, `store` and `broadcast`
/// rely besides on their callers' `# Safety` contracts (`LANES` readable or writable elements
/// at `p`, or one readable element).
macro_rules! one_intrinsic_each {
    (
        splat: $splat:path,
        load: $load:path,
        store: $store:path,
        $(fma: $fma:path,)?
        ops: [$($op:ident: $f:path),* $(,)?],
        cmps: [$($cmp:ident: $g:path),* $(,)?],
        $($method:ident: |$($arg:ident),*| $body:expr),* $(,)?
    ) => {
        #[inline(always)]
        fn splat(self, x: Self::E) -> Self::V {
            // SAFETY: the token proves the instruction set (see the macro's docs).
            unsafe { $splat(x) }
        }
        $(
            #[inline(always)]
            fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                // SAFETY: the token proves the instruction set.
                unsafe { $fma(a, b, c) }
            }
        )?
        $(
            #[inline(always)]
            fn $op(self, a: Self::V, b: Self::V) -> Self::V {
                // SAFETY: the token proves the instruction set.
                unsafe { $f(a, b) }
            }
        )*
        $(
            #[inline(always)]
            fn $cmp(self, a: Self::V, b: Self::V) -> Self::M {
                // SAFETY: the token proves the instruction set.
                unsafe { $g(a, b) }
            }
        )*
        #[inline(always)]
        unsafe fn load(self, p: *const Self::E) -> Self::V {
            // SAFETY: the token proves the instruction set; the caller guarantees `LANES`
            // readable elements at `p`.
            unsafe { $load(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut Self::E, v: Self::V) {
            // SAFETY: the token proves the instruction set; the caller guarantees `LANES`
            // writable elements at `p`.
            unsafe { $store(p, v) }
        }
        $($crate::kernels::simd::one_intrinsic_each!(@$method [$($arg),*] $body);)*
    };
    // The signatures of the methods written as `name: |args| body`.
    (@fma [$a:ident, $b:ident, $c:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn fma($a: Self::V, $b: Self::V, $c: Self::V) -> Self::V = $body
        );
    };
    (@max [$a:ident, $b:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn max($a: Self::V, $b: Self::V) -> Self::V = $body
        );
    };
    (@select [$m:ident, $a:ident, $b:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn select($m: Self::M, $a: Self::V, $b: Self::V) -> Self::V = $body
        );
    };
    (@keep [$a:ident, $m:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn keep($a: Self::V, $m: Self::M) -> Self::V = $body
        );
    };
    (@and [$a:ident, $b:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn and($a: Self::M, $b: Self::M) -> Self::M = $body
        );
    };
    (@and_not [$a:ident, $b:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn and_not($a: Self::M, $b: Self::M) -> Self::M = $body
        );
    };
    (@all [$m:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(@fn all($m: Self::M) -> bool = $body);
    };
    (@round [$v:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(@fn round($v: Self::V) -> Self::V = $body);
    };
    (@reduce_add [$v:ident] $body:expr) => {
        $crate::kernels::simd::one_intrinsic_each!(
            @fn reduce_add($v: Self::V) -> Self::E = $body
        );
    };
    (@broadcast [$p:ident] $body:expr) => {
        #[inline(always)]
        unsafe fn broadcast(self, $p: *const Self::E) -> Self::V {
            // SAFETY: the token proves the instruction set; the caller guarantees `p` is
            // readable.
            unsafe { $body }
        }
    };
    (@fn $name:ident($($p:ident: $t:ty),*) -> $r:ty = $body:expr) => {
        #[inline(always)]
        fn $name(self, $($p: $t),*) -> $r {
            // SAFETY: the token proves the instruction set.
            unsafe { $body }
        }
    };
}
pub(crate) use one_intrinsic_each;
