//! Decoder attention: grouped-query heads, decoding through a [`KvCache`], positions.
//!
//! [`GroupedQuery`] is the attention block of Llama, Mistral and Qwen2 (Hugging Face's
//! `LlamaAttention` and friends); [`MultiHead`] decodes through the same code with as many kv
//! heads as heads. Both take their positions as a [`PositionEncoding`]: [`NoPositions`](crate::positions::NoPositions), a
//! [`crate::positions::Rope`] table or an [`Alibi`](crate::Alibi).

use nalgebra::SMatrix;
use rand::{Rng, RngExt, SeedableRng};

use crate::cache::{CacheError, KvCache};
use crate::kernels::{self, Dims, MaskView, PANEL_ROWS, Work};
use crate::mask::{Additive, Alignment, Pattern};
use crate::positions::{PositionEncoding, PositionError};
use crate::scratch::{Aligned, zero_matrix};
use crate::{Bias, Float, Linear, Mask, MultiHead, Weight, init, sdpa::default_scale};

/// Working memory of a decoder step over `S` tokens for a layer with `Q_DIM` query features
/// and `KV_DIM` key/value features: the projected queries, keys, values and heads
/// (`S·(2·Q_DIM + 2·KV_DIM)` scalars), the attention kernel's block state, a projection panel
/// and one token's queries and heads. Its size is [`DecoderScratch::BYTES`]; keep one wherever
/// suits the program (a `Box` from [`DecoderScratch::new_boxed`] for large shapes). Its contents
/// between calls do not matter.
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct DecoderScratch<const S: usize, const Q_DIM: usize, const KV_DIM: usize, T = f32> {
    q: Aligned<[[T; S]; Q_DIM]>,
    k: Aligned<[[T; S]; KV_DIM]>,
    v: Aligned<[[T; S]; KV_DIM]>,
    heads: Aligned<[[T; S]; Q_DIM]>,
    work: Aligned<Work<T, Q_DIM>>,
    pack: Aligned<[[T; PANEL_ROWS]; Q_DIM]>,
    token: Aligned<[[T; Q_DIM]; 2]>,
}

impl<const S: usize, const Q_DIM: usize, const KV_DIM: usize, T: Float>
    DecoderScratch<S, Q_DIM, KV_DIM, T>
{
    /// Size in bytes.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// Zeroed scratch (a `const fn`).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            q: Aligned([[T::ZERO; S]; Q_DIM]),
            k: Aligned([[T::ZERO; S]; KV_DIM]),
            v: Aligned([[T::ZERO; S]; KV_DIM]),
            heads: Aligned([[T::ZERO; S]; Q_DIM]),
            work: Aligned(Work::new()),
            pack: Aligned([[T::ZERO; PANEL_ROWS]; Q_DIM]),
            token: Aligned([[T::ZERO; Q_DIM]; 2]),
        }
    }

    /// Zeroed scratch on the heap.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed() -> std::boxed::Box<Self> {
        bytemuck::zeroed_box()
    }
}

impl<const S: usize, const Q_DIM: usize, const KV_DIM: usize, T: Float> Default
    for DecoderScratch<S, Q_DIM, KV_DIM, T>
{
    fn default() -> Self {
        Self::new()
    }
}

/// The four projections and head counts of a decoder layer, borrowed.
struct Parts<'l, const DIM: usize, const QD: usize, const KVD: usize, T, W> {
    q: &'l Linear<DIM, QD, T, W>,
    k: &'l Linear<DIM, KVD, T, W>,
    v: &'l Linear<DIM, KVD, T, W>,
    o: &'l Linear<QD, DIM, T, W>,
    heads: usize,
    kv_heads: usize,
}

