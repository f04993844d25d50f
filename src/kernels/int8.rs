//! Projections with `i8` weights on AVX-512 with VNNI (`vpdpbusd`): the W8A8 kernel that
//! matches `scalar::linear_i8` bit for bit.
//!
//! Each panel of 32 tokens is quantized as the reference does (per token: `a = max |x|`,
//! `r = 127 / a`, `x̂ = round(x·r)` within `±127`) and packed as unsigned bytes `x̂ + 128`,
//! four inputs of a token per 32-bit word: `vpdpbusd` multiplies unsigned bytes by signed ones
//! and adds each group of four products to a 32-bit lane. The weights are stored with their
//! rows in fours (`kernels/layout.rs`), so the four weights of a feature are one word, which
//! the instruction broadcasts from memory. The offset is taken back out exactly:
//! `Σ (x̂ + 128)·w = Σ x̂·w + 128·Σ w`, and the accumulators start at `−128·Σ_p w_np`,
//! summed per feature with the same instruction on bytes of one. The `i32` sums are exact;
//! the epilogue `f(Σ)·((a/127)·scale_n) + b_n` rounds as the reference does (no fused
//! operation). The micro-kernel is 32 tokens × 12 features, 24 accumulators.

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes and features read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::x86_64::*;

use super::args::{I8Out, check_i8};
use super::layout::{WEIGHT_TILE, last_quad_word};

/// `i32` lanes per vector.
const L: usize = 16;
/// Tokens per panel (two vectors).
pub(super) const MR: usize = 2 * L;
/// Features whose compensations are computed together (a multiple of the storage tile; 6 KiB
/// of stack).
const SUM_BLOCK: usize = 128 * WEIGHT_TILE;

/// `out_p = x · W_pᵀ + b_p` for each projection `p` of the same inputs (`x`, `s × din`,
/// column-major): `i8` weights (rows in fours) and one scale per feature, as
/// `scalar::linear_i8` computes it. The tokens are quantized and packed once for all the
/// projections (once per block of [`SUM_BLOCK`] features of them together). Takes `din > 0`
/// and `pack` of at least two words per token of a panel (`Table::linear` checks).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn linear(
    x: &[f32],
    s: usize,
    din: usize,
    projs: &mut [I8Out<'_, f32>],
    pack: &mut [f32],
) {
    check_i8(x, s, din, projs, (pack.len(), 2 * MR));
    // Words of the pack: `quads · MR` per chunk.
    let max_quads = pack.len() / MR;
    let pack: &mut [u32] = bytemuck::cast_slice_mut(pack);
    let quads = din.div_ceil(4);
    // Features a block at a time (over the projections in turn), each block's compensations
    // computed once, its tokens quantized once.
    let mut comp = [0i32; SUM_BLOCK];
    let mut blocks = Blocks::new(projs);
    while let Some(block) = blocks.next_block() {
        for seg in block.iter() {
            let (q, dout) = (projs[seg.proj].q, projs[seg.proj].dout());
            let full = dout / WEIGHT_TILE * WEIGHT_TILE;
            let mut t0 = seg.f0;
            while t0 < seg.f1 {
                let width = if t0 < full { WEIGHT_TILE } else { dout - full };
                let at = seg.comp + t0 - seg.f0;
                compensation(
                    &q[t0 * din..(t0 + width) * din],
                    width,
                    din,
                    &mut comp[at..],
                );
                t0 += width;
            }
        }
        let mut i0 = 0;
        while i0 < s {
            let rows = MR.min(s - i0);
            let masks = [row_mask(rows.min(L)), row_mask(rows.saturating_sub(L))];
            // SAFETY: rows `i0 .. i0 + rows ≤ s` of the `s × din` column-major `x`.
            let tokens = unsafe { token_scales(x.as_ptr(), s, din, i0, masks) };
            let mut qc = 0;
            while qc < quads {
                let nq = max_quads.min(quads - qc);
                // SAFETY: rows `i0 ..` (masked) of inputs `4qc .. min(4(qc + nq), din)`; `nq · MR`
                // words of `pack`.
                unsafe {
                    pack_panel(
                        x.as_ptr(),
                        s,
                        din,
                        i0,
                        masks,
                        &tokens,
                        qc,
                        nq,
                        pack.as_mut_ptr(),
                    )
                };
                let last = qc + nq == quads;
                for seg in block.iter() {
                    let p = &mut projs[seg.proj];
                    let dout = p.dout();
                    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
                    let mut t0 = seg.f0;
                    while t0 < seg.f1 {
                        let width = if t0 < full { WEIGHT_TILE } else { dout - full };
                        let at = seg.comp + t0 - seg.f0;
                        let tile = Tile {
                            a: pack.as_ptr(),
                            qc,
                            nq,
                            // SAFETY: the tile of features `t0 ..` is `din · width` bytes at
                            // `t0 · din`.
                            b: unsafe { p.q.as_ptr().add(t0 * din) },
                            comp: &comp[at..at + width],
                            width,
                            din,
                            i0,
                            j0: t0,
                            first: qc == 0,
                            last,
                            masks,
                        };
                        // SAFETY: the tile's operands lie inside `pack`, `q`, `scales`, `bias`
                        // and `out` (see `Tile`; `I8Out::check`).
                        unsafe {
                            strip(tile, &tokens, p.scales, p.bias, p.out.as_mut_ptr(), s);
                        }
                        t0 += width;
                    }
                }
                qc += nq;
            }
            i0 += rows;
        }
    }
}

