//! Caller-owned buffers: the working memory of a forward pass ([`Scratch`]) and the attention
//! weights a caller asks for ([`AttentionWeights`]).
//!
//! Both are plain data. Each has a `const fn` constructor (it can sit in a `static` or a struct
//! the program owns) and, with `std`, a `new_boxed` that allocates it zeroed directly on the
//! heap, never passing it through the stack.

use nalgebra::SMatrix;

use crate::Float;
use crate::kernels::{PANEL_ROWS, Work};

/// A zero `R × C` matrix as a `const fn`, written so that it is built in place (nalgebra's
/// `zeros()` goes through a temporary that doubles its stack use).
#[inline(always)]
#[must_use]
pub(crate) const fn zero_matrix<T: Float, const R: usize, const C: usize>() -> SMatrix<T, R, C> {
    SMatrix::from_array_storage(nalgebra::ArrayStorage([[T::ZERO; R]; C]))
}

/// Per-head post-softmax attention weights: `HEADS` matrices of `SQ × SKV`.
///
/// Row `i` of head `h` is the distribution query `i` of head `h` puts over the keys; it sums to
/// 1, or is all zeros when every key was masked. [`AttentionWeights::average`] is PyTorch's
/// `average_attn_weights=True` result.
///
/// Its size is [`AttentionWeights::BYTES`], `HEADS · SQ · SKV` scalars. For large shapes keep it
/// on the heap ([`AttentionWeights::new_boxed`]) and pass it to the `*_into` entry points.
/// Deliberately not `Copy`.
///
/// ```
/// use static_attention::AttentionWeights;
///
/// // 8 heads of 512 × 512 weights is 8 MiB: allocated zeroed on the heap directly.
/// let w = AttentionWeights::<512, 512, 8>::new_boxed();
/// assert_eq!(w.head(7)[(511, 511)], 0.0);
/// assert_eq!(AttentionWeights::<512, 512, 8>::BYTES, 8 * 512 * 512 * 4);
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct AttentionWeights<const SQ: usize, const SKV: usize, const HEADS: usize, T = f32> {
    pub(crate) heads: [SMatrix<T, SQ, SKV>; HEADS],
}

impl<const SQ: usize, const SKV: usize, const HEADS: usize, T: Float>
    AttentionWeights<SQ, SKV, HEADS, T>
{
    /// Size in bytes, `HEADS · SQ · SKV · size_of::<T>()`.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// All zeros (a `const fn`, built in place).
    #[must_use]
    pub const fn zeros() -> Self {
        Self {
            heads: [zero_matrix(); HEADS],
        }
    }

    /// All zeros, allocated directly on the heap (never on the stack).
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed() -> std::boxed::Box<Self> {
        bytemuck::zeroed_box()
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

    /// The mean over heads (PyTorch `average_attn_weights=True`), returned by value
    /// (`SQ · SKV` scalars; see [`AttentionWeights::average_into`] for large shapes).
    #[must_use]
    pub fn average(&self) -> SMatrix<T, SQ, SKV> {
        let mut avg = zero_matrix();
        self.average_into(&mut avg);
        avg
    }

    /// The mean over heads, written into `avg`.
    pub fn average_into(&self, avg: &mut SMatrix<T, SQ, SKV>) {
        avg.fill(T::ZERO);
        for h in &self.heads {
            *avg += h;
        }
        *avg /= T::of(HEADS as f64);
    }
}

impl<const SQ: usize, const SKV: usize, const HEADS: usize, T: Float> Default
    for AttentionWeights<SQ, SKV, HEADS, T>
{
    fn default() -> Self {
        Self::zeros()
    }
}

/// Working memory for one attention call with `SQ` queries and `SKV` keys of `DIM` features:
/// the projected queries, keys and values and the streaming kernel's block state. Used by
/// [`crate::MultiHead::attend`] and [`crate::SelfAttention::attend`] (and the `*_into` entry
/// points built on them).
///
/// Its size, [`Scratch::BYTES`], is that of five parts, each padded to a multiple of 64 bytes
/// so it starts on a cache line: Q (`SQ·DIM` scalars), K and V (`SKV·DIM` each), the attention
/// kernel's block state (`TQ·DIM + 2·KB·TQ`: running sums for a tile of `TQ` queries, and a
/// block of `KB` keys' scores and masks) and a projection panel (`TQ·DIM`), where `TQ` is
/// [`crate::kernels::TILE_QUERIES`] and `KB` is [`crate::kernels::KEY_BLOCK`] (32 and 64 on
/// x86-64, so `32·DIM + 4096` and `32·DIM`; 8 and 0 elsewhere). Keep one
/// wherever suits the program (in a struct it owns, in a `Box` from [`Scratch::new_boxed`], or,
/// since [`Scratch::new`] is a `const fn`, in a `static` behind the program's own mutex or
/// singleton). Its contents between calls do not matter.
///
/// Deliberately not `Copy`: it can be megabytes.
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct Scratch<const SQ: usize, const SKV: usize, const DIM: usize, T = f32> {
    q: Aligned<[[T; SQ]; DIM]>,
    k: Aligned<[[T; SKV]; DIM]>,
    v: Aligned<[[T; SKV]; DIM]>,
    work: Aligned<Work<T, DIM>>,
    pack: Aligned<[[T; PANEL_ROWS]; DIM]>,
}

/// A buffer starting on a 64-byte boundary (a cache line): the kernels' vector loads then
/// never straddle two lines, wherever the [`Scratch`] itself lives (stack, heap or `static`).
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Aligned<M>(pub(crate) M);

impl<const SQ: usize, const SKV: usize, const DIM: usize, T: Float> Scratch<SQ, SKV, DIM, T> {
    /// Size in bytes.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// Zeroed scratch, as a `const fn` (on the stack, use [`Scratch::new_boxed`] for large
    /// shapes).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            q: Aligned([[T::ZERO; SQ]; DIM]),
            k: Aligned([[T::ZERO; SKV]; DIM]),
            v: Aligned([[T::ZERO; SKV]; DIM]),
            work: Aligned(Work::new()),
            pack: Aligned([[T::ZERO; PANEL_ROWS]; DIM]),
        }
    }

    /// The buffers, borrowed for one call.
    pub(crate) fn buffers(&mut self) -> crate::layer::Buffers<'_, T, DIM> {
        crate::layer::Buffers {
            q: self.q.0.as_flattened_mut(),
            k: self.k.0.as_flattened_mut(),
            v: self.v.0.as_flattened_mut(),
            work: &mut self.work.0,
            pack: self.pack.0.as_flattened_mut(),
        }
    }

    /// The projected queries, keys and values, read-only.
    #[cfg(feature = "rayon")]
    pub(crate) fn qkv(&self) -> (&[T], &[T], &[T]) {
        (
            self.q.0.as_flattened(),
            self.k.0.as_flattened(),
            self.v.0.as_flattened(),
        )
    }

    /// Zeroed scratch allocated directly on the heap, never passing through the stack.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_boxed() -> std::boxed::Box<Self> {
        bytemuck::zeroed_box()
    }
}

impl<const SQ: usize, const SKV: usize, const DIM: usize, T: Float> Default
    for Scratch<SQ, SKV, DIM, T>
{
    fn default() -> Self {
        Self::new()
    }
}
