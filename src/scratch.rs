//! Caller-owned buffers: the working memory of a forward pass ([`Scratch`]) and the attention
//! weights a caller asks for ([`AttentionWeights`]).
//!
//! Both are plain data. Each has a `const fn` constructor (it can sit in a `static` or a struct
//! the program owns); with `std`, [`crate::heap::zeroed`] allocates either zeroed directly on
//! the heap, never passing it through the stack.

use nalgebra::SMatrix;

use crate::kernels::{PANEL_ROWS, Work};
use crate::{Float, zero_matrix};

/// Per-head post-softmax attention weights: `HEADS` matrices of `SQ × SKV`.
///
/// Row `i` of head `h` is the distribution query `i` of head `h` puts over the keys; it sums to
/// 1, or is all zeros when every key was masked. [`AttentionWeights::average`] is PyTorch's
/// `average_attn_weights=True` result.
///
/// Its size is [`AttentionWeights::BYTES`], `HEADS · SQ · SKV` scalars. For large shapes keep it
/// on the heap ([`crate::heap::zeroed`]) and pass it to the caller-owned entry points (`attend`,
/// `forward_batch_into`). Deliberately not `Copy`.
///
/// ```
/// use static_attention::{AttentionWeights, heap};
///
/// // 8 heads of 512 × 512 weights is 8 MiB: allocated zeroed on the heap directly.
/// let w: Box<AttentionWeights<512, 512, 8>> = heap::zeroed();
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

    /// Every head's matrix, one after the other, as one slice (head `h` at `h·SQ·SKV`).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(&mut self.heads[..])
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

/// Working memory for one attention call: `SQ` queries of `DIM` features attending to `SKV`
/// keys and values of `KV_DIM` features (`KV_DIM = DIM` unless named: a grouped-query layer's
/// scratch is `Scratch<SQ, SKV, Q_DIM, T, KV_DIM>`). Every caller-owned entry point of
/// [`crate::MultiHead`], [`crate::SelfAttention`] and [`crate::GroupedQuery`] takes one, decoding
/// included.
///
/// Its size, [`Scratch::BYTES`], is that of five parts, each padded to a multiple of 64 bytes
/// so it starts on a cache line: the projected queries (`SQ·DIM` scalars, which become the
/// concatenated heads), keys and values (`SKV·KV_DIM` each), the attention kernel's block
/// state (`TQ·DIM + 2·KB·TQ`: running sums for a tile of `TQ` queries, and a block of `KB`
/// keys' scores and masks) and a projection panel (`TQ·DIM`), where `TQ` is
/// [`crate::kernels::TILE_QUERIES`] and `KB` is [`crate::kernels::KEY_BLOCK`] (32 and 64 on
/// x86-64, so `32·DIM + 4096` and `32·DIM`; 8 and 64 on aarch64, 8 and 0 elsewhere). Keep one
/// wherever suits the program (in a struct it owns, on the heap from [`crate::heap::zeroed`],
/// or, since [`Scratch::new`] is a `const fn`, in a `static` behind the program's own mutex or
/// singleton). Its contents between calls do not matter.
///
/// Deliberately not `Copy`: it can be megabytes.
///
/// ```
/// use static_attention::{Mask, MultiHead, SMatrix, Scratch};
///
/// let layer = MultiHead::<4, 8, 2>::from_seed(1);
/// let x = SMatrix::<f32, 4, 8>::repeat(0.5);
/// let mut scratch = Scratch::new(); // Scratch<4, 4, 8>, inferred from the call
/// let mut out = SMatrix::zeros();
/// layer.forward_into(&x, &Mask::none(), &mut scratch, &mut out);
/// assert_eq!(out, layer.forward(&x, &Mask::none()));
/// ```
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct Scratch<
    const SQ: usize,
    const SKV: usize,
    const DIM: usize,
    T = f32,
    const KV_DIM: usize = DIM,
> {
    q: Aligned<[[T; SQ]; DIM]>,
    k: Aligned<[[T; SKV]; KV_DIM]>,
    v: Aligned<[[T; SKV]; KV_DIM]>,
    work: Aligned<Work<T, DIM>>,
    pack: Aligned<[[T; PANEL_ROWS]; DIM]>,
}

/// A buffer starting on a 64-byte boundary (a cache line): the kernels' vector loads then
/// never straddle two lines, wherever the [`Scratch`] itself lives (stack, heap or `static`).
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Aligned<M>(pub(crate) M);

impl<const SQ: usize, const SKV: usize, const DIM: usize, T: Float, const KV_DIM: usize>
    Scratch<SQ, SKV, DIM, T, KV_DIM>
{
    /// Size in bytes.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// Zeroed scratch, as a `const fn` (on the stack; use [`crate::heap::zeroed`] for large
    /// shapes).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            q: Aligned([[T::ZERO; SQ]; DIM]),
            k: Aligned([[T::ZERO; SKV]; KV_DIM]),
            v: Aligned([[T::ZERO; SKV]; KV_DIM]),
            work: Aligned(Work::new()),
            pack: Aligned([[T::ZERO; PANEL_ROWS]; DIM]),
        }
    }

    /// The buffers, borrowed for one call.
    pub(crate) fn buffers(&mut self) -> crate::heads::Buffers<'_, T> {
        crate::heads::Buffers {
            q: self.q.0.as_flattened_mut(),
            k: self.k.0.as_flattened_mut(),
            v: self.v.0.as_flattened_mut(),
            work: self.work.0.parts(),
            pack: self.pack.0.as_flattened_mut(),
        }
    }
}

impl<const SQ: usize, const SKV: usize, const DIM: usize, T: Float, const KV_DIM: usize> Default
    for Scratch<SQ, SKV, DIM, T, KV_DIM>
{
    fn default() -> Self {
        Self::new()
    }
}
