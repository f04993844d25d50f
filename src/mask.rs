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
//! named [`Alignment`].
//!
//! ## Parts combine
//!
//! A mask has five parts, each optional: a [`Pattern`], an attend-where matrix, a block-where
//! matrix, a key-padding vector and an additive matrix. A key is used only when **every part
//! present allows it**, and the additive part then adds its entry to the score. Each `with_*`
//! method sets one part, replacing that part if it was already set; different parts never
//! replace each other. So `Mask::attend_where(&b).with_additive(&a)` uses the keys `b` allows,
//! with bias `a` (PyTorch adds a boolean `attn_mask` and a `key_padding_mask` the same way).
//!
//! ## The scalar type
//!
//! Only the additive part has a float type, so only it carries one: a boolean or structural
//! mask is a `Mask<'a, SQ, SKV>` (its last parameter is [`NoAdditive`]) and works with `f32` and
//! `f64` layers alike; [`Mask::with_additive`] turns it into a
//! `Mask<'a, SQ, SKV, &'a SMatrix<T, SQ, SKV>>`. The kernels are compiled separately for the two
//! cases, so a mask without an additive part costs no look-up at all.
//!
//! Rules (see [`crate::semantics`]):
//! - Additive masks are applied after scaling: `s = scale · q·k + m`. An entry of `−∞` masks the
//!   key out; so does a NaN entry (a documented choice: PyTorch would return NaN there). An
//!   entry of `+∞` is not a mask: like any infinite score it makes its row NaN, as in PyTorch.
//! - A query row whose keys are all masked gives a zero output row and an all-zero weight row,
//!   never NaN.
//! - A masked key is skipped, never multiplied by zero, so its values cannot reach the output
//!   even when they are NaN or infinite.

use nalgebra::SMatrix;

use crate::Float;
use crate::kernels::MaskView;

pub use crate::kernels::pattern::{Alignment, Pattern};
pub use crate::positions::Alibi;

/// The additive part of a mask that has none: the last type parameter of a boolean or
/// structural [`Mask`]. It works with every scalar type and compiles to nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoAdditive;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::NoAdditive {}
    impl<T, const SQ: usize, const SKV: usize> Sealed for &nalgebra::SMatrix<T, SQ, SKV> {}
}

/// The additive part of a [`Mask`] for scalar type `T`: either [`NoAdditive`] or a borrowed
/// `SMatrix<T, SQ, SKV>` added to the scaled scores. Sealed; the attention functions take any
/// `Mask<'_, SQ, SKV, A>` with `A: Additive<T, SQ, SKV>`.
pub trait Additive<T, const SQ: usize, const SKV: usize>: Copy + sealed::Sealed {
    /// `false` for [`NoAdditive`], known at compile time so the kernels drop the look-up.
    const PRESENT: bool;

    /// The entry for query `i` and key `j` (in range): `Some(bias)`, or `None` when it masks the
    /// key out (`−∞` or NaN).
    fn entry(&self, i: usize, j: usize) -> Option<T>;

    /// The matrix, column-major, when there is one.
    fn matrix(&self) -> Option<&SMatrix<T, SQ, SKV>>;
}

impl<T: Float, const SQ: usize, const SKV: usize> Additive<T, SQ, SKV> for NoAdditive {
    const PRESENT: bool = false;

    #[inline(always)]
    fn entry(&self, _: usize, _: usize) -> Option<T> {
        Some(T::ZERO)
    }

    #[inline(always)]
    fn matrix(&self) -> Option<&SMatrix<T, SQ, SKV>> {
        None
    }
}

impl<T: Float, const SQ: usize, const SKV: usize> Additive<T, SQ, SKV> for &SMatrix<T, SQ, SKV> {
    const PRESENT: bool = true;

    #[inline(always)]
    fn entry(&self, i: usize, j: usize) -> Option<T> {
        let a = self[(i, j)];
        // NaN fails the comparison, so NaN and −∞ both mask the key.
        (a > T::NEG_INFINITY).then_some(a)
    }

