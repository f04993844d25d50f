//! The SIMD kernels, written once over [`Simd`] and compiled per instruction set.
//!
//! Layouts are the crate's: every matrix is column-major, tokens contiguous per feature.
//!
//! - [`linear`]: `C = A · B + bias` (`A` is `s × din`, `B = Wᵀ` is `din × dout`), a
//!   register-blocked GEMM: micro-tiles of `2·LANES` tokens × `TILE` output features (6 with
//!   AVX2's 16 registers, 12 with AVX-512's 32: 12 or 24 vector accumulators), over `A` panels packed contiguously. It also runs in place (`C` over `A`,
//!   for the output projection), which the packing makes safe.
//! - [`attention`]: fused streaming attention for one head, queries in lanes. A tile of
//!   `2·LANES` queries (or `LANES`) walks the keys in blocks of [`KB`]: the scores of the block
//!   come from a `queries × 6 keys` micro-kernel, masking is vectorised per key, the online
//!   softmax keeps a running maximum and denominator per lane, and `P·V` is a
//!   `queries × 6 value columns` micro-kernel. Key blocks the causal or sliding-window pattern
//!   hides from every query of the tile are never visited. Fewer queries than `LANES` (a
//!   decode step) run the keys-in-lanes kernel [`rows`] instead.
//! - [`attention_with_weights`]: the same tiles writing the scores into the caller's
//!   `SQ × SKV` weights matrix, normalising them there, and multiplying them with `V`.
//!
//! Every function here is `#[inline(always)]`: the kernels must be compiled inside the
//! `#[target_feature]` entry points of their instruction set (`x86.rs`), since a function
//! of their own would be compiled without those instructions (and its intrinsics left as
//! calls).
//!
//! A query tile that runs past the last query is moved back to end there (it overlaps the
//! previous tile and recomputes a few rows with the same arithmetic), so no load ever leaves
//! the caller's buffers and no lane is wasted on padding.
//!
//! The rules of SPEC.md hold as in the scalar kernel: a masked key is replaced by `−∞` before
//! the softmax (so NaN in its key cannot leak) and is left out of `P·V` (masked products are
//! zeroed, not multiplied by zero, when `V` holds non-finite values); a row with no key gets
//! zeros; NaN scores of allowed keys propagate.

#![allow(
    clippy::too_many_arguments,
    clippy::inline_always,
    // Index loops over lanes, rows and columns read like the math they implement.
    clippy::needless_range_loop
)]

use super::simd::Simd;
use super::{Dims, KB, LinearIo, MQ_MAX, MaskView, WorkRef};
use crate::Float;
use crate::linear::WEIGHT_TILE;

/// Runs `$body` once per micro-tile of `$n` columns (or keys), with `$at` the tile's first
/// column and `$N` a constant equal to its width: full tiles of `$tile` (6 or 12, a constant
/// per kernel, so the outer match folds away), then with 12 one tile each of 8 and 6 where
/// they fit, then the rest (1 to 5). Every width is its own instantiation, and the loops are
/// plain counted loops (an iterator of `(start, width)` pairs with a match per item cost
/// the AVX2 attention kernel 18 %).
macro_rules! for_tiles {
    ($n:expr, $tile:expr, |$at:ident, $N:ident| $body:expr) => {{
        let n: usize = $n;
        let mut $at = 0usize;
        macro_rules! one {
            ($w:literal) => {{
                {
                    const $N: usize = $w;
                    $body;
                }
                $at += $w;
            }};
        }
        macro_rules! last {
            ($w:literal) => {{
                const $N: usize = $w;
                $body;
            }};
        }
        match $tile {
            6 => {
                while $at + 6 <= n {
                    one!(6);
                }
            }
            12 => {
                while $at + 12 <= n {
                    one!(12);
                }
                if n - $at >= 8 {
                    one!(8);
                }
                if n - $at >= 6 {
                    one!(6);
                }
            }
            _ => unreachable!("micro-tiles are 6 or 12 wide"),
        }
        match n - $at {
            0 => {}
            1 => last!(1),
            2 => last!(2),
            3 => last!(3),
            4 => last!(4),
            5 => last!(5),
            _ => unreachable!("at most 5 columns remain"),
        }
    }};
}

// ------------------------------------------------------------------------------------------
// Linear: C = A · B + bias
// ------------------------------------------------------------------------------------------

/// `out[s × dout] = x[s × din] · Wᵀ + bias` with `W` in the tile layout of
/// [`crate::Linear`], or the same in place when `io` is [`LinearIo::InPlace`] (then
/// `din == dout` and `pack` holds a whole row panel). In that layout a micro-tile's weights
/// for one input feature are consecutive values, and its whole strip is contiguous: the
/// broadcasts walk one pointer at constant offsets.
///
/// Row panels are two vectors of tokens (one when there are fewer tokens than that), packed
/// contiguously into `pack`, `kc = pack.len() / panel rows` input features at a time (capped
/// at `din`); in place, the whole panel is packed before any of its rows is overwritten. A
/// sequence that is exactly one panel is read where it is, with no packing.
#[inline(always)]
pub(crate) fn linear<S: Simd>(
    s: S,
    io: LinearIo<'_, S::E>,
    sq: usize,
    din: usize,
    w: &[S::E],
    dout: usize,
    bias: &[S::E],
    pack: &mut [S::E],
) {
    if sq <= GEMV_TOKENS && din > 0 && pack.len() >= WEIGHT_TILE * din + S::LANES {
        linear_gemv(s, io, sq, din, w, dout, bias, pack);
    } else if sq >= 2 * S::LANES {
        linear_panels::<S, 2>(s, io, sq, din, w, dout, bias, pack);
    } else {
        linear_panels::<S, 1>(s, io, sq, din, w, dout, bias, pack);
    }
}

/// Token counts up to which [`linear`] runs token by token ([`linear_gemv`]) instead of in
/// row panels, whose vectors would be mostly padding (decoding runs one token).
pub(crate) const GEMV_TOKENS: usize = 2;

