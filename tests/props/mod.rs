//! What the property tests share: tolerances, comparisons, strategies, random masks with an
//! independent model of docs/SEMANTICS.md, and random layers. Included by `properties_sdpa.rs` and
//! `properties_layers.rs` (two test binaries, so the two halves compile in parallel).
#![allow(dead_code, unused_macros, unused_imports)]

use nalgebra::{SMatrix, SVector};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::{
    Alignment, AttentionWeights, Bias, Float, Linear, Mask, MultiHead, Pattern, Scratch,
    SelfAttention, reference, scaled_dot_product_attention,
    scaled_dot_product_attention_with_weights,
};

/// Cases per property for layer tests (several matrix products per case).
pub const CASES: u32 = 64;
/// Cases per property for the cheaper scaled dot-product attention tests.
pub const CASES_SDPA: u32 = 128;

pub type TestResult = Result<(), TestCaseError>;

/// f32 against an f64 oracle from the same inputs (docs/SEMANTICS.md): `1e-5 + 1e-5·|ref|`.
pub const F32: (f64, f64) = (1e-5, 1e-5);
/// Fast f64 against `reference` (docs/SEMANTICS.md): `1e-12 + 1e-12·|ref|`.
pub const F64: (f64, f64) = (1e-12, 1e-12);
/// f64 identities that reorder the arithmetic (permutations, shifted logits).
pub const F64_LOOSE: (f64, f64) = (1e-10, 1e-10);
/// Streaming path against weights path in f32 (docs/SEMANTICS.md: no path dependence beyond 2e-6).
pub const PATHS: (f64, f64) = (2e-6, 0.0);

// ------------------------------------------------------------------------------------------
// Numeric helpers
// ------------------------------------------------------------------------------------------

pub fn to64<T: Float, const R: usize, const C: usize>(m: &SMatrix<T, R, C>) -> SMatrix<f64, R, C> {
    m.map(|x| x.to_f64())
}

/// `|got − want| ≤ atol + rtol·|want|` entry by entry (NaN fails).
pub fn close<T: Float, U: Float, const R: usize, const C: usize>(
    what: &str,
    got: &SMatrix<T, R, C>,
    want: &SMatrix<U, R, C>,
    (atol, rtol): (f64, f64),
) -> TestResult {
    for i in 0..R {
        for j in 0..C {
            let (g, w) = (got[(i, j)].to_f64(), want[(i, j)].to_f64());
            let tol = atol + rtol * w.abs();
            let err = (g - w).abs();
            if err.is_nan() || err > tol {
                return Err(TestCaseError::fail(format!(
                    "{what}: entry ({i}, {j}) is {g:e}, expected {w:e} (|diff| {err:e} > {tol:e})"
                )));
            }
        }
    }
    Ok(())
}

/// Rows selected by `rows` are equal entry by entry (`==`, so NaN fails) and finite.
pub fn rows_identical<T: Float, const R: usize, const C: usize>(
    what: &str,
    got: &SMatrix<T, R, C>,
    want: &SMatrix<T, R, C>,
    rows: impl Fn(usize) -> bool,
) -> TestResult {
    for i in (0..R).filter(|&i| rows(i)) {
        for j in 0..C {
            let (g, w) = (got[(i, j)], want[(i, j)]);
            prop_assert!(
                g == w && g.to_f64().is_finite(),
                "{}: entry ({}, {}) is {:?}, expected {:?}",
                what,
                i,
                j,
                g,
                w
            );
        }
    }
    Ok(())
}

pub fn identical<T: Float, const R: usize, const C: usize>(
    what: &str,
    got: &SMatrix<T, R, C>,
    want: &SMatrix<T, R, C>,
) -> TestResult {
    rows_identical(what, got, want, |_| true)
}

