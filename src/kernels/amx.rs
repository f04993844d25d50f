//! Projections with `i8` weights on AMX (Sapphire Rapids and later): the W8A8 kernel that
//! matches `scalar::linear_i8` bit for bit, in tile products (`tdpbssd`: here 16 tokens × 12
//! features × 64 inputs of signed byte products into a 16 × 12 block of `i32` per
//! instruction; its peak rate is about five times that of AVX512-VNNI's `vpdpbusd`).
//!
//! Each panel of 32 tokens is quantized as the reference does (per token: `a = max |x|`,
//! `r = 127 / a`, `x̂ = round(x·r)` within `±127`) and packed as signed bytes, one row of
//! inputs per token (the `A` operand: two tiles of 16 tokens × 64 inputs per step). The
//! weights are read where they are stored: a storage tile of 12 features keeps each quad of
//! rows as 12 words of four bytes (`kernels/layout.rs`), which is the `B` operand's layout
//! (16 quads × 12 features per step) as it stands. Both operands are signed, so there is no
//! offset to take back out. The `i32` sums are exact; the tile of sums (16 tokens × 12
//! features) is stored, transposed in registers to one vector of tokens per feature, and the
//! epilogue `f(Σ)·((a/127)·scale_n) + b_n` rounds as the reference does.
//!
//! The tile registers are configured on entry and released on return, unwinding included
//! (`tilerelease`: a call leaves them in their initial state, whatever they held before). The
//! tile instructions are written in inline assembly (Rust's AMX intrinsics are not stable),
//! the state of the tiles carried from one `asm!` block to the next on purpose (the compiler
//! never allocates them; each block declares the tiles it writes); they need the OS's
//! permission to use the tile data, which `x86::amx_available` asks for once.

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes and features read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::asm;
use core::arch::x86_64::*;

use super::args::{I8Out, check_i8};
use super::int8::{self, MR, Tokens, row_mask, token_scales};
use super::layout::{WEIGHT_TILE, last_quad_word};

/// Tokens per `A` tile, and `i32` lanes per vector.
pub(super) const L: usize = 16;
/// Input bytes per row of an `A` tile (one step of the products).
pub(super) const STEP: usize = 64;
/// Quads of inputs per step (the rows of a `B` tile).
const STEP_QUADS: usize = STEP / 4;

/// The tile configuration (`ldtilecfg`'s 64-byte operand): palette 1; `tmm0 ..= tmm3` the
/// sums (16 tokens × 12 features of `i32`), `tmm4`, `tmm5` the tokens (16 × 64 bytes),
/// `tmm6`, `tmm7` the weights (16 quads × 12 features of four bytes).
#[repr(C, align(64))]
pub(super) struct Config([u8; 64]);

impl Config {
    /// Palette 1 with tile `t` of `rows[t]` rows of `bytes[t]` bytes (at most 16 and 64).
    pub(super) const fn shaped(rows: [u8; 8], bytes: [u8; 8]) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            assert!(
                rows[t] <= 16 && bytes[t] <= 64,
                "a tile is at most 16 rows of 64 bytes"
            );
            // Bytes per row (little-endian u16 at 16 + 2t), then rows (at 48 + t).
            c[16 + 2 * t] = bytes[t];
            c[48 + t] = rows[t];
            t += 1;
        }
        Self(c)
    }
}

const SUMS_BYTES: u8 = 4 * WEIGHT_TILE as u8;
static CONFIG: Config = Config::shaped(
    [16; 8],
    [
        SUMS_BYTES, SUMS_BYTES, SUMS_BYTES, SUMS_BYTES, STEP as u8, STEP as u8, SUMS_BYTES,
        SUMS_BYTES,
    ],
);

/// A block of 16 rows of 16 words, 64-byte aligned: a weight tile's rows copied where they
/// cannot be read in place, or a tile of sums stored for the epilogue.
#[repr(C, align(64))]
pub(super) struct Block(pub(super) [[i32; L]; L]);

