//! Projections with `bf16` weights on AMX (Sapphire Rapids and later): [`super::bf16`]'s
//! products in tile instructions (`tdpbf16ps`: 16 tokens × 12 features × 32 inputs of `bf16`
//! products summed in `f32` per instruction). On the Xeons that have AMX, `vdpbf16ps` runs at
//! half the `f32` FMA rate, so without the tiles a layer with `bf16` weights is slower than
//! one with `f32` weights.
//!
//! Each panel of 32 tokens is rounded to `bf16` (to nearest, ties to even, as
//! [`super::bf16`] packs it) and packed one row of input pairs per token (the `A` operand: two
//! tiles of 16 tokens × 16 pairs per step). The weights are read where they are stored: a
//! storage tile of 12 features keeps each pair of rows as 12 words of two `bf16`
//! (`kernels/layout.rs`), which is the `B` operand's layout (16 pairs × 12 features per step)
//! as it stands; a partial step, the odd last row and a narrower last tile are copied into a
//! buffer first. The `f32` sums of a tile (16 tokens × 12 features) are stored, transposed in
//! registers to one vector of tokens per feature, and added to the bias (or to the outputs:
//! when adding, and for every chunk of inputs after the first).
//!
//! The accuracy is [`super::bf16`]'s (the contract in the docs of [`crate::Weight`]): inputs
//! rounded to `bf16`, exact products, `f32` sums in another order; the instruction reads
//! `bf16` values below `2⁻¹²⁶` as zero and flushes `f32` results below it to zero. The tile
//! registers are handled as in [`super::amx`] (configured on entry, released on return).

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes and features read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::asm;
use core::arch::x86_64::*;

use super::amx::{Block, L, STEP, Tiles, store_sums, tile_load, tile_zero_sums, transpose};
use super::args::{LinearIo, check_weights};
use super::bf16::{self, INTERLEAVE};
use super::int8::row_mask;
use super::layout::WEIGHT_TILE;

/// Tokens per panel (two `A` tiles).
const MR: usize = 2 * L;
/// Pairs of inputs per step (the 32-bit words of an `A` row, the rows of a `B` tile).
const STEP_PAIRS: usize = STEP / 4;

