//! Threads, with the `rayon` feature (std only): a batch spread over rayon's pool, and one
//! sequence's projections, heads and query blocks spread over it. Each task gets its own
//! working memory (allocated per worker thread); the results are those of the
//! single-threaded calls (the same kernels on the same data, only the work is divided).
//!
//! The single-threaded entry points stay the default: nothing here runs unless called.

use std::boxed::Box;
use std::vec::Vec;

use nalgebra::SMatrix;
use rayon::prelude::*;

use crate::batch::{BatchError, check, mask_of};
use crate::kernels::{self, Dims, LinearIo, MaskView, PANEL_ROWS, Work};
use crate::linear::WEIGHT_TILE;
use crate::mask::Additive;
use crate::{Float, Linear, Mask, MultiHead, Scratch, sdpa::default_scale};

/// `out[:, j0 .. j0 + n] = x · W[j0 .. j0 + n, :]ᵀ + b[j0 .. j0 + n]` for `s` tokens: the
/// output columns of one task (contiguous in column-major `out`). `j0` is a multiple of the
/// weights' 12-feature tiles, so rows `j0 ..` of `W` are the stored values from `j0 · DIM`
/// on, in the same layout.
fn project_columns<const DIM: usize, T: Float>(
    lin: &Linear<DIM, DIM, T>,
    x: &[T],
    s: usize,
    j0: usize,
    out_cols: &mut [T],
    pack: &mut [T],
) {
    let n = out_cols.len() / s;
    kernels::linear(
        LinearIo::Out { x, out: out_cols },
        s,
        DIM,
        &lin.weight_tiles()[j0 * DIM..],
        n,
        &lin.bias_slice()[j0..j0 + n],
        pack,
    );
}

