//! Projections with `bf16` weights in `bf16` products: x86-64 AVX512-BF16 (`vdpbf16ps`), the
//! projection kernel of [`Kernel::Avx512Bf16`](super::Kernel::Avx512Bf16).
//!
//! `vdpbf16ps` multiplies 16 pairs of `bf16` values by 16 pairs and adds each pair's two
//! products to an `f32` lane: twice the multiply-adds of an `f32` FMA in one instruction. The
//! weights are stored with their rows paired (`kernels/layout.rs`), so the pair of input
//! features `2q, 2q + 1` of an output feature is one 32-bit word, broadcast to every lane. The
//! inputs are packed a panel of tokens at a time as pairs too, rounded from `f32` to `bf16`
//! (to nearest, ties to even) as they are packed. The micro-kernel is the `f32` GEMM's:
//! `2 × 16` tokens by 12 output features, 24 accumulators, one broadcast weight pair at a time.
//!
//! What this changes against the `f32` path on the same weights (the accuracy contract, stated
//! in the docs of [`crate::Weight`]): each input is rounded to `bf16` (a relative error of at
//! most `2⁻⁸`); products are exact in `f32` and summed in `f32` as before; the instruction
//! reads `bf16` inputs below `2⁻¹²⁶` in magnitude as zero and flushes `f32` sums below `2⁻¹²⁶`
//! to zero. NaN and infinities propagate as in `f32` (but an input below `2⁻¹²⁶`, read as
//! zero, times an infinite weight gives NaN, not an infinity); an input beyond `bf16`'s
//! largest finite value (3.39 · 10³⁸) becomes an infinity.

#![allow(
    clippy::too_many_arguments,
    // Index loops over lanes, rows and columns read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::x86_64::*;

use super::args::{LinearIo, check_weights};
use super::int8::row_mask;
use super::layout::WEIGHT_TILE;

/// `f32` lanes of a vector.
const L: usize = 16;

/// Word `i` of the `vpermw` that interleaves the `bf16` of two columns of 16 tokens (even
/// column in words 0..16, odd column in 16..32) into 16 pairs: `[e0, o0, e1, o1, …]`.
pub(super) static INTERLEAVE: [u16; 32] = {
    let mut idx = [0u16; 32];
    let mut i = 0;
    while i < 16 {
        idx[2 * i] = i as u16;
        idx[2 * i + 1] = 16 + i as u16;
        i += 1;
    }
    idx
};

/// `out[s × dout] = x[s × din] · Wᵀ + b` (or `out += x · Wᵀ`) with `W` (`dout × din`) stored
/// as `bf16` in the paired tile layout, every product a `bf16` one summed in `f32`. `pack`
/// holds the packed panels (`32` 32-bit words per pair of input features, so a `pack` of
/// `32 · k` values takes `2k` input features at a time).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
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
    let args = Gemm {
        x: x.as_ptr(),
        s,
        din,
        w: w.as_ptr(),
        dout,
        bias,
        out: out.as_mut_ptr(),
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
    dout: usize,
    bias: &'a [f32],
    /// `s × dout`, column-major.
    out: *mut f32,
    add: bool,
}