/// Every weight is in [0, 1]; a masked entry is exactly 0; a row with an allowed key sums to 1
/// within 1e-5; a row with none is all zeros.
pub fn check_distribution_rows<T: Float, const R: usize, const C: usize>(
    what: &str,
    w: &SMatrix<T, R, C>,
    allows: impl Fn(usize, usize) -> bool,
) -> TestResult {
    for i in 0..R {
        let mut sum = 0.0;
        for j in 0..C {
            let x = w[(i, j)].to_f64();
            prop_assert!(
                (0.0..=1.0).contains(&x),
                "{}: weight ({}, {}) = {} is not in [0, 1]",
                what,
                i,
                j,
                x
            );
            if !allows(i, j) {
                prop_assert!(
                    x == 0.0,
                    "{}: masked weight ({}, {}) = {} is not exactly 0",
                    what,
                    i,
                    j,
                    x
                );
            }
            sum += x;
        }
        if (0..C).any(|j| allows(i, j)) {
            prop_assert!(
                (sum - 1.0).abs() <= 1e-5,
                "{}: row {} sums to {}",
                what,
                i,
                sum
            );
        } else {
            prop_assert!(sum == 0.0, "{}: fully masked row {} is not zero", what, i);
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------------

/// An `R × C` matrix with entries uniform in [-2, 2].
pub fn mat<const R: usize, const C: usize>() -> impl Strategy<Value = SMatrix<f32, R, C>> {
    vec(-2.0f32..=2.0, R * C).prop_map(SMatrix::from_iterator)
}

pub fn bool_mat<const R: usize, const C: usize>(
    p_true: f64,
) -> impl Strategy<Value = SMatrix<bool, R, C>> {
    vec(proptest::bool::weighted(p_true), R * C).prop_map(SMatrix::from_iterator)
}

pub fn bool_array<const N: usize>(p_true: f64) -> impl Strategy<Value = [bool; N]> {
    vec(proptest::bool::weighted(p_true), N).prop_map(|v| v.try_into().unwrap())
}

pub fn permutation(n: usize) -> impl Strategy<Value = Vec<usize>> {
    Just((0..n).collect::<Vec<_>>()).prop_shuffle()
}

pub fn poison() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MAX)
    ]
}

pub fn alignment() -> impl Strategy<Value = Alignment> {
    prop_oneof![Just(Alignment::TopLeft), Just(Alignment::BottomRight)]
}

/// Any structural pattern; windows range over `0..=SKV + 2` (0 sees nothing, beyond `SKV` is
/// causal) and `usize::MAX`.
pub fn pattern<const SKV: usize>() -> impl Strategy<Value = Pattern> {
    prop_oneof![
        3 => Just(Pattern::Full),
        1 => alignment().prop_map(Pattern::Causal),
        1 => (prop_oneof![4 => 0..=SKV + 2, 1 => Just(usize::MAX)], alignment())
            .prop_map(|(window, alignment)| Pattern::SlidingWindow { window, alignment }),
    ]
}

/// Seed and kind of a random layer (see [`make_layer`]).
pub fn layer_params() -> impl Strategy<Value = (u64, u8)> {
    (any::<u64>(), 0u8..4)
}

// ------------------------------------------------------------------------------------------
// Masks: owned data, the library `Mask` built from it, and an independent model of docs/SEMANTICS.md
// ------------------------------------------------------------------------------------------

/// The additive part of a random mask: a finite bias where the key is allowed, and `-inf` or
/// NaN (both mask the key) where `blocked`.
#[derive(Clone, Debug)]
pub struct AdditiveData<const SQ: usize, const SKV: usize> {
    pub blocked: SMatrix<bool, SQ, SKV>,
    pub add32: SMatrix<f32, SQ, SKV>,
    pub add64: SMatrix<f64, SQ, SKV>,
}

impl<const SQ: usize, const SKV: usize> AdditiveData<SQ, SKV> {
    pub fn new(
        blocked: SMatrix<bool, SQ, SKV>,
        bias: &SMatrix<f32, SQ, SKV>,
        nan_entry: &SMatrix<bool, SQ, SKV>,
    ) -> Self {
        let add32 = SMatrix::from_fn(|i, j| match (blocked[(i, j)], nan_entry[(i, j)]) {
            (false, _) => bias[(i, j)],
            (true, false) => f32::NEG_INFINITY,
            (true, true) => f32::NAN,
        });
        Self {
            blocked,
            add32,
            add64: add32.cast(),
        }
    }
}

/// A random mask as plain data: every part optional, as in the library (a key is used only
/// when every part present allows it).
#[derive(Clone, Debug)]
pub struct MaskData<const SQ: usize, const SKV: usize> {
    pub pattern: Pattern,
    /// `true` = may attend.
    pub attend: Option<SMatrix<bool, SQ, SKV>>,
    /// `true` = masked out.
    pub block: Option<SMatrix<bool, SQ, SKV>>,
    pub additive: Option<AdditiveData<SQ, SKV>>,
    pub pad: Option<[bool; SKV]>,
}