/// The most projections [`linear`] takes (a layer's query, key and value).
pub(super) const MAX_SHARED: usize = 3;

/// Features `f0 .. f1` of projection `proj`, their compensations from `comp` in the block's.
#[derive(Clone, Copy, Default)]
struct Segment {
    proj: usize,
    f0: usize,
    f1: usize,
    comp: usize,
}

/// The projections' features in blocks of at most [`SUM_BLOCK`], in order; a block's
/// segments start at multiples of the storage tile.
struct Blocks {
    douts: [usize; MAX_SHARED],
    count: usize,
    proj: usize,
    f: usize,
}

impl Blocks {
    fn new(projs: &[I8Out<'_, f32>]) -> Self {
        assert!(
            projs.len() <= MAX_SHARED,
            "at most three shared projections"
        );
        let mut douts = [0; MAX_SHARED];
        for (d, p) in douts.iter_mut().zip(projs) {
            *d = p.dout();
        }
        Self {
            douts,
            count: projs.len(),
            proj: 0,
            f: 0,
        }
    }

    /// The next block's segments, `None` after the last.
    fn next_block(&mut self) -> Option<BlockSegments> {
        let mut block = BlockSegments::default();
        let mut room = SUM_BLOCK;
        while self.proj < self.count && room > 0 {
            let dout = self.douts[self.proj];
            // A segment starts at a multiple of the tile and ends at one or at `dout`.
            let rest = dout - self.f;
            let take = if rest <= room {
                rest
            } else {
                room / WEIGHT_TILE * WEIGHT_TILE
            };
            if take == 0 && rest > 0 {
                break;
            }
            if take > 0 {
                block.segs[block.len] = Segment {
                    proj: self.proj,
                    f0: self.f,
                    f1: self.f + take,
                    comp: SUM_BLOCK - room,
                };
                block.len += 1;
                room -= take;
                self.f += take;
            }
            if self.f == dout {
                self.proj += 1;
                self.f = 0;
            }
        }
        (block.len > 0).then_some(block)
    }
}

/// One block's segments (at most one per projection).
#[derive(Clone, Copy, Default)]
struct BlockSegments {
    segs: [Segment; MAX_SHARED],
    len: usize,
}

impl BlockSegments {
    fn iter(&self) -> impl Iterator<Item = Segment> + '_ {
        self.segs[..self.len].iter().copied()
    }
}