/// The projection in panels of `NV · 16` tokens and chunks of input features (as many pairs
/// as `pack` holds columns of the panel), every storage tile of the weights (12 features,
/// the last `dout mod 12`) multiplied with each packed panel.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn panels<const NV: usize>(g: Gemm<'_>, pack: &mut [u32]) {
    let mr = NV * L;
    let kq_max = pack.len() / mr;
    assert!(kq_max >= 1, "pack buffer too small");
    let full = g.dout / WEIGHT_TILE * WEIGHT_TILE;
    let mut i0 = 0;
    while i0 < g.s {
        let rows = mr.min(g.s - i0);
        let mut pc = 0;
        while pc < g.din {
            // An even number of inputs per chunk, so that no chunk splits a pair (the last
            // chunk may hold one input more than its pairs, when `din` is odd).
            let kc = (2 * kq_max).min(g.din - pc);
            let kq = kc / 2;
            let single = kc % 2 == 1;
            // SAFETY: rows `i0 .. i0 + rows ≤ s` of columns `pc .. pc + kc ≤ din` of `x`, and
            // `⌈kc/2⌉ ≤ kq_max` panel columns of `pack` (`kq_max · mr ≤ pack.len()`).
            unsafe { pack_panel::<NV>(g.x, g.s, i0, rows, pc, kc, pack.as_mut_ptr()) };
            let first = pc == 0 && !g.add;
            let mut t0 = 0;
            while t0 < g.dout {
                let width = if t0 < full {
                    WEIGHT_TILE
                } else {
                    g.dout - full
                };
                // Rows `pc ..` of the tile starting at feature `t0` (`din · width` values at
                // `t0 · din`; `pc` is even, so the chunk starts on a pair).
                let tile = Tile {
                    a: pack.as_ptr(),
                    kq,
                    single,
                    // SAFETY: `t0 · din + pc · width < din · dout`, inside `w`.
                    b: unsafe { g.w.add(t0 * g.din + pc * width) },
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

/// One storage tile's share of a panel: packed inputs `a` (`kq` pair columns of `NV · 16`
/// words, then one column of single inputs if `single`) and weights `b` (`kq` rows of
/// `2 · width` `bf16`, then one row of `width` if `single`), for output features
/// `j0 .. j0 + width` of tokens `i0 .. i0 + rows`.
#[derive(Clone, Copy)]
struct Tile {
    a: *const u32,
    kq: usize,
    single: bool,
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
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
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

/// Two vectors of `bf16` pairs as the instruction's operand type.
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits.
    unsafe { core::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The `NV·16 × N` micro-tile: `C (+)= A · Bᵀ` with `N = width` accumulators per row vector.
///
/// # Safety
/// As [`Tile`] describes, with `N == t.width`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn micro<const NV: usize, const N: usize>(g: Gemm<'_>, t: Tile) {
    let mr = NV * L;
    let ldc = g.s;
    let mut acc = [[_mm512_setzero_ps(); N]; NV];
    let masks: [__mmask16; NV] =
        core::array::from_fn(|v| row_mask(t.rows.saturating_sub(v * L).min(L)));
    // SAFETY: every read and write below is inside the operands the caller vouches for: the
    // outputs are rows `i0 .. i0 + rows` (the masks select exactly those; a masked-off lane
    // is never touched, and pointers past the rows are formed with `wrapping_add`) of columns
    // `j0 .. j0 + N`; the panel and weight rows as `Tile` says.
    unsafe {
        for n in 0..N {
            let col = g.out.add(t.i0 + (t.j0 + n) * ldc);
            for v in 0..NV {
                acc[v][n] = if t.first {
                    _mm512_set1_ps(g.bias[t.j0 + n])
                } else {
                    _mm512_maskz_loadu_ps(masks[v], col.wrapping_add(v * L))
                };
            }
        }
        let row = 2 * t.width;
        for q in 0..t.kq {
            let b = t.b.add(q * row);
            dot_step(&mut acc, t.a.add(q * mr), |n| {
                _mm512_set1_epi32(b.add(2 * n).cast::<i32>().read_unaligned())
            });
        }
        if t.single {
            // The odd last input: each weight alone, its pair's upper half zero.
            let b = t.b.add(t.kq * row);
            dot_step(&mut acc, t.a.add(t.kq * mr), |n| {
                _mm512_set1_epi32(i32::from(*b.add(n)))
            });
        }
        for n in 0..N {
            let col = g.out.add(t.i0 + (t.j0 + n) * ldc);
            for v in 0..NV {
                _mm512_mask_storeu_ps(col.wrapping_add(v * L), masks[v], acc[v][n]);
            }
        }
    }
}

/// One column of the packed panel (`NV` vectors of pairs at `a`) times each feature's weight
/// pair (`weight(n)`, broadcast): `acc[v][n] += a[v] · weight(n)`.
///
/// # Safety
/// `a` holds `NV · 16` words; the CPU runs AVX512-BF16 (the caller is compiled with it, and
/// this function is inlined into it).
#[inline(always)]
unsafe fn dot_step<const NV: usize, const N: usize>(
    acc: &mut [[__m512; N]; NV],
    a: *const u32,
    weight: impl Fn(usize) -> __m512i,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let x: [__m512i; NV] = core::array::from_fn(|v| _mm512_loadu_si512(a.add(v * L).cast()));
        for n in 0..N {
            let w = bh(weight(n));
            for v in 0..NV {
                acc[v][n] = _mm512_dpbf16_ps(acc[v][n], bh(x[v]), w);
            }
        }
    }
}

/// Packs rows `i0 .. i0 + rows` of input columns `pc .. pc + kc` of `x` (`s` rows,
/// column-major) as `⌈kc/2⌉` columns of `NV·16` words: word `i` of column `q` holds the
/// `bf16` of `x[i0 + i, pc + 2q]` in its low half and of `x[i0 + i, pc + 2q + 1]` in its high
/// half (zero past `kc` and below `rows`).
///
/// The projections pack their inputs with it (`s` tokens), the attention its queries (`s` the
/// queries' leading dimension, `NV = 1`) and each block of keys (`s` the keys' leading
/// dimension, `NV = 2`).
///
/// # Safety
/// `x[i0 + i + c·s]` is readable for `i < rows` and `c < pc + kc` (so `s × (pc + kc)` values
/// with `i0 + rows ≤ s` are enough); `rows ≤ NV·16`; `pack` holds `⌈kc/2⌉ · NV·16` words.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_panel<const NV: usize>(
    x: *const f32,
    s: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    pack: *mut u32,
) {
    let mr = NV * L;
    let masks: [__mmask16; NV] =
        core::array::from_fn(|v| row_mask(rows.saturating_sub(v * L).min(L)));
    // SAFETY: reads are rows `i0 .. i0 + rows` (masked) of columns `< pc + kc`; writes are
    // the `⌈kc/2⌉ · mr` words of `pack`.
    unsafe {
        let order = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        let mut q = 0;
        while 2 * q < kc {
            let even = x.add(i0 + (pc + 2 * q) * s);
            let has_odd = 2 * q + 1 < kc;
            for v in 0..NV {
                let e = _mm512_maskz_loadu_ps(masks[v], even.wrapping_add(v * L));
                let o = if has_odd {
                    _mm512_maskz_loadu_ps(masks[v], even.wrapping_add(s + v * L))
                } else {
                    _mm512_setzero_ps()
                };
                // Words 0..16: bf16(e), 16..32: bf16(o); then interleaved into pairs.
                let both = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(o, e));
                let pairs = _mm512_permutexvar_epi16(order, both);
                _mm512_storeu_si512(pack.add(q * mr + v * L).cast(), pairs);
            }
            q += 1;
        }
    }
}

/// `rounds` rounds of 12 independent `vdpbf16ps` on whole vectors: the loop the core's `bf16`
/// dot-product peak is measured with. Each instruction is 16 lanes × 2 products × 2 FLOPs.
/// Returns the FLOPs done and a sum that depends on every one of them.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) fn dot_loop(rounds: usize) -> (u64, f32) {
    // Pairs of 1.0 (`0x3F80`) and of 2⁻²⁰ (`0x35 80`), hidden from the optimiser.
    let ones = bh(_mm512_set1_epi32(core::hint::black_box(0x3F80_3F80)));
    let tiny = bh(_mm512_set1_epi32(core::hint::black_box(0x3580_3580)));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..rounds {
        for a in &mut acc {
            *a = _mm512_dpbf16_ps(*a, ones, tiny);
        }
    }
    let total = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
    (
        rounds as u64 * 12 * L as u64 * 4,
        _mm512_reduce_add_ps(total),
    )
}

// ---- Attention with `bf16` products ------------------------------------------------------

/// Queries per tile of [`attention`]: one vector.
const QT: usize = 16;
/// Keys per block of [`attention`]: 16 pairs.
const KBF: usize = 32;
// The queries are packed as panels of one vector and the keys as panels of two.
const _: () = assert!(QT == L && KBF == 2 * L);
/// Tiles of queries that share each packed block of keys and values (fewer when `work`
/// holds the running sums of fewer, or their packed queries would not fit [`QPK_WORDS`]).
const CHUNK_TILES: usize = 8;
/// Words of a chunk's packed queries on the stack (16 KiB): 8 tiles of heads up to 64 wide,
/// 4 of heads up to 128.
const QPK_WORDS: usize = 4096;
/// Value columns per register block of `P·V`.
const PV_COLS: usize = 16;
/// The widest head (`dk`, `dv`) [`attention`] takes; wider heads take the `f32` kernel.
pub(crate) const MAX_HEAD: usize = 128;
/// Words of a packed block of keys (pairs of features × 32 keys), kept in `work.p`.
const KPK_WORDS: usize = MAX_HEAD / 2 * KBF;
/// Words of a packed block of values (columns × 16 pairs of keys), kept in `work.allowed`.
const VPK_WORDS: usize = MAX_HEAD * KBF / 2;

/// Streaming attention for one head with `QKᵀ` and `P·V` in `bf16` products, for layers
/// with `bf16` weights (see [`crate::Weight`]): queries, keys, the softmax's weights and
/// values are rounded to `bf16` (to nearest) as they are packed; scores, the online softmax
/// and the sums are `f32`. Returns `false`, having written nothing, for what it does not
/// take (the caller then runs the `f32` kernel): no queries, heads wider than
/// [`MAX_HEAD`], a mask with anything but its pattern, soft-capping or a sink, working memory
/// too small, non-finite queries, keys or values, or magnitudes whose scores or sums could
/// overflow.
///
/// The queries go in chunks of up to [`CHUNK_TILES`] tiles of 16 (a query per lane of a
/// vector), packed once as pairs of features. Each chunk walks the keys its pattern lets any
/// of its queries see in blocks of 32, packing the block's keys (pairs of features) and
/// values (pairs of keys) once for all its tiles. For each tile that sees the block, the
/// scores come from `vdpbf16ps` (16 keys at a time), are scaled, masked per lane where the
/// pattern cuts the block, and update the tile's running maximum and denominator; its
/// weights are packed as pairs of keys, and `P·V` adds 16 value columns at a time to the
/// tile's running sums, kept in `work`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) fn attention(
    io: &mut super::args::QueryIo<'_, f32>,
    p: &super::args::Problem<'_, f32>,
    work: &mut super::args::WorkRef<'_, f32>,
) -> bool {
    let d = p.dims;
    if !plain(p, MAX_HEAD)
        || work.acc.len() < QT * d.dv
        || work.p.len() < KPK_WORDS
        || work.allowed.len() < VPK_WORDS
    {
        return false;
    }
    p.check(io);
    // Finite operands, and magnitudes far from overflow: |score| ≤ scale·dk·max|q|·max|k| and
    // every sum of values ≤ skv·max|v| stay below 2¹⁰⁰.
    let amax = |x: &[f32], rows: usize, cols: usize, ld: usize| {
        // SAFETY: the CPU has AVX-512F (this function's features); every column `c < cols`
        // holds `rows` values at `c · ld`, inside `x` (`p.check`).
        let bits = unsafe { row_range(x, rows, cols, ld) }.0;
        if bits < f32::INFINITY.to_bits() {
            f32::from_bits(bits)
        } else {
            f32::INFINITY
        }
    };
    let qmax = amax(io.queries(), d.sq, d.dk, d.ldq);
    let kmax = amax(p.k, d.skv, d.dk, d.ldkv);
    let vmax = amax(p.v, d.skv, d.dv, d.ldkv);
    // 2¹⁰⁰ (no `powi` without `std`).
    let limit = f32::from_bits((127 + 100) << 23);
    let score_bound = f64::from(p.scale.abs()) * d.dk as f64 * f64::from(qmax) * f64::from(kmax);
    // (A NaN bound, from an infinite maximum times zero, fails the comparison too.)
    let fits =
        score_bound < f64::from(limit) && f64::from(vmax) * (d.skv as f64) < f64::from(limit);
    if !fits {
        return false;
    }
    let tiles = (work.acc.len() / (QT * d.dv))
        .min(QPK_WORDS / (QT * d.dk.div_ceil(2)))
        .min(CHUNK_TILES);
    let (qp, out) = io.pointers();
    let acc = work.acc.as_mut_ptr();
    // The packed blocks of keys and values live in the score and mask blocks of the `f32`
    // kernel's working memory, which this kernel does not otherwise use.
    let kpk: &mut [u32] = bytemuck::cast_slice_mut(&mut work.p[..KPK_WORDS]);
    let vpk: &mut [u32] = bytemuck::cast_slice_mut(&mut work.allowed[..VPK_WORDS]);
    let packs = Packs {
        acc,
        kpk: kpk.as_mut_ptr(),
        vpk: vpk.as_mut_ptr(),
    };
    let mut c0 = 0;
    while c0 < d.sq {
        let rows = (tiles * QT).min(d.sq - c0);
        // SAFETY: the chunk reads rows `c0 .. c0 + rows` of the queries and writes the same
        // rows of the outputs (`p.check` checked both against `dims`); `acc` holds
        // `tiles · 16 · dv ≥ ⌈rows/16⌉ · 16 · dv` values (`tiles` from its length), `kpk`
        // and `vpk` their full sizes (checked above).
        unsafe { attention_chunk(qp, out, packs, p, c0, rows) };
        c0 += rows;
    }
    true
}

