//! Positions: the paper's sinusoidal encoding, rotary embeddings (RoPE) and ALiBi slopes.
//!
//! - [`sinusoidal`]: `PE(pos, 2i) = sin(pos / 10000^(2i/DIM))`, `PE(pos, 2i+1) = cos(…)`, added
//!   to token embeddings before the first layer (Vaswani et al. 2017).
//! - [`Rope`]: rotary embeddings applied to queries and keys per head,
//!   `θ_i = base^(−2i/HEAD_DIM)` for `i < HEAD_DIM/2`, in both pairings
//!   ([`RopeStyle::Interleaved`], GPT-J; [`RopeStyle::RotateHalf`], GPT-NeoX and Hugging Face
//!   Llama). The cos/sin table is built once, for `MAX_POS` positions, with no `std`.
//! - [`alibi_slope`]: ALiBi's per-head slope `m_h` (Press et al. 2022), for any head count.
//!   The bias `−m_h·(i − j)` itself is a mask part ([`crate::Mask::with_alibi`]) computed
//!   inside the attention kernel, with no `SQ × SKV` buffer.
//!
//! Angles and slopes are computed in `f64` and rounded once to `T`.

use nalgebra::SMatrix;

use crate::Float;
use crate::kernels::math;

/// The paper's sinusoidal position encoding for positions `0..SEQ`:
/// `PE(pos, 2i) = sin(pos / 10000^(2i/DIM))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i/DIM))`.
/// Add it to the embeddings of a sequence; for positions further on, see
/// [`sinusoidal_into`].
///
/// ```
/// use static_attention::positions::sinusoidal;
///
/// let pe = sinusoidal::<4, 6, f32>();
/// assert_eq!(pe[(0, 0)], 0.0); // sin 0
/// assert_eq!(pe[(0, 1)], 1.0); // cos 0
/// assert!((pe[(1, 0)] - 1f32.sin()).abs() < 1e-7);
/// ```
#[must_use]
pub fn sinusoidal<const SEQ: usize, const DIM: usize, T: Float>() -> SMatrix<T, SEQ, DIM> {
    let mut pe = crate::zero_matrix();
    sinusoidal_into(0, &mut pe);
    pe
}

/// [`sinusoidal`] for positions `first .. first + SEQ`, written into `pe` (row `t` is position
/// `first + t`).
pub fn sinusoidal_into<const SEQ: usize, const DIM: usize, T: Float>(
    first: usize,
    pe: &mut SMatrix<T, SEQ, DIM>,
) {
    for c in 0..DIM {
        let i2 = (c / 2 * 2) as f64;
        let inv = math::pow(10_000.0, -i2 / DIM as f64);
        for t in 0..SEQ {
            let angle = (first + t) as f64 * inv;
            pe[(t, c)] = T::of(if c % 2 == 0 {
                math::sin(angle)
            } else {
                math::cos(angle)
            });
        }
    }
}

/// ALiBi's slope for head `head` of `heads` (the ALiBi paper's `get_slopes`): for a power-of-two `heads = n`, `m_h = 2^(−8(h+1)/n)`; otherwise, with
/// `p = 2^⌊log2 n⌋`, the `p` slopes for `p` heads followed by every other slope
/// (`2^(−4(2j+1)/p)`, `j = 0, 1, …`) of the sequence for `2p` heads.
///
/// # Panics
/// If `head >= heads`.
///
/// ```
/// use static_attention::positions::alibi_slope;
///
/// assert_eq!(alibi_slope(0, 8), 0.5);
/// assert_eq!(alibi_slope(7, 8), 1.0 / 256.0);
/// // 6 heads: the 4 slopes for 4 heads, then the 1st and 3rd of the 8-head sequence.
/// let six: Vec<f64> = (0..6).map(|h| alibi_slope(h, 6)).collect();
/// assert_eq!(six, [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
/// ```
#[must_use]
pub fn alibi_slope(head: usize, heads: usize) -> f64 {
    assert!(head < heads, "head {head} of {heads}");
    let p = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    if head < p {
        math::pow(2.0, -8.0 * (head + 1) as f64 / p as f64)
    } else {
        let j = head - p;
        math::pow(2.0, -4.0 * (2 * j + 1) as f64 / p as f64)
    }
}