/// `−128 · Σ_p w_np` of each feature `n` of a storage tile (`width` features, `din` rows:
/// whole quads of rows as words of four bytes, then `din mod 4` plain rows) into `comp`:
/// what the unsigned offset of the activations adds, taken back out. Summed with `vpdpbusd`
/// of bytes of one, four chains apart.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn compensation(tile: &[i8], width: usize, din: usize, comp: &mut [i32]) {
    let whole = din / 4;
    let lanes = row_mask(width);
    let ones = _mm512_set1_epi8(1);
    let word = |q: usize| {
        assert!(4 * (q + 1) * width <= tile.len());
        // SAFETY: quad `q`'s `width` words, inside `tile` (checked); the other lanes are
        // masked off.
        unsafe { _mm512_maskz_loadu_epi32(lanes, tile.as_ptr().add(4 * q * width).cast()) }
    };
    let zero = _mm512_setzero_si512();
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    let mut q = 0;
    while q + 4 <= whole {
        a0 = _mm512_dpbusd_epi32(a0, ones, word(q));
        a1 = _mm512_dpbusd_epi32(a1, ones, word(q + 1));
        a2 = _mm512_dpbusd_epi32(a2, ones, word(q + 2));
        a3 = _mm512_dpbusd_epi32(a3, ones, word(q + 3));
        q += 4;
    }
    while q < whole {
        a0 = _mm512_dpbusd_epi32(a0, ones, word(q));
        q += 1;
    }
    let total = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    let mut sums = [0i32; L];
    // SAFETY: `sums` holds one vector.
    unsafe { _mm512_storeu_si512(sums.as_mut_ptr().cast(), total) };
    for p in 4 * whole..din {
        for n in 0..width {
            sums[n] += i32::from(tile[p * width + n]);
        }
    }
    for n in 0..width {
        comp[n] = sums[n].wrapping_mul(-128);
    }
}

/// A panel's tokens: `a/127` (`sx`), `127/a` (`r`), and which tokens are finite and not all
/// zero, two vectors each.
pub(super) struct Tokens {
    pub(super) sx: [__m512; 2],
    pub(super) r: [__m512; 2],
    /// Some input is NaN or infinite: every output NaN.
    pub(super) bad: [__mmask16; 2],
    /// Every input zero: every output the bias.
    pub(super) zero: [__mmask16; 2],
}

/// The mask of the first `n ≤ 16` lanes.
#[inline(always)]
pub(super) fn row_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// The quantization of rows `i0 ..` (the lanes of `masks`) of `x` (`s × din`, column-major).
///
/// # Safety
/// The rows of `masks` from `i0` are inside `x` for every input column.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn token_scales(
    x: *const f32,
    s: usize,
    din: usize,
    i0: usize,
    masks: [__mmask16; 2],
) -> Tokens {
    // The largest `|x|` as the largest bit pattern of the inputs without their signs (the
    // same order for every finite value and infinity); a NaN or an infinity is a pattern of
    // at least the infinity's.
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let mut bits = [_mm512_setzero_si512(); 2];
    // SAFETY: masked reads of the caller's rows, column by column.
    unsafe {
        for p in 0..din {
            let col = x.add(i0 + p * s);
            for v in 0..2 {
                let a = _mm512_maskz_loadu_epi32(masks[v], col.wrapping_add(v * L).cast());
                bits[v] = _mm512_max_epu32(bits[v], _mm512_and_si512(a, abs));
            }
        }
    }
    let inf = _mm512_set1_epi32(f32::INFINITY.to_bits() as i32);
    let bad = [0, 1].map(|v| _mm512_cmpge_epu32_mask(bits[v], inf) & masks[v]);
    let amax = bits.map(|b| _mm512_castsi512_ps(b));
    let q = _mm512_set1_ps(127.0);
    let zero = amax.map(|a| _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, _mm512_setzero_ps()));
    Tokens {
        sx: amax.map(|a| _mm512_div_ps(a, q)),
        r: amax.map(|a| _mm512_div_ps(q, a)),
        bad,
        zero,
    }
}

