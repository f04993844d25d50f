//! Grouped-query attention with Llama-style projections and positions: the attention block of
//! Llama, Mistral and Qwen2.

use nalgebra::SMatrix;
use rand::{Rng, RngExt};

use crate::heads::{Layer, local_buffers};
use crate::layer_api::{build_api, decode_api, rules};
use crate::mask::Additive;
use crate::positions::{PositionEncoding, PositionError};
use crate::variant::{Extras, Variant, VariantError};
use crate::{
    AttentionWeights, Bias, Float, Linear, Mask, Scratch, Weight, init, kernels, zero_matrix,
};

/// Grouped-query attention with Llama-style projections (Hugging Face's `LlamaAttention`,
/// `MistralAttention`, `Qwen2Attention`): `HEADS` query heads and `KV_HEADS` key/value heads of
/// `HEAD_DIM = Q_DIM / HEADS` features, query head `h` reading kv head
/// `h / (HEADS / KV_HEADS)` (PyTorch's `enable_gqa`).
///
/// - Parameters: `q_proj: DIM → Q_DIM`, `k_proj` and `v_proj: DIM → KV_DIM`,
///   `o_proj: Q_DIM → DIM` ([`GroupedQuery::out_proj`]), each a [`Linear`] (`y = x Wᵀ + b`,
///   biases optional: Qwen2 has q/k/v biases, Llama none). Stable Rust cannot write
///   `HEADS · HEAD_DIM` in a type, so the widths are parameters of their own, checked at build
///   time: `Q_DIM = HEADS · HEAD_DIM` and `KV_DIM = KV_HEADS · HEAD_DIM`.
/// - `KV_HEADS = HEADS` is multi-head attention (then it equals [`crate::MultiHead`] with the
///   same weights); `KV_HEADS = 1` is multi-query attention.
/// - Positions ([`PositionEncoding`]): [`NoPositions`](crate::positions::NoPositions), a
///   [`crate::positions::Rope`] table of width `HEAD_DIM` (another width fails the build), or
///   [`crate::Alibi`]. Queries and keys are rotated at positions `0 ..` by the forward passes and
///   at the cache's next positions by [`GroupedQuery::decode`].
/// - Decoding: [`GroupedQuery::decode`] appends tokens to a [`KvCache`](crate::KvCache) of `KV_DIM` features and
///   attends over it; a prompt of any length, then one token at a time, gives what one causal
///   forward over the whole sequence gives.
/// - Working memory of a caller-owned call: a `Scratch<SQ, SKV, Q_DIM, T, KV_DIM>`.
/// - Build errors: `HEADS` or `KV_HEADS` zero, `KV_HEADS` not dividing `HEADS`, `HEADS` not
///   dividing `Q_DIM`, or `KV_DIM ≠ KV_HEADS · HEAD_DIM`.
///
/// ```
/// use static_attention::{GroupedQuery, KvCache, Mask, Alignment, SMatrix};
/// use static_attention::positions::{Rope, RopeStyle};
///
/// // 64 features, 8 query heads and 2 kv heads of 8 features.
/// type Layer = GroupedQuery<64, 8, 2, 64, 16>;
/// let layer = Layer::from_seed(1);
/// let rope = Rope::<8, 128>::new(10_000.0, RopeStyle::RotateHalf).unwrap();
/// let x = SMatrix::<f32, 6, 64>::from_fn(|i, j| ((i * 64 + j) as f32 * 0.01).cos());
/// let full = layer.forward(&x, &Mask::causal(Alignment::TopLeft), &rope)?;
///
/// // The same through a cache: a 5-token prompt, then one token.
/// let mut cache = KvCache::<32, 16>::new();
/// let prompt = x.fixed_rows::<5>(0).into_owned();
/// let _ = layer.decode(&prompt, &mut cache, &rope).unwrap();
/// let last = layer.decode(&x.fixed_rows::<1>(5).into_owned(), &mut cache, &rope).unwrap();
/// assert!((last - full.fixed_rows::<1>(5)).amax() < 1e-5);
/// # Ok::<(), static_attention::positions::PositionError>(())
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float, W: bytemuck::Zeroable")]
pub struct GroupedQuery<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T = f32,
    W: crate::Weight<T> = T,