/// [`linear`] one token at a time, for very few tokens: each strip of 12 output features is
/// a contiguous `din × 12` block in the weights' tile layout, so its 12 sums are one long dot
/// product with the token's inputs spread the same way (`xe[p·12 + c] = x[p]`, built once per
/// token in `pack`). Vectors run along that memory; since a period of `3·LANES` values is a
/// multiple of 12, lane `j` of accumulator `k` always serves column `(k·LANES + j) mod 12`.
/// The last strip (`dout mod 12` columns) goes through plain loops. In place, a token's row is
/// read into `xe` before any of its outputs is written.
#[inline(always)]
fn linear_gemv<S: Simd>(
    s: S,
    io: LinearIo<'_, S::E>,
    sq: usize,
    din: usize,
    w: &[S::E],
    dout: usize,
    bias: &[S::E],
    pack: &mut [S::E],
) {
    const T: usize = WEIGHT_TILE;
    let l = S::LANES;
    assert!(
        w.len() >= din * dout && bias.len() >= dout,
        "weights too short"
    );
    assert!(pack.len() >= T * din + l, "pack buffer too small");
    // `Add` accumulates into the outputs instead of writing them.
    let add = matches!(&io, LinearIo::Add { .. });
    let (a, c): (*const S::E, *mut S::E) = match io {
        LinearIo::Out { x, out } | LinearIo::Add { x, out } => {
            assert!(
                x.len() >= sq * din && out.len() >= sq * dout,
                "operands too short"
            );
            (x.as_ptr(), out.as_mut_ptr())
        }
        LinearIo::InPlace(buf) => {
            assert!(
                din == dout && buf.len() >= sq * din,
                "in-place operand too short"
            );
            let p = buf.as_mut_ptr();
            (p.cast_const(), p)
        }
    };
    let xe = pack.as_mut_ptr();
    let full = dout / T * T;
    for t in 0..sq {
        // SAFETY: reads input `p < din` of token `t < sq` (`a` holds `sq × din`); writes
        // `xe[p·12 .. p·12 + ⌈12/L⌉·L] ⊂ [0, 12·din + L)`, inside `pack` (asserted).
        unsafe {
            for p in 0..din {
                let xb = s.splat(*a.add(t + p * sq));
                let mut k = 0;
                while k < T {
                    s.store(xe.add(p * T + k), xb);
                    k += l;
                }
            }
        }
        let mut t0 = 0;
        while t0 < full {
            // SAFETY: strip `t0` is `din · 12` values at `t0 · din` inside `w`, and `xe` holds
            // as many; the outputs are columns `t0 .. t0 + 12 ≤ dout` of token `t`.
            unsafe {
                let sums = gemv_strip(s, w.as_ptr().add(t0 * din), xe, din * T);
                for (j, &v) in sums.iter().enumerate() {
                    let o = c.add(t + (t0 + j) * sq);
                    *o = if add { *o + v } else { v + bias[t0 + j] };
                }
            }
            t0 += T;
        }
        let tail = dout - full;
        if tail == 0 {
            continue;
        }
        // The last strip: `din × tail` values at `full · din`, row stride `tail`.
        let base = full * din;
        let mut sums = [S::E::ZERO; T];
        if l % tail == 0 && pack.len() >= (T + tail) * din + 2 * l {
            // Vectors along its memory against `xt[p·tail + j] = x[p]`: lane `j` always
            // serves column `j mod tail` (every vector starts at a multiple of LANES).
            // SAFETY: `xt` = `pack[12·din + L ..]` takes `tail·din + L` values (checked);
            // reads of `xe[p·12]`, of the strip's `din·tail` values and of `xt` stay inside.
            unsafe {
                let xt = xe.add(T * din + l);
                for p in 0..din {
                    s.store(xt.add(p * tail), s.splat(*xe.add(p * T)));
                }
                let len = din * tail;
                let strip = w.as_ptr().add(base);
                let zero = s.splat(S::E::ZERO);
                let mut acc = [zero; 4];
                let mut i = 0;
                while i + 4 * l <= len {
                    for (k, a) in acc.iter_mut().enumerate() {
                        let at = i + k * l;
                        *a = s.fma(s.load(strip.add(at)), s.load(xt.add(at)), *a);
                    }
                    i += 4 * l;
                }
                while i + l <= len {
                    acc[0] = s.fma(s.load(strip.add(i)), s.load(xt.add(i)), acc[0]);
                    i += l;
                }
                let total = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
                let mut lanes = [S::E::ZERO; 16];
                s.store(lanes.as_mut_ptr(), total);
                for (j, &v) in lanes.iter().enumerate().take(l) {
                    sums[j % tail] += v;
                }
                for j in i..len {
                    sums[j % tail] += *strip.add(j) * *xt.add(j);
                }
            }
        } else {
            for (j, sum) in sums.iter_mut().enumerate().take(tail) {
                // Eight partial sums, so the additions are not one long dependency chain.
                let mut part = [S::E::ZERO; 8];
                for p in 0..din {
                    // SAFETY: `xe[p·12]` is input `p`.
                    part[p % 8] += unsafe { *xe.add(p * T) } * w[base + p * tail + j];
                }
                *sum = part.iter().fold(S::E::ZERO, |a, &b| a + b);
            }
        }
        for (j, &v) in sums.iter().enumerate().take(tail) {
            // SAFETY: column `full + j < dout` of token `t`.
            unsafe {
                let o = c.add(t + (full + j) * sq);
                *o = if add { *o + v } else { v + bias[full + j] };
            }
        }
    }
}

/// The 12 column sums of `Σ_i strip[i] · xe[i]` over `len` values (`i mod 12` is the column).
///
/// # Safety
/// `strip` and `xe` hold `len` values; `len` is a multiple of 12.
#[inline(always)]
unsafe fn gemv_strip<S: Simd>(
    s: S,
    strip: *const S::E,
    xe: *const S::E,
    len: usize,
) -> [S::E; WEIGHT_TILE] {
    let l = S::LANES;
    let per = 3 * l;
    let zero = s.splat(S::E::ZERO);
    let mut acc = [zero; 6];
    let mut i = 0;
    // SAFETY: every vector read lies in `[0, len)` of both operands.
    unsafe {
        while i + 2 * per <= len {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = s.fma(s.load(strip.add(i + k * l)), s.load(xe.add(i + k * l)), *a);
            }
            i += 2 * per;
        }
        for k in 0..3 {
            acc[k] = s.add(acc[k], acc[k + 3]);
        }
        while i + per <= len {
            for (k, a) in acc.iter_mut().enumerate().take(3) {
                *a = s.fma(s.load(strip.add(i + k * l)), s.load(xe.add(i + k * l)), *a);
            }
            i += per;
        }
    }
    let mut lanes = [S::E::ZERO; 48];
    for (k, a) in acc.iter().enumerate().take(3) {
        // SAFETY: `3·L ≤ 48` values.
        unsafe { s.store(lanes.as_mut_ptr().add(k * l), *a) };
    }
    let mut sums = [S::E::ZERO; WEIGHT_TILE];
    for (j, &v) in lanes.iter().enumerate().take(per) {
        sums[j % WEIGHT_TILE] += v;
    }
    for j in i..len {
        // SAFETY: `j < len`.
        sums[j % WEIGHT_TILE] += unsafe { *strip.add(j) * *xe.add(j) };
    }
    sums
}

/// [`linear`] with row panels of `NV` vectors.
#[inline(always)]
fn linear_panels<S: Simd, const NV: usize>(
    s: S,
    io: LinearIo<'_, S::E>,
    sq: usize,
    din: usize,
    w: &[S::E],
    dout: usize,
    bias: &[S::E],
    pack: &mut [S::E],
) {
    let l = S::LANES;
    let mr = NV * l;
    // Output features per micro-tile (`NV · TILE` accumulators; wider tiles made LLVM spill
    // accumulators to the stack).
    let tile = S::TILE;
    assert!(
        w.len() >= din * dout && bias.len() >= dout,
        "weights too short"
    );
    let kc_max = (pack.len() / mr).min(din);
    assert!(din == 0 || kc_max >= 1, "pack buffer too small");
    // `Add` accumulates into the outputs: every input chunk then starts from them.
    let add = matches!(&io, LinearIo::Add { .. });
    let (a, c, in_place): (*const S::E, *mut S::E, bool) = match io {
        LinearIo::Out { x, out } | LinearIo::Add { x, out } => {
            assert!(
                x.len() >= sq * din && out.len() >= sq * dout,
                "operands too short"
            );
            (x.as_ptr(), out.as_mut_ptr(), false)
        }
        LinearIo::InPlace(buf) => {
            assert!(
                din == dout && buf.len() >= sq * din,
                "in-place operand too short"
            );
            assert!(
                kc_max == din,
                "in place, the pack buffer must hold a whole row panel"
            );
            let p = buf.as_mut_ptr();
            (p.cast_const(), p, true)
        }
    };
    if din == 0 {
        if add {
            return;
        }
        // No inputs: every output is its bias.
        for j in 0..dout {
            for i in 0..sq {
                // SAFETY: `c` covers `sq × dout` (asserted above).
                unsafe { *c.add(i + j * sq) = bias[j] };
            }
        }
        return;
    }
    let pack = pack.as_mut_ptr();
    // One full panel, not in place: the matrix already is in packed order (column p at p·mr).
    // Read where it is only if its columns start on vector boundaries: a caller's matrix
    // (alignment 4) may not, and then every load of the micro-kernel would straddle two cache
    // lines (at 16 × 64 × 4 a misaligned input cost the layer up to 5 %; packing it once
    // brings that down to 1–3 %).
    let vector_bytes = l * core::mem::size_of::<S::E>();
    let direct = !in_place && sq == mr && (a as usize).is_multiple_of(vector_bytes);
    let mut i0 = 0;
    while i0 < sq {
        let rows = mr.min(sq - i0);
        let mut pc = 0;
        while pc < din {
            let kc = if direct { din } else { kc_max.min(din - pc) };
            let panel = if direct {
                a
            } else {
                // SAFETY: rows `i0 .. i0 + rows ≤ sq` of columns `pc .. pc + kc ≤ din` of `a`
                // (`sq × din`), and `kc · mr ≤ pack.len()` values of `pack`.
                unsafe { pack_panel::<S, NV>(s, a, sq, i0, rows, pc, kc, pack) };
                pack.cast_const()
            };
            let first = pc == 0 && !add;
            // Storage tiles of the weights (12 output features, the last one `dout mod 12`),
            // each split into micro-tiles.
            let full = dout / WEIGHT_TILE * WEIGHT_TILE;
            let mut t0 = 0;
            while t0 < dout {
                let (cols, stride, base) = if t0 < full {
                    (WEIGHT_TILE, WEIGHT_TILE, t0 * din)
                } else {
                    (dout - full, dout - full, full * din)
                };
                for_tiles!(cols, tile, |c0, N| {
                    // SAFETY: rows `i0 .. i0 + rows` and columns `t0 + c0 .. + width ≤ dout`
                    // of `c` (`sq × dout`); the panel holds `kc × mr`; the strip starting at
                    // `base + pc·stride + c0` holds `kc` rows of `stride ≥ c0 + width` values
                    // inside `w` (`din · dout` values, asserted above).
                    unsafe {
                        gemm_tile::<S, NV, N>(
                            s,
                            panel,
                            kc,
                            w.as_ptr().add(base + pc * stride + c0),
                            stride,
                            bias,
                            c,
                            sq,
                            i0,
                            rows,
                            t0 + c0,
                            first,
                        )
                    }
                });
                t0 += cols;
            }
            pc += kc;
        }
        i0 += rows;
    }
}