/// Columns per projection task: about `DIM / (2 · threads)`, a multiple of the weights'
/// 12-feature tiles.
fn column_chunk(dim: usize) -> usize {
    let tasks = 2 * rayon::current_num_threads().max(1);
    dim.div_ceil(tasks).div_ceil(WEIGHT_TILE).max(1) * WEIGHT_TILE
}

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T> MultiHead<SEQ, DIM, HEADS, T>
where
    T: Float + Send + Sync,
{
    /// [`MultiHead::forward_batch_into`] spread over rayon's threads, each with a scratch of its
    /// own (allocated on the heap, one per worker). The outputs are those of the sequential
    /// call, bit for bit.
    ///
    /// # Errors
    ///
    /// [`BatchError`] if the lengths do not fit; nothing is written then.
    ///
    /// ```
    /// use static_attention::{Mask, MultiHead, SMatrix};
    ///
    /// let layer = MultiHead::<16, 64, 4>::from_seed(1);
    /// let xs = vec![SMatrix::<f32, 16, 64>::repeat(0.25); 32];
    /// let mut outs = vec![SMatrix::zeros(); 32];
    /// layer.forward_batch_par(&xs, &[Mask::none()], &mut outs)?;
    /// # Ok::<(), static_attention::BatchError>(())
    /// ```
    pub fn forward_batch_par<A: Additive<T, SEQ, SEQ> + Sync>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[Mask<'_, SEQ, SEQ, A>],
        outs: &mut [SMatrix<T, SEQ, DIM>],
    ) -> Result<(), BatchError> {
        check(xs.len(), outs.len(), masks.len())?;
        xs.par_iter()
            .zip(outs.par_iter_mut())
            .enumerate()
            .for_each_init(
                Scratch::<SEQ, SEQ, DIM, T>::new_boxed,
                |scratch, (b, (x, out))| {
                    self.forward_into(x, mask_of(masks, b), scratch, out);
                },
            );
        Ok(())
    }

    /// [`MultiHead::forward_into`] with the work of one sequence spread over rayon's threads:
    /// the Q, K and V projections by output columns, the attention by heads and blocks of
    /// queries, and the output projection by output columns. `scratch` holds Q, K and V, and
    /// then the concatenated heads in Q's place; each task's working memory is allocated. The
    /// result equals the single-threaded one within rounding (the same kernels; a query
    /// block's last tile may sit elsewhere, so within 2e-6 rather than bit for bit).
    ///
    /// ```
    /// use static_attention::{Alignment, Mask, MultiHead, SMatrix, Scratch, heap};
    ///
    /// let layer = MultiHead::<512, 128, 8>::new_boxed(&mut static_attention::init::SeedRng::from_seed([1; 32]));
    /// let x = heap::zeros::<f32, 512, 128>();
    /// let (mut scratch, mut out) = (Scratch::new_boxed(), heap::zeros());
    /// layer.forward_par_into(&x, &Mask::causal(Alignment::TopLeft), &mut scratch, &mut out);
    /// # use static_attention::rand::SeedableRng;
    /// ```
    pub fn forward_par_into<A: Additive<T, SEQ, SEQ> + Sync>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        let dk = Self::HEAD_DIM;
        let chunk = column_chunk(DIM);
        let new_pack = || std::vec![T::ZERO; PANEL_ROWS * DIM];
        let buf = scratch.buffers();
        let (q, k, v) = (buf.q, buf.k, buf.v);

        // Q, K and V by output columns.
        let mut tasks: Vec<(&Linear<DIM, DIM, T>, usize, &mut [T])> = Vec::new();
        for (lin, dest) in [(&self.q, q), (&self.k, k), (&self.v, v)] {
            for (c, cols) in dest.chunks_mut(chunk * SEQ).enumerate() {
                tasks.push((lin, c * chunk, cols));
            }
        }
        tasks
            .into_par_iter()
            .for_each_init(new_pack, |pack, (lin, j0, cols)| {
                project_columns(lin, x.as_slice(), SEQ, j0, cols, pack);
            });

        // Attention by (head, query block): each task copies its queries and writes its own
        // output block; the blocks are then placed into the concatenated heads.
        let (q, k, v) = scratch.qkv();
        let threads = rayon::current_num_threads().max(1);
        let blocks = (2 * threads).div_ceil(HEADS).max(1);
        let rows = SEQ.div_ceil(blocks);
        let view = MaskView::of(mask);
        let alibi = mask.alibi();
        let scale = default_scale::<T>(dk);
        let pieces: Vec<(usize, usize, Vec<T>)> = (0..HEADS)
            .flat_map(|h| (0..SEQ).step_by(rows).map(move |qa| (h, qa)))
            .collect::<Vec<_>>()
            .into_par_iter()
            .map_init(
                || -> Box<Work<T, DIM>> { bytemuck::zeroed_box() },
                |work, (h, qa)| {
                    let n = rows.min(SEQ - qa);
                    let mut q_block = std::vec![T::ZERO; n * dk];
                    for d in 0..dk {
                        let col = &q[(h * dk + d) * SEQ..(h * dk + d + 1) * SEQ];
                        q_block[d * n..(d + 1) * n].copy_from_slice(&col[qa..qa + n]);
                    }
                    let mut o = std::vec![T::ZERO; n * dk];
                    let dims = Dims::new(n, SEQ, dk, dk);
                    let head = h * dk * SEQ..(h + 1) * dk * SEQ;
                    kernels::attention(
                        &q_block,
                        &k[head.clone()],
                        &v[head],
                        dims,
                        scale,
                        &view
                            .rows(qa, n)
                            .with_alibi_slope(alibi.map(|a| a.slope(h, HEADS))),
                        &mut o,
                        work.parts(),
                    );
                    (h, qa, o)
                },
            )
            .collect();
        // Every query of every head has been copied out of Q: its buffer takes the heads.
        let concat = &mut scratch.buffers().q[..SEQ * DIM];
        for (h, qa, o) in pieces {
            let n = o.len() / dk;
            for d in 0..dk {
                let at = (h * dk + d) * SEQ + qa;
                concat[at..at + n].copy_from_slice(&o[d * n..(d + 1) * n]);
            }
        }

        let concat: &[T] = concat;

        // Out projection by output columns.
        out.as_mut_slice()
            .par_chunks_mut(chunk * SEQ)
            .enumerate()
            .for_each_init(new_pack, |pack, (c, cols)| {
                project_columns(&self.out, concat, SEQ, c * chunk, cols, pack);
            });
    }
}
