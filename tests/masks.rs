//! Mask conventions, each stated once and tested: alignments, windows, boolean meanings,
//! additive entries, padding, and combinations.

use nalgebra::SMatrix;
use static_attention::mask::Additive;
use static_attention::{
    Alignment, Mask, MultiHead, Pattern, scaled_dot_product_attention,
    scaled_dot_product_attention_with_weights,
};

/// The set of keys each query may see, as a 0/1 matrix printed row by row.
fn visible<const SQ: usize, const SKV: usize>(mask: &Mask<'_, SQ, SKV>) -> Vec<String> {
    (0..SQ)
        .map(|i| {
            (0..SKV)
                .map(|j| if mask.allows(i, j) { '1' } else { '.' })
                .collect()
        })
        .collect()
}

#[test]
fn causal_alignments_on_rectangles() {
    // 2 queries, 4 keys.
    assert_eq!(
        visible(&Mask::<2, 4>::causal(Alignment::TopLeft)),
        ["1...", "11.."]
    );
    assert_eq!(
        visible(&Mask::<2, 4>::causal(Alignment::BottomRight)),
        ["111.", "1111"]
    );
    // 4 queries, 2 keys: bottom-right leaves the first two queries with no key at all.
    assert_eq!(
        visible(&Mask::<4, 2>::causal(Alignment::TopLeft)),
        ["1.", "11", "11", "11"]
    );
    assert_eq!(
        visible(&Mask::<4, 2>::causal(Alignment::BottomRight)),
        ["..", "..", "1.", "11"]
    );
    // Square: both are lower-triangular.
    assert_eq!(
        visible(&Mask::<3, 3>::causal(Alignment::TopLeft)),
        visible(&Mask::<3, 3>::causal(Alignment::BottomRight))
    );
}

#[test]
fn sliding_window_counts_the_query_itself() {
    // Window 2: query i sees i − 2 < j ≤ i, two keys including itself.
    assert_eq!(
        visible(&Mask::<4, 4>::sliding_window(2, Alignment::BottomRight)),
        ["1...", "11..", ".11.", "..11"]
    );
    assert_eq!(
        visible(&Mask::<3, 3>::sliding_window(1, Alignment::BottomRight)),
        ["1..", ".1.", "..1"]
    );
    assert_eq!(
        visible(&Mask::<2, 2>::sliding_window(0, Alignment::BottomRight)),
        ["..", ".."]
    );
    // A window wider than the sequence is plain causal.
    assert_eq!(
        visible(&Mask::<3, 3>::sliding_window(
            usize::MAX,
            Alignment::BottomRight
        )),
        visible(&Mask::<3, 3>::causal(Alignment::TopLeft))
    );
    // Rectangles: bottom-right places the last query on the last key (KV-cache decoding),
    // top-left places query i on key i; the pattern form is the same mask.
    assert_eq!(
        visible(&Mask::<2, 4>::sliding_window(2, Alignment::BottomRight)),
        [".11.", "..11"]
    );
    let top_left = Mask::<2, 4>::none().with_pattern(Pattern::SlidingWindow {
        window: 2,
        alignment: Alignment::TopLeft,
    });
    assert_eq!(visible(&top_left), ["1...", "11.."]);
    assert_eq!(
        visible(&Mask::<2, 4>::sliding_window(2, Alignment::TopLeft)),
        ["1...", "11.."]
    );
    // Out-of-range queries see nothing, whatever the index.
    let m = Mask::<4, 4>::sliding_window(2, Alignment::BottomRight);
    assert_eq!(m.key_range(4), (0, 0));
    assert_eq!(m.key_range(usize::MAX), (0, 0));
    assert_eq!(
        Mask::<3, 3>::causal(Alignment::TopLeft).key_range(10),
        (0, 0)
    );
}

#[test]
fn boolean_masks_say_their_meaning() {
    let m = SMatrix::<bool, 2, 3>::new(true, false, true, false, false, true);
    assert_eq!(visible(&Mask::<2, 3>::attend_where(&m)), ["1.1", "..1"]);
    assert_eq!(visible(&Mask::<2, 3>::block_where(&m)), [".1.", "11."]);
    let pad = [false, true, false];
    assert_eq!(visible(&Mask::<2, 3>::key_is_padding(&pad)), ["1.1", "1.1"]);
}

#[test]
fn parts_combine_with_and() {
    let pad = [false, false, true];
    let blocked =
        SMatrix::<bool, 3, 3>::new(false, true, false, false, false, false, true, false, false);
    let mask = Mask::<3, 3>::block_where(&blocked)
        .with_pattern(Pattern::Causal(Alignment::TopLeft))
        .with_key_is_padding(&pad);
    assert_eq!(visible(&mask), ["1..", "11.", ".1."]);
}

#[test]
fn additive_entries_bias_scores_and_neg_inf_or_nan_mask() {
    let bias = SMatrix::<f32, 1, 4>::new(0.0, -1.5, f32::NEG_INFINITY, f32::NAN);
    let mask = Mask::additive(&bias);
    assert_eq!(mask.entry(0, 0), Some(0.0));
    assert_eq!(mask.entry(0, 1), Some(-1.5));
    assert_eq!(mask.entry(0, 2), None);
    assert_eq!(mask.entry(0, 3), None);
    assert_eq!(mask.entry(0, 9), None, "out of range is masked");

    // Applied after scaling: s = scale·q·k + m. With q·k = 0 the weights are softmax(m).
    let q = SMatrix::<f32, 1, 2>::zeros();
    let k = SMatrix::<f32, 4, 2>::zeros();
    let v = SMatrix::<f32, 4, 1>::new(1.0, 2.0, f32::NAN, f32::INFINITY);
    let (out, w) = scaled_dot_product_attention_with_weights(&q, &k, &v, &mask, Some(10.0));
    let e = (-1.5f32).exp();
    assert!((w[(0, 0)] - 1.0 / (1.0 + e)).abs() < 1e-6);
    assert_eq!((w[(0, 2)], w[(0, 3)]), (0.0, 0.0));
    assert!(
        (out[(0, 0)] - (1.0 + 2.0 * e) / (1.0 + e)).abs() < 1e-6,
        "masked NaN/inf values stay out"
    );
}

