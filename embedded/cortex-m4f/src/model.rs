//! The firmware's model, shared with the host test (`tests/firmware.rs` includes this file):
//! two layers whose weights are decoded at compile time, by `const fn`, from the little-endian
//! blob `model.bin`, and the fixed inputs they run on.
//!
//! Blob layout (`f32`, little-endian, PyTorch's row-major `weight[OUT][IN]`):
//! 1. `MultiHead<16, 64, 4>`: for each of q, k, v, out: `weight` (64 × 64), then `bias` (64);
//! 2. `GroupedQuery<64, 4, 2, 64, 32>` (Llama-style, no biases): `q_proj` (64 × 64), `k_proj`
//!    (32 × 64), `v_proj` (32 × 64), `o_proj` (64 × 64).
//!
//! The multi-head layer is built three times: with `f32` weights (`MHA`), with the same
//! weights rounded to `f16` (`MHA16`, half the flash), and quantized to symmetric `i8` with
//! one `f32` scale per output feature (`MHA8`, 27.7 % of the flash; quantized at compile
//! time by `Linear::from_f32_rows`, which gives `Linear::to_weights::<i8>`'s values).
//!
//! A blob of another length stops the build (the `const` assertion below).

use static_attention::{GroupedQuery, Linear, MultiHead, SMatrix, f16};

/// Tokens of the forward pass.
pub const SEQ: usize = 16;
/// Model width.
pub const DIM: usize = 64;
/// Heads of both layers.
pub const HEADS: usize = 4;
/// Key/value heads of the grouped-query layer, and their width (2 × 16).
pub const KV_HEADS: usize = 2;
pub const KV_DIM: usize = 32;
/// Features per head.
pub const HEAD_DIM: usize = DIM / HEADS;
/// The decoder's prompt and the tokens decoded after it; the cache holds them all.
pub const PROMPT: usize = 8;
pub const STEPS: usize = 4;
pub const CAP: usize = 16;
/// Positions of the rotary table.
pub const MAX_POS: usize = 32;

/// The weights, as bytes (only read at compile time: the decoded layers are what the firmware
/// stores).
const BLOB: &[u8] = include_bytes!("../model.bin");

/// Scalars of the multi-head layer's part of the blob (four weights with their biases).
const MHA_SCALARS: usize = 4 * (DIM * DIM + DIM);
/// Scalars of the grouped-query layer's part (its four weights, no biases).
const GQA_SCALARS: usize = 2 * DIM * DIM + 2 * KV_DIM * DIM;
/// The blob's length in bytes.
pub const BLOB_BYTES: usize = 4 * (MHA_SCALARS + GQA_SCALARS);

const _: () = assert!(
    BLOB.len() == BLOB_BYTES,
    "model.bin has the wrong length for MultiHead<16, 64, 4> and GroupedQuery<64, 4, 2, 64, 32>"
);

/// The `f32` at scalar index `i` of the blob.
const fn at(i: usize) -> f32 {
    let o = 4 * i;
    f32::from_bits(u32::from_le_bytes([
        BLOB[o],
        BLOB[o + 1],
        BLOB[o + 2],
        BLOB[o + 3],
    ]))
}

/// `weight[OUT][IN]` starting at scalar `start`.
const fn rows<const IN: usize, const OUT: usize>(start: usize) -> [[f32; IN]; OUT] {
    let mut w = [[0.0; IN]; OUT];
    let mut n = 0;
    while n < OUT {
        let mut p = 0;
        while p < IN {
            w[n][p] = at(start + n * IN + p);
            p += 1;
        }
        n += 1;
    }
    w
}

/// `len` scalars of the blob from scalar `start`, as bytes.
const fn part(start: usize, len: usize) -> &'static [u8] {
    BLOB.split_at(4 * start).1.split_at(4 * len).0
}

/// A `DIM → DIM` map with its bias, starting at scalar `start` (the library's `const fn`
/// decoder, which also checks the length).
const fn with_bias(start: usize) -> Linear<DIM, DIM> {
    Linear::from_le_bytes(part(start, DIM * DIM + DIM))
}

/// The same map with its weights rounded to `f16` (the bias stays `f32`).
const fn with_bias_f16(start: usize) -> Linear<DIM, DIM, f32, f16> {
    let w = rows::<DIM, DIM>(start);
    let mut h = [[f16::ZERO; DIM]; DIM];
    let mut b = [0.0; DIM];
    let mut n = 0;
    while n < DIM {
        let mut p = 0;
        while p < DIM {
            h[n][p] = f16::from_f32_const(w[n][p]);
            p += 1;
        }
        b[n] = at(start + DIM * DIM + n);
        n += 1;
    }
    Linear::from_rows(h, b)
}

/// The same map quantized to `i8` as `Linear::to_weights::<i8>` does it (per output feature,
/// the scale `max |w| / 127` and each weight the nearest integer multiple of it), at compile
/// time. The bias stays `f32`.
const fn with_bias_i8(start: usize) -> Linear<DIM, DIM, f32, i8> {
    let mut b = [0.0; DIM];
    let mut n = 0;
    while n < DIM {
        b[n] = at(start + DIM * DIM + n);
        n += 1;
    }
    Linear::from_f32_rows(rows::<DIM, DIM>(start), b)
}

const P: usize = DIM * DIM + DIM;

/// The multi-head layer, its weights in flash.
pub static MHA: MultiHead<SEQ, DIM, HEADS> = MultiHead::from_parts(
    with_bias(0),
    with_bias(P),
    with_bias(2 * P),
    with_bias(3 * P),
);

/// The multi-head layer again with half-precision weights: half the flash for the weights.
pub static MHA16: MultiHead<SEQ, DIM, HEADS, f32, f16> = MultiHead::from_parts(
    with_bias_f16(0),
    with_bias_f16(P),
    with_bias_f16(2 * P),
    with_bias_f16(3 * P),
);

/// The multi-head layer again with `i8` weights and per-feature `f32` scales (W8A8: each
/// token's inputs are quantized on the fly; the attention runs in `f32`).
pub static MHA8: MultiHead<SEQ, DIM, HEADS, f32, i8> = MultiHead::from_parts(
    with_bias_i8(0),
    with_bias_i8(P),
    with_bias_i8(2 * P),
    with_bias_i8(3 * P),
);

const G: usize = MHA_SCALARS;

/// The grouped-query layer (4 query heads on 2 kv heads of 16), its weights in flash.
pub static GQA: GroupedQuery<DIM, HEADS, KV_HEADS, DIM, KV_DIM> = GroupedQuery::from_parts(
    Linear::from_le_bytes_without_bias(part(G, DIM * DIM)),
    Linear::from_le_bytes_without_bias(part(G + DIM * DIM, KV_DIM * DIM)),
    Linear::from_le_bytes_without_bias(part(G + DIM * DIM + KV_DIM * DIM, KV_DIM * DIM)),
    Linear::from_le_bytes_without_bias(part(G + DIM * DIM + 2 * KV_DIM * DIM, DIM * DIM)),
);

/// The forward pass's input: token `t`, feature `f` (exact in `f32`, no math library).
#[must_use]
pub fn input() -> SMatrix<f32, SEQ, DIM> {
    SMatrix::from_fn(|t, f| ((t * 7 + f * 13) % 29) as f32 / 14.0 - 1.0)
}

/// The decoder's tokens: the prompt, then the decoded ones.
#[must_use]
pub fn tokens() -> SMatrix<f32, CAP, DIM> {
    SMatrix::from_fn(|t, f| ((t * 11 + f * 5) % 23) as f32 / 11.0 - 1.0)
}
