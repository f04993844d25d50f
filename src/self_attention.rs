//! Single-head self-attention: `Attention(X W_qᵀ + b_q, X W_kᵀ + b_k, X W_vᵀ + b_v)`.

use nalgebra::SMatrix;
use rand::{Rng, SeedableRng};

use crate::layer::{Buffers, Projections, attend_heads, local_buffers};
use crate::mask::Additive;
use crate::scratch::zero_matrix;
use crate::{Bias, Float, Linear, Mask, Scratch, Weight, init};

/// One attention head over `SEQ` tokens of `DIM` features: three projections `DIM → DIM`
/// (query, key, value, each `y = x Wᵀ + b`) and scaled dot-product attention with scale
/// `1/√DIM`. There is no output projection; [`crate::MultiHead`] with `HEADS = 1` equals this
/// followed by its `out_proj`.
///
/// Input and output are `SEQ × DIM`; weights, on request, are `SEQ × SEQ`. No `SEQ × SEQ`
/// matrix is built otherwise. `SEQ` and `DIM` of zero are build errors. `T` is `f32` unless
/// named. Like [`crate::MultiHead`], every entry point has a caller-owned (`*_into`,
/// [`SelfAttention::attend`]) or heap (`*_boxed`) form, and [`crate::io`] loads its weights
/// from PyTorch (`q_proj`, `k_proj`, `v_proj` `nn.Linear`s).
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
pub struct SelfAttention<const SEQ: usize, const DIM: usize, T = f32, W = T> {
    pub(crate) q: Linear<DIM, DIM, T, W>,
    pub(crate) k: Linear<DIM, DIM, T, W>,
    pub(crate) v: Linear<DIM, DIM, T, W>,
}

impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
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

    /// Bytes of working memory a forward pass over `SEQ` tokens needs ([`Scratch::BYTES`]).
    pub const SCRATCH_BYTES: usize = Scratch::<SEQ, SEQ, DIM, T>::BYTES;

    /// Bytes of the parameters (three weights and biases): `3·DIM·(DIM + 1)` scalars and three
    /// flags, padded.
    pub const PARAM_BYTES: usize = core::mem::size_of::<Self>();

    /// Bytes of one `SEQ × DIM` input or output.
    pub const OUTPUT_BYTES: usize = core::mem::size_of::<SMatrix<T, SEQ, DIM>>();

    /// Bytes of the `SEQ × SEQ` attention weights.
    pub const WEIGHTS_BYTES: usize = core::mem::size_of::<SMatrix<T, SEQ, SEQ>>();

    /// Builds the head from its query, key and value projections (a `const fn`).
    #[must_use]
    pub const fn from_parts(
        q: Linear<DIM, DIM, T, W>,
        k: Linear<DIM, DIM, T, W>,
        v: Linear<DIM, DIM, T, W>,
    ) -> Self {
        let () = Self::SHAPE_OK;
        Self { q, k, v }
    }

    /// A head with all-zero weights and no biases, to load parameters into (a `const fn`,
    /// built in place).
    #[must_use]
    pub fn zeros() -> Self {
        let () = Self::SHAPE_OK;
        bytemuck::Zeroable::zeroed()
    }

    /// [`SelfAttention::zeros`] allocated directly on the heap.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn zeros_boxed() -> std::boxed::Box<Self> {
        let () = Self::SHAPE_OK;
        bytemuck::zeroed_box()
    }

    /// A head initialised like the in-projection of a one-head `nn.MultiheadAttention`
    /// (Xavier-uniform over the packed `[3·DIM, DIM]` weights, zero biases).
    ///
    /// Returned by value, each projection drawn straight into place (`PARAM_BYTES` plus one
    /// projection of stack). For large heads use [`SelfAttention::new_boxed`], or
    /// [`SelfAttention::zeros`] and [`SelfAttention::reset_parameters`] in a place you own.
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let () = Self::SHAPE_OK;
        let a = init::in_proj_bound(DIM);
        Self {
            q: Linear::random(rng, a, Bias::Present),
            k: Linear::random(rng, a, Bias::Present),
            v: Linear::random(rng, a, Bias::Present),
        }
    }

    /// [`SelfAttention::new`] with the crate's portable seeded generator ([`init::SeedRng`]).
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        Self::new(&mut init::SeedRng::seed_from_u64(seed))
    }

    /// A randomly initialised head built directly on the heap.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed<R: Rng + ?Sized>(rng: &mut R) -> std::boxed::Box<Self> {
        let mut head = Self::zeros_boxed();
        head.reset_parameters(rng, Bias::Present);
        head
    }

    /// Re-draws the weights in place (see [`SelfAttention::new`]); `bias` says whether the
    /// projections have (zero) biases.
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        init::reset_in_projection([&mut self.q, &mut self.k, &mut self.v], bias, rng);
    }

    /// The same head with its weights stored as `W2`, each rounded to it (see
    /// [`crate::weight`]). By value.
    #[must_use]
    pub fn to_weights<W2: Weight<T>>(&self) -> SelfAttention<SEQ, DIM, T, W2> {
        SelfAttention {
            q: self.q.to_weights(),
            k: self.k.to_weights(),
            v: self.v.to_weights(),
        }
    }

    /// The query projection.
    #[must_use]
    pub const fn q_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.q
    }
    /// The key projection.
    #[must_use]
    pub const fn k_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.k
    }
    /// The value projection.
    #[must_use]
    pub const fn v_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.v
    }
    /// Mutable projections, in the order q, k, v.
    pub fn projections_mut(&mut self) -> [&mut Linear<DIM, DIM, T, W>; 3] {
        [&mut self.q, &mut self.k, &mut self.v]
    }

    /// Self-attention over `SEQ` tokens (`SEQ × DIM → SEQ × DIM`), by value (see the [crate
    /// docs](crate#stack) for the stack it needs).
    #[must_use]
    pub fn forward<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> SMatrix<T, SEQ, DIM> {
        local_buffers!(buf, T, SEQ, SEQ, DIM);
        let mut out = [[T::ZERO; SEQ]; DIM];
        self.attend_buffers(x, x, x, mask, &mut buf, out.as_flattened_mut(), None);
        SMatrix::from_array_storage(nalgebra::ArrayStorage(out))
    }

    /// [`SelfAttention::forward`] into a caller-owned output with caller-owned scratch.
    pub fn forward_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        self.attend(x, x, x, mask, scratch, out, None);
    }

    /// [`SelfAttention::forward`] with the scratch and the output on the heap.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn forward_boxed<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> std::boxed::Box<SMatrix<T, SEQ, DIM>> {
        let mut scratch = Scratch::<SEQ, SEQ, DIM, T>::new_boxed();
        let mut out: std::boxed::Box<SMatrix<T, SEQ, DIM>> = bytemuck::zeroed_box();
        self.attend(x, x, x, mask, &mut scratch, &mut out, None);
        out
    }

    /// Self-attention that also returns the `SEQ × SEQ` attention weights, by value.
    #[must_use]
    pub fn forward_with_weights<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> (SMatrix<T, SEQ, DIM>, SMatrix<T, SEQ, SEQ>) {
        local_buffers!(buf, T, SEQ, SEQ, DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, _) = (zero_matrix(), zero_matrix());
        let (out, weights) = (&mut result.0, &mut result.1);
        self.attend_buffers(x, x, x, mask, &mut buf, out.as_mut_slice(), Some(weights));
        result
    }

    /// [`SelfAttention::forward_with_weights`] into caller-owned buffers.
    pub fn forward_with_weights_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
        weights: &mut SMatrix<T, SEQ, SEQ>,
    ) {
        self.attend(x, x, x, mask, scratch, out, Some(weights));
    }

    /// [`SelfAttention::forward_with_weights`] with the scratch, the output and the weights on
    /// the heap.
    #[cfg(feature = "std")]
    #[must_use]
    #[allow(clippy::type_complexity)]
    pub fn forward_with_weights_boxed<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> (
        std::boxed::Box<SMatrix<T, SEQ, DIM>>,
        std::boxed::Box<SMatrix<T, SEQ, SEQ>>,
    ) {
        let mut scratch = Scratch::<SEQ, SEQ, DIM, T>::new_boxed();
        let mut out: std::boxed::Box<SMatrix<T, SEQ, DIM>> = bytemuck::zeroed_box();
        let mut weights: std::boxed::Box<SMatrix<T, SEQ, SEQ>> = bytemuck::zeroed_box();
        self.attend(x, x, x, mask, &mut scratch, &mut out, Some(&mut weights));
        (out, weights)
    }

    /// The `SEQ` tokens of `x` attend to the `SKV` tokens of `memory` (keys and values), by
    /// value.
    #[must_use]
    pub fn cross_attention<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
    ) -> SMatrix<T, SEQ, DIM> {
        local_buffers!(buf, T, SEQ, SKV, DIM);
        let mut out = [[T::ZERO; SEQ]; DIM];
        self.attend_buffers(
            x,
            memory,
            memory,
            mask,
            &mut buf,
            out.as_flattened_mut(),
            None,
        );
        SMatrix::from_array_storage(nalgebra::ArrayStorage(out))
    }

    /// [`SelfAttention::cross_attention`] into a caller-owned output with caller-owned scratch.
    pub fn cross_attention_into<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
        scratch: &mut Scratch<SEQ, SKV, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        self.attend(x, memory, memory, mask, scratch, out, None);
    }

    /// [`SelfAttention::cross_attention`] that also returns the `SEQ × SKV` weights, by value.
    #[must_use]
    pub fn cross_attention_with_weights<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
    ) -> (SMatrix<T, SEQ, DIM>, SMatrix<T, SEQ, SKV>) {
        local_buffers!(buf, T, SEQ, SKV, DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, _) = (zero_matrix(), zero_matrix());
        let (out, weights) = (&mut result.0, &mut result.1);
        self.attend_buffers(
            x,
            memory,
            memory,
            mask,
            &mut buf,
            out.as_mut_slice(),
            Some(weights),
        );
        result
    }

    /// [`SelfAttention::cross_attention_with_weights`] into caller-owned buffers.
    pub fn cross_attention_with_weights_into<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
        scratch: &mut Scratch<SEQ, SKV, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
        weights: &mut SMatrix<T, SEQ, SKV>,
    ) {
        self.attend(x, memory, memory, mask, scratch, out, Some(weights));
    }

    /// The general entry point: `SQ` queries from `query` attend to `SKV` keys from `key` and
    /// values from `value`, with caller-owned scratch, writing the `SQ × DIM` result into `out`
    /// and, when given, the `SQ × SKV` weights into `weights`. Nothing is allocated and
    /// nothing big is on the stack.
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
    #[allow(clippy::too_many_arguments)]
    pub fn attend<const SQ: usize, const SKV: usize, A: Additive<T, SQ, SKV>>(
        &self,
        query: &SMatrix<T, SQ, DIM>,
        key: &SMatrix<T, SKV, DIM>,
        value: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SQ, SKV, A>,
        scratch: &mut Scratch<SQ, SKV, DIM, T>,
        out: &mut SMatrix<T, SQ, DIM>,
        weights: Option<&mut SMatrix<T, SQ, SKV>>,
    ) {
        let mut buf = scratch.buffers();
        self.attend_buffers(
            query,
            key,
            value,
            mask,
            &mut buf,
            out.as_mut_slice(),
            weights,
        );
    }

    /// [`SelfAttention::attend`] over working memory given as separate buffers.
    #[allow(clippy::too_many_arguments)]
    fn attend_buffers<const SQ: usize, const SKV: usize, A: Additive<T, SQ, SKV>>(
        &self,
        query: &SMatrix<T, SQ, DIM>,
        key: &SMatrix<T, SKV, DIM>,
        value: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SQ, SKV, A>,
        buf: &mut Buffers<'_, T, DIM>,
        out: &mut [T],
        weights: Option<&mut SMatrix<T, SQ, SKV>>,
    ) {
        let () = Self::SHAPE_OK;
        let proj = Projections {
            q: &self.q,
            k: &self.k,
            v: &self.v,
        };
        attend_heads(
            &proj,
            query,
            key,
            value,
            mask,
            1,
            buf,
            out,
            weights.map(core::slice::from_mut),
        );
    }
}
