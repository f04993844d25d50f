//! A fixed-capacity key/value cache for decoding, one token (or one prompt) at a time.

use nalgebra::SMatrixView;

use crate::Float;
use crate::positions::PositionError;
use crate::scratch::Aligned;

/// Why a decoding step could not run. The cache and the output are unchanged then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheError {
    /// Appending `adding` tokens to a cache holding `len` of `capacity` would overflow it.
    /// ([`KvCache::sliding_window`] caches never fill.)
    Full {
        /// The cache's capacity, `CAP`.
        capacity: usize,
        /// Positions it holds.
        len: usize,
        /// Tokens the call tried to append.
        adding: usize,
    },
    /// A position the tokens would take is past the rotary table.
    Position(PositionError),
}

impl core::fmt::Display for CacheError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CacheError::Full {
                capacity,
                len,
                adding,
            } => write!(
                f,
                "the KV cache holds {len} of {capacity} positions and cannot take {adding} more \
                 (reset it, or use a larger capacity or a sliding window)"
            ),
            CacheError::Position(e) => e.fmt(f),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CacheError {}

impl From<PositionError> for CacheError {
    fn from(e: PositionError) -> Self {
        CacheError::Position(e)
    }
}

/// The keys and values a decoder layer has seen, for up to `CAP` positions of `KV_DIM`
/// features (all kv heads side by side, `KV_DIM = KV_HEADS · HEAD_DIM`), filled in place.
///
/// - Layout: keys and values are `CAP × KV_DIM` column-major matrices, so kv head `g` is one
///   contiguous block of `CAP · HEAD_DIM` scalars (columns `g·HEAD_DIM ..`), and a position is
///   a row. Keys are stored after the rotary embedding, at their absolute positions.
/// - [`KvCache::new`]: positions `0 .. CAP` in rows `0 .. CAP`; appending past `CAP` is a
///   [`CacheError::Full`] that leaves the cache as it was.
/// - [`KvCache::sliding_window`]: a ring that keeps the last `CAP` positions (position `p` in
///   row `p mod CAP`), for sliding-window attention with window `CAP` (Mistral's
///   `sliding_window`): each query sees itself and the `CAP − 1` positions before it. It
///   never fills.
/// - No heap: the size is the compile-time constant [`KvCache::BYTES`]; for large caches,
///   [`crate::heap::zeroed`] allocates one zeroed on the heap (an empty growing cache; see
///   [`KvCache::reset_sliding_window`] for a ring).
///
/// Build errors: `CAP = 0` or `KV_DIM = 0`.
///
/// ```
/// use static_attention::{KvCache, MultiHead, SMatrix};
/// use static_attention::positions::NoPositions;
///
/// let layer = MultiHead::<4, 8, 2>::from_seed(1);
/// let mut cache = KvCache::<16, 8>::new();
/// let prompt = SMatrix::<f32, 4, 8>::from_fn(|i, j| ((i * 8 + j) as f32 * 0.3).sin());
/// let _ = layer.decode(&prompt, &mut cache, &NoPositions)?; // prefill: 4 positions
/// let token = SMatrix::<f32, 1, 8>::repeat(0.5);
/// let y = layer.decode(&token, &mut cache, &NoPositions)?; // position 4
/// assert_eq!((cache.len(), cache.position()), (5, 5));
/// # Ok::<(), static_attention::CacheError>(())
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct KvCache<const CAP: usize, const KV_DIM: usize, T = f32> {
    /// Column-major `CAP × KV_DIM` (plain arrays: an unoptimised build then makes fewer
    /// temporary copies of a cache built by value).
    k: Aligned<[[T; CAP]; KV_DIM]>,
    v: Aligned<[[T; CAP]; KV_DIM]>,
    /// Tokens appended since the last reset: the next token's position.
    position: usize,
    /// A ring keeping the last `CAP` positions.
    ring: bool,
}

impl<const CAP: usize, const KV_DIM: usize, T: Float> KvCache<CAP, KV_DIM, T> {
    const SHAPE_OK: () = {
        assert!(
            CAP > 0,
            "CAP must be at least 1: a KV cache needs room for a position"
        );
        assert!(
            KV_DIM > 0,
            "KV_DIM must be at least 1: keys need at least one feature"
        );
    };

    /// Bytes of a cache.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// An empty cache for positions `0 .. CAP` (a `const fn`: it can be a `static`).
    #[must_use]
    pub const fn new() -> Self {
        let () = Self::SHAPE_OK;
        Self {
            k: Aligned([[T::ZERO; CAP]; KV_DIM]),
            v: Aligned([[T::ZERO; CAP]; KV_DIM]),
            position: 0,
            ring: false,
        }
    }

