//! Multi-head attention with PyTorch's parameters: `MultiHead(X) = Concat(head_1..head_h) W_O`.

use nalgebra::SMatrix;
use rand::{Rng, SeedableRng};

use crate::batch::{BatchError, check, mask_of};
use crate::heads::{Buffers, Heads, Layer, local_buffers};
use crate::mask::Additive;
use crate::positions::{NoPositions, PositionEncoding};
use crate::{
    AttentionWeights, Bias, CacheError, Float, KvCache, Linear, Mask, Scratch, Weight, init,
    kernels, zero_matrix,
};

/// Multi-head attention over sequences of `SEQ` tokens of `DIM` features with `HEADS` heads,
/// with the parameters and semantics of PyTorch's `nn.MultiheadAttention` (`batch_first`,
/// one sequence).
///
/// - Shapes: input and output are `SMatrix<T, SEQ, DIM>`, tokens in rows. Each head has
///   `HEAD_DIM = DIM / HEADS` features and scale `1/√HEAD_DIM`. `T` is `f32` unless named; `W`,
///   how the weights are stored, is `T` unless named (see [`crate::weight`]).
/// - Parameters: four [`Linear`] maps `DIM → DIM` (`W_q`, `W_k`, `W_v`, `W_o`, PyTorch layout
///   `y = x Wᵀ + b`; head `h` uses rows `h·HEAD_DIM..(h+1)·HEAD_DIM` of `W_q`, `W_k`, `W_v`).
///   They live inline: a `MultiHead` is plain data with no pointers.
/// - `SEQ` is the usual sequence length, used by [`MultiHead::forward`] and
///   [`MultiHead::SCRATCH_BYTES`]; the weights do not depend on it, and
///   [`MultiHead::cross_attention`], [`MultiHead::attend`] and [`MultiHead::decode`] run any
///   other lengths.
/// - Build errors: `DIM` not divisible by `HEADS`, and `SEQ`, `DIM` or `HEADS` of zero, fail
///   `cargo build` with a message naming the problem.
/// - Memory: the by-value forms need the stack the [crate docs](crate#memory) give for each;
///   the caller-owned forms ([`MultiHead::forward_into`], [`MultiHead::attend`],
///   [`MultiHead::decode_into`]) take a [`Scratch`] and outputs that can live anywhere, on the
///   heap through [`crate::heap::zeroed`] for large shapes.
/// - It is the grouped-query layer with as many key/value heads as heads and no position
///   encoding, and runs the same core as [`crate::GroupedQuery`].
/// - Not `Copy` (a layer can be megabytes); `Clone` copies it explicitly.
///
/// The methods, by group: build ([`MultiHead::new`], [`MultiHead::from_seed`],
/// [`MultiHead::zeros`], [`MultiHead::from_parts`]); run ([`MultiHead::forward`] and the
/// caller-owned [`MultiHead::forward_into`], [`MultiHead::forward_batch_into`]); weights and
/// cross-attention ([`MultiHead::forward_with_weights`], [`MultiHead::cross_attention`],
/// [`MultiHead::attend`]); decode ([`MultiHead::decode`]); load and save
/// ([`MultiHead::from_safetensors`], and PyTorch's parameters as slices through
/// [`crate::io::PyTorchParams`]).
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

