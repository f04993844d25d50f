//! Batches and threads: the batched entry point against one call per sequence (bit for bit),
//! its length checks, and, with the `rayon` feature, [`Parallel`]'s entry points against the
//! single-threaded ones, and its threads running the caller's kernel.

mod common;

#[cfg(feature = "rayon")]
use common::filled;
use static_attention::{
    Alignment, AttentionWeights, BatchError, Mask, MultiHead, SMatrix, Scratch, SelfAttention,
};

fn inputs<const S: usize, const D: usize>(n: usize) -> Vec<SMatrix<f32, S, D>> {
    (0..n)
        .map(|b| SMatrix::from_fn(|i, j| ((b * 131 + i * 17 + j * 7) % 97) as f32 / 48.0 - 1.0))
        .collect()
}

#[test]
fn a_batch_is_one_call_per_sequence() {
    let layer = MultiHead::<9, 12, 3>::from_seed(3);
    let head = SelfAttention::<9, 12>::from_seed(4);
    let xs = inputs::<9, 12>(5);
    let pads: Vec<[bool; 9]> = (0..5)
        .map(|b| core::array::from_fn(|j| j % 5 == b))
        .collect();
    let masks: Vec<Mask<'_, 9, 9>> = pads
        .iter()
        .map(|p| Mask::causal(Alignment::TopLeft).with_key_is_padding(p))
        .collect();
    let mut scratch = Scratch::new();
    let mut outs = vec![SMatrix::zeros(); 5];
    layer
        .forward_batch_into(&xs, &masks, &mut scratch, &mut outs, None)
        .unwrap();
    for b in 0..5 {
        assert_eq!(outs[b], layer.forward(&xs[b], &masks[b]), "sequence {b}");
    }
    // With weights: what `forward_with_weights` gives, sequence by sequence.
    let mut weights = vec![AttentionWeights::zeros(); 5];
    layer
        .forward_batch_into(&xs, &masks, &mut scratch, &mut outs, Some(&mut weights))
        .unwrap();
    for b in 0..5 {
        let (y, w) = layer.forward_with_weights(&xs[b], &masks[b]);
        assert_eq!(outs[b], y, "sequence {b}, with weights");
        assert_eq!(weights[b], w, "weights of sequence {b}");
    }
    let mut head_weights = vec![SMatrix::zeros(); 5];
    head.forward_batch_into(
        &xs,
        &masks[..1],
        &mut scratch,
        &mut outs,
        Some(&mut head_weights),
    )
    .unwrap();
    for b in 0..5 {
        let (y, w) = head.forward_with_weights(&xs[b], &masks[0]);
        assert_eq!(outs[b], y, "one shared mask, sequence {b}");
        assert_eq!(
            head_weights[b], w,
            "one shared mask, weights of sequence {b}"
        );
    }
}

#[test]
fn batch_lengths_are_checked_before_anything_runs() {
    let layer = MultiHead::<4, 8, 2>::from_seed(1);
    let xs = inputs::<4, 8>(3);
    let mut scratch = Scratch::new();
    let mut outs = vec![SMatrix::repeat(7.0); 2];
    let err = layer
        .forward_batch_into(&xs, &[Mask::none()], &mut scratch, &mut outs, None)
        .unwrap_err();
    assert_eq!(
        err,
        BatchError {
            inputs: 3,
            outputs: 2,
            masks: 1,
            weights: None,
        }
    );
    assert_eq!(
        err.to_string(),
        "a batch of 3 inputs needs 3 outputs and 1 or 3 masks, got 2 outputs and 1 masks"
    );
    assert!(
        outs.iter().all(|o| o.iter().all(|&v| v == 7.0)),
        "nothing written"
    );
    let mut outs = vec![SMatrix::zeros(); 3];
    let two = [Mask::none(), Mask::none()];
    assert!(
        layer
            .forward_batch_into(&xs, &two, &mut scratch, &mut outs, None)
            .is_err()
    );
    // Weights for fewer sequences than the batch: an error, and nothing written.
    let mut outs = vec![SMatrix::repeat(7.0); 3];
    let mut weights = vec![AttentionWeights::zeros(); 2];
    let err = layer
        .forward_batch_into(&xs, &two[..1], &mut scratch, &mut outs, Some(&mut weights))
        .unwrap_err();
    assert_eq!(err.weights, Some(2));
    assert_eq!(
        err.to_string(),
        "a batch of 3 inputs needs 3 outputs and 1 or 3 masks, got 3 outputs and 1 masks, \
         and 2 attention weights for 3 inputs"
    );
    assert!(outs.iter().all(|o| o.iter().all(|&v| v == 7.0)));
    // An empty batch is fine.
    assert!(
        layer
            .forward_batch_into(&[], &two[..1], &mut scratch, &mut [], None)
            .is_ok()
    );
}

