//! Projections with `bf16` weights in `bf16` products: aarch64 with the BF16 extension
//! (`BFDOT`), the projection kernel of [`Kernel::NeonBf16`](super::Kernel::NeonBf16).
//!
//! `BFDOT` (by element) multiplies 4 pairs of `bf16` values by one pair broadcast from another
//! register and adds each pair's two products to an `f32` lane. The weights are stored with
//! their rows paired (`kernels/layout.rs`), so one 128-bit load holds the pairs of 4 output
//! features, and each of its 4 elements is the broadcast operand of a `BFDOT` in turn. The
//! inputs are packed 8 tokens at a time as pairs, rounded from `f32` to `bf16` (to nearest,
//! ties to even; a NaN stays a NaN) as they are packed. The micro-kernel is `8` tokens (two
//! vectors) by up to 12 output features: 24 accumulators.
//!
//! Stable Rust has no intrinsics for the BF16 extension yet, so `BFDOT` is written with
//! `asm!` in functions compiled with `#[target_feature(enable = "neon,bf16")]`, reached only where
//! the CPU has it. Without FEAT_EBF16 the instruction rounds its two sums to odd (an error
//! below one `f32` ulp each) and flushes `bf16` inputs and `f32` results below `2⁻¹²⁶` to
//! zero; the contract in the docs of [`crate::Weight`] covers it.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::arch::asm;

use super::args::{LinearIo, check_weights};
use super::layout::WEIGHT_TILE;

/// `f32` lanes of a vector.
const L: usize = 4;
/// Tokens per panel: two vectors.
const MR: usize = 2 * L;

/// `acc += a · b[LANE]`: `BFDOT` by element, each `f32` lane of `acc` adding the two products
/// of its pair in `a` with pair `LANE` of `b`.
macro_rules! bfdot {
    ($acc:expr, $a:expr, $b:expr, $lane:literal) => {
        // SAFETY: BFDOT reads and writes registers only; the enclosing function is compiled
        // with the `bf16` feature, which its callers guarantee the CPU has.
        unsafe {
            asm!(
                concat!("bfdot {d:v}.4s, {n:v}.8h, {m:v}.2h[", $lane, "]"),
                d = inout(vreg) $acc,
                n = in(vreg) $a,
                m = in(vreg) $b,
                options(pure, nomem, nostack, preserves_flags)
            )
        }
    };
}

/// `out[s × dout] = x[s × din] · Wᵀ + b` (or `out += x · Wᵀ`) with `W` (`dout × din`) stored
/// as `bf16` in the paired tile layout, every product a `bf16` one summed in `f32`. `pack`
/// holds the packed panels (`8` 32-bit words per pair of input features, so a `pack` of
/// `8 · k` values takes `2k` input features at a time).
#[target_feature(enable = "neon,bf16")]
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
    let pack: &mut [u32] = bytemuck::cast_slice_mut(pack);
    let kq_max = pack.len() / MR;
    assert!(kq_max >= 1, "pack buffer too small");
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    let mut i0 = 0;
    while i0 < s {
        let rows = MR.min(s - i0);
        let mut pc = 0;
        while pc < din {
            // An even number of inputs per chunk, so that no chunk splits a pair.
            let kc = (2 * kq_max).min(din - pc);
            pack_panel(x, s, i0, rows, pc, kc, pack);
            let first = pc == 0 && !add;
            let mut t0 = 0;
            while t0 < dout {
                let width = if t0 < full { WEIGHT_TILE } else { dout - full };
                // Rows `pc ..` of the tile starting at feature `t0` (`din · width` values at
                // `t0 · din`; `pc` is even, so the chunk starts on a pair).
                let b = &w[t0 * din + pc * width..t0 * din + (pc + kc) * width];
                let start = if first { Start::Bias } else { Start::Out };
                let tile = Tile {
                    kc,
                    width,
                    i0,
                    rows,
                    j0: t0,
                    start,
                };
                match width.div_ceil(4) {
                    1 => micro::<1>(pack, b, bias, out, s, tile),
                    2 => micro::<2>(pack, b, bias, out, s, tile),
                    _ => micro::<3>(pack, b, bias, out, s, tile),
                }
                t0 += width;
            }
            pc += kc;
        }
        i0 += rows;
    }
}

