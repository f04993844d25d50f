//! The SIMD kernels, written once over [`Simd`] and compiled per instruction set.
//!
//! Layouts are the crate's: every matrix is column-major, tokens contiguous per feature.
//!
//! - `gemm.rs`, [`linear`]: the projections, `C = A · B + bias`, a register-blocked GEMM.
//! - `tiles.rs`, [`attention`] and [`attention_with_weights`]: fused streaming attention for
//!   one head, queries in lanes. A tile of `2·LANES` queries (or `LANES`) walks the keys in
//!   blocks of [`KB`]: the scores of the block come from a `queries × TILE keys`
//!   micro-kernel, masking is vectorised per key, the online softmax keeps a running maximum
//!   and denominator per lane, and `P·V` is a `queries × TILE value columns` micro-kernel.
//!   Key blocks the causal or sliding-window pattern hides from every query of the tile are
//!   never visited. The weights path runs the same tiles writing the scores into the
//!   caller's `SQ × SKV` matrix, normalising them there, and multiplying them with `V`.
//! - `steps.rs`: what both tile kinds share: the micro-kernels, the key masks, and the
//!   scale-mask-maximum and exp-and-sum steps of the softmax.
//! - `rows.rs`: fewer queries than `LANES` (a decode step, or the last rows after the
//!   tiles): each query row walks its keys in blocks with the keys in the vector lanes.
//! - `exp.rs`: the vector `exp` over slices and single values.
//!
//! Every function here is `#[inline(always)]`: the kernels must be compiled inside the
//! `#[target_feature]` entry points of their instruction set (`x86.rs`, `arm.rs`), since a
//! function of their own would be compiled without those instructions (and its intrinsics
//! left as calls).
//!
//! Tiles never overlap: whole tiles of `2·LANES` queries, then one of `LANES` if that many
//! remain, then the last rows one at a time. A tile reads its queries before it writes its
//! outputs, so the outputs may replace the queries (`QueryIo::InPlace`).
//!
//! The attention rules hold as in the scalar kernel: a masked key is replaced by `−∞` before
//! the softmax (so NaN in its key cannot leak) and is left out of `P·V` (masked products are
//! zeroed, not multiplied by zero, when `V` holds non-finite values); a row with no key gets
//! zeros; NaN scores of allowed keys propagate.

#![allow(
    clippy::too_many_arguments,
    clippy::inline_always,
    // Index loops over lanes, rows and columns read like the math they implement.
    clippy::needless_range_loop
)]

/// Runs `$body` once per micro-tile of `$n` columns (or keys), with `$at` the tile's first
/// column and `$N` a constant equal to its width: full tiles of `$tile` (6 or 12, a constant
/// per kernel, so the outer match folds away), then with 12 one tile each of 8 and 6 where
/// they fit, then the rest (1 to 5). Every width is its own instantiation, and the loops are
/// plain counted loops (an iterator of `(start, width)` pairs with a match per item cost
/// the AVX2 attention kernel 18 %).
macro_rules! for_tiles {
    ($n:expr, $tile:expr, |$at:ident, $N:ident| $body:expr) => {{
        let n: usize = $n;
        let mut $at = 0usize;
        macro_rules! one {
            ($w:literal) => {{
                {
                    const $N: usize = $w;
                    $body;
                }
                $at += $w;
            }};
        }
        macro_rules! last {
            ($w:literal) => {{
                const $N: usize = $w;
                $body;
            }};
        }
        match $tile {
            6 => {
                while $at + 6 <= n {
                    one!(6);
                }
            }
            12 => {
                while $at + 12 <= n {
                    one!(12);
                }
                if n - $at >= 8 {
                    one!(8);
                }
                if n - $at >= 6 {
                    one!(6);
                }
            }
            _ => unreachable!("micro-tiles are 6 or 12 wide"),
        }
        match n - $at {
            0 => {}
            1 => last!(1),
            2 => last!(2),
            3 => last!(3),
            4 => last!(4),
            5 => last!(5),
            _ => unreachable!("at most 5 columns remain"),
        }
    }};
}

mod exp;
mod gemm;
mod rows;
mod steps;
mod tiles;

pub(crate) use exp::exp_slice;
pub(crate) use gemm::linear;
pub(crate) use tiles::{attention, attention_with_weights};

#[allow(unused_imports)] // for the docs' links
use super::args::KB;
#[allow(unused_imports)]
use super::simd::Simd;
