//! Scaled dot-product attention, `softmax(Q Kᵀ · scale + mask) V`, as a function over
//! `SMatrix`.

use nalgebra::SMatrix;

use crate::heads::{Heads, Scores, attend_heads, default_scale};
use crate::kernels::{self, Dims, QueryIo, Table, Work, WorkRef};
use crate::mask::Additive;
use crate::{Float, Mask, zero_matrix};

/// Compile-time check of the key width.
struct Width<const D: usize>;
impl<const D: usize> Width<D> {
    const OK: () = assert!(
        D > 0,
        "D must be at least 1: queries and keys need at least one feature"
    );
}

/// Scaled dot-product attention: `softmax(Q Kᵀ · scale + mask) V`.
///
/// Shapes: `q` is `SQ × D` (queries in rows), `k` is `SKV × D`, `v` is `SKV × DV`; the result
/// is `SQ × DV`. `D = 0` is a build error. `scale` is `1/√D` when `None` and used exactly as
/// given otherwise. This is PyTorch's `scaled_dot_product_attention` for one head (its boolean
/// mask is [`Mask::attend_where`]).
///
/// The computation streams over the keys with an online softmax: no `SQ × SKV` matrix is
/// built. The result is returned by value (see the [crate docs](crate#stack) for the stack
/// this needs; [`scaled_dot_product_attention_into`] writes into a buffer you own). A query
/// whose keys are all masked gets a zero row.
///
/// ```
/// use static_attention::{Mask, SMatrix, scaled_dot_product_attention};
///
/// let q = SMatrix::<f32, 2, 2>::new(1.0, 0.0, 0.0, 1.0);
/// let k = q;
/// let v = SMatrix::<f32, 2, 2>::new(1.0, 2.0, 3.0, 4.0);
/// let out = scaled_dot_product_attention(&q, &k, &v, &Mask::none(), None);
/// // Each query prefers its own key: weights softmax([1/√2, 0]) = [0.670, 0.330].
/// assert!((out[(0, 0)] - (0.670 * 1.0 + 0.330 * 3.0)).abs() < 1e-3);
/// ```
#[must_use]
pub fn scaled_dot_product_attention<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
) -> SMatrix<T, SQ, DV> {
    let mut out = zero_matrix();
    scaled_dot_product_attention_into(q, k, v, mask, scale, &mut out);
    out
}

/// [`scaled_dot_product_attention`] writing into a caller-owned output (for example a boxed
/// matrix too large for the stack). Beyond the output it needs
/// `TILE_QUERIES · (DV + 2 · KEY_BLOCK)` scalars of stack for the kernel's block state
/// ([`crate::kernels::TILE_QUERIES`], [`crate::kernels::KEY_BLOCK`]: `32 · DV + 4096` on
/// x86-64, `8 · DV` elsewhere).
pub fn scaled_dot_product_attention_into<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
    out: &mut SMatrix<T, SQ, DV>,
) {
    let () = Width::<D>::OK;
    one_head(q, k, v, mask, scale, out, None);
}

/// One head, `q`, `k`, `v` as they are, into `out` (and the weights when given); the
/// callers check `D`.
#[allow(clippy::too_many_arguments)]
fn one_head<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
    out: &mut SMatrix<T, SQ, DV>,
    weights: Option<&mut [T]>,
) {
    let one = Heads { count: 1, kv: 1 };
    let io = QueryIo::Separate {
        q: q.as_slice(),
        out: out.as_mut_slice(),
    };
    let kv = (k.as_slice(), v.as_slice());
    run::<SQ, SKV, DV, T, A>(io, kv, Dims::new(SQ, SKV, D, DV), one, mask, scale, weights);
}