/// The library mask built from [`MaskData`]: without or with an additive part (two types).
pub enum AnyMask<'a, const SQ: usize, const SKV: usize, T> {
    Plain(Mask<'a, SQ, SKV>),
    Additive(Mask<'a, SQ, SKV, &'a SMatrix<T, SQ, SKV>>),
}

/// Runs `$body` with `$m` bound to the library mask of `$md` for scalar `$t`, whichever of the
/// two mask types it is (the body is compiled for both).
macro_rules! with_mask {
    ($md:expr, $t:ty, |$m:ident| $body:expr) => {
        match $md.mask::<$t>() {
            AnyMask::Plain($m) => $body,
            AnyMask::Additive($m) => $body,
        }
    };
}

/// [`with_mask!`] for the `f32` and `f64` masks of the same data at once.
macro_rules! with_masks {
    ($md:expr, |$m32:ident, $m64:ident| $body:expr) => {
        match ($md.mask::<f32>(), $md.mask::<f64>()) {
            (AnyMask::Plain($m32), AnyMask::Plain($m64)) => $body,
            (AnyMask::Additive($m32), AnyMask::Additive($m64)) => $body,
            _ => unreachable!("both masks come from the same data"),
        }
    };
}

/// Picks the additive matrix of the right scalar type.
pub trait TestFloat: Float {
    fn additive<const SQ: usize, const SKV: usize>(
        a: &AdditiveData<SQ, SKV>,
    ) -> &SMatrix<Self, SQ, SKV>;
}
impl TestFloat for f32 {
    fn additive<const SQ: usize, const SKV: usize>(
        a: &AdditiveData<SQ, SKV>,
    ) -> &SMatrix<Self, SQ, SKV> {
        &a.add32
    }
}
impl TestFloat for f64 {
    fn additive<const SQ: usize, const SKV: usize>(
        a: &AdditiveData<SQ, SKV>,
    ) -> &SMatrix<Self, SQ, SKV> {
        &a.add64
    }
}

/// docs/SEMANTICS.md rules 6 and 9, written independently of the library: the position of query `i` on the
/// key axis is `i` (top-left) or `i + SKV − SQ` (bottom-right); causal sees `j ≤ pos`, a window
/// of `W` sees `pos − W < j ≤ pos`.
pub fn pattern_allows(pattern: Pattern, sq: usize, skv: usize, i: usize, j: usize) -> bool {
    let (i, j, sq, skv) = (i as i128, j as i128, sq as i128, skv as i128);
    let pos = |a: Alignment| match a {
        Alignment::TopLeft => i,
        Alignment::BottomRight => i + skv - sq,
    };
    match pattern {
        Pattern::Full => true,
        Pattern::Causal(a) => j <= pos(a),
        Pattern::SlidingWindow { window, alignment } => {
            let p = pos(alignment);
            j <= p && j > p - window as i128
        }
    }
}

impl<const SQ: usize, const SKV: usize> MaskData<SQ, SKV> {
    /// The block-where part, created empty if absent.
    pub fn block_mut(&mut self) -> &mut SMatrix<bool, SQ, SKV> {
        self.block.get_or_insert_with(|| SMatrix::repeat(false))
    }

    /// Masks every key of query `i`.
    pub fn block_row(&mut self, i: usize) {
        for j in 0..SKV {
            self.block_mut()[(i, j)] = true;
        }
    }

    /// Masks key `j` for every query (as padding when there is a padding vector).
    pub fn block_key(&mut self, j: usize) {
        match &mut self.pad {
            Some(p) => p[j] = true,
            None => {
                for i in 0..SQ {
                    self.block_mut()[(i, j)] = true;
                }
            }
        }
    }

    pub fn mask<T: TestFloat>(&self) -> AnyMask<'_, SQ, SKV, T> {
        let mut m = Mask::none().with_pattern(self.pattern);
        if let Some(a) = &self.attend {
            m = m.with_attend_where(a);
        }
        if let Some(b) = &self.block {
            m = m.with_block_where(b);
        }
        if let Some(p) = &self.pad {
            m = m.with_key_is_padding(p);
        }
        match &self.additive {
            None => AnyMask::Plain(m),
            Some(a) => AnyMask::Additive(m.with_additive(T::additive(a))),
        }
    }

    /// Whether query `i` may use key `j`, from docs/SEMANTICS.md (not from `Mask::allows`).
    pub fn allows(&self, i: usize, j: usize) -> bool {
        pattern_allows(self.pattern, SQ, SKV, i, j)
            && !self.pad.as_ref().is_some_and(|p| p[j])
            && self.attend.as_ref().is_none_or(|a| a[(i, j)])
            && !self.block.as_ref().is_some_and(|b| b[(i, j)])
            && !self.additive.as_ref().is_some_and(|a| a.blocked[(i, j)])
    }

    pub fn row_is_empty(&self, i: usize) -> bool {
        (0..SKV).all(|j| !self.allows(i, j))
    }
}

