//! Single-head self-attention: `Attention(X W_qᵀ + b_q, X W_kᵀ + b_k, X W_vᵀ + b_v)`.

use nalgebra::SMatrix;
use rand::Rng;

use crate::heads::Layer;
use crate::layer_api::{build_api, decode_api, rules, self_attention_api};
use crate::positions::PositionEncoding;
use crate::{Bias, Float, Linear, Scratch, Weight, init};

/// One attention head over `SEQ` tokens of `DIM` features: three projections `DIM → DIM`
/// (query, key, value, each `y = x Wᵀ + b`) and scaled dot-product attention with scale
/// `1/√DIM`. There is no output projection; [`crate::MultiHead`] with `HEADS = 1` equals this
/// followed by its `out_proj`.
///
/// Input and output are `SEQ × DIM`; weights, on request, are `SEQ × SEQ`. No `SEQ × SEQ`
/// matrix is built otherwise. `SEQ` and `DIM` of zero are build errors. `T` is `f32` unless
/// named. It has the same methods as [`crate::MultiHead`] (its attention weights are one
/// matrix, not one per head) and runs the same core; [`crate::io`] loads its weights from
/// PyTorch (`q_proj`, `k_proj`, `v_proj` `nn.Linear`s).
///
/// ```
/// use static_attention::{Mask, SMatrix, SelfAttention};
///
/// let head = SelfAttention::<3, 4>::from_seed(0);
/// let x = SMatrix::<f32, 3, 4>::from_fn(|i, j| (i + j) as f32 / 4.0);
/// let (y, w) = head.forward_with_weights(&x, &Mask::none());
/// for i in 0..3 {
///     assert!((w.row(i).sum() - 1.0).abs() < 1e-6);
/// }
/// assert_eq!(y.shape(), (3, 4));
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float, W: bytemuck::Zeroable")]
pub struct SelfAttention<const SEQ: usize, const DIM: usize, T = f32, W: crate::Weight<T> = T> {
    pub(crate) q: Linear<DIM, DIM, T, W>,
    pub(crate) k: Linear<DIM, DIM, T, W>,
    pub(crate) v: Linear<DIM, DIM, T, W>,
}

build_api! {
    impl[const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>] SelfAttention<SEQ, DIM, T, W>,
    new: |rng, bias| {
        /// A head initialised like the in-projection of a one-head `nn.MultiheadAttention`
        /// (Xavier-uniform over the packed `[3·DIM, DIM]` weights), with zero biases
        /// ([`Bias::Present`]) or none ([`Bias::Absent`]).
        ///
        /// Returned by value, each projection drawn straight into place (`PARAM_BYTES` plus one
        /// projection of stack). For large heads allocate one with [`crate::heap::zeroed`] and
        /// call [`SelfAttention::reset_parameters`].
    },
    from_seed: Present "with biases",
    to_weights: SelfAttention<SEQ, DIM, T, W2>,
    projections: {
        /// The query projection.
        q_proj: q: Linear<DIM, DIM, T, W> = Linear::random(rng, init::in_proj_bound(DIM), bias),
        /// The key projection.
        k_proj: k: Linear<DIM, DIM, T, W> = Linear::random(rng, init::in_proj_bound(DIM), bias),
        /// The value projection.
        v_proj: v: Linear<DIM, DIM, T, W> = Linear::random(rng, init::in_proj_bound(DIM), bias),
    },
}

/// Parameters: the shape constants, and re-drawing them in place.
impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    const SHAPE_OK: () = {
        rules::tokens(SEQ);
        rules::features(DIM);
    };

    /// Bytes of working memory a forward pass over `SEQ` tokens needs ([`Scratch::BYTES`]).
    pub const SCRATCH_BYTES: usize = Scratch::<SEQ, SEQ, DIM, T>::BYTES;

    /// Bytes of the parameters (three weights and biases): `3·DIM·(DIM + 1)` scalars and three
    /// flags, padded.
    pub const PARAM_BYTES: usize = core::mem::size_of::<Self>();

    /// Bytes of one `SEQ × DIM` input or output.
    pub const OUTPUT_BYTES: usize = core::mem::size_of::<SMatrix<T, SEQ, DIM>>();

    /// Bytes of the `SEQ × SEQ` attention weights.
    pub const WEIGHTS_BYTES: usize = core::mem::size_of::<SMatrix<T, SEQ, SEQ>>();

    /// Re-draws the weights in place as [`SelfAttention::new`] draws them.
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        let () = Self::SHAPE_OK;
        init::reset_in_projection([&mut self.q, &mut self.k, &mut self.v], bias, rng);
    }

    /// The head as the core runs it: one head, no output projection.
    pub(crate) fn layer(&self) -> Layer<'_, DIM, DIM, DIM, T, W> {
        let () = Self::SHAPE_OK;
        Layer::new(&self.q, &self.k, &self.v, None, (1, 1))
    }

    /// Checks at build time that a rotary table fits the head.
    const fn check_positions<P: PositionEncoding<T>>() {
        assert!(
            P::HEAD_DIM == 0 || P::HEAD_DIM == DIM,
            "the Rope table's HEAD_DIM must be the head's DIM"
        );
    }
}

self_attention_api! {
    impl[const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>] SelfAttention<SEQ, DIM, T, W>,
    weights: SMatrix[T][],
    weights_are: "post-softmax attention weights (one matrix of queries × keys, PyTorch's \
        `[SQ, SKV]`)",
    forward_into: {},
    forward_batch_into: {},
    attend: {
        ///
        /// ```
        /// use static_attention::{Mask, SMatrix, Scratch, SelfAttention};
        ///
        /// let head = SelfAttention::<8, 4>::from_seed(3);
        /// let q = SMatrix::<f32, 2, 4>::repeat(0.5);
        /// let kv = SMatrix::<f32, 6, 4>::repeat(-0.25);
        /// let mut scratch = Scratch::<2, 6, 4>::new();
        /// let (mut out, mut w) = (SMatrix::zeros(), SMatrix::<f32, 2, 6>::zeros());
        /// head.attend(&q, &kv, &kv, &Mask::none(), &mut scratch, &mut out, Some(&mut w));
        /// assert!((w.row(0).sum() - 1.0).abs() < 1e-6);
        /// ```
    },
}

decode_api! {
    impl[const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>] SelfAttention<SEQ, DIM, T, W>,
    q_dim: DIM,
    kv_dim: DIM,
    heads: 1,
    decode: {
        ///
        /// `positions` is usually [`crate::positions::NoPositions`]; a
        /// [`crate::positions::Rope`] of width `DIM` or [`crate::Alibi`] work too.
    },
}
