//! How [`crate::Linear`] stores its weight matrix: the layout the projection kernels read.
//!
//! `W` (`dout × din`, PyTorch's `weight`) is stored in tiles of [`WEIGHT_TILE`] output
//! features: tile `t` holds features `12·t .. 12·t + 12` as `din` rows of 12 consecutive
//! weights (row `p` = the 12 weights from input feature `p`), and the last tile holds the
//! remaining `dout mod 12` features the same way with rows of that width. A micro-kernel's
//! weights for one input feature are then consecutive values, and a whole strip is one
//! contiguous block of `din · 12` values. The layout is packed once, when the map is built.

/// Output features per tile of the stored weight layout.
pub(crate) const WEIGHT_TILE: usize = 12;

/// Where `W[n, p]` lives in a `dout × din` weight stored in tiles.
#[inline(always)]
#[must_use]
pub(crate) const fn tiled_index(n: usize, p: usize, din: usize, dout: usize) -> usize {
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    if n < full {
        ((n / WEIGHT_TILE) * din + p) * WEIGHT_TILE + n % WEIGHT_TILE
    } else {
        full * din + p * (dout - full) + (n - full)
    }
}