/// An `SQ × SKV` boolean matrix whose `true` entries have density 10 %, 40 % or 80 %.
pub fn dense_bools<const SQ: usize, const SKV: usize>()
-> impl Strategy<Value = SMatrix<bool, SQ, SKV>> {
    prop_oneof![Just(0.1), Just(0.4), Just(0.8)]
        .prop_flat_map(|p| vec(proptest::bool::weighted(p), SQ * SKV))
        .prop_map(SMatrix::from_iterator)
}

/// A random mask. Each of the four non-structural parts is present with probability 35 %, so
/// every combination occurs (a boolean matrix with an additive one included); a present
/// matrix masks entries with a density of 10 %, 40 % or 80 % (so fully masked rows happen on
/// their own for short key axes); sometimes a row and sometimes a key are forced to be fully
/// masked.
pub fn mask_data<const SQ: usize, const SKV: usize>() -> impl Strategy<Value = MaskData<SQ, SKV>> {
    let additive = (
        dense_bools::<SQ, SKV>(),
        mat::<SQ, SKV>(),
        bool_mat::<SQ, SKV>(0.5),
    )
        .prop_map(|(blocked, bias, nan)| AdditiveData::new(blocked, &(bias * 1.5), &nan));
    (
        pattern::<SKV>(),
        proptest::option::weighted(0.35, dense_bools::<SQ, SKV>().prop_map(|b| b.map(|x| !x))),
        proptest::option::weighted(0.35, dense_bools::<SQ, SKV>()),
        proptest::option::weighted(0.35, additive),
        proptest::option::weighted(0.35, bool_array::<SKV>(0.3)),
        proptest::option::weighted(0.2, 0..SQ),
        proptest::option::weighted(0.2, 0..SKV),
    )
        .prop_map(
            |(pattern, attend, block, additive, pad, force_row, force_key)| {
                let mut md = MaskData {
                    pattern,
                    attend,
                    block,
                    additive,
                    pad,
                };
                if let Some(i) = force_row {
                    md.block_row(i);
                }
                if let Some(j) = force_key {
                    md.block_key(j);
                }
                md
            },
        )
}

// ------------------------------------------------------------------------------------------
// Layers
// ------------------------------------------------------------------------------------------

/// A random `D → D` map with unit-scale outputs for unit-scale inputs and a non-zero bias.
pub fn random_linear<const D: usize>(rng: &mut SmallRng) -> Linear<D, D, f32> {
    let a = (3.0 / D as f32).sqrt();
    let w = SMatrix::<f32, D, D>::from_fn(|_, _| rng.random_range(-a..a));
    let b = SVector::<f32, D>::from_fn(|_, _| rng.random_range(-0.5f32..0.5));
    Linear::from_matrix(&w, Some(&b))
}

/// `kind % 4`: 0 PyTorch init, 1 PyTorch init without bias, 2–3 random weights and biases.
pub fn make_layer<const S: usize, const D: usize, const H: usize>(
    seed: u64,
    kind: u8,
) -> MultiHead<S, D, H> {
    let rng = &mut SmallRng::seed_from_u64(seed);
    match kind % 4 {
        0 => MultiHead::new(rng, Bias::Present),
        1 => MultiHead::new(rng, Bias::Absent),
        _ => MultiHead::from_parts(
            random_linear(rng),
            random_linear(rng),
            random_linear(rng),
            random_linear(rng),
        ),
    }
}

pub fn linear_f64<const D: usize>(l: &Linear<D, D, f32>) -> Linear<D, D, f64> {
    let w: SMatrix<f64, D, D> = l.weight().cast();
    let b = l.bias().map(|b| b.cast::<f64>());
    Linear::from_matrix(&w, b.as_ref())
}

/// The same layer in f64 (exact conversion).
pub fn layer_f64<const S: usize, const D: usize, const H: usize>(
    l: &MultiHead<S, D, H>,
) -> MultiHead<S, D, H, f64> {
    MultiHead::from_parts(
        linear_f64(l.q_proj()),
        linear_f64(l.k_proj()),
        linear_f64(l.v_proj()),
        linear_f64(l.out_proj()),
    )
}

