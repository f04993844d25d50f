//! Property tests: invariants of attention checked on random inputs, random masks and random
//! layers, over several const shapes (odd ones included, and shapes on both sides of the
//! streaming kernel's query block of 8).
//!
//! Inputs are uniform in [-2, 2]. Layers come from a seed drawn by proptest: either PyTorch's
//! initialisation (`MultiHead::new` / `new_without_bias`) or random `Linear`s with non-zero
//! biases built with `MultiHead::from_parts`. Masks are random combinations of a structural
//! pattern (full, causal, sliding window, both alignments), a matrix mask (`attend_where`,
//! `block_where` or `additive` with `-inf`/NaN entries) and a key-padding vector. Which keys a
//! mask allows is computed here independently from SPEC.md, not through `Mask::allows`.
//!
//! Tolerances (SPEC.md "Accuracy"): f32 against an f64 oracle `1e-5 + 1e-5·|ref|`, fast f64
//! against `reference` `1e-12 + 1e-12·|ref|`, streaming against weights path `2e-6`. Properties
//! that hold by construction (masking, causality, cross = self) are checked bit for bit.

use nalgebra::{SMatrix, SVector};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::{
    Alignment, AttentionWeights, Float, Linear, Mask, MultiHead, Pattern, Scratch, SelfAttention,
    reference, scaled_dot_product_attention, scaled_dot_product_attention_with_weights,
};

/// Cases per property for layer tests (several matrix products per case).
const CASES: u32 = 64;
/// Cases per property for the cheaper scaled dot-product attention tests.
const CASES_SDPA: u32 = 128;

type TestResult = Result<(), TestCaseError>;

/// f32 against an f64 oracle from the same inputs (SPEC.md): `1e-5 + 1e-5·|ref|`.
const F32: (f64, f64) = (1e-5, 1e-5);
/// Fast f64 against `reference` (SPEC.md): `1e-12 + 1e-12·|ref|`.
const F64: (f64, f64) = (1e-12, 1e-12);
/// f64 identities that reorder the arithmetic (permutations, shifted logits).
const F64_LOOSE: (f64, f64) = (1e-10, 1e-10);
/// Streaming path against weights path in f32 (SPEC.md: no path dependence beyond 2e-6).
const PATHS: (f64, f64) = (2e-6, 0.0);

// ------------------------------------------------------------------------------------------
// Numeric helpers
// ------------------------------------------------------------------------------------------

fn to64<T: Float, const R: usize, const C: usize>(m: &SMatrix<T, R, C>) -> SMatrix<f64, R, C> {
    m.map(|x| x.to_f64())
}

/// `|got − want| ≤ atol + rtol·|want|` entry by entry (NaN fails).
fn close<T: Float, U: Float, const R: usize, const C: usize>(
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
fn rows_identical<T: Float, const R: usize, const C: usize>(
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

fn identical<T: Float, const R: usize, const C: usize>(
    what: &str,
    got: &SMatrix<T, R, C>,
    want: &SMatrix<T, R, C>,
) -> TestResult {
    rows_identical(what, got, want, |_| true)
}

/// Every weight is in [0, 1]; a masked entry is exactly 0; a row with an allowed key sums to 1
/// within 1e-5; a row with none is all zeros.
fn check_distribution_rows<T: Float, const R: usize, const C: usize>(
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
fn mat<const R: usize, const C: usize>() -> impl Strategy<Value = SMatrix<f32, R, C>> {
    vec(-2.0f32..=2.0, R * C).prop_map(SMatrix::from_iterator)
}

fn bool_mat<const R: usize, const C: usize>(
    p_true: f64,
) -> impl Strategy<Value = SMatrix<bool, R, C>> {
    vec(proptest::bool::weighted(p_true), R * C).prop_map(SMatrix::from_iterator)
}

fn bool_array<const N: usize>(p_true: f64) -> impl Strategy<Value = [bool; N]> {
    vec(proptest::bool::weighted(p_true), N).prop_map(|v| v.try_into().unwrap())
}

fn permutation(n: usize) -> impl Strategy<Value = Vec<usize>> {
    Just((0..n).collect::<Vec<_>>()).prop_shuffle()
}

fn poison() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MAX)
    ]
}

fn alignment() -> impl Strategy<Value = Alignment> {
    prop_oneof![Just(Alignment::TopLeft), Just(Alignment::BottomRight)]
}

/// Any structural pattern; windows range over `0..=SKV + 2` (0 sees nothing, beyond `SKV` is
/// causal) and `usize::MAX`.
fn pattern<const SKV: usize>() -> impl Strategy<Value = Pattern> {
    prop_oneof![
        3 => Just(Pattern::Full),
        1 => alignment().prop_map(Pattern::Causal),
        1 => (prop_oneof![4 => 0..=SKV + 2, 1 => Just(usize::MAX)], alignment())
            .prop_map(|(window, alignment)| Pattern::SlidingWindow { window, alignment }),
    ]
}

/// Seed and kind of a random layer (see [`make_layer`]).
fn layer_params() -> impl Strategy<Value = (u64, u8)> {
    (any::<u64>(), 0u8..4)
}

// ------------------------------------------------------------------------------------------
// Masks: owned data, the library `Mask` built from it, and an independent model of SPEC.md
// ------------------------------------------------------------------------------------------

/// The additive part of a random mask: a finite bias where the key is allowed, and `-inf` or
/// NaN (both mask the key) where `blocked`.
#[derive(Clone, Debug)]
struct AdditiveData<const SQ: usize, const SKV: usize> {
    blocked: SMatrix<bool, SQ, SKV>,
    add32: SMatrix<f32, SQ, SKV>,
    add64: SMatrix<f64, SQ, SKV>,
}

