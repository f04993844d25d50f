//! Projections with `i8` weights on aarch64 with the dot-product extension (FEAT_DotProd,
//! `SDOT`): the W8A8 kernel of [`Kernel::NeonBf16`](super::Kernel::NeonBf16), bit for bit as
//! `scalar::linear_i8`.
//!
//! Each panel of 8 tokens is quantized as the reference does (per token: `a = max |x|`,
//! `r = 127 / a`, `x̂ = round(x·r)` to nearest, ties to even, within `±127`, NaN to 0) and
//! packed four inputs of a token per 32-bit word, one signed byte each: word `t` of quad `k`
//! holds token `t`'s inputs `4k .. 4k + 4`, so one 128-bit load holds a quad of 4 tokens.
//! `SDOT` (by element) multiplies the 16 signed bytes of such a vector by one word of 4 signed
//! bytes from another register and adds each group of four products to a 32-bit lane: signed
//! by signed, so unlike `vpdpbusd` there is no offset to take back out. The weights are stored
//! with their rows in fours (`kernels/layout.rs`), so one 128-bit load holds the weight words
//! of 4 output features, each of its words the by-element operand of an `SDOT` in turn. The
//! micro-kernel is 8 tokens (two vectors) × up to 12 features (one storage tile): 24
//! accumulators, 2 input and 3 weight registers of the 32. Inputs past what the pack buffer
//! holds are taken a chunk at a time, the partial `i32` sums waiting in `out` between chunks.
//! The `i32` sums are exact; the epilogue `f(Σ)·((a/127)·scale_n) + b_n` rounds as the
//! reference does (no fused operation).
//!
//! Projections of one or two tokens (a decoding step) go one token at a time with the output
//! features in the lanes instead ([`gemv`]): 3 `SDOT` per quad of inputs and storage tile,
//! where a panel of 8 tokens holding one spends 24.
//!
//! Stable Rust has no intrinsics for the dot-product extension yet (`vdotq_laneq_s32` is
//! unstable), so `SDOT` is written with `asm!` in functions compiled with
//! `#[target_feature(enable = "neon,dotprod")]`, reached only where the CPU has it.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::arch::asm;

use super::args::{GEMV_TOKENS, I8Out, check_i8};
use super::layout::{WEIGHT_TILE, last_quad_word};

/// `i32` lanes of a vector.
const L: usize = 4;
/// Tokens per panel: two vectors.
const MR: usize = 2 * L;

/// `acc += a · b[LANE]`: `SDOT` by element, each `i32` lane of `acc` adding the four products
/// of its four signed bytes in `a` with the four signed bytes of word `LANE` of `b`.
macro_rules! sdot {
    ($acc:expr, $a:expr, $b:expr, $lane:literal) => {
        // SAFETY: SDOT reads and writes registers only; the enclosing function is compiled
        // with the `dotprod` feature, which its callers guarantee the CPU has.
        unsafe {
            asm!(
                concat!("sdot {d:v}.4s, {n:v}.16b, {m:v}.4b[", $lane, "]"),
                d = inout(vreg) $acc,
                n = in(vreg) $a,
                m = in(vreg) $b,
                options(pure, nomem, nostack, preserves_flags)
            )
        }
    };
}

/// The four `SDOT` of weight group `g` (features `4g .. 4g + 4`, their words in `w`) on both
/// vectors of tokens `x0`, `x1`, into the accumulator arrays `a0`, `a1` (a macro, so that the
/// instructions are assembled inside the `dotprod` functions).
macro_rules! group {
    ($a0:ident, $a1:ident, $g:expr, $x0:expr, $x1:expr, $w:expr) => {{
        let (g, x0, x1, w) = ($g, $x0, $x1, $w);
        sdot!($a0[4 * g], x0, w, 0);
        sdot!($a0[4 * g + 1], x0, w, 1);
        sdot!($a0[4 * g + 2], x0, w, 2);
        sdot!($a0[4 * g + 3], x0, w, 3);
        sdot!($a1[4 * g], x1, w, 0);
        sdot!($a1[4 * g + 1], x1, w, 1);
        sdot!($a1[4 * g + 2], x1, w, 2);
        sdot!($a1[4 * g + 3], x1, w, 3);
    }};
}