/// Whether the reduced-precision attention kernels (this one, `amx_attention`'s) take `p`
/// as far as its shape and mask go: queries, keys and features, heads at most `max_head`
/// wide, a mask that is only its pattern (none, causal, a sliding window), no soft-cap and
/// no sink.
pub(super) fn plain(p: &super::args::Problem<'_, f32>, max_head: usize) -> bool {
    let (d, m) = (p.dims, p.mask);
    d.sq > 0
        && d.skv > 0
        && (1..=max_head).contains(&d.dk)
        && (1..=max_head).contains(&d.dv)
        && p.softcap.is_none()
        && p.sink.is_none()
        && m.attend.is_none()
        && m.block.is_none()
        && m.pad.is_none()
        && m.additive.is_none()
        && m.alibi.is_none()
}

/// The bits of the largest `|x|` over `rows × cols` values (column `c` at `c · ld`; at least
/// those of infinity when a value is not finite: the absolute value's bits order the same way
/// as the values, and NaN's lie above infinity's), and of the smallest largest `|x|` of a row
/// other than 0 (`u32::MAX` when every row is zeros). Every column `c < cols` holds `rows`
/// values at `c · ld` (the slicing checks it).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row_range(x: &[f32], rows: usize, cols: usize, ld: usize) -> (u32, u32) {
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let (mut max, mut min) = (_mm512_setzero_si512(), _mm512_set1_epi32(-1));
    let mut i = 0;
    while i < rows {
        let lanes = row_mask(L.min(rows - i));
        let mut m = _mm512_setzero_si512();
        for c in 0..cols {
            let col = &x[c * ld + i..c * ld + i + L.min(rows - i)];
            // SAFETY: the lanes of `col` (the rest masked off).
            let v = unsafe { _mm512_maskz_loadu_epi32(lanes, col.as_ptr().cast()) };
            m = _mm512_max_epu32(m, _mm512_and_si512(v, abs));
        }
        max = _mm512_max_epu32(max, m);
        let nonzero = _mm512_test_epi32_mask(m, m);
        min = _mm512_mask_min_epu32(min, nonzero, min, m);
        i += L;
    }
    (_mm512_reduce_max_epu32(max), _mm512_reduce_min_epu32(min))
}

