//! Small cases computed by hand (checkable on paper), run through the reference path and the
//! fast paths; and every kernel against the reference on odd sizes (the tails of the scalar
//! kernel's blocks and of the SIMD tiles) and across input scales from tiny to large logits.

mod common;

use common::seeded;
use nalgebra::{SMatrix, SVector};
use static_attention::kernels::{Kernel, with_kernel};
use static_attention::{
    Alignment, Linear, Mask, MultiHead, Scratch, reference, scaled_dot_product_attention,
    scaled_dot_product_attention_with_weights,
};

/// σ(x) = 1 / (1 + e^(−x)): the softmax of two scores that differ by x.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn close<const R: usize, const C: usize>(a: &SMatrix<f64, R, C>, b: &SMatrix<f64, R, C>) {
    assert!((a - b).amax() < 1e-12, "\n{a}\n!=\n{b}");
}

const I2: [[f64; 2]; 2] = [[1.0, 0.0], [0.0, 1.0]];

fn two_by_two() -> (SMatrix<f64, 2, 2>, SMatrix<f64, 2, 2>) {
    let q = SMatrix::<f64, 2, 2>::identity();
    let v = SMatrix::<f64, 2, 2>::new(1.0, 2.0, 3.0, 4.0);
    (q, v)
}

#[test]
fn sdpa_two_by_two_by_hand() {
    // Q = K = I, V = [[1, 2], [3, 4]], scale 1/√2.
    // Scores: row 0 = [1/√2, 0], row 1 = [0, 1/√2]; softmax row 0 = [a, 1 − a], a = σ(1/√2).
    let (q, v) = two_by_two();
    let a = sigmoid(std::f64::consts::FRAC_1_SQRT_2);
    let w_expected = SMatrix::<f64, 2, 2>::new(a, 1.0 - a, 1.0 - a, a);
    let out_expected = SMatrix::<f64, 2, 2>::new(
        a * 1.0 + (1.0 - a) * 3.0,
        a * 2.0 + (1.0 - a) * 4.0,
        (1.0 - a) * 1.0 + a * 3.0,
        (1.0 - a) * 2.0 + a * 4.0,
    );
    let (out_ref, w_ref) = reference::attention(&q, &q, &v, &Mask::none(), None);
    close(&out_ref, &out_expected);
    close(&w_ref, &w_expected);
    let (out, w) = scaled_dot_product_attention_with_weights(&q, &q, &v, &Mask::none(), None);
    close(&out, &out_expected);
    close(&w, &w_expected);
    close(
        &scaled_dot_product_attention(&q, &q, &v, &Mask::none(), None),
        &out_expected,
    );
}

#[test]
fn sdpa_two_by_two_causal_and_explicit_scale() {
    let (q, v) = two_by_two();
    // Causal: query 0 sees only key 0, so its output is V's row 0 and its weights [1, 0].
    let (out, w) = scaled_dot_product_attention_with_weights(
        &q,
        &q,
        &v,
        &Mask::causal(Alignment::TopLeft),
        None,
    );
    let b = sigmoid(-std::f64::consts::FRAC_1_SQRT_2); // row 1: scores [0, 1/√2]
    close(&w, &SMatrix::<f64, 2, 2>::new(1.0, 0.0, b, 1.0 - b));
    close(
        &out.row(0).into_owned(),
        &SMatrix::<f64, 1, 2>::new(1.0, 2.0),
    );
    // An explicit scale is used exactly: scale 2 gives scores [2, 0].
    let (_, w) = scaled_dot_product_attention_with_weights(&q, &q, &v, &Mask::none(), Some(2.0));
    assert!((w[(0, 0)] - sigmoid(2.0)).abs() < 1e-12);
    // Scale 0: uniform weights, the output is the mean of V's rows.
    let out = scaled_dot_product_attention(&q, &q, &v, &Mask::none(), Some(0.0));
    close(&out, &SMatrix::<f64, 2, 2>::new(2.0, 3.0, 2.0, 3.0));
}

