//! SEQ = 1024, DIM = 512, HEADS = 8 (the input alone is 2 MiB of f32) runs inside a thread
//! with a 2 MiB stack when the caller uses the heap-backed or scratch-taking entry points.

use nalgebra::SMatrix;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::{Alignment, Bias, Mask, MultiHead, Scratch, heap};

const SEQ: usize = 1024;
const DIM: usize = 512;
const HEADS: usize = 8;
type Layer = MultiHead<SEQ, DIM, HEADS>;

#[test]
fn seq_1024_dim_512_runs_on_a_2_mib_stack() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let mut rng = SmallRng::seed_from_u64(5);
            let mut layer: Box<Layer> = heap::zeroed();
            layer.reset_parameters(&mut rng, Bias::Present);
            let mut x: Box<SMatrix<f32, SEQ, DIM>> = heap::zeroed();
            for v in x.iter_mut() {
                *v = rng.random_range(-1.0..1.0);
            }
            let mask = Mask::causal(Alignment::TopLeft);

            // Caller-owned scratch and output on the heap.
            let mut scratch: Box<Scratch<SEQ, SEQ, DIM, f32>> = heap::zeroed();
            let mut y: Box<SMatrix<f32, SEQ, DIM>> = heap::zeroed();
            layer.forward_into(&x, &mask, &mut scratch, &mut y);

            // The general entry point, the same result.
            let mut out: Box<SMatrix<f32, SEQ, DIM>> = heap::zeroed();
            layer.attend(&x, &x, &x, &mask, &mut scratch, &mut out, None);
            assert_eq!(*y, *out);
            assert!(y.iter().all(|v| v.is_finite()));

            // Spot-check rows against a small problem with the same weights: with a causal
            // mask, the first 8 output rows depend only on the first 8 tokens.
            let head = SMatrix::<f32, 8, DIM>::from_fn(|i, j| x[(i, j)]);
            let mut small_scratch: Box<Scratch<8, 8, DIM, f32>> = heap::zeroed();
            let mut small_out: Box<SMatrix<f32, 8, DIM>> = heap::zeroed();
            let small_mask = Mask::causal(Alignment::TopLeft);
            layer.attend(
                &head,
                &head,
                &head,
                &small_mask,
                &mut small_scratch,
                &mut small_out,
                None,
            );
            for i in 0..8 {
                for j in 0..DIM {
                    assert!((small_out[(i, j)] - y[(i, j)]).abs() <= 1e-5);
                }
            }
            assert_eq!(
                Layer::SCRATCH_BYTES,
                core::mem::size_of::<Scratch<SEQ, SEQ, DIM, f32>>()
            );
        })
        .expect("spawn")
        .join()
        .expect("the 2 MiB thread finished without overflowing its stack");
}

/// The documented size: Q, K, V, the kernel state (`TILE·DIM + 2·KEY_BLOCK·TILE`) and the
/// projection panel (`TILE·DIM`), each padded to a multiple of 64 bytes, with
/// `TILE = kernels::TILE_QUERIES` (32 on x86-64) and `KEY_BLOCK = kernels::KEY_BLOCK` (64).
fn documented_scratch_bytes(sq: usize, skv: usize, dim: usize, scalar: usize) -> usize {
    use static_attention::kernels::{KEY_BLOCK, TILE_QUERIES};
    let pad = |bytes: usize| bytes.div_ceil(64) * 64;
    pad(sq * dim * scalar)
        + 2 * pad(skv * dim * scalar)
        + pad((TILE_QUERIES * dim + 2 * KEY_BLOCK * TILE_QUERIES) * scalar)
        + pad(TILE_QUERIES * dim * scalar)
}

#[test]
fn scratch_bytes_follow_the_documented_formula() {
    assert_eq!(
        MultiHead::<3, 4, 2>::SCRATCH_BYTES,
        documented_scratch_bytes(3, 3, 4, 4)
    );
    assert_eq!(
        MultiHead::<7, 12, 3>::SCRATCH_BYTES,
        documented_scratch_bytes(7, 7, 12, 4)
    );
    assert_eq!(
        MultiHead::<7, 12, 3, f64>::SCRATCH_BYTES,
        documented_scratch_bytes(7, 7, 12, 8)
    );
    assert_eq!(
        Layer::SCRATCH_BYTES,
        documented_scratch_bytes(SEQ, SEQ, DIM, 4)
    );
    assert_eq!(
        Scratch::<5, 9, 12, f32>::BYTES,
        documented_scratch_bytes(5, 9, 12, 4)
    );
    // The README's table (f32, x86-64).
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(MultiHead::<3, 4, 2>::SCRATCH_BYTES, 17_600);
        assert_eq!(MultiHead::<16, 64, 4>::SCRATCH_BYTES, 45_056);
        assert_eq!(MultiHead::<128, 256, 8>::SCRATCH_BYTES, 475_136);
        assert_eq!(Layer::SCRATCH_BYTES, 6_438_912);
    }
}