#[cfg(feature = "rayon")]
mod threads {
    use super::*;
    use static_attention::kernels::{self, Kernel, with_kernel};
    use static_attention::positions::{Rope, RopeStyle};
    use static_attention::rand::SeedableRng;
    use static_attention::{Bias, GroupedQuery, Parallel, bf16, heap, init::SeedRng};

    fn max_diff<const R: usize, const C: usize>(
        a: &SMatrix<f32, R, C>,
        b: &SMatrix<f32, R, C>,
    ) -> f32 {
        a.iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn the_threaded_batch_equals_the_sequential_one_bit_for_bit() {
        let layer = MultiHead::<16, 64, 4>::from_seed(5);
        let xs = inputs::<16, 64>(32);
        let mut scratch = Scratch::new();
        let mut seq = vec![SMatrix::zeros(); 32];
        let mut par = vec![SMatrix::zeros(); 32];
        let mask = [Mask::causal(Alignment::TopLeft)];
        layer
            .forward_batch_into(&xs, &mask, &mut scratch, &mut seq, None)
            .unwrap();
        Parallel(&layer)
            .forward_batch_into(&xs, &mask, &mut par)
            .unwrap();
        assert_eq!(seq, par);
        let mut short = vec![SMatrix::zeros(); 31];
        assert!(
            Parallel(&layer)
                .forward_batch_into(&xs, &mask, &mut short)
                .is_err()
        );
    }

    fn one_sequence<const S: usize, const D: usize, const H: usize>() {
        let mut layer: Box<MultiHead<S, D, H>> = heap::zeroed();
        layer.reset_parameters(&mut SeedRng::seed_from_u64(9), Bias::Present);
        let half = layer.to_weights::<bf16>();
        let quant = layer.to_weights::<i8>();
        let x = filled::<S, D>(|i| ((i as usize * 37) % 101) as f32 / 50.0 - 1.0);
        let pad: [bool; S] = core::array::from_fn(|j| j % 7 == 3);
        let bias: Box<SMatrix<f32, S, S>> = heap::zeroed();
        let masks = [
            Mask::none(),
            Mask::causal(Alignment::BottomRight).with_key_is_padding(&pad),
            Mask::sliding_window(9, Alignment::TopLeft),
        ];
        let mut scratch: Box<Scratch<S, S, D>> = heap::zeroed();
        let (mut a, mut b): (Box<SMatrix<f32, S, D>>, Box<SMatrix<f32, S, D>>) =
            (heap::zeroed(), heap::zeroed());
        for mask in &masks {
            layer.forward_into(&x, mask, &mut scratch, &mut a);
            Parallel(&*layer).forward_into(&x, mask, &mut scratch, &mut b);
            assert!(
                max_diff(&a, &b) <= 2e-6,
                "{S}x{D}x{H}: {}",
                max_diff(&a, &b)
            );
            // Half-precision weights over threads too.
            half.forward_into(&x, mask, &mut scratch, &mut a);
            Parallel(&half).forward_into(&x, mask, &mut scratch, &mut b);
            assert!(
                max_diff(&a, &b) <= 2e-6,
                "{S}x{D}x{H} bf16: {}",
                max_diff(&a, &b)
            );
            // And i8 weights (the threads split the projections' features and their scales).
            quant.forward_into(&x, mask, &mut scratch, &mut a);
            Parallel(&quant).forward_into(&x, mask, &mut scratch, &mut b);
            assert!(
                max_diff(&a, &b) <= 2e-6,
                "{S}x{D}x{H} i8: {}",
                max_diff(&a, &b)
            );
        }
        let additive = Mask::additive(&*bias);
        layer.forward_into(&x, &additive, &mut scratch, &mut a);
        Parallel(&*layer).forward_into(&x, &additive, &mut scratch, &mut b);
        assert!(max_diff(&a, &b) <= 2e-6, "{S}x{D}x{H} additive");
    }

    #[test]
    fn one_sequence_over_threads_equals_one_thread() {
        one_sequence::<64, 32, 1>(); // one head: query blocks carry the parallelism
        one_sequence::<37, 24, 3>(); // odd sizes
        one_sequence::<128, 64, 8>();
    }

    #[test]
    fn grouped_query_layers_run_over_threads() {
        let x = SMatrix::<f32, 45, 32>::from_fn(|i, j| ((i * 32 + j) as f32 * 0.05).sin());
        let mask = Mask::causal(Alignment::TopLeft);
        let (mut a, mut b) = (SMatrix::zeros(), SMatrix::zeros());
        // Grouped-query heads with RoPE.
        let gqa = GroupedQuery::<32, 8, 2, 32, 8>::from_seed(3);
        let rope = Rope::<4, 64>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
        let mut scratch = Scratch::new();
        gqa.forward_into(&x, &mask, &rope, &mut scratch, &mut a)
            .unwrap();
        Parallel(&gqa)
            .forward_into(&x, &mask, &rope, &mut scratch, &mut b)
            .unwrap();
        assert!(max_diff(&a, &b) <= 2e-6);
        // Past the rotary table: the same typed error, nothing written.
        let short = Rope::<4, 40>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
        b.fill(3.0);
        let err = Parallel(&gqa)
            .forward_into(&x, &mask, &short, &mut scratch, &mut b)
            .unwrap_err();
        assert_eq!(err, gqa.forward(&x, &mask, &short).unwrap_err());
        assert!(b.iter().all(|&v| v == 3.0));
    }

    #[test]
    fn threads_run_the_callers_kernel() {
        // The scalar kernel's results do not depend on how the rows are split (each query row
        // and each output feature is summed in the same order), so the threaded pass under
        // `with_kernel(Scalar)` equals the single-threaded scalar pass bit for bit. A worker
        // that ran the detected kernel instead would differ in the last bits.
        let layer = MultiHead::<96, 64, 4>::from_seed(11);
        let x = SMatrix::<f32, 96, 64>::from_fn(|i, j| ((i * 64 + j) as f32 * 0.013).cos());
        let mask = Mask::causal(Alignment::TopLeft);
        let mut scratch: Box<Scratch<96, 96, 64>> = heap::zeroed();
        let (mut one, mut many) = (SMatrix::zeros(), SMatrix::zeros());
        with_kernel(Kernel::Scalar, || {
            layer.forward_into(&x, &mask, &mut scratch, &mut one);
            Parallel(&layer).forward_into(&x, &mask, &mut scratch, &mut many);
        })
        .unwrap();
        assert!(one == many, "every thread ran the scalar kernel");
        let xs = vec![x; 6];
        let mut outs = vec![SMatrix::zeros(); 6];
        with_kernel(Kernel::Scalar, || {
            Parallel(&layer).forward_batch_into(&xs, &[mask], &mut outs)
        })
        .unwrap()
        .unwrap();
        assert!(
            outs.iter().all(|o| *o == one),
            "every batch worker ran the scalar kernel"
        );
        if kernels::selected() != Kernel::Scalar {
            // The check above can tell the kernels apart.
            let fast = layer.forward(&x, &mask);
            assert_ne!(fast, one, "the fast kernel rounds differently");
        }
    }
}