#[test]
fn multi_head_two_heads_by_hand() {
    // DIM = 2, HEADS = 2 (one feature per head, scale 1), identity projections, zero biases.
    // query = key = I, value = [[1, 2], [3, 4]].
    // Head 0 (feature 0): scores row 0 = [1, 0] → [σ(1), 1 − σ(1)], row 1 = [0, 0] → [½, ½];
    //   values [1, 3] → outputs σ(1) + 3(1 − σ(1)) and 2.
    // Head 1 (feature 1): row 0 = [0, 0] → [½, ½], row 1 = [0, 1] → [1 − σ(1), σ(1)];
    //   values [2, 4] → outputs 3 and 2(1 − σ(1)) + 4σ(1).
    let id = Linear::<2, 2, f64>::from_rows(I2, [0.0; 2]);
    let layer = MultiHead::<2, 2, 2, f64>::from_parts(id, id, id, id);
    let (q, v) = two_by_two();
    let s = sigmoid(1.0);
    let expected =
        SMatrix::<f64, 2, 2>::new(s + 3.0 * (1.0 - s), 3.0, 2.0, 2.0 * (1.0 - s) + 4.0 * s);

    let mut scratch = Scratch::<2, 2, 2, f64>::new();
    let mut out = SMatrix::zeros();
    layer.attend(&q, &q, &v, &Mask::none(), &mut scratch, &mut out, None);
    close(&out, &expected);
    let (out_ref, w_ref) = reference::multi_head(&layer, &q, &q, &v, &Mask::none());
    close(&out_ref, &expected);
    close(&w_ref[0], &SMatrix::<f64, 2, 2>::new(s, 1.0 - s, 0.5, 0.5));
    close(&w_ref[1], &SMatrix::<f64, 2, 2>::new(0.5, 0.5, 1.0 - s, s));
}

#[test]
fn fully_masked_row_gives_zeros_and_the_layer_gives_its_output_bias() {
    let (q, v) = two_by_two();
    // Block every key of query 1.
    let blocked = SMatrix::<bool, 2, 2>::new(false, false, true, true);
    let (out, w) =
        scaled_dot_product_attention_with_weights(&q, &q, &v, &Mask::block_where(&blocked), None);
    assert_eq!(w.row(1).into_owned(), SMatrix::<f64, 1, 2>::zeros());
    assert_eq!(out.row(1).into_owned(), SMatrix::<f64, 1, 2>::zeros());
    assert!((w.row(0).sum() - 1.0).abs() < 1e-12);
    let (out_ref, w_ref) = reference::attention(&q, &q, &v, &Mask::block_where(&blocked), None);
    close(&out_ref, &out);
    close(&w_ref, &w);

    // The layer then outputs out_proj.bias for that token, like PyTorch.
    let id = Linear::<2, 2, f64>::from_rows(I2, [0.0; 2]);
    let out_proj = Linear::from_matrix(
        &SMatrix::identity(),
        Some(&SVector::<f64, 2>::new(0.25, -0.5)),
    );
    let layer = MultiHead::<2, 2, 1, f64>::from_parts(id, id, id, out_proj);
    let y = layer.forward(&q, &Mask::block_where(&blocked));
    assert_eq!(y.row(1).into_owned(), SMatrix::<f64, 1, 2>::new(0.25, -0.5));
    let (y2, w2) = layer.forward_with_weights(&q, &Mask::block_where(&blocked));
    assert_eq!(
        y2.row(1).into_owned(),
        SMatrix::<f64, 1, 2>::new(0.25, -0.5)
    );
    assert_eq!(
        w2.head(0).row(1).into_owned(),
        SMatrix::<f64, 1, 2>::zeros()
    );
}

