//! Multi-head attention with PyTorch's parameters: `MultiHead(X) = Concat(head_1..head_h) W_O`.

use nalgebra::SMatrix;
use rand::Rng;

use crate::kernels::{self, Dims, Work};
use crate::{Float, Linear, Mask, init, sdpa::default_scale};

/// Per-head post-softmax attention weights: `HEADS` matrices of `SQ × SKV`.
///
/// Row `i` of head `h` is the distribution query `i` of head `h` puts over the keys; it sums to
/// 1, or is all zeros when every key was masked. [`AttentionWeights::average`] is PyTorch's
/// `average_attn_weights=True` result.
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct AttentionWeights<T, const SQ: usize, const SKV: usize, const HEADS: usize> {
    heads: [SMatrix<T, SQ, SKV>; HEADS],
}

impl<T: Float, const SQ: usize, const SKV: usize, const HEADS: usize>
    AttentionWeights<T, SQ, SKV, HEADS>
{
    /// All zeros.
    #[must_use]
    pub fn zeros() -> Self {
        Self {
            heads: [SMatrix::zeros(); HEADS],
        }
    }

    /// The weights of head `h` (`SQ × SKV`). Panics if `h >= HEADS`.
    #[must_use]
    pub fn head(&self, h: usize) -> &SMatrix<T, SQ, SKV> {
        &self.heads[h]
    }

    /// All heads, in order.
    #[must_use]
    pub fn heads(&self) -> &[SMatrix<T, SQ, SKV>; HEADS] {
        &self.heads
    }

    /// The mean over heads (PyTorch `average_attn_weights=True`).
    #[must_use]
    pub fn average(&self) -> SMatrix<T, SQ, SKV> {
        let mut avg = SMatrix::<T, SQ, SKV>::zeros();
        for h in &self.heads {
            avg += h;
        }
        avg / T::of(HEADS as f64)
    }
}

/// Working memory for one [`MultiHead::attend`] call with `SQ` queries and `SKV` keys: the
/// projected queries, keys and values and the streaming kernel's block state.
///
/// Its size, [`Scratch::BYTES`], is that of `SQ·DIM`, `SKV·DIM`, `SKV·DIM` and `8·(DIM + 2)`
/// scalars, each part padded to a multiple of 64 bytes so it starts on a cache line. Keep one
/// wherever suits the program (in a struct it owns, in a `Box` from [`Scratch::new_boxed`], or,
/// since [`Scratch::new`] is a `const fn`, in a `static` behind the program's own mutex or
/// singleton) and pass it to [`MultiHead::attend`]. Its contents between calls do not matter.
///
/// Deliberately not `Copy`: it can be megabytes.
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct Scratch<T, const SQ: usize, const SKV: usize, const DIM: usize> {
    q: Aligned<SMatrix<T, SQ, DIM>>,
    k: Aligned<SMatrix<T, SKV, DIM>>,
    v: Aligned<SMatrix<T, SKV, DIM>>,
    work: Aligned<Work<T, DIM>>,
}

/// A buffer starting on a 64-byte boundary (a cache line): the kernels' vector loads then
/// never straddle two lines, wherever the [`Scratch`] itself lives (stack, heap or `static`).
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Aligned<M>(M);

impl<T: Float, const SQ: usize, const SKV: usize, const DIM: usize> Scratch<T, SQ, SKV, DIM> {
    /// Size in bytes.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// Zeroed scratch, as a `const fn` (on the stack, use [`Scratch::new_boxed`] for large
    /// shapes).
    #[must_use]
    pub const fn new() -> Self {
        const fn zeros<T: Float, const R: usize, const C: usize>() -> Aligned<SMatrix<T, R, C>> {
            Aligned(SMatrix::from_array_storage(nalgebra::ArrayStorage(
                [[T::ZERO; R]; C],
            )))
        }
        Self {
            q: zeros(),
            k: zeros(),
            v: zeros(),
            work: Aligned(Work::new()),
        }
    }

    /// Zeroed scratch allocated directly on the heap, never passing through the stack.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed() -> std::boxed::Box<Self> {
        bytemuck::zeroed_box()
    }
}

impl<T: Float, const SQ: usize, const SKV: usize, const DIM: usize> Default
    for Scratch<T, SQ, SKV, DIM>
{
    fn default() -> Self {
        Self::new()
    }
}