/// Packs quads `qc .. qc + nq` of rows `i0 ..` of `x` as `x̂ + 128` bytes: word `t` of quad
/// `k` (at `k·MR + t`) holds token `t`'s four quantized inputs `4(qc + k) ..` (byte `j` the
/// input `+ j`; inputs past `din` are `128`, a quantized zero).
///
/// # Safety
/// As [`token_scales`] for the rows; `pack` holds `nq · MR` words.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_panel(
    x: *const f32,
    s: usize,
    din: usize,
    i0: usize,
    masks: [__mmask16; 2],
    t: &Tokens,
    qc: usize,
    nq: usize,
    pack: *mut u32,
) {
    let offset = _mm512_set1_epi32(128);
    // SAFETY: masked reads of the caller's rows, inputs below `din`; writes inside `pack`.
    unsafe {
        for k in 0..nq {
            for v in 0..2 {
                let word = quad_word(
                    x,
                    s,
                    din,
                    i0 + v * L,
                    masks[v],
                    t.r[v],
                    4 * (qc + k),
                    offset,
                );
                _mm512_storeu_si512(pack.add(k * MR + v * L).cast(), word);
            }
        }
    }
}

/// The word of inputs `p0 .. p0 + 4` of 16 tokens (rows `i0 ..`, the lanes of `mask`, of
/// `x`, `s × din` column-major), each quantized with its token's `r` as `weight::quantize`
/// does, plus `offset` (128 for `vpdpbusd`'s unsigned bytes, 0 for signed ones), input `p0 + j`
/// in byte `j`; inputs past `din` are `offset`.
///
/// # Safety
/// The rows of `mask` from `i0` are inside `x` for the inputs below `din`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn quad_word(
    x: *const f32,
    s: usize,
    din: usize,
    i0: usize,
    mask: __mmask16,
    r: __m512,
    p0: usize,
    offset: __m512i,
) -> __m512i {
    let low_byte = _mm512_set1_epi32(0xff);
    let byte = |j: usize| {
        if p0 + j < din {
            let col = x.wrapping_add(i0 + (p0 + j) * s);
            // SAFETY: the caller's rows (masked), an input below `din`.
            let xs = unsafe { _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, col), r) };
            _mm512_and_si512(_mm512_add_epi32(quantize_lanes(xs), offset), low_byte)
        } else {
            offset
        }
    };
    _mm512_or_si512(
        _mm512_or_si512(byte(0), _mm512_slli_epi32::<8>(byte(1))),
        _mm512_or_si512(
            _mm512_slli_epi32::<16>(byte(2)),
            _mm512_slli_epi32::<24>(byte(3)),
        ),
    )
}

/// Sixteen scaled inputs `xs` as integers, the `i32` lanes of `weight::quantize`: within
/// `±127` first (so an infinity, from a reciprocal scale that overflowed, saturates), rounded
/// to nearest, ties to even (the default rounding mode), NaN (`0 · ∞`, a zero row's inputs)
/// to 0.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn quantize_lanes(xs: __m512) -> __m512i {
    let clamped = _mm512_min_ps(
        _mm512_max_ps(xs, _mm512_set1_ps(-127.0)),
        _mm512_set1_ps(127.0),
    );
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(xs, xs);
    _mm512_maskz_cvtps_epi32(!nan, clamped)
}

/// The outputs of 16 tokens for one feature from their exact sums `acc`:
/// `f(Σ)·((a/127)·scale) + bias` (`sx = a/127`), as `scalar::linear_i8` rounds it (no fused
/// operation); NaN for the tokens of `bad` (a non-finite input), `bias` for those of `zero`
/// (every input zero).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn dequantize(
    acc: __m512i,
    sx: __m512,
    (zero, bad): (__mmask16, __mmask16),
    scale: f32,
    bias: f32,
) -> __m512 {
    let term = _mm512_mul_ps(
        _mm512_cvtepi32_ps(acc),
        _mm512_mul_ps(sx, _mm512_set1_ps(scale)),
    );
    let term = _mm512_mask_mov_ps(term, zero, _mm512_setzero_ps());
    let term = _mm512_mask_mov_ps(term, bad, _mm512_set1_ps(f32::NAN));
    _mm512_add_ps(term, _mm512_set1_ps(bias))
}

