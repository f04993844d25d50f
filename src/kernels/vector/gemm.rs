//! The projections' GEMM: `C = A · B + bias` with `A` the `s × din` input and `B = Wᵀ` the
//! weights in the tile layout of [`crate::Linear`] (`kernels/layout.rs`): micro-tiles of
//! `2·LANES` tokens × `TILE` output features (6 with AVX2's 16 registers, 12 with AVX-512's and
//! NEON's 32: 12 or 24 vector accumulators) over `A` panels packed contiguously, and a
//! token-at-a-time path for one or two tokens (a decoding step).

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use super::super::args::{GEMV_TOKENS, I8Out, LinearIo, MQ_MAX, check_weights};
use super::super::layout::WEIGHT_TILE;
use super::super::simd::Simd;
use super::super::{Float, scalar};
use super::steps::{for_tiles, tile_rows};

/// `out[s × dout] = x[s × din] · Wᵀ + bias` with `W` in the tile layout of
/// [`crate::Linear`] (or `out += x · Wᵀ` for [`LinearIo::Add`]). In that layout a
/// micro-tile's weights for one input feature are consecutive values, and its whole strip is
/// contiguous: the broadcasts walk one pointer at constant offsets.
///
/// Row panels are two vectors of tokens (one when there are fewer tokens than that), packed
/// contiguously into `pack`, `kc = pack.len() / panel rows` input features at a time (capped
/// at `din`). A sequence that is exactly one panel is read where it is, with no packing.
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
    let lw = Weights { w, bias, din, dout };
    if sq <= GEMV_TOKENS && din > 0 && pack.len() >= WEIGHT_TILE * din + S::LANES {
        linear_gemv(s, io, sq, lw, pack);
    } else if sq >= 2 * S::LANES {
        linear_panels::<S, 2>(s, io, sq, lw, pack);
    } else {
        linear_panels::<S, 1>(s, io, sq, lw, pack);
    }
}

/// A projection's weights: `W` (`dout × din`, in the tile layout of [`crate::Linear`]) and its
/// `dout` biases, as [`linear`] hands them to its two paths.
#[derive(Clone, Copy)]
struct Weights<'a, E> {
    w: &'a [E],
    bias: &'a [E],
    din: usize,
    dout: usize,
}