impl<const DIM: usize, const QD: usize, const KVD: usize, T: Float, W: Weight<T>>
    Parts<'_, DIM, QD, KVD, T, W>
{
    fn head_dim(&self) -> usize {
        QD / self.heads
    }

    /// The kv head query head `h` reads: `h / (heads / kv_heads)`.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }

    /// Q, K and V of `S` tokens into the scratch, rotated for positions `first ..`.
    fn project<const S: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        positions: &P,
        first: usize,
        sc: &mut DecoderScratch<S, QD, KVD, T>,
    ) {
        let pack = sc.pack.0.as_flattened_mut();
        self.q
            .forward_slices(x.as_slice(), S, sc.q.0.as_flattened_mut(), pack);
        self.k
            .forward_slices(x.as_slice(), S, sc.k.0.as_flattened_mut(), pack);
        self.v
            .forward_slices(x.as_slice(), S, sc.v.0.as_flattened_mut(), pack);
        positions.rotate(sc.q.0.as_flattened_mut(), S, self.heads, first);
        positions.rotate(sc.k.0.as_flattened_mut(), S, self.kv_heads, first);
    }

    /// Self-attention over the `S` tokens alone (no cache), into `out`.
    fn forward<const S: usize, P: PositionEncoding<T>, A: Additive<T, S, S>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        mask: &Mask<'_, S, S, A>,
        positions: &P,
        sc: &mut DecoderScratch<S, QD, KVD, T>,
        out: &mut SMatrix<T, S, DIM>,
    ) -> Result<(), PositionError> {
        positions.check(0, S)?;
        self.project(x, positions, 0, sc);
        let hd = self.head_dim();
        let (k, v) = (sc.k.0.as_flattened(), sc.v.0.as_flattened());
        self.attend_heads(
            sc.q.0.as_flattened(),
            |g| {
                (
                    &k[g * hd * S..(g + 1) * hd * S],
                    &v[g * hd * S..(g + 1) * hd * S],
                )
            },
            Dims::new(S, S, hd, hd),
            &MaskView::of(mask),
            positions.alibi().or(mask.alibi()),
            sc.heads.0.as_flattened_mut(),
            &mut sc.work.0,
        );
        self.project_out(sc, out);
        Ok(())
    }

    /// Every query head `h` of `S` queries (rows `h·hd·S ..` of `q`) attending over the keys
    /// and values of its kv head, `kv(g)`, into the same rows of `heads`.
    #[allow(clippy::too_many_arguments)]
    fn attend_heads<'k>(
        &self,
        q: &[T],
        kv: impl Fn(usize) -> (&'k [T], &'k [T]),
        dims: Dims,
        view: &MaskView<'_, T>,
        alibi: Option<crate::Alibi>,
        heads: &mut [T],
        work: &mut Work<T, QD>,
    ) where
        T: 'k,
    {
        let hd = self.head_dim();
        let rows = hd * dims.sq;
        let scale = default_scale::<T>(hd);
        for h in 0..self.heads {
            let (k, v) = kv(self.kv_head(h));
            kernels::attention(
                &q[h * rows..(h + 1) * rows],
                k,
                v,
                dims,
                scale,
                &view.with_alibi_slope(alibi.map(|a| a.slope(h, self.heads))),
                &mut heads[h * rows..(h + 1) * rows],
                work.parts(),
            );
        }
    }

    /// The output projection of the concatenated heads.
    fn project_out<const S: usize>(
        &self,
        sc: &mut DecoderScratch<S, QD, KVD, T>,
        out: &mut SMatrix<T, S, DIM>,
    ) {
        self.o.forward_slices(
            sc.heads.0.as_flattened(),
            S,
            out.as_mut_slice(),
            sc.pack.0.as_flattened_mut(),
        );
    }

    /// Appends `S` tokens to `cache` and attends each to everything the cache holds up to its
    /// own position; the output into `out`. Checks everything before changing anything.
    fn decode<const S: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        cache: &mut KvCache<CAP, KVD, T>,
        positions: &P,
        sc: &mut DecoderScratch<S, QD, KVD, T>,
        out: &mut SMatrix<T, S, DIM>,
    ) -> Result<(), CacheError> {
        cache.check_room(S)?;
        let first = cache.position();
        positions.check(first, S)?;
        self.project(x, positions, first, sc);
        let hd = self.head_dim();
        let scale = default_scale::<T>(hd);
        let alibi = positions.alibi();
        let (k_new, v_new) = (sc.k.0.as_flattened(), sc.v.0.as_flattened());
        if !cache.is_sliding_window() {
            // All S tokens in, then every query sees the cache up to its own position
            // (causal, aligned bottom-right: the new tokens are the newest positions).
            for t in 0..S {
                cache.push(k_new, v_new, S, t);
            }
            let len = cache.len();
            let cache = &*cache;
            self.attend_heads(
                sc.q.0.as_flattened(),
                |g| cache.head(g, hd),
                Dims {
                    ldkv: CAP,
                    ..Dims::new(S, len, hd, hd)
                },
                &MaskView::structural(Pattern::Causal(Alignment::BottomRight), S, len),
                alibi,
                sc.heads.0.as_flattened_mut(),
                &mut sc.work.0,
            );
        } else {
            // A ring: token by token, each query sees exactly what the ring holds once its
            // own key is in (the last CAP positions, itself included).
            for t in 0..S {
                cache.push(k_new, v_new, S, t);
                let len = cache.len();
                let view = MaskView::structural(Pattern::Full, 1, len);
                let dims = Dims {
                    ldkv: CAP,
                    ..Dims::new(1, len, hd, hd)
                };
                // ALiBi distances count from the oldest position, wherever the ring put it.
                let oldest = cache.oldest_row();
                let [tq, to] = &mut sc.token.0;
                let q = sc.q.0.as_flattened();
                for h in 0..self.heads {
                    for e in 0..hd {
                        tq[e] = q[t + (h * hd + e) * S];
                    }
                    let (k, v) = cache.head(self.kv_head(h), hd);
                    kernels::attention(
                        &tq[..hd],
                        k,
                        v,
                        dims,
                        scale,
                        &view.with_alibi(alibi.map(|a| a.slope(h, self.heads)), oldest),
                        &mut to[..hd],
                        sc.work.0.parts(),
                    );
                    let heads = sc.heads.0.as_flattened_mut();
                    for e in 0..hd {
                        heads[t + (h * hd + e) * S] = to[e];
                    }
                }
            }
        }
        self.project_out(sc, out);
        Ok(())
    }
}