/// `out_p = x · W_pᵀ + b_p` for each projection `p` of the same inputs (`x`, `s × din`,
/// column-major): `i8` weights (rows in fours) and one scale per feature, as
/// `scalar::linear_i8` computes it. Each panel of tokens is quantized and packed once for all
/// the projections. Takes `din > 0` and `pack` of at least two words per token of a panel
/// (`Table::linear` checks).
#[target_feature(enable = "neon,dotprod")]
pub(super) fn linear(
    x: &[f32],
    s: usize,
    din: usize,
    projs: &mut [I8Out<'_, f32>],
    pack: &mut [f32],
) {
    check_i8(x, s, din, projs, (pack.len(), 2 * MR));
    // Quads of inputs per chunk: `MR` words each.
    let max_quads = pack.len() / MR;
    let pack: &mut [u32] = bytemuck::cast_slice_mut(pack);
    let quads = din.div_ceil(4);
    if s <= GEMV_TOKENS {
        for p in projs.iter_mut() {
            for i in 0..s {
                gemv(x, s, i, din, p.q, p.dout(), p.scales, p.bias, p.out, pack);
            }
        }
        return;
    }
    let mut i0 = 0;
    while i0 < s {
        let rows = MR.min(s - i0);
        let tokens = token_scales(x, s, din, i0, rows);
        let mut qc = 0;
        while qc < quads {
            let nq = max_quads.min(quads - qc);
            let panel = &mut pack[..nq * MR];
            pack_panel(x, s, din, i0, rows, &tokens, qc, nq, panel);
            let last = qc + nq == quads;
            for p in projs.iter_mut() {
                let dout = p.dout();
                let full = dout / WEIGHT_TILE * WEIGHT_TILE;
                let mut t0 = 0;
                while t0 < dout {
                    let width = if t0 < full { WEIGHT_TILE } else { dout - full };
                    let tile = Tile {
                        qc,
                        nq,
                        width,
                        din,
                        i0,
                        rows,
                        j0: t0,
                        first: qc == 0,
                        last,
                    };
                    // The storage tile of features `t0 .. t0 + width`: `din · width` bytes.
                    let b = &p.q[t0 * din..(t0 + width) * din];
                    let ops = Operands {
                        a: panel,
                        b,
                        tokens: &tokens,
                        scales: p.scales,
                        bias: p.bias,
                    };
                    match width.div_ceil(4) {
                        1 => micro::<4>(tile, &ops, p.out, s),
                        2 => micro::<8>(tile, &ops, p.out, s),
                        _ => micro::<12>(tile, &ops, p.out, s),
                    }
                    t0 += width;
                }
            }
            qc += nq;
        }
        i0 += rows;
    }
}

/// A panel's tokens: `a/127` (`sx`), `127/a` (`r`), and which tokens are finite and not all
/// zero, two vectors each (lanes past the panel's rows are zero tokens, never stored).
struct Tokens {
    sx: [float32x4_t; 2],
    r: [float32x4_t; 2],
    /// Some input is NaN or infinite: every output NaN.
    bad: [uint32x4_t; 2],
    /// Every input zero: every output the bias.
    zero: [uint32x4_t; 2],
}

/// Rows `at .. at + rows` (`rows ≤ 8`) of a column-major matrix as two vectors, zero past
/// `rows` (also the `i32` partial sums kept in `out`, bit for bit). A short panel (the last
/// tokens, a decoding step) is read value by value: a copy of `rows` values would be a call
/// to `memcpy` per input column.
#[inline(always)]
fn load_rows(x: &[f32], at: usize, rows: usize) -> [float32x4_t; 2] {
    let mut buf = [0f32; MR];
    let src = if rows == MR {
        &x[at..at + MR]
    } else {
        let col = &x[at..at + rows];
        for (i, v) in buf.iter_mut().enumerate() {
            if i < rows {
                *v = col[i];
            }
        }
        &buf[..]
    };
    // SAFETY: `src` holds `MR = 2·L` values.
    unsafe { [vld1q_f32(src.as_ptr()), vld1q_f32(src.as_ptr().add(L))] }
}

/// Writes the first `rows` lanes of `v` to rows `at .. at + rows` of `out` (value by value
/// for a short panel, as [`load_rows`] reads).
#[inline(always)]
fn store_rows(out: &mut [f32], at: usize, rows: usize, v: [float32x4_t; 2]) {
    if rows == MR {
        let dst = &mut out[at..at + MR];
        // SAFETY: `dst` holds `MR = 2·L` values.
        unsafe {
            vst1q_f32(dst.as_mut_ptr(), v[0]);
            vst1q_f32(dst.as_mut_ptr().add(L), v[1]);
        }
    } else {
        let mut buf = [0f32; MR];
        // SAFETY: `buf` holds `MR = 2·L` values.
        unsafe {
            vst1q_f32(buf.as_mut_ptr(), v[0]);
            vst1q_f32(buf.as_mut_ptr().add(L), v[1]);
        }
        let dst = &mut out[at..at + rows];
        for (i, &y) in buf.iter().enumerate() {
            if i < rows {
                dst[i] = y;
            }
        }
    }
}

/// The quantization of rows `i0 .. i0 + rows` of `x` (`s × din`, column-major).
#[inline]
fn token_scales(x: &[f32], s: usize, din: usize, i0: usize, rows: usize) -> Tokens {
    // SAFETY: NEON is the aarch64 baseline; these are register operations.
    unsafe {
        let inf = vdupq_n_f32(f32::INFINITY);
        let mut amax = [vdupq_n_f32(0.0); 2];
        let mut bad = [vdupq_n_u32(0); 2];
        for p in 0..din {
            let col = load_rows(x, i0 + p * s, rows);
            for v in 0..2 {
                let a = vabsq_f32(col[v]);
                // NaN and infinities: not less than infinity.
                bad[v] = vorrq_u32(bad[v], vmvnq_u32(vcltq_f32(a, inf)));
                amax[v] = vmaxq_f32(amax[v], a);
            }
        }
        let q = vdupq_n_f32(127.0);
        let zero = vdupq_n_f32(0.0);
        Tokens {
            sx: amax.map(|a| vdivq_f32(a, q)),
            r: amax.map(|a| vdivq_f32(q, a)),
            bad,
            zero: amax.map(|a| vceqq_f32(a, zero)),
        }
    }
}

/// Packs quads `qc .. qc + nq` of rows `i0 .. i0 + rows` of `x` as signed bytes: word `t` of
/// quad `k` (at `k·MR + t`) holds token `t`'s four quantized inputs `4(qc + k) ..` (byte `j`
/// the input `+ j`; inputs past `din`, and tokens past `rows`, are 0).
#[inline]
fn pack_panel(
    x: &[f32],
    s: usize,
    din: usize,
    i0: usize,
    rows: usize,
    t: &Tokens,
    qc: usize,
    nq: usize,
    pack: &mut [u32],
) {
    // SAFETY: NEON is the aarch64 baseline; register operations and stores to `dst`, which
    // holds `L` words.
    unsafe {
        let (lo, hi) = (vdupq_n_s32(-127), vdupq_n_s32(127));
        for k in 0..nq {
            let p0 = 4 * (qc + k);
            let byte = |j: usize| -> [int32x4_t; 2] {
                if p0 + j < din {
                    let col = load_rows(x, i0 + (p0 + j) * s, rows);
                    // As `weight::quantize`: to nearest, ties to even (FCVTNS, which also
                    // gives 0 for NaN and saturates infinities, from an `r` that overflowed),
                    // then within ±127.
                    [0, 1].map(|v| {
                        let n = vcvtnq_s32_f32(vmulq_f32(col[v], t.r[v]));
                        vminq_s32(vmaxq_s32(n, lo), hi)
                    })
                } else {
                    [vdupq_n_s32(0); 2]
                }
            };
            let (b0, b1, b2, b3) = (byte(0), byte(1), byte(2), byte(3));
            for v in 0..2 {
                // Shift-left-and-insert keeps the bytes below the shift: b0, b1, b2, b3 from
                // the low byte up.
                let w = vsliq_n_s32::<8>(b0[v], b1[v]);
                let w = vsliq_n_s32::<16>(w, b2[v]);
                let w = vsliq_n_s32::<24>(w, b3[v]);
                let dst = &mut pack[k * MR + v * L..k * MR + v * L + L];
                vst1q_u32(dst.as_mut_ptr(), vreinterpretq_u32_s32(w));
            }
        }
    }
}

/// One micro-tile's share of a panel: packed quads `qc .. qc + nq`, features `j0 .. j0 +
/// width` of one storage tile, tokens `i0 .. i0 + rows`. `first`: the sums start from zero;
/// otherwise from the partial sums stored in `out`. `last`: the epilogue writes the outputs;
/// otherwise the partial `i32` sums are stored in `out`'s place.
#[derive(Clone, Copy)]
struct Tile {
    qc: usize,
    nq: usize,
    width: usize,
    din: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    first: bool,
    last: bool,
}

/// What every micro-tile of a chunk reads: the packed quads (`nq · MR` words), the storage
/// tile (`din · width` bytes: quads of rows as `width` words, then the last `din mod 4` rows
/// as plain rows), the panel's token scales, and the layer's scales and biases.
struct Operands<'a> {
    a: &'a [u32],
    b: &'a [i8],
    tokens: &'a Tokens,
    scales: &'a [f32],
    bias: &'a [f32],
}