/// Copies `A[i0 .. i0 + rows, pc .. pc + kc]` into `pack` as `kc` columns of `NV·LANES` rows,
/// zero below `rows`.
///
/// # Safety
/// `a` holds `sq × (pc + kc)` values column-major with `i0 + rows ≤ sq`, `rows ≤ NV·LANES`,
/// and `pack` holds `kc · NV·LANES` values.
#[inline(always)]
unsafe fn pack_panel<S: Simd, const NV: usize>(
    s: S,
    a: *const S::E,
    sq: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    pack: *mut S::E,
) {
    let l = S::LANES;
    let mr = NV * l;
    // SAFETY: every read is row `< i0 + rows ≤ sq` of a column `< pc + kc`, every write one
    // of the `kc · mr` values of `pack`.
    unsafe {
        if rows == mr {
            for p in 0..kc {
                let col = a.add(i0 + (pc + p) * sq);
                for n in 0..NV {
                    s.store(pack.add(p * mr + n * l), s.load(col.add(n * l)));
                }
            }
        } else {
            // Whole-slice copies: element loops bounded by `rows` let LLVM precompute
            // per-row masks for every panel, partial or not.
            for p in 0..kc {
                let col = a.add(i0 + (pc + p) * sq);
                let dst = pack.add(p * mr);
                core::ptr::copy_nonoverlapping(col, dst, rows);
                core::slice::from_raw_parts_mut(dst.add(rows), mr - rows).fill(S::E::ZERO);
            }
        }
    }
}

/// One `NV·LANES × N` tile of `C`: `C[i0.., j0..] (+)= packed A · Bᵀ` with the weights strip
/// `b[p·stride + n] = W[j0 + n, pc + p]`, starting from the bias when `first`, from `C`
/// otherwise. Only `rows` rows are stored.
///
/// # Safety
/// `panel` holds `kc × NV·LANES` values; `b` holds `kc` rows of `stride ≥ N` values; `c`
/// holds rows `i0 .. i0 + rows` of columns `j0 .. j0 + N` with leading dimension `ldc`,
/// `rows ≤ NV·LANES`; `bias` holds `j0 + N` values.
#[inline(always)]
unsafe fn gemm_tile<S: Simd, const NV: usize, const N: usize>(
    s: S,
    panel: *const S::E,
    kc: usize,
    b: *const S::E,
    stride: usize,
    bias: &[S::E],
    c: *mut S::E,
    ldc: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    first: bool,
) {
    let l = S::LANES;
    let mr = NV * l;
    let full = rows == mr;
    let mut acc = [[s.splat(S::E::ZERO); N]; NV];
    // SAFETY: every pointer below stays inside the regions of the function's contract.
    unsafe {
        if first {
            for n in 0..N {
                let b = s.splat(bias[j0 + n]);
                for v in 0..NV {
                    acc[v][n] = b;
                }
            }
        } else {
            let mut tmp = [S::E::ZERO; MQ_MAX];
            for n in 0..N {
                let col = c.add(i0 + (j0 + n) * ldc);
                if full {
                    for v in 0..NV {
                        acc[v][n] = s.load(col.add(v * l));
                    }
                } else {
                    core::ptr::copy_nonoverlapping(col, tmp.as_mut_ptr(), rows);
                    for v in 0..NV {
                        acc[v][n] = s.load(tmp.as_ptr().add(v * l));
                    }
                }
            }
        }
        acc = gemm_core::<S, NV, N>(s, panel, kc, b, stride, acc);
        let mut tmp = [S::E::ZERO; MQ_MAX];
        for n in 0..N {
            let col = c.add(i0 + (j0 + n) * ldc);
            if full {
                for v in 0..NV {
                    s.store(col.add(v * l), acc[v][n]);
                }
            } else {
                for v in 0..NV {
                    s.store(tmp.as_mut_ptr().add(v * l), acc[v][n]);
                }
                core::ptr::copy_nonoverlapping(tmp.as_ptr(), col, rows);
            }
        }
    }
}

/// The register-blocked loop of [`gemm_tile`]: `acc += A · Bᵀ` over `kc` input features,
/// the accumulators passed in and out by value so that they live in registers (one row
/// vector of `A` and one broadcast weight at a time besides them).
///
/// # Safety
/// As [`gemm_tile`] for `panel` and `b`.
#[inline(always)]
unsafe fn gemm_core<S: Simd, const NV: usize, const N: usize>(
    s: S,
    panel: *const S::E,
    kc: usize,
    b: *const S::E,
    stride: usize,
    acc: [[S::V; N]; NV],
) -> [[S::V; N]; NV] {
    let l = S::LANES;
    let mr = NV * l;
    let zero = s.splat(S::E::ZERO);
    // Two named rows (at most): plain arrays of vectors stay in registers.
    let mut a0 = acc[0];
    let mut a1 = if NV > 1 { acc[NV - 1] } else { [zero; N] };
    // The N weights of input feature p are consecutive: one pointer, constant offsets.
    let mut b = b;
    // With one vector of rows and fewer than 8 columns, the accumulators are too few chains
    // to cover the multiply-add latency: the odd input features go to a second set (the
    // otherwise unused second row), added in at the end.
    let split = NV == 1 && N < 8;
    let mut p0 = 0;
    // SAFETY: `kc` rows of the panel and of the weights strip, inside the caller's contract.
    // After a strip's last row `b` steps past it (`wrapping_add`: never dereferenced there, and
    // no in-bounds promise made, which Miri checks).
    unsafe {
        if split {
            while p0 + 2 <= kc {
                let x0 = s.load(panel.add(p0 * mr));
                let x1 = s.load(panel.add((p0 + 1) * mr));
                for n in 0..N {
                    a0[n] = s.fma(x0, s.broadcast(b.add(n)), a0[n]);
                    a1[n] = s.fma(x1, s.broadcast(b.add(stride + n)), a1[n]);
                }
                b = b.wrapping_add(2 * stride);
                p0 += 2;
            }
        }
        for p in p0..kc {
            let x0 = s.load(panel.add(p * mr));
            let x1 = if NV > 1 {
                s.load(panel.add(p * mr + l))
            } else {
                zero
            };
            for n in 0..N {
                let bn = s.broadcast(b.add(n));
                a0[n] = s.fma(x0, bn, a0[n]);
                if NV > 1 {
                    a1[n] = s.fma(x1, bn, a1[n]);
                }
            }
            b = b.wrapping_add(stride);
        }
    }
    if split {
        for n in 0..N {
            a0[n] = s.add(a0[n], a1[n]);
        }
    }
    let mut out = acc;
    out[0] = a0;
    if NV > 1 {
        out[NV - 1] = a1;
    }
    out
}

// ------------------------------------------------------------------------------------------
// Streaming attention, queries in lanes
// ------------------------------------------------------------------------------------------