/// [`linear`] one token at a time, for very few tokens: each strip of 12 output features is
/// a contiguous `din × 12` block in the weights' tile layout, so its 12 sums are one long dot
/// product with the token's inputs spread the same way (`xe[p·12 + c] = x[p]`, built once per
/// token in `pack`). Vectors run along that memory, each lane serving one column throughout
/// ([`gemv_strip`]).
/// The last strip (`dout mod 12` columns) goes through plain loops.
#[inline(always)]
fn linear_gemv<S: Simd>(
    s: S,
    io: LinearIo<'_, S::E>,
    sq: usize,
    lw: Weights<'_, S::E>,
    pack: &mut [S::E],
) {
    const T: usize = WEIGHT_TILE;
    let l = S::LANES;
    let Weights { w, bias, din, dout } = lw;
    check_weights(w, bias, din, dout);
    assert!(pack.len() >= T * din + l, "pack buffer too small");
    // `Add` accumulates into the outputs instead of writing them.
    let (x, out, add) = io.checked(sq, din, dout);
    let (a, c) = (x.as_ptr(), out.as_mut_ptr());
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
/// Six accumulators advance `6·LANES` values a step, a multiple of 12 for every even lane
/// count, so lane `j` of accumulator `k` always serves column `(k·LANES + j) mod 12`. Where
/// `3·LANES` is itself a multiple of 12 (4 lanes and more) the upper three fold into the lower
/// three and a three-accumulator step takes the rest; with 2 lanes (NEON `f64`) they cannot
/// fold (accumulators `k` and `k + 3` serve different columns) and all six are reduced.
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
    debug_assert!((2 * per) % WEIGHT_TILE == 0, "an odd lane count");
    let fold = per % WEIGHT_TILE == 0;
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
        if fold {
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
    }
    let used = if fold { per } else { 2 * per };
    // At most 48 values: `3·LANES ≤ 48` when folding, `6·LANES ≤ 12` when not (2 lanes).
    debug_assert!(used <= 48);
    let mut lanes = [S::E::ZERO; 48];
    for (k, a) in acc.iter().enumerate().take(used / l) {
        // SAFETY: `used ≤ 48` values (above).
        unsafe { s.store(lanes.as_mut_ptr().add(k * l), *a) };
    }
    let mut sums = [S::E::ZERO; WEIGHT_TILE];
    for (j, &v) in lanes.iter().enumerate().take(used) {
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
#[allow(
    clippy::undocumented_unsafe_blocks,
    reason = "the micro-tile call inside `for_tiles!` has its SAFETY comment; clippy does not \
              see comments through a macro defined in another file"
)]
fn linear_panels<S: Simd, const NV: usize>(
    s: S,
    io: LinearIo<'_, S::E>,
    sq: usize,
    lw: Weights<'_, S::E>,
    pack: &mut [S::E],
) {
    let l = S::LANES;
    let mr = NV * l;
    // Output features per micro-tile (`NV · TILE` accumulators; wider tiles made LLVM spill
    // accumulators to the stack).
    let tile = S::TILE;
    let Weights { w, bias, din, dout } = lw;
    check_weights(w, bias, din, dout);
    let kc_max = (pack.len() / mr).min(din);
    assert!(din == 0 || kc_max >= 1, "pack buffer too small");
    // `Add` accumulates into the outputs: every input chunk then starts from them.
    let (x, out, add) = io.checked(sq, din, dout);
    let (a, c) = (x.as_ptr(), out.as_mut_ptr());
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
    let direct = sq == mr && (a as usize).is_multiple_of(vector_bytes);
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
                        let ab = Product {
                            a: panel,
                            kc,
                            b: w.as_ptr().add(base + pc * stride + c0),
                            stride,
                        };
                        gemm_tile::<S, NV, N>(s, ab, bias, c, sq, i0, rows, t0 + c0, first)
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

/// The operands of `A · Bᵀ` over `kc` input features: the packed panel `a` (`kc` columns of
/// `NV·LANES` rows) and the weights strip `b`, `b[p·stride + n] = W[j0 + n, pc + p]` (`kc` rows
/// of `stride` values).
#[derive(Clone, Copy)]
struct Product<E> {
    a: *const E,
    kc: usize,
    b: *const E,
    stride: usize,
}

/// One `NV·LANES × N` tile of `C`: `C[i0.., j0..] (+)= A · Bᵀ` (see [`Product`]), starting
/// from the bias when `first`, from `C` otherwise. Only `rows` rows are stored.
///
/// # Safety
/// `ab.a` holds `kc × NV·LANES` values; `ab.b` holds `kc` rows of `stride ≥ N` values; `c`
/// holds rows `i0 .. i0 + rows` of columns `j0 .. j0 + N` with leading dimension `ldc`,
/// `rows ≤ NV·LANES`; `bias` holds `j0 + N` values.
#[inline(always)]
unsafe fn gemm_tile<S: Simd, const NV: usize, const N: usize>(
    s: S,
    ab: Product<S::E>,
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
        acc = gemm_core::<S, NV, N>(s, ab, acc);
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
/// As [`gemm_tile`] for `ab`.
#[inline(always)]
unsafe fn gemm_core<S: Simd, const NV: usize, const N: usize>(
    s: S,
    ab: Product<S::E>,
    acc: [[S::V; N]; NV],
) -> [[S::V; N]; NV] {
    let Product {
        a: panel,
        kc,
        b,
        stride,
    } = ab;
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
            let (x0, x1) = tile_rows::<S, NV>(s, panel, p * mr);
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

/// Input features of a storage tile that [`linear_widening`] widens at a time: 12 × 256
/// values (12 KiB of `f32`) on the stack.
const WIDEN_ROWS: usize = 256;

/// The fewest inputs per chunk [`linear_widening`] takes to pack more panels of tokens at a
/// time: each chunk loads and stores every accumulator once.
const MIN_CHUNK: usize = 32;

/// [`linear`] for half-precision weights (`w`, the bits of `kind`, in the tile layout): a
/// group of token panels is packed for a chunk of inputs (as many panels as leave chunks of
/// at least [`MIN_CHUNK`] inputs in `pack`), then each storage tile's rows of that chunk are
/// widened by `widen` into a buffer in L1 and multiplied by every panel of the group with the
/// native micro-kernel. Each weight is widened once per group (once per call when the group
/// is every panel), each input packed once.
///
/// # Safety
/// `widen` runs on this CPU.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn linear_widening<S: Simd>(
    s: S,
    kind: crate::WeightKind,
    io: LinearIo<'_, S::E>,
    sq: usize,
    din: usize,
    w: &[u16],
    dout: usize,
    bias: &[S::E],
    pack: &mut [S::E],
    widen: super::super::table::WidenFn<S::E>,
) {
    let lw = (w, bias, din, dout);
    // SAFETY: the caller's promise, passed on.
    unsafe {
        if sq >= 2 * S::LANES {
            widening_panels::<S, 2>(s, kind, io, sq, lw, pack, widen);
        } else {
            widening_panels::<S, 1>(s, kind, io, sq, lw, pack, widen);
        }
    }
}

/// What a grouped GEMM does around the native micro-kernel for weights stored narrower than
/// `E` ([`linear_widening`]'s half-precision ones, [`linear_i8`]'s integers): a group of
/// token panels is packed for a chunk of inputs (as many panels as leave chunks of at least
/// [`MIN_CHUNK`] inputs in `pack`), then each storage tile's rows of that chunk are widened
/// into a buffer in L1 and multiplied by every panel of the group with the native
/// micro-kernel. Each weight is widened once per group (once per call when the group is every
/// panel), each input packed once.
trait Narrow<S: Simd> {
    /// Inputs per chunk are a multiple of this: no chunk splits a group of stored rows (the
    /// last chunk may end with the partial group).
    const ROWS: usize;
    /// Tokens per group, at most.
    const GROUP: usize;

    /// Whether a chunk starting at input `pc` writes the outputs rather than adding to them.
    fn writes(&self, pc: usize) -> bool;

    /// Tokens `g0 .. g1` (a group) start.
    ///
    /// # Safety
    /// The outputs the implementation writes hold those tokens.
    unsafe fn start(&mut self, g0: usize, g1: usize);

    /// The panel of tokens `i0 ..` just packed at `panel` (`kc` inputs of `mr` tokens, the
    /// group starting at `g0`).
    ///
    /// # Safety
    /// `panel` holds `kc · mr` values.
    unsafe fn packed(&mut self, panel: *mut S::E, at: (usize, usize, usize), kc: usize);

    /// Rows `pc .. pc + kc` of the storage tile at `base` (`cols` features) into `buf` as `E`.
    ///
    /// # Safety
    /// Whatever the widening needs of the CPU.
    unsafe fn widen(&mut self, tile: (usize, usize), chunk: (usize, usize), buf: &mut [S::E]);

    /// Tokens `g0 .. g1` are done.
    ///
    /// # Safety
    /// As [`Narrow::start`].
    unsafe fn finish(&mut self, g0: usize, g1: usize);
}

/// The grouped GEMM of [`Narrow`] with row panels of `NV` vectors: `c[sq × dout] (+)= a ·
/// Wᵀ + b`, `a` being `sq × din` (column-major).
///
/// # Safety
/// `a` holds `sq × din` values and `c` `sq × dout`; `pack` holds at least `ROWS` input
/// columns of a panel; `n`'s widening runs on this CPU.
#[inline(always)]
#[allow(
    clippy::undocumented_unsafe_blocks,
    reason = "the micro-tile call inside `for_tiles!` has its SAFETY comment; clippy does not \
              see comments through a macro defined in another file"
)]
unsafe fn narrow_panels<S: Simd, const NV: usize, G: Narrow<S>>(
    s: S,
    n: &mut G,
    (a, c): (*const S::E, *mut S::E),
    sq: usize,
    (din, dout): (usize, usize),
    bias: &[S::E],
    pack: &mut [S::E],
) {
    let l = S::LANES;
    let mr = NV * l;
    let tile = S::TILE;
    let panels = sq.div_ceil(mr);
    let group = (pack.len() / (mr * MIN_CHUNK))
        .clamp(1, panels)
        .min((G::GROUP / mr).max(1));
    let kc_max = (pack.len() / (group * mr)).min(WIDEN_ROWS) / G::ROWS * G::ROWS;
    assert!(kc_max >= G::ROWS, "pack buffer too small");
    let mut buf = [S::E::ZERO; WEIGHT_TILE * WIDEN_ROWS];
    let pack = pack.as_mut_ptr();
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    let mut g0 = 0;
    while g0 < sq {
        // Panels `g0 / mr ..` of this group: tokens `g0 .. g1`.
        let g1 = sq.min(g0 + group * mr);
        // SAFETY: tokens `g0 .. g1 ≤ sq` of `c`.
        unsafe { n.start(g0, g1) };
        let mut pc = 0;
        while pc < din {
            let kc = kc_max.min(din - pc);
            let mut i0 = g0;
            while i0 < g1 {
                let rows = mr.min(g1 - i0);
                // SAFETY: rows `i0 .. i0 + rows ≤ sq` of columns `pc .. pc + kc ≤ din` of `a`
                // (`sq × din`); panel `(i0 − g0)/mr < group` takes `kc · mr` values at
                // `(i0 − g0) · kc`, inside `group · kc · mr ≤ pack.len()`.
                unsafe {
                    let panel = pack.add((i0 - g0) * kc);
                    pack_panel::<S, NV>(s, a, sq, i0, rows, pc, kc, panel);
                    n.packed(panel, (i0, g0, mr), kc);
                }
                i0 += rows;
            }
            let first = n.writes(pc);
            let mut t0 = 0;
            while t0 < dout {
                let (cols, base) = if t0 < full {
                    (WEIGHT_TILE, t0 * din)
                } else {
                    (dout - full, full * din)
                };
                // SAFETY: the caller's promise for the widening.
                unsafe { n.widen((base, cols), (pc, kc), &mut buf[..kc * cols]) };
                let mut i0 = g0;
                while i0 < g1 {
                    let rows = mr.min(g1 - i0);
                    // SAFETY: inside `pack` (above).
                    let panel = unsafe { pack.add((i0 - g0) * kc) }.cast_const();
                    for_tiles!(cols, tile, |c0, N| {
                        // SAFETY: rows `i0 .. i0 + rows` and columns `t0 + c0 .. + width ≤
                        // dout` of `c` (`sq × dout`); the panel holds `kc × mr`; `buf` holds
                        // `kc` rows of `cols ≥ c0 + width` values.
                        unsafe {
                            let ab = Product {
                                a: panel,
                                kc,
                                b: buf.as_ptr().add(c0),
                                stride: cols,
                            };
                            gemm_tile::<S, NV, N>(s, ab, bias, c, sq, i0, rows, t0 + c0, first)
                        }
                    });
                    i0 += rows;
                }
                t0 += cols;
            }
            pc += kc;
        }
        // SAFETY: as for `start`.
        unsafe { n.finish(g0, g1) };
        g0 = g1;
    }
}

