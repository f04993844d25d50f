//! The vector instruction set the SIMD kernels are written against, and the constants of the
//! vectorised `exp` and `tanh`.
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
    type E: Float + ExpConstants + TanhConstants;
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
    /// `tanh(x)` lane by lane (the soft-capping of scores): relative error at most 1.4e-7
    /// (about 2 ulp) for `f32` and 4.0e-16 (about 2 ulp) for `f64`, as measured against
    /// `f64::tanh` (see `TanhConstants`); `±1` beyond `|x| = 20`; NaN for NaN.
    ///
    /// Below `|x| = 0.625` the odd form `x + x·x²·P(x²)/Q(x²)` (a polynomial alone for `f32`),
    /// which keeps the relative accuracy down to the smallest `x` (no cancellation near 0);
    /// from there `1 − 2/(e^(2|x|) + 1)` with [`Simd::exp`] (where `tanh ≥ 0.55`, so the
    /// subtraction loses at most a bit), the sign restored. `|x|` is clamped to 20 before the
    /// `exp` (`tanh(20)` rounds to 1 in both types), which keeps it in range and makes `±∞`
    /// give `±1`.
    #[inline(always)]
    fn tanh(self, x: Self::V) -> Self::V {
        let e = |c: Self::E| self.splat(c);
        let zero = e(Self::E::ZERO);
        let one = e(Self::E::ONE);
        // |x| (a NaN stays NaN: `max` gives its second operand for a NaN first one).
        let ax = self.max(x, self.sub(zero, x));
        // Near 0: x + x³·P(x²)/Q(x²), Q monic (empty: Q = 1).
        let x2 = self.mul(x, x);
        let pc = <Self::E as TanhConstants>::P;
        let qc = <Self::E as TanhConstants>::Q;
        let mut r = e(pc[0]);
        for &c in &pc[1..] {
            r = self.fma(r, x2, e(c));
        }
        if !qc.is_empty() {
            let mut den = self.add(x2, e(qc[0]));
            for &c in &qc[1..] {
                den = self.fma(den, x2, e(c));
            }
            r = self.div(r, den);
        }
        let near = self.fma(self.mul(x, x2), r, x);
        // Elsewhere: 1 − 2/(e^(2|x|) + 1), |x| clamped (a NaN passes the `lt` unclamped).
        let clamp = e(Self::E::of(20.0));
        let ac = self.select(self.lt(clamp, ax), clamp, ax);
        let big = self.exp(self.add(ac, ac));
        let far = self.sub(one, self.div(e(Self::E::of(2.0)), self.add(big, one)));
        let far = self.select(self.lt(x, zero), self.sub(zero, far), far);
        let small = self.lt(ax, e(Self::E::of(TANH_NEAR)));
        self.select(small, near, far)
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

/// Where [`Simd::tanh`] switches from its odd rational form to `1 − 2/(e^(2|x|) + 1)`.
const TANH_NEAR: f64 = 0.625;

/// The constants of [`Simd::tanh`] for `|x| < 0.625`: `tanh(x) = x + x·x²·P(x²)/Q(x²)`.
///
/// The forms are Cephes' (`tanhf`: a degree-4 polynomial in `x²`, no `Q`; `tanh`: a 2/3
/// rational with monic `Q`). Relative error of the whole [`Simd::tanh`] against `f64::tanh`,
/// measured by `kernels::tests::vector_tanh_is_accurate` (every 97th f32 from 1e-30 to 25,
/// both signs; for `f64` a dense sweep of `[−25, 25]`, the switch at 0.625 and random points
/// from 1e-300 to 10), the same on AVX2 and AVX-512: `f32` 1.39e-7 (the platform's `tanhf`
/// 1.59e-7), `f64` 4.0e-16, worst just above the switch, where `1 − 2/(e^(2x) + 1)` carries
/// the `exp`'s error. The test holds them under 2e-7 and 5e-16.
pub(crate) trait TanhConstants: Sized + 'static {
    /// `P`'s coefficients, highest power first.
    const P: &'static [Self];
    /// `Q`'s coefficients below its leading 1, highest power first (empty: `Q = 1`).
    const Q: &'static [Self];
}