/// Streaming attention for one head: `out[sq × dv] = softmax(scale·q·kᵀ + mask) · v`, with
/// every `p` that enters the sums scaled by `vscale` and the output by its inverse (see
/// `kernels::attention`). Returns whether every output is finite.
#[inline(always)]
pub(crate) fn attention<S: Simd>(
    s: S,
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    scale: S::E,
    mask: &MaskView<'_, S::E>,
    out: &mut [S::E],
    work: WorkRef<'_, S::E>,
    vscale: S::E,
) -> bool {
    let Dims { sq, dv, .. } = dims;
    check_shapes::<S>(q, k, v, dims, mask);
    assert!(out.len() >= sq * dv, "output too short");
    assert!(work.acc.len() >= dv * MQ_MAX, "work buffer too short");
    let l = S::LANES;
    if sq >= 2 * l {
        tiles::<S, 2>(s, q, k, v, dims, scale, mask, out, work, vscale)
    } else if sq >= l {
        tiles::<S, 1>(s, q, k, v, dims, scale, mask, out, work, vscale)
    } else {
        rows(s, q, k, v, dims, scale, mask, out, work, vscale)
    }
}

/// The bounds every attention kernel relies on.
#[inline(always)]
fn check_shapes<S: Simd>(
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    mask: &MaskView<'_, S::E>,
) {
    let Dims { sq, skv, dk, .. } = dims;
    assert!(
        q.len() >= sq * dk && k.len() >= dims.kv_len(dk) && v.len() >= dims.kv_len(dims.dv),
        "operands too short"
    );
    assert!(dims.ldkv >= skv, "key stride shorter than the keys");
    assert!(mask.sq == sq && mask.skv == skv, "mask of another shape");
    // The view's queries are rows `q_offset ..` of matrices of `sq_total` rows.
    assert!(
        mask.q_offset + sq <= mask.sq_total,
        "mask rows out of range"
    );
    let cells = mask.sq_total * skv;
    assert!(
        mask.attend.is_none_or(|m| m.len() >= cells),
        "mask too short"
    );
    assert!(
        mask.block.is_none_or(|m| m.len() >= cells),
        "mask too short"
    );
    assert!(
        mask.additive.is_none_or(|m| m.len() >= cells),
        "mask too short"
    );
    assert!(mask.pad.is_none_or(|m| m.len() >= skv), "mask too short");
    // Key positions are compared as floating-point numbers: exact below 2^24.
    assert!(skv < 1 << 24, "more than 2^24 keys");
}

/// Query tiles of `NV` vectors (`NV·LANES` queries), the last one moved back to end at `sq`.
#[inline(always)]
fn tiles<S: Simd, const NV: usize>(
    s: S,
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    scale: S::E,
    mask: &MaskView<'_, S::E>,
    out: &mut [S::E],
    mut work: WorkRef<'_, S::E>,
    vscale: S::E,
) -> bool {
    let mq = NV * S::LANES;
    let mut v_finite = None;
    let mut finite = true;
    let mut i = 0;
    while i < dims.sq {
        let i0 = if i + mq > dims.sq { dims.sq - mq } else { i };
        finite &= tile::<S, NV>(
            s,
            q,
            k,
            v,
            dims,
            scale,
            mask,
            out,
            &mut work,
            vscale,
            i0,
            &mut v_finite,
        );
        i += mq;
    }
    finite
}

/// The keys a query tile's pattern shows: per lane, the first and one-past-last visible key
/// (as vectors), and over the tile, the union `[lo_min, hi_max)` and the intersection
/// `[lo_max, hi_min)`.
struct TileRanges<S: Simd, const NV: usize> {
    lo: [S::V; NV],
    hi: [S::V; NV],
    union: (usize, usize),
    common: (usize, usize),
    /// Per lane, the query's position for ALiBi (zero without ALiBi).
    qpos: [S::V; NV],
}

/// Per lane of a tile starting at query `i0`, the query's position for ALiBi (see
/// `MaskView::query_position`), as exact floating-point integers; zeros without ALiBi.
#[inline(always)]
fn lane_positions<S: Simd, const NV: usize>(
    s: S,
    mask: &MaskView<'_, S::E>,
    i0: usize,
) -> [S::V; NV] {
    let mut qpos = [s.splat(S::E::ZERO); NV];
    if mask.alibi.is_some() {
        let mut buf = [S::E::ZERO; MQ_MAX];
        for (r, x) in buf.iter_mut().enumerate().take(NV * S::LANES) {
            *x = S::E::of(mask.query_position(i0 + r) as f64);
        }
        for (n, v) in qpos.iter_mut().enumerate() {
            // SAFETY: `buf` holds `MQ_MAX ≥ NV·LANES` values.
            *v = unsafe { s.load(buf.as_ptr().add(n * S::LANES)) };
        }
    }
    qpos
}

/// [`TileRanges`] of the tile starting at query `i0`.
#[inline(always)]
fn tile_ranges<S: Simd, const NV: usize>(
    s: S,
    mask: &MaskView<'_, S::E>,
    i0: usize,
) -> TileRanges<S, NV> {
    let mq = NV * S::LANES;
    if let crate::mask::Pattern::Full = mask.pattern {
        // Every lane sees every key.
        let skv = mask.skv;
        return TileRanges {
            lo: [s.splat(S::E::ZERO); NV],
            hi: [s.splat(S::E::of(skv as f64)); NV],
            union: (0, skv),
            common: (0, skv),
            qpos: lane_positions::<S, NV>(s, mask, i0),
        };
    }
    let mut lo = [S::E::ZERO; MQ_MAX];
    let mut hi = [S::E::ZERO; MQ_MAX];
    let (mut lo_min, mut hi_max) = (usize::MAX, 0);
    let (mut lo_max, mut hi_min) = (0, usize::MAX);
    for r in 0..mq {
        let (a, b) = mask.key_range(i0 + r);
        lo[r] = S::E::of(a as f64);
        hi[r] = S::E::of(b as f64);
        if a < b {
            lo_min = lo_min.min(a);
            hi_max = hi_max.max(b);
        }
        lo_max = lo_max.max(a);
        hi_min = hi_min.min(b);
    }
    let mut lo_v = [s.splat(S::E::ZERO); NV];
    let mut hi_v = [s.splat(S::E::ZERO); NV];
    for n in 0..NV {
        // SAFETY: `lo` and `hi` hold `MQ_MAX ≥ NV·LANES` values.
        unsafe {
            lo_v[n] = s.load(lo.as_ptr().add(n * S::LANES));
            hi_v[n] = s.load(hi.as_ptr().add(n * S::LANES));
        }
    }
    TileRanges {
        lo: lo_v,
        hi: hi_v,
        // No key seen by any lane: the empty range at 0.
        union: if lo_min < hi_max {
            (lo_min, hi_max)
        } else {
            (0, 0)
        },
        common: (lo_max, hi_min),
        qpos: lane_positions::<S, NV>(s, mask, i0),
    }
}

/// Which queries of a tile may use key `j` (all boolean parts and the additive part), and the
/// additive bias (zero without one), as `NV` lane masks and vectors.
///
/// # Safety
/// `i0 + NV·LANES ≤ sq` and `j < skv` (the mask's shape, checked by `check_shapes`, which also
/// checks that the query block lies inside the mask's matrices).
#[inline(always)]
unsafe fn key_mask<S: Simd, const NV: usize>(
    s: S,
    mask: &MaskView<'_, S::E>,
    lo_v: &[S::V; NV],
    hi_v: &[S::V; NV],
    qpos: &[S::V; NV],
    i0: usize,
    j: usize,
) -> ([S::M; NV], [S::V; NV]) {
    let l = S::LANES;
    let jv = s.splat(S::E::of(j as f64));
    // ALiBi: slope · (key position − query position), added after the additive part.
    let alibi = mask.alibi.map(|a| {
        (
            s.splat(a.slope),
            s.splat(S::E::of(a.key_position(j, mask.skv) as f64)),
        )
    });
    let zero = s.splat(S::E::ZERO);
    let mut allowed = [s.ge(zero, zero); NV];
    let mut bias = [zero; NV];
    let padded = mask.pad.is_some_and(|p| p[j]);
    for n in 0..NV {
        let mut m = s.and(s.ge(jv, lo_v[n]), s.lt(jv, hi_v[n]));
        if padded {
            m = s.and_not(m, m);
        }
        let at = mask.at(i0 + n * l, j);
        // SAFETY: lanes `i0 + n·l .. + l` of column `j` lie inside the `sq × skv` matrices.
        unsafe {
            if let Some(a) = mask.attend {
                m = s.and(m, s.load_bools(a.as_ptr().add(at)));
            }
            if let Some(b) = mask.block {
                m = s.and_not(m, s.load_bools(b.as_ptr().add(at)));
            }
            if let Some(add) = mask.additive {
                let a = s.load(add.as_ptr().add(at));
                // −∞ and NaN entries mask the key (NaN fails the comparison).
                m = s.and(m, s.lt(s.splat(S::E::NEG_INFINITY), a));
                bias[n] = a;
            }
        }
        if let Some((slope, kpos)) = alibi {
            bias[n] = s.add(bias[n], s.mul(slope, s.sub(kpos, qpos[n])));
        }
        allowed[n] = m;
    }
    (allowed, bias)
}

