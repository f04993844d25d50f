//! Property tests of the layers (`MultiHead`, `SelfAttention`): invariants checked on random
//! inputs, random masks and random layers, over several const shapes (odd ones included, and
//! shapes on both sides of the streaming kernel's query block of 8).
//!
//! Inputs are uniform in [-2, 2]. Layers come from a seed drawn by proptest: either PyTorch's
//! initialisation (`MultiHead::new` with `Bias::Present` or `Bias::Absent`) or random `Linear`s
//! with non-zero biases built with `MultiHead::from_parts`. Masks are random combinations of a
//! structural pattern (full, causal, sliding window, both alignments), a matrix mask
//! (`attend_where`, `block_where` or `additive` with `-inf`/NaN entries) and a key-padding vector.
//! Which keys a mask allows is computed here independently from docs/SEMANTICS.md, not through
//! `Mask::allows`.
//!
//! Tolerances (docs/SEMANTICS.md "Accuracy"): f32 against an f64 oracle `1e-5 + 1e-5·|ref|`, fast f64
//! against `reference` `1e-12 + 1e-12·|ref|`, streaming against weights path `2e-6`. Properties
//! that hold by construction (masking, causality, cross = self) are checked bit for bit.

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
    Alignment, AttentionWeights, Bias, Float, Linear, Mask, MultiHead, Pattern, Scratch,
    SelfAttention, heap, reference, scaled_dot_product_attention,
    scaled_dot_product_attention_with_weights,
};

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
/// every entry point (`cross_attention`, `attend` with a reused scratch, `forward_into` on
/// heap buffers).
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
        let mut boxed: Box<SMatrix<f32, S, D>> = heap::zeroed();
        layer.forward_into(x, &mask, &mut heap::zeroed(), &mut boxed);
        identical("forward_into (heap buffers)", &*boxed, &y)?;

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
        SelfAttention::<S, D>::new(rng, Bias::Present)
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// NaN propagation through a layer (properties_sdpa.rs checks it for the function,
    /// `p10_paths_agree_on_nan_in_unmasked_inputs`): a NaN token (no mask) makes every output
    /// row NaN on both paths.
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Huge values through a layer, as `huge_values_stay_finite_sdpa` (properties_sdpa.rs)
    /// checks them for the function: a `SelfAttention` head, whose output is the attention
    /// output itself; small queries and keys, value tokens of magnitude up to 1e38, so
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
