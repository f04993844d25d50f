//! Attention for layers with `i8` weights in AMX tile products: `QKᵀ` and `P·V` as 8-bit
//! integer products summed exactly in `i32`, the online softmax in `f32`. The kernel of
//! `Table::attention_i8` on [`Kernel::Avx512Bf16`](super::Kernel::Avx512Bf16) where the CPU
//! has AMX-INT8 (and Linux grants the tiles).
//!
//! **Scores.** Each query and each key is quantized as a projection's tokens are (per row:
//! `a = max_e |x_e|`, `x̂ = round(x·127/a)` within `±127`, ties to even), so a score is
//! `f(Σ_e q̂_e·k̂_e) · ((a_q/127) · ((a_k/127)·scale))`, the sum exact. A tile product takes
//! 16 keys (the `A` operand, a key's features per row) against 16 queries (`B`, quads of
//! features): a 16 × 16 tile of sums, one row of 16 queries per key, which is the layout
//! the online softmax works in (a query per lane, as in `bf16::attention`).
//!
//! **`P·V`.** Each key's values are quantized with their own scale (`d_j = max_e |v_je| /
//! 127`: no output depends on a value its query does not see). In a block of 64 keys, the
//! softmax's weights `p_j = e^(s_j − m)` times those scales, `u_j = p_j·d_j`, are rounded to
//! 16-bit fixed point against the block's largest, `w_j = round(65535·u_j / max u)` (each
//! block its own scale, so a long tail of small weights keeps its precision), and split
//! into bytes, `w = 256·h + l`. Two tile products (`tdpbsud`: signed values `A`, 16 features
//! × 64 keys, by unsigned weights `B`) sum `Σ h·v̂` and `Σ l·v̂`; `256·Σh·v̂ + Σl·v̂` is the
//! exact `Σ w·v̂` (below `2³¹`), rounded once to `f32` and scaled by `max u / 65535` into the
//! running sums. The denominator sums the `f32` weights `p_j` themselves.
//!
//! What this changes against the `f32` attention on the same inputs (the accuracy contract,
//! stated in the docs of [`crate::Weight`]): the rounding of `q` and `k` moves a score by at
//! most `Δ` (their half steps times the other's sum of magnitudes, and the product of the
//! two), which moves each weight by a factor within `e^(±2Δ)`; the values' rounding adds at
//! most half a step of the largest key's, `(½ + 2⁻¹⁴)·max|v|/127`, the weights' at most
//! `2⁻¹⁰·max|v|` (64 half steps of `max u` per block, against a denominator of at least each
//! block's largest weight), and the `f32` sums over `n` keys, a block at a time, at most
//! `n·2⁻²⁸·max|v|`. Rows whose scales would overflow are declined (queries and keys below
//! `2⁻¹⁰⁰`, values below `2⁻⁶⁰`: the latter keeps `65535 / max u` finite for any block that
//! matters).

#![allow(
    // Index loops over lanes, keys and features read like the math they implement.
    clippy::needless_range_loop
)]

use core::arch::asm;
use core::arch::x86_64::*;

use super::amx::{Config, Tiles, pack_rows};
use super::args::{Problem, QueryIo, WorkRef};
use super::bf16::{Step, TileState, plain, row_range, softmax_step, tile_states};
use super::int8::{quad_word, quantize_lanes, row_mask, token_scales};

/// Queries per tile (a vector of lanes), and keys per tile of scores.
const L: usize = 16;
/// Keys per block: one step of the `P·V` products (64 bytes of weights per query).
const KB: usize = 64;
/// Tiles of 16 queries per chunk, at most (fewer when the working memory holds the running
/// sums of fewer); their packed queries are on the stack (16 KiB).
const TILES: usize = 16;
/// The widest head (`dk`, `dv`) [`attention`] takes; wider heads take the `f32` kernel.
pub(crate) const MAX_HEAD: usize = 64;
/// The weights in 16-bit fixed point against a block's largest: `w = round(P_ONE · u / max u)`.
const P_ONE: f32 = 65535.0;

/// `N` rows of 64 bytes, 64-byte aligned (a tile's rows, or several tiles').
#[repr(C, align(64))]
struct Lines<const N: usize>([[u32; L]; N]);

impl<const N: usize> Lines<N> {
    const fn zeroed() -> Self {
        Self([[0; L]; N])
    }

    /// Row `r`'s first byte (a pointer to the whole buffer: a tile's loads and stores reach
    /// the rows after it).
    fn row(&mut self, r: usize) -> *mut u8 {
        self.0.as_mut_ptr().wrapping_add(r).cast()
    }
}