/// `out_p = x · W_pᵀ + b_p` for each projection `p` of the same inputs (`x`, `s × din`,
/// column-major), as [`int8::linear`] computes it (the same bits): the tokens of a panel are
/// quantized and packed once for all the projections (once per chunk of inputs, when the
/// pack cannot hold every input of 32 tokens; the partial sums wait in the outputs). With a
/// pack shorter than one step of 32 tokens from its first 64-byte boundary (512 words from
/// there: up to 527 in all), fewer than 64 inputs, or fewer than 128 inputs for more than 32
/// tokens, it hands the work to [`int8::linear`].
///
/// # Safety
/// The CPU runs AMX-TILE and AMX-INT8, and the OS lets this process use the tile data
/// (`x86::amx_available`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn linear(
    x: &[f32],
    s: usize,
    din: usize,
    projs: &mut [I8Out<'_, f32>],
    pack: &mut [f32],
) {
    check_i8(x, s, din, projs, (pack.len(), 2 * MR));
    // The pack from its first 64-byte boundary (a tile row is then one cache line), and its
    // bytes per token: whole steps.
    let skip = pack.as_ptr().align_offset(STEP).min(pack.len());
    let row = (pack.len() - skip) * 4 / MR / STEP * STEP;
    // Below two steps of inputs, each pair of tiles is more epilogue than products, and over
    // more than a panel of tokens 512-bit `vpdpbusd` is as fast or faster (`Linear<64, 64>`
    // over 128 tokens: 4.0 against 4.3 µs; `<96, 96>`: 7.5 against 7.8–8.7; `<128, 128>`:
    // 10.7–11.3 against 9.6–9.7, one-off timers on a Xeon with AMX). With fewer tokens the
    // tiles waste less than the vectors (a panel of 32 tokens against 16 rows), down to one
    // step: below that, the setting up of the tiles dominates (`Linear<32, 32>` over 32
    // tokens: 0.50 µs with `vpdpbusd`, 0.72 on the tiles).
    if row == 0 || din < STEP || (din < 2 * STEP && s > MR) {
        int8::linear(x, s, din, projs, pack);
        return;
    }
    if s == 0 {
        return;
    }
    let pack: &mut [u32] = bytemuck::cast_slice_mut(&mut pack[skip..]);
    let quads = din.div_ceil(4);
    let chunk_quads = row / 4;
    // A pair's sums, stored, wait for their epilogue until the next pair's products are
    // under way, and the epilogue of each of its tiles is then interleaved with a step of
    // those products: the vector unit finishes while the tile unit computes.
    let mut sums = [const { Block([[0; L]; L]) }; 4];
    let mut wbuf = Block([[0; L]; L]);
    // SAFETY: the CPU runs AMX and the OS allows it (the caller's promise).
    let _tiles = unsafe { Tiles::configure() };
    let mut i0 = 0;
    while i0 < s {
        let rows = MR.min(s - i0);
        let masks = [row_mask(rows.min(L)), row_mask(rows.saturating_sub(L))];
        // SAFETY: rows `i0 .. i0 + rows ≤ s` of the `s × din` column-major `x`.
        let tokens = unsafe { token_scales(x.as_ptr(), s, din, i0, masks) };
        let mut pending: Option<(Pair, Outputs<'_>)> = None;
        let mut qc = 0;
        while qc < quads {
            let nq = chunk_quads.min(quads - qc);
            let steps = nq.div_ceil(STEP_QUADS);
            // SAFETY: rows `i0 ..` (masked) of inputs `4qc .. min(4(qc + nq), din)`; the pack
            // holds `MR` rows of `steps · STEP ≤ row` bytes. (The tile loads of the pairs
            // before, issued earlier, read the pack before these stores.)
            unsafe {
                pack_rows(
                    x.as_ptr(),
                    s,
                    din,
                    i0,
                    masks,
                    &tokens,
                    (qc, nq, steps),
                    pack.as_mut_ptr(),
                );
            }
            let (first, last) = (qc == 0, qc + nq == quads);
            for p in projs.iter_mut() {
                let dout = p.dout();
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
                        halves: if rows > L { 2 } else { 1 },
                    };
                    let before = pending.take();
                    let (sums_ref, tokens_ref) = (&sums, &tokens);
                    let epilogue = |k: usize| {
                        if let Some((b, out)) = &before
                            && let Some((v, j0, width)) = b.tile(k)
                        {
                            // SAFETY: the pair before's outputs in the panel's rows are
                            // inside its projection's (`I8Out::check`); its sums were stored.
                            unsafe { finish(&sums_ref[k], tokens_ref, v, j0, width, out) };
                        }
                    };
                    // SAFETY: the pack holds the panel's rows of `steps` steps (above); the
                    // pair's tiles are inside `p.q` (`I8Out::check`).
                    unsafe {
                        products::<I8, _>(
                            &pair,
                            pack.as_ptr(),
                            steps * STEP,
                            p.q.as_ptr().cast(),
                            &mut wbuf,
                            epilogue,
                        )
                    };
                    // The lines this pair's epilogue will write, asked for while its products
                    // run (each a write to a line not yet cached: about a tenth of the time).
                    for v in 0..pair.halves {
                        for n in 0..w0 + w1 {
                            let col = p.out.as_ptr().wrapping_add(i0 + v * L + (t0 + n) * s);
                            // SAFETY: a prefetch reads nothing and cannot fault (an unsafe
                            // function before Rust 1.91, the crate's minimum being 1.89).
                            #[allow(unused_unsafe)]
                            unsafe {
                                _mm_prefetch::<_MM_HINT_ET0>(col.cast());
                            }
                        }
                    }
                    // SAFETY: the tiles are configured; this pair's sums are in them.
                    unsafe { store_pair(&pair, &mut sums) };
                    let out = Outputs {
                        scales: p.scales,
                        bias: p.bias,
                        out: p.out.as_mut_ptr(),
                        s,
                        i0,
                        masks,
                        first,
                        last,
                    };
                    pending = Some((pair, out));
                    t0 = t1 + w1;
                }
            }
            qc += nq;
        }
        if let Some((before, out)) = pending.take() {
            for k in 0..4 {
                if let Some((v, j0, width)) = before.tile(k) {
                    // SAFETY: as above.
                    unsafe { finish(&sums[k], &tokens, v, j0, width, &out) };
                }
            }
        }
        i0 += rows;
    }
}