/// Where a micro-tile's sums start: the biases, or the outputs (a later chunk, or `Add`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Bias,
    Out,
}

/// One storage tile's share of a panel: `kc` inputs, `width` output features from `j0`,
/// tokens `i0 .. i0 + rows`.
#[derive(Clone, Copy)]
struct Tile {
    kc: usize,
    width: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    start: Start,
}

/// The `8 × width` micro-tile over `G` groups of 4 features (`width ≤ 4·G`): `C (+)= A · Bᵀ`,
/// `b` the tile's `kc` rows (paired, an odd last row single).
#[target_feature(enable = "neon,bf16")]
fn micro<const G: usize>(
    pack: &[u32],
    b: &[u16],
    bias: &[f32],
    out: &mut [f32],
    ldc: usize,
    t: Tile,
) {
    let width = t.width;
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[[zero; 4]; G]; 2];
    // Start from the biases or the outputs (rows past `rows` start, and stay, unused).
    for n in 0..width {
        let mut col = [0f32; MR];
        match t.start {
            Start::Bias => col = [bias[t.j0 + n]; MR],
            Start::Out => {
                let at = t.i0 + (t.j0 + n) * ldc;
                col[..t.rows].copy_from_slice(&out[at..at + t.rows]);
            }
        }
        for v in 0..2 {
            // SAFETY: `col` holds `MR = 2·L` values.
            acc[v][n / 4][n % 4] = unsafe { vld1q_f32(col.as_ptr().add(v * L)) };
        }
    }
    let kq = t.kc / 2;
    let row = 2 * width;
    for q in 0..=kq {
        let single = q == kq;
        if single && t.kc.is_multiple_of(2) {
            break;
        }
        // SAFETY: column `q ≤ ⌈kc/2⌉ − 1` of the panel, `MR` words at `q · MR` (packed).
        let a: [uint16x8_t; 2] = core::array::from_fn(|v| unsafe {
            vreinterpretq_u16_u32(vld1q_u32(pack.as_ptr().add(q * MR + v * L)))
        });
        for g in 0..G {
            // The pairs of features `4g .. 4g + 4`: one load from a whole group of paired
            // rows, else gathered (a single row: each weight paired with 0).
            let bv = if !single && 4 * g + 4 <= width {
                let at = q * row + 8 * g;
                let group = &b[at..at + 8];
                // SAFETY: `group` holds 8 values.
                unsafe { vld1q_u16(group.as_ptr()) }
            } else {
                gather(b, single, q, row, kq, width, g)
            };
            for v in 0..2 {
                let [a0, a1, a2, a3] = &mut acc[v][g];
                bfdot!(*a0, a[v], bv, 0);
                bfdot!(*a1, a[v], bv, 1);
                bfdot!(*a2, a[v], bv, 2);
                bfdot!(*a3, a[v], bv, 3);
            }
        }
    }
    for n in 0..width {
        let mut col = [0f32; MR];
        for v in 0..2 {
            // SAFETY: `col` holds `MR = 2·L` values.
            unsafe { vst1q_f32(col.as_mut_ptr().add(v * L), acc[v][n / 4][n % 4]) };
        }
        let at = t.i0 + (t.j0 + n) * ldc;
        out[at..at + t.rows].copy_from_slice(&col[..t.rows]);
    }
}

/// The pairs of features `4g .. 4g + 4` of row pair `q` (or of the single last row, each
/// weight paired with 0), zero past `width`.
#[inline(always)]
fn gather(
    b: &[u16],
    single: bool,
    q: usize,
    row: usize,
    kq: usize,
    width: usize,
    g: usize,
) -> uint16x8_t {
    let mut pairs = [0u16; 8];
    for f in 0..4.min(width.saturating_sub(4 * g)) {
        let n = 4 * g + f;
        if single {
            pairs[2 * f] = b[kq * row + n];
        } else {
            pairs[2 * f] = b[q * row + 2 * n];
            pairs[2 * f + 1] = b[q * row + 2 * n + 1];
        }
    }
    // SAFETY: `pairs` holds 8 values.
    unsafe { vld1q_u16(pairs.as_ptr()) }
}