/// Bytes from one tile row to the next in every buffer.
const STRIDE: usize = 64;

/// The smallest largest magnitude of a row of queries or keys (other than 0) the kernel
/// quantizes, `2⁻¹⁰⁰`: below about `3.7·10⁻³⁷` the row's `127 / a` would overflow.
const TINY_BITS: u32 = (127 - 100) << 23;
/// The same for a key's values, `2⁻⁶⁰`: it keeps a block's largest weight times its value
/// scale, `max u`, above [`U_MIN`] unless every weight of the block is below `2⁻⁴³`.
const TINY_VALUE_BITS: u32 = (127 - 60) << 23;
/// The smallest `max u` a block's weights are rounded against, `2⁻¹¹⁰` (`65535 / max u`
/// stays finite); a block below it adds nothing (each of its weights below `2⁻⁴³`).
const U_MIN: f32 = f32::from_bits((127 - 110) << 23);

/// The working buffers of a chunk: the running sums, and the packed keys and values, in the
/// working memory the caller gives the `f32` kernel (its running sums, and its blocks of
/// scores and key masks, which this kernel does not otherwise use), the rest on the stack
/// (about 26 KiB).
struct Bufs<'w> {
    /// The chunk's queries, tile `t`'s `B` operand at rows `16t ..` (quad `r` of features
    /// per row, a query per word).
    qpk: Lines<{ TILES * L }>,
    /// A block's keys as `A` rows (a key's features per row).
    kpk: &'w mut Lines<KB>,
    /// A block's values as `A` rows (a feature's 64 keys per row; rows past `dv` zero).
    vpk: &'w mut Lines<MAX_HEAD>,
    /// A tile's weights over the block, high and low bytes (`B`: quad of keys per row).
    phi: Lines<L>,
    plo: Lines<L>,
    /// Sums stored from the tiles: a block's scores (a key per row), then `P·V`'s two
    /// halves.
    sums: Lines<KB>,
    hi: Lines<L>,
    lo: Lines<L>,
    /// Per block key `j`: `(a_k/127)·scale`, and its values' `max_e |v_je| / 127`.
    kscale: [f32; KB],
    vscale: [f32; KB],
    /// Per tile: the queries' `a/127`.
    qscale: [__m512; TILES],
    /// Running sums: tile `t`, value column `e` at `(t·dv + e)·16`.
    acc: &'w mut [f32],
}

/// `N` lines of `work` from its first 64-byte boundary, zeroed (`None` if they do not fit).
fn lines<const N: usize>(work: &mut [f32]) -> Option<&mut Lines<N>> {
    let skip = work.as_ptr().align_offset(STRIDE);
    let bytes = core::mem::size_of::<Lines<N>>();
    if skip == usize::MAX || work.len().saturating_sub(skip) * 4 < bytes {
        return None;
    }
    let at = &mut work[skip..];
    at[..bytes / 4].fill(0.0);
    // SAFETY: `at` starts on a 64-byte boundary and holds `size_of::<Lines<N>>()` bytes
    // (checked above), now zeros, which are a valid `Lines<N>` (plain words); the borrow of
    // `work` keeps them from being used any other way while the reference lives.
    Some(unsafe { &mut *at.as_mut_ptr().cast::<Lines<N>>() })
}