/// The `8 × N` micro-tile (`N` the tile's width rounded up to 4; the lanes of features past
/// `width` sum whatever bytes their loads brought, and are never stored). The two rows of accumulators are two named
/// arrays, passed by value through [`quads`].
#[target_feature(enable = "neon,dotprod")]
fn micro<const N: usize>(t: Tile, ops: &Operands<'_>, out: &mut [f32], s: usize) {
    let zero = vdupq_n_s32(0);
    let (mut a0, mut a1) = ([zero; N], [zero; N]);
    let col = |n: usize| t.i0 + (t.j0 + n) * s;
    if !t.first {
        for n in 0..N {
            if n < t.width {
                let [c0, c1] = load_rows(out, col(n), t.rows);
                a0[n] = vreinterpretq_s32_f32(c0);
                a1[n] = vreinterpretq_s32_f32(c1);
            }
        }
    }
    // Quads of the tile in this chunk that are whole quads of stored rows; the chunk's last
    // quad may be the partial one (`din mod 4` plain rows).
    let whole = t.din / 4;
    let q_end = (t.qc + t.nq).min(whole);
    assert!(
        ops.a.len() >= t.nq * MR && ops.b.len() >= t.din * t.width && N >= t.width,
        "micro-tile operands"
    );
    // SAFETY: quads `qc .. q_end` of the panel are in `a` (`nq · MR` words) and quads of
    // stored rows below `whole` in `b` (`4 · whole ≤ din`), as just checked.
    (a0, a1) = unsafe {
        quads::<N>(
            ops.a.as_ptr(),
            ops.b.as_ptr(),
            ops.b.len(),
            t,
            q_end,
            a0,
            a1,
        )
    };
    if q_end < t.qc + t.nq {
        // The partial last quad: its plain rows `4·whole ..`, each weight in its byte of an
        // otherwise zero word (the padding inputs are zeros, any weight would do).
        let at = (whole - t.qc) * MR;
        let x = &ops.a[at..at + MR];
        // SAFETY: `x` holds `MR = 2·L` words.
        let (x0, x1) = unsafe {
            (
                vreinterpretq_s8_u32(vld1q_u32(x.as_ptr())),
                vreinterpretq_s8_u32(vld1q_u32(x.as_ptr().add(L))),
            )
        };
        // The words first, apart from the accumulators (a loop with a loop inside it is not
        // unrolled, and accumulators indexed by a variable would live in memory).
        let mut words = [0u32; N];
        for (n, word) in words.iter_mut().enumerate().take(t.width) {
            *word = last_quad_word(ops.b, t.width, t.din, n);
        }
        for g in 0..N / 4 {
            // SAFETY: `words` holds `N` words, a multiple of 4.
            let w = unsafe { vreinterpretq_s8_u32(vld1q_u32(words.as_ptr().add(4 * g))) };
            group!(a0, a1, g, x0, x1, w);
        }
    }
    if !t.last {
        for n in 0..N {
            if n < t.width {
                let sums = [a0[n], a1[n]].map(|v| vreinterpretq_f32_s32(v));
                store_rows(out, col(n), t.rows, sums);
            }
        }
        return;
    }
    // y = f(Σ)·((a/127)·scale_n) + b_n; NaN for a token with a non-finite input, b_n for one
    // whose inputs are all zero.
    let tk = ops.tokens;
    let nan = vdupq_n_f32(f32::NAN);
    let fzero = vdupq_n_f32(0.0);
    for n in 0..N {
        if n < t.width {
            let sc = vdupq_n_f32(ops.scales[t.j0 + n]);
            let b = vdupq_n_f32(ops.bias[t.j0 + n]);
            let y = |acc: int32x4_t, v: usize| {
                let term = vmulq_f32(vcvtq_f32_s32(acc), vmulq_f32(tk.sx[v], sc));
                let term = vbslq_f32(tk.zero[v], fzero, term);
                let term = vbslq_f32(tk.bad[v], nan, term);
                vaddq_f32(term, b)
            };
            store_rows(out, col(n), t.rows, [y(a0[n], 0), y(a1[n], 1)]);
        }
    }
}