/// The ALiBi part of a [`crate::Mask`] (Press et al. 2022): the bias `−m·(p − j)` added to the scaled
/// score of query `i` at position `p = i + SKV − SQ` (queries aligned with the last keys, as in
/// decoding; `p = i` when `SQ == SKV`) and key `j`. Only differences of positions within one
/// row matter to the softmax, so with a causal pattern this is ALiBi exactly as trained.
///
/// The kernels compute it per score: no `SQ × SKV` matrix is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alibi {
    /// Head `h` of `H` uses the standard slope [`alibi_slope`]`(h, H)`, `H`
    /// being the layer's (or the call's) head count; a single-head call uses `2^−8`.
    PerHead,
    /// Every head uses this slope.
    Slope(f64),
}

impl Alibi {
    /// The slope head `head` of `heads` uses.
    #[must_use]
    pub fn slope(self, head: usize, heads: usize) -> f64 {
        match self {
            Alibi::PerHead => alibi_slope(head, heads),
            Alibi::Slope(m) => m,
        }
    }
}

/// [`alibi_slope`] for every head of `HEADS`.
#[must_use]
pub fn alibi_slopes<const HEADS: usize>() -> [f64; HEADS] {
    core::array::from_fn(|h| alibi_slope(h, HEADS))
}

/// How RoPE pairs the features of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pairs `(x_2i, x_2i+1)`: GPT-J, the original Llama and `torchtune`'s `RotaryPositionalEmbeddings`.
    Interleaved,
    /// Pairs `(x_i, x_i+HEAD_DIM/2)`, `x·cos + rotate_half(x)·sin`: GPT-NeoX and Hugging Face's
    /// Llama, Mistral and Qwen2.
    RotateHalf,
}

/// A position past the end of a [`Rope`] table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PositionError {
    /// The first position of the tokens to rotate.
    pub first: usize,
    /// How many tokens.
    pub count: usize,
    /// The table's length, `MAX_POS`: positions `0 .. MAX_POS` are available.
    pub table: usize,
}

impl core::fmt::Display for PositionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "positions {}..{} are past the rotary table of {} positions",
            self.first,
            self.first + self.count,
            self.table
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PositionError {}

/// Rotary position embeddings for heads of `HEAD_DIM` features at positions `0 .. MAX_POS`:
/// each pair of features `(a, b)` of a query or key at position `p` is rotated by
/// `p·θ_i`, `θ_i = base^(−2i/HEAD_DIM)`:
/// `a' = a·cos − b·sin`, `b' = b·cos + a·sin`, the pairs chosen by [`RopeStyle`].
///
/// The table holds `cos(p·θ_i)` and `sin(p·θ_i)` for every position (`MAX_POS · HEAD_DIM`
/// scalars, [`Rope::BYTES`]), computed in `f64` when the `Rope` is built; build it once and
/// share it between layers. For long tables build one in place with [`Rope::rebuild`].
///
/// Build errors: an odd or zero `HEAD_DIM`, or `MAX_POS = 0`.
///
/// ```
/// use static_attention::positions::{Rope, RopeStyle};
/// use static_attention::SMatrix;
///
/// let rope = Rope::<4, 16>::new(10_000.0, RopeStyle::RotateHalf);
/// let mut x = SMatrix::<f32, 2, 4>::repeat(1.0);
/// rope.rotate(&mut x, 3)?; // tokens at positions 3 and 4
/// // A rotation keeps each pair's length.
/// assert!((x[(0, 0)].powi(2) + x[(0, 2)].powi(2) - 2.0).abs() < 1e-6);
/// assert!(rope.rotate(&mut x, 15).is_err()); // position 16 is past the table
/// # Ok::<(), static_attention::positions::PositionError>(())
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct Rope<const HEAD_DIM: usize, const MAX_POS: usize, T = f32> {
    /// Row `p`: `cos(p·θ_i)` for `i < HEAD_DIM/2`, then `sin(p·θ_i)`.
    table: [[T; HEAD_DIM]; MAX_POS],
    base: f64,
    /// [`RopeStyle::RotateHalf`] (a `bool`, so that the all-zero value is valid).
    rotate_half: bool,
}