/// Streaming attention for one head with `QKᵀ` and `P·V` in `i8` tile products, for layers
/// with `i8` weights (see [`crate::Weight`]). Returns `false`, having written nothing, for
/// what it does not take (the caller then runs the `f32` kernel): no queries, heads wider
/// than [`MAX_HEAD`], a mask with anything but its pattern, soft-capping or a sink,
/// non-finite queries, keys or values, magnitudes whose scores or sums could overflow, or
/// working memory too small for one tile's running sums, a block of keys and one of values
/// (4 KiB each).
///
/// The queries go in chunks of up to [`TILES`] tiles of 16 (as many as the working memory
/// holds the running sums of), quantized and packed once.
/// Each chunk walks the keys its pattern lets any of its queries see in blocks of 64 (from a
/// multiple of 64: a query's result does not depend on the queries that share its call),
/// quantizing and packing the block's keys and values once for all its tiles.
///
/// # Safety
/// The CPU runs AVX-512F, AVX512-BW, AMX-TILE and AMX-INT8, and the OS lets this process use
/// the tile data (`x86::amx_available`).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn attention(
    io: &mut QueryIo<'_, f32>,
    p: &Problem<'_, f32>,
    work: &mut WorkRef<'_, f32>,
) -> bool {
    let d = p.dims;
    if !plain(p, MAX_HEAD) {
        return false;
    }
    let tiles = (work.acc.len() / (L * d.dv)).min(TILES);
    let (Some(kpk), Some(vpk)) = (lines::<KB>(work.p), lines::<MAX_HEAD>(work.allowed)) else {
        return false;
    };
    if tiles == 0 {
        return false;
    }
    p.check(io);
    // Finite operands; magnitudes far from overflow: |score| ≤ scale·dk·max|q|·max|k| and
    // every sum of values ≤ skv·max|v| stay below 2¹⁰⁰; no row whose quantization would
    // overflow (a largest magnitude below 2⁻¹⁰⁰ but not 0; for values 2⁻⁶⁰).
    // SAFETY: the CPU has AVX-512F (this function's features); every column `c` of each
    // operand holds its rows at `c · ld`, inside the slice (`p.check`).
    let ranges = unsafe {
        [
            row_range(io.queries(), d.sq, d.dk, d.ldq),
            row_range(p.k, d.skv, d.dk, d.ldkv),
            row_range(p.v, d.skv, d.dv, d.ldkv),
        ]
    };
    let tiny = [TINY_BITS, TINY_BITS, TINY_VALUE_BITS];
    if ranges
        .iter()
        .zip(tiny)
        .any(|(&(max, min), tiny)| max >= f32::INFINITY.to_bits() || min < tiny)
    {
        return false;
    }
    let [qmax, kmax, vmax] = ranges.map(|(max, _)| f64::from(f32::from_bits(max)));
    // 2¹⁰⁰ (no `powi` without `std`).
    let limit = f64::from(f32::from_bits((127 + 100) << 23));
    let score_bound = f64::from(p.scale.abs()) * d.dk as f64 * qmax * kmax;
    if !(score_bound < limit && vmax * (d.skv as f64) < limit) {
        return false;
    }
    let dk4 = d.dk.div_ceil(4);
    let (q, out) = io.pointers();
    let mut bufs = Bufs {
        qpk: Lines::zeroed(),
        kpk,
        vpk,
        phi: Lines::zeroed(),
        plo: Lines::zeroed(),
        sums: Lines::zeroed(),
        hi: Lines::zeroed(),
        lo: Lines::zeroed(),
        kscale: [0.0; KB],
        vscale: [0.0; KB],
        qscale: [_mm512_setzero_ps(); TILES],
        acc: &mut work.acc[..tiles * L * d.dv],
    };
    // Tiles: `tmm0` scores (16 keys × 16 queries of `i32`), `tmm1`, `tmm2` the two halves of
    // `P·V` (16 features × 16 queries), `tmm3` and `tmm7` the weights' low and high bytes
    // (16 quads of keys × 16 queries), `tmm4` keys (16 × `4·dk4` bytes), `tmm5` queries
    // (`dk4` quads × 16 queries), `tmm6` values (16 features × 64 keys).
    let kbytes = (4 * dk4) as u8;
    let config = Config::shaped(
        [16, 16, 16, 16, 16, dk4 as u8, 16, 16],
        [64, 64, 64, 64, kbytes, 64, 64, 64],
    );
    // SAFETY: the caller's promise.
    let _tiles = unsafe { Tiles::configure_as(&config) };
    let mut c0 = 0;
    while c0 < d.sq {
        let rows = (tiles * L).min(d.sq - c0);
        // SAFETY: the chunk reads rows `c0 .. c0 + rows` of the queries and writes the same
        // rows of the outputs (`p.check` checked both against `dims`); the tiles are
        // configured for `dk4`.
        unsafe { chunk(q, out, p, dk4, &mut bufs, c0, rows) };
        c0 += rows;
    }
    true
}

