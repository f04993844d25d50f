//! Projections with `i8` weights on AVX2 (`vpmaddwd`): the W8A8 kernel of CPUs without VNNI,
//! matching `scalar::linear_i8` bit for bit.
//!
//! AVX2's byte product, `vpmaddubsw`, multiplies unsigned bytes by signed ones and saturates
//! the sum of each pair to 16 bits: with activations offset to `x̂ + 128 ∈ [1, 255]` a pair can
//! reach `2 · 255 · 127 = 64 770` and would clip. This kernel multiplies 16-bit pairs instead
//! (`vpmaddwd`: `x̂₀·w₀ + x̂₁·w₁` into each `i32` lane, exact), so both operands are the
//! signed values themselves and no offset is needed:
//!
//! - a group of up to 256 tokens is quantized as the reference does (per token: `a = max |x|`,
//!   `r = 127 / a`, `x̂ = round(x·r)` within `±127`, ties to even, NaN to zero) and packed in
//!   panels of 16 tokens, two inputs of a token per 32-bit word (`x̂_p` in the low half,
//!   `x̂_{p+1}` in the high one);
//! - each storage tile's weights (rows in fours: a feature's four weights are one word) are
//!   sign-extended to 16 bits once per chunk of inputs and group of tokens, which makes the
//!   word of four bytes two words of two halves: exactly the pairs the activations hold;
//! - the micro-kernel is 16 tokens × 6 features: per pair of inputs, one broadcast of each
//!   feature's weight pair from memory, then a `vpmaddwd` and a `vpaddd` per vector of tokens.
//!
//! Sums over more inputs than one chunk are kept as partial `i32` sums in the outputs' place.
//! The epilogue `f(Σ)·((a/127)·scale_n) + b_n` rounds as the reference does (no fused
//! operation).

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes and features read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::x86_64::*;

use super::args::{LinearIo, check_weights};
use super::layout::WEIGHT_TILE;

/// `i32` lanes per vector.
const L: usize = 8;
/// Tokens per panel (two vectors).
const MR: usize = 2 * L;
/// Features per micro-tile (12 accumulators, two token vectors and a weight: 15 registers).
const NR: usize = 6;
/// Tokens quantized together, at most (their scales live on the stack).
const GROUP: usize = 256;
/// Inputs per chunk, at most: the widened storage tile (`WEIGHT_TILE · KC` halves, 6 KiB)
/// lives on the stack.
const KC: usize = 256;
/// The smallest chunk worth a group of several panels.
const MIN_KC: usize = 32;