/// Attention for `heads` heads laid out one after the other (the flattened arrays of
/// [`grouped_query_attention`], or one head) through the core's per-head loop, on the
/// selected kernel; the scale is `1/√dk` unless given.
fn run<const SQ: usize, const SKV: usize, const DV: usize, T: Float, A: Additive<T, SQ, SKV>>(
    io: QueryIo<'_, T>,
    kv: (&[T], &[T]),
    dims: Dims,
    heads: Heads,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
    weights: Option<&mut [T]>,
) {
    let kt = kernels::current::<T>();
    let view = mask.view();
    let scores = Scores {
        scale: scale.unwrap_or_else(|| default_scale(dims.dk)),
        mask: &view,
        alibi: mask.alibi(),
        key_rotate: 0,
        softcap: None,
        sinks: None,
        reduced: None,
    };
    match weights {
        // The weights path needs no block state.
        Some(w) => {
            let w = Some((w, dims.ldq * dims.skv));
            attend_heads(kt, io, kv, dims, heads, &scores, WorkRef::empty(), w);
        }
        None => streaming::<DV, T>(kt, io, kv, dims, heads, &scores),
    }
}

/// The streaming path of [`run`], with the kernel's block state on its own frame (never
/// inlined, so the weights path's frame does not hold it).
#[inline(never)]
fn streaming<const DV: usize, T: Float>(
    kt: &Table<T>,
    io: QueryIo<'_, T>,
    kv: (&[T], &[T]),
    dims: Dims,
    heads: Heads,
    scores: &Scores<'_, T>,
) {
    let mut work = Work::<T, DV>::new();
    attend_heads(kt, io, kv, dims, heads, scores, work.parts(), None);
}

/// [`scaled_dot_product_attention`] that also returns the post-softmax attention weights
/// (`SQ × SKV`, each row sums to 1, or is all zeros for a fully masked query), by value (see
/// [`scaled_dot_product_attention_with_weights_into`] for large shapes).
///
/// ```
/// use static_attention::{Alignment, Mask, SMatrix, scaled_dot_product_attention_with_weights};
///
/// let x = SMatrix::<f64, 3, 2>::new(1.0, 0.0, 0.0, 1.0, 1.0, 1.0);
/// let mask = Mask::causal(Alignment::TopLeft);
/// let (_, w) = scaled_dot_product_attention_with_weights(&x, &x, &x, &mask, None);
/// assert_eq!(w[(0, 0)], 1.0); // the first token sees only itself
/// assert_eq!(w[(0, 1)], 0.0);
/// ```
#[must_use]
pub fn scaled_dot_product_attention_with_weights<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
) -> (SMatrix<T, SQ, DV>, SMatrix<T, SQ, SKV>) {
    let mut result = (zero_matrix(), zero_matrix());
    scaled_dot_product_attention_with_weights_into(
        q,
        k,
        v,
        mask,
        scale,
        &mut result.0,
        &mut result.1,
    );
    result
}

/// [`scaled_dot_product_attention_with_weights`] writing the output and the `SQ × SKV`
/// weights into caller-owned buffers (nothing big on the stack).
///
/// ```
/// use static_attention::{Mask, SMatrix, heap, scaled_dot_product_attention_with_weights_into};
///
/// // 512 × 512 weights (1 MiB) and the output live on the heap.
/// let x: Box<SMatrix<f32, 512, 64>> = heap::zeroed();
/// let mut out: Box<SMatrix<f32, 512, 64>> = heap::zeroed();
/// let mut w: Box<SMatrix<f32, 512, 512>> = heap::zeroed();
/// scaled_dot_product_attention_with_weights_into(&x, &x, &x, &Mask::none(), None, &mut out, &mut w);
/// assert!((w[(3, 7)] - 1.0 / 512.0).abs() < 1e-7);
/// ```
pub fn scaled_dot_product_attention_with_weights_into<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
    out: &mut SMatrix<T, SQ, DV>,
    weights: &mut SMatrix<T, SQ, SKV>,
) {
    let () = Width::<D>::OK;
    one_head(q, k, v, mask, scale, out, Some(weights.as_mut_slice()));
}

