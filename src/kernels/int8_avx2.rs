//! Projections with `i8` weights on AVX2: the W8A8 kernels of CPUs without AVX-512 VNNI,
//! matching `scalar::linear_i8` bit for bit, in two forms that share everything but the
//! product.
//!
//! - [`Pairs`], on every AVX2 CPU. AVX2's byte product, `vpmaddubsw`, multiplies unsigned
//!   bytes by signed ones and saturates the sum of each pair to 16 bits: with activations
//!   offset to `x̂ + 128 ∈ [1, 255]` a pair can reach `2 · 255 · 127 = 64 770` and would clip.
//!   This form multiplies 16-bit pairs instead (`vpmaddwd`: `x̂₀·w₀ + x̂₁·w₁` into each `i32`
//!   lane, exact, then `vpaddd`), so both operands are the signed values themselves: the
//!   activations are packed two per 32-bit word (`x̂_p` in the low half, `x̂_{p+1}` in the high
//!   one), and each storage tile's weights are sign-extended to 16 bits once per chunk of
//!   inputs and group of tokens, which makes each feature's word of four bytes two words of
//!   two halves.
//! - [`Quads`], where the CPU has AVX-VNNI (`vpdpbusd` on 256 bits): as the AVX-512 kernel
//!   (`int8.rs`), four activations of a token per word as unsigned bytes `x̂ + 128`, the
//!   weights' words used as they are stored, and the offset taken back out exactly:
//!   `Σ (x̂ + 128)·w = Σ x̂·w + 128·Σ w`, the accumulators of each chunk of inputs starting at
//!   `−128·Σ w` over the chunk.
//!
//! Both quantize a group of up to 256 tokens as the reference does (per token: `a = max |x|`,
//! `r = 127 / a`, `x̂ = round(x·r)` within `±127`, ties to even, NaN to zero) and pack it in
//! panels of 16 tokens; the micro-kernel is 16 tokens × 6 features, one broadcast of a
//! feature's weight word from memory per word of the panel and a product per vector of
//! tokens. Sums over more inputs than one chunk are kept as partial `i32` sums in the outputs'
//! place. The epilogue `f(Σ)·((a/127)·scale_n) + b_n` rounds as the reference does (no fused
//! operation).

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes and features read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::x86_64::*;

use super::args::{I8Out, check_i8};
use super::layout::WEIGHT_TILE;
use super::scalar;

/// `i32` lanes per vector.
const L: usize = 8;
/// Tokens per panel (two vectors).
const MR: usize = 2 * L;
/// Features per micro-tile (12 accumulators, two token vectors and a weight: 15 registers).
const NR: usize = 6;
/// Tokens quantized together, at most (their scales live on the stack).
const GROUP: usize = 256;
/// Inputs per chunk, at most: the prepared storage tile (`WEIGHT_TILE · KC` halves, 6 KiB)
/// lives on the stack.
const KC: usize = 256;
/// The smallest chunk worth a group of several panels.
const MIN_KC: usize = 32;

/// How a form multiplies: what a packed word holds, how a storage tile is prepared, and the
/// product of a word of activations by a word of weights.
trait Products: Copy {
    /// Words per quad of inputs (inputs per word: `4 / WORDS`).
    const WORDS: usize;
    /// Whether the accumulators start at a compensation (`−128 · Σ w` over the chunk).
    const OFFSET: bool;

    /// A word of activations from its inputs' quantized values (`q[j]`: the `j`-th, as
    /// `i32` lanes; only the first `4 / WORDS` are read).
    ///
    /// # Safety
    /// The CPU runs the form's features (AVX2; [`Quads`] AVX-VNNI too).
    unsafe fn word(q: &[__m256i; 4]) -> __m256i;

    /// `acc + x·w` (per lane: the products of the word's parts, summed).
    ///
    /// # Safety
    /// As [`Products::word`].
    unsafe fn product(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;

    /// Rows `pc .. pc + kc` of a storage tile (`width` features; whole quads of rows as words
    /// of four bytes, then the last `din mod 4` rows as plain rows) into `buf` as this form's
    /// weight words (quad `k`'s word `h` of feature `n` at `(k·width + n)·WORDS + h`, zeros
    /// past `din`); with [`Products::OFFSET`], each feature's compensation into `comp`.
    ///
    /// # Safety
    /// As [`Products::word`].
    unsafe fn prepare(
        tile: &[i8],
        width: usize,
        chunk: (usize, usize),
        din: usize,
        buf: &mut [i32],
        comp: &mut [i32; WEIGHT_TILE],
    );
}

/// 16-bit pairs multiplied by `vpmaddwd` and added by `vpaddd` (AVX2).
#[derive(Clone, Copy)]
pub(super) struct Pairs;

/// Unsigned bytes by signed ones, four products summed into each lane by `vpdpbusd`
/// (AVX-VNNI).
#[derive(Clone, Copy)]
pub(super) struct Quads;

impl Products for Pairs {
    const WORDS: usize = 2;
    const OFFSET: bool = false;