impl TanhConstants for f32 {
    // Cephes' decimal coefficients as published, rounded to the nearest f32 by the compiler.
    #[allow(clippy::excessive_precision)]
    const P: &'static [f32] = &[
        -5.704_988_7e-3,
        2.063_908_9e-2,
        -5.373_971_6e-2,
        1.333_144_2e-1,
        -3.333_328_2e-1,
    ];
    const Q: &'static [f32] = &[];
}

impl TanhConstants for f64 {
    const P: &'static [f64] = &[
        -9.643_991_794_250_522e-1,
        -9.928_772_310_019_186e1,
        -1.614_687_684_417_084_5e3,
    ];
    const Q: &'static [f64] = &[
        1.128_116_784_916_329_3e2,
        2.235_488_390_601_004_6e3,
        4.844_063_053_251_255e3,
    ];
}

/// The [`Simd`] implementations of one instruction set, one per column of a table: the
/// implementing types, their associated types and constants, then one row per method in the
/// trait's order, `name(args): cell, cell, …;`. A cell is either the intrinsic that takes the
/// row's arguments in that order (`add(a, b): _mm256_add_ps, …` calls `_mm256_add_ps(a, b)`),
/// or a `{ block }` over the row's arguments. The signatures, attributes and `SAFETY`
/// comments are written once, here.
///
/// Every generated `unsafe` block runs the cell, which calls intrinsics of the column's
/// instruction set: sound because `self` is the token proving the CPU runs it. The memory
/// methods (`load`, `load_partial`, `store`, `broadcast`, `load_bools`) rely besides on their
/// callers' `# Safety` contracts in [`Simd`].
macro_rules! simd_impls {
    (
        impl Simd for $($T:ty),+;
        type E = $($E:ty),+;
        type V = $($V:ty),+;
        type M = $($M:ty),+;
        const LANES = $($lanes:expr),+;
        const TILE = $($tile:expr),+;
        splat $splat_a:tt: $($splat:tt),+;
        add $add_a:tt: $($add:tt),+;
        sub $sub_a:tt: $($sub:tt),+;
        mul $mul_a:tt: $($mul:tt),+;
        div $div_a:tt: $($div:tt),+;
        fma $fma_a:tt: $($fma:tt),+;
        max $max_a:tt: $($max:tt),+;
        select $select_a:tt: $($select:tt),+;
        keep $keep_a:tt: $($keep:tt),+;
        lt $lt_a:tt: $($lt:tt),+;
        ge $ge_a:tt: $($ge:tt),+;
        eq $eq_a:tt: $($eq:tt),+;
        and $and_a:tt: $($and:tt),+;
        and_not $and_not_a:tt: $($and_not:tt),+;
        all $all_a:tt: $($all:tt),+;
        round $round_a:tt: $($round:tt),+;
        pow2 $pow2_a:tt: $($pow2:tt),+;
        reduce_add $reduce_add_a:tt: $($reduce_add:tt),+;
        load $load_a:tt: $($load:tt),+;
        load_partial $load_partial_a:tt: $($load_partial:tt),+;
        store $store_a:tt: $($store:tt),+;
        broadcast $broadcast_a:tt: $($broadcast:tt),+;
        load_bools $load_bools_a:tt: $($load_bools:tt),+;
    ) => {$(
        impl $crate::kernels::simd::Simd for $T {
            type E = $E;
            type V = $V;
            type M = $M;
            const LANES: usize = $lanes;
            const TILE: usize = $tile;

            $crate::kernels::simd::simd_impls!(@fn splat $splat_a (Self::E) -> Self::V = $splat);
            $crate::kernels::simd::simd_impls!(@fn add $add_a (Self::V, Self::V) -> Self::V = $add);
            $crate::kernels::simd::simd_impls!(@fn sub $sub_a (Self::V, Self::V) -> Self::V = $sub);
            $crate::kernels::simd::simd_impls!(@fn mul $mul_a (Self::V, Self::V) -> Self::V = $mul);
            $crate::kernels::simd::simd_impls!(@fn div $div_a (Self::V, Self::V) -> Self::V = $div);
            $crate::kernels::simd::simd_impls!(
                @fn fma $fma_a (Self::V, Self::V, Self::V) -> Self::V = $fma
            );
            $crate::kernels::simd::simd_impls!(@fn max $max_a (Self::V, Self::V) -> Self::V = $max);
            $crate::kernels::simd::simd_impls!(
                @fn select $select_a (Self::M, Self::V, Self::V) -> Self::V = $select
            );
            $crate::kernels::simd::simd_impls!(
                @fn keep $keep_a (Self::V, Self::M) -> Self::V = $keep
            );
            $crate::kernels::simd::simd_impls!(@fn lt $lt_a (Self::V, Self::V) -> Self::M = $lt);
            $crate::kernels::simd::simd_impls!(@fn ge $ge_a (Self::V, Self::V) -> Self::M = $ge);
            $crate::kernels::simd::simd_impls!(@fn eq $eq_a (Self::V, Self::V) -> Self::M = $eq);
            $crate::kernels::simd::simd_impls!(@fn and $and_a (Self::M, Self::M) -> Self::M = $and);
            $crate::kernels::simd::simd_impls!(
                @fn and_not $and_not_a (Self::M, Self::M) -> Self::M = $and_not
            );
            $crate::kernels::simd::simd_impls!(@fn all $all_a (Self::M) -> bool = $all);
            $crate::kernels::simd::simd_impls!(@fn round $round_a (Self::V) -> Self::V = $round);
            $crate::kernels::simd::simd_impls!(@fn pow2 $pow2_a (Self::V) -> Self::V = $pow2);
            $crate::kernels::simd::simd_impls!(
                @fn reduce_add $reduce_add_a (Self::V) -> Self::E = $reduce_add
            );
            $crate::kernels::simd::simd_impls!(
                @unsafe load $load_a (*const Self::E) -> Self::V = $load
            );
            $crate::kernels::simd::simd_impls!(
                @unsafe load_partial $load_partial_a (*const Self::E, usize) -> Self::V
                    = $load_partial
            );
            $crate::kernels::simd::simd_impls!(
                @unsafe store $store_a (*mut Self::E, Self::V) = $store
            );
            $crate::kernels::simd::simd_impls!(
                @unsafe broadcast $broadcast_a (*const Self::E) -> Self::V = $broadcast
            );
            $crate::kernels::simd::simd_impls!(
                @unsafe load_bools $load_bools_a (*const bool) -> Self::M = $load_bools
            );
        }
    )+};
    (@fn $name:ident ($($arg:ident),*) ($($t:ty),*) -> $r:ty = $cell:tt) => {
        #[inline(always)]
        // A cell may be plain arithmetic (the AVX-512 mask logic), with nothing unsafe.
        #[allow(unused_unsafe)]
        fn $name(self, $($arg: $t),*) -> $r {
            // SAFETY: the token proves the instruction set (see the macro's docs).
            unsafe { $crate::kernels::simd::simd_impls!(@call $cell ($($arg),*)) }
        }
    };
    (@unsafe $name:ident ($($arg:ident),*) ($($t:ty),*) $(-> $r:ty)? = $cell:tt) => {
        #[inline(always)]
        unsafe fn $name(self, $($arg: $t),*) $(-> $r)? {
            // SAFETY: the token proves the instruction set; the caller keeps the method's
            // `# Safety` contract for the pointer.
            unsafe { $crate::kernels::simd::simd_impls!(@call $cell ($($arg),*)) }
        }
    };
    (@call { $($body:tt)* } $args:tt) => { { $($body)* } };
    (@call $f:ident ($($arg:ident),*)) => { $f($($arg),*) };
}
pub(crate) use simd_impls;
