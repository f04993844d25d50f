//! What [`crate::MultiHead`] and [`crate::SelfAttention`] share: project the inputs, then run
//! attention head by head into the caller's output.

use nalgebra::SMatrix;

use crate::kernels::{self, Dims};
use crate::mask::Additive;
use crate::{Float, Linear, Mask, Scratch, sdpa::default_scale};

/// The Q, K and V projections of a layer.
pub(crate) struct Projections<'l, const DIM: usize, T> {
    pub q: &'l Linear<DIM, DIM, T>,
    pub k: &'l Linear<DIM, DIM, T>,
    pub v: &'l Linear<DIM, DIM, T>,
}

/// `head_h = Attention(query W_hQᵀ + b, key W_hKᵀ + b, value W_hVᵀ + b)` for `heads` heads of
/// `DIM / heads` features, written into columns `h·d..(h+1)·d` of `out` (column-major, so each
/// head's block of columns is one contiguous slice). When `weights` is given (one matrix per
/// head) the post-softmax weights are written there too; otherwise no `SQ × SKV` matrix exists.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_heads<const SQ: usize, const SKV: usize, const DIM: usize, T, A>(
    proj: &Projections<'_, DIM, T>,
    query: &SMatrix<T, SQ, DIM>,
    key: &SMatrix<T, SKV, DIM>,
    value: &SMatrix<T, SKV, DIM>,
    mask: &Mask<'_, SQ, SKV, A>,
    heads: usize,
    scratch: &mut Scratch<SQ, SKV, DIM, T>,
    out: &mut SMatrix<T, SQ, DIM>,
    mut weights: Option<&mut [SMatrix<T, SQ, SKV>]>,
) where
    T: Float,
    A: Additive<T, SQ, SKV>,
{
    let dk = DIM / heads;
    let scale = default_scale::<T>(dk);

    // Q = query W_qᵀ + b_q, K = key W_kᵀ + b_k, V = value W_vᵀ + b_v.
    proj.q.forward_into(query, &mut scratch.q.0);
    proj.k.forward_into(key, &mut scratch.k.0);
    proj.v.forward_into(value, &mut scratch.v.0);

    let dims = Dims {
        sq: SQ,
        skv: SKV,
        dk,
        dv: dk,
    };
    for h in 0..heads {
        let q = &scratch.q.0.as_slice()[h * dk * SQ..(h + 1) * dk * SQ];
        let k = &scratch.k.0.as_slice()[h * dk * SKV..(h + 1) * dk * SKV];
        let v = &scratch.v.0.as_slice()[h * dk * SKV..(h + 1) * dk * SKV];
        let o = &mut out.as_mut_slice()[h * dk * SQ..(h + 1) * dk * SQ];
        match weights.as_deref_mut() {
            Some(w) => {
                kernels::attention_with_weights(q, k, v, dims, scale, mask, o, w[h].as_mut_slice())
            }
            None => kernels::attention(q, k, v, dims, scale, mask, o, &mut scratch.work.0),
        }
    }
}