/// One chunk of [`attention`]: rows `c0 .. c0 + rows` (`⌈rows/16⌉ ≤ TILES` tiles).
///
/// # Safety
/// `q` holds the queries and `out` the outputs of `p.dims` (the same memory in place: the
/// chunk packs all its queries before it writes an output); the tiles are configured as
/// [`attention`] configures them.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn chunk(
    q: *const f32,
    out: *mut f32,
    p: &Problem<'_, f32>,
    dk4: usize,
    b: &mut Bufs<'_>,
    c0: usize,
    rows: usize,
) {
    let d = p.dims;
    let nt = rows.div_ceil(L);
    let (mut st, jlo, jhi) = tile_states::<TILES>(p, c0, rows);
    let signed = _mm512_setzero_si512();
    // SAFETY: reads of the chunk's rows of the queries and of the keys and values (masked
    // to the rows, keys and features inside `dims`), writes inside `b` and, at the end, the
    // chunk's rows of the outputs (masked).
    unsafe {
        // The chunk's queries: tile `t`'s quads of features as `B` rows `16t ..`.
        for t in 0..nt {
            let i0 = c0 + t * L;
            let lanes = row_mask(L.min(rows - t * L));
            let tokens = token_scales(q, d.ldq, d.dk, i0, [lanes, 0]);
            b.qscale[t] = tokens.sx[0];
            for r in 0..dk4 {
                let word = quad_word(q, d.ldq, d.dk, i0, lanes, tokens.r[0], 4 * r, signed);
                _mm512_store_si512(b.qpk.row(t * L + r).cast(), word);
            }
        }
        b.acc[..nt * d.dv * L].fill(0.0);
        let mut j0 = jlo / KB * KB;
        while j0 < jhi {
            let nb = KB.min(d.skv - j0);
            // Keys `j0 .. j0 + nb` as `A` rows, in halves of 32 keys (rows past `nb` zero; a
            // block of 32 keys or fewer has no second half, and its products never read it).
            for h in 0..nb.div_ceil(32) {
                let n = (nb - 32 * h).min(32);
                let masks = [row_mask(n.min(L)), row_mask(n.saturating_sub(L))];
                let i0 = j0 + 32 * h;
                let tokens = token_scales(p.k.as_ptr(), d.ldkv, d.dk, i0, masks);
                pack_rows(
                    p.k.as_ptr(),
                    d.ldkv,
                    d.dk,
                    i0,
                    masks,
                    &tokens,
                    (0, dk4, 1),
                    b.kpk.row(32 * h).cast(),
                );
                for v in 0..2 {
                    let ks = _mm512_mul_ps(tokens.sx[v], _mm512_set1_ps(p.scale));
                    _mm512_storeu_ps(b.kscale.as_mut_ptr().add(32 * h + L * v), ks);
                }
            }
            // Values `j0 .. j0 + nb`, each key's quantized with its own scale (so no output
            // depends on a value its query does not see), as `A` rows: a feature's 64 keys per
            // row. (The bytes of keys past `nb` meet weights of 0.)
            for g in 0..nb.div_ceil(L) {
                let (j, lanes) = (j0 + g * L, row_mask((nb - g * L).min(L)));
                let keys = token_scales(p.v.as_ptr(), d.ldkv, d.dv, j, [lanes, 0]);
                _mm512_storeu_ps(b.vscale.as_mut_ptr().add(g * L), keys.sx[0]);
                for e in 0..d.dv {
                    let col = p.v.as_ptr().add(e * d.ldkv + j);
                    let x = _mm512_maskz_loadu_ps(lanes, col);
                    let bytes = _mm512_cvtepi32_epi8(quantize_lanes(_mm512_mul_ps(x, keys.r[0])));
                    _mm_store_si128(b.vpk.row(e).add(g * L).cast(), bytes);
                }
            }
            for (t, ts) in st.iter_mut().enumerate().take(nt) {
                if ts.hi_any <= j0 || ts.lo_any >= j0 + nb {
                    continue;
                }
                block_tile(b, t, ts, (j0, nb), d.dv);
            }
            j0 += nb;
        }
        // Outputs: the sums over the denominator (0 for a row that saw no key).
        for (t, ts) in st.iter().enumerate().take(nt) {
            let lanes = row_mask(L.min(rows - t * L));
            let has = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ts.l, _mm512_setzero_ps());
            let inv = _mm512_maskz_div_ps(has, _mm512_set1_ps(1.0), ts.l);
            for e in 0..d.dv {
                let acc = _mm512_loadu_ps(b.acc[(t * d.dv + e) * L..].as_ptr());
                let y = _mm512_mul_ps(acc, inv);
                _mm512_mask_storeu_ps(out.wrapping_add(c0 + t * L + e * d.ldq), lanes, y);
            }
        }
    }
}