/// The tile registers, configured (as [`CONFIG`], or as the caller's [`Config`]) until this
/// is dropped (then released).
pub(super) struct Tiles(());

impl Tiles {
    /// # Safety
    /// The CPU runs AMX-TILE and the OS allows the tile data.
    pub(super) unsafe fn configure() -> Self {
        // SAFETY: the caller's promise.
        unsafe { Self::configure_as(&CONFIG) }
    }

    /// # Safety
    /// The CPU runs AMX-TILE and the OS allows the tile data.
    pub(super) unsafe fn configure_as(config: &Config) -> Self {
        // SAFETY: the caller's promise; `Config::shaped` builds valid palette-1
        // configurations only.
        unsafe { tile_config(config) };
        Self(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured (`configure`), so the CPU runs AMX-TILE.
        unsafe { tile_release() };
    }
}

/// Stores a pair's sums, tile `2v + h` into `sums[2v + h]`.
///
/// # Safety
/// The tiles are configured.
#[inline(always)]
pub(super) unsafe fn store_pair(pair: &Pair, sums: &mut [Block; 4]) {
    for v in 0..pair.halves {
        for h in 0..2 {
            if pair.widths[h] > 0 {
                // SAFETY: the caller's promise.
                unsafe { store_sums(2 * v + h, &mut sums[2 * v + h]) };
            }
        }
    }
}

/// One pair of storage tiles (features `tiles[h] .. tiles[h] + widths[h]`; a width of 0:
/// no second tile) of a projection with `din` inputs, over `steps` steps of the chunk from
/// word `qc` (a quad of `i8` inputs, a pair of `bf16` ones), for `halves` tiles of 16 tokens.
pub(super) struct Pair {
    pub(super) tiles: [usize; 2],
    pub(super) widths: [usize; 2],
    pub(super) din: usize,
    pub(super) qc: usize,
    pub(super) steps: usize,
    pub(super) halves: usize,
}

impl Pair {
    /// Tile `k = 2v + h` of the sums: its tokens' vector `v`, first feature and width;
    /// `None` where the pair has no such tile.
    #[inline(always)]
    pub(super) fn tile(&self, k: usize) -> Option<(usize, usize, usize)> {
        let (v, h) = (k / 2, k % 2);
        (v < self.halves && self.widths[h] > 0).then(|| (v, self.tiles[h], self.widths[h]))
    }
}

/// What the tile products of a projection multiply: `i8` quads (`tdpbssd`) or `bf16` pairs
/// (`tdpbf16ps`, `amx_bf16.rs`). Both keep a storage tile's rows grouped into 32-bit words
/// of one feature (`kernels/layout.rs`), which is the `B` operand's layout.
pub(super) trait Operands {
    /// Inputs per 32-bit word.
    const GROUP: usize;
    /// Feature `n`'s word of the partial last word of a storage tile (`width` features, `din`
    /// rows, at `tile`; `din` not a multiple of [`Operands::GROUP`]): its plain last rows put
    /// together as the whole words are, the rest zero.
    ///
    /// # Safety
    /// The tile's `din · width` weights are readable at `tile`.
    unsafe fn last_word(tile: *const u8, width: usize, din: usize, n: usize) -> u32;
    /// `tmm(k) += tmm(4 + k / 2) · tmm(6 + k % 2)`: tile `k` of a pair's sums.
    ///
    /// # Safety
    /// The tiles are configured as [`CONFIG`], and the operands loaded.
    unsafe fn dot(k: usize);
}

/// `i8` weights and inputs: quads of signed bytes, `tdpbssd`.
pub(super) struct I8;

impl Operands for I8 {
    const GROUP: usize = 4;

