//! Threads, with the `rayon` feature (std only): [`Parallel`] runs a layer's forward pass
//! with its work spread over rayon's pool, one sequence or a batch. Every task runs the
//! kernel of the calling thread (the one [`crate::kernels::selected`] names there, a
//! [`crate::kernels::with_kernel`] override included) and has working memory of its own,
//! allocated per call or per worker; the results are those of the single-threaded calls.
//!
//! The single-threaded entry points stay the default: nothing here runs unless called.

use std::boxed::Box;

use nalgebra::SMatrix;
use rayon::prelude::*;

use crate::batch::{BatchError, check, mask_of};
use crate::mask::Additive;
use crate::positions::{NoPositions, PositionEncoding, PositionError};
use crate::{Float, GroupedQuery, Mask, MultiHead, Scratch, Weight, kernels};

/// A layer whose forward passes spread their work over rayon's threads (`rayon` feature):
/// `Parallel(&layer).forward_into(…)` takes the arguments of the layer's own
/// `forward_into`, and [`Parallel::forward_batch_into`] those of its `forward_batch_into`
/// (without weights). Works for [`MultiHead`] and [`GroupedQuery`] (a one-head
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
fn batch<X, M, O, S, F>(xs: &[X], masks: &[M], outs: &mut [O], one: F) -> Result<(), BatchError>
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

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T, W>
    Parallel<'_, MultiHead<SEQ, DIM, HEADS, T, W>>
where
    T: Float + Send + Sync,
    W: Weight<T> + Sync,
{
    /// [`MultiHead::forward_into`] with the work of one sequence spread over the threads: the
    /// Q, K and V projections by output columns, the attention by heads and blocks of
    /// queries, and the output projection by output columns. The result equals the
    /// single-threaded one within rounding (the same kernels; a block's last rows may take
    /// another path, so within 2e-6 rather than bit for bit).
    pub fn forward_into<A: Additive<T, SEQ, SEQ> + Sync>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        let kt = kernels::current::<T>();
        let layer = self.0.layer();
        let done = layer.forward_par(kt, x, mask, &NoPositions, scratch.buffers(), out);
        debug_assert!(done.is_ok(), "no positions, no position error");
    }

    /// [`MultiHead::forward_batch_into`] (without weights) with the sequences spread over the
    /// threads.
    ///
    /// # Errors
    ///
    /// [`BatchError`] if the lengths do not fit; nothing is written then.
    pub fn forward_batch_into<A: Additive<T, SEQ, SEQ> + Sync>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[Mask<'_, SEQ, SEQ, A>],
        outs: &mut [SMatrix<T, SEQ, DIM>],
    ) -> Result<(), BatchError> {
        // The caller's kernel on every worker.
        let kt = kernels::current::<T>();
        let layer = self.0.layer();
        batch(
            xs,
            masks,
            outs,
            |x, m, s: &mut Scratch<SEQ, SEQ, DIM, T>, o| {
                let (buf, o) = (s.buffers(), o.as_mut_slice());
                let done = layer.forward(kt, x, (x, x), m, &NoPositions, buf, o, None);
                debug_assert!(done.is_ok(), "no positions, no position error");
            },
        )
    }
}

impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T,
    W,
> Parallel<'_, GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>>
where
    T: Float + Send + Sync,
    W: Weight<T> + Sync,
{
    /// [`GroupedQuery::forward_into`] with the work spread over the threads (see
    /// [`Parallel::forward_into`] for [`MultiHead`]).
    ///
    /// # Errors
    /// [`PositionError`] if `SEQ` positions do not fit the rotary table; `out` is unchanged.
    pub fn forward_into<const SEQ: usize, P, A>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        positions: &P,
        scratch: &mut Scratch<SEQ, SEQ, Q_DIM, T, KV_DIM>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) -> Result<(), PositionError>
    where
        P: PositionEncoding<T> + Sync,
        A: Additive<T, SEQ, SEQ> + Sync,
    {
        const { GroupedQuery::<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>::check_positions::<P>() };
        let kt = kernels::current::<T>();
        let layer = self.0.layer();
        layer.forward_par(kt, x, mask, positions, scratch.buffers(), out)
    }
}