/// Build: constructors, conversion and the parameters.
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

    /// A layer initialised as PyTorch initialises `nn.MultiheadAttention(DIM, HEADS,
    /// bias=…)` (see [`crate::init`]): Xavier-uniform in-projection, `U(±1/√DIM)` output
    /// projection, and with [`Bias::Present`] zero biases ([`Bias::Absent`]: none at all).
    ///
    /// Returned by value, each projection drawn straight into place: it needs `PARAM_BYTES`
    /// plus one projection of stack (see the [crate docs](crate#memory)). For large layers
    /// allocate one with [`crate::heap::zeroed`] and call [`MultiHead::reset_parameters`].
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R, bias: Bias) -> Self {
        let () = Self::SHAPE_OK;
        let a = init::in_proj_bound(DIM);
        Self {
            q: Linear::random(rng, a, bias),
            k: Linear::random(rng, a, bias),
            v: Linear::random(rng, a, bias),
            out: Linear::random(rng, init::out_proj_bound(DIM), bias),
        }
    }

    /// [`MultiHead::new`] with biases, from a seed, with the crate's portable generator
    /// ([`init::SeedRng`]): the same seed gives the same weights on every platform, and the
    /// caller needs no `rand`.
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        Self::new(&mut init::SeedRng::seed_from_u64(seed), Bias::Present)
    }

    /// A layer with all-zero weights and no biases, to load parameters into; built in place,
    /// it needs [`MultiHead::PARAM_BYTES`] of stack and no more ([`crate::heap::zeroed`]
    /// allocates one on the heap).
    #[must_use]
    pub fn zeros() -> Self {
        let () = Self::SHAPE_OK;
        bytemuck::Zeroable::zeroed()
    }

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

    /// Re-draws every parameter in place as [`MultiHead::new`] draws them (the same values for
    /// the same generator state): a layer on the heap or in a `static` gets PyTorch's
    /// initialisation without passing through the stack.
    ///
    /// ```
    /// use static_attention::{Bias, MultiHead, heap, init::SeedRng, rand::SeedableRng};
    ///
    /// let mut big: Box<MultiHead<1024, 512, 8>> = heap::zeroed();
    /// big.reset_parameters(&mut SeedRng::seed_from_u64(1), Bias::Present);
    /// let small = MultiHead::<4, 8, 2>::new(&mut SeedRng::seed_from_u64(1), Bias::Present);
    /// let mut again = MultiHead::<4, 8, 2>::zeros();
    /// again.reset_parameters(&mut SeedRng::seed_from_u64(1), Bias::Present);
    /// assert_eq!(again, small);
    /// # assert!(big.q_proj().has_bias());
    /// ```
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        let () = Self::SHAPE_OK;
        init::reset_in_projection([&mut self.q, &mut self.k, &mut self.v], bias, rng);
        init::fill_uniform(&mut self.out, init::out_proj_bound(DIM), rng);
        self.out.set_zero_bias(bias);
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

    /// The layer as the core runs it.
    pub(crate) fn layer(&self) -> Layer<'_, DIM, DIM, DIM, T, W> {
        let () = Self::SHAPE_OK;
        Layer {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            out: Some(&self.out),
            heads: Heads {
                count: HEADS,
                kv: HEADS,
            },
        }
    }

    /// `SQ` queries attend to `SKV` keys and values, the result into `out` (and the weights
    /// into `weights`), on the selected kernel.
    fn run<const SQ: usize, const SKV: usize, A: Additive<T, SQ, SKV>>(
        &self,
        query: &SMatrix<T, SQ, DIM>,
        kv: (&SMatrix<T, SKV, DIM>, &SMatrix<T, SKV, DIM>),
        mask: &Mask<'_, SQ, SKV, A>,
        buf: Buffers<'_, T>,
        out: &mut [T],
        weights: Option<&mut [T]>,
    ) {
        let kt = kernels::current::<T>();
        let done = (self.layer()).forward(kt, query, kv, mask, &NoPositions, buf, out, weights);
        debug_assert!(done.is_ok(), "no positions, no position error");
    }
}

