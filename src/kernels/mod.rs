//! The kernel layer: the inner loops every forward pass runs, behind one dispatch point.
//!
//! Each kernel works on plain column-major slices (nalgebra's storage order), so the public
//! types hand their storage straight through with no copies:
//!
//! - `linear`: `out = x · Wᵀ + b` for a whole sequence (the Q/K/V and output projections);
//! - `attention`: fused streaming attention for one head: scores, online softmax and the
//!   weighted sum of values in one pass over the keys, never holding more than a block of
//!   scores, so no `SQ × SKV` matrix exists;
//! - `attention_with_weights`: the same result plus the post-softmax weights, written into a
//!   caller-provided `SQ × SKV` matrix (only when the caller asked for weights).
//!
//! Which implementation runs is decided in one place, [`selected`]. Today the portable
//! `scalar` kernel is the only one; instruction-set kernels slot in beside it as further
//! [`Kernel`] variants with the same functions, chosen by [`detect`]. The `force-scalar`
//! feature pins the scalar kernel so the whole test suite can run against it.

pub(crate) mod scalar;

use crate::Float;
use crate::mask::{Additive, Mask};

/// Rows of queries a kernel processes together (the width of the streaming block).
pub(crate) const BLOCK_Q: usize = 8;

/// An attention kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Portable Rust loops; the reference every other kernel is tested against.
    Scalar,
}

impl Kernel {
    /// A short name for reports and benchmarks.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
        }
    }
}

/// The best kernel this build and CPU support. With `force-scalar` it is always
/// [`Kernel::Scalar`].
#[must_use]
pub fn detect() -> Kernel {
    Kernel::Scalar
}

/// The kernel the forward passes use: [`detect`]'s choice.
#[inline]
#[must_use]
pub fn selected() -> Kernel {
    detect()
}

/// Per-call working memory of the streaming kernel: one block of queries' running softmax
/// state and output accumulators. `D` is the largest head width it serves.
#[derive(Clone, Copy, Debug, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct Work<T, const D: usize> {
    /// Running output sums, `BLOCK_Q` rows per value column (column `e` at `e * BLOCK_Q`).
    pub(crate) acc: [[T; BLOCK_Q]; D],
    /// Running maximum score per row.
    pub(crate) max: [T; BLOCK_Q],
    /// Running softmax denominator per row.
    pub(crate) sum: [T; BLOCK_Q],
}

impl<T: Float, const D: usize> Work<T, D> {
    /// Zeroed working memory.
    #[must_use]
    pub(crate) const fn new() -> Self {
        Self {
            acc: [[T::ZERO; BLOCK_Q]; D],
            max: [T::ZERO; BLOCK_Q],
            sum: [T::ZERO; BLOCK_Q],
        }
    }
}

impl<T: Float, const D: usize> Default for Work<T, D> {
    fn default() -> Self {
        Self::new()
    }
}

/// Shape of one head's attention problem: `sq` queries of width `dk`, `skv` keys and values of
/// widths `dk` and `dv`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub sq: usize,
    pub skv: usize,
    pub dk: usize,
    pub dv: usize,
}

/// `out[s × dout] = x[s × din] · Wᵀ + b`, all column-major; `w_t` is `Wᵀ` column-major, which is
/// PyTorch's row-major `weight[dout][din]`.
#[inline]
pub(crate) fn linear<T: Float>(
    x: &[T],
    s: usize,
    din: usize,
    w_t: &[T],
    dout: usize,
    bias: &[T],
    out: &mut [T],
) {
    match selected() {
        Kernel::Scalar => scalar::linear(x, s, din, w_t, dout, bias, out),
    }
}

/// Streaming attention for one head: `out[sq × dv] = softmax(scale·q·kᵀ + mask) · v`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<T, A, const SQ: usize, const SKV: usize, const D: usize>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &Mask<'_, SQ, SKV, A>,
    out: &mut [T],
    work: &mut Work<T, D>,
) where
    T: Float,
    A: Additive<T, SQ, SKV>,
{
    let kernel = selected();
    let run = |vscale: T, out: &mut [T], work: &mut Work<T, D>| match kernel {
        Kernel::Scalar => scalar::attention(q, k, v, dims, scale, mask, out, work, vscale),
    };
    run(T::ONE, out, work);
    // The running sums Σ p·v are bounded by SKV · max|v| (every p ≤ 1), so they can overflow
    // only when some value exceeds T::MAX / SKV. Then the pass is repeated with the values
    // scaled by a power of two (exact), and the output scaled back after the division by the
    // softmax denominator. Ordinary inputs pay one finiteness check of the output.
    let n_out = dims.sq * dims.dv;
    if out[..n_out].iter().all(|x| x.is_finite_()) {
        return;
    }
    if let Some(vscale) = overflow_rescale(&v[..dims.skv * dims.dv], dims.skv) {
        run(vscale, out, work);
    }
}

/// The power of two `2^−k` (`2^k > SKV`) that keeps `Σ p·v` finite, if some finite value is
/// large enough for the unscaled sum to overflow; `None` otherwise (a non-finite output then
/// comes from non-finite inputs and is what the rules ask for).
fn overflow_rescale<T: Float>(v: &[T], skv: usize) -> Option<T> {
    let limit = T::MAX.to_f64() / (skv as f64 + 1.0);
    let big = v
        .iter()
        .any(|&x| x.is_finite_() && x.abs_().to_f64() > limit);
    if !big {
        return None;
    }
    let k = usize::BITS - skv.leading_zeros() + 1;
    Some(T::of(crate::float::math::powi2(-(k as i32))))
}

/// Attention for one head that also writes the post-softmax weights (`sq × skv`, column-major).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with_weights<T, A, const SQ: usize, const SKV: usize>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &Mask<'_, SQ, SKV, A>,
    out: &mut [T],
    weights: &mut [T],
) where
    T: Float,
    A: Additive<T, SQ, SKV>,
{
    match selected() {
        Kernel::Scalar => scalar::attention_with_weights(q, k, v, dims, scale, mask, out, weights),
    }
}
