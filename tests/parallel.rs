//! Batches and threads: the batched entry point against one call per sequence (bit for bit),
//! its length checks, and, with the `rayon` feature, the threaded entry points against the
//! single-threaded ones.

use static_attention::{Alignment, BatchError, Mask, MultiHead, SMatrix, Scratch, SelfAttention};

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
        .forward_batch_into(&xs, &masks, &mut scratch, &mut outs)
        .unwrap();
    for b in 0..5 {
        assert_eq!(outs[b], layer.forward(&xs[b], &masks[b]), "sequence {b}");
    }
    head.forward_batch_into(&xs, &masks[..1], &mut scratch, &mut outs)
        .unwrap();
    for b in 0..5 {
        assert_eq!(
            outs[b],
            head.forward(&xs[b], &masks[0]),
            "one shared mask, sequence {b}"
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
        .forward_batch_into(&xs, &[Mask::none()], &mut scratch, &mut outs)
        .unwrap_err();
    assert_eq!(
        err,
        BatchError {
            inputs: 3,
            outputs: 2,
            masks: 1
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
            .forward_batch_into(&xs, &two, &mut scratch, &mut outs)
            .is_err()
    );
    // An empty batch is fine.
    assert!(
        layer
            .forward_batch_into(&[], &two[..1], &mut scratch, &mut [])
            .is_ok()
    );
}

#[cfg(feature = "rayon")]
mod threads {
    use super::*;
    use static_attention::heap;

    #[test]
    fn the_threaded_batch_equals_the_sequential_one_bit_for_bit() {
        let layer = MultiHead::<16, 64, 4>::from_seed(5);
        let xs = inputs::<16, 64>(32);
        let mut scratch = Scratch::new();
        let mut seq = vec![SMatrix::zeros(); 32];
        let mut par = vec![SMatrix::zeros(); 32];
        let mask = [Mask::causal(Alignment::TopLeft)];
        layer
            .forward_batch_into(&xs, &mask, &mut scratch, &mut seq)
            .unwrap();
        layer.forward_batch_par(&xs, &mask, &mut par).unwrap();
        assert_eq!(seq, par);
        let mut short = vec![SMatrix::zeros(); 31];
        assert!(layer.forward_batch_par(&xs, &mask, &mut short).is_err());
    }

    fn one_sequence<const S: usize, const D: usize, const H: usize>() {
        let layer = MultiHead::<S, D, H>::new_boxed(&mut {
            use static_attention::rand::SeedableRng;
            static_attention::init::SeedRng::seed_from_u64(9)
        });
        let mut x = heap::zeros::<f32, S, D>();
        x.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i * 37) % 101) as f32 / 50.0 - 1.0);
        let pad: [bool; S] = core::array::from_fn(|j| j % 7 == 3);
        let bias = heap::zeros::<f32, S, S>();
        let masks = [
            Mask::none(),
            Mask::causal(Alignment::BottomRight).with_key_is_padding(&pad),
            Mask::sliding_window(9, Alignment::TopLeft),
        ];
        let mut scratch = Scratch::<S, S, D>::new_boxed();
        let (mut a, mut b) = (heap::zeros::<f32, S, D>(), heap::zeros::<f32, S, D>());
        for mask in &masks {
            layer.forward_into(&x, mask, &mut scratch, &mut a);
            layer.forward_par_into(&x, mask, &mut scratch, &mut b);
            let diff = a
                .iter()
                .zip(b.iter())
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(diff <= 2e-6, "{S}x{D}x{H}: {diff}");
        }
        let additive = Mask::additive(&*bias);
        layer.forward_into(&x, &additive, &mut scratch, &mut a);
        layer.forward_par_into(&x, &additive, &mut scratch, &mut b);
        let diff = a
            .iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 2e-6, "{S}x{D}x{H} additive: {diff}");
    }

    #[test]
    fn one_sequence_over_threads_equals_one_thread() {
        one_sequence::<64, 32, 1>(); // one head: query blocks carry the parallelism
        one_sequence::<37, 24, 3>(); // odd sizes
        one_sequence::<128, 64, 8>();
    }
}