/// [`attention`]'s working memory, in `work`: the running sums of a chunk's tiles (`acc`),
/// and a packed block of keys ([`KPK_WORDS`]) and of values ([`VPK_WORDS`]).
#[derive(Clone, Copy)]
struct Packs {
    acc: *mut f32,
    kpk: *mut u32,
    vpk: *mut u32,
}

/// The state of one tile of a chunk of [`attention`] (and of `amx_attention`'s).
#[derive(Clone, Copy)]
pub(super) struct TileState {
    /// Each lane's first allowed key and one past its last (an empty row: `lo ≥ hi`).
    pub(super) lo: __m512i,
    pub(super) hi: __m512i,
    /// The keys any live lane sees: `lo_any .. hi_any`.
    pub(super) lo_any: usize,
    pub(super) hi_any: usize,
    /// Every live lane sees `lo_all .. hi_all` (empty when `lo_all ≥ hi_all`).
    pub(super) lo_all: usize,
    pub(super) hi_all: usize,
    /// Running maximum and denominator, a query per lane.
    pub(super) mx: __m512,
    pub(super) l: __m512,
}

/// The states of the tiles of rows `c0 .. c0 + rows` (`⌈rows/16⌉ ≤ N` tiles of 16
/// queries, a query per lane; lanes past the rows see no key) from the mask's pattern, and the
/// keys any of them sees, `jlo .. jhi` (empty when `jlo ≥ jhi`).
#[target_feature(enable = "avx512f")]
pub(super) fn tile_states<const N: usize>(
    p: &super::args::Problem<'_, f32>,
    c0: usize,
    rows: usize,
) -> ([TileState; N], usize, usize) {
    let d = p.dims;
    let m = p.mask;
    let nt = rows.div_ceil(QT);
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let empty = TileState {
        lo: _mm512_setzero_si512(),
        hi: _mm512_setzero_si512(),
        lo_any: d.skv,
        hi_any: 0,
        lo_all: 0,
        hi_all: d.skv,
        mx: neg_inf,
        l: _mm512_setzero_ps(),
    };
    let mut st = [empty; N];
    let (mut jlo, mut jhi) = (d.skv, 0);
    for (t, ts) in st.iter_mut().enumerate().take(nt) {
        let live = QT.min(rows - t * QT);
        let (mut lo, mut hi) = ([0i32; QT], [0i32; QT]);
        for i in 0..live {
            let (a, b) = m
                .pattern
                .key_range(m.q_offset + c0 + t * QT + i, m.sq_total, d.skv);
            lo[i] = a as i32;
            hi[i] = b as i32;
            if a < b {
                ts.lo_any = ts.lo_any.min(a);
                ts.hi_any = ts.hi_any.max(b);
            }
            ts.lo_all = ts.lo_all.max(a);
            ts.hi_all = ts.hi_all.min(b);
        }
        // Lanes past the rows see nothing (their results are never stored).
        // SAFETY: 16 `i32` each.
        unsafe {
            ts.lo = _mm512_loadu_si512(lo.as_ptr().cast());
            ts.hi = _mm512_loadu_si512(hi.as_ptr().cast());
        }
        jlo = jlo.min(ts.lo_any);
        jhi = jhi.max(ts.hi_any);
    }
    (st, jlo, jhi)
}