/// [`linear_widening`]'s [`Narrow`]: half-precision bits widened by `widen`.
#[cfg(target_arch = "x86_64")]
struct Widening<'a, E> {
    kind: crate::WeightKind,
    w: &'a [u16],
    add: bool,
    widen: super::super::table::WidenFn<E>,
}

#[cfg(target_arch = "x86_64")]
impl<S: Simd> Narrow<S> for Widening<'_, S::E> {
    // An even number of inputs per chunk, so that no chunk splits a pair of `bf16` rows.
    const ROWS: usize = 2;
    const GROUP: usize = usize::MAX;

    fn writes(&self, pc: usize) -> bool {
        pc == 0 && !self.add
    }

    unsafe fn start(&mut self, _: usize, _: usize) {}

    unsafe fn packed(&mut self, _: *mut S::E, _: (usize, usize, usize), _: usize) {}

    unsafe fn widen(
        &mut self,
        (base, cols): (usize, usize),
        (pc, kc): (usize, usize),
        buf: &mut [S::E],
    ) {
        // Rows `pc .. pc + kc` of the storage tile, `cols` values each.
        let src = &self.w[base + pc * cols..base + (pc + kc) * cols];
        // SAFETY: the caller's promise for `widen`.
        unsafe { (self.widen)(self.kind, src, cols, buf) };
    }

    unsafe fn finish(&mut self, _: usize, _: usize) {}
}

