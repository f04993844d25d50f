//! What the streaming tiles and the weights tiles share: the keys a tile's pattern shows, the
//! per-key masks, the score and `P·V` micro-kernels, the soft-cap pass of capped problems, and
//! the two softmax steps every block of scores goes through (scale, mask and maximum; then
//! `exp` and sum).

use super::super::Float;
use super::super::args::{Dims, MQ_MAX, MaskView, Problem};
use super::super::pattern::Pattern;
use super::super::simd::Simd;

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
pub(super) use for_tiles;

/// The keys a query tile's pattern shows: per lane, the first and one-past-last visible key
/// (as vectors), and over the tile, the union `[lo_min, hi_max)` and the intersection
/// `[lo_max, hi_min)`.
pub(super) struct TileRanges<S: Simd, const NV: usize> {
    pub lo: [S::V; NV],
    pub hi: [S::V; NV],
    pub union: (usize, usize),
    pub common: (usize, usize),
    /// Per lane, the query's position for ALiBi (zero without ALiBi).
    pub qpos: [S::V; NV],
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
pub(super) fn tile_ranges<S: Simd, const NV: usize>(
    s: S,
    mask: &MaskView<'_, S::E>,
    i0: usize,
) -> TileRanges<S, NV> {
    let mq = NV * S::LANES;
    if let Pattern::Full = mask.pattern {
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
/// `i0 + NV·LANES ≤ sq` and `j < skv` (the mask's shape, checked by `Problem::check`, which
/// also checks that the view's queries lie inside the mask's matrices).
#[inline(always)]
pub(super) unsafe fn key_mask<S: Simd, const NV: usize>(
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

/// A lane mask stored as a vector of elements (all bits set where the lane is set).
#[inline(always)]
pub(super) fn mask_bits<S: Simd>(s: S, m: S::M) -> S::V {
    let ones = s.splat(S::E::of(-1.0));
    // `keep` clears the unset lanes; set lanes keep a nonzero pattern, which `keep` later
    // treats as the mask it came from (comparison with zero restores it).
    s.keep(ones, m)
}

/// The one or two row vectors of a tile of `NV` vectors at `p + at`: `p[at .. at + L]`, and
/// `p[at + L .. at + 2L]` when `NV = 2` (zero, and not read, when `NV = 1`).
///
/// # Safety
/// `p + at .. p + at + NV·LANES` must be readable.
#[inline(always)]
pub(super) unsafe fn tile_rows<S: Simd, const NV: usize>(
    s: S,
    p: *const S::E,
    at: usize,
) -> (S::V, S::V) {
    // SAFETY: `NV·LANES` readable values at `p + at` (the caller's contract).
    unsafe {
        let r0 = s.load(p.add(at));
        let r1 = if NV > 1 {
            s.load(p.add(at + S::LANES))
        } else {
            s.splat(S::E::ZERO)
        };
        (r0, r1)
    }
}

/// The operands of scores `q · kᵀ`: the queries from a tile's (or a row's) first, `dk`
/// columns with leading dimension `ldq`, and the keys of the problem (leading dimension `ldk`).
#[derive(Clone, Copy)]
pub(super) struct QueryKeys<E> {
    pub q: *const E,
    pub ldq: usize,
    pub k: *const E,
    pub ldk: usize,
    pub dk: usize,
}

impl<E> QueryKeys<E> {
    /// The queries from `q` (leading dimension `p.dims.ldq`) against the keys of `p`.
    #[inline(always)]
    pub(super) fn new(q: *const E, p: &Problem<'_, E>) -> Self {
        let Dims { dk, ldq, ldkv, .. } = p.dims;
        QueryKeys {
            q,
            ldq,
            k: p.k.as_ptr(),
            ldk: ldkv,
            dk,
        }
    }
}

/// QueryKeys `out[kk·ldo + lane] = q[lane, :] · k[j0 + kk, :]` for the `nk` keys from `j0`.
///
/// # Safety
/// `ops.q` holds `NV·LANES` rows of its `dk` columns; `j0 + nk ≤ skv` (the keys' length,
/// checked by `Problem::check`); `out` holds `nk` rows of `ldo ≥ NV·LANES`.
#[inline(always)]
pub(super) unsafe fn qk_block<S: Simd, const NV: usize>(
    s: S,
    ops: QueryKeys<S::E>,
    j0: usize,
    nk: usize,
    out: *mut S::E,
    ldo: usize,
) {
    // SAFETY: key `j0 ≤ skv`.
    let k = unsafe { ops.k.add(j0) };
    for_tiles!(nk, S::TILE, |kk, N| {
        // SAFETY: keys `kk .. kk + N ≤ nk`, inside the contract.
        unsafe { qk_tile::<S, NV, N>(s, ops, k.add(kk), out.add(kk * ldo), ldo) }
    });
}

/// `NV·LANES` queries × the `N` keys from `k` of scores, `NV·N` vector accumulators over the
/// key width.
///
/// # Safety
/// As [`qk_block`] with `N` keys from `k`.
#[inline(always)]
unsafe fn qk_tile<S: Simd, const NV: usize, const N: usize>(
    s: S,
    ops: QueryKeys<S::E>,
    k: *const S::E,
    out: *mut S::E,
    ldo: usize,
) {
    let QueryKeys {
        q, ldq, ldk, dk, ..
    } = ops;
    let l = S::LANES;
    let zero = s.splat(S::E::ZERO);
    // Two named rows of accumulators (at most), which stay in registers.
    let mut a0 = [zero; N];
    let mut a1 = [zero; N];
    // SAFETY: query rows `0 .. NV·l` and key rows `0 .. N` of columns `0 .. dk`, and `N`
    // rows of `out`, all inside the contract.
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
            s.store(out.add(c * ldo), a0[c]);
            if NV > 1 {
                s.store(out.add(c * ldo + l), a1[c]);
            }
        }
    }
}

/// `acc[e] = corr · acc[e] + Σ_kk P[kk] · v[j0 + kk, e]` for every value column `e`, in
/// tiles of `NV·LANES` queries × `TILE` columns. With `guard`, the sum moves only in the lanes
/// `guard(kk)` allows (the same fused multiply-add otherwise, so the result is bit for bit
/// the unguarded one wherever that is finite).
///
/// # Safety
/// `p` holds `nk` rows of `ldp ≥ NV·LANES`; `v` points at the block's first key in a
/// column-major matrix with leading dimension `ldv` and `dv` columns, `nk` rows from there;
/// `acc` holds `dv` rows of `ld_acc ≥ NV·LANES`.
#[inline(always)]
pub(super) unsafe fn pv_block<S: Simd, const NV: usize, G: Fn(usize) -> [S::M; NV]>(
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
                    let (p0, p1) = tile_rows::<S, NV>(s, p, kk * ldp);
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
                    let (p0, p1) = tile_rows::<S, NV>(s, p, kk * ldp);
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

/// Scales and masks `rows` rows of scores in place: row `kk` (at `scores + kk·ld`, `NV`
/// vectors) holds the tile's scores against key `key0 + kk`. A row for which `full(kk)` holds
/// is visible to every lane with no mask part to look up, and is only scaled. Every other row
/// gets `scale·s + bias` where the key mask allows the lane and `−∞` elsewhere; with
/// `allowed`, the mask is also stored as a vector (row `kk` at `allowed + kk·ld`, see
/// [`mask_bits`]) for the `P·V` step. Returns each lane's maximum.
///
/// # Safety
/// `scores` (and `allowed`) hold `rows` rows of `ld ≥ NV·LANES` values; the rows that are not
/// `full` read the key masks, whose contract [`key_mask`] states (`i0 + NV·LANES ≤ sq` and
/// `key0 + rows ≤ skv`).
#[inline(always)]
pub(super) unsafe fn scale_and_mask<S: Simd, const NV: usize>(
    s: S,
    mask: &MaskView<'_, S::E>,
    ranges: &TileRanges<S, NV>,
    i0: usize,
    scale: S::E,
    scores: *mut S::E,
    ld: usize,
    key0: usize,
    rows: usize,
    full: impl Fn(usize) -> bool,
    allowed: Option<*mut S::E>,
) -> [S::V; NV] {
    let l = S::LANES;
    let neg_inf = s.splat(S::E::NEG_INFINITY);
    let scale_v = s.splat(scale);
    let mut m = [neg_inf; NV];
    for kk in 0..rows {
        // SAFETY: row `kk < rows` of the scores (and of `allowed`); the key mask's contract
        // is the caller's.
        unsafe {
            let row = scores.add(kk * ld);
            if full(kk) {
                for n in 0..NV {
                    let x = s.mul(s.load(row.add(n * l)), scale_v);
                    s.store(row.add(n * l), x);
                    m[n] = s.max(x, m[n]);
                }
            } else {
                let (ok, bias) =
                    key_mask::<S, NV>(s, mask, &ranges.lo, &ranges.hi, &ranges.qpos, i0, key0 + kk);
                for n in 0..NV {
                    let x = s.fma(s.load(row.add(n * l)), scale_v, bias[n]);
                    let x = s.select(ok[n], x, neg_inf);
                    s.store(row.add(n * l), x);
                    if let Some(a) = allowed {
                        s.store(a.add(kk * ld + n * l), mask_bits(s, ok[n]));
                    }
                    m[n] = s.max(x, m[n]);
                }
            }
        }
    }
    m
}

/// Soft-caps `rows` rows of raw scores `q·k` in place (row `kk` at `scores + kk·ld`, `NV`
/// vectors): `x = c · tanh(scale·x / c)` with [`Simd::tanh`]. The callers run it once per
/// block of scores, and only for a capped problem, then [`scale_and_mask`] with a scale of 1
/// (exact), so the cap sits between the scale and the mask's bias and the plain path never
/// meets it.
///
/// # Safety
/// `scores` holds `rows` rows of `ld ≥ NV·LANES` values.
#[inline(always)]
pub(super) unsafe fn soft_cap<S: Simd, const NV: usize>(
    s: S,
    scores: *mut S::E,
    ld: usize,
    rows: usize,
    scale: S::E,
    cap: S::E,
) {
    let l = S::LANES;
    let scale_v = s.splat(scale);
    let cap_v = s.splat(cap);
    for kk in 0..rows {
        // SAFETY: row `kk < rows` of the scores.
        unsafe {
            let row = scores.add(kk * ld);
            for n in 0..NV {
                let z = s.mul(s.load(row.add(n * l)), scale_v);
                let x = s.mul(cap_v, s.tanh(s.div(z, cap_v)));
                s.store(row.add(n * l), x);
            }
        }
    }
}

/// `p = e^(x − shift)` over `rows` rows of scores in place (row `kk` at `scores + kk·ld`,
/// `NV` vectors), each `p` then multiplied by `vscale` when given; returns each lane's sum of
/// the unscaled `p`.
///
/// # Safety
/// `scores` holds `rows` rows of `ld ≥ NV·LANES` values.
#[inline(always)]
pub(super) unsafe fn exp_and_sum<S: Simd, const NV: usize>(
    s: S,
    scores: *mut S::E,
    ld: usize,
    rows: usize,
    shift: &[S::V; NV],
    vscale: Option<S::V>,
) -> [S::V; NV] {
    let l = S::LANES;
    let mut sum = [s.splat(S::E::ZERO); NV];
    for kk in 0..rows {
        // SAFETY: row `kk < rows` of the scores.
        unsafe {
            let row = scores.add(kk * ld);
            for n in 0..NV {
                let p = s.exp(s.sub(s.load(row.add(n * l)), shift[n]));
                sum[n] = s.add(sum[n], p);
                let p = match vscale {
                    Some(vs) => s.mul(p, vs),
                    None => p,
                };
                s.store(row.add(n * l), p);
            }
        }
    }
    sum
}
