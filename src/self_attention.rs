//! Single-head self-attention: `Attention(X W_qᵀ + b_q, X W_kᵀ + b_k, X W_vᵀ + b_v)`.

use nalgebra::SMatrix;
use rand::Rng;

use crate::{
    Float, Linear, Mask, init, scaled_dot_product_attention,
    scaled_dot_product_attention_with_weights,
};

/// One attention head over `SEQ` tokens of `DIM` features: three projections `DIM → DIM`
/// (query, key, value, each `y = x Wᵀ + b`) and scaled dot-product attention with scale
/// `1/√DIM`. There is no output projection; [`crate::MultiHead`] with `HEADS = 1` equals this
/// followed by its `out_proj`.
///
/// Input and output are `SEQ × DIM`; weights, on request, are `SEQ × SEQ`. No `SEQ × SEQ`
/// matrix is built otherwise. `SEQ` and `DIM` of zero are build errors.
///
/// ```
/// use nalgebra::SMatrix;
/// use rand::{SeedableRng, rngs::SmallRng};
/// use static_attention::{Mask, SelfAttention};
///
/// let head = SelfAttention::<3, 4>::new(&mut SmallRng::seed_from_u64(0));
/// let x = SMatrix::<f32, 3, 4>::from_fn(|i, j| (i + j) as f32 / 4.0);
/// let (y, w) = head.forward_with_weights(&x, &Mask::none());
/// for i in 0..3 {
///     assert!((w.row(i).sum() - 1.0).abs() < 1e-6);
/// }
/// assert_eq!(y.shape(), (3, 4));
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct SelfAttention<const SEQ: usize, const DIM: usize, T = f32> {
    q: Linear<T, DIM, DIM>,
    k: Linear<T, DIM, DIM>,
    v: Linear<T, DIM, DIM>,
}

impl<const SEQ: usize, const DIM: usize, T: Float> SelfAttention<SEQ, DIM, T> {
    const SHAPE_OK: () = {
        assert!(
            SEQ > 0,
            "SEQ must be at least 1: an attention layer needs at least one token"
        );
        assert!(
            DIM > 0,
            "DIM must be at least 1: tokens need at least one feature"
        );
    };

    /// Builds the head from its query, key and value projections (a `const fn`).
    #[must_use]
    pub const fn from_parts(
        q: Linear<T, DIM, DIM>,
        k: Linear<T, DIM, DIM>,
        v: Linear<T, DIM, DIM>,
    ) -> Self {
        let () = Self::SHAPE_OK;
        Self { q, k, v }
    }

    /// A head initialised like the in-projection of a one-head `nn.MultiheadAttention`
    /// (Xavier-uniform over the packed `[3·DIM, DIM]` weights, zero biases).
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut head = Self::from_parts(Linear::zeros(), Linear::zeros(), Linear::zeros());
        let a = init::in_proj_bound(DIM);
        let zero = nalgebra::SVector::zeros();
        for l in [&mut head.q, &mut head.k, &mut head.v] {
            init::fill_uniform(l.weight_t_mut(), a, rng);
            l.set_bias(Some(&zero));
        }
        head
    }

    /// The query projection.
    #[must_use]
    pub const fn q_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.q
    }
    /// The key projection.
    #[must_use]
    pub const fn k_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.k
    }
    /// The value projection.
    #[must_use]
    pub const fn v_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.v
    }

    /// Self-attention over `SEQ` tokens (`SEQ × DIM → SEQ × DIM`).
    #[must_use]
    pub fn forward(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, T, SEQ, SEQ>,
    ) -> SMatrix<T, SEQ, DIM> {
        self.cross_attention(x, x, mask)
    }

    /// Self-attention that also returns the `SEQ × SEQ` attention weights.
    #[must_use]
    pub fn forward_with_weights(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, T, SEQ, SEQ>,
    ) -> (SMatrix<T, SEQ, DIM>, SMatrix<T, SEQ, SEQ>) {
        let () = Self::SHAPE_OK;
        let (q, k, v) = (self.q.forward(x), self.k.forward(x), self.v.forward(x));
        scaled_dot_product_attention_with_weights(&q, &k, &v, mask, None)
    }

    /// The `SEQ` tokens of `x` attend to the `SKV` tokens of `memory` (keys and values).
    #[must_use]
    pub fn cross_attention<const SKV: usize>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, T, SEQ, SKV>,
    ) -> SMatrix<T, SEQ, DIM> {
        let () = Self::SHAPE_OK;
        let (q, k, v) = (
            self.q.forward(x),
            self.k.forward(memory),
            self.v.forward(memory),
        );
        scaled_dot_product_attention(&q, &k, &v, mask, None)
    }
}