/// One chunk of [`attention`]: rows `c0 .. c0 + rows` (`⌈rows/16⌉ ≤ CHUNK_TILES` tiles whose
/// packed queries fit [`QPK_WORDS`]).
///
/// # Safety
/// `q` holds the queries and `out` the outputs of `p.dims` (the same memory in place: the
/// chunk packs all its queries before it writes an output); `w.acc` holds
/// `⌈rows/16⌉ · 16 · dv` values, `w.kpk` [`KPK_WORDS`] and `w.vpk` [`VPK_WORDS`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn attention_chunk(
    q: *const f32,
    out: *mut f32,
    w: Packs,
    p: &super::args::Problem<'_, f32>,
    c0: usize,
    rows: usize,
) {
    let d = p.dims;
    let nt = rows.div_ceil(QT);
    let dk2 = d.dk.div_ceil(2);
    let (mut st, jlo, jhi) = tile_states::<CHUNK_TILES>(p, c0, rows);
    debug_assert!(nt <= CHUNK_TILES && nt * dk2 * QT <= QPK_WORDS);
    let mut qpk = [0u32; QPK_WORDS];
    let Packs { acc, kpk, vpk } = w;
    // SAFETY: every pointer below stays inside the operands of the contract, `qpk` and
    // `w`'s buffers (sizes from `dk, dv ≤ MAX_HEAD` and the chunk's contract); lanes past `rows` and keys
    // past the block are masked off in every load and store of the caller's memory.
    unsafe {
        let order = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        // The chunk's queries as pairs of features: tile `t`, pair `e2` at `(t·dk2 + e2)·16`.
        for t in 0..nt {
            let (i0, n) = (c0 + t * QT, QT.min(rows - t * QT));
            pack_panel::<1>(q, d.ldq, i0, n, 0, d.dk, qpk.as_mut_ptr().add(t * dk2 * QT));
        }
        for e in 0..nt * d.dv {
            _mm512_storeu_ps(acc.add(e * QT), _mm512_setzero_ps());
        }
        // Blocks start at multiples of 32 keys and end at the last key, whatever the chunk: a
        // query's result does not depend on which queries share its call (the threads of
        // `Parallel` split the queries), as a block's keys it may not see add exact zeros.
        let mut j0 = jlo / KBF * KBF;
        while j0 < jhi {
            let nb = KBF.min(d.skv - j0);
            // Keys `j0 .. j0 + nb` as pairs of features: `kpk[e2·32 + j]`.
            pack_panel::<2>(p.k.as_ptr(), d.ldkv, j0, nb, 0, d.dk, kpk);
            // Values `j0 .. j0 + nb` of each column as pairs of keys, already in key order:
            // `vpk[e·16 + j2]`.
            let (m0, m1) = (row_mask(nb.min(16)), row_mask(nb.saturating_sub(16)));
            for e in 0..d.dv {
                let col = p.v.as_ptr().wrapping_add(j0 + e * d.ldkv);
                let a = _mm512_maskz_loadu_ps(m0, col);
                let b = _mm512_maskz_loadu_ps(m1, col.wrapping_add(16));
                _mm512_storeu_si512(
                    vpk.add(e * (KBF / 2)).cast(),
                    core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a)),
                );
            }
            let block = Block {
                kpk,
                vpk,
                j0,
                nb,
                dk2,
                dv: d.dv,
                scale: p.scale,
                order,
            };
            for (t, ts) in st.iter_mut().enumerate().take(nt) {
                if ts.hi_any <= j0 || ts.lo_any >= j0 + nb {
                    continue;
                }
                block_tile(
                    &block,
                    qpk.as_ptr().add(t * dk2 * QT),
                    acc.add(t * d.dv * QT),
                    ts,
                );
            }
            j0 += nb;
        }
        // Outputs: the sums over the denominator (0 for a row that saw no key).
        for (t, ts) in st.iter().enumerate().take(nt) {
            let lanes = row_mask(QT.min(rows - t * QT));
            let has = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ts.l, _mm512_setzero_ps());
            let inv = _mm512_maskz_div_ps(has, _mm512_set1_ps(1.0), ts.l);
            for e in 0..d.dv {
                let y = _mm512_mul_ps(_mm512_loadu_ps(acc.add((t * d.dv + e) * QT)), inv);
                _mm512_mask_storeu_ps(out.wrapping_add(c0 + t * QT + e * d.ldq), lanes, y);
            }
        }
    }
}