    #[inline(always)]
    unsafe fn last_word(tile: *const u8, width: usize, din: usize, n: usize) -> u32 {
        // SAFETY: the caller's promise.
        let bytes = unsafe { core::slice::from_raw_parts(tile.cast::<i8>(), din * width) };
        last_quad_word(bytes, width, din, n)
    }

    #[inline(always)]
    unsafe fn dot(k: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            match k {
                0 => asm!(
                    "tdpbssd tmm0, tmm4, tmm6",
                    options(nomem, nostack, preserves_flags)
                ),
                1 => asm!(
                    "tdpbssd tmm1, tmm4, tmm7",
                    options(nomem, nostack, preserves_flags)
                ),
                2 => asm!(
                    "tdpbssd tmm2, tmm5, tmm6",
                    options(nomem, nostack, preserves_flags)
                ),
                3 => asm!(
                    "tdpbssd tmm3, tmm5, tmm7",
                    options(nomem, nostack, preserves_flags)
                ),
                _ => unreachable!("a pair has four tiles of sums"),
            }
        }
    }
}

/// The sums of a [`Pair`] into `tmm0 ..= tmm3` (`tmm(2v + h)`: tokens `16v ..`, tile `h`),
/// calling `after(k)` once the products of step `k` are issued, and for each `k < 4` past
/// the last step (the caller's vector work, done while the tile unit computes).
///
/// # Safety
/// The tiles are configured as [`CONFIG`]; `a` holds `MR` rows `stride` bytes apart of which
/// the first `steps · STEP` bytes are the packed chunk; each tile of the pair is inside the
/// weights at `w` (`dout × din` of [`Operands::GROUP`] per word, in the grouped tile layout).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn products<K: Operands, F: FnMut(usize)>(
    pair: &Pair,
    a: *const u32,
    stride: usize,
    w: *const u8,
    wbuf: &mut Block,
    mut after: F,
) {
    let whole = pair.din / K::GROUP;
    let two = pair.widths[1] > 0;
    // SAFETY: the caller's contract: every load is inside the pack or the weights (a tile
    // is read in place only when its 16 words are whole words of a 12-feature tile), or
    // from `wbuf`.
    unsafe {
        tile_zero_sums();
        for k in 0..pair.steps {
            let q0 = pair.qc + k * STEP_QUADS;
            let a0 = a.cast::<u8>().add(k * STEP);
            // Each load just before its first product: the tile unit takes its instructions
            // in order, and a load into a tile waits for the products still reading it.
            let weights = |h: usize, wbuf: &mut Block| {
                let (t0, width) = (pair.tiles[h], pair.widths[h]);
                let tile = w.add(t0 * pair.din * 4 / K::GROUP);
                if width == WEIGHT_TILE && q0 + STEP_QUADS <= whole {
                    (tile.add(4 * q0 * WEIGHT_TILE), 4 * WEIGHT_TILE)
                } else {
                    copy_weights::<K>(tile, width, pair.din, q0, wbuf);
                    (wbuf.0.as_ptr().cast::<u8>(), 4 * L)
                }
            };
            tile_load::<4>(a0, stride);
            let (b, bs) = weights(0, wbuf);
            tile_load::<6>(b, bs);
            K::dot(0);
            if two {
                let (b, bs) = weights(1, wbuf);
                tile_load::<7>(b, bs);
                K::dot(1);
            }
            if pair.halves == 2 {
                tile_load::<5>(a0.add(L * stride), stride);
                K::dot(2);
                if two {
                    K::dot(3);
                }
            }
            after(k);
        }
        for k in pair.steps..4 {
            after(k);
        }
    }
}