    #[inline(always)]
    fn matrix(&self) -> Option<&SMatrix<T, SQ, SKV>> {
        Some(self)
    }
}

/// A mask for `SQ` queries attending to `SKV` keys: up to five parts (see the [module
/// docs](self)), all of which must allow a key for it to be used.
///
/// `A` is the additive part: [`NoAdditive`] (the default) or `&SMatrix<T, SQ, SKV>`.
///
/// ```
/// use nalgebra::SMatrix;
/// use static_attention::{Alignment, Mask};
///
/// let pad = [false, false, true]; // the third token is padding
/// let mask = Mask::<3, 3>::causal(Alignment::TopLeft).with_key_is_padding(&pad);
/// assert!(mask.allows(1, 0) && mask.allows(1, 1));
/// assert!(!mask.allows(1, 2) && !mask.allows(2, 2));
///
/// // Parts combine: a boolean matrix and an additive bias together.
/// let allowed = SMatrix::<bool, 3, 3>::from_fn(|i, j| i != j);
/// let bias = SMatrix::<f32, 3, 3>::repeat(0.5);
/// let mask = Mask::attend_where(&allowed).with_additive(&bias);
/// assert_eq!(mask.entry(0, 0), None); // the boolean part blocks it
/// assert_eq!(mask.entry(0, 1), Some(0.5)); // allowed, with the bias
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a, const SQ: usize, const SKV: usize, A = NoAdditive> {
    pattern: Pattern,
    attend_where: Option<&'a SMatrix<bool, SQ, SKV>>,
    block_where: Option<&'a SMatrix<bool, SQ, SKV>>,
    key_padding: Option<&'a [bool; SKV]>,
    additive: A,
    alibi: Option<Alibi>,
}

impl<const SQ: usize, const SKV: usize> Default for Mask<'_, SQ, SKV> {
    fn default() -> Self {
        Self::none()
    }
}

impl<'a, const SQ: usize, const SKV: usize> Mask<'a, SQ, SKV> {
    /// No masking: every query sees every key.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            pattern: Pattern::Full,
            attend_where: None,
            block_where: None,
            key_padding: None,
            additive: NoAdditive,
            alibi: None,
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
        Self::none().with_attend_where(allowed)
    }

    /// Boolean mask where `true` means the key is **masked out** (`nn.MultiheadAttention`
    /// convention).
    #[must_use]
    pub const fn block_where(blocked: &'a SMatrix<bool, SQ, SKV>) -> Self {
        Self::none().with_block_where(blocked)
    }

    /// Key-padding mask: `true` marks a padding key that no query attends to
    /// (`key_padding_mask` of `nn.MultiheadAttention`).
    #[must_use]
    pub const fn key_is_padding(is_padding: &'a [bool; SKV]) -> Self {
        Self::none().with_key_is_padding(is_padding)
    }

    /// Additive float mask, added to the scaled scores; `−∞` (or NaN) masks a key out.
    #[must_use]
    pub const fn additive<T>(
        bias: &'a SMatrix<T, SQ, SKV>,
    ) -> Mask<'a, SQ, SKV, &'a SMatrix<T, SQ, SKV>> {
        Self::none().with_additive(bias)
    }
}

impl<'a, const SQ: usize, const SKV: usize, A> Mask<'a, SQ, SKV, A> {
    /// Sets the structural pattern, replacing an earlier one (a mask has one pattern; two
    /// patterns are not intersected). The other parts are kept.
    #[must_use]
    pub const fn with_pattern(mut self, pattern: Pattern) -> Self {
        self.pattern = pattern;
        self
    }

    /// Sets the attend-where matrix (`true` = may attend), replacing an earlier attend-where
    /// matrix. It combines with every other part.
    #[must_use]
    pub const fn with_attend_where(mut self, allowed: &'a SMatrix<bool, SQ, SKV>) -> Self {
        self.attend_where = Some(allowed);
        self
    }