/// A packed block of keys and values, shared by the tiles of a chunk.
struct Block {
    /// `dk2` pairs of features × 32 keys.
    kpk: *const u32,
    /// `dv` columns × 16 pairs of keys.
    vpk: *const u32,
    /// The block's first key and its key count (`nb ≤ 32`).
    j0: usize,
    nb: usize,
    dk2: usize,
    dv: usize,
    scale: f32,
    /// [`INTERLEAVE`].
    order: __m512i,
}

/// One tile's step over one block: scores, the online softmax update of `ts`, and `P·V`
/// into the tile's running sums `acc` (`dv` columns of 16).
///
/// # Safety
/// `qpk` holds the tile's `dk2 · 16` packed query words, `acc` its `dv · 16` sums; `b`'s
/// pointers hold its packed keys and values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block_tile(b: &Block, qpk: *const u32, acc: *mut f32, ts: &mut TileState) {
    // SAFETY: `Avx512F32` needs AVX-512F, which this function is compiled with and its
    // callers guarantee.
    let s = unsafe { super::x86::avx512_f32() };
    use super::simd::Simd;
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let scale = _mm512_set1_ps(b.scale);
    // Every lane sees the whole block: no per-key masks.
    let whole = ts.lo_all <= b.j0 && b.j0 + b.nb <= ts.hi_all;
    let groups = b.nb.div_ceil(16);
    let mut scores = [neg_inf; KBF];
    // SAFETY: reads of `qpk` (`dk2 · 16` words), `kpk` (`dk2 · 32`), `vpk` (`dv · 16`) and
    // `acc` (`dv · 16`) inside the contract.
    unsafe {
        // Scores of 16 keys at a time: 16 accumulators over the pairs of features.
        for g in 0..groups {
            let mut sc = [_mm512_setzero_ps(); 16];
            for e2 in 0..b.dk2 {
                let qv = bh(_mm512_loadu_si512(qpk.add(e2 * QT).cast()));
                let kb = b.kpk.add(e2 * KBF + 16 * g);
                for (j, a) in sc.iter_mut().enumerate() {
                    let kv = _mm512_set1_epi32(*kb.add(j) as i32);
                    *a = _mm512_dpbf16_ps(*a, qv, bh(kv));
                }
            }
            for (j, a) in sc.iter().enumerate() {
                let k = 16 * g + j;
                let z = _mm512_mul_ps(*a, scale);
                scores[k] = if k >= b.nb {
                    neg_inf
                } else if whole {
                    z
                } else {
                    // Allowed where lo ≤ key < hi.
                    let kv = _mm512_set1_epi32((b.j0 + k) as i32);
                    let ok =
                        _mm512_cmple_epi32_mask(ts.lo, kv) & _mm512_cmpgt_epi32_mask(ts.hi, kv);
                    _mm512_mask_blend_ps(ok, neg_inf, z)
                };
            }
        }
        // Online softmax over the block.
        let Step {
            new_mx,
            live,
            shift,
            corr,
        } = softmax_step(ts, &scores[..16 * groups]);
        let mut l = _mm512_mul_ps(ts.l, corr);
        let kq = b.nb.div_ceil(2);
        let mut ppk = [_mm512_setzero_si512(); KBF / 2];
        for (j2, pk) in ppk.iter_mut().enumerate().take(kq) {
            let pe = s.exp(_mm512_sub_ps(scores[2 * j2], shift));
            let po = s.exp(_mm512_sub_ps(scores[2 * j2 + 1], shift));
            let (pe, po) = (_mm512_maskz_mov_ps(live, pe), _mm512_maskz_mov_ps(live, po));
            l = _mm512_add_ps(l, _mm512_add_ps(pe, po));
            let both = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(po, pe));
            *pk = _mm512_permutexvar_epi16(b.order, both);
        }
        ts.mx = new_mx;
        ts.l = l;
        // P·V, 16 value columns at a time, into the running sums (scaled by `corr`).
        let mut e0 = 0;
        while e0 + PV_COLS <= b.dv {
            pv_cols::<PV_COLS>(
                acc.add(e0 * QT),
                b.vpk.add(e0 * (KBF / 2)),
                &ppk[..kq],
                corr,
            );
            e0 += PV_COLS;
        }
        while e0 < b.dv {
            let w = 4.min(b.dv - e0);
            match w {
                4 => pv_cols::<4>(
                    acc.add(e0 * QT),
                    b.vpk.add(e0 * (KBF / 2)),
                    &ppk[..kq],
                    corr,
                ),
                3 => pv_cols::<3>(
                    acc.add(e0 * QT),
                    b.vpk.add(e0 * (KBF / 2)),
                    &ppk[..kq],
                    corr,
                ),
                2 => pv_cols::<2>(
                    acc.add(e0 * QT),
                    b.vpk.add(e0 * (KBF / 2)),
                    &ppk[..kq],
                    corr,
                ),
                _ => pv_cols::<1>(
                    acc.add(e0 * QT),
                    b.vpk.add(e0 * (KBF / 2)),
                    &ppk[..kq],
                    corr,
                ),
            }
            e0 += w;
        }
    }
}

