//! Scaled dot-product attention, `softmax(Q Kᵀ · scale + mask) V`, as a function over
//! `SMatrix`.

use nalgebra::SMatrix;

use crate::kernels::{self, Dims, MaskView, Work};
use crate::mask::Additive;
use crate::scratch::zero_matrix;
use crate::{Float, Mask};

/// The default softmax scale `1/√d` for keys of width `d`.
#[inline]
#[must_use]
pub fn default_scale<T: Float>(d: usize) -> T {
    T::of(1.0 / crate::float::math::sqrt(d as f64))
}

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
    let scale = scale.unwrap_or_else(|| default_scale(D));
    let mut work = Work::<T, DV>::new();
    let dims = Dims::new(SQ, SKV, D, DV);
    kernels::attention(
        q.as_slice(),
        k.as_slice(),
        v.as_slice(),
        dims,
        scale,
        &MaskView::of(mask),
        out.as_mut_slice(),
        work.parts(),
    );
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
/// let x = heap::zeros::<f32, 512, 64>();
/// let mut out = heap::zeros::<f32, 512, 64>();
/// let mut w = heap::zeros::<f32, 512, 512>();
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
    let scale = scale.unwrap_or_else(|| default_scale(D));
    let dims = Dims::new(SQ, SKV, D, DV);
    kernels::attention_with_weights(
        q.as_slice(),
        k.as_slice(),
        v.as_slice(),
        dims,
        scale,
        &MaskView::of(mask),
        out.as_mut_slice(),
        weights.as_mut_slice(),
    );
}

/// Compile-time check of the head counts of [`grouped_query_attention`].
struct Groups<const HQ: usize, const HKV: usize>;
impl<const HQ: usize, const HKV: usize> Groups<HQ, HKV> {
    const OK: () = {
        assert!(
            HKV > 0,
            "HKV must be at least 1: queries need key/value heads"
        );
        assert!(
            HQ.is_multiple_of(HKV),
            "HKV must divide HQ: each key/value head serves HQ / HKV query heads"
        );
    };
}

/// Scaled dot-product attention over many heads at once, with grouped-query heads: `HQ` query
/// heads and `HKV` key/value heads, query head `h` attending with key/value head
/// `h / (HQ / HKV)` (PyTorch's `scaled_dot_product_attention(..., enable_gqa=True)`).
/// `HKV = HQ` is ordinary multi-head attention, `HKV = 1` multi-query attention; `HKV = 0` or
/// an `HKV` that does not divide `HQ` is a build error.
///
/// Shapes: `q[h]` is `SQ × D`, `k[g]` is `SKV × D`, `v[g]` is `SKV × DV`, the result `HQ`
/// matrices of `SQ × DV`; the mask applies to every head, an ALiBi part with head `h`'s slope
/// of `HQ` ([`crate::Alibi`]). Returned by value; [`grouped_query_attention_into`] writes into
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
    const HQ: usize,
    const HKV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &[SMatrix<T, SQ, D>; HQ],
    k: &[SMatrix<T, SKV, D>; HKV],
    v: &[SMatrix<T, SKV, DV>; HKV],
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
) -> [SMatrix<T, SQ, DV>; HQ] {
    let mut out = [zero_matrix(); HQ];
    grouped_query_attention_into(q, k, v, mask, scale, &mut out);
    out
}

/// [`grouped_query_attention`] writing into caller-owned outputs; beyond them it needs the
/// kernel's block state on the stack (as [`scaled_dot_product_attention_into`]). With `std`,
/// `heap::zeros_array` allocates arrays of heads on the heap.
pub fn grouped_query_attention_into<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    const HQ: usize,
    const HKV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &[SMatrix<T, SQ, D>; HQ],
    k: &[SMatrix<T, SKV, D>; HKV],
    v: &[SMatrix<T, SKV, DV>; HKV],
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
    out: &mut [SMatrix<T, SQ, DV>; HQ],
) {
    let () = Width::<D>::OK;
    let () = Groups::<HQ, HKV>::OK;
    let scale = scale.unwrap_or_else(|| default_scale(D));
    let mut work = Work::<T, DV>::new();
    let view = MaskView::of(mask);
    let alibi = mask.alibi();
    let dims = Dims::new(SQ, SKV, D, DV);
    for (h, (qh, oh)) in q.iter().zip(out.iter_mut()).enumerate() {
        let g = h / (HQ / HKV);
        kernels::attention(
            qh.as_slice(),
            k[g].as_slice(),
            v[g].as_slice(),
            dims,
            scale,
            &view.with_alibi_slope(alibi.map(|a| a.slope(h, HQ))),
            oh.as_mut_slice(),
            work.parts(),
        );
    }
}