/// The main loop of [`micro`]: whole quads `t.qc .. q_end`. The accumulators are passed in
/// and out by value so that they stay in registers.
///
/// Each quad's weights are `N / 4` loads of 16 bytes from the start of its row. In a tile
/// narrower than `N` (the last, `dout mod 12` features) they read past the row into the next
/// one, harmless for the features past `width`, which are never stored; only the last quads,
/// whose loads would run past the tile, gather their partial group word by word.
///
/// # Safety
/// `a` holds the panel's quads from `t.qc` to at least `q_end` (`MR` words each) and `b`
/// (`b_len` bytes, the storage tile) the quads of rows up to `q_end` (`4·width` bytes each);
/// `N ≥ t.width`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn quads<const N: usize>(
    a: *const u32,
    b: *const i8,
    b_len: usize,
    t: Tile,
    q_end: usize,
    a0: [int32x4_t; N],
    a1: [int32x4_t; N],
) -> ([int32x4_t; N], [int32x4_t; N]) {
    let (mut a0, mut a1) = (a0, a1);
    let row = 4 * t.width;
    // Quads below `wide` read their `4N` bytes inside `b`: `q·row + 4N ≤ b_len`.
    let wide = if b_len >= 4 * N {
        ((b_len - 4 * N) / row + 1).clamp(t.qc, q_end)
    } else {
        t.qc
    };
    // Quad `q` of the panel (both loops: `qc ≤ q < q_end`).
    let x = |q: usize| {
        // SAFETY: the caller's contract: quad `q`'s `MR` words at `(q − qc)·MR`.
        unsafe {
            let x = a.add((q - t.qc) * MR);
            (
                vreinterpretq_s8_u32(vld1q_u32(x)),
                vreinterpretq_s8_u32(vld1q_u32(x.add(L))),
            )
        }
    };
    for q in t.qc..wide {
        let (x0, x1) = x(q);
        for g in 0..N / 4 {
            // SAFETY: `q < wide`: the 16 bytes at `q·row + 16g` are inside `b`.
            let wg = unsafe { vld1q_s8(b.add(q * row + 16 * g)) };
            group!(a0, a1, g, x0, x1, wg);
        }
    }
    for q in wide..q_end {
        let (x0, x1) = x(q);
        for g in 0..N / 4 {
            // SAFETY: the caller's contract: quad `q`'s weight row of `width` words at
            // `q · row`; a whole group of 4 words at `16g` when `4g + 4 ≤ width`, else the
            // `width − 4g` words of the partial group.
            let wg = unsafe {
                let w = b.add(q * row + 16 * g);
                if 4 * g + 4 <= t.width {
                    vld1q_s8(w)
                } else {
                    partial_group(w, t.width - 4 * g)
                }
            };
            group!(a0, a1, g, x0, x1, wg);
        }
    }
    (a0, a1)
}

