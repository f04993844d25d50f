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

use super::amx::{Block, L, Operands, Pair, STEP, Tiles, columns, products, store_pair, transpose};
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
            let o = Outputs {
                bias,
                out: out.as_mut_ptr(),
                s,
                i0,
                masks,
                first: qc == 0 && !add,
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
                    din,
                    qc,
                    steps,
                    halves,
                };
                let before = pending.take();
                let sums_ref = &sums;
                // The pair before's epilogue, a tile per step, while the tile unit computes.
                let epilogue = |k: usize| {
                    if let Some((v, j0, width)) = before.as_ref().and_then(|b| b.tile(k)) {
                        // SAFETY: the pair before's outputs in the panel's rows are inside
                        // `out` (`io.checked`); its sums were stored.
                        unsafe { finish(&sums_ref[k], v, j0, width, &o) };
                    }
                };
                // SAFETY: the pack holds the panel's rows of `steps` steps, `row` words apart
                // (above); the pair's tiles are inside `w` (`check_weights`).
                unsafe {
                    products::<Bf16, _>(
                        &pair,
                        pack.as_ptr(),
                        4 * row,
                        w.as_ptr().cast(),
                        &mut wbuf,
                        epilogue,
                    );
                }
                // SAFETY: the tiles are configured; this pair's sums are in them.
                unsafe { store_pair(&pair, &mut sums) };
                pending = Some(pair);
                t0 = t1 + w1;
            }
            if let Some(before) = pending.take() {
                for k in 0..4 {
                    if let Some((v, j0, width)) = before.tile(k) {
                        // SAFETY: as above.
                        unsafe { finish(&sums[k], v, j0, width, &o) };
                    }
                }
            }
            qc += nq;
        }
        i0 += rows;
    }
}

/// Where a chunk's sums go: the biases and outputs (`s × dout`, column-major), the panel's
/// first row and lanes, and whether the sums are added to the biases (the first chunk of a
/// projection that writes its outputs) or to the outputs as they are.
struct Outputs<'a> {
    bias: &'a [f32],
    out: *mut f32,
    s: usize,
    i0: usize,
    masks: [__mmask16; 2],
    first: bool,
}

/// `bf16` weights and inputs: pairs of `bf16`, `tdpbf16ps`.
pub(super) struct Bf16;

impl Operands for Bf16 {
    const GROUP: usize = 2;

    /// The odd last row's weight of feature `n`, in the low half.
    #[inline(always)]
    unsafe fn last_word(tile: *const u8, width: usize, din: usize, n: usize) -> u32 {
        // SAFETY: the caller's tile; the odd last row's `width` values follow the whole pairs.
        u32::from(unsafe {
            tile.cast::<u16>()
                .add((din - 1) * width + n)
                .read_unaligned()
        })
    }

    #[inline(always)]
    unsafe fn dot(k: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            match k {
                0 => asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    options(nomem, nostack, preserves_flags)
                ),
                1 => asm!(
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    options(nomem, nostack, preserves_flags)
                ),
                2 => asm!(
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    options(nomem, nostack, preserves_flags)
                ),
                3 => asm!(
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nomem, nostack, preserves_flags)
                ),
                _ => unreachable!("a pair has four tiles of sums"),
            }
        }
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

/// Tokens `16v ..` of features `j0 .. j0 + width` from the stored `sums` (token-major, `f32`
/// bits): transposed to one vector of tokens per feature and added to the bias or to the
/// outputs (as `o.first` says), then stored.
///
/// # Safety
/// The outputs of the lanes of `o.masks[v]` in rows `o.i0 + 16v ..` of columns
/// `j0 .. j0 + width` are inside `o.out`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline(never)]
unsafe fn finish(sums: &Block, v: usize, j0: usize, width: usize, o: &Outputs<'_>) {
    let mask = o.masks[v];
    columns(sums, width, |acc, n| {
        let col = o.out.wrapping_add(o.i0 + v * L + (j0 + n) * o.s);
        // SAFETY: masked reads and writes of the caller's outputs.
        unsafe {
            let start = if o.first {
                _mm512_set1_ps(o.bias[j0 + n])
            } else {
                _mm512_maskz_loadu_ps(mask, col)
            };
            _mm512_mask_storeu_ps(col, mask, _mm512_add_ps(start, _mm512_castsi512_ps(acc)));
        }
    });
}