impl<const SQ: usize, const SKV: usize> AdditiveData<SQ, SKV> {
    fn new(
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
struct MaskData<const SQ: usize, const SKV: usize> {
    pattern: Pattern,
    /// `true` = may attend.
    attend: Option<SMatrix<bool, SQ, SKV>>,
    /// `true` = masked out.
    block: Option<SMatrix<bool, SQ, SKV>>,
    additive: Option<AdditiveData<SQ, SKV>>,
    pad: Option<[bool; SKV]>,
}

/// The library mask built from [`MaskData`]: without or with an additive part (two types).
enum AnyMask<'a, const SQ: usize, const SKV: usize, T> {
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
trait TestFloat: Float {
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

/// SPEC.md 6 and 13, written independently of the library: the position of query `i` on the
/// key axis is `i` (top-left) or `i + SKV − SQ` (bottom-right); causal sees `j ≤ pos`, a window
/// of `W` sees `pos − W < j ≤ pos`.
fn pattern_allows(pattern: Pattern, sq: usize, skv: usize, i: usize, j: usize) -> bool {
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
    fn block_mut(&mut self) -> &mut SMatrix<bool, SQ, SKV> {
        self.block.get_or_insert_with(|| SMatrix::repeat(false))
    }

    /// Masks every key of query `i`.
    fn block_row(&mut self, i: usize) {
        for j in 0..SKV {
            self.block_mut()[(i, j)] = true;
        }
    }

    /// Masks key `j` for every query (as padding when there is a padding vector).
    fn block_key(&mut self, j: usize) {
        match &mut self.pad {
            Some(p) => p[j] = true,
            None => {
                for i in 0..SQ {
                    self.block_mut()[(i, j)] = true;
                }
            }
        }
    }

    fn mask<T: TestFloat>(&self) -> AnyMask<'_, SQ, SKV, T> {
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

    /// Whether query `i` may use key `j`, from SPEC.md (not from `Mask::allows`).
    fn allows(&self, i: usize, j: usize) -> bool {
        pattern_allows(self.pattern, SQ, SKV, i, j)
            && !self.pad.as_ref().is_some_and(|p| p[j])
            && self.attend.as_ref().is_none_or(|a| a[(i, j)])
            && !self.block.as_ref().is_some_and(|b| b[(i, j)])
            && !self.additive.as_ref().is_some_and(|a| a.blocked[(i, j)])
    }

    fn row_is_empty(&self, i: usize) -> bool {
        (0..SKV).all(|j| !self.allows(i, j))
    }
}

/// An `SQ × SKV` boolean matrix whose `true` entries have density 10 %, 40 % or 80 %.
fn dense_bools<const SQ: usize, const SKV: usize>() -> impl Strategy<Value = SMatrix<bool, SQ, SKV>>
{
    prop_oneof![Just(0.1), Just(0.4), Just(0.8)]
        .prop_flat_map(|p| vec(proptest::bool::weighted(p), SQ * SKV))
        .prop_map(SMatrix::from_iterator)
}

/// A random mask. Each of the four non-structural parts is present with probability 35 %, so
/// every combination occurs (a boolean matrix with an additive one included); a present
/// matrix masks entries with a density of 10 %, 40 % or 80 % (so fully masked rows happen on
/// their own for short key axes); sometimes a row and sometimes a key are forced to be fully
/// masked.
fn mask_data<const SQ: usize, const SKV: usize>() -> impl Strategy<Value = MaskData<SQ, SKV>> {
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
fn random_linear<const D: usize>(rng: &mut SmallRng) -> Linear<D, D, f32> {
    let a = (3.0 / D as f32).sqrt();
    let w = SMatrix::<f32, D, D>::from_fn(|_, _| rng.random_range(-a..a));
    let b = SVector::<f32, D>::from_fn(|_, _| rng.random_range(-0.5f32..0.5));
    Linear::from_matrix(&w, Some(&b))
}

/// `kind % 4`: 0 PyTorch init, 1 PyTorch init without bias, 2–3 random weights and biases.
fn make_layer<const S: usize, const D: usize, const H: usize>(
    seed: u64,
    kind: u8,
) -> MultiHead<S, D, H> {
    let rng = &mut SmallRng::seed_from_u64(seed);
    match kind % 4 {
        0 => MultiHead::new(rng),
        1 => MultiHead::new_without_bias(rng),
        _ => MultiHead::from_parts(
            random_linear(rng),
            random_linear(rng),
            random_linear(rng),
            random_linear(rng),
        ),
    }
}

fn linear_f64<const D: usize>(l: &Linear<D, D, f32>) -> Linear<D, D, f64> {
    let w: SMatrix<f64, D, D> = l.weight().cast();
    let b = l.bias().map(|b| b.cast::<f64>());
    Linear::from_matrix(&w, b.as_ref())
}

/// The same layer in f64 (exact conversion).
fn layer_f64<const S: usize, const D: usize, const H: usize>(
    l: &MultiHead<S, D, H>,
) -> MultiHead<S, D, H, f64> {
    MultiHead::from_parts(
        linear_f64(l.q_proj()),
        linear_f64(l.k_proj()),
        linear_f64(l.v_proj()),
        linear_f64(l.out_proj()),
    )
}

fn out_bias<const S: usize, const D: usize, const H: usize>(
    l: &MultiHead<S, D, H>,
) -> SVector<f32, D> {
    l.out_proj().bias().copied().unwrap_or_else(SVector::zeros)
}

// ------------------------------------------------------------------------------------------
// Scaled dot-product attention properties
// ------------------------------------------------------------------------------------------

/// Property 1: Weights are distributions over the allowed keys; fully masked rows give zero weights
/// and a zero output row on both paths.
fn sdpa_weights_are_distributions<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    md: &MaskData<SQ, SKV>,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let (out, w) = scaled_dot_product_attention_with_weights(q, k, v, &mask, None);
        let stream = scaled_dot_product_attention(q, k, v, &mask, None);
        check_distribution_rows("sdpa weights", &w, |i, j| md.allows(i, j))?;
        for i in (0..SQ).filter(|&i| md.row_is_empty(i)) {
            for e in 0..DV {
                prop_assert!(
                    out[(i, e)] == 0.0 && stream[(i, e)] == 0.0,
                    "fully masked row {} has output {} (weights path) / {} (streaming)",
                    i,
                    out[(i, e)],
                    stream[(i, e)]
                );
            }
        }
        Ok(())
    })
}

/// Property 2: Permuting keys and values together leaves the output unchanged, permuting queries
/// permutes it (with the boolean mask permuted alike); f64, 1e-10.
fn sdpa_permutation<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    pq: &[usize],
    pk: &[usize],
    allowed: &SMatrix<bool, SQ, SKV>,
    use_mask: bool,
) -> TestResult {
    let (q, k, v) = (q.cast::<f64>(), k.cast::<f64>(), v.cast::<f64>());
    let qp = SMatrix::<f64, SQ, D>::from_fn(|i, d| q[(pq[i], d)]);
    let kp = SMatrix::<f64, SKV, D>::from_fn(|j, d| k[(pk[j], d)]);
    let vp = SMatrix::<f64, SKV, DV>::from_fn(|j, e| v[(pk[j], e)]);
    let allowed_p = SMatrix::<bool, SQ, SKV>::from_fn(|i, j| allowed[(pq[i], pk[j])]);
    let (mask, mask_p) = if use_mask {
        (Mask::attend_where(allowed), Mask::attend_where(&allowed_p))
    } else {
        (Mask::none(), Mask::none())
    };
    let (out, w) = scaled_dot_product_attention_with_weights(&q, &k, &v, &mask, None);
    let (out_p, w_p) = scaled_dot_product_attention_with_weights(&qp, &kp, &vp, &mask_p, None);
    let stream_p = scaled_dot_product_attention(&qp, &kp, &vp, &mask_p, None);
    let want = SMatrix::<f64, SQ, DV>::from_fn(|i, e| out[(pq[i], e)]);
    let want_w = SMatrix::<f64, SQ, SKV>::from_fn(|i, j| w[(pq[i], pk[j])]);
    close("permuted output (weights path)", &out_p, &want, F64_LOOSE)?;
    close("permuted output (streaming)", &stream_p, &want, F64_LOOSE)?;
    close("permuted weights", &w_p, &want_w, F64_LOOSE)
}