/// Words `q0 .. q0 + 16` of a storage tile (`width` features, `din` rows, at `tile`) as `B`
/// rows in `buf` (word `r` of feature `n` at `buf[r][n]`): whole words copied, the partial
/// last word's plain rows put together ([`Operands::last_word`]), the rest zeros.
///
/// # Safety
/// The tile's `din · width` weights are readable at `tile`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_weights<K: Operands>(
    tile: *const u8,
    width: usize,
    din: usize,
    q0: usize,
    buf: &mut Block,
) {
    let whole = din / K::GROUP;
    let lanes = row_mask(width);
    for r in 0..STEP_QUADS {
        let q = q0 + r;
        let words = if q < whole {
            // SAFETY: word `q`'s `width` words (the other lanes masked off).
            unsafe { _mm512_maskz_loadu_epi32(lanes, tile.add(4 * q * width).cast()) }
        } else if q == whole && !din.is_multiple_of(K::GROUP) {
            let mut w = [0u32; L];
            for (n, word) in w.iter_mut().enumerate().take(width) {
                // SAFETY: the caller's tile.
                *word = unsafe { K::last_word(tile, width, din, n) };
            }
            // SAFETY: `w` holds one vector.
            unsafe { _mm512_loadu_si512(w.as_ptr().cast()) }
        } else {
            _mm512_setzero_si512()
        };
        // SAFETY: row `r` of `buf` is one vector.
        unsafe { _mm512_storeu_si512(buf.0[r].as_mut_ptr().cast(), words) };
    }
}