impl<const HEAD_DIM: usize, const MAX_POS: usize, T: Float> Rope<HEAD_DIM, MAX_POS, T> {
    const SHAPE_OK: () = {
        assert!(
            HEAD_DIM > 0 && HEAD_DIM.is_multiple_of(2),
            "HEAD_DIM must be even and at least 2: RoPE rotates pairs of features"
        );
        assert!(
            MAX_POS > 0,
            "MAX_POS must be at least 1: the rotary table needs a position"
        );
    };

    /// Bytes of a `Rope` (its table).
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// The table for `base` (10 000 for Llama 2, 500 000 for Llama 3, 1 000 000 for Qwen2)
    /// and `style`, by value: `MAX_POS · HEAD_DIM` scalars on the stack.
    #[must_use]
    pub fn new(base: f64, style: RopeStyle) -> Self {
        let () = Self::SHAPE_OK;
        let mut rope = Self {
            table: [[T::ZERO; HEAD_DIM]; MAX_POS],
            base,
            rotate_half: style == RopeStyle::RotateHalf,
        };
        rope.fill();
        rope
    }

    /// Recomputes the table in place for `base` and `style`: the in-place form of
    /// [`Rope::new`], for a table on the heap ([`crate::heap::zeroed`] allocates a zeroed one,
    /// which rotates nothing until it is built) or in a `static`.
    ///
    /// ```
    /// use static_attention::heap;
    /// use static_attention::positions::{Rope, RopeStyle};
    ///
    /// let mut rope: Box<Rope<128, 32_768>> = heap::zeroed(); // 16 MiB, never on the stack
    /// rope.rebuild(500_000.0, RopeStyle::RotateHalf);
    /// assert_eq!(rope.cos_sin(0, 0), (1.0, 0.0));
    /// ```
    pub fn rebuild(&mut self, base: f64, style: RopeStyle) {
        let () = Self::SHAPE_OK;
        self.base = base;
        self.rotate_half = style == RopeStyle::RotateHalf;
        self.fill();
    }

    fn fill(&mut self) {
        let half = HEAD_DIM / 2;
        for i in 0..half {
            let theta = math::pow(self.base, -((2 * i) as f64) / HEAD_DIM as f64);
            for (p, row) in self.table.iter_mut().enumerate() {
                let angle = p as f64 * theta;
                row[i] = T::of(math::cos(angle));
                row[half + i] = T::of(math::sin(angle));
            }
        }
    }

    /// The base of the frequencies.
    #[must_use]
    pub const fn base(&self) -> f64 {
        self.base
    }

    /// The pairing.
    #[must_use]
    pub const fn style(&self) -> RopeStyle {
        if self.rotate_half {
            RopeStyle::RotateHalf
        } else {
            RopeStyle::Interleaved
        }
    }

    /// `cos(p·θ_i)` and `sin(p·θ_i)` for position `p < MAX_POS` and pair `i < HEAD_DIM/2`.
    #[must_use]
    pub fn cos_sin(&self, p: usize, i: usize) -> (T, T) {
        let row = &self.table[p];
        (row[i], row[HEAD_DIM / 2 + i])
    }

    /// Checks that positions `first .. first + count` are in the table.
    pub(crate) fn check(&self, first: usize, count: usize) -> Result<(), PositionError> {
        match first.checked_add(count) {
            Some(end) if end <= MAX_POS => Ok(()),
            _ => Err(PositionError {
                first,
                count,
                table: MAX_POS,
            }),
        }
    }