/// One query tile of the streaming kernel (see the module docs).
#[inline(always)]
fn tile<S: Simd, const NV: usize>(
    s: S,
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    scale: S::E,
    mask: &MaskView<'_, S::E>,
    out: &mut [S::E],
    work: &mut WorkRef<'_, S::E>,
    vscale: S::E,
    i0: usize,
    v_finite: &mut Option<bool>,
) -> bool {
    let Dims {
        sq, dk, dv, ldkv, ..
    } = dims;
    let l = S::LANES;
    let mq = NV * l;
    let TileRanges {
        lo: lo_v,
        hi: hi_v,
        union: (lo_min, hi_max),
        common: (lo_max, hi_min),
        qpos: qpos_v,
    } = tile_ranges::<S, NV>(s, mask, i0);
    let dense = mask.is_dense();
    let neg_inf = s.splat(S::E::NEG_INFINITY);
    let zero = s.splat(S::E::ZERO);
    let scale_v = s.splat(scale);
    let vscale_v = s.splat(vscale);
    let rescaled = vscale != S::E::ONE;
    let mut m = [neg_inf; NV];
    let mut lsum = [zero; NV];
    // The first block writes the accumulators, later ones add to them; a tile whose queries
    // see no key never writes them, so they start at zero.
    let mut first_block = true;
    if lo_min >= hi_max {
        work.acc[..dv * MQ_MAX].fill(S::E::ZERO);
    }
    let p_buf = work.p.as_mut_ptr();
    let allowed_buf = work.allowed.as_mut_ptr();
    assert!(work.p.len() >= KB * MQ_MAX && work.allowed.len() >= KB * MQ_MAX);

    let mut j0 = lo_min;
    while j0 < hi_max {
        let nk = KB.min(hi_max - j0);
        let full = !dense && j0 >= lo_max && j0 + nk <= hi_min;
        // Scores of keys j0 .. j0 + nk into P (row kk at kk·mq).
        // SAFETY: rows `i0 .. i0 + mq ≤ sq` of q (`sq × dk`), keys `j0 .. j0 + nk ≤ skv` of k
        // (`skv × dk`), and `nk·mq ≤ KB·MQ_MAX` values of P.
        unsafe {
            qk_block::<S, NV>(
                s,
                q.as_ptr().add(i0),
                sq,
                k.as_ptr().add(j0),
                ldkv,
                dk,
                nk,
                p_buf,
                mq,
            )
        };

        // Scale, mask, and the block's maximum per lane.
        let mut bmax = [neg_inf; NV];
        for kk in 0..nk {
            // SAFETY: row `kk < nk ≤ KB` of P and of the allowed-mask buffer; the key mask reads
            // lanes `i0 .. i0 + mq ≤ sq` of column `j0 + kk < skv`.
            unsafe {
                let row = p_buf.add(kk * mq);
                if full {
                    for n in 0..NV {
                        let x = s.mul(s.load(row.add(n * l)), scale_v);
                        s.store(row.add(n * l), x);
                        bmax[n] = s.max(x, bmax[n]);
                    }
                } else {
                    let (allowed, bias) =
                        key_mask::<S, NV>(s, mask, &lo_v, &hi_v, &qpos_v, i0, j0 + kk);
                    for n in 0..NV {
                        let x = s.fma(s.load(row.add(n * l)), scale_v, bias[n]);
                        let x = s.select(allowed[n], x, neg_inf);
                        s.store(row.add(n * l), x);
                        s.store(allowed_buf.add(kk * mq + n * l), mask_bits(s, allowed[n]));
                        bmax[n] = s.max(x, bmax[n]);
                    }
                }
            }
        }
        // Online softmax: m' = max(m, block max); c = e^(m − m'); p = e^(s − m'); l' = c·l + Σp.
        // Before any key is seen m' = −∞: subtract 0 instead, so that −∞ − (−∞) never forms.
        let mut corr = [zero; NV];
        let mut m_use = [zero; NV];
        for n in 0..NV {
            let m_new = s.max(bmax[n], m[n]);
            m_use[n] = s.select(s.eq(m_new, neg_inf), zero, m_new);
            corr[n] = s.exp(s.sub(m[n], m_use[n]));
            m[n] = m_new;
        }
        let mut bsum = [zero; NV];
        for kk in 0..nk {
            // SAFETY: row `kk < nk` of P.
            unsafe {
                let row = p_buf.add(kk * mq);
                for n in 0..NV {
                    let p = s.exp(s.sub(s.load(row.add(n * l)), m_use[n]));
                    bsum[n] = s.add(bsum[n], p);
                    let p = if rescaled { s.mul(p, vscale_v) } else { p };
                    s.store(row.add(n * l), p);
                }
            }
        }
        for n in 0..NV {
            lsum[n] = s.fma(lsum[n], corr[n], bsum[n]);
        }
        // acc = c·acc + P·V over the block's keys. A masked key has p = 0, which is exact
        // unless V holds inf or NaN: then masked products are zeroed instead.
        let guarded = !full && !*v_finite.get_or_insert_with(|| all_finite(v, dims));
        // The stored masks: all bits set where allowed, +0 elsewhere.
        let stored = |kk: usize| {
            let mut ok = [s.eq(zero, zero); NV];
            for (n, okn) in ok.iter_mut().enumerate() {
                // SAFETY: row `kk < nk ≤ KB` of the mask buffer.
                *okn = s.lt(unsafe { s.load(allowed_buf.add(kk * mq + n * l)) }, zero);
            }
            ok
        };
        // SAFETY: keys `j0 .. j0 + nk` of v (`skv × dv`), P holds `nk` rows of `mq`, and the
        // accumulator `dv × MQ_MAX` (checked in `attention`).
        unsafe {
            pv_block::<S, NV, _>(
                s,
                p_buf,
                mq,
                v.as_ptr().add(j0),
                ldkv,
                nk,
                dv,
                work.acc.as_mut_ptr(),
                MQ_MAX,
                !first_block,
                corr,
                guarded.then_some(&stored),
            );
        }
        first_block = false;
        j0 += nk;
    }
    // out = acc / l (0 where no key carried weight; NaN where l is NaN), scaled back by
    // 1/vscale.
    let inv_vscale = s.splat(S::E::ONE / vscale);
    let mut inv = [zero; NV];
    let mut empty = [s.eq(zero, zero); NV];
    for n in 0..NV {
        inv[n] = s.div(inv_vscale, lsum[n]);
        empty[n] = s.eq(lsum[n], zero);
    }
    // Finite lanes have x − x = 0; inf and NaN give NaN.
    let mut finite = s.eq(zero, zero);
    for e in 0..dv {
        // SAFETY: accumulator row `e < dv` and output rows `i0 .. i0 + mq ≤ sq` of column `e`.
        unsafe {
            let a = work.acc.as_ptr().add(e * MQ_MAX);
            let o = out.as_mut_ptr().add(i0 + e * sq);
            for n in 0..NV {
                let x = s.mul(s.load(a.add(n * l)), inv[n]);
                let x = s.select(empty[n], zero, x);
                finite = s.and(finite, s.eq(s.sub(x, x), zero));
                s.store(o.add(n * l), x);
            }
        }
    }
    s.all(finite)
}

/// A lane mask stored as a vector of elements (all bits set where the lane is set).
#[inline(always)]
fn mask_bits<S: Simd>(s: S, m: S::M) -> S::V {
    let ones = s.splat(S::E::of(-1.0));
    // `keep` clears the unset lanes; set lanes keep a nonzero pattern, which `keep` later
    // treats as the mask it came from (comparison with zero restores it).
    s.keep(ones, m)
}