pub fn out_bias<const S: usize, const D: usize, const H: usize>(
    l: &MultiHead<S, D, H>,
) -> SVector<f32, D> {
    l.out_proj().bias().copied().unwrap_or_else(SVector::zeros)
}

pub fn check_support<T: Float, const R: usize, const C: usize>(
    what: &str,
    w: &SMatrix<T, R, C>,
    allows: impl Fn(usize, usize) -> bool,
) -> TestResult {
    for i in 0..R {
        for j in 0..C {
            let x = w[(i, j)].to_f64();
            prop_assert!(
                (x > 0.0) == allows(i, j) && (x == 0.0) != allows(i, j),
                "{}: weight ({}, {}) = {} but the key is {}",
                what,
                i,
                j,
                x,
                if allows(i, j) { "visible" } else { "hidden" }
            );
        }
    }
    Ok(())
}

/// Outputs of two paths are NaN in the same places and agree within 2e-6 elsewhere.
pub fn same_nan_pattern<const R: usize, const C: usize>(
    what: &str,
    got: &SMatrix<f32, R, C>,
    want: &SMatrix<f32, R, C>,
) -> TestResult {
    for i in 0..R {
        for j in 0..C {
            let (g, w) = (got[(i, j)], want[(i, j)]);
            prop_assert!(
                g.is_nan() == w.is_nan() && (g.is_nan() || g == w || (g - w).abs() <= 2e-6),
                "{}: entry ({}, {}) is {} on one path and {} on the other",
                what,
                i,
                j,
                g,
                w
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Huge values: the streaming path stays finite wherever the weights path does
// ------------------------------------------------------------------------------------------

/// Values of magnitude up to the type's maximum: `±m · 10^e` with `m` in `[0.25, 1]`, `e` in
/// `lo..=hi`, and one sign per column, so that the sums over keys overflow unless the
/// streaming path guards them (clamped to `clamp`).
pub fn huge<const R: usize, const C: usize>(
    lo: i32,
    hi: i32,
    clamp: f64,
) -> impl Strategy<Value = SMatrix<f64, R, C>> {
    (vec((0.25f64..=1.0, lo..=hi), R * C), vec(any::<bool>(), C)).prop_map(move |(v, signs)| {
        let mut m: SMatrix<f64, R, C> =
            SMatrix::from_iterator(v.into_iter().map(|(m, e)| m * 10f64.powi(e)));
        for (j, &negative) in signs.iter().enumerate() {
            m.column_mut(j)
                .apply(|x| *x = if negative { -*x } else { *x }.clamp(-clamp, clamp));
        }
        m
    })
}

/// Both paths are finite in the same places, and agree within `2e-6 · max|v|` (f32) or
/// `1e-12 · max|v|` (f64) where finite: the streaming sums `Σ p·v` must not overflow where the
/// normalised weights path does not.
pub fn huge_values_agree<T: Float, const R: usize, const C: usize>(
    what: &str,
    stream: &SMatrix<T, R, C>,
    weights_path: &SMatrix<T, R, C>,
    vmax: f64,
) -> TestResult {
    let rel = if T::BYTES == 4 { 2e-6 } else { 1e-12 };
    for i in 0..R {
        for j in 0..C {
            let (s, w) = (stream[(i, j)].to_f64(), weights_path[(i, j)].to_f64());
            prop_assert!(
                s.is_finite() == w.is_finite(),
                "{}: ({}, {}) is {} streaming but {} on the weights path",
                what,
                i,
                j,
                s,
                w
            );
            prop_assert!(
                !w.is_finite() || (s - w).abs() <= rel * vmax,
                "{}: ({}, {}) {} vs {}",
                what,
                i,
                j,
                s,
                w
            );
        }
    }
    Ok(())
}

/// The additive mask of property 5: row `i` is the constant `c_i`, and `-inf` where `blocked`
/// when `use_block`.
pub fn row_shift<const R: usize, const C: usize>(
    c: &[f32],
    blocked: &SMatrix<bool, R, C>,
    use_block: bool,
) -> SMatrix<f32, R, C> {
    SMatrix::from_fn(|i, j| {
        if use_block && blocked[(i, j)] {
            f32::NEG_INFINITY
        } else {
            c[i]
        }
    })
}
