//! Projections with `bf16` weights on x86-64 without `bf16` products (AVX-512 and AVX2): the
//! weights are widened to `f32` inside the micro-kernel, as they are broadcast, so the
//! products are the exact `f32` products of the `f32` path with the same (rounded) weights.
//!
//! The weights are stored with their rows paired (`kernels/layout.rs`): the weights of input
//! features `2q` and `2q + 1` of an output feature are one 32-bit word, the even row's `bf16`
//! in its low half and the odd row's in its high half. A `bf16` is the upper half of an `f32`,
//! so a weight is widened by putting it in the upper half of every lane with the lower half
//! zero:
//!
//! - AVX-512 (with BW): one masked 16-bit broadcast (`vpbroadcastw` into the upper halves);
//! - AVX2: a 32-bit broadcast of the word that *ends* with the weight (starting one `bf16`
//!   before it), then `and` with the upper-half mask: a load and one bitwise instruction per
//!   weight, which the core runs on ports the multiply-adds leave free (a shift would compete
//!   with them).
//!
//! The inputs are packed in `f32` panels of `NV` vectors of tokens as in the `f32` GEMM, and
//! the micro-kernel is that GEMM's (`2 × 16` tokens by 12 output features on AVX-512, `2 × 8`
//! by 6 on AVX2): each output is the same sum in the same order as the `f32` path's, and
//! nothing is widened into memory, so this path needs no buffer. One driver serves both
//! instruction sets through [`Lanes`].

#![allow(
    clippy::too_many_arguments,
    clippy::inline_always,
    // Index loops over lanes, rows and columns read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::x86_64::*;

use super::args::{LinearIo, check_weights};
use super::layout::WEIGHT_TILE;

/// What the driver needs of one instruction set: `f32` vectors, row masks for partial panels,
/// and the widening broadcast. A value exists only inside a `#[target_feature]` entry point
/// compiled for the instruction set (it proves the CPU runs it), and every method is
/// `#[inline(always)]` so that it becomes the instruction itself there.
trait Lanes: Copy {
    /// `f32` lanes per vector.
    const L: usize;
    /// Output features per micro-tile (`2 · TILE` accumulators with the rows' two vectors).
    const TILE: usize;
    /// Whether [`Lanes::widen`] reads the `bf16` before the weight too.
    const LOOKS_BACK: bool;
    /// Whether a masked load or store costs what a plain one does (AVX-512's mask registers):
    /// then every panel is loaded and stored through its masks, full or not (a branch
    /// between the two made LLVM keep the accumulators on the stack around the loop, 2.5 %
    /// of the layer).
    const MASKS_ARE_FREE: bool;
    /// A vector of `L` lanes.
    type V: Copy;
    /// Which of a vector's lanes are tokens of the panel.
    type M: Copy;
    /// What [`Lanes::widen`] takes besides the weight, made once per micro-tile by
    /// [`Lanes::widening`].
    type K: Copy;

    /// Every lane `x`.
    fn splat(self, x: f32) -> Self::V;
    /// `a · b + c`, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The first `n ≤ L` lanes.
    fn mask(self, n: usize) -> Self::M;
    /// `L` values from `p`.
    ///
    /// # Safety
    /// `p .. p + L` readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// The lanes of `m` from `p`, zero in the others (which are not read).
    ///
    /// # Safety
    /// The lanes of `m` from `p` readable.
    unsafe fn load_masked(self, m: Self::M, p: *const f32) -> Self::V;
    /// `L` values to `p`.
    ///
    /// # Safety
    /// `p .. p + L` writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// The lanes of `m` to `p` (the others are not written).
    ///
    /// # Safety
    /// The lanes of `m` from `p` writable.
    unsafe fn store_masked(self, p: *mut f32, m: Self::M, v: Self::V);
    /// The constant of [`Lanes::widen`].
    fn widening(self) -> Self::K;
    /// The `bf16` at `p` widened to `f32`, in every lane.
    ///
    /// # Safety
    /// `p` readable, and `p − 1` too where [`Lanes::LOOKS_BACK`].
    unsafe fn widen(self, k: Self::K, p: *const u16) -> Self::V;
}

