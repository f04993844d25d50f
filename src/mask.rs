//! Attention masks: which keys each query may see, and additive score biases.
//!
//! PyTorch uses opposite boolean conventions in two places (`nn.MultiheadAttention`: `true` =
//! masked out; `scaled_dot_product_attention`: `true` = may attend). Every boolean input here
//! says its meaning in its name, so no reader has to guess:
//!
//! | constructor | input | meaning of `true` | PyTorch equivalent |
//! |---|---|---|---|
//! | [`Mask::attend_where`] | `SMatrix<bool, SQ, SKV>` | query may attend to key | SDPA `attn_mask` (bool) |
//! | [`Mask::block_where`] | `SMatrix<bool, SQ, SKV>` | key is masked out | MHA `attn_mask` (bool) |
//! | [`Mask::key_is_padding`] | `[bool; SKV]` | key is padding, ignored by every query | MHA `key_padding_mask` |
//! | [`Mask::additive`] | `SMatrix<T, SQ, SKV>` | (float) added to the scaled score | float `attn_mask` |
//!
//! Structural masks need no matrix: [`Mask::causal`] and [`Mask::sliding_window`], each with a
//! named [`Alignment`]. A mask has three parts, one of each kind: a [`Pattern`], a
//! [`MatrixMask`] and a key-padding vector. A key is used only when every part allows it. The
//! `with_*` methods set one part, replacing what that part held.
//!
//! Rules (SPEC.md 5–7, 13):
//! - Additive masks are applied after scaling: `s = scale · q·k + m`. An entry of `−∞` masks the
//!   key out; so does a NaN entry (a documented choice: PyTorch would return NaN there). An
//!   entry of `+∞` is not a mask: like any infinite score it makes its row NaN, as in PyTorch.
//! - A query row whose keys are all masked gives a zero output row and an all-zero weight row,
//!   never NaN.
//! - A masked key is skipped, never multiplied by zero, so its values cannot reach the output
//!   even when they are NaN or infinite.

use nalgebra::SMatrix;

use crate::Float;

/// How a causal or sliding-window mask lines queries up with keys when the query length `SQ`
/// and key length `SKV` differ. For `SQ == SKV` both give the usual lower-triangular mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alignment {
    /// Query `i` sees keys `j ≤ i` (PyTorch `is_causal=True`, `torch.tril(ones(L, S))`).
    TopLeft,
    /// Query `i` sees keys `j ≤ i + SKV − SQ`: the last query sees every key. This is the
    /// FlashAttention convention and what KV-cache decoding needs (the new queries are the
    /// newest positions).
    BottomRight,
}

/// The structural part of a mask: a pattern computed from positions, needing no matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Every key is visible.
    Full,
    /// Causal: query `i` sees keys up to its own position under the given alignment.
    Causal(Alignment),
    /// Sliding window of `window` keys including the query's own position `p`: keys
    /// `p − window < j ≤ p` (Mistral and Hugging Face convention; `window = 1` sees only itself,
    /// `window = 0` sees nothing), with `p` placed by the alignment as for [`Pattern::Causal`].
    SlidingWindow {
        /// Number of keys a query sees, its own position included.
        window: usize,
        /// How queries line up with keys.
        alignment: Alignment,
    },
}

/// The matrix part of a mask, with its meaning in the variant name.
#[derive(Clone, Copy, Debug)]
pub enum MatrixMask<'a, T, const SQ: usize, const SKV: usize> {
    /// No matrix.
    None,
    /// `true` = the query may attend to the key (PyTorch SDPA boolean `attn_mask`).
    AttendWhereTrue(&'a SMatrix<bool, SQ, SKV>),
    /// `true` = the key is masked out (PyTorch `nn.MultiheadAttention` boolean `attn_mask`).
    BlockWhereTrue(&'a SMatrix<bool, SQ, SKV>),
    /// Added to the scaled score; `−∞` or NaN masks the key out.
    Additive(&'a SMatrix<T, SQ, SKV>),
}

/// A mask for `SQ` queries attending to `SKV` keys: a [`Pattern`], a [`MatrixMask`] and an
/// optional key-padding vector, all of which must allow a key for it to be used.
///
/// ```
/// use nalgebra::SMatrix;
/// use static_attention::{Alignment, Mask};
///
/// let pad = [false, false, true]; // the third token is padding
/// let mask = Mask::<f32, 3, 3>::causal(Alignment::TopLeft).with_key_is_padding(&pad);
/// assert!(mask.allows(1, 0) && mask.allows(1, 1));
/// assert!(!mask.allows(1, 2) && !mask.allows(2, 2));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a, T, const SQ: usize, const SKV: usize> {
    pattern: Pattern,
    matrix: MatrixMask<'a, T, SQ, SKV>,
    key_padding: Option<&'a [bool; SKV]>,
}

impl<T, const SQ: usize, const SKV: usize> Default for Mask<'_, T, SQ, SKV> {
    fn default() -> Self {
        Self::none()
    }
}

impl<'a, T: Float, const SQ: usize, const SKV: usize> Mask<'a, T, SQ, SKV> {
    /// Whether query `i` may attend to key `j`, and the additive bias if so.
    ///
    /// Returns `None` for a masked key. Out-of-range positions are masked.
    #[inline]
    #[must_use]
    pub fn entry(&self, i: usize, j: usize) -> Option<T> {
        if i >= SQ || j >= SKV {
            return None;
        }
        let (lo, hi) = self.key_range(i);
        if j < lo || j >= hi {
            return None;
        }
        self.dense_entry(i, j)
    }

    /// Whether query `i` may attend to key `j`.
    #[inline]
    #[must_use]
    pub fn allows(&self, i: usize, j: usize) -> bool {
        self.entry(i, j).is_some()
    }

