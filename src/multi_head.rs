//! Multi-head attention with PyTorch's parameters: `MultiHead(X) = Concat(head_1..head_h) W_O`.

use nalgebra::SMatrix;
use rand::{Rng, SeedableRng};

use crate::layer::{Buffers, Projections, attend_heads, local_buffers, project_in_place};
use crate::mask::Additive;
use crate::scratch::zero_matrix;
use crate::{AttentionWeights, Bias, Float, Linear, Mask, Scratch, Weight, init};

/// Multi-head attention over sequences of `SEQ` tokens of `DIM` features with `HEADS` heads,
/// with the parameters and semantics of PyTorch's `nn.MultiheadAttention` (`batch_first`,
/// one sequence).
///
/// - Shapes: input and output are `SMatrix<T, SEQ, DIM>`, tokens in rows. Each head has
///   `HEAD_DIM = DIM / HEADS` features and scale `1/√HEAD_DIM`. `T` is `f32` unless named.
/// - Parameters: four [`Linear`] maps `DIM → DIM` (`W_q`, `W_k`, `W_v`, `W_o`, PyTorch layout
///   `y = x Wᵀ + b`; head `h` uses rows `h·HEAD_DIM..(h+1)·HEAD_DIM` of `W_q`, `W_k`, `W_v`).
///   They live inline: a `MultiHead` is plain data with no pointers.
/// - `SEQ` is the usual sequence length, used by [`MultiHead::forward`] and
///   [`MultiHead::SCRATCH_BYTES`]; the weights do not depend on it, and
///   [`MultiHead::attend`] and [`MultiHead::cross_attention`] run any other lengths.
/// - Build errors: `DIM` not divisible by `HEADS`, and `SEQ`, `DIM` or `HEADS` of zero, fail
///   `cargo build` with a message naming the problem.
/// - Memory: every entry point has a form that takes its big buffers from the caller
///   (`*_into`, [`MultiHead::attend`]) or puts them on the heap (`*_boxed`); the by-value forms
///   need the stack the [crate docs](crate#stack) give for each.
/// - Not `Copy` (a layer can be megabytes); `Clone` copies it explicitly.
///
/// ```
/// use static_attention::{Alignment, Mask, MultiHead, SMatrix};
///
/// let layer = MultiHead::<4, 8, 2>::from_seed(7);
/// let x = SMatrix::<f32, 4, 8>::from_fn(|i, j| ((i * 8 + j) as f32 * 0.1).sin());
/// let y = layer.forward(&x, &Mask::causal(Alignment::TopLeft));
/// let (y2, weights) = layer.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft));
/// assert!((y - y2).amax() < 1e-6);
/// assert_eq!(weights.head(1)[(0, 3)], 0.0); // token 0 cannot see token 3
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float, W: bytemuck::Zeroable")]
pub struct MultiHead<const SEQ: usize, const DIM: usize, const HEADS: usize, T = f32, W = T> {
    pub(crate) q: Linear<DIM, DIM, T, W>,
    pub(crate) k: Linear<DIM, DIM, T, W>,
    pub(crate) v: Linear<DIM, DIM, T, W>,
    pub(crate) out: Linear<DIM, DIM, T, W>,
}

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Compile-time shape check, evaluated by every constructor and forward pass.
    pub(crate) const SHAPE_OK: () = {
        assert!(
            SEQ > 0,
            "SEQ must be at least 1: an attention layer needs at least one token"
        );
        assert!(
            DIM > 0,
            "DIM must be at least 1: tokens need at least one feature"
        );
        assert!(
            HEADS > 0,
            "HEADS must be at least 1: attention needs at least one head"
        );
        assert!(
            DIM.is_multiple_of(HEADS),
            "DIM must be divisible by HEADS: each head gets DIM / HEADS features"
        );
    };

    /// Features per head, `DIM / HEADS` (`d_k = d_v` in the paper).
    pub const HEAD_DIM: usize = match DIM.checked_div(HEADS) {
        Some(d) => d,
        None => 0,
    };

    /// Bytes of working memory a forward pass over `SEQ` tokens needs ([`Scratch::BYTES`]).
    pub const SCRATCH_BYTES: usize = Scratch::<SEQ, SEQ, DIM, T>::BYTES;

    /// Bytes of the parameters (the four weights and biases): `4·DIM·(DIM + 1)` scalars and
    /// four flags, padded.
    pub const PARAM_BYTES: usize = core::mem::size_of::<Self>();

    /// Bytes of one `SEQ × DIM` input or output.
    pub const OUTPUT_BYTES: usize = core::mem::size_of::<SMatrix<T, SEQ, DIM>>();

    /// Bytes of the attention weights of a self-attention pass ([`AttentionWeights::BYTES`],
    /// `HEADS · SEQ · SEQ` scalars).
    pub const WEIGHTS_BYTES: usize = AttentionWeights::<SEQ, SEQ, HEADS, T>::BYTES;

    /// Builds a layer from its four projections (a `const fn`, so `static LAYER: MultiHead<…>`
    /// works and keeps its weights in read-only memory).
    #[must_use]
    pub const fn from_parts(
        q: Linear<DIM, DIM, T, W>,
        k: Linear<DIM, DIM, T, W>,
        v: Linear<DIM, DIM, T, W>,
        out: Linear<DIM, DIM, T, W>,
    ) -> Self {
        let () = Self::SHAPE_OK;
        Self { q, k, v, out }
    }

    /// A layer with all-zero weights and no biases, to load parameters into (a `const fn`,
    /// built in place: it needs [`MultiHead::PARAM_BYTES`] of stack and no more).
    #[must_use]
    pub fn zeros() -> Self {
        let () = Self::SHAPE_OK;
        bytemuck::Zeroable::zeroed()
    }

    /// [`MultiHead::zeros`] allocated directly on the heap.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn zeros_boxed() -> std::boxed::Box<Self> {
        let () = Self::SHAPE_OK;
        bytemuck::zeroed_box()
    }

    /// A layer initialised as PyTorch initialises `nn.MultiheadAttention(DIM, HEADS)` (see
    /// [`crate::init`]), with biases (all zero).
    ///
    /// Returned by value, each projection drawn straight into place: it needs
    /// `PARAM_BYTES` plus one projection of stack (see the [crate docs](crate#stack)). For
    /// large layers use [`MultiHead::new_boxed`], or [`MultiHead::zeros`] and
    /// [`MultiHead::reset_parameters`] in a place you own.
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self::random(rng, Bias::Present)
    }

    /// Like [`MultiHead::new`] for `bias=False`: no bias terms at all.
    #[must_use]
    pub fn new_without_bias<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self::random(rng, Bias::Absent)
    }

    /// PyTorch's initialisation, built as one struct expression so that each projection is
    /// drawn directly into the returned value (the draw order is q, k, v, out, as in
    /// [`MultiHead::reset_parameters`]).
    fn random<R: Rng + ?Sized>(rng: &mut R, bias: Bias) -> Self {
        let () = Self::SHAPE_OK;
        let a = init::in_proj_bound(DIM);
        Self {
            q: Linear::random(rng, a, bias),
            k: Linear::random(rng, a, bias),
            v: Linear::random(rng, a, bias),
            out: Linear::random(rng, init::out_proj_bound(DIM), bias),
        }
    }

    /// [`MultiHead::new`] with the crate's portable seeded generator ([`init::SeedRng`]): the
    /// same seed gives the same weights on every platform, and the caller needs no `rand`.
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        Self::new(&mut init::SeedRng::seed_from_u64(seed))
    }

    /// A PyTorch-initialised layer built directly on the heap, for shapes whose parameters do
    /// not fit on the stack (`4 · DIM · (DIM + 1)` scalars).
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed<R: Rng + ?Sized>(rng: &mut R) -> std::boxed::Box<Self> {
        let mut layer = Self::zeros_boxed();
        layer.reset_parameters(rng, Bias::Present);
        layer
    }

    /// Re-draws every parameter in place as PyTorch does (see [`crate::init`]); `bias` says
    /// whether the layer has (zero) biases.
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        init::reset_in_projection([&mut self.q, &mut self.k, &mut self.v], bias, rng);
        init::fill_uniform(&mut self.out, init::out_proj_bound(DIM), rng);
        self.out.set_zero_bias(bias);
    }

    /// The query projection `W_q`, `b_q`.
    #[must_use]
    pub const fn q_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.q
    }
    /// The key projection `W_k`, `b_k`.
    #[must_use]
    pub const fn k_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.k
    }
    /// The value projection `W_v`, `b_v`.
    #[must_use]
    pub const fn v_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.v
    }
    /// The output projection `W_o`, `b_o`.
    #[must_use]
    pub const fn out_proj(&self) -> &Linear<DIM, DIM, T, W> {
        &self.out
    }
    /// The same layer with its weights stored as `W2`, each rounded to it (see
    /// [`crate::weight`]): `to_weights::<f16>()` halves the parameters' size. By value.
    #[must_use]
    pub fn to_weights<W2: Weight<T>>(&self) -> MultiHead<SEQ, DIM, HEADS, T, W2> {
        MultiHead {
            q: self.q.to_weights(),
            k: self.k.to_weights(),
            v: self.v.to_weights(),
            out: self.out.to_weights(),
        }
    }

    /// Mutable projections, in the order q, k, v, out.
    pub fn projections_mut(&mut self) -> [&mut Linear<DIM, DIM, T, W>; 4] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.out]
    }

    /// Whether the layer has bias terms (PyTorch `bias=True`): true if any of the four
    /// projections has one. Layers loaded from PyTorch have all four or none.
    #[must_use]
    pub const fn has_bias(&self) -> bool {
        self.q.has_bias() || self.k.has_bias() || self.v.has_bias() || self.out.has_bias()
    }

    /// Self-attention over `SEQ` tokens: `x` is `SEQ × DIM`, so is the result.
    ///
    /// The working memory ([`MultiHead::SCRATCH_BYTES`]) lives on the stack and the result is
    /// moved out once: see the [crate docs](crate#stack) for the stack this needs. For large
    /// shapes use [`MultiHead::forward_into`] or [`MultiHead::forward_boxed`].
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

    /// [`MultiHead::forward`] into a caller-owned output with caller-owned scratch (nothing big
    /// on the stack).
    pub fn forward_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        self.attend(x, x, x, mask, scratch, out, None);
    }

    /// Self-attention with the scratch and the output on the heap, so any shape runs from a
    /// small thread stack (for example `SEQ = 1024, DIM = 512` in 2 MiB).
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

    /// Self-attention that also returns the per-head attention weights (`HEADS × SEQ × SEQ`),
    /// by value: see the [crate docs](crate#stack) for the stack this needs, and
    /// [`MultiHead::forward_with_weights_into`] or [`MultiHead::forward_with_weights_boxed`]
    /// for large shapes.
    #[must_use]
    pub fn forward_with_weights<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> (SMatrix<T, SEQ, DIM>, AttentionWeights<SEQ, SEQ, HEADS, T>) {
        local_buffers!(buf, T, SEQ, SEQ, DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, _) = (zero_matrix(), AttentionWeights::zeros());
        let (out, weights) = (&mut result.0, &mut result.1);
        self.attend_buffers(x, x, x, mask, &mut buf, out.as_mut_slice(), Some(weights));
        result
    }

    /// [`MultiHead::forward_with_weights`] writing the output and the weights into
    /// caller-owned buffers (for example from [`AttentionWeights::new_boxed`]).
    pub fn forward_with_weights_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
        weights: &mut AttentionWeights<SEQ, SEQ, HEADS, T>,
    ) {
        self.attend(x, x, x, mask, scratch, out, Some(weights));
    }

    /// [`MultiHead::forward_with_weights`] with the scratch, the output and the weights on the
    /// heap.
    #[cfg(feature = "std")]
    #[must_use]
    #[allow(clippy::type_complexity)]
    pub fn forward_with_weights_boxed<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> (
        std::boxed::Box<SMatrix<T, SEQ, DIM>>,
        std::boxed::Box<AttentionWeights<SEQ, SEQ, HEADS, T>>,
    ) {
        let mut scratch = Scratch::<SEQ, SEQ, DIM, T>::new_boxed();
        let mut out: std::boxed::Box<SMatrix<T, SEQ, DIM>> = bytemuck::zeroed_box();
        let mut weights = AttentionWeights::new_boxed();
        self.attend(x, x, x, mask, &mut scratch, &mut out, Some(&mut weights));
        (out, weights)
    }

    /// Cross-attention: the `SEQ` tokens of `x` query `SKV` tokens of `memory` (an encoder
    /// output, say), which give the keys and values. The result is `SEQ × DIM`, by value.
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

    /// [`MultiHead::cross_attention`] into a caller-owned output with caller-owned scratch.
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

    /// [`MultiHead::cross_attention`] that also returns the per-head weights
    /// (`HEADS × SEQ × SKV`), by value.
    #[must_use]
    pub fn cross_attention_with_weights<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
    ) -> (SMatrix<T, SEQ, DIM>, AttentionWeights<SEQ, SKV, HEADS, T>) {
        local_buffers!(buf, T, SEQ, SKV, DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, _) = (zero_matrix(), AttentionWeights::zeros());
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

    /// [`MultiHead::cross_attention_with_weights`] into caller-owned buffers.
    pub fn cross_attention_with_weights_into<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
        scratch: &mut Scratch<SEQ, SKV, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
        weights: &mut AttentionWeights<SEQ, SKV, HEADS, T>,
    ) {
        self.attend(x, memory, memory, mask, scratch, out, Some(weights));
    }

    /// The general entry point: `SQ` queries from `query` attend to `SKV` keys from `key` and
    /// values from `value` (PyTorch `forward(query, key, value)`), using caller-owned scratch
    /// and writing the `SQ × DIM` result into `out`. When `weights` is given, the per-head
    /// post-softmax weights are written there too; otherwise no `SQ × SKV` matrix exists.
    ///
    /// Nothing is allocated and nothing big is on the stack (see the [crate docs](crate#stack)).
    /// Any `SQ` and `SKV` work with the same weights, `0` included (an empty key set gives the
    /// output bias for every query).
    ///
    /// ```
    /// use static_attention::{Mask, MultiHead, Scratch, SMatrix};
    ///
    /// let layer = MultiHead::<16, 8, 2>::from_seed(1);
    /// // The same weights on 5 query tokens against 3 memory tokens.
    /// let q = SMatrix::<f32, 5, 8>::repeat(0.5);
    /// let kv = SMatrix::<f32, 3, 8>::repeat(-0.25);
    /// let mut scratch = Scratch::<5, 3, 8>::new();
    /// let mut out = SMatrix::zeros();
    /// layer.attend(&q, &kv, &kv, &Mask::none(), &mut scratch, &mut out, None);
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
        weights: Option<&mut AttentionWeights<SQ, SKV, HEADS, T>>,
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

    /// [`MultiHead::attend`] over working memory given as separate buffers, writing the
    /// column-major `SQ × DIM` result into `out`.
    #[allow(clippy::too_many_arguments)]
    fn attend_buffers<const SQ: usize, const SKV: usize, A: Additive<T, SQ, SKV>>(
        &self,
        query: &SMatrix<T, SQ, DIM>,
        key: &SMatrix<T, SKV, DIM>,
        value: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SQ, SKV, A>,
        buf: &mut Buffers<'_, T, DIM>,
        out: &mut [T],
        weights: Option<&mut AttentionWeights<SQ, SKV, HEADS, T>>,
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
            HEADS,
            buf,
            out,
            weights.map(|w| &mut w.heads[..]),
        );
        // MultiHead = Concat(head_1..head_h) W_oᵀ + b_o, in place in `out` (a row panel at a
        // time goes through the pack buffer).
        project_in_place(&self.out, out, SQ, buf.pack, buf.q);
    }
}