/// `out[s × dout] = x[s × din] · Wᵀ + b` with `i8` weights `q` (rows in fours) and one scale
/// per feature, as `scalar::linear_i8` computes it. Takes `LinearIo::Out` only, `din > 0`,
/// and `pack` of at least two words per token of a panel (`Table::linear` checks).
#[target_feature(enable = "avx2")]
pub(super) fn linear(
    io: LinearIo<'_, f32>,
    s: usize,
    din: usize,
    q: &[i8],
    dout: usize,
    scales: &[f32],
    bias: &[f32],
    pack: &mut [f32],
) {
    assert!(
        matches!(io, LinearIo::Out { .. }) && pack.len() >= 2 * MR && din > 0,
        "the i8 kernel takes LinearIo::Out, inputs, and a pack of two pairs"
    );
    check_weights(q, bias, din, dout);
    assert_eq!(scales.len(), dout, "one scale per output feature");
    let (x, out, _) = io.checked(s, din, dout);
    let pack: &mut [i32] = bytemuck::cast_slice_mut(pack);
    let panels = s.div_ceil(MR);
    // Panels per group: as many as leave a chunk of `MIN_KC` inputs each, within `GROUP`.
    let group = (pack.len() / (MR * MIN_KC / 2))
        .clamp(1, panels)
        .min(GROUP / MR);
    // Inputs per chunk: a multiple of four (no chunk splits a quad of stored rows).
    let kc_max = (2 * pack.len() / (group * MR)).min(KC) / 4 * 4;
    debug_assert!(kc_max >= 4);
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    let whole_rows = din / 4 * 4;
    let mut wide = [0i16; WEIGHT_TILE * KC];
    let mut tokens = Tokens {
        sx: [0.0; GROUP],
        r: [0.0; GROUP],
        bad: [0; GROUP],
        zero: [0; GROUP],
    };
    let mut g0 = 0;
    while g0 < s {
        let g1 = s.min(g0 + group * MR);
        tokens.measure(x, s, din, g0, g1);
        let mut pc = 0;
        while pc < din {
            let kc = kc_max.min(din - pc);
            // Pairs of the chunk, rounded up to whole quads (the padding inputs are zeros).
            let pairs = 2 * kc.div_ceil(4);
            let mut i0 = g0;
            while i0 < g1 {
                let rows = MR.min(g1 - i0);
                let at = (i0 - g0) / MR * pairs * MR;
                // SAFETY: rows `i0 .. i0 + rows ≤ s` of inputs `pc .. pc + kc ≤ din` of the
                // `s × din` column-major `x`; the panel's `pairs · MR` words at
                // `at + pairs · MR ≤ group · MR · kc_max / 2 ≤ pack.len()`.
                unsafe {
                    pack_panel(
                        x.as_ptr(),
                        s,
                        din,
                        i0,
                        rows,
                        pc,
                        pairs,
                        &tokens.r[i0 - g0..],
                        pack.as_mut_ptr().add(at),
                    );
                }
                i0 += rows;
            }
            let mut t0 = 0;
            while t0 < dout {
                let width = if t0 < full { WEIGHT_TILE } else { dout - full };
                let tile = &q[t0 * din..(t0 + width) * din];
                widen_tile(tile, width, pc, kc, whole_rows, din, &mut wide);
                let mut i0 = g0;
                while i0 < g1 {
                    let rows = MR.min(g1 - i0);
                    let mut c0 = 0;
                    while c0 < width {
                        let n = NR.min(width - c0);
                        let t = Tile {
                            // SAFETY: inside `pack` (above).
                            a: unsafe { pack.as_ptr().add((i0 - g0) / MR * pairs * MR) },
                            pairs,
                            // SAFETY: word `2·c0` of the widened chunk, `pairs · width` words.
                            b: unsafe { wide.as_ptr().cast::<i32>().add(2 * c0) },
                            stride: 2 * width,
                            i0,
                            j0: t0 + c0,
                            first: pc == 0,
                            last: pc + kc == din,
                            mask: row_masks(rows),
                            tok: i0 - g0,
                        };
                        // SAFETY: the tile's operands lie inside `pack`, `wide`, `scales`,
                        // `bias` and `out` (see `Tile`).
                        unsafe { strip(n, t, &tokens, scales, bias, out.as_mut_ptr(), s) };
                        c0 += n;
                    }
                    i0 += rows;
                }
                t0 += width;
            }
            pc += kc;
        }
        g0 = g1;
    }
}

/// The tokens of a group: `a/127` (`sx`), `127/a` (`r`, zero past the group's tokens), and
/// masks (all ones or zero) of the tokens with a NaN or infinite input (`bad`: every output
/// NaN) and of those whose inputs are all zero (`zero`: every output the bias).
struct Tokens {
    sx: [f32; GROUP],
    r: [f32; GROUP],
    bad: [i32; GROUP],
    zero: [i32; GROUP],
}