/// The first `words` (1 to 3) weight words at `w` (byte `j` of a word its `j`-th), zero after
/// them.
///
/// # Safety
/// `w` points to `4 · words` readable bytes.
#[inline(always)]
unsafe fn partial_group(w: *const i8, words: usize) -> int8x16_t {
    // SAFETY: word `f < words` of the caller's bytes (unaligned).
    let word = |f: usize| u32::from_le_bytes(unsafe { w.add(4 * f).cast::<[u8; 4]>().read() });
    // SAFETY: NEON is the aarch64 baseline; register operations.
    unsafe {
        let mut v = vsetq_lane_u32::<0>(word(0), vdupq_n_u32(0));
        if words > 1 {
            v = vsetq_lane_u32::<1>(word(1), v);
        }
        if words > 2 {
            v = vsetq_lane_u32::<2>(word(2), v);
        }
        vreinterpretq_s8_u32(v)
    }
}

// ---- One token at a time (decoding) --------------------------------------------------------
//
// A panel of 8 tokens holding one or two would be mostly padding, so up to `GEMV_TOKENS`
// tokens go one at a time with the output features in the lanes: the token's quantized inputs
// are packed one word per quad, and `SDOT` (by element) multiplies a 16-byte load of a quad
// row (the words of 4 features) by word `j` of 4 packed quads, adding to the 4 features'
// sums. A storage tile of 12 features is 3 accumulators; 3 `SDOT` per quad of inputs where
// the panel kernel spends 24.