> {
    pub(crate) q: Linear<DIM, Q_DIM, T, W>,
    pub(crate) k: Linear<DIM, KV_DIM, T, W>,
    pub(crate) v: Linear<DIM, KV_DIM, T, W>,
    pub(crate) o: Linear<Q_DIM, DIM, T, W>,
    /// The variant and its parameters (QK-norm weights, sinks).
    pub(crate) extra: Extras<HEADS, Q_DIM, KV_DIM, T>,
}

build_api! {
    impl[const DIM: usize, const HEADS: usize, const KV_HEADS: usize, const Q_DIM: usize,
        const KV_DIM: usize, T: Float, W: Weight<T>]
        GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>,
    new: |rng, bias| {
        /// Each projection initialised as PyTorch's `nn.Linear` initialises itself: weights
        /// and (with [`Bias::Present`]) the q, k and v biases from `U(−1/√in, 1/√in)`, drawn
        /// in the order q, k, v, o. The output projection never has a bias (as in Llama,
        /// Mistral and Qwen2).
    },
    from_seed: Absent "without biases (Llama, Mistral)",
    to_weights: GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W2>,
    projections: {
        /// The query projection, `DIM → Q_DIM`.
        q_proj: q: Linear<DIM, Q_DIM, T, W> = drawn(rng, bias),
        /// The key projection, `DIM → KV_DIM`.
        k_proj: k: Linear<DIM, KV_DIM, T, W> = drawn(rng, bias),
        /// The value projection, `DIM → KV_DIM`.
        v_proj: v: Linear<DIM, KV_DIM, T, W> = drawn(rng, bias),
        /// The output projection, `Q_DIM → DIM` (Hugging Face's `o_proj`).
        out_proj: o: Linear<Q_DIM, DIM, T, W> = drawn(rng, Bias::Absent),
    },
    extra: extra = Extras::plain(),
}

/// Parameters: the shape constants, and re-drawing them in place.
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>
{
    /// Compile-time shape check, evaluated by every constructor and forward pass.
    const SHAPE_OK: () = {
        rules::features(DIM);
        rules::heads(HEADS);
        assert!(
            KV_HEADS > 0,
            "KV_HEADS must be at least 1: queries need keys and values"
        );
        assert!(
            HEADS.is_multiple_of(KV_HEADS),
            "KV_HEADS must divide HEADS: each kv head serves HEADS / KV_HEADS query heads"
        );
        assert!(
            Q_DIM > 0 && Q_DIM.is_multiple_of(HEADS),
            "Q_DIM must be a positive multiple of HEADS: each head gets HEAD_DIM = Q_DIM / HEADS features"
        );
        assert!(
            KV_DIM == KV_HEADS * (Q_DIM / HEADS),
            "KV_DIM must be KV_HEADS * HEAD_DIM (HEAD_DIM = Q_DIM / HEADS)"
        );
    };

    /// Features per head, `Q_DIM / HEADS`.
    pub const HEAD_DIM: usize = match Q_DIM.checked_div(HEADS) {
        Some(d) => d,
        None => 0,
    };

    /// Query heads per kv head, `HEADS / KV_HEADS`.
    pub const GROUP: usize = match HEADS.checked_div(KV_HEADS) {
        Some(g) => g,
        None => 0,
    };

    /// Bytes of the parameters.
    pub const PARAM_BYTES: usize = core::mem::size_of::<Self>();

    /// Re-draws every projection in place as [`GroupedQuery::new`] draws them; the QK-norm
    /// weights become 1 and the sinks 0 (PyTorch's initial values), the variant is kept.
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        let () = Self::SHAPE_OK;
        nn_linear(&mut self.q, rng, bias);
        nn_linear(&mut self.k, rng, bias);
        nn_linear(&mut self.v, rng, bias);
        nn_linear(&mut self.o, rng, Bias::Absent);
        let plain = Extras::plain();
        self.extra.q_norm = plain.q_norm;
        self.extra.k_norm = plain.k_norm;
        self.extra.sinks = plain.sinks;
    }

    /// The layer as the core runs it.
    pub(crate) fn layer(&self) -> Layer<'_, DIM, Q_DIM, KV_DIM, T, W> {
        let () = Self::SHAPE_OK;
        let layer = Layer::new(&self.q, &self.k, &self.v, Some(&self.o), (HEADS, KV_HEADS));
        layer.with_tweaks(self.extra.tweaks(Self::HEAD_DIM))
    }
}