    #[inline(always)]
    unsafe fn word(q: &[__m256i; 4]) -> __m256i {
        // SAFETY: the caller's promise: the CPU runs AVX2.
        unsafe {
            _mm256_or_si256(
                _mm256_and_si256(q[0], _mm256_set1_epi32(0xffff)),
                _mm256_slli_epi32::<16>(q[1]),
            )
        }
    }

    #[inline(always)]
    unsafe fn product(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the caller's promise: the CPU runs AVX2.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)) }
    }

    #[inline(always)]
    unsafe fn prepare(
        tile: &[i8],
        width: usize,
        (pc, kc): (usize, usize),
        din: usize,
        buf: &mut [i32],
        _: &mut [i32; WEIGHT_TILE],
    ) {
        gather(
            tile,
            width,
            (pc, kc),
            din,
            bytemuck::cast_slice_mut::<_, i16>(buf),
        );
    }
}

impl Products for Quads {
    const WORDS: usize = 1;
    const OFFSET: bool = true;

    #[inline(always)]
    unsafe fn word(q: &[__m256i; 4]) -> __m256i {
        // SAFETY: the caller's promise: the CPU runs AVX2 and AVX-VNNI. (No closures here: a
        // closure would not inherit the features of the function it is in.)
        unsafe {
            let offset = _mm256_set1_epi32(128);
            let (b0, b1) = (
                _mm256_add_epi32(q[0], offset),
                _mm256_add_epi32(q[1], offset),
            );
            let (b2, b3) = (
                _mm256_add_epi32(q[2], offset),
                _mm256_add_epi32(q[3], offset),
            );
            _mm256_or_si256(
                _mm256_or_si256(b0, _mm256_slli_epi32::<8>(b1)),
                _mm256_or_si256(_mm256_slli_epi32::<16>(b2), _mm256_slli_epi32::<24>(b3)),
            )
        }
    }

    #[inline(always)]
    unsafe fn product(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the caller's promise: the CPU runs AVX2 and AVX-VNNI.
        unsafe { _mm256_dpbusd_avx_epi32(acc, x, w) }
    }