/// One micro-tile's share of a panel: the packed quads `qc .. qc + nq` (`a`, `nq · MR` words)
/// and the storage tile `b` (`din · width` bytes: quads of rows as `width` words, then the
/// last `din mod 4` rows as plain rows), for features `j0 .. j0 + width` of tokens
/// `i0 ..` (the lanes of `masks`). `first`: the accumulators start from the compensation;
/// otherwise from the partial sums stored in `out`. `last`: the epilogue writes the outputs;
/// otherwise the partial `i32` sums are stored in `out`'s place.
#[derive(Clone, Copy)]
struct Tile<'a> {
    a: *const u32,
    qc: usize,
    nq: usize,
    b: *const i8,
    /// The tile's features' compensations (`compensation`).
    comp: &'a [i32],
    width: usize,
    din: usize,
    i0: usize,
    j0: usize,
    first: bool,
    last: bool,
    masks: [__mmask16; 2],
}

/// [`micro`] at the tile's width.
///
/// # Safety
/// As [`Tile`] describes; `out` is `s × dout` (column-major) with `j0 + width ≤ dout`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn strip(
    t: Tile<'_>,
    tokens: &Tokens,
    scales: &[f32],
    bias: &[f32],
    out: *mut f32,
    s: usize,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match t.width {
            12 => micro::<12>(t, tokens, scales, bias, out, s),
            11 => micro::<11>(t, tokens, scales, bias, out, s),
            10 => micro::<10>(t, tokens, scales, bias, out, s),
            9 => micro::<9>(t, tokens, scales, bias, out, s),
            8 => micro::<8>(t, tokens, scales, bias, out, s),
            7 => micro::<7>(t, tokens, scales, bias, out, s),
            6 => micro::<6>(t, tokens, scales, bias, out, s),
            5 => micro::<5>(t, tokens, scales, bias, out, s),
            4 => micro::<4>(t, tokens, scales, bias, out, s),
            3 => micro::<3>(t, tokens, scales, bias, out, s),
            2 => micro::<2>(t, tokens, scales, bias, out, s),
            1 => micro::<1>(t, tokens, scales, bias, out, s),
            _ => unreachable!("a storage tile is 1 to 12 features wide"),
        }
    }
}

/// `$body` for each feature `$n` of `0 .. $N` (at most 12), unrolled, each `$n` a constant:
/// arrays of accumulators indexed only by constants stay in registers (indexed by a loop
/// variable, LLVM kept them in memory, stored around the main loop and read back by the
/// epilogue: about a fifth of the micro-kernel's time over 256 inputs).
macro_rules! each_feature {
    ($N:ident, |$n:ident| $body:block) => {
        each_feature!(@ $N, $n, $body, 0 1 2 3 4 5 6 7 8 9 10 11)
    };
    (@ $N:ident, $n:ident, $body:block, $($i:literal)*) => {
        $(
            if $i < $N {
                let $n: usize = $i;
                $body
            }
        )*
    };
}