/// Packs quads `qc .. qc + nq` of rows `i0 ..` of `x` as signed bytes: token `t`'s row of
/// `steps · STEP` bytes at byte `t · steps · STEP` of `pack` (inputs past the chunk's and
/// tokens past the panel's are zeros).
///
/// # Safety
/// As `int8::token_scales` for the rows; `pack` holds `MR` rows of `steps · STEP` bytes,
/// `steps · STEP` bytes apart.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_rows(
    x: *const f32,
    s: usize,
    din: usize,
    i0: usize,
    masks: [__mmask16; 2],
    t: &Tokens,
    (qc, nq, steps): (usize, usize, usize),
    pack: *mut u32,
) {
    let row_words = steps * STEP_QUADS;
    let signed = _mm512_setzero_si512();
    // SAFETY: masked reads of the caller's rows, inputs below `din`; writes inside `pack`.
    unsafe {
        for v in 0..2 {
            for k in 0..steps {
                let mut words = [_mm512_setzero_si512(); L];
                for (r, word) in words
                    .iter_mut()
                    .enumerate()
                    .take(nq.saturating_sub(k * STEP_QUADS))
                {
                    let p0 = 4 * (qc + k * STEP_QUADS + r);
                    *word = int8::quad_word(x, s, din, i0 + v * L, masks[v], t.r[v], p0, signed);
                }
                // Quad-major (16 quads of 16 tokens) to token-major (16 tokens of 16 quads).
                let rows = transpose(words);
                for (i, r) in rows.iter().enumerate() {
                    let at = (v * L + i) * row_words + k * STEP_QUADS;
                    _mm512_storeu_si512(pack.add(at).cast(), *r);
                }
            }
        }
    }
}

/// Where a pair's sums go: the projection's scales, biases and outputs (`s × dout`,
/// column-major), the panel's first row and lanes, and whether this chunk of inputs is the
/// first (no partial sums to add) and the last (the epilogue writes the outputs; otherwise
/// the partial `i32` sums wait in the outputs' place).
struct Outputs<'a> {
    scales: &'a [f32],
    bias: &'a [f32],
    out: *mut f32,
    s: usize,
    i0: usize,
    masks: [__mmask16; 2],
    first: bool,
    last: bool,
}

/// Tokens `16v ..` of features `j0 .. j0 + width` from the stored `sums` (token-major):
/// transposed to one vector of tokens per feature, added to the partial sums unless this is
/// the first chunk, then stored as partial sums or, on the last chunk, finished as
/// `int8::linear`'s epilogue does (NaN for a token with a non-finite input, `b_n` for one
/// whose inputs are all zero).
///
/// # Safety
/// The outputs of the lanes of `o.masks[v]` in rows `o.i0 + 16v ..` of columns
/// `j0 .. j0 + width` are inside `o.out`.
#[target_feature(enable = "avx512f,avx512bw")]
// Kept out of `products`' loop, where the epilogue runs between steps (inlined there, the
// 128 × 256 layer took 7 % longer).
#[inline(never)]
unsafe fn finish(sums: &Block, tokens: &Tokens, v: usize, j0: usize, width: usize, o: &Outputs) {
    let ep = Epilogue::new(tokens, v, o);
    let (scales, bias) = (&o.scales[j0..j0 + width], &o.bias[j0..j0 + width]);
    columns(sums, width, |acc, n| {
        let col = o.out.wrapping_add(o.i0 + v * L + (j0 + n) * o.s);
        // SAFETY: the caller's outputs.
        unsafe { ep.column(acc, col, scales[n], bias[n]) };
    });
}

/// Calls `column(c, n)` with each feature `n < width` of a stored tile of sums (token-major),
/// `c` its 16 tokens: a whole tile transposed in registers, a narrower one (the last of a
/// projection) gathered feature by feature. (Compiled with its callers' features, so that
/// their `column` inlines into it.)
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) fn columns<F: FnMut(__m512i, usize)>(sums: &Block, width: usize, mut column: F) {
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
        for n in 0..width {
            let c: [i32; L] = core::array::from_fn(|m| sums.0[m][n]);
            // SAFETY: `c` holds one vector.
            column(unsafe { _mm512_loadu_si512(c.as_ptr().cast()) }, n);
        }
    }
}