/// Token `i` of `x` (`s × din`, column-major): `out[i, ·] = x[i, ·] · Wᵀ + b` as
/// `scalar::linear_i8` computes it, `pack` holding a word per quad of inputs (a chunk of
/// `pack.len()` quads at a time, the partial sums waiting in `out`).
#[target_feature(enable = "neon,dotprod")]
fn gemv(
    x: &[f32],
    s: usize,
    i: usize,
    din: usize,
    q: &[i8],
    dout: usize,
    scales: &[f32],
    bias: &[f32],
    out: &mut [f32],
    pack: &mut [u32],
) {
    let mut amax = 0f32;
    let mut finite = true;
    for p in 0..din {
        let a = x[i + p * s].abs();
        finite &= a.is_finite();
        amax = amax.max(a);
    }
    let tok = Token {
        sx: amax / 127.0,
        bad: !finite,
        zero: amax == 0.0,
    };
    let r = 127.0 / amax;
    let quads = din.div_ceil(4);
    let whole = din / 4;
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    let mut qc = 0;
    while qc < quads {
        let nq = pack.len().min(quads - qc);
        for (k, word) in pack[..nq].iter_mut().enumerate() {
            let p0 = 4 * (qc + k);
            let v: [f32; 4] = core::array::from_fn(|j| {
                if p0 + j < din {
                    x[i + (p0 + j) * s]
                } else {
                    0.0
                }
            });
            // SAFETY: NEON is the aarch64 baseline; `v` holds 4 values.
            *word = unsafe {
                // As the panel kernel quantizes: to nearest, ties to even (0 for NaN), then
                // within ±127; narrowed to the word's four bytes (input `p0 + j` in byte `j`).
                let n = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(v.as_ptr()), vdupq_n_f32(r)));
                let n = vminq_s32(vmaxq_s32(n, vdupq_n_s32(-127)), vdupq_n_s32(127));
                let h = vmovn_s32(n);
                let b = vmovn_s16(vcombine_s16(h, h));
                vget_lane_u32::<0>(vreinterpret_u32_s8(b))
            };
        }
        let t = Row {
            qc,
            nq,
            whole,
            din,
            first: qc == 0,
            last: qc + nq == quads,
        };
        let mut t0 = 0;
        while t0 < dout {
            let width = if t0 < full { WEIGHT_TILE } else { dout - full };
            let ops = RowOperands {
                a: &pack[..nq],
                b: &q[t0 * din..(t0 + width) * din],
                width,
                j0: t0,
                scales,
                bias,
            };
            let at = i + t0 * s;
            match width.div_ceil(4) {
                1 => row::<1>(t, &ops, tok, out, at, s),
                2 => row::<2>(t, &ops, tok, out, at, s),
                _ => row::<3>(t, &ops, tok, out, at, s),
            }
            t0 += width;
        }
        qc += nq;
    }
}

/// One token's scale and state (see [`Tokens`]).
#[derive(Clone, Copy)]
struct Token {
    sx: f32,
    bad: bool,
    zero: bool,
}