/// [`linear_widening`] with row panels of `NV` vectors.
///
/// # Safety
/// As [`linear_widening`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widening_panels<S: Simd, const NV: usize>(
    s: S,
    kind: crate::WeightKind,
    io: LinearIo<'_, S::E>,
    sq: usize,
    (w, bias, din, dout): (&[u16], &[S::E], usize, usize),
    pack: &mut [S::E],
    widen: super::super::table::WidenFn<S::E>,
) {
    check_weights(w, bias, din, dout);
    let (x, out, add) = io.checked(sq, din, dout);
    let mut n = Widening {
        kind,
        w,
        add,
        widen,
    };
    // SAFETY: `x` and `out` hold `sq × din` and `sq × dout` (checked); the caller's promise
    // for `widen`.
    unsafe {
        narrow_panels::<S, NV, _>(
            s,
            &mut n,
            (x.as_ptr(), out.as_mut_ptr()),
            sq,
            (din, dout),
            bias,
            pack,
        );
    }
}

/// Tokens whose quantization [`linear_i8`] keeps at a time (a group of panels).
const I8_GROUP: usize = 256;

/// The most inputs for which [`linear_i8`]'s sums in `E` are exact: every partial sum of
/// products of integers within ±127 stays below `2 / ε` (2²⁴ for `f32`).
pub(crate) fn i8_exact_inputs<E: Float>() -> usize {
    (2.0 / E::EPSILON.to_f64() / (127.0 * 127.0)) as usize
}