/// Properties 3 and 4, per query: Keys that query `row` cannot see are replaced by `bad` (NaN, ±inf
/// or huge) in K and V: row `row` is unchanged bit for bit on both paths.
fn sdpa_invisible_keys_per_row<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    md: &MaskData<SQ, SKV>,
    row: usize,
    bad: f32,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let hidden = |j: usize| !md.allows(row, j);
        let k2 = SMatrix::<f32, SKV, D>::from_fn(|j, d| if hidden(j) { bad } else { k[(j, d)] });
        let v2 = SMatrix::<f32, SKV, DV>::from_fn(|j, e| if hidden(j) { bad } else { v[(j, e)] });
        let only = |i: usize| i == row;
        let (out, w) = scaled_dot_product_attention_with_weights(q, k, v, &mask, None);
        let (out2, w2) = scaled_dot_product_attention_with_weights(q, &k2, &v2, &mask, None);
        rows_identical(
            "row with hidden keys poisoned (weights path)",
            &out2,
            &out,
            only,
        )?;
        rows_identical("weights of that row", &w2, &w, only)?;
        let stream = scaled_dot_product_attention(q, k, v, &mask, None);
        let stream2 = scaled_dot_product_attention(q, &k2, &v2, &mask, None);
        rows_identical(
            "row with hidden keys poisoned (streaming)",
            &stream2,
            &stream,
            only,
        )
    })
}

/// Property 4: Keys masked for every query (a padding key, a blocked column, a column of `-inf`/NaN
/// additive entries) get `bad` in K and V: every output row is unchanged and finite.
fn sdpa_dead_keys<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    md: &MaskData<SQ, SKV>,
    bad: f32,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let dead = |j: usize| (0..SQ).all(|i| !md.allows(i, j));
        prop_assert!(
            (0..SKV).any(dead),
            "the strategy should have forced a dead key"
        );
        let k2 = SMatrix::<f32, SKV, D>::from_fn(|j, d| if dead(j) { bad } else { k[(j, d)] });
        let v2 = SMatrix::<f32, SKV, DV>::from_fn(|j, e| if dead(j) { bad } else { v[(j, e)] });
        let (out, w) = scaled_dot_product_attention_with_weights(q, k, v, &mask, None);
        let (out2, w2) = scaled_dot_product_attention_with_weights(q, &k2, &v2, &mask, None);
        identical("dead keys poisoned (weights path)", &out2, &out)?;
        identical("weights with dead keys poisoned", &w2, &w)?;
        let stream = scaled_dot_product_attention(q, k, v, &mask, None);
        let stream2 = scaled_dot_product_attention(q, &k2, &v2, &mask, None);
        identical("dead keys poisoned (streaming)", &stream2, &stream)
    })
}

/// The additive mask of property 5: row `i` is the constant `c_i`, and `-inf` where `blocked`
/// when `use_block`.
fn row_shift<const R: usize, const C: usize>(
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

/// Property 5: An additive mask whose row `i` is the constant `c_i` (and `-inf` where `blocked`,
/// when `use_block`) equals no mask (or `block_where(blocked)`).
fn sdpa_row_shift<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    c: &[f32],
    blocked: &SMatrix<bool, SQ, SKV>,
    use_block: bool,
) -> TestResult {
    let add = row_shift(c, blocked, use_block);
    let add64: SMatrix<f64, SQ, SKV> = add.cast();
    let (q64, k64, v64) = (q.cast::<f64>(), k.cast::<f64>(), v.cast::<f64>());
    let (base32, base64) = if use_block {
        (Mask::block_where(blocked), Mask::block_where(blocked))
    } else {
        (Mask::none(), Mask::none())
    };
    let (a, wa) = scaled_dot_product_attention_with_weights(q, k, v, &Mask::additive(&add), None);
    let (b, wb) = scaled_dot_product_attention_with_weights(q, k, v, &base32, None);
    let sa = scaled_dot_product_attention(q, k, v, &Mask::additive(&add), None);
    // |c| ≤ 50 costs up to half an ulp of 50 (2e-6) in every f32 logit.
    close("f32 shifted rows (weights path)", &a, &b, (3e-5, 1e-5))?;
    close("f32 shifted rows (streaming)", &sa, &b, (3e-5, 1e-5))?;
    close("f32 shifted weights", &wa, &wb, (3e-5, 1e-5))?;
    let (a, wa) =
        scaled_dot_product_attention_with_weights(&q64, &k64, &v64, &Mask::additive(&add64), None);
    let (b, wb) = scaled_dot_product_attention_with_weights(&q64, &k64, &v64, &base64, None);
    let sa = scaled_dot_product_attention(&q64, &k64, &v64, &Mask::additive(&add64), None);
    close("f64 shifted rows (weights path)", &a, &b, F64_LOOSE)?;
    close("f64 shifted rows (streaming)", &sa, &b, F64_LOOSE)?;
    close("f64 shifted weights", &wa, &wb, F64_LOOSE)
}

/// Property 6: Each output coordinate lies between the smallest and largest value of that
/// coordinate over the allowed keys, and the output is the returned weights times V.
fn sdpa_convex_hull<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    md: &MaskData<SQ, SKV>,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let (out, w) = scaled_dot_product_attention_with_weights(q, k, v, &mask, None);
        let stream = scaled_dot_product_attention(q, k, v, &mask, None);
        let tol = 1e-6 * (1.0 + v.amax() as f64);
        for i in 0..SQ {
            let keys: Vec<usize> = (0..SKV).filter(|&j| md.allows(i, j)).collect();
            for e in 0..DV {
                if keys.is_empty() {
                    continue; // zero rows: checked by the distribution property
                }
                let lo = keys
                    .iter()
                    .map(|&j| v[(j, e)])
                    .fold(f32::INFINITY, f32::min) as f64;
                let hi = keys
                    .iter()
                    .map(|&j| v[(j, e)])
                    .fold(f32::NEG_INFINITY, f32::max) as f64;
                for (path, o) in [("weights path", out[(i, e)]), ("streaming", stream[(i, e)])] {
                    let o = o as f64;
                    prop_assert!(
                        o >= lo - tol && o <= hi + tol,
                        "{} output ({}, {}) = {} outside [{}, {}] of the allowed values",
                        path,
                        i,
                        e,
                        o,
                        lo,
                        hi
                    );
                }
            }
        }
        let wv = to64(&w) * to64(v);
        close("weights-path output vs weights·V", &out, &wv, F32)?;
        close("streaming output vs weights·V", &stream, &wv, F32)
    })
}

/// Properties 7 and 10: f32 (both paths) against the f64 reference from the same inputs; fast f64
/// (both paths) against the reference; streaming against weights path in f32.
fn sdpa_precision<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    md: &MaskData<SQ, SKV>,
) -> TestResult {
    with_masks!(md, |m32, m64| {
        let (q64, k64, v64) = (q.cast::<f64>(), k.cast::<f64>(), v.cast::<f64>());
        let (r_out, r_w) = reference::attention(&q64, &k64, &v64, &m64, None);

        let (out32, w32) = scaled_dot_product_attention_with_weights(q, k, v, &m32, None);
        let stream32 = scaled_dot_product_attention(q, k, v, &m32, None);
        close("f32 weights path vs f64 reference", &out32, &r_out, F32)?;
        close("f32 streaming vs f64 reference", &stream32, &r_out, F32)?;
        close("f32 weights vs f64 reference", &w32, &r_w, F32)?;
        close("f32 streaming vs weights path", &stream32, &out32, PATHS)?;

        let (out64, w64) = scaled_dot_product_attention_with_weights(&q64, &k64, &v64, &m64, None);
        let stream64 = scaled_dot_product_attention(&q64, &k64, &v64, &m64, None);
        close("f64 weights path vs reference", &out64, &r_out, F64)?;
        close("f64 streaming vs reference", &stream64, &r_out, F64)?;
        close("f64 weights vs reference", &w64, &r_w, F64)
    })
}