/// `out = x · Wᵀ + b` (or `out += x · Wᵀ`) under [`bf16::linear`]'s contract (the same
/// roundings, the sums in another order), in tile products: `x` (`s × din`, column-major), `W` (`dout × din`) as `bf16` bits in the paired
/// tile layout. The inputs of a panel of 32 tokens are packed as many pairs at a time as the
/// pack holds (from its first 64-byte boundary, whole steps of 16 pairs per token); the sums
/// of a chunk wait in the outputs for the next. With fewer than 64 inputs, or a pack that
/// cannot hold one step of 32 tokens (512 words from the boundary), it hands the work to
/// [`bf16::linear`].
///
/// # Safety
/// The CPU runs AMX-TILE and AMX-BF16, and the OS lets this process use the tile data
/// (`x86::amx_available`).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn linear(
    io: LinearIo<'_, f32>,
    s: usize,
    din: usize,
    w: &[u16],
    dout: usize,
    bias: &[f32],
    pack: &mut [f32],
) {
    let skip = pack.as_ptr().align_offset(STEP).min(pack.len());
    // Words per token of a chunk: whole steps.
    let row = (pack.len() - skip) / MR / STEP_PAIRS * STEP_PAIRS;
    // From two steps of inputs on the tiles are the faster, over few tokens or many
    // (`Linear<64, 64>` over 32 tokens: 1.0–1.2 µs against 2.4–2.6 with `vdpbf16ps`, over
    // 128: 4.5–4.7 against 10.2–10.3; `<96, 96>` over 16: 1.2 against 2.7, over 128: 7.1–7.3
    // against 24.3–24.8; one-off timers); below, unmeasured, the work stays with
    // `vdpbf16ps`.
    if row == 0 || din < 2 * 2 * STEP_PAIRS {
        bf16::linear(io, s, din, w, dout, bias, pack);
        return;
    }
    check_weights(w, bias, din, dout);
    let (x, out, add) = io.checked(s, din, dout);
    if s == 0 {
        return;
    }
    let pack: &mut [u32] = bytemuck::cast_slice_mut(&mut pack[skip..]);
    let pairs = din.div_ceil(2);
    let mut sums = [const { Block([[0; L]; L]) }; 4];
    let mut wbuf = Block([[0; L]; L]);
    // SAFETY: the CPU runs AMX and the OS allows it (the caller's promise).
    let _tiles = unsafe { Tiles::configure() };
    let mut i0 = 0;
    while i0 < s {
        let rows = MR.min(s - i0);
        let masks = [row_mask(rows.min(L)), row_mask(rows.saturating_sub(L))];
        let halves = if rows > L { 2 } else { 1 };
        let mut qc = 0;
        while qc < pairs {
            let nq = row.min(pairs - qc);
            let steps = nq.div_ceil(STEP_PAIRS);
            // SAFETY: rows `i0 ..` (masked) of inputs `2qc .. min(2(qc + nq), din)` of the
            // `s × din` `x`; the pack holds `MR` rows of `row ≥ steps · 16` words.
            unsafe {
                pack_rows(
                    x.as_ptr(),
                    s,
                    din,
                    i0,
                    &masks[..halves],
                    (qc, nq, steps),
                    row,
                    pack.as_mut_ptr(),
                )
            };
            let init = if qc == 0 && !add {
                Init::Bias
            } else {
                Init::Outputs
            };
            let mut pending: Option<Pair> = None;
            let mut t0 = 0;
            while t0 < dout {
                // Two storage tiles at a time (the second may be missing or narrower).
                let w0 = WEIGHT_TILE.min(dout - t0);
                let t1 = t0 + w0;
                let w1 = WEIGHT_TILE.min(dout - t1);
                let pair = Pair {
                    tiles: [t0, t1],
                    widths: [w0, w1],
                    qc,
                    steps,
                    halves,
                };
                let before = pending.take();
                let sums_ref = &sums;
                let o = Outputs {
                    bias,
                    out: out.as_mut_ptr(),
                    s,
                    i0,
                    masks,
                    init,
                };
                // The pair before's epilogue, a tile per step, while the tile unit computes.
                let epilogue = |k: usize| {
                    if let Some(b) = &before {
                        // SAFETY: the pair before's outputs in the panel's rows are inside
                        // `out` (`io.checked`); its sums were stored.
                        unsafe { finish_tile(b, k, sums_ref, &o) };
                    }
                };
                // SAFETY: the pack holds the panel's rows of `steps` steps (above); the
                // pair's tiles are inside `w` (`check_weights`).
                unsafe { products(&pair, pack.as_ptr(), row, w, din, &mut wbuf, epilogue) };
                // SAFETY: the tiles are configured; this pair's sums are in them.
                unsafe { store_pair(&pair, &mut sums) };
                pending = Some(pair);
                t0 = t1 + w1;
            }
            if let Some(before) = pending.take() {
                let o = Outputs {
                    bias,
                    out: out.as_mut_ptr(),
                    s,
                    i0,
                    masks,
                    init,
                };
                for k in 0..4 {
                    // SAFETY: as above.
                    unsafe { finish_tile(&before, k, &sums, &o) };
                }
            }
            qc += nq;
        }
        i0 += rows;
    }
}

/// What a chunk's sums are added to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Init {
    /// The first chunk of a projection that writes its outputs: the bias.
    Bias,
    /// Adding, or a later chunk: the outputs as they are.
    Outputs,
}

/// One pair of storage tiles (features `tiles[h] .. tiles[h] + widths[h]`; a width of 0:
/// no second tile) over `steps` steps of the chunk from pair `qc`, for `halves` tiles of 16
/// tokens.
struct Pair {
    tiles: [usize; 2],
    widths: [usize; 2],
    qc: usize,
    steps: usize,
    halves: usize,
}

/// Where a chunk's sums go: the biases and outputs (`s × dout`, column-major), the panel's
/// first row and lanes, and what the sums are added to.
struct Outputs<'a> {
    bias: &'a [f32],
    out: *mut f32,
    s: usize,
    i0: usize,
    masks: [__mmask16; 2],
    init: Init,
}

/// Stores a pair's sums, tile `2v + h` into `sums[2v + h]`.
///
/// # Safety
/// The tiles are configured.
#[inline(always)]
unsafe fn store_pair(pair: &Pair, sums: &mut [Block; 4]) {
    for v in 0..pair.halves {
        for h in 0..2 {
            if pair.widths[h] > 0 {
                // SAFETY: the caller's promise.
                unsafe { store_sums(2 * v + h, &mut sums[2 * v + h]) };
            }
        }
    }
}

