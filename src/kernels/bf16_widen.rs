//! Projections with `bf16` weights on AVX-512 without `bf16` products: the weights are widened
//! to `f32` inside the micro-kernel, as they are broadcast, so the products are the exact
//! `f32` products of the `f32` path with the same (rounded) weights.
//!
//! The weights are stored with their rows paired (`kernels/layout.rs`): the weights of input
//! features `2q` and `2q + 1` of an output feature are one 32-bit word, the even row's `bf16`
//! in its low half and the odd row's in its high half. A `bf16` is the upper half of an `f32`,
//! so the broadcast word shifted up by 16 bits is the even row's `f32` and the word with its
//! low half cleared the odd row's: one integer instruction per weight beside each multiply-add,
//! which AVX-512 runs on the ports the multiply-adds leave free. The inputs are packed in `f32`
//! panels of `2 × 16` tokens as in the `f32` GEMM; the micro-kernel is that GEMM's (`2 × 16`
//! tokens by 12 output features, 24 accumulators), and each output is the same sum in the same
//! order as the `f32` path's. Nothing is widened into memory, so this path needs no buffer.

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes, rows and columns read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::x86_64::*;

use super::args::{LinearIo, check_weights};
use super::layout::WEIGHT_TILE;

/// `f32` lanes of a vector.
const L: usize = 16;

/// `out[s × dout] = x[s × din] · Wᵀ + b` (or `out += x · Wᵀ`) with `W` (`dout × din`) stored
/// as `bf16` in the paired tile layout, every product an exact `f32` one. `pack` holds the
/// packed panels: at least two input columns of a panel (`2 · 16 · NV` values), and an even
/// number of columns at a time.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn linear(
    io: LinearIo<'_, f32>,
    s: usize,
    din: usize,
    w: &[u16],
    dout: usize,
    bias: &[f32],
    pack: &mut [f32],
) {
    check_weights(w, bias, din, dout);
    let (x, out, add) = io.checked(s, din, dout);
    // `Table::linear` sends a projection with no inputs to the native kernel.
    assert!(din > 0, "a bf16 projection without inputs");
    let args = Gemm {
        x: x.as_ptr(),
        s,
        din,
        w: w.as_ptr(),
        bias,
        out: out.as_mut_ptr(),
        dout,
        add,
    };
    if s >= 2 * L {
        panels::<2>(args, pack);
    } else {
        panels::<1>(args, pack);
    }
}

/// The checked operands of [`linear`].
#[derive(Clone, Copy)]
struct Gemm<'a> {
    /// `s × din`, column-major.
    x: *const f32,
    s: usize,
    din: usize,
    /// `dout × din` `bf16` bits in the paired tile layout.
    w: *const u16,
    bias: &'a [f32],
    /// `s × dout`, column-major.
    out: *mut f32,
    dout: usize,
    add: bool,
}

/// The projection in panels of `NV · 16` tokens and chunks of an even number of input
/// features (as many as `pack` holds columns of the panel; the last chunk takes the odd last
/// input too), every storage tile of the weights multiplied with each packed panel.
#[target_feature(enable = "avx512f,avx512bw")]
fn panels<const NV: usize>(g: Gemm<'_>, pack: &mut [f32]) {
    let mr = NV * L;
    // An even number of inputs per chunk, so that no chunk splits a pair.
    let kc_max = pack.len() / mr / 2 * 2;
    assert!(kc_max >= 2, "pack buffer too small");
    let full = g.dout / WEIGHT_TILE * WEIGHT_TILE;
    let mut i0 = 0;
    while i0 < g.s {
        let rows = mr.min(g.s - i0);
        let mut pc = 0;
        while pc < g.din {
            // Even, but for a last chunk that ends with the odd last input.
            let kc = kc_max.min(g.din - pc);
            // SAFETY: rows `i0 .. i0 + rows ≤ s` of columns `pc .. pc + kc ≤ din` of `x`, and
            // `kc · mr ≤ pack.len()` values of `pack`.
            unsafe { pack_panel::<NV>(g.x, g.s, i0, rows, pc, kc, pack.as_mut_ptr()) };
            let first = pc == 0 && !g.add;
            let mut t0 = 0;
            while t0 < g.dout {
                let width = if t0 < full {
                    WEIGHT_TILE
                } else {
                    g.dout - full
                };
                let tile = Tile {
                    a: pack.as_ptr(),
                    pc,
                    kc,
                    // SAFETY: the tile starting at feature `t0` is `din · width` values at
                    // `t0 · din`, inside `w`.
                    b: unsafe { g.w.add(t0 * g.din) },
                    width,
                    i0,
                    rows,
                    j0: t0,
                    first,
                };
                // SAFETY: the tile's operands lie inside `pack`, `w`, `bias` and `out` (see
                // `Tile`); `rows ≤ mr`.
                unsafe { strip::<NV>(g, tile) };
                t0 += width;
            }
            pc += kc;
        }
        i0 += rows;
    }
}

/// One storage tile's share of a panel: packed inputs `a` (`kc` columns of `NV · 16` values,
/// inputs `pc .. pc + kc`, `pc` even) and the tile's weights `b` (`din · width` `bf16`: pairs
/// of rows of `2 · width`, then one row of `width` when `din` is odd), for output features
/// `j0 .. j0 + width` of tokens `i0 .. i0 + rows`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    pc: usize,
    kc: usize,
    b: *const u16,
    width: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    first: bool,
}