/// Property 11: Under a structural mask alone, weight `(i, j)` is positive exactly where SPEC.md's
/// pattern allows the key and exactly 0 elsewhere.
fn sdpa_pattern_support<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    q: &SMatrix<f32, SQ, D>,
    k: &SMatrix<f32, SKV, D>,
    v: &SMatrix<f32, SKV, DV>,
    pattern: Pattern,
) -> TestResult {
    let mask = match pattern {
        Pattern::Causal(a) => Mask::causal(a),
        Pattern::SlidingWindow {
            window,
            alignment: Alignment::BottomRight,
        } => Mask::sliding_window(window, Alignment::BottomRight),
        p => Mask::none().with_pattern(p),
    };
    prop_assert_eq!(mask.pattern(), pattern);
    let (out, w) = scaled_dot_product_attention_with_weights(q, k, v, &mask, None);
    let stream = scaled_dot_product_attention(q, k, v, &mask, None);
    let allows = |i, j| pattern_allows(pattern, SQ, SKV, i, j);
    check_support(&format!("{pattern:?}"), &w, allows)?;
    check_distribution_rows(&format!("{pattern:?}"), &w, allows)?;
    for i in (0..SQ).filter(|&i| (0..SKV).all(|j| !allows(i, j))) {
        for e in 0..DV {
            prop_assert!(out[(i, e)] == 0.0 && stream[(i, e)] == 0.0);
        }
    }
    Ok(())
}

fn check_support<T: Float, const R: usize, const C: usize>(
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

// ------------------------------------------------------------------------------------------
// Multi-head attention properties
// ------------------------------------------------------------------------------------------

/// Property 1: Per-head and averaged weights are distributions over the allowed keys; a fully
/// masked query outputs exactly `out_proj.bias` (zero without bias) on both paths.
fn mha_weights_are_distributions<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    md: &MaskData<S, S>,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let (y, w) = layer.forward_with_weights(x, &mask);
        let y_stream = layer.forward(x, &mask);
        let allows = |i, j| md.allows(i, j);
        for h in 0..H {
            check_distribution_rows(&format!("head {h}"), w.head(h), allows)?;
        }
        check_distribution_rows("head average", &w.average(), allows)?;
        let bias = out_bias(layer);
        for i in (0..S).filter(|&i| md.row_is_empty(i)) {
            for e in 0..D {
                prop_assert!(
                    y[(i, e)] == bias[e] && y_stream[(i, e)] == bias[e],
                    "fully masked query {}: output {} / {} is not out_proj.bias {}",
                    i,
                    y[(i, e)],
                    y_stream[(i, e)],
                    bias[e]
                );
            }
        }
        Ok(())
    })
}

/// Property 2: forward(P x) = P forward(x) without a mask (or with a key-padding mask permuted
/// alike); weights permute on both axes. f64, 1e-10.
fn mha_permutation<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    perm: &[usize],
    pad: Option<[bool; S]>,
) -> TestResult {
    let l = layer_f64(layer);
    let x = x.cast::<f64>();
    let px = SMatrix::<f64, S, D>::from_fn(|i, e| x[(perm[i], e)]);
    let ppad: Option<[bool; S]> = pad.map(|p| core::array::from_fn(|i| p[perm[i]]));
    let (mask, pmask) = match (&pad, &ppad) {
        (Some(p), Some(pp)) => (Mask::key_is_padding(p), Mask::key_is_padding(pp)),
        _ => (Mask::none(), Mask::none()),
    };
    let (y, w) = l.forward_with_weights(&x, &mask);
    let (py, pw) = l.forward_with_weights(&px, &pmask);
    let py_stream = l.forward(&px, &pmask);
    let want = SMatrix::<f64, S, D>::from_fn(|i, e| y[(perm[i], e)]);
    close(
        "forward(P x) vs P forward(x) (weights path)",
        &py,
        &want,
        F64_LOOSE,
    )?;
    close(
        "forward(P x) vs P forward(x) (streaming)",
        &py_stream,
        &want,
        F64_LOOSE,
    )?;
    for h in 0..H {
        let want_w = SMatrix::<f64, S, S>::from_fn(|i, j| w.head(h)[(perm[i], perm[j])]);
        close(
            &format!("permuted weights, head {h}"),
            pw.head(h),
            &want_w,
            F64_LOOSE,
        )?;
    }
    Ok(())
}

/// Property 3: With a top-left causal mask (or a top-left sliding window), rows `0..=cut` do not
/// change when the tokens after `cut` change, to other values or to NaN.
fn mha_causal_prefix<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    other: &SMatrix<f32, S, D>,
    cut: usize,
    nan: bool,
    window: Option<usize>,
) -> TestResult {
    let mask = match window {
        None => Mask::causal(Alignment::TopLeft),
        Some(window) => Mask::none().with_pattern(Pattern::SlidingWindow {
            window,
            alignment: Alignment::TopLeft,
        }),
    };
    let x2 = SMatrix::<f32, S, D>::from_fn(|i, e| match (i > cut, nan) {
        (false, _) => x[(i, e)],
        (true, false) => other[(i, e)],
        (true, true) => f32::NAN,
    });
    let prefix = |i: usize| i <= cut;
    let (y, w) = layer.forward_with_weights(x, &mask);
    let (y2, w2) = layer.forward_with_weights(&x2, &mask);
    rows_identical("causal prefix (weights path)", &y2, &y, prefix)?;
    for h in 0..H {
        rows_identical(
            &format!("causal prefix weights, head {h}"),
            w2.head(h),
            w.head(h),
            prefix,
        )?;
    }
    let (s, s2) = (layer.forward(x, &mask), layer.forward(&x2, &mask));
    rows_identical("causal prefix (streaming)", &s2, &s, prefix)
}

/// Property 4: Tokens at key-padding positions set to `bad` (NaN, ±inf, huge) do not change the
/// output rows of non-padding queries (self-attention), nor any row of cross-attention whose memory
/// holds them.
fn mha_padding_tokens<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    pad: &[bool; S],
    bad: f32,
    causal: bool,
) -> TestResult {
    let mut mask = Mask::key_is_padding(pad);
    if causal {
        mask = mask.with_pattern(Pattern::Causal(Alignment::TopLeft));
    }
    let x2 = SMatrix::<f32, S, D>::from_fn(|i, e| if pad[i] { bad } else { x[(i, e)] });
    let real = |i: usize| !pad[i];
    let (y, w) = layer.forward_with_weights(x, &mask);
    let (y2, w2) = layer.forward_with_weights(&x2, &mask);
    rows_identical("poisoned padding (weights path)", &y2, &y, real)?;
    for h in 0..H {
        rows_identical(
            &format!("poisoned padding weights, head {h}"),
            w2.head(h),
            w.head(h),
            real,
        )?;
    }
    let (s, s2) = (layer.forward(x, &mask), layer.forward(&x2, &mask));
    rows_identical("poisoned padding (streaming)", &s2, &s, real)?;
    // Clean queries against a poisoned memory: every row is unaffected.
    let c = layer.cross_attention(x, &x2, &mask);
    identical("cross-attention to poisoned padding memory", &c, &s)
}

