//! Threads, with the `rayon` feature (std only): [`Parallel`] runs a layer's forward pass
//! with its work spread over rayon's pool, one sequence or a batch. Every task runs the
//! kernel of the calling thread (the one [`crate::kernels::selected`] names there, a
//! [`crate::kernels::with_kernel`] override included) and has working memory of its own,
//! allocated per call or per worker; the results are those of the single-threaded calls.
//!
//! The single-threaded entry points stay the default: nothing here runs unless called. Each
//! layer type's file holds its `Parallel` methods, beside the single-threaded ones they mirror.

use std::boxed::Box;

use rayon::prelude::*;

use crate::batch::{BatchError, check, mask_of};

/// A layer whose forward passes spread their work over rayon's threads (`rayon` feature):
/// `Parallel(&layer).forward_into(…)` takes the arguments of the layer's own
/// `forward_into`, and [`Parallel::forward_batch_into`] those of its `forward_batch_into`
/// (without weights). Works for [`crate::MultiHead`] and [`crate::GroupedQuery`] (a one-head
/// [`crate::SelfAttention`] has only query blocks to spread: use `MultiHead<SEQ, DIM, 1>`), any
/// weight storage.
///
/// ```
/// use static_attention::{Alignment, Mask, MultiHead, Parallel, SMatrix, Scratch, heap};
///
/// let layer = MultiHead::<512, 128, 8>::from_seed(1);
/// let x: Box<SMatrix<f32, 512, 128>> = heap::zeroed();
/// let mut scratch: Box<Scratch<512, 512, 128>> = heap::zeroed();
/// let mut out: Box<SMatrix<f32, 512, 128>> = heap::zeroed();
/// Parallel(&layer).forward_into(&x, &Mask::causal(Alignment::TopLeft), &mut scratch, &mut out);
///
/// let xs = vec![SMatrix::<f32, 16, 64>::repeat(0.25); 32];
/// let mut outs = vec![SMatrix::zeros(); 32];
/// let small = MultiHead::<16, 64, 4>::from_seed(2);
/// Parallel(&small).forward_batch_into(&xs, &[Mask::none()], &mut outs)?;
/// assert_eq!(outs[31], small.forward(&xs[31], &Mask::none()));
/// # Ok::<(), static_attention::BatchError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Parallel<'l, L>(pub &'l L);

/// A batch over threads: each worker runs `one` on its sequences through a scratch of its own
/// (allocated zeroed on the heap, once per worker); the outputs are those of the sequential
/// call, bit for bit.
pub(crate) fn batch<X, M, O, S, F>(
    xs: &[X],
    masks: &[M],
    outs: &mut [O],
    one: F,
) -> Result<(), BatchError>
where
    X: Sync,
    M: Sync,
    O: Send,
    S: bytemuck::Zeroable + Send,
    F: Fn(&X, &M, &mut S, &mut O) + Sync,
{
    check(xs.len(), outs.len(), masks.len(), None)?;
    xs.par_iter()
        .zip(outs.par_iter_mut())
        .enumerate()
        .for_each_init(
            bytemuck::zeroed_box::<S>,
            |scratch: &mut Box<S>, (b, (x, out))| {
                one(x, mask_of(masks, b), scratch, out);
            },
        );
    Ok(())
}
