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
    /// A layer with a sliding window of `window` keys was given a
    /// [`KvCache::sliding_window`] ring of another capacity (a ring's capacity is its window;
    /// a growing cache works with any window).
    Window {
        /// The layer's window.
        window: usize,
        /// The ring's capacity.
        capacity: usize,
    },
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
            CacheError::Window { window, capacity } => write!(
                f,
                "the layer attends over a sliding window of {window} keys, but the ring cache \
                 keeps {capacity} (use a ring of {window}, or a growing cache)"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CacheError {}

/// Why keys and values could not be copied between a [`KvCache`] and Hugging Face's
/// `[kv_heads, positions, head_dim]` layout. Nothing is changed then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LayoutError {
    /// `kv_heads` is zero or does not divide the cache's `KV_DIM`.
    KvHeads {
        /// The kv heads asked for.
        kv_heads: usize,
        /// The cache's `KV_DIM`.
        kv_dim: usize,
    },
    /// A slice does not hold `len · KV_DIM` values.
    Length {
        /// The values needed.
        expected: usize,
        /// The slice's length.
        found: usize,
    },
    /// More positions than the cache's capacity.
    TooMany {
        /// Positions given.
        len: usize,
        /// The cache's capacity, `CAP`.
        capacity: usize,
    },
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::KvHeads { kv_heads, kv_dim } => write!(
                f,
                "{kv_heads} kv heads cannot split the cache's {kv_dim} key/value features"
            ),
            LayoutError::Length { expected, found } => write!(
                f,
                "a [kv_heads, positions, head_dim] slice needs {expected} values, this one has \
                 {found}"
            ),
            LayoutError::TooMany { len, capacity } => write!(
                f,
                "{len} positions do not fit a cache of capacity {capacity}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for LayoutError {}

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
///   [`CacheError::Full`] that leaves the cache as it was. [`KvCache::starting_at`] starts at
///   another position (row `r` then holds position `first + r`).
/// - Hugging Face's `[kv_heads, positions, head_dim]` layout: [`KvCache::to_hf_layout`] and
///   [`KvCache::load_hf_layout`] copy out and in, oldest position first.
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
    /// The next token's position.
    position: usize,
    /// The position the cache started at (row 0 holds it): 0 unless built with
    /// [`KvCache::starting_at`] or filled with [`KvCache::load_hf_layout`].
    start: usize,
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
            start: 0,
            ring: false,
        }
    }

    /// An empty cache whose first token takes position `first` (a prompt continued from
    /// a position another program reached, or a cache handed over between processes): rotary
    /// tables and ALiBi see positions `first ..`, and the cache holds up to `CAP` of them.
    ///
    /// ```
    /// use static_attention::KvCache;
    ///
    /// let cache = KvCache::<8, 4>::starting_at(100);
    /// assert_eq!((cache.position(), cache.len(), cache.first_position()), (100, 0, 100));
    /// ```
    #[must_use]
    pub const fn starting_at(first: usize) -> Self {
        let mut c = Self::new();
        c.position = first;
        c.start = first;
        c
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
        let appended = self.position - self.start;
        if appended < CAP { appended } else { CAP }
    }

    /// Whether nothing has been appended since the last reset.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.position == self.start
    }

    /// The position the next token takes: the first position (0 unless the cache was started
    /// elsewhere) plus the tokens appended since.
    #[must_use]
    pub const fn position(&self) -> usize {
        self.position
    }

    /// The oldest position the cache holds (the next token's position when it is empty).
    #[must_use]
    pub const fn first_position(&self) -> usize {
        self.position - self.len()
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
        self.start = other.start;
        self.ring = other.ring;
    }

    /// Forgets every position (the next token is position 0); the storage and the kind (a
    /// growing cache or a ring) are kept.
    pub fn reset(&mut self) {
        self.reset_to(0);
    }

    /// Forgets every position; the next token takes position `first` (see
    /// [`KvCache::starting_at`]). The storage and the kind are kept.
    pub fn reset_to(&mut self, first: usize) {
        self.position = first;
        self.start = first;
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
        self.reset_to(0);
        self.ring = true;
    }

    /// The stored keys: row `r` holds position `f + r`, `f` the cache's first position (in a
    /// ring, the position `p` with `(p − f) mod CAP = r`); rows at or past [`KvCache::len`]
    /// are unused. [`KvCache::to_hf_layout`] gives them oldest first, per kv head.
    #[must_use]
    pub fn keys(&self) -> SMatrixView<'_, T, CAP, KV_DIM> {
        SMatrixView::from_slice(self.k.0.as_flattened())
    }

    /// The stored values, laid out as [`KvCache::keys`].
    #[must_use]
    pub fn values(&self) -> SMatrixView<'_, T, CAP, KV_DIM> {
        SMatrixView::from_slice(self.v.0.as_flattened())
    }

    /// Whether `adding` more tokens fit (and their positions do not overflow).
    pub(crate) fn check_room(&self, adding: usize) -> Result<(), CacheError> {
        if self.position.checked_add(adding).is_none() {
            return Err(CacheError::Full {
                capacity: CAP,
                len: self.len(),
                adding,
            });
        }
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
        let appended = self.position - self.start;
        let row = appended % CAP;
        debug_assert!(self.ring || appended < CAP);
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
        let appended = self.position - self.start;
        if self.ring && appended > CAP {
            appended % CAP
        } else {
            0
        }
    }

    /// The storage row of the `t`-th oldest held position.
    fn row_of(&self, t: usize) -> usize {
        (self.oldest_row() + t) % CAP
    }

    /// Checks `kv_heads` and the slices' lengths for `len` positions; the head width.
    fn check_layout(
        kv_heads: usize,
        len: usize,
        keys: usize,
        values: usize,
    ) -> Result<usize, LayoutError> {
        if kv_heads == 0 || !KV_DIM.is_multiple_of(kv_heads) {
            return Err(LayoutError::KvHeads {
                kv_heads,
                kv_dim: KV_DIM,
            });
        }
        if len > CAP {
            return Err(LayoutError::TooMany { len, capacity: CAP });
        }
        let expected = len * KV_DIM;
        for found in [keys, values] {
            if found != expected {
                return Err(LayoutError::Length { expected, found });
            }
        }
        Ok(KV_DIM / kv_heads)
    }

    /// Copies the held keys and values out in Hugging Face's cache layout: row-major
    /// `[kv_heads, len, head_dim]` arrays (`head_dim = KV_DIM / kv_heads`), positions oldest
    /// first ([`KvCache::first_position`] ..), which is what a `transformers` cache layer's
    /// `keys[0]` and `values[0]` hold for one sequence (keys after RoPE). `keys` and `values`
    /// must hold exactly [`KvCache::len`]` · KV_DIM` values.
    ///
    /// ```
    /// use static_attention::KvCache;
    ///
    /// // 2 kv heads of 2 features, positions 7 and 8.
    /// let mut cache = KvCache::<4, 4>::new();
    /// let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]; // [2 heads, 2 positions, 2]
    /// cache.load_hf_layout(2, 7, &k, &k)?;
    /// assert_eq!((cache.first_position(), cache.position()), (7, 9));
    /// assert_eq!(cache.keys()[(1, 0)], 3.0); // position 8, head 0, feature 0
    /// let mut back = [0.0; 8];
    /// cache.to_hf_layout(2, &mut back, &mut [0.0; 8])?;
    /// assert_eq!(back, k);
    /// # Ok::<(), static_attention::LayoutError>(())
    /// ```
    ///
    /// # Errors
    /// [`LayoutError`] if `kv_heads` does not divide `KV_DIM` or a slice has another length;
    /// nothing is written then.
    pub fn to_hf_layout(
        &self,
        kv_heads: usize,
        keys: &mut [T],
        values: &mut [T],
    ) -> Result<(), LayoutError> {
        let len = self.len();
        let hd = Self::check_layout(kv_heads, len, keys.len(), values.len())?;
        let (kc, vc) = self.storage();
        for g in 0..kv_heads {
            for t in 0..len {
                let row = self.row_of(t);
                for d in 0..hd {
                    let c = g * hd + d;
                    keys[(g * len + t) * hd + d] = kc[row + c * CAP];
                    values[(g * len + t) * hd + d] = vc[row + c * CAP];
                }
            }
        }
        Ok(())
    }

    /// Fills the cache from Hugging Face's layout (see [`KvCache::to_hf_layout`]):
    /// `len = keys.len() / KV_DIM` positions `first .. first + len`, oldest first. Whatever
    /// the cache held is forgotten; a ring stays a ring (keeping them all: `len ≤ CAP`), and
    /// the next token takes position `first + len`. Keys must already carry their rotary
    /// embedding, as a `transformers` cache holds them.
    ///
    /// # Errors
    /// [`LayoutError`] if `kv_heads` does not divide `KV_DIM`, the slices' lengths differ or
    /// are not a whole number of positions, or `len > CAP`; the cache is unchanged then.
    pub fn load_hf_layout(
        &mut self,
        kv_heads: usize,
        first: usize,
        keys: &[T],
        values: &[T],
    ) -> Result<(), LayoutError> {
        let len = keys.len() / KV_DIM;
        if !keys.len().is_multiple_of(KV_DIM) {
            return Err(LayoutError::Length {
                expected: (len + 1) * KV_DIM,
                found: keys.len(),
            });
        }
        let hd = Self::check_layout(kv_heads, len, keys.len(), values.len())?;
        self.reset_to(first);
        let (kc, vc) = (self.k.0.as_flattened_mut(), self.v.0.as_flattened_mut());
        for g in 0..kv_heads {
            for t in 0..len {
                for d in 0..hd {
                    let c = g * hd + d;
                    kc[t + c * CAP] = keys[(g * len + t) * hd + d];
                    vc[t + c * CAP] = values[(g * len + t) * hd + d];
                }
            }
        }
        self.position = first + len;
        Ok(())
    }
}

impl<const CAP: usize, const KV_DIM: usize, T: Float> Default for KvCache<CAP, KV_DIM, T> {
    fn default() -> Self {
        Self::new()
    }
}