/// Forward: self-attention, by value, into caller-owned buffers, and over a batch.
impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Self-attention over `SEQ` tokens: `x` is `SEQ × DIM`, so is the result.
    ///
    /// The working memory ([`MultiHead::SCRATCH_BYTES`]) lives on the stack and the result is
    /// moved out once: see the [crate docs](crate#memory) for the stack this needs, and
    /// [`MultiHead::forward_into`] for large shapes.
    #[must_use]
    pub fn forward<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> SMatrix<T, SEQ, DIM> {
        let () = Self::SHAPE_OK;
        local_buffers!(buf, T, SEQ, SEQ, DIM, DIM);
        let mut out = [[T::ZERO; SEQ]; DIM];
        self.run(x, (x, x), mask, buf, out.as_flattened_mut(), None);
        SMatrix::from_array_storage(nalgebra::ArrayStorage(out))
    }

    /// [`MultiHead::forward`] into a caller-owned output with caller-owned scratch: nothing
    /// big on the stack, nothing allocated. With both on the heap any shape runs from a small
    /// thread stack (`SEQ = 1024, DIM = 512` in 2 MiB).
    ///
    /// ```
    /// use static_attention::{Mask, MultiHead, SMatrix, Scratch, heap};
    ///
    /// let layer = MultiHead::<512, 64, 4>::from_seed(1);
    /// let x: Box<SMatrix<f32, 512, 64>> = heap::zeroed();
    /// let mut scratch: Box<Scratch<512, 512, 64>> = heap::zeroed();
    /// let mut out: Box<SMatrix<f32, 512, 64>> = heap::zeroed();
    /// layer.forward_into(&x, &Mask::none(), &mut scratch, &mut out);
    /// ```
    pub fn forward_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        self.run(x, (x, x), mask, scratch.buffers(), out.as_mut_slice(), None);
    }

    /// Self-attention over a batch of sequences (PyTorch's batch dimension), `xs[b] →
    /// outs[b]`, one after the other through one caller-owned [`Scratch`]: nothing is
    /// allocated. `masks` holds one mask for the whole batch or one per sequence
    /// (per-sequence key padding, say); `weights`, when given, takes each sequence's per-head
    /// weights (PyTorch's `[batch, heads, SEQ, SEQ]`).
    ///
    /// # Errors
    ///
    /// [`BatchError`] if `outs` (or `weights`) is not as long as `xs`, or `masks` is neither 1
    /// nor as long; nothing is written then.
    ///
    /// ```
    /// use static_attention::{AttentionWeights, Mask, MultiHead, SMatrix, Scratch};
    ///
    /// let layer = MultiHead::<4, 8, 2>::from_seed(1);
    /// let xs = [SMatrix::<f32, 4, 8>::repeat(0.5), SMatrix::repeat(-0.5)];
    /// let mut outs = [SMatrix::zeros(); 2];
    /// let mut weights = [AttentionWeights::zeros(), AttentionWeights::zeros()];
    /// let mut scratch = Scratch::new();
    /// layer.forward_batch_into(&xs, &[Mask::none()], &mut scratch, &mut outs, Some(&mut weights))?;
    /// assert_eq!(outs[1], layer.forward(&xs[1], &Mask::none()));
    /// assert_eq!(weights[1], layer.forward_with_weights(&xs[1], &Mask::none()).1);
    /// # Ok::<(), static_attention::BatchError>(())
    /// ```
    pub fn forward_batch_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[Mask<'_, SEQ, SEQ, A>],
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        outs: &mut [SMatrix<T, SEQ, DIM>],
        mut weights: Option<&mut [AttentionWeights<SEQ, SEQ, HEADS, T>]>,
    ) -> Result<(), BatchError> {
        check(
            xs.len(),
            outs.len(),
            masks.len(),
            weights.as_deref().map(<[_]>::len),
        )?;
        for (b, (x, out)) in xs.iter().zip(outs.iter_mut()).enumerate() {
            let w = weights.as_deref_mut().map(|w| w[b].as_mut_slice());
            let mask = mask_of(masks, b);
            self.run(x, (x, x), mask, scratch.buffers(), out.as_mut_slice(), w);
        }
        Ok(())
    }
}

/// Weights and cross-attention: the per-head attention weights on request, other key and
/// value sequences, and the general caller-owned form.
impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Self-attention that also returns the per-head attention weights (`HEADS × SEQ × SEQ`),
    /// by value: see the [crate docs](crate#memory) for the stack this needs, and
    /// [`MultiHead::attend`] for caller-owned buffers.
    #[must_use]
    pub fn forward_with_weights<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> (SMatrix<T, SEQ, DIM>, AttentionWeights<SEQ, SEQ, HEADS, T>) {
        self.cross_attention_with_weights(x, x, mask)
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
        let () = Self::SHAPE_OK;
        local_buffers!(buf, T, SEQ, SKV, DIM, DIM);
        let mut out = [[T::ZERO; SEQ]; DIM];
        self.run(x, (memory, memory), mask, buf, out.as_flattened_mut(), None);
        SMatrix::from_array_storage(nalgebra::ArrayStorage(out))
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
        let () = Self::SHAPE_OK;
        local_buffers!(buf, T, SEQ, SKV, DIM, DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, _) = (zero_matrix(), AttentionWeights::zeros());
        let (out, weights) = (&mut result.0, &mut result.1);
        let w = Some(weights.as_mut_slice());
        self.run(x, (memory, memory), mask, buf, out.as_mut_slice(), w);
        result
    }

    /// The general caller-owned entry point: `SQ` queries from `query` attend to `SKV` keys
    /// from `key` and values from `value` (PyTorch `forward(query, key, value)`), writing the
    /// `SQ × DIM` result into `out` and, when `weights` is given, the per-head post-softmax
    /// weights; otherwise no `SQ × SKV` matrix exists. Self-attention is
    /// `attend(&x, &x, &x, …)`, cross-attention `attend(&x, &memory, &memory, …)`.
    ///
    /// Nothing is allocated and nothing big is on the stack (see the [crate
    /// docs](crate#memory)). Any `SQ` and `SKV` work with the same weights, `0` included (an
    /// empty key set gives the output bias for every query).
    ///
    /// ```
    /// use static_attention::{AttentionWeights, Mask, MultiHead, Scratch, SMatrix};
    ///
    /// let layer = MultiHead::<16, 8, 2>::from_seed(1);
    /// // The same weights on 5 query tokens against 3 memory tokens.
    /// let q = SMatrix::<f32, 5, 8>::repeat(0.5);
    /// let kv = SMatrix::<f32, 3, 8>::repeat(-0.25);
    /// let mut scratch = Scratch::<5, 3, 8>::new();
    /// let mut out = SMatrix::zeros();
    /// layer.attend(&q, &kv, &kv, &Mask::none(), &mut scratch, &mut out, None);
    /// // The same with the per-head weights.
    /// let (mut out_w, mut weights) = (SMatrix::zeros(), AttentionWeights::<5, 3, 2>::zeros());
    /// layer.attend(&q, &kv, &kv, &Mask::none(), &mut scratch, &mut out_w, Some(&mut weights));
    /// assert!((out - out_w).amax() < 1e-6);
    /// assert!((weights.head(1).row(4).sum() - 1.0).abs() < 1e-6);
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
        let w = weights.map(AttentionWeights::as_mut_slice);
        self.run(
            query,
            (key, value),
            mask,
            scratch.buffers(),
            out.as_mut_slice(),
            w,
        );
    }
}