#[test]
fn reference_softmax_rows() {
    let s = nalgebra::DMatrix::from_row_slice(
        2,
        3,
        &[
            0.0,
            0.0,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
    );
    let w = reference::softmax_rows(&s);
    assert_eq!(
        w.row(0).iter().copied().collect::<Vec<_>>(),
        vec![0.5, 0.5, 0.0]
    );
    assert_eq!(
        w.row(1).iter().copied().collect::<Vec<_>>(),
        vec![0.0, 0.0, 0.0]
    );
}

/// Streaming and weights paths of every kernel against the reference: `f64` within `1e-12`,
/// `f32` (on the same `f32`-rounded inputs) within the crate's bound widened in proportion to
/// the largest logit (`f32` rounding of a logit `s` moves `eˢ` by about `|s|·2⁻²⁴`).
fn against_reference<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(
    seed: u64,
) {
    // Under Miri (an interpreter) one scale; the shapes are small already.
    let scales: &[f64] = if cfg!(miri) {
        &[1.0]
    } else {
        &[1e-3, 0.1, 1.0, 4.0, 30.0]
    };
    let pad: [bool; SKV] = core::array::from_fn(|j| j % 3 == 1);
    let masks: [Mask<'_, SQ, SKV>; 4] = [
        Mask::none(),
        Mask::causal(Alignment::TopLeft),
        Mask::causal(Alignment::BottomRight).with_key_is_padding(&pad),
        Mask::sliding_window(3, Alignment::BottomRight),
    ];
    for kernel in Kernel::supported() {
        for &scale in scales {
            let q = seeded::<SQ, D>(seed, scale);
            let k = seeded::<SKV, D>(seed + 1, scale);
            let v = seeded::<SKV, DV>(seed + 2, 1.0);
            for (m, mask) in masks.iter().enumerate() {
                let what = format!("{} {SQ}×{SKV}×{D}×{DV} ×{scale} mask {m}", kernel.name());
                let (want, want_w) = reference::attention(&q, &k, &v, mask, None);
                let (got, (got2, got_w)) = with_kernel(kernel, || {
                    (
                        scaled_dot_product_attention(&q, &k, &v, mask, None),
                        scaled_dot_product_attention_with_weights(&q, &k, &v, mask, None),
                    )
                })
                .unwrap();
                let tol = 1e-12 * (1.0 + want.amax());
                assert!((got - want).amax() <= tol, "{what}: streaming");
                assert!((got2 - want).amax() <= tol, "{what}: weights path");
                assert!((got_w - want_w).amax() <= 1e-12, "{what}: weights");

                let (q32, k32, v32) = (q.cast::<f32>(), k.cast::<f32>(), v.cast::<f32>());
                let (want, _) =
                    reference::attention(&q32.cast::<f64>(), &k32.cast(), &v32.cast(), mask, None);
                let got = with_kernel(kernel, || {
                    scaled_dot_product_attention(&q32, &k32, &v32, mask, None)
                })
                .unwrap();
                let logit = scale * scale * (D as f64).sqrt();
                let atol = 1e-5 * (1.0 + logit / 4.0);
                for (g, w) in got.iter().zip(want.iter()) {
                    let err = (f64::from(*g) - w).abs();
                    assert!(err <= atol + 1e-5 * w.abs(), "{what}: f32 {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn every_kernel_matches_the_reference_on_odd_sizes_and_scales() {
    against_reference::<1, 1, 1, 1>(1);
    against_reference::<7, 7, 5, 3>(2);
    against_reference::<9, 13, 12, 7>(3);
    against_reference::<17, 5, 3, 11>(4);
    if !cfg!(miri) {
        against_reference::<33, 33, 16, 16>(5);
        against_reference::<45, 70, 8, 8>(6);
    }
}

#[test]
fn linear_matches_the_naive_product_on_odd_sizes() {
    fn run<const S: usize, const I: usize, const O: usize>(seed: u64) {
        for kernel in Kernel::supported() {
            for scale in [1e-3, 1.0, 1e3] {
                let x = seeded::<S, I>(seed, scale);
                let w = seeded::<O, I>(seed + 1, 1.0);
                let b = seeded::<O, 1>(seed + 2, 1.0);
                let l = Linear::from_matrix(&w, Some(&b));
                let want = x * w.transpose() + SMatrix::<f64, S, 1>::repeat(1.0) * b.transpose();
                let got = with_kernel(kernel, || l.forward(&x)).unwrap();
                assert!(
                    (got - want).amax() <= 1e-12 * (1.0 + want.amax()),
                    "{} {S}×{I}→{O} ×{scale}",
                    kernel.name()
                );
            }
        }
    }
    run::<1, 1, 1>(1);
    run::<7, 12, 5>(2);
    run::<13, 3, 17>(3);
}