    /// Sets the block-where matrix (`true` = masked out), replacing an earlier block-where
    /// matrix. It combines with every other part.
    #[must_use]
    pub const fn with_block_where(mut self, blocked: &'a SMatrix<bool, SQ, SKV>) -> Self {
        self.block_where = Some(blocked);
        self
    }

    /// Sets the key-padding vector (`true` = padding, ignored), replacing an earlier one. It
    /// combines with every other part.
    #[must_use]
    pub const fn with_key_is_padding(mut self, is_padding: &'a [bool; SKV]) -> Self {
        self.key_padding = Some(is_padding);
        self
    }

    /// Sets the additive matrix (added to the scaled scores; `−∞` or NaN masks the key),
    /// replacing an earlier additive matrix. The boolean parts are kept and still apply.
    #[must_use]
    pub const fn with_additive<T>(
        self,
        bias: &'a SMatrix<T, SQ, SKV>,
    ) -> Mask<'a, SQ, SKV, &'a SMatrix<T, SQ, SKV>>
    where
        A: Copy,
    {
        let Mask {
            pattern,
            attend_where,
            block_where,
            key_padding,
            additive: _,
            alibi,
        } = self;
        Mask {
            pattern,
            attend_where,
            block_where,
            key_padding,
            additive: bias,
            alibi,
        }
    }

    /// Adds ALiBi with the standard per-head slopes ([`Alibi::PerHead`]), replacing an earlier
    /// ALiBi part. It combines with every other part; use it with a causal pattern, as ALiBi
    /// models do.
    ///
    /// ```
    /// use static_attention::{Alignment, Mask, MultiHead, SMatrix};
    ///
    /// let layer = MultiHead::<5, 8, 2>::from_seed(3);
    /// let x = SMatrix::<f32, 5, 8>::from_fn(|i, j| ((i + 2 * j) as f32).sin());
    /// let y = layer.forward(&x, &Mask::causal(Alignment::TopLeft).with_alibi());
    /// assert!(y.iter().all(|v| v.is_finite()));
    /// ```
    #[must_use]
    pub const fn with_alibi(mut self) -> Self {
        self.alibi = Some(Alibi::PerHead);
        self
    }

    /// Adds ALiBi with one slope `m` for every head.
    #[must_use]
    pub const fn with_alibi_slope(mut self, m: f64) -> Self {
        self.alibi = Some(Alibi::Slope(m));
        self
    }

    /// The ALiBi part, if set.
    #[must_use]
    pub const fn alibi(&self) -> Option<Alibi> {
        self.alibi
    }