/// Property 5: A row-constant additive mask (plus `-inf` where blocked) equals no mask (or
/// `block_where`). f32 within 5e-5 (logit shifts up to 50), f64 within 1e-10.
fn mha_row_shift<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    c: &[f32],
    blocked: &SMatrix<bool, S, S>,
    use_block: bool,
) -> TestResult {
    let add = row_shift(c, blocked, use_block);
    let add64: SMatrix<f64, S, S> = add.cast();
    let (base32, base64) = if use_block {
        (Mask::block_where(blocked), Mask::block_where(blocked))
    } else {
        (Mask::none(), Mask::none())
    };
    let (a, wa) = layer.forward_with_weights(x, &Mask::additive(&add));
    let sa = layer.forward(x, &Mask::additive(&add));
    let (b, wb) = layer.forward_with_weights(x, &base32);
    close("f32 shifted rows (weights path)", &a, &b, (5e-5, 5e-5))?;
    close("f32 shifted rows (streaming)", &sa, &b, (5e-5, 5e-5))?;
    for h in 0..H {
        close(
            &format!("f32 shifted weights, head {h}"),
            wa.head(h),
            wb.head(h),
            (5e-5, 0.0),
        )?;
    }
    let l = layer_f64(layer);
    let x64 = x.cast::<f64>();
    let a = l.forward(&x64, &Mask::additive(&add64));
    let b = l.forward(&x64, &base64);
    close("f64 shifted rows", &a, &b, F64_LOOSE)
}

/// Property 6: The output is `out_proj(concat_h(W_h · V_h))` with the returned weights and
/// `V = v_proj(x)` (computed here in f64), within 1e-5.
fn mha_weights_times_values<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    md: &MaskData<S, S>,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let (y, w) = layer.forward_with_weights(x, &mask);
        let dk = D / H;
        let vp = to64(&layer.v_proj().forward(x));
        let mut concat = SMatrix::<f64, S, D>::zeros();
        for h in 0..H {
            let head = to64(w.head(h)) * vp.columns(h * dk, dk);
            concat.columns_mut(h * dk, dk).copy_from(&head);
        }
        let wo = to64(&layer.out_proj().weight());
        let bo = to64(&out_bias(layer));
        let want = SMatrix::<f64, S, D>::from_fn(|i, e| {
            (concat.row(i) * wo.row(e).transpose())[0] + bo[e]
        });
        close("output vs out_proj(concat(W_h V_h))", &y, &want, F32)?;
        close(
            "streaming vs out_proj(concat(W_h V_h))",
            &layer.forward(x, &mask),
            &want,
            F32,
        )
    })
}

/// Properties 7 and 10: f32 (both paths, and weights) against the f64 reference on the same inputs;
/// fast f64 against the reference within 1e-12; streaming against weights path within 2e-6; the f32
/// weights path against the reference run in f32 within 5e-6·(1 + |ref|) (two f32 results with
/// different summation orders).
fn mha_precision<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    md: &MaskData<S, S>,
) -> TestResult {
    with_masks!(md, |m32, m64| {
        let l64 = layer_f64(layer);
        let x64 = x.cast::<f64>();
        let (r_out, r_w) = reference::multi_head(&l64, &x64, &x64, &x64, &m64);

        let (yw, w) = layer.forward_with_weights(x, &m32);
        let y = layer.forward(x, &m32);
        close("f32 streaming vs f64 reference", &y, &r_out, F32)?;
        close("f32 weights path vs f64 reference", &yw, &r_out, F32)?;
        for (h, rw) in r_w.iter().enumerate() {
            close(
                &format!("f32 weights vs f64 reference, head {h}"),
                w.head(h),
                rw,
                F32,
            )?;
        }
        close("f32 streaming vs weights path", &y, &yw, PATHS)?;
        let (r32, _) = reference::multi_head(layer, x, x, x, &m32);
        close("f32 weights path vs f32 reference", &yw, &r32, (5e-6, 5e-6))?;

        let (yw64, w64) = l64.forward_with_weights(&x64, &m64);
        let y64 = l64.forward(&x64, &m64);
        close("f64 streaming vs reference", &y64, &r_out, F64)?;
        close("f64 weights path vs reference", &yw64, &r_out, F64)?;
        for (h, rw) in r_w.iter().enumerate() {
            close(
                &format!("f64 weights vs reference, head {h}"),
                w64.head(h),
                rw,
                F64,
            )?;
        }
        Ok(())
    })
}

/// Property 7 for cross-attention with a memory of another length `M`.
fn mha_cross_precision<const S: usize, const D: usize, const H: usize, const M: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    memory: &SMatrix<f32, M, D>,
    md: &MaskData<S, M>,
) -> TestResult {
    with_masks!(md, |m32, m64| {
        let l64 = layer_f64(layer);
        let (x64, mem64) = (x.cast::<f64>(), memory.cast::<f64>());
        let (r_out, r_w) = reference::multi_head(&l64, &x64, &mem64, &mem64, &m64);
        let (yw, w) = layer.cross_attention_with_weights(x, memory, &m32);
        let y = layer.cross_attention(x, memory, &m32);
        close("f32 cross streaming vs f64 reference", &y, &r_out, F32)?;
        close("f32 cross weights path vs f64 reference", &yw, &r_out, F32)?;
        for (h, rw) in r_w.iter().enumerate() {
            check_distribution_rows(&format!("cross head {h}"), w.head(h), |i, j| {
                md.allows(i, j)
            })?;
            close(&format!("f32 cross weights, head {h}"), w.head(h), rw, F32)?;
        }
        let y64 = l64.cross_attention(&x64, &mem64, &m64);
        close("f64 cross vs reference", &y64, &r_out, F64)
    })
}