/// `out[sq × dout] = x · Wᵀ + b` with `i8` weights `q` (rows in fours, one scale per output
/// feature), bit for bit as `scalar::linear_i8`, on the `f32` GEMM: the inputs are quantized
/// to integer-valued floats as they are packed, the weights widened to floats a storage tile
/// and chunk of inputs at a time (once per group of panels), and the integer products summed
/// by the micro-kernel exactly (`din ≤ i8_exact_inputs`, which the caller checks), then scaled
/// as the reference scales them. `LinearIo::Out` only; `pack` holds at least four input
/// columns of a panel.
#[inline(always)]
pub(crate) fn linear_i8<S: Simd>(
    s: S,
    x: &[S::E],
    sq: usize,
    din: usize,
    p: &mut I8Out<'_, S::E>,
    pack: &mut [S::E],
) {
    if sq >= 2 * S::LANES {
        i8_panels::<S, 2>(s, x, sq, din, p, pack);
    } else {
        i8_panels::<S, 1>(s, x, sq, din, p, pack);
    }
}

/// [`linear_i8`]'s [`Narrow`]: each group's tokens quantized as they are packed (to
/// integer-valued floats), the weights widened from `i8`, the sums scaled at the end.
struct Quantized<'a, S: Simd> {
    s: S,
    x: &'a [S::E],
    out: *mut S::E,
    sq: usize,
    din: usize,
    q: &'a [i8],
    dout: usize,
    scales: &'a [S::E],
    bias: &'a [S::E],
    /// Per token of the group: `127/a` (zero past the tokens), `a/127`, a non-finite input.
    r: [S::E; I8_GROUP],
    sx: [S::E; I8_GROUP],
    bad: [bool; I8_GROUP],
}