/// A chunk of one token's packed quads (`qc .. qc + nq` of `din.div_ceil(4)`; `whole` of
/// them whole quads of stored rows), as [`Tile`] for the panel kernel.
#[derive(Clone, Copy)]
struct Row {
    qc: usize,
    nq: usize,
    whole: usize,
    din: usize,
    first: bool,
    last: bool,
}

/// What [`row`] reads: the packed words of the chunk, the storage tile of features `j0 .. j0
/// + width` (`din · width` bytes), the layer's scales and biases.
struct RowOperands<'a> {
    a: &'a [u32],
    b: &'a [i8],
    width: usize,
    j0: usize,
    scales: &'a [f32],
    bias: &'a [f32],
}

/// One token by one storage tile, `G` groups of 4 features in the lanes of `G` accumulators;
/// the token's outputs are `out[at + n·s]`.
#[target_feature(enable = "neon,dotprod")]
fn row<const G: usize>(
    t: Row,
    ops: &RowOperands<'_>,
    tok: Token,
    out: &mut [f32],
    at: usize,
    s: usize,
) {
    let width = ops.width;
    let mut acc = [vdupq_n_s32(0); G];
    if !t.first {
        for g in 0..G {
            let mut sums = [0u32; 4];
            for (f, sum) in sums.iter_mut().enumerate() {
                if 4 * g + f < width {
                    *sum = out[at + (4 * g + f) * s].to_bits();
                }
            }
            // SAFETY: `sums` holds 4 words.
            acc[g] = unsafe { vreinterpretq_s32_u32(vld1q_u32(sums.as_ptr())) };
        }
    }
    let q_end = (t.qc + t.nq).min(t.whole);
    assert!(
        ops.a.len() >= t.nq && ops.b.len() >= t.din * width && 4 * G >= width,
        "row operands"
    );
    // SAFETY: quads `qc .. q_end` of the chunk are in `a` and their rows in `b`, as checked.
    acc = unsafe {
        row_quads::<G>(
            ops.a.as_ptr(),
            ops.b.as_ptr(),
            ops.b.len(),
            width,
            t,
            q_end,
            acc,
        )
    };
    if q_end < t.qc + t.nq {
        // The partial last quad, its weights gathered from the plain rows as the panel kernel
        // does, features in the lanes.
        let xw = ops.a[t.whole - t.qc];
        let mut words = [0u32; 12];
        for (n, word) in words.iter_mut().enumerate().take(width) {
            for p in 4 * t.whole..t.din {
                let byte = ops.b[p * width + n].cast_unsigned();
                *word |= u32::from(byte) << (8 * (p - 4 * t.whole));
            }
        }
        let xv = vreinterpretq_s8_u32(vdupq_n_u32(xw));
        for g in 0..G {
            // SAFETY: `words` holds `4g + 4 ≤ 12` words.
            let w = unsafe { vreinterpretq_s8_u32(vld1q_u32(words.as_ptr().add(4 * g))) };
            sdot!(acc[g], w, xv, 0);
        }
    }
    if !t.last {
        for g in 0..G {
            let mut sums = [0u32; 4];
            // SAFETY: `sums` holds 4 words.
            unsafe { vst1q_u32(sums.as_mut_ptr(), vreinterpretq_u32_s32(acc[g])) };
            for (f, &sum) in sums.iter().enumerate() {
                if 4 * g + f < width {
                    out[at + (4 * g + f) * s] = f32::from_bits(sum);
                }
            }
        }
        return;
    }
    // y = f(Σ)·((a/127)·scale_n) + b_n, NaN for a token with a non-finite input, b_n for one
    // whose inputs are all zero: the panel kernel's epilogue, features in the lanes.
    for g in 0..G {
        let (mut sc, mut b) = ([0f32; 4], [0f32; 4]);
        for f in 0..4 {
            if 4 * g + f < width {
                sc[f] = ops.scales[ops.j0 + 4 * g + f];
                b[f] = ops.bias[ops.j0 + 4 * g + f];
            }
        }
        let mut y = [0f32; 4];
        // SAFETY: NEON is the aarch64 baseline; `sc`, `b` and `y` hold 4 values.
        unsafe {
            let term = vmulq_f32(
                vcvtq_f32_s32(acc[g]),
                vmulq_f32(vdupq_n_f32(tok.sx), vld1q_f32(sc.as_ptr())),
            );
            let term = if tok.bad {
                vdupq_n_f32(f32::NAN)
            } else if tok.zero {
                vdupq_n_f32(0.0)
            } else {
                term
            };
            vst1q_f32(y.as_mut_ptr(), vaddq_f32(term, vld1q_f32(b.as_ptr())));
        }
        for (f, &v) in y.iter().enumerate() {
            if 4 * g + f < width {
                out[at + (4 * g + f) * s] = v;
            }
        }
    }
}