/// Property 8: Cross-attention of a sequence with itself is self-attention, bit for bit, through
/// every entry point (`cross_attention`, `attend` with a reused scratch, `forward_boxed`).
fn mha_cross_is_self<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    other: &SMatrix<f32, S, D>,
    md: &MaskData<S, S>,
) -> TestResult {
    with_mask!(md, f32, |mask| {
        let y = layer.forward(x, &mask);
        let (yw, w) = layer.forward_with_weights(x, &mask);
        identical(
            "cross_attention(x, x)",
            &layer.cross_attention(x, x, &mask),
            &y,
        )?;
        let (cy, cw) = layer.cross_attention_with_weights(x, x, &mask);
        identical("cross_attention_with_weights(x, x)", &cy, &yw)?;
        prop_assert_eq!(&cw, &w);
        identical("forward_boxed", &*layer.forward_boxed(x, &mask), &y)?;

        // A scratch and output dirtied by another call first.
        let mut scratch = Scratch::<S, S, D, f32>::new();
        let mut out = SMatrix::<f32, S, D>::zeros();
        let mut aw = AttentionWeights::<S, S, H, f32>::zeros();
        layer.attend(
            other,
            other,
            other,
            &Mask::none(),
            &mut scratch,
            &mut out,
            Some(&mut aw),
        );
        layer.attend(x, x, x, &mask, &mut scratch, &mut out, None);
        identical("attend(x, x, x) with a reused scratch", &out, &y)?;
        layer.attend(x, x, x, &mask, &mut scratch, &mut out, Some(&mut aw));
        identical("attend(x, x, x) with weights", &out, &yw)?;
        prop_assert_eq!(&aw, &w);
        Ok(())
    })
}

/// Property 11 for layers: each head's weights are positive exactly where the pattern allows.
fn mha_pattern_support<const S: usize, const D: usize, const H: usize>(
    layer: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
    pattern: Pattern,
) -> TestResult {
    let mask = match pattern {
        Pattern::Causal(a) => Mask::causal(a),
        Pattern::SlidingWindow {
            window,
            alignment: Alignment::BottomRight,
        } => Mask::sliding_window(window, Alignment::BottomRight),
        p => Mask::none().with_pattern(p),
    };
    let (_, w) = layer.forward_with_weights(x, &mask);
    for h in 0..H {
        check_support(&format!("{pattern:?}, head {h}"), w.head(h), |i, j| {
            pattern_allows(pattern, S, S, i, j)
        })?;
    }
    Ok(())
}

/// Property 9: `MultiHead` with one head is `SelfAttention` followed by the output projection.
fn single_head_is_self_attention<const S: usize, const D: usize>(
    seed: u64,
    from_new: bool,
    x: &SMatrix<f32, S, D>,
    md: &MaskData<S, S>,
) -> TestResult {
    let rng = &mut SmallRng::seed_from_u64(seed);
    let sa = if from_new {
        SelfAttention::<S, D>::new(rng)
    } else {
        SelfAttention::from_parts(random_linear(rng), random_linear(rng), random_linear(rng))
    };
    let o = random_linear::<D>(rng);
    let mh = MultiHead::<S, D, 1>::from_parts(*sa.q_proj(), *sa.k_proj(), *sa.v_proj(), o);
    with_mask!(md, f32, |mask| {
        let want = mh.forward(x, &mask);
        let got = o.forward(&sa.forward(x, &mask));
        close(
            "out_proj(SelfAttention) vs MultiHead<1>",
            &got,
            &want,
            (1e-6, 1e-6),
        )?;
        let (sy, sw) = sa.forward_with_weights(x, &mask);
        let (my, mw) = mh.forward_with_weights(x, &mask);
        close("weights-path outputs", &o.forward(&sy), &my, (1e-6, 1e-6))?;
        close(
            "SelfAttention weights vs head 0",
            &sw,
            mw.head(0),
            (1e-6, 0.0),
        )?;
        check_distribution_rows("SelfAttention weights", &sw, |i, j| md.allows(i, j))?;
        identical(
            "SelfAttention cross_attention(x, x) vs forward",
            &sa.cross_attention(x, x, &mask),
            &sa.forward(x, &mask),
        )
    })
}

// ------------------------------------------------------------------------------------------
// Test suites over shapes
// ------------------------------------------------------------------------------------------

/// Scaled dot-product attention properties for `SQ` queries, `SKV` keys, key width `D` and
/// value width `DV`.
macro_rules! sdpa_suite {
    ($name:ident, $sq:literal, $skv:literal, $d:literal, $dv:literal) => {
        mod $name {
            use super::*;
            const SQ: usize = $sq;
            const SKV: usize = $skv;
            const D: usize = $d;
            const DV: usize = $dv;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES_SDPA))]

                #[test]
                fn p1_weights_are_distributions(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    mut md in mask_data::<SQ, SKV>(), force in proptest::option::of(0..SQ),
                ) {
                    if let Some(i) = force {
                        md.block_row(i);
                    }
                    sdpa_weights_are_distributions(&q, &k, &v, &md)?;
                }

                #[test]
                fn p2_permutation(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    pq in permutation(SQ), pk in permutation(SKV),
                    allowed in bool_mat::<SQ, SKV>(0.7), use_mask in any::<bool>(),
                ) {
                    sdpa_permutation(&q, &k, &v, &pq, &pk, &allowed, use_mask)?;
                }

                #[test]
                fn p3_invisible_keys_do_not_reach_a_row(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    md in mask_data::<SQ, SKV>(), row in 0..SQ, bad in poison(),
                ) {
                    sdpa_invisible_keys_per_row(&q, &k, &v, &md, row, bad)?;
                }

                #[test]
                fn p4_dead_keys_even_nan_do_not_reach_output(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    mut md in mask_data::<SQ, SKV>(), dead in 0..SKV, bad in poison(),
                ) {
                    md.block_key(dead);
                    sdpa_dead_keys(&q, &k, &v, &md, bad)?;
                }

                #[test]
                fn p5_row_constant_additive_is_invisible(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    c in vec(-50.0f32..=50.0, SQ), blocked in bool_mat::<SQ, SKV>(0.3),
                    use_block in any::<bool>(),
                ) {
                    sdpa_row_shift(&q, &k, &v, &c, &blocked, use_block)?;
                }

                #[test]
                fn p6_convex_hull_and_weights_times_v(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    md in mask_data::<SQ, SKV>(),
                ) {
                    sdpa_convex_hull(&q, &k, &v, &md)?;
                }

                #[test]
                fn p7_p10_precision_and_paths_agree(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    md in mask_data::<SQ, SKV>(),
                ) {
                    sdpa_precision(&q, &k, &v, &md)?;
                }

                #[test]
                fn p11_pattern_support_is_exact(
                    q in mat::<SQ, D>(), k in mat::<SKV, D>(), v in mat::<SKV, DV>(),
                    pattern in pattern::<SKV>(),
                ) {
                    sdpa_pattern_support(&q, &k, &v, pattern)?;
                }

                #[test]
                fn mask_model_matches_library(md in mask_data::<SQ, SKV>()) {
                    with_mask!(md, f32, |m32| {
                        for i in 0..SQ {
                            for j in 0..SKV {
                                prop_assert_eq!(
                                    m32.entry::<f32>(i, j).is_some(), md.allows(i, j), "({}, {})", i, j
                                );
                                if let (true, Some(a)) = (md.allows(i, j), &md.additive) {
                                    prop_assert_eq!(m32.entry(i, j), Some(a.add32[(i, j)]));
                                }
                            }
                        }
                    });
                }
            }
        }
    };
}

