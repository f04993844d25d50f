//! Scaled dot-product attention, `softmax(Q Kᵀ · scale + mask) V`, as a function over
//! `SMatrix`.

use nalgebra::SMatrix;

use crate::kernels::{self, Dims, Work};
use crate::{Float, Mask};

/// The default softmax scale `1/√d` for keys of width `d`.
#[inline]
#[must_use]
pub fn default_scale<T: Float>(d: usize) -> T {
    T::of(1.0 / crate::float::math::sqrt(d as f64))
}

/// Scaled dot-product attention: `softmax(Q Kᵀ · scale + mask) V`.
///
/// Shapes: `q` is `SQ × D` (queries in rows), `k` is `SKV × D`, `v` is `SKV × DV`; the result
/// is `SQ × DV`. `D = 0` is a build error. `scale` is `1/√D` when `None` and used exactly as given otherwise. This is
/// PyTorch's `scaled_dot_product_attention` for one head (its boolean mask is
/// [`Mask::attend_where`]).
///
/// The computation streams over the keys with an online softmax: no `SQ × SKV` matrix is
/// built, and the stack it needs beyond the output is `8 · (DV + 2)` scalars. A query whose
/// keys are all masked gets a zero row.
///
/// ```
/// use nalgebra::SMatrix;
/// use static_attention::{Mask, scaled_dot_product_attention};
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
    T: Float,
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, T, SQ, SKV>,
    scale: Option<T>,
) -> SMatrix<T, SQ, DV> {
    let mut out = SMatrix::zeros();
    scaled_dot_product_attention_into(q, k, v, mask, scale, &mut out);
    out
}

/// [`scaled_dot_product_attention`] writing into a caller-owned output (for example a boxed
/// matrix too large for the stack).
pub fn scaled_dot_product_attention_into<
    T: Float,
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, T, SQ, SKV>,
    scale: Option<T>,
    out: &mut SMatrix<T, SQ, DV>,
) {
    const {
        assert!(
            D > 0,
            "D must be at least 1: queries and keys need at least one feature"
        )
    };
    let scale = scale.unwrap_or_else(|| default_scale(D));
    let mut work = Work::<T, DV>::new();
    let dims = Dims {
        sq: SQ,
        skv: SKV,
        dk: D,
        dv: DV,
    };
    kernels::attention(
        q.as_slice(),
        k.as_slice(),
        v.as_slice(),
        dims,
        scale,
        mask,
        out.as_mut_slice(),
        &mut work,
    );
}

/// [`scaled_dot_product_attention`] that also returns the post-softmax attention weights
/// (`SQ × SKV`, each row sums to 1, or is all zeros for a fully masked query).
///
/// ```
/// use nalgebra::SMatrix;
/// use static_attention::{Alignment, Mask, scaled_dot_product_attention_with_weights};
///
/// let x = SMatrix::<f64, 3, 2>::new(1.0, 0.0, 0.0, 1.0, 1.0, 1.0);
/// let mask = Mask::causal(Alignment::TopLeft);
/// let (_, w) = scaled_dot_product_attention_with_weights(&x, &x, &x, &mask, None);
/// assert_eq!(w[(0, 0)], 1.0); // the first token sees only itself
/// assert_eq!(w[(0, 1)], 0.0);
/// ```
#[must_use]
pub fn scaled_dot_product_attention_with_weights<
    T: Float,
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, T, SQ, SKV>,
    scale: Option<T>,
) -> (SMatrix<T, SQ, DV>, SMatrix<T, SQ, SKV>) {
    const {
        assert!(
            D > 0,
            "D must be at least 1: queries and keys need at least one feature"
        )
    };
    let scale = scale.unwrap_or_else(|| default_scale(D));
    let mut out = SMatrix::<T, SQ, DV>::zeros();
    let mut weights = SMatrix::<T, SQ, SKV>::zeros();
    let dims = Dims {
        sq: SQ,
        skv: SKV,
        dk: D,
        dv: DV,
    };
    kernels::attention_with_weights(
        q.as_slice(),
        k.as_slice(),
        v.as_slice(),
        dims,
        scale,
        mask,
        out.as_mut_slice(),
        weights.as_mut_slice(),
    );
    (out, weights)
}