/// One vector of tokens' epilogue: their lanes, scales and masks, and the chunk's place.
struct Epilogue {
    mask: __mmask16,
    sx: __m512,
    zero: __mmask16,
    bad: __mmask16,
    first: bool,
    last: bool,
}

impl Epilogue {
    #[inline(always)]
    fn new(tokens: &Tokens, v: usize, o: &Outputs) -> Self {
        Self {
            mask: o.masks[v],
            sx: tokens.sx[v],
            zero: tokens.zero[v],
            bad: tokens.bad[v],
            first: o.first,
            last: o.last,
        }
    }

    /// The sums `acc` of one feature (`scale`, `bias`) for the tokens of `col`.
    ///
    /// # Safety
    /// The lanes of `mask` at `col` are outputs.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn column(&self, acc: __m512i, col: *mut f32, scale: f32, bias: f32) {
        // SAFETY: masked reads and writes of the caller's outputs; the features are the
        // kernel's, which the callers are compiled with.
        unsafe {
            let acc = if self.first {
                acc
            } else {
                _mm512_add_epi32(acc, _mm512_maskz_loadu_epi32(self.mask, col.cast()))
            };
            if !self.last {
                _mm512_mask_storeu_epi32(col.cast(), self.mask, acc);
                return;
            }
            let y = int8::dequantize(acc, self.sx, (self.zero, self.bad), scale, bias);
            _mm512_mask_storeu_ps(col, self.mask, y);
        }
    }
}

/// The transpose of a 16 × 16 block of `i32` (`r[i]` row `i`; the result's vector `j` is
/// column `j`): 32-bit, then 64-bit interleaves within 128-bit lanes, then two shuffles of
/// whole lanes.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose(r: [__m512i; L]) -> [__m512i; L] {
    let z = _mm512_setzero_si512();
    // a[2i], a[2i + 1]: rows 2i, 2i + 1 interleaved; lane ℓ holds columns 4ℓ, 4ℓ + 1 and
    // 4ℓ + 2, 4ℓ + 3 of the two.
    let mut a = [z; L];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + j]: lane ℓ holds column 4ℓ + j of rows 4i ..= 4i + 3.
    let mut b = [z; L];
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    // Column 4ℓ + j: lane ℓ of b[j], b[4 + j], b[8 + j], b[12 + j].
    let mut c = [z; L];
    for j in 0..4 {
        let lo01 = _mm512_shuffle_i32x4::<0x44>(b[j], b[4 + j]);
        let hi01 = _mm512_shuffle_i32x4::<0xee>(b[j], b[4 + j]);
        let lo23 = _mm512_shuffle_i32x4::<0x44>(b[8 + j], b[12 + j]);
        let hi23 = _mm512_shuffle_i32x4::<0xee>(b[8 + j], b[12 + j]);
        c[j] = _mm512_shuffle_i32x4::<0x88>(lo01, lo23);
        c[4 + j] = _mm512_shuffle_i32x4::<0xdd>(lo01, lo23);
        c[8 + j] = _mm512_shuffle_i32x4::<0x88>(hi01, hi23);
        c[12 + j] = _mm512_shuffle_i32x4::<0xdd>(hi01, hi23);
    }
    c
}

/// Configures the tile registers.
///
/// # Safety
/// The CPU runs AMX-TILE and the OS allows the tile data; `c` is a valid configuration.
#[inline(always)]
unsafe fn tile_config(c: &Config) {
    // SAFETY: the caller's promise.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _, out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _, options(nostack, readonly, preserves_flags))
    };
}

/// Returns the tile registers to their initial state.
///
/// # Safety
/// The CPU runs AMX-TILE.
#[inline(always)]
unsafe fn tile_release() {
    // SAFETY: the caller's promise.
    unsafe {
        asm!("tilerelease", out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _, out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _, options(nomem, nostack, preserves_flags))
    };
}