/// The online softmax's step over a block of scores (a query per lane, masked keys at −∞).
#[derive(Clone, Copy)]
pub(super) struct Step {
    /// The running maximum after the block.
    pub(super) new_mx: __m512,
    /// The lanes that have seen a key: a lane that has not keeps maximum −∞, its weights 0
    /// and its correction 1 (never `e^(−∞ − (−∞))`).
    pub(super) live: __mmask16,
    /// What the block's scores are shifted by before `exp`: the new maximum (0 where not
    /// live).
    pub(super) shift: __m512,
    /// `e^(old max − new max)`, the factor of the sums so far (1 where not live).
    pub(super) corr: __m512,
}

/// [`Step`] for `scores` after the tile state `ts`.
#[target_feature(enable = "avx512f")]
pub(super) fn softmax_step(ts: &TileState, scores: &[__m512]) -> Step {
    // SAFETY: `Avx512F32` needs AVX-512F, which this function is compiled with.
    let s = unsafe { super::x86::avx512_f32() };
    use super::simd::Simd;
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let bm = scores.iter().fold(neg_inf, |m, z| _mm512_max_ps(m, *z));
    let new_mx = _mm512_max_ps(ts.mx, bm);
    let live = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(new_mx, neg_inf);
    let shift = _mm512_mask_blend_ps(live, _mm512_setzero_ps(), new_mx);
    let corr = _mm512_mask_blend_ps(
        live,
        _mm512_set1_ps(1.0),
        s.exp(_mm512_sub_ps(ts.mx, shift)),
    );
    Step {
        new_mx,
        live,
        shift,
        corr,
    }
}