/// Grouped-query attention with Llama-style projections (Hugging Face's `LlamaAttention`,
/// `MistralAttention`, `Qwen2Attention`): `HEADS` query heads and `KV_HEADS` key/value heads of
/// `HEAD_DIM = Q_DIM / HEADS` features, query head `h` reading kv head
/// `h / (HEADS / KV_HEADS)` (PyTorch's `enable_gqa`).
///
/// - Parameters: `q_proj: DIM → Q_DIM`, `k_proj` and `v_proj: DIM → KV_DIM`,
///   `o_proj: Q_DIM → DIM`, each a [`Linear`] (`y = x Wᵀ + b`, biases optional: Qwen2 has
///   q/k/v biases, Llama none). Stable Rust cannot write `HEADS · HEAD_DIM` in a type, so the
///   widths are parameters of their own, checked at build time: `Q_DIM = HEADS · HEAD_DIM`
///   and `KV_DIM = KV_HEADS · HEAD_DIM`.
/// - `KV_HEADS = HEADS` is multi-head attention (then it equals [`MultiHead`] with the same
///   weights); `KV_HEADS = 1` is multi-query attention.
/// - Positions ([`PositionEncoding`]): [`NoPositions`](crate::positions::NoPositions), a [`crate::positions::Rope`] table of
///   width `HEAD_DIM` (another width fails the build), or ALiBi.
/// - Decoding: [`GroupedQuery::decode`] appends tokens to a [`KvCache`] of `KV_DIM` features
///   and attends over it; a prompt of any length, then one token at a time, gives what one
///   causal forward over the whole sequence gives.
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
/// let rope = Rope::<8, 128>::new(10_000.0, RopeStyle::RotateHalf);
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
    W = T,