/// AVX-512F + BW: 16 lanes, mask registers (made only by [`linear`]).
#[derive(Clone, Copy)]
struct Zmm(());

/// AVX2 + FMA: 8 lanes, vector masks (made only by [`linear_avx2`]).
#[derive(Clone, Copy)]
struct Ymm(());

impl Lanes for Zmm {
    const L: usize = 16;
    const TILE: usize = 12;
    const LOOKS_BACK: bool = false;
    const MASKS_ARE_FREE: bool = true;
    type V = __m512;
    type M = __mmask16;
    type K = ();

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mask(self, n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: the token proves AVX-512F; the caller vouches for the memory.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(self, m: __mmask16, p: *const f32) -> __m512 {
        // SAFETY: as above (masked-off lanes are not read).
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_masked(self, p: *mut f32, m: __mmask16, v: __m512) {
        // SAFETY: as above (masked-off lanes are not written).
        unsafe { _mm512_mask_storeu_ps(p, m, v) }
    }
    #[inline(always)]
    fn widening(self) {}
    #[inline(always)]
    unsafe fn widen(self, (): (), p: *const u16) -> __m512 {
        // The weight into the upper half of every 32-bit lane, the lower half zero: the `f32`
        // it is the upper half of, in one masked broadcast.
        const UPPER: __mmask32 = 0xaaaa_aaaa;
        // SAFETY: the token proves AVX-512F and BW (`linear` requires both); `p` readable.
        unsafe { _mm512_castsi512_ps(_mm512_maskz_set1_epi16(UPPER, *p as i16)) }
    }
}

impl Lanes for Ymm {
    const L: usize = 8;
    const TILE: usize = 6;
    const LOOKS_BACK: bool = true;
    const MASKS_ARE_FREE: bool = false;
    type V = __m256;
    type M = __m256i;
    type K = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the token proves FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mask(self, n: usize) -> __m256i {
        let lanes: [i32; 8] = core::array::from_fn(|i| if i < n { -1 } else { 0 });
        // SAFETY: the token proves AVX; `lanes` is 8 readable values.
        unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        // SAFETY: the token proves AVX; the caller vouches for the memory.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(self, m: __m256i, p: *const f32) -> __m256 {
        // SAFETY: as above (masked-off lanes are not read and do not fault).
        unsafe { _mm256_maskload_ps(p, m) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_masked(self, p: *mut f32, m: __m256i, v: __m256) {
        // SAFETY: as above (masked-off lanes are not written).
        unsafe { _mm256_maskstore_ps(p, m, v) }
    }
    /// The upper-half mask, kept in a register.
    #[inline(always)]
    fn widening(self) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_castsi256_ps(_mm256_set1_epi32(-65536)) }
    }
    #[inline(always)]
    unsafe fn widen(self, upper: __m256, p: *const u16) -> __m256 {
        // SAFETY: the token proves AVX; the caller's promise for `p`, passed on.
        unsafe { widen_avx(upper, p) }
    }
}

/// [`Ymm`]'s [`Lanes::widen`] (a function of its own: the register class of its `asm!`
/// needs the `avx` feature enabled where it is written).
///
/// # Safety
/// The CPU runs AVX; `p − 1` and `p` readable.
#[target_feature(enable = "avx")]
#[inline]
unsafe fn widen_avx(upper: __m256, p: *const u16) -> __m256 {
    // The 32-bit word that ends with the weight, read as an `f32`, has the `bf16` before it
    // as its low half; clearing that half leaves the weight's own `f32`. Written out because
    // LLVM, seeing the constant mask, turns `and(broadcast(load))` into a scalar load, a
    // blend and a register broadcast (two more instructions on the multiply-adds' ports;
    // `MultiHead<128, 256, 8>` took 1.28× the `f32` time), and hiding the mask from it made
    // it spill accumulators instead (1.38×). Here the mask stays in the one register the 12
    // accumulators, two rows of tokens and the weight leave (1.00×).
    #[cfg(miri)] // Miri runs no assembly; the intrinsics are the same operations.
    // SAFETY: as below.
    return unsafe {
        _mm256_and_ps(
            _mm256_set1_ps(p.sub(1).cast::<f32>().read_unaligned()),
            upper,
        )
    };
    #[cfg(not(miri))]
    let w: __m256;
    #[cfg(not(miri))]
    // SAFETY: the CPU runs AVX (the caller's promise, and this function's feature); the four
    // bytes at `p − 1` are readable (the caller's promise) and `vbroadcastss` has no
    // alignment requirement; the block reads only them and writes only `w`.
    unsafe {
        core::arch::asm!(
            "vbroadcastss {w}, dword ptr [{p}]",
            "vandps {w}, {w}, {m}",
            w = out(ymm_reg) w,
            p = in(reg) p.sub(1),
            m = in(ymm_reg) upper,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    #[cfg(not(miri))]
    w
}

/// `out[s × dout] = x[s × din] · Wᵀ + b` (or `out += x · Wᵀ`) with `W` (`dout × din`) stored
/// as `bf16` in the paired tile layout, every product an exact `f32` one, on AVX-512 (F and
/// BW). `pack` holds the packed panels: at least two input columns of a panel (`2 · 16 · NV`
/// values), and an even number of columns at a time.
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
    drive(Zmm(()), io, s, din, w, dout, bias, pack);
}

/// [`linear`] on AVX2 + FMA (8 lanes, micro-tiles of 6 features).
#[target_feature(enable = "avx2,fma")]
pub(super) fn linear_avx2(
    io: LinearIo<'_, f32>,
    s: usize,
    din: usize,
    w: &[u16],
    dout: usize,
    bias: &[f32],
    pack: &mut [f32],
) {
    drive(Ymm(()), io, s, din, w, dout, bias, pack);
}

/// The checks and the panel width of [`linear`], for either instruction set.
#[inline(always)]
fn drive<I: Lanes>(
    isa: I,
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
    if s >= 2 * I::L {
        panels::<I, 2>(isa, args, pack);
    } else {
        panels::<I, 1>(isa, args, pack);
    }
}

/// The checked operands of [`linear`].
#[derive(Clone, Copy)]
struct Gemm<'a> {
    /// `s × din`, column-major.
    x: *const f32,
    s: usize,
    din: usize,
    /// `dout × din` `bf16` bits in the paired tile layout; the first weight of all, which
    /// nothing precedes.
    w: *const u16,
    bias: &'a [f32],
    /// `s × dout`, column-major.
    out: *mut f32,
    dout: usize,
    add: bool,
}

/// The projection in panels of `NV · L` tokens and chunks of an even number of input
/// features (as many as `pack` holds columns of the panel; the last chunk takes the odd last
/// input too), every storage tile of the weights multiplied with each packed panel.
#[inline(always)]
fn panels<I: Lanes, const NV: usize>(isa: I, g: Gemm<'_>, pack: &mut [f32]) {
    let mr = NV * I::L;
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
            unsafe { pack_panel::<I, NV>(isa, g.x, g.s, i0, rows, pc, kc, pack.as_mut_ptr()) };
            let first = pc == 0 && !g.add;
            let mut t0 = 0;
            while t0 < g.dout {
                let width = if t0 < full {
                    WEIGHT_TILE
                } else {
                    g.dout - full
                };
                let mut c0 = 0;
                while c0 < width {
                    let tile = Tile {
                        a: pack.as_ptr(),
                        pc,
                        kc,
                        // SAFETY: the tile starting at feature `t0` is `din · width` values at
                        // `t0 · din`, inside `w`.
                        b: unsafe { g.w.add(t0 * g.din) },
                        width,
                        c0,
                        i0,
                        rows,
                        j0: t0 + c0,
                        first,
                    };
                    let n = I::TILE.min(width - c0);
                    // SAFETY: the tile's operands lie inside `pack`, `w`, `bias` and `out`
                    // (see `Tile`); `rows ≤ mr`, `c0 + n ≤ width`.
                    unsafe { micro_tile::<I, NV>(isa, g, tile, n) };
                    c0 += n;
                }
                t0 += width;
            }
            pc += kc;
        }
        i0 += rows;
    }
}