/// Multi-head attention properties for `SEQ` tokens of `DIM` features, `HEADS` heads, and a
/// cross-attention memory of `MEM` tokens.
macro_rules! mha_suite {
    ($name:ident, $s:literal, $d:literal, $h:literal, $m:literal) => {
        mod $name {
            use super::*;
            const S: usize = $s;
            const D: usize = $d;
            const H: usize = $h;
            const M: usize = $m;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES))]

                #[test]
                fn p1_weights_are_distributions(
                    (seed, kind) in layer_params(), x in mat::<S, D>(),
                    mut md in mask_data::<S, S>(), force in proptest::option::of(0..S),
                ) {
                    if let Some(i) = force {
                        md.block_row(i);
                    }
                    mha_weights_are_distributions(&make_layer::<S, D, H>(seed, kind), &x, &md)?;
                }

                #[test]
                fn p2_permutation_equivariance(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), perm in permutation(S),
                    pad in proptest::option::of(bool_array::<S>(0.3)),
                ) {
                    mha_permutation(&make_layer::<S, D, H>(seed, kind), &x, &perm, pad)?;
                }

                #[test]
                fn p3_causal_future_tokens_are_invisible(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), other in mat::<S, D>(),
                    cut in 0..S, nan in any::<bool>(),
                    window in proptest::option::of(1..=S + 1),
                ) {
                    let layer = make_layer::<S, D, H>(seed, kind);
                    mha_causal_prefix(&layer, &x, &other, cut, nan, window)?;
                }

                #[test]
                fn p4_poisoned_padding_tokens_are_invisible(
                    (seed, kind) in layer_params(), x in mat::<S, D>(),
                    mut pad in bool_array::<S>(0.3), forced in 0..S, bad in poison(),
                    causal in any::<bool>(),
                ) {
                    pad[forced] = true;
                    let layer = make_layer::<S, D, H>(seed, kind);
                    mha_padding_tokens(&layer, &x, &pad, bad, causal)?;
                }

                #[test]
                fn p5_row_constant_additive_is_invisible(
                    (seed, kind) in layer_params(), x in mat::<S, D>(),
                    c in vec(-50.0f32..=50.0, S), blocked in bool_mat::<S, S>(0.3),
                    use_block in any::<bool>(),
                ) {
                    let layer = make_layer::<S, D, H>(seed, kind);
                    mha_row_shift(&layer, &x, &c, &blocked, use_block)?;
                }

                #[test]
                fn p6_output_is_weights_times_values(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), md in mask_data::<S, S>(),
                ) {
                    mha_weights_times_values(&make_layer::<S, D, H>(seed, kind), &x, &md)?;
                }

                #[test]
                fn p7_p10_precision_and_paths_agree(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), md in mask_data::<S, S>(),
                ) {
                    mha_precision(&make_layer::<S, D, H>(seed, kind), &x, &md)?;
                }

                #[test]
                fn p7_cross_attention_precision(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), memory in mat::<M, D>(),
                    md in mask_data::<S, M>(),
                ) {
                    let layer = make_layer::<S, D, H>(seed, kind);
                    mha_cross_precision(&layer, &x, &memory, &md)?;
                }

                #[test]
                fn p8_cross_attention_with_itself_is_self_attention(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), other in mat::<S, D>(),
                    md in mask_data::<S, S>(),
                ) {
                    mha_cross_is_self(&make_layer::<S, D, H>(seed, kind), &x, &other, &md)?;
                }

                #[test]
                fn p9_single_head_is_self_attention_then_out_proj(
                    seed in any::<u64>(), from_new in any::<bool>(), x in mat::<S, D>(),
                    md in mask_data::<S, S>(),
                ) {
                    single_head_is_self_attention::<S, D>(seed, from_new, &x, &md)?;
                }

                #[test]
                fn p11_pattern_support_is_exact(
                    (seed, kind) in layer_params(), x in mat::<S, D>(), pattern in pattern::<S>(),
                ) {
                    mha_pattern_support(&make_layer::<S, D, H>(seed, kind), &x, pattern)?;
                }
            }
        }
    };
}

mha_suite!(mha_seq7_dim12_heads3, 7, 12, 3, 5);
mha_suite!(mha_seq3_dim4_heads2, 3, 4, 2, 6);
mha_suite!(mha_seq5_dim8_heads1, 5, 8, 1, 1);
mha_suite!(mha_seq16_dim32_heads4, 16, 32, 4, 9);
mha_suite!(mha_seq9_dim6_heads6, 9, 6, 6, 17);

sdpa_suite!(sdpa_sq5_skv9_d6_dv3, 5, 9, 6, 3);
sdpa_suite!(sdpa_sq9_skv5_d4_dv2, 9, 5, 4, 2);
sdpa_suite!(sdpa_sq7_skv7_d4_dv4, 7, 7, 4, 4);
sdpa_suite!(sdpa_sq3_skv3_d2_dv5, 3, 3, 2, 5);
sdpa_suite!(sdpa_sq16_skv16_d8_dv8, 16, 16, 8, 8);
sdpa_suite!(sdpa_sq1_skv4_d3_dv2, 1, 4, 3, 2);
sdpa_suite!(sdpa_sq17_skv11_d5_dv7, 17, 11, 5, 7);

// ------------------------------------------------------------------------------------------
// Property 11, spelled out on the rectangular case SQ = 5, SKV = 9
// ------------------------------------------------------------------------------------------

/// Which keys query `i` sees, as a predicate on `(i, j)`.
type Visible<'a> = &'a dyn Fn(i64, i64) -> bool;

/// Top-left: query i sees keys j ≤ i. Bottom-right: j ≤ i + 4 (the last query sees all 9
/// keys). `Mask::sliding_window(W, Alignment::BottomRight)` (bottom-right): i + 4 − W < j ≤ i + 4; a top-left window:
/// i − W < j ≤ i. Weights are positive on exactly those keys and exactly 0 elsewhere.
fn rectangular_alignments(
    q: &SMatrix<f32, 5, 6>,
    k: &SMatrix<f32, 9, 6>,
    v: &SMatrix<f32, 9, 3>,
    window: usize,
) -> TestResult {
    let w = window as i64;
    let top_left_window = Pattern::SlidingWindow {
        window,
        alignment: Alignment::TopLeft,
    };
    let cases: [(&str, Mask<'_, 5, 9>, Visible<'_>); 4] = [
        (
            "causal top-left",
            Mask::causal(Alignment::TopLeft),
            &|i, j| j <= i,
        ),
        (
            "causal bottom-right",
            Mask::causal(Alignment::BottomRight),
            &|i, j| j <= i + 4,
        ),
        (
            "sliding_window (bottom-right)",
            Mask::sliding_window(window, Alignment::BottomRight),
            &|i, j| i + 4 - w < j && j <= i + 4,
        ),
        (
            "sliding window top-left",
            Mask::none().with_pattern(top_left_window),
            &|i, j| i - w < j && j <= i,
        ),
    ];
    for (what, mask, visible) in cases {
        let (_, weights) = scaled_dot_product_attention_with_weights(q, k, v, &mask, None);
        check_support(what, &weights, |i, j| visible(i as i64, j as i64))?;
        check_distribution_rows(what, &weights, |i, j| visible(i as i64, j as i64))?;
    }
    // Square: the two alignments coincide.
    let causal = |a| scaled_dot_product_attention_with_weights(k, k, v, &Mask::causal(a), None).1;
    prop_assert_eq!(causal(Alignment::TopLeft), causal(Alignment::BottomRight));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES_SDPA))]

    /// See [`rectangular_alignments`].
    #[test]
    fn p11_rectangular_causal_alignments_5x9(
        q in mat::<5, 6>(), k in mat::<9, 6>(), v in mat::<9, 3>(), window in 0usize..=11,
    ) {
        rectangular_alignments(&q, &k, &v, window)?;
    }
}