impl Tokens {
    /// The scales of tokens `g0 .. g1` of `x` (`s × din`, column-major), as the reference
    /// computes them: column by column, the tokens side by side (which vectorises).
    #[inline(always)]
    fn measure(&mut self, x: &[f32], s: usize, din: usize, g0: usize, g1: usize) {
        let n = g1 - g0;
        let mut amax = [0.0f32; GROUP];
        let mut finite = [true; GROUP];
        for p in 0..din {
            let col = &x[g0 + p * s..g1 + p * s];
            for ((m, f), &v) in amax[..n].iter_mut().zip(&mut finite[..n]).zip(col) {
                let a = v.abs();
                *f &= a.is_finite();
                // NaN fails `a > m`: it leaves the maximum alone, and marks its token.
                if a > *m {
                    *m = a;
                }
            }
        }
        self.r.fill(0.0);
        for i in 0..n {
            self.r[i] = 127.0 / amax[i];
            self.sx[i] = amax[i] / 127.0;
            self.bad[i] = -i32::from(!finite[i]);
            self.zero[i] = -i32::from(amax[i] == 0.0);
        }
    }
}

/// Lane masks (all ones in the lanes of a token) of a panel of `rows` tokens, per vector.
#[inline]
#[target_feature(enable = "avx2")]
fn row_masks(rows: usize) -> [__m256i; 2] {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    [0, L].map(|v| {
        let n = _mm256_set1_epi32(rows.saturating_sub(v).min(L) as i32);
        _mm256_cmpgt_epi32(n, idx)
    })
}

/// Quantizes inputs `pc ..` of tokens `i0 .. i0 + rows` (at most `MR`) and packs them as
/// `pairs` words per token: word `j · MR + t` holds token `t`'s `x̂_{pc+2j}` (low half) and
/// `x̂_{pc+2j+1}` (high half); inputs past `din` are zeros.
///
/// # Safety
/// Rows `i0 .. i0 + rows` of `x` (`s × din`, column-major) exist; `pack` holds
/// `pairs · MR` words; `r` holds at least `MR` scales (zero past the tokens).
#[target_feature(enable = "avx2")]
unsafe fn pack_panel(
    x: *const f32,
    s: usize,
    din: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    pairs: usize,
    r: &[f32],
    pack: *mut i32,
) {
    let masks = row_masks(rows);
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let low = _mm256_set1_epi32(0xffff);
    // SAFETY: `L` scales from `v` (the slice is indexed, which checks it).
    let r = [0, L].map(|v| unsafe { _mm256_loadu_ps(r[v..v + L].as_ptr()) });
    // SAFETY: masked reads of the caller's rows, inputs below `din`; writes inside `pack`.
    unsafe {
        let half = |p: usize, v: usize| {
            if p >= din {
                return _mm256_setzero_si256();
            }
            let col = x.wrapping_add(i0 + p * s + v * L);
            let t = _mm256_mul_ps(_mm256_maskload_ps(col, masks[v]), r[v]);
            // As `weight::quantize`: within ±127 (infinities too, from an `r` that
            // overflowed), rounded to nearest, ties to even (the default rounding mode),
            // NaN to zero.
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(t, t));
            let clamped = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
            _mm256_andnot_si256(nan, _mm256_cvtps_epi32(clamped))
        };
        for j in 0..pairs {
            let p = pc + 2 * j;
            for v in 0..2 {
                let word = _mm256_or_si256(
                    _mm256_and_si256(half(p, v), low),
                    _mm256_slli_epi32::<16>(half(p + 1, v)),
                );
                _mm256_storeu_si256(pack.add(j * MR + v * L).cast(), word);
            }
        }
    }
}

