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

mod steps;

mod exp;
mod gemm;
mod rows;
mod tiles;

pub(crate) use exp::{exp_slice, fma_loop};
pub(crate) use gemm::linear;
pub(crate) use tiles::{attention, attention_with_weights};

#[allow(unused_imports)] // for the docs' links
use super::args::KB;
#[allow(unused_imports)]
use super::simd::Simd;