> {
    pub(crate) q: Linear<DIM, Q_DIM, T, W>,
    pub(crate) k: Linear<DIM, KV_DIM, T, W>,
    pub(crate) v: Linear<DIM, KV_DIM, T, W>,
    pub(crate) o: Linear<Q_DIM, DIM, T, W>,
}

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
        assert!(
            DIM > 0,
            "DIM must be at least 1: tokens need at least one feature"
        );
        assert!(
            HEADS > 0,
            "HEADS must be at least 1: attention needs at least one head"
        );
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

    /// Builds a layer from its four projections (a `const fn`: `static` layers work).
    #[must_use]
    pub const fn from_parts(
        q_proj: Linear<DIM, Q_DIM, T, W>,
        k_proj: Linear<DIM, KV_DIM, T, W>,
        v_proj: Linear<DIM, KV_DIM, T, W>,
        o_proj: Linear<Q_DIM, DIM, T, W>,
    ) -> Self {
        let () = Self::SHAPE_OK;
        Self {
            q: q_proj,
            k: k_proj,
            v: v_proj,
            o: o_proj,
        }
    }

    /// All-zero weights and no biases, to load parameters into.
    #[must_use]
    pub fn zeros() -> Self {
        let () = Self::SHAPE_OK;
        bytemuck::Zeroable::zeroed()
    }

    /// [`GroupedQuery::zeros`] on the heap.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn zeros_boxed() -> std::boxed::Box<Self> {
        let () = Self::SHAPE_OK;
        bytemuck::zeroed_box()
    }

    /// Each projection initialised as PyTorch's `nn.Linear` initialises itself: weights and
    /// (with [`Bias::Present`]) biases from `U(−1/√in, 1/√in)`, drawn in the order q, k, v, o.
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R, bias: Bias) -> Self {
        let () = Self::SHAPE_OK;
        let mut layer = Self::zeros();
        layer.reset_parameters(rng, bias);
        layer
    }

    /// [`GroupedQuery::new`] built directly on the heap, for layers whose parameters do not
    /// fit on the stack.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed<R: Rng + ?Sized>(rng: &mut R, bias: Bias) -> std::boxed::Box<Self> {
        let mut layer = Self::zeros_boxed();
        layer.reset_parameters(rng, bias);
        layer
    }

    /// [`GroupedQuery::new`] without biases (Llama, Mistral) from a seed, with the crate's
    /// portable generator ([`init::SeedRng`]).
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        Self::new(&mut init::SeedRng::seed_from_u64(seed), Bias::Absent)
    }

    /// Re-draws every parameter in place (see [`GroupedQuery::new`]); the output projection
    /// never has a bias (as in Llama, Mistral and Qwen2).
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        nn_linear(&mut self.q, rng, bias);
        nn_linear(&mut self.k, rng, bias);
        nn_linear(&mut self.v, rng, bias);
        nn_linear(&mut self.o, rng, Bias::Absent);
    }

    /// The same layer with its weights stored as `W2`, each rounded to it (see
    /// [`crate::weight`]): `to_weights::<bf16>()` halves the parameters' size. By value.
    #[must_use]
    pub fn to_weights<W2: Weight<T>>(
        &self,
    ) -> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W2> {
        GroupedQuery {
            q: self.q.to_weights(),
            k: self.k.to_weights(),
            v: self.v.to_weights(),
            o: self.o.to_weights(),
        }
    }

    /// The query projection, `DIM → Q_DIM`.
    #[must_use]
    pub const fn q_proj(&self) -> &Linear<DIM, Q_DIM, T, W> {
        &self.q
    }
    /// The key projection, `DIM → KV_DIM`.
    #[must_use]
    pub const fn k_proj(&self) -> &Linear<DIM, KV_DIM, T, W> {
        &self.k
    }
    /// The value projection, `DIM → KV_DIM`.
    #[must_use]
    pub const fn v_proj(&self) -> &Linear<DIM, KV_DIM, T, W> {
        &self.v
    }
    /// The output projection, `Q_DIM → DIM`.
    #[must_use]
    pub const fn o_proj(&self) -> &Linear<Q_DIM, DIM, T, W> {
        &self.o
    }
    /// The four projections, mutable (q, k, v, o).
    #[allow(clippy::type_complexity)]
    pub fn projections_mut(
        &mut self,
    ) -> (
        &mut Linear<DIM, Q_DIM, T, W>,
        &mut Linear<DIM, KV_DIM, T, W>,
        &mut Linear<DIM, KV_DIM, T, W>,
        &mut Linear<Q_DIM, DIM, T, W>,
    ) {
        (&mut self.q, &mut self.k, &mut self.v, &mut self.o)
    }

    fn parts(&self) -> Parts<'_, DIM, Q_DIM, KV_DIM, T, W> {
        let () = Self::SHAPE_OK;
        Parts {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            o: &self.o,
            heads: HEADS,
            kv_heads: KV_HEADS,
        }
    }

    /// Checks at build time that a rotary table fits the heads.
    const fn check_positions<P: PositionEncoding<T>>() {
        assert!(
            P::HEAD_DIM == 0 || P::HEAD_DIM == Q_DIM / HEADS,
            "the Rope table's HEAD_DIM must be the layer's Q_DIM / HEADS"
        );
    }

    /// Self-attention over `S` tokens at positions `0 .. S` (a whole prompt, no cache), by
    /// value: the scratch ([`DecoderScratch::BYTES`]) and the result live on the stack. Use a
    /// causal mask for a decoder.
    ///
    /// # Errors
    /// [`PositionError`] if `S` positions do not fit the rotary table.
    pub fn forward<const S: usize, P: PositionEncoding<T>, A: Additive<T, S, S>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        mask: &Mask<'_, S, S, A>,
        positions: &P,
    ) -> Result<SMatrix<T, S, DIM>, PositionError> {
        const { Self::check_positions::<P>() };
        let mut sc = DecoderScratch::<S, Q_DIM, KV_DIM, T>::new();
        let mut out = zero_matrix();
        self.parts()
            .forward(x, mask, positions, &mut sc, &mut out)?;
        Ok(out)
    }

    /// [`GroupedQuery::forward`] with caller-owned scratch and output.
    ///
    /// # Errors
    /// [`PositionError`] if `S` positions do not fit the rotary table; `out` is unchanged.
    pub fn forward_into<const S: usize, P: PositionEncoding<T>, A: Additive<T, S, S>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        mask: &Mask<'_, S, S, A>,
        positions: &P,
        scratch: &mut DecoderScratch<S, Q_DIM, KV_DIM, T>,
        out: &mut SMatrix<T, S, DIM>,
    ) -> Result<(), PositionError> {
        const { Self::check_positions::<P>() };
        self.parts().forward(x, mask, positions, scratch, out)
    }

    /// Appends `S` tokens (a prompt, or one token) to `cache` at its next positions and
    /// returns their outputs: each token attends to every cached position up to its own (the
    /// last `CAP` of them with a [`KvCache::sliding_window`]). By value; see
    /// [`GroupedQuery::decode_into`] for caller-owned scratch.
    ///
    /// # Errors
    /// [`CacheError::Full`] if the tokens do not fit, [`CacheError::Position`] if their
    /// positions are past the rotary table; the cache is unchanged then.
    pub fn decode<const S: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        cache: &mut KvCache<CAP, KV_DIM, T>,
        positions: &P,
    ) -> Result<SMatrix<T, S, DIM>, CacheError> {
        const { Self::check_positions::<P>() };
        let mut sc = DecoderScratch::<S, Q_DIM, KV_DIM, T>::new();
        let mut out = zero_matrix();
        self.parts()
            .decode(x, cache, positions, &mut sc, &mut out)?;
        Ok(out)
    }

    /// [`GroupedQuery::decode`] with caller-owned scratch and output: nothing big on the stack.
    ///
    /// # Errors
    /// As [`GroupedQuery::decode`]; the cache and `out` are unchanged then.
    pub fn decode_into<const S: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        cache: &mut KvCache<CAP, KV_DIM, T>,
        positions: &P,
        scratch: &mut DecoderScratch<S, Q_DIM, KV_DIM, T>,
        out: &mut SMatrix<T, S, DIM>,
    ) -> Result<(), CacheError> {
        const { Self::check_positions::<P>() };
        self.parts().decode(x, cache, positions, scratch, out)
    }
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

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    fn decoder_parts(&self) -> Parts<'_, DIM, DIM, DIM, T, W> {
        Parts {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            o: &self.out,
            heads: HEADS,
            kv_heads: HEADS,
        }
    }

    /// Appends `S` tokens (a prompt, or one token) to `cache` at its next positions and
    /// returns their outputs, each token attending to every cached position up to its own:
    /// prefill and then token-by-token decoding give the rows of one causal forward
    /// (`Mask::causal`) over the whole sequence. `positions` is usually [`NoPositions`](crate::positions::NoPositions)
    /// (`nn.MultiheadAttention` has none); a [`crate::positions::Rope`] of width
    /// `DIM / HEADS` or ALiBi work too. By value; see [`MultiHead::decode_into`].
    ///
    /// # Errors
    /// [`CacheError::Full`] if the tokens do not fit, [`CacheError::Position`] past a rotary
    /// table; the cache is unchanged then.
    pub fn decode<const S: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        cache: &mut KvCache<CAP, DIM, T>,
        positions: &P,
    ) -> Result<SMatrix<T, S, DIM>, CacheError> {
        let mut sc = DecoderScratch::<S, DIM, DIM, T>::new();
        let mut out = zero_matrix();
        self.decode_into(x, cache, positions, &mut sc, &mut out)?;
        Ok(out)
    }

    /// [`MultiHead::decode`] with caller-owned scratch and output.
    ///
    /// # Errors
    /// As [`MultiHead::decode`]; the cache and `out` are unchanged then.
    pub fn decode_into<const S: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        x: &SMatrix<T, S, DIM>,
        cache: &mut KvCache<CAP, DIM, T>,
        positions: &P,
        scratch: &mut DecoderScratch<S, DIM, DIM, T>,
        out: &mut SMatrix<T, S, DIM>,
    ) -> Result<(), CacheError> {
        const {
            assert!(
                P::HEAD_DIM == 0 || P::HEAD_DIM * HEADS == DIM,
                "the Rope table's HEAD_DIM must be the layer's DIM / HEADS"
            );
        };
        let () = Self::SHAPE_OK;
        self.decoder_parts()
            .decode(x, cache, positions, scratch, out)
    }
}
