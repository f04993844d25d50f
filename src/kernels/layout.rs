//! How [`crate::Linear`] stores its weight matrix: the layout the projection kernels read.
//!
//! `W` (`dout × din`, PyTorch's `weight`) is stored in tiles of [`WEIGHT_TILE`] output
//! features: tile `t` holds features `12·t .. 12·t + 12` as `din` rows of 12 consecutive
//! weights (row `p` = the 12 weights from input feature `p`), and the last tile holds the
//! remaining `dout mod 12` features the same way with rows of that width. A micro-kernel's
//! weights for one input feature are then consecutive values, and a whole strip is one
//! contiguous block of `din · 12` values. The layout is packed once, when the map is built.
//!
//! `bf16` weights pair their rows: rows `2q` and `2q + 1` of a tile are stored interleaved,
//! `W[n, 2q]` then `W[n, 2q + 1]` for each of the tile's features in turn (an odd last row
//! stays as it is). Each pair is then one 32-bit word, what a `bf16` dot-product instruction
//! (`vdpbf16ps`, `BFDOT`) multiplies with a pair of inputs; a tile still occupies the same
//! `din · 12` values, so strips stay contiguous and the same size. `i8` weights group their
//! rows in fours the same way (the last `din mod 4` rows as they are).

use crate::weight::WeightKind;

/// Output features per tile of the stored weight layout.
pub(crate) const WEIGHT_TILE: usize = 12;

/// The tile holding output feature `n`: where it starts, its width (12, or `dout mod 12` for
/// the last), and `n`'s column in it.
#[inline(always)]
const fn tile_of(n: usize, din: usize, dout: usize) -> (usize, usize, usize) {
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    if n < full {
        (
            (n / WEIGHT_TILE) * WEIGHT_TILE * din,
            WEIGHT_TILE,
            n % WEIGHT_TILE,
        )
    } else {
        (full * din, dout - full, n - full)
    }
}

/// Where `W[n, p]` lives in a `dout × din` weight stored in tiles with rows in groups of `G`:
/// rows `G·q .. G·q + G` as `width` groups of `G` (the `G` weights of one output feature side
/// by side), the last `din mod G` rows as they are. `G = 1` is plain tiles; `bf16` pairs its
/// rows (what `vdpbf16ps` and `BFDOT` multiply with two inputs), `i8` groups them in fours
/// (one 32-bit word, what `vpdpbusd` and `SDOT` multiply with four inputs).
#[inline(always)]
#[must_use]
pub(crate) const fn grouped_index<const G: usize>(
    n: usize,
    p: usize,
    din: usize,
    dout: usize,
) -> usize {
    let (base, width, j) = tile_of(n, din, dout);
    if p < din / G * G {
        base + (p - p % G) * width + G * j + p % G
    } else {
        base + p * width + j
    }
}

/// Where `W[n, p]` lives for weights stored as `kind`: paired rows for `bf16`, rows in fours
/// for `i8`, plain tiles otherwise.
#[inline(always)]
#[must_use]
pub(crate) const fn weight_index(
    kind: WeightKind,
    n: usize,
    p: usize,
    din: usize,
    dout: usize,
) -> usize {
    match kind {
        WeightKind::Bf16 => grouped_index::<2>(n, p, din, dout),
        WeightKind::I8 => grouped_index::<4>(n, p, din, dout),
        WeightKind::Native | WeightKind::F16 => grouped_index::<1>(n, p, din, dout),
    }
}

/// Feature `n`'s word of the partial last quad of a storage tile (`width` features, `din`
/// rows, `din mod 4 > 0`): its plain rows `4·(din / 4) ..` (each `width` bytes, after the
/// whole quads' words), row `4·(din / 4) + j` in byte `j`, the rest zero. The `i8` kernels
/// multiply it as the whole quads' words (the padding inputs are quantized zeros).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn last_quad_word(tile: &[i8], width: usize, din: usize, n: usize) -> u32 {
    let whole = din / 4;
    let mut word = 0;
    for p in 4 * whole..din {
        word |= u32::from(tile[p * width + n].cast_unsigned()) << (8 * (p - 4 * whole));
    }
    word
}