/// Variant: how this layer's attention departs from the paper's (QK-norm, scale, soft-cap,
/// sinks, sliding window; see [`crate::variant`]) and the parameters it brings.
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>
{
    /// The variant this layer runs ([`Variant::PLAIN`] unless set).
    #[must_use]
    pub fn variant(&self) -> Variant {
        self.extra.variant()
    }

    /// Makes this layer run `variant`; its parameters ([`GroupedQuery::qk_norm_weights`],
    /// [`GroupedQuery::sinks`]) are kept. Every forward and decode path runs it: the norms
    /// after the projections, the scale, soft-cap and sinks inside the attention kernel, and
    /// the window narrowing a causal mask (a [`Mask::none`] stays full) and a growing
    /// [`KvCache`](crate::KvCache) (a ring must have the window as its capacity).
    ///
    /// ```
    /// use static_attention::{Alignment, GroupedQuery, Mask, SMatrix};
    /// use static_attention::positions::NoPositions;
    /// use static_attention::variant::{QkNorm, Variant};
    ///
    /// let mut layer = GroupedQuery::<16, 4, 2, 16, 8>::from_seed(3);
    /// layer.set_variant(
    ///     Variant::PLAIN.with_qk_norm(QkNorm::PerHead { eps: 1e-6 }).with_softcap(5.0).with_sinks(),
    /// )?;
    /// layer.sinks_mut().copy_from_slice(&[0.5, -1.0, 2.0, 0.0]);
    /// let x = SMatrix::<f32, 3, 16>::from_fn(|i, j| (i as f32 - j as f32) * 0.1);
    /// let (_, w) = layer.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft), &NoPositions)?;
    /// // The first token sees only itself, and the sink takes a share of its weight.
    /// let sum: f32 = (0..3).map(|j| w.head(0)[(0, j)]).sum();
    /// assert!(sum < 1.0 && sum > 0.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`VariantError`] naming the field ([`Variant::check`]); the layer is unchanged then.
    pub fn set_variant(&mut self, variant: Variant) -> Result<(), VariantError> {
        variant.check()?;
        self.extra.set(&variant);
        Ok(())
    }

    /// Checks a model configuration against this type: `hidden_size = DIM`,
    /// `num_attention_heads = HEADS`, `num_key_value_heads = KV_HEADS` and
    /// `head_dim = Q_DIM / HEADS`.
    ///
    /// ```
    /// use static_attention::config::{ConfigError, LayerConfig};
    /// use static_attention::GroupedQuery;
    ///
    /// let json = r#"{"hidden_size": 16, "num_attention_heads": 8, "num_key_value_heads": 2}"#;
    /// let config = LayerConfig::from_json(json, 0)?;
    /// let err = GroupedQuery::<16, 4, 2, 16, 8>::check_config(&config).unwrap_err();
    /// assert_eq!(err, ConfigError::Shape { field: "num_attention_heads", config: 8, layer: 4 });
    /// # Ok::<(), ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Shape`](crate::config::ConfigError::Shape) naming the first field that
    /// disagrees.
    #[cfg(feature = "config")]
    #[allow(clippy::result_large_err)] // an inline text, on the error path only
    pub fn check_config(
        config: &crate::config::LayerConfig,
    ) -> Result<(), crate::config::ConfigError> {
        for (field, config, layer) in [
            ("hidden_size", config.hidden_size, DIM),
            ("num_attention_heads", config.heads, HEADS),
            ("num_key_value_heads", config.kv_heads, KV_HEADS),
            ("head_dim", config.head_dim, Self::HEAD_DIM),
        ] {
            if config != layer {
                return Err(crate::config::ConfigError::Shape {
                    field,
                    config,
                    layer,
                });
            }
        }
        Ok(())
    }

    /// The QK-norm weights: `q_norm.weight` and `k_norm.weight`. With
    /// [`QkNorm::PerHead`](crate::variant::QkNorm::PerHead) the first `HEAD_DIM` of each are
    /// used; with [`QkNorm::Full`](crate::variant::QkNorm::Full), all. 1 after
    /// [`GroupedQuery::new`], 0 after [`GroupedQuery::zeros`].
    #[must_use]
    pub const fn qk_norm_weights(&self) -> (&[T; Q_DIM], &[T; KV_DIM]) {
        (&self.extra.q_norm, &self.extra.k_norm)
    }

    /// [`GroupedQuery::qk_norm_weights`], to write.
    pub const fn qk_norm_weights_mut(&mut self) -> (&mut [T; Q_DIM], &mut [T; KV_DIM]) {
        (&mut self.extra.q_norm, &mut self.extra.k_norm)
    }

    /// Each query head's sink logit (`sinks`), used when the variant has
    /// [`Variant::sinks`]; 0 after [`GroupedQuery::new`].
    #[must_use]
    pub const fn sinks(&self) -> &[T; HEADS] {
        &self.extra.sinks
    }

    /// [`GroupedQuery::sinks`], to write.
    pub const fn sinks_mut(&mut self) -> &mut [T; HEADS] {
        &mut self.extra.sinks
    }

    /// Checks at build time that a rotary table fits the heads.
    pub(crate) const fn check_positions<P: PositionEncoding<T>>() {
        assert!(
            P::HEAD_DIM == 0 || P::HEAD_DIM == Q_DIM / HEADS,
            "the Rope table's HEAD_DIM must be the layer's Q_DIM / HEADS"
        );
    }
}