/// The `32 × N` micro-tile (see [`Tile`]). The two rows of accumulators are two named arrays
/// (an array of arrays made LLVM keep them on the stack in the other kernels).
///
/// # Safety
/// As [`strip`], with `N == t.width`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const N: usize>(
    t: Tile<'_>,
    tokens: &Tokens,
    scales: &[f32],
    bias: &[f32],
    out: *mut f32,
    s: usize,
) {
    const {
        assert!(
            N <= WEIGHT_TILE && WEIGHT_TILE <= 12,
            "each_feature! unrolls 12"
        )
    };
    let zero = _mm512_setzero_si512();
    let (mut a0, mut a1) = ([zero; N], [zero; N]);
    // Quads of the tile in this chunk that are whole quads of stored rows; the chunk's last
    // quad may be the partial one (`din mod 4` plain rows).
    let whole = t.din / 4;
    let q_end = (t.qc + t.nq).min(whole);
    let col = |n: usize| out.wrapping_add(t.i0 + (t.j0 + n) * s);
    let comp: &[i32; N] = t.comp.try_into().expect("one compensation per feature");
    let (scales, bias) = (&scales[t.j0..t.j0 + N], &bias[t.j0..t.j0 + N]);
    // SAFETY: reads of the panel's `nq · MR` words and of the tile's rows (quad `q`'s word
    // of feature `n` at word `q · width + n`, a plain row `p`'s byte at `p · width + n`);
    // masked reads and writes of the outputs' rows.
    unsafe {
        if t.first {
            each_feature!(N, |n| {
                a0[n] = _mm512_set1_epi32(comp[n]);
                a1[n] = a0[n];
            });
        } else {
            each_feature!(N, |n| {
                a0[n] = _mm512_maskz_loadu_epi32(t.masks[0], col(n).cast());
                a1[n] = _mm512_maskz_loadu_epi32(t.masks[1], col(n).wrapping_add(L).cast());
            });
        }
        (a0, a1) = quads::<N>(t, q_end, a0, a1);
        if q_end < t.qc + t.nq {
            // The partial last quad: its plain rows `4·whole ..`, each weight in its byte of
            // an otherwise zero word (the padding inputs are quantized zeros, any weight).
            let a = t.a.add((whole - t.qc) * MR);
            let (x0, x1) = (
                _mm512_loadu_si512(a.cast()),
                _mm512_loadu_si512(a.add(L).cast()),
            );
            let tile = core::slice::from_raw_parts(t.b, t.din * t.width);
            each_feature!(N, |n| {
                let wn = _mm512_set1_epi32(last_quad_word(tile, t.width, t.din, n) as i32);
                a0[n] = _mm512_dpbusd_epi32(a0[n], x0, wn);
                a1[n] = _mm512_dpbusd_epi32(a1[n], x1, wn);
            });
        }
        if !t.last {
            each_feature!(N, |n| {
                _mm512_mask_storeu_epi32(col(n).cast(), t.masks[0], a0[n]);
                _mm512_mask_storeu_epi32(col(n).wrapping_add(L).cast(), t.masks[1], a1[n]);
            });
            return;
        }
        let y = |acc: __m512i, v: usize, n: usize| {
            let masks = (tokens.zero[v], tokens.bad[v]);
            dequantize(acc, tokens.sx[v], masks, scales[n], bias[n])
        };
        each_feature!(N, |n| {
            _mm512_mask_storeu_ps(col(n), t.masks[0], y(a0[n], 0, n));
            _mm512_mask_storeu_ps(col(n).wrapping_add(L), t.masks[1], y(a1[n], 1, n));
        });
    }
}

/// The main loop of [`micro`]: whole quads `t.qc .. q_end`. The accumulators are passed in
/// and out by value so that they stay in registers (inside `micro`, LLVM kept a copy of
/// them in memory and stored it on every step: half the speed).
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn quads<const N: usize>(
    t: Tile<'_>,
    q_end: usize,
    a0: [__m512i; N],
    a1: [__m512i; N],
) -> ([__m512i; N], [__m512i; N]) {
    let (mut a0, mut a1) = (a0, a1);
    // SAFETY: the caller's contract: the panel's words and the tile's quad rows.
    unsafe {
        for q in t.qc..q_end {
            let a = t.a.add((q - t.qc) * MR);
            let (x0, x1) = (
                _mm512_loadu_si512(a.cast()),
                _mm512_loadu_si512(a.add(L).cast()),
            );
            let w = t.b.add(4 * q * t.width).cast::<i32>();
            for n in 0..N {
                let wn = _mm512_set1_epi32(w.add(n).read_unaligned());
                a0[n] = _mm512_dpbusd_epi32(a0[n], x0, wn);
                a1[n] = _mm512_dpbusd_epi32(a1[n], x1, wn);
            }
        }
    }
    (a0, a1)
}

/// `rounds` rounds of 12 independent `vpdpbusd` on whole vectors: the loop the core's `i8`
/// dot-product peak is measured with. Each instruction is 16 lanes × 4 products × 2
/// operations. Returns the operations done and a sum that depends on every one of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn dot_loop(rounds: usize) -> (u64, i32) {
    // Bytes of one and of two, hidden from the optimiser.
    let ones = _mm512_set1_epi32(core::hint::black_box(0x0101_0101));
    let twos = _mm512_set1_epi32(core::hint::black_box(0x0202_0202));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..rounds {
        for a in &mut acc {
            *a = _mm512_dpbusd_epi32(*a, ones, twos);
        }
    }
    let total = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, &a| _mm512_add_epi32(s, a));
    (
        rounds as u64 * 12 * L as u64 * 8,
        _mm512_reduce_add_epi32(total),
    )
}