/// One micro-tile's share of a panel: packed inputs `a` (`kc` columns of `NV · L` values,
/// inputs `pc .. pc + kc`, `pc` even) and the storage tile's weights `b` (`din · width`
/// `bf16`: pairs of rows of `2 · width`, then one row of `width` when `din` is odd), of which
/// the features `c0 ..` (output features `j0 ..`) for tokens `i0 .. i0 + rows`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    pc: usize,
    kc: usize,
    b: *const u16,
    width: usize,
    c0: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    first: bool,
}

/// The micro-tile of `n` features (1 to [`Lanes::TILE`]) as the kernel of that width.
///
/// # Safety
/// As [`Tile`] describes, inside the operands of `g`, with `c0 + n ≤ width`.
#[inline(always)]
unsafe fn micro_tile<I: Lanes, const NV: usize>(isa: I, g: Gemm<'_>, t: Tile, n: usize) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match n {
            12 => micro::<I, NV, 12>(isa, g, t),
            11 => micro::<I, NV, 11>(isa, g, t),
            10 => micro::<I, NV, 10>(isa, g, t),
            9 => micro::<I, NV, 9>(isa, g, t),
            8 => micro::<I, NV, 8>(isa, g, t),
            7 => micro::<I, NV, 7>(isa, g, t),
            6 => micro::<I, NV, 6>(isa, g, t),
            5 => micro::<I, NV, 5>(isa, g, t),
            4 => micro::<I, NV, 4>(isa, g, t),
            3 => micro::<I, NV, 3>(isa, g, t),
            2 => micro::<I, NV, 2>(isa, g, t),
            1 => micro::<I, NV, 1>(isa, g, t),
            _ => unreachable!("a micro-tile is 1 to 12 features wide"),
        }
    }
}