/// The sums of a [`Pair`] into `tmm0 ..= tmm3` (`tmm(2v + h)`: tokens `16v ..`, tile `h`),
/// calling `after(k)` once the products of step `k` are issued, and for each `k < 4` past
/// the last step.
///
/// # Safety
/// The tiles are configured as `amx`'s; `a` holds `MR` rows of `row` words of which the
/// first `steps · 16` are the packed chunk; each tile of the pair is inside `w` (`dout × din`
/// in the paired tile layout).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn products<F: FnMut(usize)>(
    pair: &Pair,
    a: *const u32,
    row: usize,
    w: &[u16],
    din: usize,
    wbuf: &mut Block,
    mut after: F,
) {
    let whole = din / 2;
    let two = pair.widths[1] > 0;
    let stride = 4 * row;
    // SAFETY: the caller's contract: every load is inside the pack or the weights (a tile
    // is read in place only when its 16 pairs are whole pairs of a 12-feature tile), or
    // from `wbuf`.
    unsafe {
        tile_zero_sums();
        for k in 0..pair.steps {
            let q0 = pair.qc + k * STEP_PAIRS;
            let a0 = a.add(k * STEP_PAIRS).cast::<u8>();
            let weights = |h: usize, wbuf: &mut Block| {
                let (t0, width) = (pair.tiles[h], pair.widths[h]);
                let tile = w.as_ptr().add(t0 * din);
                if width == WEIGHT_TILE && q0 + STEP_PAIRS <= whole {
                    (tile.add(2 * q0 * WEIGHT_TILE).cast::<u8>(), 4 * WEIGHT_TILE)
                } else {
                    copy_weights(tile, width, din, q0, wbuf);
                    (wbuf.0.as_ptr().cast::<u8>(), 4 * L)
                }
            };
            tile_load::<4>(a0, stride);
            let (b, bs) = weights(0, wbuf);
            tile_load::<6>(b, bs);
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                options(nomem, nostack, preserves_flags)
            );
            if two {
                let (b, bs) = weights(1, wbuf);
                tile_load::<7>(b, bs);
                asm!(
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    options(nomem, nostack, preserves_flags)
                );
            }
            if pair.halves == 2 {
                tile_load::<5>(a0.add(L * stride), stride);
                asm!(
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    options(nomem, nostack, preserves_flags)
                );
                if two {
                    asm!(
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        options(nomem, nostack, preserves_flags)
                    );
                }
            }
            after(k);
        }
        for k in pair.steps..4 {
            after(k);
        }
    }
}

/// Pairs `q0 .. q0 + 16` of a storage tile (`width` features, `din` rows, paired) as `B`
/// rows in `buf` (pair `r`'s word of feature `n` at `buf[r][n]`): whole pairs copied, the odd
/// last row's weights in the low halves of their words, the rest zeros.
///
/// # Safety
/// The tile's `din · width` values are readable at `tile`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_weights(tile: *const u16, width: usize, din: usize, q0: usize, buf: &mut Block) {
    let whole = din / 2;
    let lanes = row_mask(width);
    for r in 0..STEP_PAIRS {
        let q = q0 + r;
        let words = if q < whole {
            // SAFETY: pair `q`'s `width` words (the other lanes masked off).
            unsafe { _mm512_maskz_loadu_epi32(lanes, tile.add(2 * q * width).cast()) }
        } else if q == whole && din % 2 == 1 {
            let mut last = [0u32; L];
            for (n, word) in last.iter_mut().enumerate().take(width) {
                // SAFETY: the odd last row's `width` values, after the whole pairs.
                *word = u32::from(unsafe { *tile.add(2 * q * width + n) });
            }
            // SAFETY: `last` holds one vector.
            unsafe { _mm512_loadu_si512(last.as_ptr().cast()) }
        } else {
            _mm512_setzero_si512()
        };
        // SAFETY: row `r` of `buf` is one vector.
        unsafe { _mm512_storeu_si512(buf.0[r].as_mut_ptr().cast(), words) };
    }
}

/// Packs pairs `qc .. qc + nq` of rows `i0 ..` of `x` as `bf16` pairs (input `2q` in the low
/// half of a word, `2q + 1` in the high half): token `t`'s words at `t · row` of `pack`, `16`
/// per step, for the 16 tokens of each mask (inputs past `din`, pairs past the chunk's and
/// tokens outside a mask are zeros).
///
/// # Safety
/// The rows of `masks` (one per 16 tokens packed) from `i0` are inside `x` (`s × din`,
/// column-major) for every input; `pack` holds `MR` rows of `row ≥ steps · 16` words.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_rows(
    x: *const f32,
    s: usize,
    din: usize,
    i0: usize,
    masks: &[__mmask16],
    (qc, nq, steps): (usize, usize, usize),
    row: usize,
    pack: *mut u32,
) {
    // SAFETY: masked reads of the caller's rows, inputs below `din`; writes inside `pack`.
    unsafe {
        let order = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        for (v, &mask) in masks.iter().enumerate() {
            for k in 0..steps {
                let mut words = [_mm512_setzero_si512(); L];
                for (r, word) in words
                    .iter_mut()
                    .enumerate()
                    .take(nq.saturating_sub(k * STEP_PAIRS))
                {
                    let p = 2 * (qc + k * STEP_PAIRS + r);
                    let even = x.wrapping_add(i0 + v * L + p * s);
                    let e = _mm512_maskz_loadu_ps(mask, even);
                    let o = if p + 1 < din {
                        _mm512_maskz_loadu_ps(mask, even.wrapping_add(s))
                    } else {
                        _mm512_setzero_ps()
                    };
                    // Words 0..16: bf16(e), 16..32: bf16(o); then interleaved into pairs.
                    let both = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(o, e));
                    *word = _mm512_permutexvar_epi16(order, both);
                }
                // Pair-major (16 pairs of 16 tokens) to token-major (16 tokens of 16 pairs).
                let rows = transpose(words);
                for (i, r) in rows.iter().enumerate() {
                    let at = (v * L + i) * row + k * STEP_PAIRS;
                    _mm512_storeu_si512(pack.add(at).cast(), *r);
                }
            }
        }
    }
}