/// Whether every value (the first `skv` rows of each of the `dv` columns) is finite (then
/// `0 · v = 0` for every `v`).
#[inline(always)]
fn all_finite<E: Float>(v: &[E], dims: Dims) -> bool {
    (0..dims.dv).all(|e| {
        v[e * dims.ldkv..e * dims.ldkv + dims.skv]
            .iter()
            .all(|x| x.is_finite_())
    })
}

/// Scores `P[kk·ldp + lane] = q[i0 + lane, :] · k[j0 + kk, :]` for `nk` keys.
///
/// # Safety
/// `q` points at the tile's first query in a column-major matrix with leading dimension
/// `ldq` and `dk` columns, holding `NV·LANES` rows from there; `k` points at the block's first
/// key (leading dimension `ldk`, `dk` columns, `nk` rows from there); `p` holds `nk` rows of
/// `ldp ≥ NV·LANES`.
#[inline(always)]
unsafe fn qk_block<S: Simd, const NV: usize>(
    s: S,
    q: *const S::E,
    ldq: usize,
    k: *const S::E,
    ldk: usize,
    dk: usize,
    nk: usize,
    p: *mut S::E,
    ldp: usize,
) {
    for_tiles!(nk, S::TILE, |kk, N| {
        // SAFETY: keys `kk .. kk + N ≤ nk`, inside the contract.
        unsafe { qk_tile::<S, NV, N>(s, q, ldq, k.add(kk), ldk, dk, p.add(kk * ldp), ldp) }
    });
}

/// `NV·LANES` queries × `N` keys of scores, `NV·N` vector accumulators over the key width.
///
/// # Safety
/// As [`qk_block`] with `N` keys.
#[inline(always)]
unsafe fn qk_tile<S: Simd, const NV: usize, const N: usize>(
    s: S,
    q: *const S::E,
    ldq: usize,
    k: *const S::E,
    ldk: usize,
    dk: usize,
    p: *mut S::E,
    ldp: usize,
) {
    let l = S::LANES;
    let zero = s.splat(S::E::ZERO);
    // Two named rows of accumulators (at most), which stay in registers.
    let mut a0 = [zero; N];
    let mut a1 = [zero; N];
    // SAFETY: query rows `0 .. NV·l` and key rows `0 .. N` of columns `0 .. dk`, and `N`
    // rows of P, all inside the contract.
    unsafe {
        for d in 0..dk {
            let qd = q.add(d * ldq);
            let kd = k.add(d * ldk);
            let q0 = s.load(qd);
            let q1 = if NV > 1 { s.load(qd.add(l)) } else { zero };
            for c in 0..N {
                let kb = s.broadcast(kd.add(c));
                a0[c] = s.fma(q0, kb, a0[c]);
                if NV > 1 {
                    a1[c] = s.fma(q1, kb, a1[c]);
                }
            }
        }
        for c in 0..N {
            s.store(p.add(c * ldp), a0[c]);
            if NV > 1 {
                s.store(p.add(c * ldp + l), a1[c]);
            }
        }
    }
}

/// `acc[e] = corr · acc[e] + Σ_kk P[kk] · v[j0 + kk, e]` for every value column `e`, in
/// tiles of `NV·LANES` queries × 6 columns. With `guard`, the sum moves only in the lanes
/// `guard(kk)` allows (the same fused multiply-add otherwise, so the result is bit for bit
/// the unguarded one wherever that is finite).
///
/// # Safety
/// `p` holds `nk` rows of `ldp ≥ NV·LANES`; `v` points at the block's first key in a
/// column-major matrix with leading dimension `ldv` and `dv` columns, `nk` rows from there;
/// `acc` holds `dv` rows of `ld_acc ≥ NV·LANES`.
#[inline(always)]
unsafe fn pv_block<S: Simd, const NV: usize, G: Fn(usize) -> [S::M; NV]>(
    s: S,
    p: *const S::E,
    ldp: usize,
    v: *const S::E,
    ldv: usize,
    nk: usize,
    dv: usize,
    acc: *mut S::E,
    ld_acc: usize,
    load_acc: bool,
    corr: [S::V; NV],
    guard: Option<&G>,
) {
    for_tiles!(dv, S::TILE, |e, N| {
        // SAFETY: value columns `e .. e + N ≤ dv`, inside the contract.
        unsafe {
            pv_tile::<S, NV, N, G>(s, p, ldp, v, ldv, nk, e, acc, ld_acc, load_acc, corr, guard)
        }
    });
}