/// Rows `pc .. pc + kc` of a storage tile (`width` features; whole quads of rows as words of
/// four bytes, then the last `din mod 4` rows as plain rows) sign-extended into `wide`: the
/// four halves of quad `k`, feature `n` at `4·(k·width + n)`, zeros past `din`.
#[inline(always)]
fn widen_tile(
    tile: &[i8],
    width: usize,
    pc: usize,
    kc: usize,
    whole_rows: usize,
    din: usize,
    wide: &mut [i16],
) {
    let end = (pc + kc).min(whole_rows).max(pc);
    // Whole quads: the bytes in order, each to its half.
    let src = &tile[pc * width..end * width];
    for (d, &b) in wide[..src.len()].iter_mut().zip(src) {
        *d = i16::from(b);
    }
    if end < pc + kc {
        // The partial last quad: its plain rows `whole_rows ..`, each weight in its half of
        // an otherwise zero quad.
        let k = (whole_rows - pc) / 4;
        let quad = &mut wide[4 * k * width..4 * (k + 1) * width];
        quad.fill(0);
        for p in whole_rows..din {
            for n in 0..width {
                quad[4 * n + p - whole_rows] = i16::from(tile[p * width + n]);
            }
        }
    }
}

/// One micro-tile's share of a chunk: the packed panel `a` (`pairs · MR` words) and the
/// widened weights `b` (the pair `j` of feature `n` at word `(j / 2)·stride + 2n + j mod 2`)
/// for features `j0 ..` of tokens `i0 ..` (the lanes of `mask`; `tok` is the first one's
/// place in the group). `first`: the accumulators start from zero; otherwise from the partial
/// sums stored in `out`. `last`: the epilogue writes the outputs; otherwise the partial `i32`
/// sums are stored in `out`'s place.
#[derive(Clone, Copy)]
struct Tile {
    a: *const i32,
    pairs: usize,
    b: *const i32,
    stride: usize,
    i0: usize,
    j0: usize,
    first: bool,
    last: bool,
    mask: [__m256i; 2],
    tok: usize,
}

/// [`micro`] at width `n`.
///
/// # Safety
/// As [`Tile`] describes; `out` is `s × dout` (column-major) with `j0 + n ≤ dout`.
#[target_feature(enable = "avx2")]
unsafe fn strip(
    n: usize,
    t: Tile,
    tokens: &Tokens,
    scales: &[f32],
    bias: &[f32],
    out: *mut f32,
    s: usize,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match n {
            6 => micro::<6>(t, tokens, scales, bias, out, s),
            5 => micro::<5>(t, tokens, scales, bias, out, s),
            4 => micro::<4>(t, tokens, scales, bias, out, s),
            3 => micro::<3>(t, tokens, scales, bias, out, s),
            2 => micro::<2>(t, tokens, scales, bias, out, s),
            1 => micro::<1>(t, tokens, scales, bias, out, s),
            _ => unreachable!("a micro-tile is 1 to 6 features wide"),
        }
    }
}