    /// The entry for a key already known to be inside the pattern's range.
    #[inline]
    pub(crate) fn dense_entry(&self, i: usize, j: usize) -> Option<T> {
        if let Some(pad) = self.key_padding
            && pad[j]
        {
            return None;
        }
        match self.matrix {
            MatrixMask::None => Some(T::ZERO),
            MatrixMask::AttendWhereTrue(m) => m[(i, j)].then_some(T::ZERO),
            MatrixMask::BlockWhereTrue(m) => (!m[(i, j)]).then_some(T::ZERO),
            MatrixMask::Additive(m) => {
                let a = m[(i, j)];
                // NaN fails the comparison, so NaN and −∞ both mask the key.
                (a > T::NEG_INFINITY).then_some(a)
            }
        }
    }
}

impl<'a, T, const SQ: usize, const SKV: usize> Mask<'a, T, SQ, SKV> {
    /// No masking: every query sees every key.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            pattern: Pattern::Full,
            matrix: MatrixMask::None,
            key_padding: None,
        }
    }

    /// Causal mask with the named alignment (see [`Alignment`]).
    #[must_use]
    pub const fn causal(alignment: Alignment) -> Self {
        Self::none().with_pattern(Pattern::Causal(alignment))
    }

    /// Sliding-window causal mask: each query sees the `window` keys ending at its own
    /// position, `p − window < j ≤ p`, itself included (Mistral and Hugging Face convention;
    /// `window = 1` sees only itself, `0` sees nothing). The query's position `p` on the key
    /// axis is `i` for [`Alignment::TopLeft`] and `i + SKV − SQ` for
    /// [`Alignment::BottomRight`] (KV-cache decoding); the two agree when `SQ == SKV`.
    #[must_use]
    pub const fn sliding_window(window: usize, alignment: Alignment) -> Self {
        Self::none().with_pattern(Pattern::SlidingWindow { window, alignment })
    }

    /// Boolean mask where `true` means the query **may attend** to the key (SDPA convention).
    #[must_use]
    pub const fn attend_where(allowed: &'a SMatrix<bool, SQ, SKV>) -> Self {
        Self::none().with_matrix(MatrixMask::AttendWhereTrue(allowed))
    }

    /// Boolean mask where `true` means the key is **masked out** (`nn.MultiheadAttention`
    /// convention).
    #[must_use]
    pub const fn block_where(blocked: &'a SMatrix<bool, SQ, SKV>) -> Self {
        Self::none().with_matrix(MatrixMask::BlockWhereTrue(blocked))
    }

    /// Additive float mask, added to the scaled scores; `−∞` (or NaN) masks a key out.
    #[must_use]
    pub const fn additive(bias: &'a SMatrix<T, SQ, SKV>) -> Self {
        Self::none().with_matrix(MatrixMask::Additive(bias))
    }

    /// Key-padding mask: `true` marks a padding key that no query attends to
    /// (`key_padding_mask` of `nn.MultiheadAttention`).
    #[must_use]
    pub const fn key_is_padding(is_padding: &'a [bool; SKV]) -> Self {
        Self::none().with_key_is_padding(is_padding)
    }

    /// Replaces the structural pattern (a mask has one; this does not intersect two).
    #[must_use]
    pub const fn with_pattern(mut self, pattern: Pattern) -> Self {
        self.pattern = pattern;
        self
    }

    /// Replaces the matrix part (a mask has at most one matrix).
    #[must_use]
    pub const fn with_matrix(mut self, matrix: MatrixMask<'a, T, SQ, SKV>) -> Self {
        self.matrix = matrix;
        self
    }

    /// Sets the key-padding vector (`true` = padding, ignored), replacing any earlier one. It
    /// combines with the pattern and the matrix: a key is used only if all three allow it.
    #[must_use]
    pub const fn with_key_is_padding(mut self, is_padding: &'a [bool; SKV]) -> Self {
        self.key_padding = Some(is_padding);
        self
    }

    /// The structural pattern.
    #[must_use]
    pub const fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Whether some part of the mask must be looked up per (query, key) pair.
    #[inline]
    pub(crate) const fn is_dense(&self) -> bool {
        self.key_padding.is_some() || !matches!(self.matrix, MatrixMask::None)
    }

    /// The half-open range `[lo, hi)` of keys the pattern lets query `i` see (before the
    /// matrix and padding parts are applied). A query index `i >= SQ` gets the empty range.
    #[inline]
    #[must_use]
    pub const fn key_range(&self, i: usize) -> (usize, usize) {
        if i >= SQ {
            return (0, 0);
        }
        // Position of query i on the key axis under each alignment, as a signed offset.
        const fn end(i: usize, alignment: Alignment, sq: usize, skv: usize) -> isize {
            match alignment {
                Alignment::TopLeft => i as isize,
                Alignment::BottomRight => i as isize + skv as isize - sq as isize,
            }
        }
        const fn clamp(x: isize, n: usize) -> usize {
            if x < 0 {
                0
            } else if x as usize > n {
                n
            } else {
                x as usize
            }
        }
        match self.pattern {
            Pattern::Full => (0, SKV),
            Pattern::Causal(a) => (0, clamp(end(i, a, SQ, SKV) + 1, SKV)),
            Pattern::SlidingWindow { window, alignment } => {
                let last = end(i, alignment, SQ, SKV);
                let w = if window > isize::MAX as usize {
                    isize::MAX
                } else {
                    window as isize
                };
                let hi = clamp(last + 1, SKV);
                let lo = clamp(last.saturating_sub(w).saturating_add(1), SKV);
                if lo > hi { (hi, hi) } else { (lo, hi) }
            }
        }
    }
}
