//! Property tests of scaled dot-product attention (`scaled_dot_product_attention`, the
//! streaming path, and `scaled_dot_product_attention_with_weights`, the weights path):
//! invariants checked on random inputs and random masks, over several const shapes (odd ones
//! included, and shapes on both sides of the streaming kernel's query block of 8). The layers'
//! properties are in properties_layers.rs.
//!
//! Inputs are uniform in [-2, 2] (values up to `f32::MAX` and `f64::MAX` in the overflow
//! tests). Masks are random combinations of a structural pattern (full, causal, sliding
//! window, both alignments), a matrix mask (`attend_where`, `block_where` or `additive` with
//! `-inf`/NaN entries) and a key-padding vector. Which keys a mask allows is computed here
//! independently from docs/SEMANTICS.md, not through `Mask::allows`.
//!
//! Tolerances (docs/SEMANTICS.md "Accuracy"): f32 against an f64 oracle `1e-5 + 1e-5·|ref|`, fast f64
//! against `reference` `1e-12 + 1e-12·|ref|`, streaming against weights path `2e-6`;
//! identities that reorder the arithmetic (permutations, shifted logits) `1e-10 + 1e-10·|ref|`
//! in f64, shifted logits `3e-5 + 1e-5·|ref|` in f32. Properties that hold by construction
//! (keys a query cannot see poisoned with NaN, ±∞ or huge values; zero weights outside the
//! pattern; zero rows for fully masked queries) are checked bit for bit.

#[macro_use]
mod props;

#[allow(unused_imports)]
use nalgebra::{SMatrix, SVector};
#[allow(unused_imports)]
use props::*;
#[allow(unused_imports)]
use proptest::collection::vec;
use proptest::prelude::*;
#[allow(unused_imports)]
use rand::{RngExt, SeedableRng, rngs::SmallRng};
#[allow(unused_imports)]
use static_attention::{
    Alignment, AttentionWeights, Float, Linear, Mask, MultiHead, Pattern, Scratch, SelfAttention,
    reference, scaled_dot_product_attention, scaled_dot_product_attention_with_weights,
};

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

/// Property 11: Under a structural mask alone, weight `(i, j)` is positive exactly where docs/SEMANTICS.md's
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES_SDPA))]

    /// docs/SEMANTICS.md: results do not depend on the path, and NaN in an *unmasked* input propagates
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
