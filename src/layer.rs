//! What [`crate::MultiHead`] and [`crate::SelfAttention`] share: project the inputs, then run
//! attention head by head into the caller's output.

use nalgebra::SMatrix;

use crate::kernels::{self, Dims, LinearIo, MaskView, PANEL_ROWS, Work};
use crate::mask::Additive;
use crate::{Float, Linear, Mask, Weight, WeightKind, sdpa::default_scale};

/// The Q, K and V projections of a layer.
pub(crate) struct Projections<'l, const DIM: usize, T, W> {
    pub q: &'l Linear<DIM, DIM, T, W>,
    pub k: &'l Linear<DIM, DIM, T, W>,
    pub v: &'l Linear<DIM, DIM, T, W>,
}

/// Working memory as separate buffers: projected queries (`SQ·DIM`), keys and values
/// (`SKV·DIM` each), column-major, and the kernel's block state. Borrowed from a
/// [`crate::Scratch`] or from arrays a by-value entry point declares itself (which unoptimised
/// builds keep without the temporary copies a struct value costs them).
pub(crate) struct Buffers<'s, T, const DIM: usize> {
    pub q: &'s mut [T],
    pub k: &'s mut [T],
    pub v: &'s mut [T],
    pub work: &'s mut Work<T, DIM>,
    /// A row panel of `PANEL_ROWS × DIM` values for the projections.
    pub pack: &'s mut [T],
}

/// Declares zeroed local working memory for `$sq` queries and `$skv` keys of `$dim` features
/// and binds `$buf` to a [`Buffers`] over it. Each buffer is its own array variable, which
/// every optimisation level (`opt-level = 0` included) builds in place.
macro_rules! local_buffers {
    ($buf:ident, $t:ty, $sq:expr, $skv:expr, $dim:expr) => {
        let mut q = [[<$t as $crate::Float>::ZERO; $sq]; $dim];
        let mut k = [[<$t as $crate::Float>::ZERO; $skv]; $dim];
        let mut v = [[<$t as $crate::Float>::ZERO; $skv]; $dim];
        let mut work = $crate::kernels::Work::<$t, $dim>::new();
        let mut pack = [[<$t as $crate::Float>::ZERO; $crate::kernels::PANEL_ROWS]; $dim];
        let mut $buf = $crate::layer::Buffers {
            q: q.as_flattened_mut(),
            k: k.as_flattened_mut(),
            v: v.as_flattened_mut(),
            work: &mut work,
            pack: pack.as_flattened_mut(),
        };
    };
}
pub(crate) use local_buffers;

/// `head_h = Attention(query W_hQᵀ + b, key W_hKᵀ + b, value W_hVᵀ + b)` for `heads` heads of
/// `DIM / heads` features, written into columns `h·d..(h+1)·d` of `out` (column-major
/// `SQ × DIM`, so each head's block of columns is one contiguous slice). When `weights` is
/// given (one matrix per head) the post-softmax weights are written there too; otherwise no
/// `SQ × SKV` matrix exists.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_heads<'m, const SQ: usize, const SKV: usize, const DIM: usize, T, W, A>(
    proj: &Projections<'_, DIM, T, W>,
    query: &SMatrix<T, SQ, DIM>,
    key: &SMatrix<T, SKV, DIM>,
    value: &SMatrix<T, SKV, DIM>,
    mask: &'m Mask<'m, SQ, SKV, A>,
    heads: usize,
    buf: &mut Buffers<'_, T, DIM>,
    out: &mut [T],
    mut weights: Option<&mut [SMatrix<T, SQ, SKV>]>,
) where
    T: Float,
    W: Weight<T>,
    A: Additive<T, SQ, SKV>,
{
    let dk = DIM / heads;
    let scale = default_scale::<T>(dk);

    // Q = query W_qᵀ + b_q, K = key W_kᵀ + b_k, V = value W_vᵀ + b_v.
    proj.q.forward_slices(query.as_slice(), SQ, buf.q, buf.pack);
    proj.k.forward_slices(key.as_slice(), SKV, buf.k, buf.pack);
    proj.v
        .forward_slices(value.as_slice(), SKV, buf.v, buf.pack);
    let alibi = mask.alibi();
    let mask = MaskView::of(mask);

    let dims = Dims::new(SQ, SKV, dk, dk);
    for h in 0..heads {
        let mask = &mask.with_alibi_slope(alibi.map(|a| a.slope(h, heads)));
        let q = &buf.q[h * dk * SQ..(h + 1) * dk * SQ];
        let k = &buf.k[h * dk * SKV..(h + 1) * dk * SKV];
        let v = &buf.v[h * dk * SKV..(h + 1) * dk * SKV];
        let o = &mut out[h * dk * SQ..(h + 1) * dk * SQ];
        match weights.as_deref_mut() {
            Some(w) => {
                kernels::attention_with_weights(q, k, v, dims, scale, mask, o, w[h].as_mut_slice())
            }
            None => kernels::attention(q, k, v, dims, scale, mask, o, buf.work.parts()),
        }
    }
}

/// `buf = buf · W_oᵀ + b_o` in place for `SQ` tokens (the output projection over the
/// concatenated heads), a row panel at a time through `pack`. Half-precision weights are
/// applied out of place instead: `spare` (the layer's Q buffer, free once the heads are done,
/// `sq·DIM` values) takes a copy of the heads first.
pub(crate) fn project_in_place<const DIM: usize, T: Float, W: Weight<T>>(
    out_proj: &Linear<DIM, DIM, T, W>,
    buf: &mut [T],
    sq: usize,
    pack: &mut [T],
    spare: &mut [T],
) {
    debug_assert!(pack.len() >= PANEL_ROWS * DIM);
    let io = if W::KIND == WeightKind::Native || kernels::selected() == kernels::Kernel::Scalar {
        LinearIo::InPlace(&mut buf[..sq * DIM])
    } else {
        spare[..sq * DIM].copy_from_slice(&buf[..sq * DIM]);
        LinearIo::Out {
            x: &spare[..sq * DIM],
            out: &mut buf[..sq * DIM],
        }
    };
    kernels::linear(
        io,
        sq,
        DIM,
        out_proj.weight_tiles(),
        DIM,
        out_proj.bias_slice(),
        pack,
    );
}