/// The epilogue of tile `k = 2v + h` of a pair whose sums [`store_pair`] stored (nothing if
/// the pair has no such tile).
///
/// # Safety
/// As [`finish`], for that tile.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn finish_tile(pair: &Pair, k: usize, sums: &[Block; 4], o: &Outputs<'_>) {
    let (v, h) = (k / 2, k % 2);
    let w = pair.widths[h];
    if v < pair.halves && w > 0 {
        // SAFETY: the caller's promise.
        unsafe { finish(&sums[k], v, pair.tiles[h], w, o) };
    }
}

/// Tokens `16v ..` of features `j0 .. j0 + width` from the stored `sums` (token-major, `f32`
/// bits): transposed to one vector of tokens per feature and added to the bias or to the
/// outputs (as `o.init` says), then stored.
///
/// # Safety
/// The outputs of the lanes of `o.masks[v]` in rows `o.i0 + 16v ..` of columns
/// `j0 .. j0 + width` are inside `o.out`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline(never)]
unsafe fn finish(sums: &Block, v: usize, j0: usize, width: usize, o: &Outputs<'_>) {
    let mask = o.masks[v];
    let col = |n: usize| o.out.wrapping_add(o.i0 + v * L + (j0 + n) * o.s);
    let column = |acc: __m512i, n: usize| {
        let acc = _mm512_castsi512_ps(acc);
        let c = col(n);
        // SAFETY: masked reads and writes of the caller's outputs.
        unsafe {
            let start = match o.init {
                Init::Bias => _mm512_set1_ps(o.bias[j0 + n]),
                Init::Outputs => _mm512_maskz_loadu_ps(mask, c),
            };
            _mm512_mask_storeu_ps(c, mask, _mm512_add_ps(start, acc));
        }
    };
    if width == WEIGHT_TILE {
        // SAFETY: `sums` holds 16 vectors.
        let rows =
            core::array::from_fn(|m| unsafe { _mm512_loadu_si512(sums.0[m].as_ptr().cast()) });
        let cols = transpose(rows);
        // A constant bound: the columns stay in registers.
        for n in 0..WEIGHT_TILE {
            column(cols[n], n);
        }
    } else {
        // The narrow last tile of a projection: each feature's tokens gathered.
        for n in 0..width {
            let c: [i32; L] = core::array::from_fn(|m| sums.0[m][n]);
            // SAFETY: `c` holds one vector.
            column(unsafe { _mm512_loadu_si512(c.as_ptr().cast()) }, n);
        }
    }
}

/// `rounds` rounds of 4 independent `tdpbf16ps` at the projections' tile shape (each 16 × 12
/// × 32 products of `bf16` pairs, 2 FLOPs each) on tiles loaded once: the loop the core's AMX
/// `bf16` peak is measured with. Returns the FLOPs done and a sum that depends on the last
/// products.
///
/// # Safety
/// As [`linear`].
pub(super) unsafe fn dot_loop(rounds: usize) -> (u64, f32) {
    // Every `bf16` of both operands 1.0 (0x3f80), so the sums count the products.
    let ones = Block([[core::hint::black_box(0x3f80_3f80); L]; L]);
    let mut sums = Block([[0; L]; L]);
    // SAFETY: the caller's promise.
    let _tiles = unsafe { Tiles::configure() };
    // SAFETY: the tiles are configured; the loads read `ones` (16 rows of 64 bytes).
    unsafe {
        tile_zero_sums();
        tile_load::<4>(ones.0.as_ptr().cast(), 4 * L);
        tile_load::<6>(ones.0.as_ptr().cast(), 4 * L);
        for _ in 0..rounds {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "tdpbf16ps tmm3, tmm4, tmm6",
                out("tmm0") _,
                out("tmm1") _,
                out("tmm2") _,
                out("tmm3") _,
                options(nomem, nostack, preserves_flags)
            );
        }
        store_sums(0, &mut sums);
    }
    (
        rounds as u64 * 4 * (L * WEIGHT_TILE * 2 * STEP_PAIRS) as u64 * 2,
        f32::from_bits(sums.0[0][0].cast_unsigned()),
    )
}