    /// The structural pattern.
    #[must_use]
    pub const fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The attend-where matrix, if set.
    #[must_use]
    pub const fn attend_where_matrix(&self) -> Option<&'a SMatrix<bool, SQ, SKV>> {
        self.attend_where
    }

    /// The block-where matrix, if set.
    #[must_use]
    pub const fn block_where_matrix(&self) -> Option<&'a SMatrix<bool, SQ, SKV>> {
        self.block_where
    }

    /// The key-padding vector, if set.
    #[must_use]
    pub const fn key_padding(&self) -> Option<&'a [bool; SKV]> {
        self.key_padding
    }

    /// The additive part.
    #[must_use]
    pub const fn additive_part(&self) -> &A {
        &self.additive
    }

    /// Whether the boolean parts (matrices and padding) let query `i` use key `j`, which must
    /// be in range.
    #[inline(always)]
    pub(crate) fn booleans_allow(&self, i: usize, j: usize) -> bool {
        if let Some(pad) = self.key_padding
            && pad[j]
        {
            return false;
        }
        if let Some(m) = self.attend_where
            && !m[(i, j)]
        {
            return false;
        }
        if let Some(m) = self.block_where
            && m[(i, j)]
        {
            return false;
        }
        true
    }

    /// The entry for a key already known to be inside the pattern's range: `None` if a
    /// boolean part or the additive part masks it, otherwise the additive bias (0 without one).
    #[inline(always)]
    pub(crate) fn dense_entry<T>(&self, i: usize, j: usize) -> Option<T>
    where
        A: Additive<T, SQ, SKV>,
    {
        if self.booleans_allow(i, j) {
            self.additive.entry(i, j)
        } else {
            None
        }
    }

    /// Whether query `i` may attend to key `j`, and the additive bias if so (`0` without an
    /// additive part). Returns `None` for a masked key; out-of-range positions are masked.
    /// The ALiBi part depends on the head and is not included: see [`Mask::head_entry`].
    ///
    /// For a mask without an additive part, name the scalar type: `mask.entry::<f32>(i, j)`.
    #[inline]
    #[must_use]
    pub fn entry<T>(&self, i: usize, j: usize) -> Option<T>
    where
        A: Additive<T, SQ, SKV>,
    {
        if i >= SQ || j >= SKV {
            return None;
        }
        let (lo, hi) = self.key_range(i);
        if j < lo || j >= hi {
            return None;
        }
        self.dense_entry(i, j)
    }

    /// [`Mask::entry`] for head `head` of `heads`, the ALiBi bias included:
    /// `additive + m·(j − p)` with `m` the head's slope rounded to `T` and `p = i + SKV − SQ`
    /// (the bias the kernels add, bit for bit).
    #[must_use]
    pub fn head_entry<T: Float>(&self, i: usize, j: usize, head: usize, heads: usize) -> Option<T>
    where
        A: Additive<T, SQ, SKV>,
    {
        let bias = self.entry::<T>(i, j)?;
        Some(match self.alibi {
            None => bias,
            Some(a) => {
                let d = j as i64 - (i as i64 + SKV as i64 - SQ as i64);
                bias + T::of(a.slope(head, heads)) * T::of(d as f64)
            }
        })
    }

    /// The half-open range `[lo, hi)` of keys the pattern lets query `i` see (before the
    /// matrix and padding parts are applied). A query index `i >= SQ` gets the empty range.
    #[inline]
    #[must_use]
    pub const fn key_range(&self, i: usize) -> (usize, usize) {
        if i >= SQ {
            return (0, 0);
        }
        self.pattern.key_range(i, SQ, SKV)
    }

    /// The mask lowered to slices for the kernels (ALiBi as one head of one: the layers set
    /// each head's slope).
    pub(crate) fn view<T: Float>(&self) -> MaskView<'_, T>
    where
        A: Additive<T, SQ, SKV>,
    {
        MaskView {
            pattern: self.pattern,
            sq: SQ,
            skv: SKV,
            q_offset: 0,
            sq_total: SQ,
            attend: self.attend_where.map(|m| m.as_slice()),
            block: self.block_where.map(|m| m.as_slice()),
            pad: self.key_padding.map(|p| &p[..]),
            additive: self.additive.matrix().map(|m| m.as_slice()),
            alibi: None,
        }
        .with_alibi(self.alibi.map(|a| a.slope(0, 1)), 0)
    }
}

impl<const SQ: usize, const SKV: usize> Mask<'_, SQ, SKV> {
    /// Whether query `i` may attend to key `j` (a mask without an additive part).
    #[inline]
    #[must_use]
    pub fn allows(&self, i: usize, j: usize) -> bool {
        self.entry::<f64>(i, j).is_some()
    }
}

impl<T: Float, const SQ: usize, const SKV: usize> Mask<'_, SQ, SKV, &SMatrix<T, SQ, SKV>> {
    /// Whether query `i` may attend to key `j` (every part, the additive one included).
    #[inline]
    #[must_use]
    pub fn allows(&self, i: usize, j: usize) -> bool {
        self.entry::<T>(i, j).is_some()
    }
}