/// Both paths give a zero output and zero weights under a mask that blocks every key.
fn blocks_everything<A: Additive<f32, 3, 3>>(mask: &Mask<'_, 3, 3, A>) {
    let x = SMatrix::<f32, 3, 2>::new(1.0, 2.0, 3.0, 4.0, 5.0, 6.0);
    let (out, w) = scaled_dot_product_attention_with_weights(&x, &x, &x, mask, None);
    assert_eq!(out, SMatrix::<f32, 3, 2>::zeros());
    assert_eq!(w, SMatrix::<f32, 3, 3>::zeros());
    let streamed = scaled_dot_product_attention(&x, &x, &x, mask, None);
    assert_eq!(streamed, SMatrix::<f32, 3, 2>::zeros());
}

#[test]
fn all_masks_blocking_everything_give_zeros_not_nan() {
    let all = [true; 3];
    let neg_inf = SMatrix::<f32, 3, 3>::repeat(f32::NEG_INFINITY);
    let none = SMatrix::<bool, 3, 3>::repeat(false);
    let masks: [Mask<'_, 3, 3>; 3] = [
        Mask::key_is_padding(&all),
        Mask::attend_where(&none),
        Mask::sliding_window(0, Alignment::BottomRight),
    ];
    for mask in &masks {
        blocks_everything(mask);
    }
    blocks_everything(&Mask::additive(&neg_inf));
}

#[test]
fn boolean_and_additive_parts_combine() {
    // The issue this guards: `attend_where(&b)` followed by an additive matrix used to drop `b`.
    let allowed = SMatrix::<bool, 2, 3>::new(true, false, true, false, true, true);
    let bias = SMatrix::<f32, 2, 3>::new(0.0, 5.0, f32::NEG_INFINITY, 1.0, 0.0, 0.5);
    let both = Mask::attend_where(&allowed).with_additive(&bias);
    // Same mask built in the other order, and with the block-where form of the same matrix.
    let blocked = allowed.map(|a| !a);
    let other_order = Mask::additive(&bias).with_attend_where(&allowed);
    let block_form = Mask::block_where(&blocked).with_additive(&bias);
    let want = [
        [Some(0.0), None, None],      // (0, 1) blocked by the matrix, (0, 2) by −∞
        [None, Some(0.0), Some(0.5)], // (1, 0) blocked by the matrix
    ];
    for (i, row) in want.iter().enumerate() {
        for (j, &entry) in row.iter().enumerate() {
            assert_eq!(both.entry(i, j), entry, "({i}, {j})");
            assert_eq!(other_order.entry(i, j), entry, "({i}, {j}), other order");
            assert_eq!(block_form.entry(i, j), entry, "({i}, {j}), block form");
            assert_eq!(both.allows(i, j), entry.is_some());
        }
    }
    // Through attention: row 0 sees only key 0; row 1 weighs keys 1 and 2 by softmax(0, 0.5).
    let q = SMatrix::<f32, 2, 2>::zeros();
    let k = SMatrix::<f32, 3, 2>::zeros();
    let v = SMatrix::<f32, 3, 1>::new(1.0, 2.0, 4.0);
    let (out, w) = scaled_dot_product_attention_with_weights(&q, &k, &v, &both, None);
    let streamed = scaled_dot_product_attention(&q, &k, &v, &both, None);
    let p = 0.5f32.exp() / (1.0 + 0.5f32.exp());
    assert_eq!(
        w.row(0).iter().copied().collect::<Vec<_>>(),
        [1.0, 0.0, 0.0]
    );
    assert!((w[(1, 2)] - p).abs() < 1e-6 && w[(1, 0)] == 0.0);
    for o in [&out, &streamed] {
        assert_eq!(o[(0, 0)], 1.0);
        assert!((o[(1, 0)] - (2.0 * (1.0 - p) + 4.0 * p)).abs() < 1e-6);
    }
}

#[test]
fn a_boolean_mask_serves_f32_and_f64_layers() {
    // A mask without an additive part carries no scalar type.
    let pad = [false, true, false];
    let mask: Mask<'_, 3, 3> = Mask::causal(Alignment::BottomRight).with_key_is_padding(&pad);
    let l32 = MultiHead::<3, 4, 2>::from_seed(5);
    let l64 = MultiHead::<3, 4, 2, f64>::from_seed(5);
    let y32 = l32.forward(&SMatrix::repeat(0.5), &mask);
    let y64 = l64.forward(&SMatrix::repeat(0.5), &mask);
    assert!((y32.cast::<f64>() - y64).amax() < 1e-6);
}

#[test]
fn unmasked_non_finite_inputs_propagate() {
    // Documented: NaN in a key or value the mask allows reaches the output (as in PyTorch).
    let q = SMatrix::<f32, 1, 1>::new(1.0);
    let k = SMatrix::<f32, 2, 1>::new(1.0, 1.0);
    let v = SMatrix::<f32, 2, 1>::new(1.0, f32::NAN);
    let out = static_attention::scaled_dot_product_attention(&q, &k, &v, &Mask::none(), None);
    assert!(out[(0, 0)].is_nan());
}