    /// Rotates `S` tokens (rows of `x`, one head of `HEAD_DIM` features) at positions
    /// `first .. first + S`.
    ///
    /// # Errors
    /// [`PositionError`] if a position is past the table; `x` is unchanged then.
    pub fn rotate<const S: usize>(
        &self,
        x: &mut SMatrix<T, S, HEAD_DIM>,
        first: usize,
    ) -> Result<(), PositionError> {
        self.check(first, S)?;
        self.rotate_heads(x.as_mut_slice(), S, 1, first);
        Ok(())
    }

    /// Rotates every head of a column-major `s × (heads·HEAD_DIM)` buffer (head `h` in columns
    /// `h·HEAD_DIM ..`), token `t` at position `first + t`. The positions must be in the table.
    pub(crate) fn rotate_heads(&self, buf: &mut [T], s: usize, heads: usize, first: usize) {
        debug_assert!(buf.len() >= s * heads * HEAD_DIM && first + s <= MAX_POS);
        let half = HEAD_DIM / 2;
        for h in 0..heads {
            let head = &mut buf[h * HEAD_DIM * s..(h + 1) * HEAD_DIM * s];
            for i in 0..half {
                // The pair's two feature columns.
                let (ca, cb) = if self.rotate_half {
                    (i, half + i)
                } else {
                    (2 * i, 2 * i + 1)
                };
                for t in 0..s {
                    let (c, sn) = self.cos_sin(first + t, i);
                    let (a, b) = (head[t + ca * s], head[t + cb * s]);
                    head[t + ca * s] = a * c - b * sn;
                    head[t + cb * s] = b * c + a * sn;
                }
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How a decoder layer encodes positions (the `positions` argument of
/// [`crate::GroupedQuery`] and of the decoding entry points): [`NoPositions`], a [`Rope`]
/// table (rotating queries and keys, HEAD_DIM checked at build time), or an
/// [`Alibi`] (a bias in the kernel). Sealed.
pub trait PositionEncoding<T: Float>: sealed::Sealed {
    /// The head width it needs, 0 for any: a decoder layer whose heads have another width
    /// fails to build.
    const HEAD_DIM: usize;

    /// Whether tokens `first .. first + count` can be encoded: always, unless a table ends.
    ///
    /// # Errors
    /// [`PositionError`] past the end of a [`Rope`] table.
    fn check(&self, first: usize, count: usize) -> Result<(), PositionError> {
        let _ = (first, count);
        Ok(())
    }

    /// Rotates queries or keys in place: a column-major `s × (heads · HEAD_DIM)` buffer,
    /// token `t` at position `first + t` (checked). Nothing, unless it rotates.
    #[doc(hidden)]
    fn rotate(&self, buf: &mut [T], s: usize, heads: usize, first: usize) {
        let _ = (buf, s, heads, first);
    }

    /// The ALiBi part it adds to the scores, if any (none unless it is ALiBi).
    fn alibi(&self) -> Option<Alibi> {
        None
    }
}

/// No position information in the attention layer (the paper's layer: positions, if any, were
/// added to the embeddings, as [`sinusoidal`] does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoPositions;

impl sealed::Sealed for NoPositions {}
impl<T: Float> PositionEncoding<T> for NoPositions {
    const HEAD_DIM: usize = 0;
}

impl<const HEAD_DIM: usize, const MAX_POS: usize, T> sealed::Sealed for Rope<HEAD_DIM, MAX_POS, T> {}
impl<const HD: usize, const MAX_POS: usize, T: Float> PositionEncoding<T> for Rope<HD, MAX_POS, T> {
    const HEAD_DIM: usize = HD;
    fn check(&self, first: usize, count: usize) -> Result<(), PositionError> {
        Rope::check(self, first, count)
    }
    fn rotate(&self, buf: &mut [T], s: usize, heads: usize, first: usize) {
        self.rotate_heads(buf, s, heads, first);
    }
}

impl sealed::Sealed for Alibi {}
impl<T: Float> PositionEncoding<T> for Alibi {
    const HEAD_DIM: usize = 0;
    fn alibi(&self) -> Option<Alibi> {
        Some(*self)
    }
}