/// A storage tile as micro-tiles: 12 features at once, a narrower last tile at its width.
///
/// # Safety
/// As [`Tile`] describes, inside the operands of `g`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn strip<const NV: usize>(g: Gemm<'_>, t: Tile) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match t.width {
            12 => micro::<NV, 12>(g, t),
            11 => micro::<NV, 11>(g, t),
            10 => micro::<NV, 10>(g, t),
            9 => micro::<NV, 9>(g, t),
            8 => micro::<NV, 8>(g, t),
            7 => micro::<NV, 7>(g, t),
            6 => micro::<NV, 6>(g, t),
            5 => micro::<NV, 5>(g, t),
            4 => micro::<NV, 4>(g, t),
            3 => micro::<NV, 3>(g, t),
            2 => micro::<NV, 2>(g, t),
            1 => micro::<NV, 1>(g, t),
            _ => unreachable!("a storage tile is 1 to 12 features wide"),
        }
    }
}

/// The `NV·16 × N` micro-tile: `C (+)= A · Bᵀ` with `N = width` accumulators per row vector,
/// input by input in order (the even input of a pair, then the odd one). The two rows of
/// accumulators are two named arrays, as in the `f32` GEMM: an array of arrays made LLVM keep
/// them on the stack.
///
/// # Safety
/// As [`Tile`] describes, with `N == t.width`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn micro<const NV: usize, const N: usize>(g: Gemm<'_>, t: Tile) {
    let mr = NV * L;
    let ldc = g.s;
    let zero = _mm512_setzero_ps();
    let (mut a0, mut a1) = ([zero; N], [zero; N]);
    let masks: [__mmask16; 2] =
        core::array::from_fn(|v| row_mask(t.rows.saturating_sub(v * L).min(L)));
    // SAFETY: every read and write below is inside the operands the caller vouches for: the
    // outputs are rows `i0 .. i0 + rows` (the masks select exactly those; a masked-off lane
    // is never touched, and pointers past the rows are formed with `wrapping_add`) of columns
    // `j0 .. j0 + N`; the panel columns and weight rows as `Tile` says.
    unsafe {
        for n in 0..N {
            let col = g.out.add(t.i0 + (t.j0 + n) * ldc);
            if t.first {
                a0[n] = _mm512_set1_ps(g.bias[t.j0 + n]);
                a1[n] = a0[n];
            } else {
                a0[n] = _mm512_maskz_loadu_ps(masks[0], col);
                if NV > 1 {
                    a1[n] = _mm512_maskz_loadu_ps(masks[1], col.wrapping_add(L));
                }
            }
        }
        let rows = |a: *const f32| {
            let x0 = _mm512_loadu_ps(a);
            let x1 = if NV > 1 {
                _mm512_loadu_ps(a.add(L))
            } else {
                zero
            };
            (x0, x1)
        };
        // A `bf16` from memory into the upper half of every 32-bit lane, the lower half zero:
        // the `f32` it is the upper half of, in one masked broadcast.
        let widen = |p: *const u16| _mm512_castsi512_ps(_mm512_maskz_set1_epi16(UPPER, *p as i16));
        let pairs = t.kc / 2;
        for q in 0..pairs {
            // Inputs `pc + 2q` and `pc + 2q + 1`: the pair row at `(pc + 2q) · width`, the
            // even input's weight of feature `n` at `2n`, the odd one's at `2n + 1`.
            let b = t.b.add((t.pc + 2 * q) * N);
            let a = t.a.add(2 * q * mr);
            for half in 0..2 {
                let (x0, x1) = rows(a.add(half * mr));
                for n in 0..N {
                    let w = widen(b.add(2 * n + half));
                    a0[n] = _mm512_fmadd_ps(x0, w, a0[n]);
                    if NV > 1 {
                        a1[n] = _mm512_fmadd_ps(x1, w, a1[n]);
                    }
                }
            }
        }
        if t.kc % 2 == 1 {
            // The odd last input (the chunk ends at `din`): a row of single `bf16`.
            let b = t.b.add((t.pc + t.kc - 1) * N);
            let (x0, x1) = rows(t.a.add((t.kc - 1) * mr));
            for n in 0..N {
                let w = widen(b.add(n));
                a0[n] = _mm512_fmadd_ps(x0, w, a0[n]);
                if NV > 1 {
                    a1[n] = _mm512_fmadd_ps(x1, w, a1[n]);
                }
            }
        }
        for n in 0..N {
            let col = g.out.add(t.i0 + (t.j0 + n) * ldc);
            _mm512_mask_storeu_ps(col, masks[0], a0[n]);
            if NV > 1 {
                _mm512_mask_storeu_ps(col.wrapping_add(L), masks[1], a1[n]);
            }
        }
    }
}

/// The upper 16-bit half of every 32-bit lane.
const UPPER: __mmask32 = 0xaaaa_aaaa;

/// The mask of the first `n ≤ 16` lanes.
#[inline(always)]
fn row_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// Copies rows `i0 .. i0 + rows` of input columns `pc .. pc + kc` of `x` (`s` rows,
/// column-major) into `pack` as `kc` columns of `NV·16` values, zero below `rows`.
///
/// # Safety
/// `x` holds `s × (pc + kc)` values with `i0 + rows ≤ s`, `rows ≤ NV·16`; `pack` holds
/// `kc · NV·16` values.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_panel<const NV: usize>(
    x: *const f32,
    s: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    pack: *mut f32,
) {
    let mr = NV * L;
    let masks: [__mmask16; NV] =
        core::array::from_fn(|v| row_mask(rows.saturating_sub(v * L).min(L)));
    // SAFETY: reads are rows `i0 .. i0 + rows` (masked) of columns `< pc + kc`; writes are
    // the `kc · mr` values of `pack`.
    unsafe {
        for p in 0..kc {
            let col = x.add(i0 + (pc + p) * s);
            for v in 0..NV {
                let vals = _mm512_maskz_loadu_ps(masks[v], col.wrapping_add(v * L));
                _mm512_storeu_ps(pack.add(p * mr + v * L), vals);
            }
        }
    }
}