/// The `16 × N` micro-tile (see [`Tile`]).
///
/// # Safety
/// As [`strip`], with `N == n`.
#[target_feature(enable = "avx2")]
unsafe fn micro<const N: usize>(
    t: Tile,
    tokens: &Tokens,
    scales: &[f32],
    bias: &[f32],
    out: *mut f32,
    s: usize,
) {
    let col = |n: usize| out.wrapping_add(t.i0 + (t.j0 + n) * s).cast::<i32>();
    let zero = _mm256_setzero_si256();
    let (mut a0, mut a1) = ([zero; N], [zero; N]);
    // SAFETY: masked reads and writes of the outputs' rows; reads of the panel's and the
    // widened tile's words (`pairs` of each), and of the group's token scales from `tok`.
    unsafe {
        if !t.first {
            for n in 0..N {
                a0[n] = _mm256_maskload_epi32(col(n), t.mask[0]);
                a1[n] = _mm256_maskload_epi32(col(n).wrapping_add(L), t.mask[1]);
            }
        }
        (a0, a1) = pairs::<N>(t, a0, a1);
        if !t.last {
            for n in 0..N {
                _mm256_maskstore_epi32(col(n), t.mask[0], a0[n]);
                _mm256_maskstore_epi32(col(n).wrapping_add(L), t.mask[1], a1[n]);
            }
            return;
        }
        // y = f(Σ)·((a/127)·scale_n) + b_n; NaN for a token with a non-finite input, b_n for
        // one whose inputs are all zero.
        let nan = _mm256_set1_ps(f32::NAN);
        let at = |v: usize| t.tok + v * L;
        let sx = [0, 1].map(|v| _mm256_loadu_ps(tokens.sx.as_ptr().add(at(v))));
        let bad = [0, 1].map(|v| {
            _mm256_castsi256_ps(_mm256_loadu_si256(tokens.bad.as_ptr().add(at(v)).cast()))
        });
        let none = [0, 1].map(|v| {
            _mm256_castsi256_ps(_mm256_loadu_si256(tokens.zero.as_ptr().add(at(v)).cast()))
        });
        for n in 0..N {
            let (sc, b) = (
                _mm256_set1_ps(scales[t.j0 + n]),
                _mm256_set1_ps(bias[t.j0 + n]),
            );
            let y = |acc: __m256i, v: usize| {
                let term = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(sx[v], sc));
                let term = _mm256_andnot_ps(none[v], term);
                let term = _mm256_blendv_ps(term, nan, bad[v]);
                _mm256_add_ps(term, b)
            };
            _mm256_maskstore_ps(col(n).cast(), t.mask[0], y(a0[n], 0));
            _mm256_maskstore_ps(col(n).wrapping_add(L).cast(), t.mask[1], y(a1[n], 1));
        }
    }
}

/// The main loop of [`micro`]: every pair of inputs of the chunk. The accumulators are passed
/// in and out by value so that they stay in registers.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn pairs<const N: usize>(
    t: Tile,
    a0: [__m256i; N],
    a1: [__m256i; N],
) -> ([__m256i; N], [__m256i; N]) {
    let (mut a0, mut a1) = (a0, a1);
    // SAFETY: the caller's contract: the panel's words and the widened tile's pairs.
    unsafe {
        for k in 0..t.pairs / 2 {
            for h in 0..2 {
                let a = t.a.add((2 * k + h) * MR);
                let (x0, x1) = (
                    _mm256_loadu_si256(a.cast()),
                    _mm256_loadu_si256(a.add(L).cast()),
                );
                let w = t.b.add(k * t.stride + h);
                for n in 0..N {
                    let wn = _mm256_set1_epi32(w.add(2 * n).read_unaligned());
                    a0[n] = _mm256_add_epi32(a0[n], _mm256_madd_epi16(x0, wn));
                    a1[n] = _mm256_add_epi32(a1[n], _mm256_madd_epi16(x1, wn));
                }
            }
        }
    }
    (a0, a1)
}

/// `rounds` rounds of 12 independent `vpmaddwd` + `vpaddd` on whole vectors: the loop this
/// kernel's `i8` (as 16-bit pairs) peak is measured with. Each round's pair of instructions
/// is 8 lanes × 2 products × 2 operations. Returns the operations done and a sum that depends
/// on every one of them.
#[target_feature(enable = "avx2")]
pub(super) fn dot_loop(rounds: usize) -> (u64, i32) {
    // Pairs of one and two, hidden from the optimiser; each product reads its own
    // accumulator, so that it cannot be hoisted out of the loop.
    let ones = _mm256_set1_epi32(core::hint::black_box(0x0001_0001));
    let twos = _mm256_set1_epi32(core::hint::black_box(0x0002_0002));
    let mut acc = [ones; 12];
    for _ in 0..rounds {
        for a in &mut acc {
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(*a, twos));
        }
    }
    let total = acc
        .iter()
        .fold(_mm256_setzero_si256(), |s, &a| _mm256_add_epi32(s, a));
    let mut lanes = [0i32; L];
    // SAFETY: `lanes` holds one vector.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total) };
    (
        rounds as u64 * 12 * L as u64 * 4,
        lanes.iter().fold(0, |s, &v| s.wrapping_add(v)),
    )
}