/// The `NV·L × N` micro-tile: `C (+)= A · Bᵀ` with `N` accumulators per row vector, input by
/// input in order (the even input of a pair, then the odd one). The two rows of accumulators
/// are two named arrays, as in the `f32` GEMM: an array of arrays made LLVM keep them on the
/// stack.
///
/// # Safety
/// As [`Tile`] describes, with `c0 + N ≤ width`.
#[inline(always)]
unsafe fn micro<I: Lanes, const NV: usize, const N: usize>(isa: I, g: Gemm<'_>, t: Tile) {
    let (l, mr, ldc) = (I::L, NV * I::L, g.s);
    let zero = isa.splat(0.0);
    let k = isa.widening();
    let (mut a0, mut a1) = ([zero; N], [zero; N]);
    let full = t.rows == mr && !I::MASKS_ARE_FREE;
    let masks: [I::M; 2] = core::array::from_fn(|v| isa.mask(t.rows.saturating_sub(v * l).min(l)));
    // The one weight whose widening may not look back: the first of all (where `LOOKS_BACK`
    // would read before `w`), which is the even input of this tile's first pair in feature
    // `c0 = 0` when the tile is the first and the chunk starts at input 0.
    let at_start = I::LOOKS_BACK && t.b == g.w && t.pc == 0 && t.c0 == 0;
    // SAFETY: every read and write below is inside the operands the caller vouches for: the
    // outputs are rows `i0 .. i0 + rows` (the masks select exactly those; a masked-off lane
    // is never touched, and pointers past the rows are formed with `wrapping_add`) of columns
    // `j0 .. j0 + N`; the panel columns and weight rows as `Tile` says; `widen` looks back
    // one `bf16` only from a weight that is not the first of `w` (`at_start` takes that one
    // apart).
    unsafe {
        for n in 0..N {
            let col = g.out.add(t.i0 + (t.j0 + n) * ldc);
            if t.first {
                a0[n] = isa.splat(g.bias[t.j0 + n]);
                a1[n] = a0[n];
            } else if full {
                a0[n] = isa.load(col);
                if NV > 1 {
                    a1[n] = isa.load(col.add(l));
                }
            } else {
                a0[n] = isa.load_masked(masks[0], col);
                if NV > 1 {
                    a1[n] = isa.load_masked(masks[1], col.wrapping_add(l));
                }
            }
        }
        let rows = |a: *const f32| {
            let x0 = isa.load(a);
            let x1 = if NV > 1 { isa.load(a.add(l)) } else { zero };
            (x0, x1)
        };
        // The exact widening of the first weight of all, without looking back.
        let first_weight = |p: *const u16| isa.splat(f32::from_bits(u32::from(*p) << 16));
        // One row of weights (`b`, feature `c0 + n` at `b + step·n`) times one column of the
        // panel (`a`); `$first` when the row holds the first weight of all, at `b`.
        macro_rules! input {
            ($a:expr, $b:expr, $step:expr, $first:expr) => {{
                let (x0, x1) = rows($a);
                let b = $b;
                for n in 0..N {
                    let p = b.add($step * n);
                    let w = if $first && n == 0 {
                        first_weight(p)
                    } else {
                        isa.widen(k, p)
                    };
                    a0[n] = isa.fma(x0, w, a0[n]);
                    if NV > 1 {
                        a1[n] = isa.fma(x1, w, a1[n]);
                    }
                }
            }};
        }
        let pairs = t.kc / 2;
        // Inputs `pc + 2q` and `pc + 2q + 1`: the pair row at `(pc + 2q) · width`, the even
        // input's weight of feature `c` at `2c`, the odd one's at `2c + 1`.
        let pair = |q: usize| t.b.add((t.pc + 2 * q) * t.width + 2 * t.c0);
        let mut q0 = 0;
        if at_start && pairs > 0 {
            input!(t.a, pair(0), 2, true);
            input!(t.a.add(mr), pair(0).add(1), 2, false);
            q0 = 1;
        }
        for q in q0..pairs {
            let (a, b) = (t.a.add(2 * q * mr), pair(q));
            input!(a, b, 2, false);
            input!(a.add(mr), b.add(1), 2, false);
        }
        if t.kc % 2 == 1 {
            // The odd last input (the chunk ends at `din`): a row of single `bf16`, the first
            // of all when it is the only input.
            let b = t.b.add((t.pc + t.kc - 1) * t.width + t.c0);
            let a = t.a.add((t.kc - 1) * mr);
            if at_start && pairs == 0 {
                input!(a, b, 1, true);
            } else {
                input!(a, b, 1, false);
            }
        }
        for n in 0..N {
            let col = g.out.add(t.i0 + (t.j0 + n) * ldc);
            if full {
                isa.store(col, a0[n]);
                if NV > 1 {
                    isa.store(col.add(l), a1[n]);
                }
            } else {
                isa.store_masked(col, masks[0], a0[n]);
                if NV > 1 {
                    isa.store_masked(col.wrapping_add(l), masks[1], a1[n]);
                }
            }
        }
    }
}

