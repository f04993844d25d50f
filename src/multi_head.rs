//! Multi-head attention with PyTorch's parameters: `MultiHead(X) = Concat(head_1..head_h) W_O`.

use nalgebra::SMatrix;
use rand::Rng;

use crate::heads::Layer;
use crate::layer_api::{build_api, decode_api, rules, self_attention_api};
use crate::positions::PositionEncoding;
use crate::{AttentionWeights, Bias, Float, Linear, Scratch, Weight, init};

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
pub struct MultiHead<
    const SEQ: usize,
    const DIM: usize,
    const HEADS: usize,
    T = f32,
    W: crate::Weight<T> = T,
> {
    pub(crate) q: Linear<DIM, DIM, T, W>,
    pub(crate) k: Linear<DIM, DIM, T, W>,
    pub(crate) v: Linear<DIM, DIM, T, W>,
    pub(crate) out: Linear<DIM, DIM, T, W>,
}

build_api! {
    impl[const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>]
        MultiHead<SEQ, DIM, HEADS, T, W>,
    new: |rng, bias| {
        /// A layer initialised as PyTorch initialises `nn.MultiheadAttention(DIM, HEADS,
        /// bias=…)` (see [`crate::init`]): Xavier-uniform in-projection, `U(±1/√DIM)` output
        /// projection, and with [`Bias::Present`] zero biases ([`Bias::Absent`]: none at all).
        ///
        /// Returned by value, each projection drawn straight into place: it needs
        /// `PARAM_BYTES` plus one projection of stack (see the [crate docs](crate#memory)). For
        /// large layers allocate one with [`crate::heap::zeroed`] and call
        /// [`MultiHead::reset_parameters`].
    },
    from_seed: Present "with biases",
    to_weights: MultiHead<SEQ, DIM, HEADS, T, W2>,
    projections: {
        /// The query projection `W_q`, `b_q`.
        q_proj: q: Linear<DIM, DIM, T, W> = Linear::random(rng, init::in_proj_bound(DIM), bias),
        /// The key projection `W_k`, `b_k`.
        k_proj: k: Linear<DIM, DIM, T, W> = Linear::random(rng, init::in_proj_bound(DIM), bias),
        /// The value projection `W_v`, `b_v`.
        v_proj: v: Linear<DIM, DIM, T, W> = Linear::random(rng, init::in_proj_bound(DIM), bias),
        /// The output projection `W_o`, `b_o`.
        out_proj: out: Linear<DIM, DIM, T, W> =
            Linear::random(rng, init::out_proj_bound(DIM), bias),
    },
}

/// Parameters: the shape constants, and re-drawing them in place.
impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Compile-time shape check, evaluated by every constructor and forward pass.
    pub(crate) const SHAPE_OK: () = {
        rules::tokens(SEQ);
        rules::features(DIM);
        rules::heads(HEADS);
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

    /// The layer as the core runs it.
    pub(crate) fn layer(&self) -> Layer<'_, DIM, DIM, DIM, T, W> {
        let () = Self::SHAPE_OK;
        Layer::new(&self.q, &self.k, &self.v, Some(&self.out), (HEADS, HEADS))
    }

    /// Checks at build time that a rotary table fits the heads.
    const fn check_positions<P: PositionEncoding<T>>() {
        assert!(
            P::HEAD_DIM == 0 || P::HEAD_DIM * HEADS == DIM,
            "the Rope table's HEAD_DIM must be the layer's DIM / HEADS"
        );
    }
}

self_attention_api! {
    impl[const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>]
        MultiHead<SEQ, DIM, HEADS, T, W>,
    weights: AttentionWeights[][HEADS, T],
    weights_are: "per-head post-softmax attention weights ([`AttentionWeights`], `HEADS` \
        matrices of queries × keys, PyTorch's `[heads, SQ, SKV]`)",
    forward_into: {
        ///
        /// With both on the heap any shape runs from a small thread stack (`SEQ = 1024,
        /// DIM = 512` in 2 MiB).
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
    },
    forward_batch_into: {
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
    },
    attend: {
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
    },
}

decode_api! {
    impl[const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>]
        MultiHead<SEQ, DIM, HEADS, T, W>,
    q_dim: DIM,
    kv_dim: DIM,
    heads: HEADS,
    decode: {
        ///
        /// `positions` is usually [`NoPositions`](crate::positions::NoPositions)
        /// (`nn.MultiheadAttention` has none); a
        /// [`crate::positions::Rope`] of width `DIM / HEADS` or [`crate::Alibi`] work too.
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
    },
}

/// Threads (`rayon` feature): the forward passes with their work spread over rayon's pool.
#[cfg(feature = "rayon")]
impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T, W>
    crate::Parallel<'_, MultiHead<SEQ, DIM, HEADS, T, W>>
where
    T: Float + Send + Sync,
    W: Weight<T> + Sync,
{
    /// [`MultiHead::forward_into`] with the work of one sequence spread over the threads: the
    /// Q, K and V projections by output columns, the attention by heads and blocks of
    /// queries, and the output projection by output columns. The result equals the
    /// single-threaded one within rounding (the same kernels; a block's last rows may take
    /// another path, so within 2e-6 rather than bit for bit).
    pub fn forward_into<A: crate::mask::Additive<T, SEQ, SEQ> + Sync>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &crate::Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        let kt = crate::kernels::current::<T>();
        let layer = self.0.layer();
        let done = layer.forward_par(
            kt,
            x,
            mask,
            &crate::positions::NoPositions,
            scratch.buffers(),
            out,
        );
        debug_assert!(done.is_ok(), "no positions, no position error");
    }

    /// [`MultiHead::forward_batch_into`] (without weights) with the sequences spread over the
    /// threads.
    ///
    /// # Errors
    ///
    /// [`BatchError`](crate::BatchError) if the lengths do not fit; nothing is written then.
    pub fn forward_batch_into<A: crate::mask::Additive<T, SEQ, SEQ> + Sync>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[crate::Mask<'_, SEQ, SEQ, A>],
        outs: &mut [SMatrix<T, SEQ, DIM>],
    ) -> Result<(), crate::BatchError> {
        // The caller's kernel on every worker.
        let kt = crate::kernels::current::<T>();
        let layer = self.0.layer();
        crate::parallel::batch(
            xs,
            masks,
            outs,
            |x, m, s: &mut Scratch<SEQ, SEQ, DIM, T>, o| {
                let (buf, o) = (s.buffers(), o.as_mut_slice());
                let done = layer.forward(
                    kt,
                    x,
                    (x, x),
                    m,
                    &crate::positions::NoPositions,
                    buf,
                    o,
                    None,
                );
                debug_assert!(done.is_ok(), "no positions, no position error");
            },
        )
    }
}