/// `bf16` bits of four `f32` (to nearest, ties to even; a NaN stays a NaN, made quiet), in
/// the low halves of four words.
#[inline(always)]
fn to_bf16(x: float32x4_t) -> uint32x4_t {
    // SAFETY: NEON is the aarch64 baseline; these are register operations.
    unsafe {
        let bits = vreinterpretq_u32_f32(x);
        let lsb = vandq_u32(vshrq_n_u32::<16>(bits), vdupq_n_u32(1));
        let rounded = vshrq_n_u32::<16>(vaddq_u32(bits, vaddq_u32(vdupq_n_u32(0x7FFF), lsb)));
        let quiet = vorrq_u32(vshrq_n_u32::<16>(bits), vdupq_n_u32(0x40));
        let nan = vmvnq_u32(vceqq_f32(x, x));
        vbslq_u32(nan, quiet, rounded)
    }
}

/// Packs rows `i0 .. i0 + rows` of input columns `pc .. pc + kc` of `x` (`s` rows,
/// column-major) as `⌈kc/2⌉` columns of 8 words: word `i` of column `q` holds the `bf16` of
/// `x[i0 + i, pc + 2q]` in its low half and of `x[i0 + i, pc + 2q + 1]` in its high half (zero
/// past `kc` and below `rows`).
fn pack_panel(x: &[f32], s: usize, i0: usize, rows: usize, pc: usize, kc: usize, pack: &mut [u32]) {
    let mut q = 0;
    while 2 * q < kc {
        let mut even = [0f32; MR];
        let mut odd = [0f32; MR];
        let e = i0 + (pc + 2 * q) * s;
        even[..rows].copy_from_slice(&x[e..e + rows]);
        if 2 * q + 1 < kc {
            odd[..rows].copy_from_slice(&x[e + s..e + s + rows]);
        }
        for v in 0..2 {
            // SAFETY: `even`, `odd` hold `MR = 2·L` values; `pack` holds `⌈kc/2⌉ · MR` words
            // (the caller sized the chunk to it).
            unsafe {
                let lo = to_bf16(vld1q_f32(even.as_ptr().add(v * L)));
                let hi = to_bf16(vld1q_f32(odd.as_ptr().add(v * L)));
                let word = vorrq_u32(lo, vshlq_n_u32::<16>(hi));
                let dst = &mut pack[q * MR + v * L..q * MR + v * L + L];
                vst1q_u32(dst.as_mut_ptr(), word);
            }
        }
        q += 1;
    }
}

/// `rounds` rounds of 12 independent `BFDOT` (by element) on whole vectors: the core's `bf16`
/// dot-product peak loop. Each instruction is 4 lanes × 2 products × 2 FLOPs.
#[target_feature(enable = "neon,bf16")]
pub(super) fn dot_loop(rounds: usize) -> (u64, f32) {
    // Pairs of 1.0 (`0x3F80`) and of 2⁻²⁰ (`0x3580`), hidden from the optimiser.
    let ones = vreinterpretq_u16_u32(vdupq_n_u32(core::hint::black_box(0x3F80_3F80)));
    let tiny = vreinterpretq_u16_u32(vdupq_n_u32(core::hint::black_box(0x3580_3580)));
    let mut acc = [vdupq_n_f32(0.0); 12];
    for _ in 0..rounds {
        for a in &mut acc {
            bfdot!(*a, ones, tiny, 0);
        }
    }
    let total = acc.iter().fold(vdupq_n_f32(0.0), |s, &a| vaddq_f32(s, a));
    (rounds as u64 * 12 * L as u64 * 4, vaddvq_f32(total))
}