    /// An empty ring that keeps the last `CAP` positions: sliding-window attention with a
    /// window of `CAP` keys, the query's own included.
    #[must_use]
    pub const fn sliding_window() -> Self {
        let mut c = Self::new();
        c.ring = true;
        c
    }

    /// Positions held (at most `CAP`).
    #[must_use]
    pub const fn len(&self) -> usize {
        if self.position < CAP {
            self.position
        } else {
            CAP
        }
    }

    /// Whether nothing has been appended since the last reset.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.position == 0
    }

    /// The position the next token takes: tokens appended since the last reset.
    #[must_use]
    pub const fn position(&self) -> usize {
        self.position
    }

    /// `CAP`.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        CAP
    }

    /// Whether this is a [`KvCache::sliding_window`] ring.
    #[must_use]
    pub const fn is_sliding_window(&self) -> bool {
        self.ring
    }

    /// Makes this cache a copy of `other`, in place (a derived `clone` of a boxed cache
    /// would build the copy on the stack first; this never does). Useful to fork a prefilled
    /// prompt into several continuations.
    pub fn copy_from(&mut self, other: &Self) {
        self.k.0.copy_from_slice(&other.k.0);
        self.v.0.copy_from_slice(&other.v.0);
        self.position = other.position;
        self.ring = other.ring;
    }

    /// Forgets every position (the next token is position 0); the storage and the kind (a
    /// growing cache or a ring) are kept.
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Forgets every position and makes this cache a ring, as [`KvCache::sliding_window`]
    /// builds one: the in-place form of that constructor, for a cache allocated with
    /// [`crate::heap::zeroed`] (which gives an empty growing cache).
    ///
    /// ```
    /// use static_attention::{KvCache, heap};
    ///
    /// let mut ring: Box<KvCache<4096, 256>> = heap::zeroed(); // 8 MiB, never on the stack
    /// ring.reset_sliding_window();
    /// assert!(ring.is_sliding_window() && ring.is_empty());
    /// ```
    pub fn reset_sliding_window(&mut self) {
        self.position = 0;
        self.ring = true;
    }

    /// The stored keys: row `r` holds position `r` (or, in a ring, the position `p` with
    /// `p mod CAP = r`); rows at or past [`KvCache::len`] are unused.
    #[must_use]
    pub fn keys(&self) -> SMatrixView<'_, T, CAP, KV_DIM> {
        SMatrixView::from_slice(self.k.0.as_flattened())
    }

    /// The stored values, laid out as [`KvCache::keys`].
    #[must_use]
    pub fn values(&self) -> SMatrixView<'_, T, CAP, KV_DIM> {
        SMatrixView::from_slice(self.v.0.as_flattened())
    }

    /// Whether `adding` more tokens fit.
    pub(crate) fn check_room(&self, adding: usize) -> Result<(), CacheError> {
        if self.ring || adding <= CAP - self.len() {
            Ok(())
        } else {
            Err(CacheError::Full {
                capacity: CAP,
                len: self.len(),
                adding,
            })
        }
    }

    /// Appends token `t` of column-major `s × KV_DIM` keys and values at the next position.
    /// The caller has checked the room.
    pub(crate) fn push(&mut self, k: &[T], v: &[T], s: usize, t: usize) {
        let row = self.position % CAP;
        debug_assert!(self.ring || self.position < CAP);
        let (kc, vc) = (self.k.0.as_flattened_mut(), self.v.0.as_flattened_mut());
        for c in 0..KV_DIM {
            kc[row + c * CAP] = k[t + c * s];
            vc[row + c * CAP] = v[t + c * s];
        }
        self.position += 1;
    }

    /// Every kv head's keys and values (`CAP × KV_DIM` column-major: kv head `g` in columns
    /// `g·HEAD_DIM ..`, leading dimension `CAP`).
    pub(crate) fn storage(&self) -> (&[T], &[T]) {
        (self.k.0.as_flattened(), self.v.0.as_flattened())
    }

    /// The row holding the oldest position (0 until a ring wraps).
    pub(crate) fn oldest_row(&self) -> usize {
        if self.ring && self.position > CAP {
            self.position % CAP
        } else {
            0
        }
    }
}

impl<const CAP: usize, const KV_DIM: usize, T: Float> Default for KvCache<CAP, KV_DIM, T> {
    fn default() -> Self {
        Self::new()
    }
}