/// Multi-head attention over sequences of `SEQ` tokens of `DIM` features with `HEADS` heads,
/// with the parameters and semantics of PyTorch's `nn.MultiheadAttention` (`batch_first`,
/// one sequence).
///
/// - Shapes: input and output are `SMatrix<T, SEQ, DIM>`, tokens in rows. Each head has
///   `HEAD_DIM = DIM / HEADS` features and scale `1/√HEAD_DIM`.
/// - Parameters: four [`Linear`] maps `DIM → DIM` (`W_q`, `W_k`, `W_v`, `W_o`, PyTorch layout
///   `y = x Wᵀ + b`; head `h` uses rows `h·HEAD_DIM..(h+1)·HEAD_DIM` of `W_q`, `W_k`, `W_v`).
///   They live inline: a `MultiHead` is plain data with no pointers.
/// - `SEQ` is the usual sequence length, used by [`MultiHead::forward`] and
///   [`MultiHead::SCRATCH_BYTES`]; the weights do not depend on it, and
///   [`MultiHead::attend`] and [`MultiHead::cross_attention`] run any other lengths.
/// - Build errors: `DIM` not divisible by `HEADS`, and `SEQ`, `DIM` or `HEADS` of zero, fail
///   `cargo build` with a message naming the problem.
/// - Not `Copy` (a layer can be megabytes); `Clone` copies it explicitly.
///
/// ```
/// use nalgebra::SMatrix;
/// use rand::{SeedableRng, rngs::SmallRng};
/// use static_attention::{Alignment, Mask, MultiHead};
///
/// let mut rng = SmallRng::seed_from_u64(7);
/// let layer = MultiHead::<4, 8, 2>::new(&mut rng);
/// let x = SMatrix::<f32, 4, 8>::from_fn(|i, j| ((i * 8 + j) as f32 * 0.1).sin());
/// let y = layer.forward(&x, &Mask::causal(Alignment::TopLeft));
/// let (y2, weights) = layer.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft));
/// assert!((y - y2).amax() < 1e-6);
/// assert_eq!(weights.head(1)[(0, 3)], 0.0); // token 0 cannot see token 3
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct MultiHead<const SEQ: usize, const DIM: usize, const HEADS: usize, T = f32> {
    q: Linear<T, DIM, DIM>,
    k: Linear<T, DIM, DIM>,
    v: Linear<T, DIM, DIM>,
    out: Linear<T, DIM, DIM>,
}

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float>
    MultiHead<SEQ, DIM, HEADS, T>
{
    /// Compile-time shape check, evaluated by every constructor and forward pass.
    const SHAPE_OK: () = {
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
    /// [`MultiHead::forward`] keeps it on the stack next to its `SEQ · DIM` output.
    pub const SCRATCH_BYTES: usize = Scratch::<T, SEQ, SEQ, DIM>::BYTES;

    /// Bytes of the parameters (the four weights and biases).
    pub const PARAM_BYTES: usize = core::mem::size_of::<Self>();

    /// Builds a layer from its four projections (a `const fn`, so `static LAYER: MultiHead<…>`
    /// works and keeps its weights in read-only memory).
    #[must_use]
    pub const fn from_parts(
        q: Linear<T, DIM, DIM>,
        k: Linear<T, DIM, DIM>,
        v: Linear<T, DIM, DIM>,
        out: Linear<T, DIM, DIM>,
    ) -> Self {
        let () = Self::SHAPE_OK;
        Self { q, k, v, out }
    }

    /// A layer with all-zero weights and no biases, to load parameters into (for example with
    /// [`MultiHead::load_pytorch`]).
    #[must_use]
    pub fn zeros() -> Self {
        Self::from_parts(
            Linear::zeros(),
            Linear::zeros(),
            Linear::zeros(),
            Linear::zeros(),
        )
    }

    /// A layer initialised as PyTorch initialises `nn.MultiheadAttention(DIM, HEADS)` (see
    /// [`crate::init`]), with biases (all zero).
    #[must_use]
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut layer = Self::zeros();
        layer.reset_parameters(rng, true);
        layer
    }

    /// Like [`MultiHead::new`] for `bias=False`: no bias terms at all.
    #[must_use]
    pub fn new_without_bias<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut layer = Self::zeros();
        layer.reset_parameters(rng, false);
        layer
    }

    /// A PyTorch-initialised layer built directly on the heap, for shapes whose parameters do
    /// not fit on the stack (`4 · DIM · (DIM + 1)` scalars).
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed<R: Rng + ?Sized>(rng: &mut R) -> std::boxed::Box<Self> {
        let () = Self::SHAPE_OK;
        let mut layer: std::boxed::Box<Self> = bytemuck::zeroed_box();
        layer.reset_parameters(rng, true);
        layer
    }

    /// Re-draws every parameter in place as PyTorch does (see [`crate::init`]); `bias` says
    /// whether the layer has (zero) biases.
    pub fn reset_parameters<R: Rng + ?Sized>(&mut self, rng: &mut R, bias: bool) {
        let a = init::in_proj_bound(DIM);
        for l in [&mut self.q, &mut self.k, &mut self.v] {
            init::fill_uniform(l.weight_t_mut(), a, rng);
        }
        init::fill_uniform(self.out.weight_t_mut(), init::out_proj_bound(DIM), rng);
        let zero = nalgebra::SVector::zeros();
        for l in [&mut self.q, &mut self.k, &mut self.v, &mut self.out] {
            l.set_bias(bias.then_some(&zero));
        }
    }

    /// The query projection `W_q`, `b_q`.
    #[must_use]
    pub const fn q_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.q
    }
    /// The key projection `W_k`, `b_k`.
    #[must_use]
    pub const fn k_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.k
    }
    /// The value projection `W_v`, `b_v`.
    #[must_use]
    pub const fn v_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.v
    }
    /// The output projection `W_o`, `b_o`.
    #[must_use]
    pub const fn out_proj(&self) -> &Linear<T, DIM, DIM> {
        &self.out
    }
    /// Mutable projections, in the order q, k, v, out.
    pub fn projections_mut(&mut self) -> [&mut Linear<T, DIM, DIM>; 4] {
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
    /// The working memory ([`MultiHead::SCRATCH_BYTES`]) and the output live on the stack; for
    /// large shapes use [`MultiHead::attend`] with a boxed [`Scratch`] or
    /// [`MultiHead::forward_boxed`].
    #[must_use]
    pub fn forward(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, T, SEQ, SEQ>,
    ) -> SMatrix<T, SEQ, DIM> {
        let mut scratch = Scratch::new();
        let mut out = SMatrix::zeros();
        self.attend(x, x, x, mask, &mut scratch, &mut out, None);
        out
    }

    /// Self-attention that also returns the per-head attention weights (`HEADS × SEQ × SEQ`).
    #[must_use]
    pub fn forward_with_weights(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, T, SEQ, SEQ>,
    ) -> (SMatrix<T, SEQ, DIM>, AttentionWeights<T, SEQ, SEQ, HEADS>) {
        let mut scratch = Scratch::new();
        let mut out = SMatrix::zeros();
        let mut weights = AttentionWeights::zeros();
        self.attend(x, x, x, mask, &mut scratch, &mut out, Some(&mut weights));
        (out, weights)
    }

    /// Cross-attention: the `SEQ` tokens of `x` query `SKV` tokens of `memory` (an encoder
    /// output, say), which give the keys and values. The result is `SEQ × DIM`.
    #[must_use]
    pub fn cross_attention<const SKV: usize>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, T, SEQ, SKV>,
    ) -> SMatrix<T, SEQ, DIM> {
        let mut scratch = Scratch::new();
        let mut out = SMatrix::zeros();
        self.attend(x, memory, memory, mask, &mut scratch, &mut out, None);
        out
    }

    /// [`MultiHead::cross_attention`] that also returns the per-head weights
    /// (`HEADS × SEQ × SKV`).
    #[must_use]
    pub fn cross_attention_with_weights<const SKV: usize>(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        memory: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, T, SEQ, SKV>,
    ) -> (SMatrix<T, SEQ, DIM>, AttentionWeights<T, SEQ, SKV, HEADS>) {
        let mut scratch = Scratch::new();
        let mut out = SMatrix::zeros();
        let mut weights = AttentionWeights::zeros();
        self.attend(
            x,
            memory,
            memory,
            mask,
            &mut scratch,
            &mut out,
            Some(&mut weights),
        );
        (out, weights)
    }

    /// Self-attention over `SEQ` tokens with the scratch and the output on the heap, so any
    /// shape runs from a small thread stack (for example `SEQ = 1024, DIM = 512` in 2 MiB).
    #[cfg(feature = "std")]
    #[must_use]
    pub fn forward_boxed(
        &self,
        x: &SMatrix<T, SEQ, DIM>,
        mask: &Mask<'_, T, SEQ, SEQ>,
    ) -> std::boxed::Box<SMatrix<T, SEQ, DIM>> {
        let mut scratch = Scratch::<T, SEQ, SEQ, DIM>::new_boxed();
        let mut out: std::boxed::Box<SMatrix<T, SEQ, DIM>> = bytemuck::zeroed_box();
        self.attend(x, x, x, mask, &mut scratch, &mut out, None);
        out
    }

    /// The general entry point: `SQ` queries from `query` attend to `SKV` keys from `key` and
    /// values from `value` (PyTorch `forward(query, key, value)`), using caller-owned scratch
    /// and writing the `SQ × DIM` result into `out`. When `weights` is given, the per-head
    /// post-softmax weights are written there too; otherwise no `SQ × SKV` matrix exists.
    ///
    /// Nothing is allocated; the stack holds only loop state. Any `SQ` and `SKV` work with the
    /// same weights, `0` included (an empty key set gives the output bias for every query).
    ///
    /// ```
    /// use nalgebra::SMatrix;
    /// use rand::{SeedableRng, rngs::SmallRng};
    /// use static_attention::{Mask, MultiHead, Scratch};
    ///
    /// let layer = MultiHead::<16, 8, 2>::new(&mut SmallRng::seed_from_u64(1));
    /// // The same weights on 5 query tokens against 3 memory tokens.
    /// let q = SMatrix::<f32, 5, 8>::repeat(0.5);
    /// let kv = SMatrix::<f32, 3, 8>::repeat(-0.25);
    /// let mut scratch = Scratch::<f32, 5, 3, 8>::new();
    /// let mut out = SMatrix::zeros();
    /// layer.attend(&q, &kv, &kv, &Mask::none(), &mut scratch, &mut out, None);
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn attend<const SQ: usize, const SKV: usize>(
        &self,
        query: &SMatrix<T, SQ, DIM>,
        key: &SMatrix<T, SKV, DIM>,
        value: &SMatrix<T, SKV, DIM>,
        mask: &Mask<'_, T, SQ, SKV>,
        scratch: &mut Scratch<T, SQ, SKV, DIM>,
        out: &mut SMatrix<T, SQ, DIM>,
        mut weights: Option<&mut AttentionWeights<T, SQ, SKV, HEADS>>,
    ) {
        let () = Self::SHAPE_OK;
        let dk = Self::HEAD_DIM;
        let scale = default_scale::<T>(dk);

        // Q = query W_qᵀ + b_q, K = key W_kᵀ + b_k, V = value W_vᵀ + b_v.
        self.q.forward_into(query, &mut scratch.q.0);
        self.k.forward_into(key, &mut scratch.k.0);
        self.v.forward_into(value, &mut scratch.v.0);

        // head_h = Attention(Q_h, K_h, V_h), written into columns h·dk..(h+1)·dk of `out`
        // (column-major, so each head's block of columns is one contiguous slice).
        let dims = Dims {
            sq: SQ,
            skv: SKV,
            dk,
            dv: dk,
        };
        for h in 0..HEADS {
            let q = &scratch.q.0.as_slice()[h * dk * SQ..(h + 1) * dk * SQ];
            let k = &scratch.k.0.as_slice()[h * dk * SKV..(h + 1) * dk * SKV];
            let v = &scratch.v.0.as_slice()[h * dk * SKV..(h + 1) * dk * SKV];
            let o = &mut out.as_mut_slice()[h * dk * SQ..(h + 1) * dk * SQ];
            match weights.as_deref_mut() {
                Some(w) => kernels::attention_with_weights(
                    q,
                    k,
                    v,
                    dims,
                    scale,
                    mask,
                    o,
                    w.heads[h].as_mut_slice(),
                ),
                None => kernels::attention(q, k, v, dims, scale, mask, o, &mut scratch.work.0),
            }
        }

        // MultiHead = Concat(head_1..head_h) W_oᵀ + b_o; the Q buffer is free again and holds
        // the product before it is copied out.
        self.out.forward_into(out, &mut scratch.q.0);
        out.copy_from(&scratch.q.0);
    }
}