/// Zeroes the sums, `tmm0 ..= tmm3`.
///
/// # Safety
/// The tiles are configured.
#[inline(always)]
pub(super) unsafe fn tile_zero_sums() {
    // SAFETY: the caller's promise.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            out("tmm0") _,
            out("tmm1") _,
            out("tmm2") _,
            out("tmm3") _,
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Loads tile `T` (4 to 7) from `p`, rows `stride` bytes apart.
///
/// # Safety
/// The tiles are configured; the tile's 16 rows of its configured width are readable.
#[inline(always)]
pub(super) unsafe fn tile_load<const T: usize>(p: *const u8, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        match T {
            4 => {
                asm!("tileloadd tmm4, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, out("tmm4") _, options(nostack, readonly, preserves_flags))
            }
            5 => {
                asm!("tileloadd tmm5, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, out("tmm5") _, options(nostack, readonly, preserves_flags))
            }
            6 => {
                asm!("tileloadd tmm6, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, out("tmm6") _, options(nostack, readonly, preserves_flags))
            }
            7 => {
                asm!("tileloadd tmm7, [{p} + {s} * 1]", p = in(reg) p, s = in(reg) stride, out("tmm7") _, options(nostack, readonly, preserves_flags))
            }
            _ => unreachable!("the operand tiles are tmm4 to tmm7"),
        }
    }
}

/// Stores sums tile `t` (0 to 3) into `sums`, 64 bytes a row.
///
/// # Safety
/// The tiles are configured.
#[inline(always)]
pub(super) unsafe fn store_sums(t: usize, sums: &mut Block) {
    let p = sums.0.as_mut_ptr().cast::<u8>();
    let stride = 4 * L;
    // SAFETY: the caller's promise; 16 rows of 48 bytes, 64 bytes apart, inside `sums`.
    unsafe {
        match t {
            0 => {
                asm!("tilestored [{p} + {s} * 1], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            1 => {
                asm!("tilestored [{p} + {s} * 1], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            2 => {
                asm!("tilestored [{p} + {s} * 1], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            3 => {
                asm!("tilestored [{p} + {s} * 1], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            _ => unreachable!("the sums are tmm0 to tmm3"),
        }
    }
}

/// `rounds` rounds of 4 independent tile products of `K` at the projections' tile shape
/// (each 16 × 12 × `16·GROUP` products, 2 operations each) on tiles loaded once from
/// `ones` (every word of both operands): the loop the core's AMX peaks are measured with.
/// Returns the operations done and the bits of a sum that depends on the last products.
///
/// # Safety
/// As [`linear`].
pub(super) unsafe fn dot_loop<K: Operands>(rounds: usize, ones: i32) -> (u64, i32) {
    let ones = Block([[core::hint::black_box(ones); L]; L]);
    let mut sums = Block([[0; L]; L]);
    // SAFETY: the caller's promise.
    let _tiles = unsafe { Tiles::configure() };
    // SAFETY: the tiles are configured; the loads read `ones` (16 rows of 64 bytes).
    unsafe {
        tile_zero_sums();
        tile_load::<4>(ones.0.as_ptr().cast(), 4 * L);
        tile_load::<5>(ones.0.as_ptr().cast(), 4 * L);
        tile_load::<6>(ones.0.as_ptr().cast(), 4 * L);
        tile_load::<7>(ones.0.as_ptr().cast(), 4 * L);
        for _ in 0..rounds {
            K::dot(0);
            K::dot(1);
            K::dot(2);
            K::dot(3);
        }
        store_sums(0, &mut sums);
    }
    (
        rounds as u64 * 4 * (L * WEIGHT_TILE * STEP_QUADS * K::GROUP) as u64 * 2,
        sums.0[0][0],
    )
}