/// The word of four byte lanes: byte `j` of each lane from the low byte of `b[j]`'s.
#[target_feature(enable = "avx512f")]
#[inline]
fn bytes_word(b: [__m512i; 4]) -> __m512i {
    _mm512_or_si512(
        _mm512_or_si512(b[0], _mm512_slli_epi32::<8>(b[1])),
        _mm512_or_si512(_mm512_slli_epi32::<16>(b[2]), _mm512_slli_epi32::<24>(b[3])),
    )
}

/// Tile `t`'s step over the packed block of keys `j0 .. j0 + nb`: scores, the online softmax
/// update of `ts`, and `P·V` into the tile's running sums.
///
/// # Safety
/// The tiles are configured as [`attention`] configures them; `b` holds the block's packed
/// keys and values and tile `t`'s packed queries.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block_tile(
    b: &mut Bufs<'_>,
    t: usize,
    ts: &mut TileState,
    (j0, nb): (usize, usize),
    dv: usize,
) {
    // SAFETY: `Avx512F32` needs AVX-512F, which this function is compiled with and its
    // callers guarantee.
    let s = unsafe { super::x86::avx512_f32() };
    use super::simd::Simd;
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let alpha = b.qscale[t];
    // Every lane sees the whole block: no per-key masks.
    let whole = ts.lo_all <= j0 && j0 + nb <= ts.hi_all;
    let mut scores = [neg_inf; KB];
    // SAFETY: the tile loads and stores read and write 16 rows of 64 bytes, `STRIDE` apart,
    // inside `b`'s buffers (the tiles' shapes are at most that); vector loads inside `b`.
    unsafe {
        let qt = b.qpk.row(t * L);
        asm!(
            "tileloadd tmm5, [{q} + {s} * 1]",
            q = in(reg) qt,
            s = in(reg) STRIDE,
            out("tmm5") _,
            options(nostack, readonly, preserves_flags)
        );
        if nb == KB {
            // A whole block: its four groups of 16 keys at once, into `tmm0 ..= tmm3` (`tmm1`
            // to `tmm3` are free until the weights are packed), then the four stores.
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tileloadd tmm4, [{k} + {s} * 1]",
                "tdpbssd tmm0, tmm4, tmm5",
                "tileloadd tmm4, [{k} + {s} * 1 + 1024]",
                "tdpbssd tmm1, tmm4, tmm5",
                "tileloadd tmm4, [{k} + {s} * 1 + 2048]",
                "tdpbssd tmm2, tmm4, tmm5",
                "tileloadd tmm4, [{k} + {s} * 1 + 3072]",
                "tdpbssd tmm3, tmm4, tmm5",
                "tilestored [{o} + {s} * 1], tmm0",
                "tilestored [{o} + {s} * 1 + 1024], tmm1",
                "tilestored [{o} + {s} * 1 + 2048], tmm2",
                "tilestored [{o} + {s} * 1 + 3072], tmm3",
                k = in(reg) b.kpk.row(0),
                o = in(reg) b.sums.row(0),
                s = in(reg) STRIDE,
                out("tmm0") _,
                out("tmm1") _,
                out("tmm2") _,
                out("tmm3") _,
                out("tmm4") _,
                options(nostack, preserves_flags)
            );
        } else {
            for g in 0..nb.div_ceil(L) {
                asm!(
                    "tilezero tmm0",
                    "tileloadd tmm4, [{k} + {s} * 1]",
                    "tdpbssd tmm0, tmm4, tmm5",
                    "tilestored [{o} + {s} * 1], tmm0",
                    k = in(reg) b.kpk.row(g * L),
                    o = in(reg) b.sums.row(g * L),
                    s = in(reg) STRIDE,
                    out("tmm0") _,
                    out("tmm4") _,
                    options(nostack, preserves_flags)
                );
            }
        }
        for k in 0..nb {
            let sum = _mm512_load_si512(b.sums.0[k].as_ptr().cast());
            let sc = _mm512_mul_ps(alpha, _mm512_set1_ps(b.kscale[k]));
            let z = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), sc);
            scores[k] = if whole {
                z
            } else {
                // Allowed where lo ≤ key < hi.
                let kv = _mm512_set1_epi32((j0 + k) as i32);
                let ok = _mm512_cmple_epi32_mask(ts.lo, kv) & _mm512_cmpgt_epi32_mask(ts.hi, kv);
                _mm512_mask_blend_ps(ok, neg_inf, z)
            };
        }
        // Online softmax over the block.
        let Step {
            new_mx,
            live,
            shift,
            corr,
        } = softmax_step(ts, &scores[..nb]);
        // The weights `p_j = e^(s_j − m)` (0 for keys past the block) times their keys' value
        // scales, `u_j = p_j·d_j`, in place of the scores; the denominator adds the block's
        // `p_j`, summed apart first (so its rounding grows with the blocks, not the keys).
        let mut umax = _mm512_setzero_ps();
        let mut block_sum = _mm512_setzero_ps();
        for (k, z) in scores.iter_mut().enumerate().take(nb) {
            let pe = _mm512_maskz_mov_ps(live, s.exp(_mm512_sub_ps(*z, shift)));
            block_sum = _mm512_add_ps(block_sum, pe);
            *z = _mm512_mul_ps(pe, _mm512_set1_ps(b.vscale[k]));
            umax = _mm512_max_ps(umax, *z);
        }
        let l = _mm512_fmadd_ps(ts.l, corr, block_sum);
        // The `u_j` in 16-bit fixed point against the block's largest, `w_j = round(65535 ·
        // u_j / max u)` (each block its own: a tail of small weights keeps its precision),
        // split into bytes: quad `r` of keys per row, a query per word. A lane whose `max u`
        // is below `U_MIN` (a block of zeros, or of weights below 2⁻⁴³) adds nothing.
        let some = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(umax, _mm512_set1_ps(U_MIN));
        let to_fixed = _mm512_maskz_div_ps(some, _mm512_set1_ps(P_ONE), umax);
        let wscale = _mm512_maskz_mul_ps(some, umax, _mm512_set1_ps(1.0 / P_ONE));
        let (one, low) = (_mm512_set1_ps(P_ONE), _mm512_set1_epi32(0xff));
        for r in 0..KB / 4 {
            let mut w = [_mm512_setzero_si512(); 4];
            for (jj, wj) in w.iter_mut().enumerate() {
                let k = 4 * r + jj;
                if k < nb {
                    // (`u ≤ max u`, and `to_fixed` finite: within 65535 whatever the
                    // roundings, never NaN.)
                    let u = _mm512_min_ps(_mm512_mul_ps(scores[k], to_fixed), one);
                    *wj = _mm512_cvtps_epi32(u);
                }
            }
            let (mut hi, mut lo) = (w, w);
            for jj in 0..4 {
                hi[jj] = _mm512_srli_epi32::<8>(w[jj]);
                lo[jj] = _mm512_and_si512(w[jj], low);
            }
            _mm512_store_si512(b.phi.row(r).cast(), bytes_word(hi));
            _mm512_store_si512(b.plo.row(r).cast(), bytes_word(lo));
        }
        ts.mx = new_mx;
        ts.l = l;
        // P·V, 16 value features at a time: `Σ w·v̂ = 256·Σ h·v̂ + Σ l·v̂` (exact in `i32`),
        // rounded to `f32` and scaled by `max u / 65535` into the running sums (rescaled by
        // `corr`).
        asm!(
            "tileloadd tmm7, [{h} + {s} * 1]",
            "tileloadd tmm3, [{l} + {s} * 1]",
            h = in(reg) b.phi.row(0),
            l = in(reg) b.plo.row(0),
            s = in(reg) STRIDE,
            out("tmm3") _,
            out("tmm7") _,
            options(nostack, readonly, preserves_flags)
        );
        for f in 0..dv.div_ceil(L) {
            asm!(
                "tilezero tmm1",
                "tilezero tmm2",
                "tileloadd tmm6, [{v} + {s} * 1]",
                "tdpbsud tmm1, tmm6, tmm7",
                "tdpbsud tmm2, tmm6, tmm3",
                "tilestored [{h} + {s} * 1], tmm1",
                "tilestored [{l} + {s} * 1], tmm2",
                v = in(reg) b.vpk.row(f * L),
                h = in(reg) b.hi.row(0),
                l = in(reg) b.lo.row(0),
                s = in(reg) STRIDE,
                out("tmm1") _,
                out("tmm2") _,
                out("tmm6") _,
                options(nostack, preserves_flags)
            );
            for ee in 0..L.min(dv - f * L) {
                let e = f * L + ee;
                let hi = _mm512_load_si512(b.hi.0[ee].as_ptr().cast());
                let lo = _mm512_load_si512(b.lo.0[ee].as_ptr().cast());
                let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), lo);
                let acc = b.acc[(t * dv + e) * L..][..L].as_mut_ptr();
                let a = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(sum),
                    wscale,
                    _mm512_mul_ps(_mm512_loadu_ps(acc), corr),
                );
                _mm512_storeu_ps(acc, a);
            }
        }
    }
}
