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
//! - `exp.rs`: the vector `exp` over slices and single values, and `tanh` over slices (what
//!   the tests measure [`Simd::tanh`] through).
//!
//! The logit variants (see `Problem`): with a soft-cap, each block of scores (each key block
//! of a streaming tile or of a row, all of a weights tile's keys) goes through the
//! `soft_cap` pass of `steps.rs` (`c · tanh(scale·x / c)` with [`Simd::tanh`]) right after
//! its micro-kernel, and the scale-and-mask step then scales by 1 (exact), so the bias is
//! added to the capped score. With a sink, each lane's online softmax starts at `m = s`,
//! `l = 1` (the weights tiles take `s` into their maximum and add `e^(s − m)` to the sum).
//! Neither adds work to the plain path's loops: one test per block, outside them. A NaN or
//! `+∞` sink writes NaN everywhere before any tile runs.
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

pub(crate) use exp::{exp_slice, fma_loop, tanh_slice};
pub(crate) use gemm::linear;
#[cfg(target_arch = "x86_64")]
pub(crate) use gemm::linear_widening;
pub(crate) use gemm::{i8_exact_inputs, linear_i8};
pub(crate) use tiles::{attention, attention_with_weights};

/// The kernel tables of one instruction set, one `$module::TABLE` per line `mod $module: …;`
/// (one per scalar type): the kernels above compiled for it, in a module of its own. Each entry
/// is a function that makes the `Simd` implementation (`$simd`, an expression building it from
/// its token) and runs the generic kernel, so the kernel is inlined into it; `$attr` (the
/// instruction set's `#[target_feature]`, none where it is the target's baseline) is put on
/// each of them. `$widen` widens half-precision weights ([`Table::widen`]).
///
/// The expansion's `use super::*` brings the names `$simd` and `$widen` use into scope.
macro_rules! table {
    // No table left.
    ($(#[$attr:meta])*) => {};
    (
        $(#[$attr:meta])*
        mod $module:ident: $e:ty = $simd:expr, $kernel:expr, $widen:path;
        $($rest:tt)*
    ) => {
        mod $module {
            use super::*;
            use $crate::kernels::args::{I8Out, LinearIo, Problem, QueryIo, WorkRef};
            use $crate::kernels::{Table, vector};

            $(#[$attr])*
            fn linear(
                io: LinearIo<'_, $e>,
                s: usize,
                din: usize,
                w: &[$e],
                dout: usize,
                bias: &[$e],
                pack: &mut [$e],
            ) {
                vector::linear($simd, io, s, din, w, dout, bias, pack)
            }

            /// `i8` weights on the `f32` GEMM with exact sums where it can (few enough
            /// inputs, room for four columns of a panel), the reference otherwise; each
            /// projection quantizes its own tokens.
            $(#[$attr])*
            fn linear_i8(
                x: &[$e],
                s: usize,
                din: usize,
                projs: &mut [I8Out<'_, $e>],
                pack: &mut [$e],
            ) {
                let gemm = din <= vector::i8_exact_inputs::<$e>()
                    && pack.len() >= 8 * $crate::kernels::PANEL_ROWS;
                for p in projs {
                    if gemm {
                        vector::linear_i8($simd, x, s, din, p, pack);
                    } else {
                        let (q, dout, scales, bias) = (p.q, p.dout(), p.scales, p.bias);
                        let io = LinearIo::Out { x, out: &mut *p.out };
                        $crate::kernels::scalar::linear_i8(io, s, din, q, dout, scales, bias);
                    }
                }
            }

            $(#[$attr])*
            fn attention(io: QueryIo<'_, $e>, p: &Problem<'_, $e>, work: WorkRef<'_, $e>) {
                vector::attention($simd, io, p, work)
            }

            $(#[$attr])*
            fn weights(io: QueryIo<'_, $e>, p: &Problem<'_, $e>, weights: &mut [$e]) {
                vector::attention_with_weights($simd, io, p, weights)
            }

            $(#[$attr])*
            fn exp(xs: &mut [$e]) {
                vector::exp_slice($simd, xs)
            }

            $(#[$attr])*
            fn tanh(xs: &mut [$e]) {
                vector::tanh_slice($simd, xs)
            }

            $(#[$attr])*
            fn fma_loop(rounds: usize) -> (u64, $e) {
                vector::fma_loop($simd, rounds)
            }

            pub(super) static TABLE: Table<$e> = Table {
                kernel: $kernel,
                linear,
                attention,
                weights,
                exp,
                tanh,
                fma_loop,
                widen: $widen,
                linear_bf16: None,
                linear_i8: Some(linear_i8),
                linear_bf16_exact: None,
                linear_widening: None,
                attention_bf16: None,
                attention_i8: None,
            };
        }

        $crate::kernels::vector::table! { $(#[$attr])* $($rest)* }
    };
}
pub(crate) use table;

#[allow(unused_imports)] // for the docs' links
use super::args::KB;
#[allow(unused_imports)]
use super::simd::Simd;