/// One `NV·LANES × N` tile of [`pv_block`], value columns `e0 .. e0 + N`.
///
/// # Safety
/// As [`pv_block`], with `e0 + N ≤ dv`.
#[inline(always)]
unsafe fn pv_tile<S: Simd, const NV: usize, const N: usize, G: Fn(usize) -> [S::M; NV]>(
    s: S,
    p: *const S::E,
    ldp: usize,
    v: *const S::E,
    ldv: usize,
    nk: usize,
    e0: usize,
    acc: *mut S::E,
    ld_acc: usize,
    load_acc: bool,
    corr: [S::V; NV],
    guard: Option<&G>,
) {
    let l = S::LANES;
    let zero = s.splat(S::E::ZERO);
    // Two named rows of accumulators (at most), which stay in registers.
    let mut a0 = [zero; N];
    let mut a1 = [zero; N];
    // SAFETY: accumulator rows `e0 .. e0 + N`, P rows `0 .. nk` and value rows `0 .. nk` of
    // columns `e0 .. e0 + N`, inside the contract.
    unsafe {
        if load_acc {
            for c in 0..N {
                let row = acc.add((e0 + c) * ld_acc);
                a0[c] = s.mul(s.load(row), corr[0]);
                if NV > 1 {
                    a1[c] = s.mul(s.load(row.add(l)), corr[NV - 1]);
                }
            }
        }
        let vcol = v.add(e0 * ldv);
        match guard {
            None => {
                for kk in 0..nk {
                    let p0 = s.load(p.add(kk * ldp));
                    let p1 = if NV > 1 {
                        s.load(p.add(kk * ldp + l))
                    } else {
                        zero
                    };
                    for c in 0..N {
                        let vb = s.broadcast(vcol.add(kk + c * ldv));
                        a0[c] = s.fma(p0, vb, a0[c]);
                        if NV > 1 {
                            a1[c] = s.fma(p1, vb, a1[c]);
                        }
                    }
                }
            }
            Some(guard) => {
                for kk in 0..nk {
                    let ok = guard(kk);
                    let p0 = s.load(p.add(kk * ldp));
                    let p1 = if NV > 1 {
                        s.load(p.add(kk * ldp + l))
                    } else {
                        zero
                    };
                    for c in 0..N {
                        let vb = s.broadcast(vcol.add(kk + c * ldv));
                        a0[c] = s.select(ok[0], s.fma(p0, vb, a0[c]), a0[c]);
                        if NV > 1 {
                            a1[c] = s.select(ok[NV - 1], s.fma(p1, vb, a1[c]), a1[c]);
                        }
                    }
                }
            }
        }
        for c in 0..N {
            let row = acc.add((e0 + c) * ld_acc);
            s.store(row, a0[c]);
            if NV > 1 {
                s.store(row.add(l), a1[c]);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Few queries: keys in lanes
// ------------------------------------------------------------------------------------------

/// Streaming attention for fewer queries than `LANES` (a decode step): each query row walks
/// its keys in blocks, with the keys in the vector lanes. The `P·V` sums are kept per lane and
/// reduced at the end.
#[inline(always)]
fn rows<S: Simd>(
    s: S,
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    scale: S::E,
    mask: &MaskView<'_, S::E>,
    out: &mut [S::E],
    work: WorkRef<'_, S::E>,
    vscale: S::E,
) -> bool {
    let Dims {
        sq, dk, dv, ldkv, ..
    } = dims;
    let l = S::LANES;
    let neg_inf = S::E::NEG_INFINITY;
    let mut finite = true;
    let inv_vscale = S::E::ONE / vscale;
    let dense = mask.is_dense();
    // Work: per-lane sums `dv × LANES`, the block's probabilities and key masks. A block's
    // keys are padded to whole vectors: the scores of the padding lanes are −∞ (so their
    // probabilities are 0), and the values there are loaded as zeros (masked loads).
    let lane_acc = &mut work.acc[..dv * l];
    let p = &mut work.p[..KB];
    let ok = &mut work.allowed[..KB];
    let mut v_finite = None;
    let zero = s.splat(S::E::ZERO);
    let ninf = s.splat(neg_inf);
    let scale_v = s.splat(scale);
    // Lane indices as elements, to mask the padding lanes of a block's last vector.
    let lane = {
        let mut t = [S::E::ZERO; MQ_MAX];
        for (r, x) in t.iter_mut().enumerate() {
            *x = S::E::of(r as f64);
        }
        // SAFETY: `t` holds `MQ_MAX ≥ LANES` values.
        unsafe { s.load(t.as_ptr()) }
    };
    for i in 0..sq {
        let (lo, hi) = mask.key_range(i);
        lane_acc.fill(S::E::ZERO);
        let (mut m, mut lsum) = (neg_inf, S::E::ZERO);
        let mut j0 = lo;
        while j0 < hi {
            let nk = KB.min(hi - j0);
            // Whole vectors: `KB` is a multiple of LANES, so `np ≤ KB`.
            let np = nk.div_ceil(l) * l;
            // Scores: four vectors of keys at a time share each broadcast query element.
            // SAFETY: keys `j0 .. j0 + nk ≤ skv` of k (`skv × dk`, leading dimension
            // `ldkv`), query `i < sq` of q, and `np ≤ KB` values of p.
            unsafe {
                dot_keys(
                    s,
                    q.as_ptr().add(i),
                    sq,
                    k.as_ptr().add(j0),
                    ldkv,
                    dk,
                    nk,
                    p.as_mut_ptr(),
                )
            };
            // Scale and mask; the block's maximum.
            let mut bmax_v = ninf;
            if dense {
                for (kk, pk) in p.iter_mut().enumerate().take(np) {
                    *pk = if kk >= nk {
                        neg_inf
                    } else {
                        match mask.dense_entry(i, j0 + kk) {
                            Some(bias) => *pk * scale + bias,
                            None => neg_inf,
                        }
                    };
                }
                let mut c = 0;
                while c < np {
                    // SAFETY: `c + l ≤ np ≤ KB`.
                    bmax_v = s.max(unsafe { s.load(p.as_ptr().add(c)) }, bmax_v);
                    c += l;
                }
            } else {
                let mut c = 0;
                while c < np {
                    // SAFETY: `c + l ≤ np ≤ KB`.
                    unsafe {
                        let mut x = s.mul(s.load(p.as_ptr().add(c)), scale_v);
                        if c + l > nk {
                            let valid = s.lt(lane, s.splat(S::E::of((nk - c) as f64)));
                            x = s.select(valid, x, ninf);
                        }
                        s.store(p.as_mut_ptr().add(c), x);
                        bmax_v = s.max(x, bmax_v);
                    }
                    c += l;
                }
            }
            let bmax = reduce_max(s, bmax_v);
            let m_new = m.max_(bmax);
            let m_use = if m_new == neg_inf { S::E::ZERO } else { m_new };
            let corr = exp_scalar(s, m - m_use);
            m = m_new;
            let bsum = exp_shifted(s, &mut p[..np], m_use);
            lsum = lsum * corr + bsum;
            if vscale != S::E::ONE {
                p[..np].iter_mut().for_each(|x| *x *= vscale);
            }
            // P·V. A masked key has p = 0, exact unless V holds inf or NaN: then the sums move
            // only for allowed keys (same arithmetic, so bit for bit the same result).
            let guarded = dense && !*v_finite.get_or_insert_with(|| all_finite(v, dims));
            if guarded {
                for (kk, okk) in ok.iter_mut().enumerate().take(np) {
                    let allowed = kk < nk && mask.dense_entry(i, j0 + kk).is_some();
                    *okk = if allowed { S::E::of(-1.0) } else { S::E::ZERO };
                }
            }
            let corr_v = s.splat(corr);
            for e in 0..dv {
                // SAFETY: lane row `e < dv` of the per-lane sums; values `j0 .. j0 + nk` of
                // column `e` (the last vector loads only those, zeros past them); `np` values
                // of `p` and of `ok`.
                unsafe {
                    let col = v.as_ptr().add(e * ldkv + j0);
                    let a = lane_acc.as_mut_ptr().add(e * l);
                    let mut sum = s.mul(s.load(a), corr_v);
                    let mut c = 0;
                    while c < np {
                        let vv = if c + l <= nk {
                            s.load(col.add(c))
                        } else {
                            s.load_partial(col.add(c), nk - c)
                        };
                        let f = s.fma(s.load(p.as_ptr().add(c)), vv, sum);
                        sum = if guarded {
                            s.select(s.lt(s.load(ok.as_ptr().add(c)), zero), f, sum)
                        } else {
                            f
                        };
                        c += l;
                    }
                    s.store(a, sum);
                }
            }
            j0 += nk;
        }
        for e in 0..dv {
            // SAFETY: lane row `e < dv`.
            let lanes = unsafe { s.load(lane_acc.as_ptr().add(e * l)) };
            let total = s.reduce_add(lanes);
            let x = if lsum == S::E::ZERO {
                S::E::ZERO
            } else {
                total / lsum * inv_vscale
            };
            finite &= x.is_finite_();
            out[i + e * sq] = x;
        }
    }
    finite
}

/// The largest lane (NaN lanes are passed over, as `max_` does).
#[inline(always)]
fn reduce_max<S: Simd>(s: S, v: S::V) -> S::E {
    let mut lanes = [S::E::ZERO; MQ_MAX];
    // SAFETY: `lanes` holds `MQ_MAX ≥ LANES` values.
    unsafe { s.store(lanes.as_mut_ptr(), v) };
    lanes[..S::LANES]
        .iter()
        .fold(S::E::NEG_INFINITY, |m, &x| m.max_(x))
}

/// `p[kk] = q · k[kk]` for `nk` keys, keys in lanes, the last vector padded with zeros (its
/// keys past `nk` are never read).
///
/// # Safety
/// `q` points at the query's first element (leading dimension `ldq`, `dk` columns); `k` at
/// the first key of a column-major matrix with leading dimension `ldk` holding `nk` rows of
/// `dk` columns from there; `p` holds `⌈nk / LANES⌉ · LANES` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_keys<S: Simd>(
    s: S,
    q: *const S::E,
    ldq: usize,
    k: *const S::E,
    ldk: usize,
    dk: usize,
    nk: usize,
    p: *mut S::E,
) {
    let l = S::LANES;
    let zero = s.splat(S::E::ZERO);
    let mut c = 0;
    // SAFETY: key rows `c .. c + 4l ≤ nk` (or the `n` rows left) of every column, query
    // element `d < dk`, and whole vectors of p, inside the contract.
    unsafe {
        while c + 4 * l <= nk {
            let mut a = [zero; 4];
            for d in 0..dk {
                let qd = s.broadcast(q.add(d * ldq));
                let kd = k.add(c + d * ldk);
                for (u, acc) in a.iter_mut().enumerate() {
                    *acc = s.fma(qd, s.load(kd.add(u * l)), *acc);
                }
            }
            for (u, acc) in a.iter().enumerate() {
                s.store(p.add(c + u * l), *acc);
            }
            c += 4 * l;
        }
        while c + l <= nk {
            let mut acc = zero;
            for d in 0..dk {
                acc = s.fma(s.broadcast(q.add(d * ldq)), s.load(k.add(c + d * ldk)), acc);
            }
            s.store(p.add(c), acc);
            c += l;
        }
        if c < nk {
            let n = nk - c;
            let mut acc = zero;
            for d in 0..dk {
                let kd = s.load_partial(k.add(c + d * ldk), n);
                acc = s.fma(s.broadcast(q.add(d * ldq)), kd, acc);
            }
            s.store(p.add(c), acc);
        }
    }
}

/// `e^x` of one value with the vector `exp` (so every kernel's `exp` is the same function).
#[inline(always)]
fn exp_scalar<S: Simd>(s: S, x: S::E) -> S::E {
    let mut lanes = [S::E::ZERO; MQ_MAX];
    // SAFETY: `lanes` holds `MQ_MAX ≥ LANES` values.
    unsafe { s.store(lanes.as_mut_ptr(), s.exp(s.splat(x))) };
    lanes[0]
}

/// `p = e^(p − shift)` over a slice; returns `Σ p`.
#[inline(always)]
fn exp_shifted<S: Simd>(s: S, p: &mut [S::E], shift: S::E) -> S::E {
    let l = S::LANES;
    let sh = s.splat(shift);
    let mut acc = s.splat(S::E::ZERO);
    let full = p.len() / l * l;
    let mut c = 0;
    while c < full {
        // SAFETY: `c + l ≤ full ≤ p.len()`.
        unsafe {
            let x = s.exp(s.sub(s.load(p.as_ptr().add(c)), sh));
            acc = s.add(acc, x);
            s.store(p.as_mut_ptr().add(c), x);
        }
        c += l;
    }
    let mut total = s.reduce_add(acc);
    for x in &mut p[full..] {
        *x = exp_scalar(s, *x - shift);
        total += *x;
    }
    total
}

// ------------------------------------------------------------------------------------------
// Attention that also writes the weights
// ------------------------------------------------------------------------------------------

/// Attention for one head that also writes the post-softmax weights into `weights`
/// (`sq × skv`, column-major). Fewer queries than `LANES` go to the scalar kernel.
#[inline(always)]
pub(crate) fn attention_with_weights<S: Simd>(
    s: S,
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    scale: S::E,
    mask: &MaskView<'_, S::E>,
    out: &mut [S::E],
    weights: &mut [S::E],
) {
    check_shapes::<S>(q, k, v, dims, mask);
    let Dims { sq, skv, dv, .. } = dims;
    assert!(
        out.len() >= sq * dv && weights.len() >= sq * skv,
        "outputs too short"
    );
    let l = S::LANES;
    if sq >= 2 * l {
        weight_tiles::<S, 2>(s, q, k, v, dims, scale, mask, out, weights);
    } else if sq >= l {
        weight_tiles::<S, 1>(s, q, k, v, dims, scale, mask, out, weights);
    } else {
        super::scalar::attention_with_weights(q, k, v, dims, scale, mask, out, weights);
    }
}

#[inline(always)]
fn weight_tiles<S: Simd, const NV: usize>(
    s: S,
    q: &[S::E],
    k: &[S::E],
    v: &[S::E],
    dims: Dims,
    scale: S::E,
    mask: &MaskView<'_, S::E>,
    out: &mut [S::E],
    weights: &mut [S::E],
) {
    let Dims {
        sq,
        skv,
        dk,
        dv,
        ldkv,
    } = dims;
    let l = S::LANES;
    let mq = NV * l;
    let neg_inf = s.splat(S::E::NEG_INFINITY);
    let zero = s.splat(S::E::ZERO);
    let dense = mask.is_dense();
    // Whether every value is finite, worked out once when first needed.
    let mut v_finite = None;
    let scale_v = s.splat(scale);
    let w = weights.as_mut_ptr();
    let mut i = 0;
    while i < sq {
        let i0 = if i + mq > sq { sq - mq } else { i };
        i += mq;
        let TileRanges {
            lo: lo_v,
            hi: hi_v,
            union: (lo_min, hi_max),
            common: (lo_max, hi_min),
            qpos: qpos_v,
        } = tile_ranges::<S, NV>(s, mask, i0);
        // Keys no query of the tile sees get exact zeros.
        for j in (0..lo_min).chain(hi_max..skv) {
            for n in 0..NV {
                // SAFETY: lanes `i0 .. i0 + mq ≤ sq` of column `j < skv` of the weights.
                unsafe { s.store(w.add(i0 + n * l + j * sq), zero) };
            }
        }
        // Scores, written straight into the weights' columns.
        // SAFETY: query rows `i0 .. i0 + mq`, keys `lo_min .. hi_max ≤ skv`, and the weights'
        // lanes `i0 .. i0 + mq` of those columns (leading dimension `sq`).
        unsafe {
            qk_block::<S, NV>(
                s,
                q.as_ptr().add(i0),
                sq,
                k.as_ptr().add(lo_min),
                ldkv,
                dk,
                hi_max - lo_min,
                w.add(i0 + lo_min * sq),
                sq,
            );
        }
        // Scale and mask; row maxima.
        let mut m = [neg_inf; NV];
        for j in lo_min..hi_max {
            let full = !dense && j >= lo_max && j < hi_min;
            // SAFETY: lanes `i0 .. i0 + mq` of column `j < skv`; the key mask reads the same
            // lanes of the mask's matrices.
            unsafe {
                let col = w.add(i0 + j * sq);
                if full {
                    for n in 0..NV {
                        let x = s.mul(s.load(col.add(n * l)), scale_v);
                        s.store(col.add(n * l), x);
                        m[n] = s.max(x, m[n]);
                    }
                } else {
                    let (allowed, bias) = key_mask::<S, NV>(s, mask, &lo_v, &hi_v, &qpos_v, i0, j);
                    for n in 0..NV {
                        let x = s.fma(s.load(col.add(n * l)), scale_v, bias[n]);
                        let x = s.select(allowed[n], x, neg_inf);
                        s.store(col.add(n * l), x);
                        m[n] = s.max(x, m[n]);
                    }
                }
            }
        }
        // p = e^(s − m), summed; then normalised in place (rows with no key stay 0).
        let mut m_use = [zero; NV];
        for n in 0..NV {
            m_use[n] = s.select(s.eq(m[n], neg_inf), zero, m[n]);
        }
        let mut sum = [zero; NV];
        for j in lo_min..hi_max {
            // SAFETY: as above.
            unsafe {
                let col = w.add(i0 + j * sq);
                for n in 0..NV {
                    let p = s.exp(s.sub(s.load(col.add(n * l)), m_use[n]));
                    sum[n] = s.add(sum[n], p);
                    s.store(col.add(n * l), p);
                }
            }
        }
        let mut inv = [zero; NV];
        for n in 0..NV {
            let r = s.div(s.splat(S::E::ONE), sum[n]);
            inv[n] = s.select(s.eq(sum[n], zero), zero, r);
        }
        for j in lo_min..hi_max {
            // SAFETY: as above.
            unsafe {
                let col = w.add(i0 + j * sq);
                for n in 0..NV {
                    s.store(col.add(n * l), s.mul(s.load(col.add(n * l)), inv[n]));
                }
            }
        }
        // out = W · V over the keys the tile sees; masked weights are exactly 0, and masked
        // products are zeroed when V holds non-finite values.
        let guarded = (dense || lo_max > lo_min || hi_min < hi_max)
            && !*v_finite.get_or_insert_with(|| all_finite(v, dims));
        // The key masks, recomputed (key `lo_min + kk`).
        // SAFETY: `i0 + mq ≤ sq` and `lo_min + kk < hi_max ≤ skv`.
        let recomputed =
            |kk: usize| unsafe { key_mask::<S, NV>(s, mask, &lo_v, &hi_v, &qpos_v, i0, lo_min + kk) }.0;
        // SAFETY: the weights' lanes `i0 .. i0 + mq` of columns `lo_min .. hi_max` (leading
        // dimension `sq`), value rows `lo_min .. hi_max`, and output rows `i0 .. i0 + mq` of
        // `dv` columns (leading dimension `sq`).
        unsafe {
            if hi_max > lo_min {
                pv_block::<S, NV, _>(
                    s,
                    w.add(i0 + lo_min * sq).cast_const(),
                    sq,
                    v.as_ptr().add(lo_min),
                    ldkv,
                    hi_max - lo_min,
                    dv,
                    out.as_mut_ptr().add(i0),
                    sq,
                    false,
                    [zero; NV],
                    guarded.then_some(&recomputed),
                );
            } else {
                for e in 0..dv {
                    for n in 0..NV {
                        s.store(out.as_mut_ptr().add(i0 + n * l + e * sq), zero);
                    }
                }
            }
        }
    }
}

/// `exp` over a slice (the tail through a padded vector).
#[inline(always)]
pub(crate) fn exp_slice<S: Simd>(s: S, xs: &mut [S::E]) {
    let l = S::LANES;
    let full = xs.len() / l * l;
    let mut c = 0;
    while c < full {
        // SAFETY: `c + l ≤ full ≤ xs.len()`.
        unsafe { s.store(xs.as_mut_ptr().add(c), s.exp(s.load(xs.as_ptr().add(c)))) };
        c += l;
    }
    for x in &mut xs[full..] {
        *x = exp_scalar(s, *x);
    }
}