/// Forward: self-attention over a whole sequence at positions `0 ..`, by value or into
/// caller-owned buffers.
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>
{
    /// Self-attention over `SEQ` tokens at positions `0 .. SEQ` (a whole prompt, no cache), by
    /// value: the working memory and the result live on the stack. Use a causal mask for a
    /// decoder.
    ///
    /// # Errors
    /// [`PositionError`] if `SEQ` positions do not fit the rotary table.
    pub fn forward<const SEQ: usize, P: PositionEncoding<T>, A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        positions: &P,
    ) -> Result<SMatrix<T, SEQ, DIM>, PositionError> {
        const { Self::check_positions::<P>() };
        local_buffers!(buf, T, SEQ, SEQ, Q_DIM, KV_DIM);
        let mut out: SMatrix<T, SEQ, DIM> = zero_matrix();
        let kt = kernels::current::<T>();
        (self.layer()).forward(
            kt,
            x,
            (x, x),
            mask,
            positions,
            buf,
            out.as_mut_slice(),
            None,
        )?;
        Ok(out)
    }

    /// [`GroupedQuery::forward`] with caller-owned scratch and output.
    ///
    /// # Errors
    /// [`PositionError`] if `SEQ` positions do not fit the rotary table; `out` is unchanged.
    pub fn forward_into<const SEQ: usize, P: PositionEncoding<T>, A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        positions: &P,
        scratch: &mut Scratch<SEQ, SEQ, Q_DIM, T, KV_DIM>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) -> Result<(), PositionError> {
        self.attend(x, x, x, mask, positions, scratch, out, None)
    }
}

/// Weights: the per-head attention weights on request, and the general caller-owned form.
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>
{
    /// [`GroupedQuery::forward`] that also returns each query head's post-softmax weights
    /// (`HEADS × SEQ × SEQ`), by value.
    ///
    /// ```
    /// use static_attention::{Alignment, GroupedQuery, Mask, SMatrix};
    /// use static_attention::positions::NoPositions;
    ///
    /// let layer = GroupedQuery::<16, 4, 2, 16, 8>::from_seed(5);
    /// let x = SMatrix::<f32, 3, 16>::from_fn(|i, j| (i as f32 - j as f32) * 0.1);
    /// let (y, w) = layer.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft), &NoPositions)?;
    /// let streamed = layer.forward(&x, &Mask::causal(Alignment::TopLeft), &NoPositions)?;
    /// assert!((y - streamed).amax() < 1e-6); // the same result, up to rounding
    /// assert_eq!(w.head(3)[(0, 0)], 1.0); // the first token sees only itself
    /// # Ok::<(), static_attention::positions::PositionError>(())
    /// ```
    ///
    /// # Errors
    /// [`PositionError`] if `SEQ` positions do not fit the rotary table.
    #[allow(clippy::type_complexity)]
    pub fn forward_with_weights<
        const SEQ: usize,
        P: PositionEncoding<T>,
        A: Additive<T, SEQ, SEQ>,
    >(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        positions: &P,
    ) -> Result<(SMatrix<T, SEQ, DIM>, AttentionWeights<SEQ, SEQ, HEADS, T>), PositionError> {
        const { Self::check_positions::<P>() };
        local_buffers!(buf, T, SEQ, SEQ, Q_DIM, KV_DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, _) = (zero_matrix(), AttentionWeights::zeros());
        let (out, weights) = (&mut result.0, &mut result.1);
        let w = Some(weights.as_mut_slice());
        let kt = kernels::current::<T>();
        (self.layer()).forward(kt, x, (x, x), mask, positions, buf, out.as_mut_slice(), w)?;
        Ok(result)
    }

    /// The general caller-owned entry point: `SQ` queries from `query` attend to `SKV` keys
    /// from `key` and values from `value`, queries and keys rotated at positions `0 ..`,
    /// writing the `SQ × DIM` result into `out` and, when given, each query head's weights.
    ///
    /// # Errors
    /// [`PositionError`] if the positions do not fit the rotary table; nothing is written then.
    #[allow(clippy::too_many_arguments)]
    pub fn attend<const SQ: usize, const SKV: usize, P, A>(
        &self,
        query: &SMatrix<T, SQ, DIM>,
        key: &SMatrix<T, SKV, DIM>,
        value: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SQ, SKV, A>,
        positions: &P,
        scratch: &mut Scratch<SQ, SKV, Q_DIM, T, KV_DIM>,
        out: &mut SMatrix<T, SQ, DIM>,
        weights: Option<&mut AttentionWeights<SQ, SKV, HEADS, T>>,
    ) -> Result<(), PositionError>
    where
        P: PositionEncoding<T>,
        A: Additive<T, SQ, SKV>,
    {
        const { Self::check_positions::<P>() };
        let w = weights.map(AttentionWeights::as_mut_slice);
        let (kt, buf) = (kernels::current::<T>(), scratch.buffers());
        let out = out.as_mut_slice();
        (self.layer()).forward(kt, query, (key, value), mask, positions, buf, out, w)
    }
}