/// `acc[c] = acc[c] · corr + Σ_j2 P[j2] · V[c, j2]` for `N` value columns: `acc` holds `N`
/// columns of 16 sums, `vpk` `N` columns of 16 pairs of values, `ppk` the block's pairs of
/// weights (a query per lane).
///
/// # Safety
/// `acc` holds `16 · N` values and `vpk` `16 · N` words.
#[inline(always)]
unsafe fn pv_cols<const N: usize>(acc: *mut f32, vpk: *const u32, ppk: &[__m512i], corr: __m512) {
    // SAFETY: inside the contract; the caller's target features (AVX-512F, BF16) are this
    // always-inlined function's.
    unsafe {
        let mut av = [_mm512_setzero_ps(); N];
        for (c, a) in av.iter_mut().enumerate() {
            *a = _mm512_mul_ps(_mm512_loadu_ps(acc.add(c * QT)), corr);
        }
        for (j2, pk) in ppk.iter().enumerate() {
            let pv = bh(*pk);
            for (c, a) in av.iter_mut().enumerate() {
                let vv = _mm512_set1_epi32(*vpk.add(c * (KBF / 2) + j2) as i32);
                *a = _mm512_dpbf16_ps(*a, pv, bh(vv));
            }
        }
        for (c, a) in av.iter().enumerate() {
            _mm512_storeu_ps(acc.add(c * QT), *a);
        }
    }
}