/// Decode: token by token through a [`KvCache`].
impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Checks at build time that a rotary table fits the heads.
    const fn check_positions<P: PositionEncoding<T>>() {
        assert!(
            P::HEAD_DIM == 0 || P::HEAD_DIM * HEADS == DIM,
            "the Rope table's HEAD_DIM must be the layer's DIM / HEADS"
        );
    }

    /// Appends `SQ` tokens (a prompt, or one token) to `cache` at its next positions and
    /// returns their outputs, each token attending to every cached position up to its own:
    /// prefill and then token-by-token decoding give the rows of one causal forward
    /// (`Mask::causal`) over the whole sequence. `positions` is usually
    /// [`NoPositions`] (`nn.MultiheadAttention` has none); a [`crate::positions::Rope`] of
    /// width `DIM / HEADS` or [`crate::Alibi`] work too. By value; see
    /// [`MultiHead::decode_into`].
    ///
    /// ```
    /// use static_attention::{Alignment, KvCache, Mask, MultiHead, SMatrix};
    /// use static_attention::positions::NoPositions;
    ///
    /// let layer = MultiHead::<5, 8, 2>::from_seed(2);
    /// let x = SMatrix::<f32, 5, 8>::from_fn(|i, j| ((i * 8 + j) as f32 * 0.2).cos());
    /// let full = layer.forward(&x, &Mask::causal(Alignment::TopLeft));
    /// let mut cache = KvCache::<8, 8>::new();
    /// let _ = layer.decode(&x.fixed_rows::<4>(0).into_owned(), &mut cache, &NoPositions)?;
    /// let last = layer.decode(&x.fixed_rows::<1>(4).into_owned(), &mut cache, &NoPositions)?;
    /// assert!((last - full.fixed_rows::<1>(4)).amax() < 1e-5);
    /// # Ok::<(), static_attention::CacheError>(())
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Full`] if the tokens do not fit, [`CacheError::Position`] past a rotary
    /// table; the cache is unchanged then.
    pub fn decode<const SQ: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, SQ, DIM>,
        cache: &mut KvCache<CAP, DIM, T>,
        positions: &P,
    ) -> Result<SMatrix<T, SQ, DIM>, CacheError> {
        const { Self::check_positions::<P>() };
        local_buffers!(buf, T, SQ, SQ, DIM, DIM);
        let mut out: SMatrix<T, SQ, DIM> = zero_matrix();
        let kt = kernels::current::<T>();
        (self.layer()).decode(kt, x, cache, positions, buf, out.as_mut_slice())?;
        Ok(out)
    }

    /// [`MultiHead::decode`] with caller-owned scratch and output.
    ///
    /// # Errors
    /// As [`MultiHead::decode`]; the cache and `out` are unchanged then.
    pub fn decode_into<const SQ: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, SQ, DIM>,
        cache: &mut KvCache<CAP, DIM, T>,
        positions: &P,
        scratch: &mut Scratch<SQ, SQ, DIM, T>,
        out: &mut SMatrix<T, SQ, DIM>,
    ) -> Result<(), CacheError> {
        const { Self::check_positions::<P>() };
        let kt = kernels::current::<T>();
        let buf = scratch.buffers();
        (self.layer()).decode(kt, x, cache, positions, buf, out.as_mut_slice())
    }
}
