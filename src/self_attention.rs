//! Single-head self-attention: `Attention(X W_qᵀ + b_q, X W_kᵀ + b_k, X W_vᵀ + b_v)`.

use nalgebra::SMatrix;
use rand::{Rng, SeedableRng};

use crate::batch::{BatchError, check, mask_of};
use crate::heads::{Buffers, Heads, Layer, local_buffers};
use crate::mask::Additive;
use crate::positions::{NoPositions, PositionEncoding};
use crate::{
    Bias, CacheError, Float, KvCache, Linear, Mask, Scratch, Weight, init, kernels, zero_matrix,
};

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
pub struct SelfAttention<const SEQ: usize, const DIM: usize, T = f32, W = T> {
    pub(crate) q: Linear<DIM, DIM, T, W>,
    pub(crate) k: Linear<DIM, DIM, T, W>,
    pub(crate) v: Linear<DIM, DIM, T, W>,
}

/// Build: constructors, conversion and the parameters.
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

    /// A head initialised like the in-projection of a one-head `nn.MultiheadAttention`
    /// (Xavier-uniform over the packed `[3·DIM, DIM]` weights), with zero biases
    /// ([`Bias::Present`]) or none ([`Bias::Absent`]).
    ///
    /// Returned by value, each projection drawn straight into place (`PARAM_BYTES` plus one
    /// projection of stack). For large heads allocate one with [`crate::heap::zeroed`] and
    /// call [`SelfAttention::reset_parameters`].
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R, bias: Bias) -> Self {
        let () = Self::SHAPE_OK;
        let a = init::in_proj_bound(DIM);
        Self {
            q: Linear::random(rng, a, bias),
            k: Linear::random(rng, a, bias),
            v: Linear::random(rng, a, bias),
        }
    }

    /// [`SelfAttention::new`] with biases, from a seed, with the crate's portable generator
    /// ([`init::SeedRng`]).
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        Self::new(&mut init::SeedRng::seed_from_u64(seed), Bias::Present)
    }

    /// A head with all-zero weights and no biases, to load parameters into (built in place:
    /// [`SelfAttention::PARAM_BYTES`] of stack).
    #[must_use]
    pub fn zeros() -> Self {
        let () = Self::SHAPE_OK;
        bytemuck::Zeroable::zeroed()
    }

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

    /// Re-draws the weights in place as [`SelfAttention::new`] draws them.
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: Bias) {
        let () = Self::SHAPE_OK;
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

    /// The head as the core runs it: one head, no output projection.
    pub(crate) fn layer(&self) -> Layer<'_, DIM, DIM, DIM, T, W> {
        let () = Self::SHAPE_OK;
        Layer {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            out: None,
            heads: Heads { count: 1, kv: 1 },
        }
    }

    /// `SQ` queries attend to `SKV` keys and values on the selected kernel.
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
impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    /// Self-attention over `SEQ` tokens (`SEQ × DIM → SEQ × DIM`), by value (see the [crate
    /// docs](crate#memory) for the stack it needs).
    #[must_use]
    pub fn forward<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> SMatrix<T, SEQ, DIM> {
        self.cross_attention(x, x, mask)
    }

    /// [`SelfAttention::forward`] into a caller-owned output with caller-owned scratch.
    pub fn forward_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        out: &mut SMatrix<T, SEQ, DIM>,
    ) {
        self.run(x, (x, x), mask, scratch.buffers(), out.as_mut_slice(), None);
    }

    /// Self-attention over a batch of sequences through one caller-owned [`Scratch`], with
    /// each sequence's `SEQ × SEQ` weights into `weights` when given (PyTorch's
    /// `[batch, SEQ, SEQ]`); see [`crate::MultiHead::forward_batch_into`].
    ///
    /// # Errors
    ///
    /// [`BatchError`] if the lengths do not fit; nothing is written then.
    pub fn forward_batch_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[Mask<'_, SEQ, SEQ, A>],
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        outs: &mut [SMatrix<T, SEQ, DIM>],
        mut weights: Option<&mut [SMatrix<T, SEQ, SEQ>]>,
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

/// Weights and cross-attention.
impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    /// Self-attention that also returns the `SEQ × SEQ` attention weights, by value.
    #[must_use]
    pub fn forward_with_weights<A: Additive<T, SEQ, SEQ>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, SEQ, SEQ, A>,
    ) -> (SMatrix<T, SEQ, DIM>, SMatrix<T, SEQ, SEQ>) {
        self.cross_attention_with_weights(x, x, mask)
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
        let () = Self::SHAPE_OK;
        local_buffers!(buf, T, SEQ, SKV, DIM, DIM);
        let mut out = [[T::ZERO; SEQ]; DIM];
        self.run(x, (memory, memory), mask, buf, out.as_flattened_mut(), None);
        SMatrix::from_array_storage(nalgebra::ArrayStorage(out))
    }

    /// [`SelfAttention::cross_attention`] that also returns the `SEQ × SKV` weights, by value.
    #[must_use]
    pub fn cross_attention_with_weights<const SKV: usize, A: Additive<T, SEQ, SKV>>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, SEQ, SKV, A>,
    ) -> (SMatrix<T, SEQ, DIM>, SMatrix<T, SEQ, SKV>) {
        let () = Self::SHAPE_OK;
        local_buffers!(buf, T, SEQ, SKV, DIM, DIM);
        let mut result: (SMatrix<T, SEQ, DIM>, SMatrix<T, SEQ, SKV>) =
            (zero_matrix(), zero_matrix());
        let (out, weights) = (&mut result.0, &mut result.1);
        let w = Some(weights.as_mut_slice());
        self.run(x, (memory, memory), mask, buf, out.as_mut_slice(), w);
        result
    }

    /// The general caller-owned entry point: `SQ` queries from `query` attend to `SKV` keys
    /// from `key` and values from `value`, writing the `SQ × DIM` result into `out` and, when
    /// given, the `SQ × SKV` weights into `weights`. Nothing is allocated and nothing big is
    /// on the stack.
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
        let w = weights.map(|w| w.as_mut_slice());
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
impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    /// Checks at build time that a rotary table fits the head.
    const fn check_positions<P: PositionEncoding<T>>() {
        assert!(
            P::HEAD_DIM == 0 || P::HEAD_DIM == DIM,
            "the Rope table's HEAD_DIM must be the head's DIM"
        );
    }

    /// Appends `SQ` tokens to `cache` at its next positions and returns their outputs, each
    /// token attending to every cached position up to its own (see
    /// [`crate::MultiHead::decode`]). By value; see [`SelfAttention::decode_into`].
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

    /// [`SelfAttention::decode`] with caller-owned scratch and output.
    ///
    /// # Errors
    /// As [`SelfAttention::decode`]; the cache and `out` are unchanged then.
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