decode_api! {
    impl[const DIM: usize, const HEADS: usize, const KV_HEADS: usize, const Q_DIM: usize,
        const KV_DIM: usize, T: Float, W: Weight<T>]
        GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>,
    q_dim: Q_DIM,
    kv_dim: KV_DIM,
    heads: HEADS,
    decode: {
        ///
        /// Queries and keys are rotated at the cache's positions (see the type's docs).
    },
}

/// Threads (`rayon` feature): the forward passes with their work spread over rayon's pool.
#[cfg(feature = "rayon")]
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T,
    W,
> crate::Parallel<'_, GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>>
where
    T: Float + Send + Sync,
    W: Weight<T> + Sync,
{
    /// [`GroupedQuery::forward_into`] with the work spread over the threads (see
    /// [`Parallel::forward_into`](crate::Parallel#method.forward_into) for [`crate::MultiHead`]).
    ///
    /// # Errors
    /// [`PositionError`] if `SEQ` positions do not fit the rotary table; `out` is unchanged.
    pub fn forward_into<const SEQ: usize, P, A>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        positions: &P,
        scratch: &mut Scratch<SEQ, SEQ, Q_DIM, T, KV_DIM>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) -> Result<(), PositionError>
    where
        P: PositionEncoding<T> + Sync,
        A: Additive<T, SEQ, SEQ> + Sync,
    {
        const { GroupedQuery::<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>::check_positions::<P>() };
        let kt = kernels::current::<T>();
        let layer = self.0.layer();
        layer.forward_par(kt, x, mask, positions, scratch.buffers(), out)
    }
}

/// A projection drawn as [`nn_linear`] draws it, by value.
fn drawn<T: Float, W: Weight<T>, R: Rng + ?Sized, const IN: usize, const OUT: usize>(
    rng: &mut R,
    bias: Bias,
) -> Linear<IN, OUT, T, W> {
    let mut l = Linear::zeros();
    nn_linear(&mut l, rng, bias);
    l
}

/// PyTorch's `nn.Linear` initialisation: weight and bias from `U(−1/√in, 1/√in)`.
fn nn_linear<T: Float, W: Weight<T>, R: Rng + ?Sized, const IN: usize, const OUT: usize>(
    l: &mut Linear<IN, OUT, T, W>,
    rng: &mut R,
    bias: Bias,
) {
    let bound = init::out_proj_bound(IN);
    init::fill_uniform(l, bound, rng);
    l.set_zero_bias(bias);
    if bias == Bias::Present {
        let b = l.bias_mut_slice();
        for x in b.iter_mut() {
            *x = T::of(rng.random_range(-bound..bound));
        }
    }
}