/// Poison values really are poison: without a mask, a NaN value row reaches every output row.
/// (Guards the NaN tests above against passing vacuously.)
#[test]
fn unmasked_nan_propagates() {
    let q = SMatrix::<f32, 3, 2>::from_fn(|i, j| (i + j) as f32 * 0.1);
    let mut v = SMatrix::<f32, 3, 2>::from_fn(|i, j| (i * 2 + j) as f32);
    v[(1, 0)] = f32::NAN;
    let out = scaled_dot_product_attention(&q, &q, &v, &Mask::none(), None);
    assert!((0..3).all(|i| out[(i, 0)].is_nan()));
}

/// Outputs of two paths are NaN in the same places and agree within 2e-6 elsewhere.
fn same_nan_pattern<const R: usize, const C: usize>(
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES_SDPA))]

    /// SPEC.md: results do not depend on the path, and NaN in an *unmasked* input propagates
    /// (as in PyTorch). One NaN is put in Q, K or V under a random mask; the streaming path
    /// must be NaN exactly where the weights path is.
    /// (Regression: the streaming kernel once wrote a row whose softmax sum was NaN as zeros.)
    #[test]
    fn p10_paths_agree_on_nan_in_unmasked_inputs(
        q in mat::<5, 6>(), k in mat::<9, 6>(), v in mat::<9, 3>(), md in mask_data::<5, 9>(),
        which in 0..3usize, row in 0..9usize, col in 0..6usize,
    ) {
        let (mut q, mut k, mut v) = (q, k, v);
        match which {
            0 => q[(row % 5, col)] = f32::NAN,
            1 => k[(row, col)] = f32::NAN,
            _ => v[(row, col % 3)] = f32::NAN,
        }
        with_mask!(md, f32, |mask| {
            let (out, _) = scaled_dot_product_attention_with_weights(&q, &k, &v, &mask, None);
            let stream = scaled_dot_product_attention(&q, &k, &v, &mask, None);
            same_nan_pattern("streaming vs weights path", &stream, &out)?;
        })
}

    /// The same for a layer: a NaN token (no mask) makes every output row NaN on both paths.
    #[test]
    fn p10_layer_paths_agree_on_a_nan_token(
        (seed, kind) in layer_params(), x in mat::<7, 12>(), token in 0..7usize, col in 0..12usize,
    ) {
        let layer = make_layer::<7, 12, 3>(seed, kind);
        let mut x = x;
        x[(token, col)] = f32::NAN;
        let (yw, _) = layer.forward_with_weights(&x, &Mask::none());
        let y = layer.forward(&x, &Mask::none());
        same_nan_pattern("forward vs forward_with_weights", &y, &yw)?;
        prop_assert!(yw.iter().all(|v| v.is_nan()));
    }
}

// ------------------------------------------------------------------------------------------
// Huge values: the streaming path stays finite wherever the weights path does
// ------------------------------------------------------------------------------------------

/// Values of magnitude up to the type's maximum: `±m · 10^e` with `m` in `[0.25, 1]`, `e` in
/// `lo..=hi`, and one sign per column, so that the sums over keys overflow unless the
/// streaming path guards them (clamped to `clamp`).
fn huge<const R: usize, const C: usize>(
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
fn huge_values_agree<T: Float, const R: usize, const C: usize>(
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES_SDPA))]

    /// f32 values up to 3.4e38 (and f64 up to 1.8e308) under random masks: no overflow to ±∞
    /// in the streaming path where the weights path is finite.
    #[test]
    fn huge_values_stay_finite_sdpa(
        q in mat::<9, 4>(), k in mat::<13, 4>(), v in huge::<13, 3>(36, 38, f32::MAX.into()),
        v64 in huge::<13, 3>(306, 308, f64::MAX), md in mask_data::<9, 13>(),
    ) {
        let v32 = v.map(|x| x as f32);
        let vmax = v32.amax() as f64;
        with_masks!(md, |m32, m64| {
            let (w, _) = scaled_dot_product_attention_with_weights(&q, &k, &v32, &m32, None);
            let s = scaled_dot_product_attention(&q, &k, &v32, &m32, None);
            huge_values_agree("f32", &s, &w, vmax)?;
            let (q64, k64) = (q.cast::<f64>(), k.cast::<f64>());
            let (w, _) = scaled_dot_product_attention_with_weights(&q64, &k64, &v64, &m64, None);
            let s = scaled_dot_product_attention(&q64, &k64, &v64, &m64, None);
            huge_values_agree("f64", &s, &w, v64.amax())?;
        });
    }

    /// The same through a layer (a `SelfAttention` head, whose output is the attention
    /// output itself): small queries and keys, value tokens of magnitude up to 1e38, so
    /// `V = value W_vᵀ` is huge (and mostly finite).
    #[test]
    fn huge_values_stay_finite_layer(
        seed in any::<u64>(), x in mat::<7, 12>(), value in huge::<7, 12>(37, 38, 2e38),
        md in mask_data::<7, 7>(),
    ) {
        let rng = &mut SmallRng::seed_from_u64(seed);
        let head = SelfAttention::<7, 12>::from_parts(
            random_linear(rng),
            random_linear(rng),
            random_linear(rng),
        );
        let value = value.map(|x| x as f32);
        let vmax = to64(&head.v_proj().forward(&value)).amax();
        let mut scratch = Scratch::<7, 7, 12>::new();
        let (mut s, mut w) = (SMatrix::zeros(), SMatrix::zeros());
        let mut weights = SMatrix::<f32, 7, 7>::zeros();
        with_mask!(md, f32, |mask| {
            head.attend(&x, &x, &value, &mask, &mut scratch, &mut s, None);
            head.attend(&x, &x, &value, &mask, &mut scratch, &mut w, Some(&mut weights));
            huge_values_agree("SelfAttention", &s, &w, vmax)?;
        });
    }
}

/// The case that overflowed before the streaming path rescaled its sums: q = 0.5 everywhere
/// and eight values of 1e38 (their sum is 8e38 > f32::MAX).
#[test]
fn eight_values_of_1e38_give_1e38() {
    let q = SMatrix::<f32, 8, 4>::repeat(0.5);
    let v = SMatrix::<f32, 8, 4>::repeat(1e38);
    let s = scaled_dot_product_attention(&q, &q, &v, &Mask::none(), None);
    let (w, _) = scaled_dot_product_attention_with_weights(&q, &q, &v, &Mask::none(), None);
    assert!(s.iter().all(|&x| x == 1e38), "streaming: {}", s[(0, 0)]);
    assert!(w.iter().all(|&x| x == 1e38), "weights path: {}", w[(0, 0)]);
}