/// Copies rows `i0 .. i0 + rows` of input columns `pc .. pc + kc` of `x` (`s` rows,
/// column-major) into `pack` as `kc` columns of `NV·L` values, zero below `rows`.
///
/// # Safety
/// `x` holds `s × (pc + kc)` values with `i0 + rows ≤ s`, `rows ≤ NV·L`; `pack` holds
/// `kc · NV·L` values.
#[inline(always)]
unsafe fn pack_panel<I: Lanes, const NV: usize>(
    isa: I,
    x: *const f32,
    s: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    pack: *mut f32,
) {
    let (l, mr) = (I::L, NV * I::L);
    let masks: [I::M; NV] = core::array::from_fn(|v| isa.mask(rows.saturating_sub(v * l).min(l)));
    // SAFETY: reads are rows `i0 .. i0 + rows` (masked) of columns `< pc + kc`; writes are
    // the `kc · mr` values of `pack`.
    unsafe {
        for p in 0..kc {
            let col = x.add(i0 + (pc + p) * s);
            for v in 0..NV {
                let vals = if rows == mr && !I::MASKS_ARE_FREE {
                    isa.load(col.add(v * l))
                } else {
                    isa.load_masked(masks[v], col.wrapping_add(v * l))
                };
                isa.store(pack.add(p * mr + v * l), vals);
            }
        }
    }
}
