//! Structural mask patterns: which keys a query sees, computed from positions alone. The
//! kernels skip the key blocks a pattern hides; [`crate::Mask`] carries one as its structural
//! part (re-exported there).

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

impl Pattern {
    /// The half-open range `[lo, hi)` of keys this pattern lets query `i` (`< sq`) see among
    /// `skv` keys.
    ///
    /// ```
    /// use static_attention::{Alignment, Pattern};
    ///
    /// // 3 queries, 5 keys: bottom-right alignment puts query 0 at key position 2.
    /// assert_eq!(Pattern::Causal(Alignment::BottomRight).key_range(0, 3, 5), (0, 3));
    /// assert_eq!(Pattern::Causal(Alignment::TopLeft).key_range(0, 3, 5), (0, 1));
    /// let window = Pattern::SlidingWindow { window: 2, alignment: Alignment::TopLeft };
    /// assert_eq!(window.key_range(2, 3, 5), (1, 3)); // keys 1 and 2
    /// ```
    #[inline]
    #[must_use]
    pub const fn key_range(self, i: usize, sq: usize, skv: usize) -> (usize, usize) {
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
        match self {
            Pattern::Full => (0, skv),
            Pattern::Causal(a) => (0, clamp(end(i, a, sq, skv) + 1, skv)),
            Pattern::SlidingWindow { window, alignment } => {
                let last = end(i, alignment, sq, skv);
                let w = if window > isize::MAX as usize {
                    isize::MAX
                } else {
                    window as isize
                };
                let hi = clamp(last + 1, skv);
                let lo = clamp(last.saturating_sub(w).saturating_add(1), skv);
                if lo > hi { (hi, hi) } else { (lo, hi) }
            }
        }
    }
}