impl<S: Simd> Narrow<S> for Quantized<'_, S> {
    // A multiple of four inputs per chunk, so that no chunk splits a quad of rows.
    const ROWS: usize = 4;
    const GROUP: usize = I8_GROUP;

    fn writes(&self, _: usize) -> bool {
        // The group's sums start from the zeros `start` writes.
        false
    }

    unsafe fn start(&mut self, g0: usize, g1: usize) {
        type E<S> = <S as Simd>::E;
        let (sq, n) = (self.sq, g1 - g0);
        let max_q = E::<S>::of(127.0);
        // Each token's scales (zero past the tokens), as the reference computes them.
        self.r.fill(E::<S>::ZERO);
        let mut amax = [E::<S>::ZERO; I8_GROUP];
        let mut finite = [true; I8_GROUP];
        scalar::group_amax_finite(self.x, sq, self.din, g0, &mut amax[..n], &mut finite);
        for i in 0..n {
            self.r[i] = max_q / amax[i];
            self.sx[i] = amax[i] / max_q;
            self.bad[i] = !finite[i];
        }
        for cc in 0..self.dout {
            // SAFETY: the caller's promise: tokens `g0 .. g1` of output `cc`.
            unsafe { core::slice::from_raw_parts_mut(self.out.add(cc * sq + g0), n) }
                .fill(E::<S>::ZERO);
        }
    }

    unsafe fn packed(&mut self, panel: *mut S::E, (i0, g0, mr): (usize, usize, usize), kc: usize) {
        let (s, l) = (self.s, S::LANES);
        let max_q = S::E::of(127.0);
        let (hi, lo) = (s.splat(max_q), s.splat(-max_q));
        // Quantized in place: NaN to zero, within ±127, rounded ties to even.
        for p in 0..kc {
            for v in 0..mr / l {
                // SAFETY: the panel's `kc · mr` values (the caller's promise); `r` holds the
                // group's `I8_GROUP ≥ i0 − g0 + mr` scales.
                unsafe {
                    let cell = panel.add(p * mr + v * l);
                    let t = s.mul(s.load(cell), s.load(self.r.as_ptr().add(i0 - g0 + v * l)));
                    let t = s.keep(t, s.eq(t, t));
                    let t = s.select(s.lt(t, hi), t, hi);
                    let t = s.select(s.lt(t, lo), lo, t);
                    s.store(cell, s.round(t));
                }
            }
        }
    }

    unsafe fn widen(
        &mut self,
        (base, cols): (usize, usize),
        (pc, kc): (usize, usize),
        buf: &mut [S::E],
    ) {
        // Rows `pc .. pc + kc` of the storage tile as plain rows of floats: whole quads (`pc`
        // is a multiple of four), then the plain last rows.
        let quads = self.din / 4 * 4;
        let whole = (pc + kc).min(quads).max(pc);
        for k in (pc..whole).step_by(4) {
            let src = &self.q[base + k * cols..base + (k + 4) * cols];
            let dst = &mut buf[(k - pc) * cols..(k - pc + 4) * cols];
            for (n, w) in src.chunks_exact(4).enumerate() {
                for j in 0..4 {
                    dst[j * cols + n] = S::E::of(f64::from(w[j]));
                }
            }
        }
        for row in whole..pc + kc {
            let src = &self.q[base + row * cols..base + (row + 1) * cols];
            let dst = &mut buf[(row - pc) * cols..(row - pc + 1) * cols];
            for (d, &w) in dst.iter_mut().zip(src) {
                *d = S::E::of(f64::from(w));
            }
        }
    }

    unsafe fn finish(&mut self, g0: usize, g1: usize) {
        // y = f(Σ)·((a/127)·scale) + b, as the reference rounds it; NaN for a token with a
        // non-finite input, the bias for one whose inputs are all zero (its sum is zero).
        let n = g1 - g0;
        for cc in 0..self.dout {
            let (sc, b) = (self.scales[cc], self.bias[cc]);
            // SAFETY: the caller's promise: tokens `g0 .. g1` of output `cc`.
            let col =
                unsafe { core::slice::from_raw_parts_mut(self.out.add(cc * self.sq + g0), n) };
            for ((y, &t), &nan) in col.iter_mut().zip(&self.sx[..n]).zip(&self.bad[..n]) {
                let term = *y * (t * sc);
                *y = if nan { S::E::NAN } else { term } + b;
            }
        }
    }
}

/// [`linear_i8`] with row panels of `NV` vectors.
#[inline(always)]
fn i8_panels<S: Simd, const NV: usize>(
    s: S,
    x: &[S::E],
    sq: usize,
    din: usize,
    p: &mut I8Out<'_, S::E>,
    pack: &mut [S::E],
) {
    type E<S> = <S as Simd>::E;
    p.check(sq, din);
    assert!(x.len() >= sq * din);
    let (q, dout, scales, bias) = (p.q, p.dout(), p.scales, p.bias);
    let out = &mut *p.out;
    assert!(
        din <= i8_exact_inputs::<E<S>>(),
        "too many inputs for exact sums"
    );
    let mut n = Quantized {
        s,
        x,
        out: out.as_mut_ptr(),
        sq,
        din,
        q,
        dout,
        scales,
        bias,
        r: [E::<S>::ZERO; I8_GROUP],
        sx: [E::<S>::ZERO; I8_GROUP],
        bad: [false; I8_GROUP],
    };
    // SAFETY: `x` and `out` hold `sq × din` and `sq × dout` (checked); the widening is plain
    // Rust.
    unsafe {
        narrow_panels::<S, NV, _>(
            s,
            &mut n,
            (x.as_ptr(), out.as_mut_ptr()),
            sq,
            (din, dout),
            bias,
            pack,
        );
    }
}