    #[inline(always)]
    unsafe fn prepare(
        tile: &[i8],
        width: usize,
        (pc, kc): (usize, usize),
        din: usize,
        buf: &mut [i32],
        comp: &mut [i32; WEIGHT_TILE],
    ) {
        gather(
            tile,
            width,
            (pc, kc),
            din,
            bytemuck::cast_slice_mut::<_, i8>(buf),
        );
        // The compensations: `vpdpbusd` of bytes of one with each quad's words, features
        // `0 .. 8` and `8 .. width` in two vectors, two chains each.
        let quads = kc.div_ceil(4);
        let words = &buf[..quads * width];
        // SAFETY: the caller's promise: the CPU runs AVX2 and AVX-VNNI; the masked reads are of quad `k`'s `width` words, inside `words`
        // (checked by the slice's indexing).
        unsafe {
            let masks = row_masks(width);
            let ones = _mm256_set1_epi8(1);
            let zero = _mm256_setzero_si256();
            let mut sums = [zero; 4];
            for k in 0..quads {
                let quad = words[k * width..(k + 1) * width].as_ptr();
                let at = 2 * (k % 2);
                let (lo, hi) = (
                    _mm256_maskload_epi32(quad, masks[0]),
                    _mm256_maskload_epi32(quad.wrapping_add(L), masks[1]),
                );
                sums[at] = _mm256_dpbusd_avx_epi32(sums[at], ones, lo);
                sums[at + 1] = _mm256_dpbusd_avx_epi32(sums[at + 1], ones, hi);
            }
            let mut total = [0i32; 2 * L];
            _mm256_storeu_si256(
                total.as_mut_ptr().cast(),
                _mm256_add_epi32(sums[0], sums[2]),
            );
            _mm256_storeu_si256(
                total[L..].as_mut_ptr().cast(),
                _mm256_add_epi32(sums[1], sums[3]),
            );
            for (c, t) in comp[..width].iter_mut().zip(total) {
                *c = t.wrapping_mul(-128);
            }
        }
    }
}

/// Rows `pc .. pc + kc` of a storage tile (`width` features; whole quads of rows as words of
/// four bytes, then the last `din mod 4` rows as plain rows) into `dst`, each weight as an
/// `E`: the four weights of quad `k`, feature `n` at `4·(k·width + n) ..`, zeros past `din`.
#[inline(always)]
fn gather<E: From<i8> + Copy + Default>(
    tile: &[i8],
    width: usize,
    (pc, kc): (usize, usize),
    din: usize,
    dst: &mut [E],
) {
    let whole_rows = din / 4 * 4;
    let end = (pc + kc).min(whole_rows).max(pc);
    // Whole quads: the bytes in order.
    let src = &tile[pc * width..end * width];
    for (d, &b) in dst[..src.len()].iter_mut().zip(src) {
        *d = E::from(b);
    }
    if end < pc + kc {
        // The partial last quad: its plain rows, each weight in its place in an otherwise
        // zero quad.
        let k = (whole_rows - pc) / 4;
        let quad = &mut dst[4 * k * width..4 * (k + 1) * width];
        quad.fill(E::default());
        for p in whole_rows..din {
            for n in 0..width {
                quad[4 * n + p - whole_rows] = E::from(tile[p * width + n]);
            }
        }
    }
}

/// `out_p = x · W_pᵀ + b_p` for each projection `p` of the same inputs (`x`, `s × din`,
/// column-major): `i8` weights (rows in fours) and one scale per feature, as
/// `scalar::linear_i8` computes it, with 16-bit pairs ([`Pairs`]). The tokens are quantized
/// and packed once per group and chunk of inputs for all the projections. Takes `din > 0`
/// and `pack` of at least two words per token of a panel (`Table::linear` checks).
#[target_feature(enable = "avx2")]
pub(super) fn linear(
    x: &[f32],
    s: usize,
    din: usize,
    projs: &mut [I8Out<'_, f32>],
    pack: &mut [f32],
) {
    check_i8(x, s, din, projs, (pack.len(), 2 * MR));
    // SAFETY: this function's features are the form's.
    unsafe { run(Pairs, x, s, din, projs, pack) };
}

/// [`linear`] with `vpdpbusd` on 256 bits ([`Quads`]).
#[target_feature(enable = "avx2,avxvnni")]
pub(super) fn linear_vnni(
    x: &[f32],
    s: usize,
    din: usize,
    projs: &mut [I8Out<'_, f32>],
    pack: &mut [f32],
) {
    check_i8(x, s, din, projs, (pack.len(), 2 * MR));
    // SAFETY: this function's features are the form's.
    unsafe { run(Quads, x, s, din, projs, pack) };
}

/// The kernel in form `P`: each projection of `x`, the tokens quantized and packed once per
/// group and chunk of inputs for all of them.
///
/// # Safety
/// As [`Products::word`]; the operands checked ([`check_i8`]).
#[inline(always)]
unsafe fn run<P: Products>(
    form: P,
    x: &[f32],
    s: usize,
    din: usize,
    projs: &mut [I8Out<'_, f32>],
    pack: &mut [f32],
) {
    if s == 0 {
        return;
    }
    let pack: &mut [i32] = bytemuck::cast_slice_mut(pack);
    let per_word = 4 / P::WORDS;
    let panels = s.div_ceil(MR);
    // Panels per group: as many as leave a chunk of `MIN_KC` inputs each, within `GROUP`.
    let group = (pack.len() / (MR * MIN_KC / per_word))
        .clamp(1, panels)
        .min(GROUP / MR);
    // Inputs per chunk: a multiple of four (no chunk splits a quad of stored rows).
    let kc_max = (per_word * pack.len() / (group * MR)).min(KC) / 4 * 4;
    debug_assert!(kc_max >= 4);
    let mut buf = [0i32; WEIGHT_TILE * KC / 2];
    let mut comp = [0i32; WEIGHT_TILE];
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
            // Words of a token in the chunk, whole quads (the padding inputs are zeros).
            let words = P::WORDS * kc.div_ceil(4);
            let mut i0 = g0;
            while i0 < g1 {
                let rows = MR.min(g1 - i0);
                let at = (i0 - g0) / MR * words * MR;
                // SAFETY: rows `i0 .. i0 + rows ≤ s` of inputs `pc .. pc + kc ≤ din` of the
                // `s × din` column-major `x`; the panel's `words · MR` words at
                // `at + words · MR ≤ group · MR · kc_max / per_word ≤ pack.len()`.
                unsafe {
                    pack_panel(
                        form,
                        x.as_ptr(),
                        (s, din),
                        (i0, rows),
                        (pc, words),
                        &tokens.r[i0 - g0..],
                        pack.as_mut_ptr().add(at),
                    );
                }
                i0 += rows;
            }
            for p in projs.iter_mut() {
                let dout = p.dout();
                let full = dout / WEIGHT_TILE * WEIGHT_TILE;
                let mut t0 = 0;
                while t0 < dout {
                    let width = if t0 < full { WEIGHT_TILE } else { dout - full };
                    let tile = &p.q[t0 * din..(t0 + width) * din];
                    // SAFETY: the caller's promise.
                    unsafe { P::prepare(tile, width, (pc, kc), din, &mut buf, &mut comp) };
                    let mut i0 = g0;
                    while i0 < g1 {
                        let rows = MR.min(g1 - i0);
                        let mut c0 = 0;
                        while c0 < width {
                            let n = NR.min(width - c0);
                            let t = Tile {
                                // SAFETY: inside `pack` (above).
                                a: unsafe { pack.as_ptr().add((i0 - g0) / MR * words * MR) },
                                words,
                                // SAFETY: feature `c0`'s first word of the prepared chunk,
                                // which holds `words · width` words.
                                b: unsafe { buf.as_ptr().add(P::WORDS * c0) },
                                stride: P::WORDS * width,
                                comp: &comp[c0..c0 + n],
                                i0,
                                j0: t0 + c0,
                                first: pc == 0,
                                last: pc + kc == din,
                                // SAFETY: the caller's promise.
                                mask: unsafe { row_masks(rows) },
                                tok: i0 - g0,
                            };
                            let out = p.out.as_mut_ptr();
                            // SAFETY: the tile's operands lie inside `pack`, `buf`, the
                            // projection's scales, bias and outputs (see `Tile`; checked).
                            unsafe { strip(form, n, t, &tokens, p.scales, p.bias, out, s) };
                            c0 += n;
                        }
                        i0 += rows;
                    }
                    t0 += width;
                }
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
        scalar::group_amax_finite(x, s, din, g0, &mut amax[..n], &mut finite);
        self.r.fill(0.0);
        for i in 0..n {
            self.r[i] = 127.0 / amax[i];
            self.sx[i] = amax[i] / 127.0;
            self.bad[i] = -i32::from(!finite[i]);
            self.zero[i] = -i32::from(amax[i] == 0.0);
        }
    }
}

/// Lane masks (all ones in the first `rows` lanes) of two vectors.
///
/// # Safety
/// The CPU runs AVX2.
#[inline(always)]
unsafe fn row_masks(rows: usize) -> [__m256i; 2] {
    // SAFETY: the caller's promise.
    unsafe {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let n0 = _mm256_set1_epi32(rows.min(L) as i32);
        let n1 = _mm256_set1_epi32(rows.saturating_sub(L).min(L) as i32);
        [_mm256_cmpgt_epi32(n0, idx), _mm256_cmpgt_epi32(n1, idx)]
    }
}

/// Quantizes inputs `pc ..` of tokens `i0 .. i0 + rows` (at most `MR`) and packs them as
/// `words` words per token in form `P`: word `j` of token `t` at `j · MR + t`, holding inputs
/// `pc + j·(4 / WORDS) ..`; inputs past `din` are zeros.
///
/// # Safety
/// Rows `i0 .. i0 + rows` of `x` (`s × din`, column-major) exist; `pack` holds
/// `words · MR` words; `r` holds at least `MR` scales (zero past the tokens).
#[inline(always)]
unsafe fn pack_panel<P: Products>(
    _: P,
    x: *const f32,
    (s, din): (usize, usize),
    (i0, rows): (usize, usize),
    (pc, words): (usize, usize),
    r: &[f32],
    pack: *mut i32,
) {
    let per_word = 4 / P::WORDS;
    // SAFETY: masked reads of the caller's rows, inputs below `din`; writes inside `pack`;
    // `L` scales from each vector's first token (the slices are indexed, which checks them).
    unsafe {
        let masks = row_masks(rows);
        let r = [
            _mm256_loadu_ps(r[..L].as_ptr()),
            _mm256_loadu_ps(r[L..MR].as_ptr()),
        ];
        let zero = _mm256_setzero_si256();
        for j in 0..words {
            let p = pc + per_word * j;
            for v in 0..2 {
                let mut parts = [zero; 4];
                for (k, part) in parts[..per_word].iter_mut().enumerate() {
                    if p + k < din {
                        let col = x.wrapping_add(i0 + (p + k) * s + v * L);
                        *part = quantized(_mm256_maskload_ps(col, masks[v]), r[v]);
                    }
                }
                _mm256_storeu_si256(pack.add(j * MR + v * L).cast(), P::word(&parts));
            }
        }
    }
}

/// `x·r` quantized as `weight::quantize` does: within ±127 (infinities too, from an `r` that
/// overflowed), rounded to nearest, ties to even (the default rounding mode), NaN to zero.
///
/// # Safety
/// The CPU runs AVX2.
#[inline(always)]
unsafe fn quantized(x: __m256, r: __m256) -> __m256i {
    // SAFETY: the caller's promise.
    unsafe {
        let t = _mm256_mul_ps(x, r);
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(t, t));
        let clamped = _mm256_min_ps(
            _mm256_max_ps(t, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_andnot_si256(nan, _mm256_cvtps_epi32(clamped))
    }
}

/// One micro-tile's share of a chunk: the packed panel `a` (`words · MR` words) and the
/// prepared weights `b` (quad `k`'s word `h` of feature `n` at `k·stride + n·WORDS + h`) with
/// their compensations `comp`, for features `j0 ..` of tokens `i0 ..` (the lanes of `mask`;
/// `tok` is the first one's place in the group). `first`: the accumulators start from zero;
/// otherwise from the partial sums stored in `out`. `last`: the epilogue writes the outputs;
/// otherwise the partial `i32` sums are stored in `out`'s place.
#[derive(Clone, Copy)]
struct Tile<'a> {
    a: *const i32,
    words: usize,
    b: *const i32,
    stride: usize,
    comp: &'a [i32],
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
#[inline(always)]
unsafe fn strip<P: Products>(
    form: P,
    n: usize,
    t: Tile<'_>,
    tokens: &Tokens,
    scales: &[f32],
    bias: &[f32],
    out: *mut f32,
    s: usize,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match n {
            6 => micro::<P, 6>(form, t, tokens, scales, bias, out, s),
            5 => micro::<P, 5>(form, t, tokens, scales, bias, out, s),
            4 => micro::<P, 4>(form, t, tokens, scales, bias, out, s),
            3 => micro::<P, 3>(form, t, tokens, scales, bias, out, s),
            2 => micro::<P, 2>(form, t, tokens, scales, bias, out, s),
            1 => micro::<P, 1>(form, t, tokens, scales, bias, out, s),
            _ => unreachable!("a micro-tile is 1 to 6 features wide"),
        }
    }
}

/// The `16 × N` micro-tile (see [`Tile`]).
///
/// # Safety
/// As [`strip`], with `N == n`.
#[inline(always)]
unsafe fn micro<P: Products, const N: usize>(
    form: P,
    t: Tile<'_>,
    tokens: &Tokens,
    scales: &[f32],
    bias: &[f32],
    out: *mut f32,
    s: usize,
) {
    let col = |n: usize| out.wrapping_add(t.i0 + (t.j0 + n) * s).cast::<i32>();
    // SAFETY: masked reads and writes of the outputs' rows; reads of the panel's and the
    // prepared tile's words, and of the group's token scales from `tok`.
    unsafe {
        let zero = _mm256_setzero_si256();
        let (mut a0, mut a1) = ([zero; N], [zero; N]);
        if !t.first {
            for n in 0..N {
                a0[n] = _mm256_maskload_epi32(col(n), t.mask[0]);
                a1[n] = _mm256_maskload_epi32(col(n).wrapping_add(L), t.mask[1]);
            }
        }
        if P::OFFSET {
            for n in 0..N {
                let c = _mm256_set1_epi32(t.comp[n]);
                a0[n] = _mm256_add_epi32(a0[n], c);
                a1[n] = _mm256_add_epi32(a1[n], c);
            }
        }
        (a0, a1) = products::<P, N>(form, t, a0, a1);
        if !t.last {
            for n in 0..N {
                _mm256_maskstore_epi32(col(n), t.mask[0], a0[n]);
                _mm256_maskstore_epi32(col(n).wrapping_add(L), t.mask[1], a1[n]);
            }
            return;
        }
        // y = f(Σ)·((a/127)·scale_n) + b_n; NaN for a token with a non-finite input, b_n for
        // one whose inputs are all zero.
        // (No closures over intrinsics here: a closure would not inherit the entry points'
        // features.)
        let flags = |m: &[i32; GROUP], v: usize| m.as_ptr().add(t.tok + v * L);
        for v in 0..2 {
            let sx = _mm256_loadu_ps(tokens.sx.as_ptr().add(t.tok + v * L));
            let bad = _mm256_castsi256_ps(_mm256_loadu_si256(flags(&tokens.bad, v).cast()));
            let none = _mm256_castsi256_ps(_mm256_loadu_si256(flags(&tokens.zero, v).cast()));
            let acc = if v == 0 { &a0 } else { &a1 };
            for n in 0..N {
                let sc = _mm256_set1_ps(scales[t.j0 + n]);
                let term = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[n]), _mm256_mul_ps(sx, sc));
                let term = _mm256_andnot_ps(none, term);
                let term = _mm256_blendv_ps(term, _mm256_set1_ps(f32::NAN), bad);
                let y = _mm256_add_ps(term, _mm256_set1_ps(bias[t.j0 + n]));
                _mm256_maskstore_ps(col(n).wrapping_add(v * L).cast(), t.mask[v], y);
            }
        }
    }
}

/// The main loop of [`micro`]: every word of the chunk. The accumulators are passed in and
/// out by value so that they stay in registers.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn products<P: Products, const N: usize>(
    _: P,
    t: Tile<'_>,
    a0: [__m256i; N],
    a1: [__m256i; N],
) -> ([__m256i; N], [__m256i; N]) {
    let (mut a0, mut a1) = (a0, a1);
    // SAFETY: the caller's contract: the panel's words and the prepared tile's.
    unsafe {
        for k in 0..t.words / P::WORDS {
            for h in 0..P::WORDS {
                let a = t.a.add((P::WORDS * k + h) * MR);
                let (x0, x1) = (
                    _mm256_loadu_si256(a.cast()),
                    _mm256_loadu_si256(a.add(L).cast()),
                );
                let w = t.b.add(k * t.stride + h);
                for n in 0..N {
                    let wn = _mm256_set1_epi32(w.add(P::WORDS * n).read_unaligned());
                    a0[n] = P::product(a0[n], x0, wn);
                    a1[n] = P::product(a1[n], x1, wn);
                }
            }
        }
    }
    (a0, a1)
}

/// `rounds` rounds of 12 independent products of whole vectors in form `P`: the loop a
/// form's `i8` peak is measured with. Each product is 8 lanes × `8 / WORDS` operations (a
/// multiplication and an addition per pair of values). Returns the operations done and a sum
/// that depends on every one of them.
///
/// # Safety
/// As [`Products::word`].
#[inline(always)]
unsafe fn dot_loop<P: Products>(rounds: usize) -> (u64, i32) {
    // SAFETY: the caller's promise.
    unsafe {
        // Words of ones and twos (as pairs or bytes), hidden from the optimiser; each product
        // reads its own accumulator, so that it cannot be hoisted out of the loop.
        let ones = _mm256_set1_epi32(core::hint::black_box(0x0101_0101));
        let twos = _mm256_set1_epi32(core::hint::black_box(0x0202_0202));
        let mut acc = [ones; 12];
        for _ in 0..rounds {
            for a in &mut acc {
                *a = P::product(*a, *a, twos);
            }
        }
        let mut total = 0i32;
        for a in acc {
            let mut lanes = [0i32; L];
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), a);
            total = lanes.iter().fold(total, |s, &v| s.wrapping_add(v));
        }
        (rounds as u64 * 12 * L as u64 * 8 / P::WORDS as u64, total)
    }
}

/// [`dot_loop`] of [`Pairs`]: `vpmaddwd` and `vpaddd`.
#[target_feature(enable = "avx2")]
pub(super) fn dot_loop_pairs(rounds: usize) -> (u64, i32) {
    // SAFETY: this function's features are the form's.
    unsafe { dot_loop::<Pairs>(rounds) }
}

/// [`dot_loop`] of [`Quads`]: `vpdpbusd` on 256 bits.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) fn dot_loop_quads(rounds: usize) -> (u64, i32) {
    // SAFETY: this function's features are the form's.
    unsafe { dot_loop::<Quads>(rounds) }
}