/// The main loop of [`row`]: whole quads `t.qc .. q_end`, four at a time (their packed
/// words one vector, word `j` the by-element operand of quad `j`'s `SDOT`), then one at a
/// time. Loads past a narrow tile's width as in [`quads`].
///
/// # Safety
/// `a` holds the chunk's words from quad `t.qc` to at least `q_end`, `b` (`b_len` bytes, the
/// storage tile) the quads of rows up to `q_end` (`4·width` bytes each); `4G ≥ width`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn row_quads<const G: usize>(
    a: *const u32,
    b: *const i8,
    b_len: usize,
    width: usize,
    t: Row,
    q_end: usize,
    acc: [int32x4_t; G],
) -> [int32x4_t; G] {
    let mut acc = acc;
    let row = 4 * width;
    // Quads below `wide` read their `16G` bytes inside `b`.
    let wide = if b_len >= 16 * G {
        ((b_len - 16 * G) / row + 1).clamp(t.qc, q_end)
    } else {
        t.qc
    };
    let mut q = t.qc;
    while q + 4 <= wide {
        // SAFETY: words `q − qc .. q − qc + 4` of the chunk (`q + 4 ≤ q_end`).
        let xv = unsafe { vreinterpretq_s8_u32(vld1q_u32(a.add(q - t.qc))) };
        // SAFETY: `q + j < wide`: the 16 bytes at `(q + j)·row + 16g` are inside
        // `b`.
        let w = |j: usize, g: usize| unsafe { vld1q_s8(b.add((q + j) * row + 16 * g)) };
        for g in 0..G {
            sdot!(acc[g], w(0, g), xv, 0);
        }
        for g in 0..G {
            sdot!(acc[g], w(1, g), xv, 1);
        }
        for g in 0..G {
            sdot!(acc[g], w(2, g), xv, 2);
        }
        for g in 0..G {
            sdot!(acc[g], w(3, g), xv, 3);
        }
        q += 4;
    }
    while q < q_end {
        // SAFETY: word `q − qc` of the chunk.
        let xv = unsafe { vreinterpretq_s8_u32(vdupq_n_u32(a.add(q - t.qc).read())) };
        for g in 0..G {
            // SAFETY: as in [`quads`]: a whole group's 16 bytes inside `b` below `wide` or
            // inside the row, else the partial group's words.
            let w = unsafe {
                let p = b.add(q * row + 16 * g);
                if q < wide || 4 * g + 4 <= width {
                    vld1q_s8(p)
                } else {
                    partial_group(p, width - 4 * g)
                }
            };
            sdot!(acc[g], w, xv, 0);
        }
        q += 1;
    }
    acc
}

/// `rounds` rounds of 12 independent `SDOT` (by element) on whole vectors: the core's `i8`
/// dot-product peak loop. Each instruction is 4 lanes × 4 products × 2 operations. Returns
/// the operations done and a sum that depends on every one of them.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_loop(rounds: usize) -> (u64, i32) {
    // Bytes of one and of two, hidden from the optimiser.
    let ones = vreinterpretq_s8_u32(vdupq_n_u32(core::hint::black_box(0x0101_0101)));
    let twos = vreinterpretq_s8_u32(vdupq_n_u32(core::hint::black_box(0x0202_0202)));
    let mut acc = [vdupq_n_s32(0); 12];
    for _ in 0..rounds {
        for a in &mut acc {
            sdot!(*a, ones, twos, 0);
        }
    }
    let total = acc.iter().fold(vdupq_n_s32(0), |s, &a| vaddq_s32(s, a));
    (rounds as u64 * 12 * 4 * 8, vaddvq_s32(total))
}