/// Compile-time check of the head counts of [`grouped_query_attention`].
struct Groups<const HEADS: usize, const KV_HEADS: usize>;
impl<const HEADS: usize, const KV_HEADS: usize> Groups<HEADS, KV_HEADS> {
    const OK: () = {
        assert!(
            KV_HEADS > 0,
            "KV_HEADS must be at least 1: queries need key/value heads"
        );
        assert!(
            HEADS.is_multiple_of(KV_HEADS),
            "KV_HEADS must divide HEADS: each key/value head serves HEADS / KV_HEADS query heads"
        );
    };
}

/// Scaled dot-product attention over many heads at once, with grouped-query heads: `HEADS`
/// query heads and `KV_HEADS` key/value heads, query head `h` attending with key/value head
/// `h / (HEADS / KV_HEADS)` (PyTorch's `scaled_dot_product_attention(..., enable_gqa=True)`).
/// `KV_HEADS = HEADS` is ordinary multi-head attention, `KV_HEADS = 1` multi-query attention;
/// `KV_HEADS = 0` or a `KV_HEADS` that does not divide `HEADS` is a build error.
///
/// Shapes: `q[h]` is `SQ × D`, `k[g]` is `SKV × D`, `v[g]` is `SKV × DV`, the result `HEADS`
/// matrices of `SQ × DV`; the mask applies to every head, an ALiBi part with head `h`'s slope
/// of `HEADS` ([`crate::Alibi`]). Returned by value; [`grouped_query_attention_into`] writes into
/// buffers you own.
///
/// ```
/// use static_attention::{Alignment, Mask, SMatrix, grouped_query_attention, scaled_dot_product_attention};
///
/// let q: [SMatrix<f32, 3, 4>; 4] = core::array::from_fn(|h| SMatrix::from_fn(|i, j| (h + i * j) as f32 * 0.1));
/// let k: [SMatrix<f32, 5, 4>; 2] = core::array::from_fn(|g| SMatrix::from_fn(|i, j| (g + i + j) as f32 * 0.2));
/// let v = k;
/// let mask = Mask::causal(Alignment::BottomRight);
/// let out = grouped_query_attention(&q, &k, &v, &mask, None);
/// // Query head 3 reads kv head 1.
/// let alone = scaled_dot_product_attention(&q[3], &k[1], &v[1], &mask, None);
/// assert_eq!(out[3], alone);
/// ```
#[must_use]
pub fn grouped_query_attention<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &[SMatrix<T, SQ, D>; HEADS],
    k: &[SMatrix<T, SKV, D>; KV_HEADS],
    v: &[SMatrix<T, SKV, DV>; KV_HEADS],
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
) -> [SMatrix<T, SQ, DV>; HEADS] {
    let mut out = [zero_matrix(); HEADS];
    grouped_query_attention_into(q, k, v, mask, scale, &mut out);
    out
}

/// [`grouped_query_attention`] writing into caller-owned outputs; beyond them it needs the
/// kernel's block state on the stack (as [`scaled_dot_product_attention_into`]). With `std`,
/// [`crate::heap::zeroed`] allocates an array of heads on the heap
/// (`Box<[SMatrix<f32, SQ, DV>; HEADS]>`).
pub fn grouped_query_attention_into<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &[SMatrix<T, SQ, D>; HEADS],
    k: &[SMatrix<T, SKV, D>; KV_HEADS],
    v: &[SMatrix<T, SKV, DV>; KV_HEADS],
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
    out: &mut [SMatrix<T, SQ, DV>; HEADS],
) {
    let () = Width::<D>::OK;
    let () = Groups::<HEADS, KV_HEADS>::OK;
    // The arrays of heads are contiguous: head `h` of a flattened array sits where the core's
    // per-head loop looks for it.
    let io = QueryIo::Separate {
        q: bytemuck::cast_slice(&q[..]),
        out: bytemuck::cast_slice_mut(&mut out[..]),
    };
    let kv = (bytemuck::cast_slice(&k[..]), bytemuck::cast_slice(&v[..]));
    let heads = Heads {
        count: HEADS,
        kv: KV_HEADS,
    };
    run::<SQ, SKV, DV, T, A>(io, kv, Dims::new(SQ, SKV, D, DV), heads, mask, scale, None);
}
