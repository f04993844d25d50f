//! Attention for one head with the queries in the vector lanes: the streaming kernel
//! ([`attention`]) and the one that also writes the weights ([`attention_with_weights`]).

use super::super::Float;
use super::super::args::{Dims, KB, MQ_MAX, Problem, QueryIo, WorkRef};
use super::super::simd::Simd;
use super::super::{Lazy, scalar};
use super::rows::rows;
use super::steps::{
    QueryKeys, TileRanges, exp_and_sum, key_mask, pv_block, qk_block, scale_and_mask, soft_cap,
    tile_ranges,
};

/// Streaming attention for one head: `out[sq × dv] = softmax(scale·q·kᵀ + mask) · v`. Whole
/// tiles of `2·LANES` queries, then one of `LANES` if that many remain, then the last rows
/// through [`rows`]; no tile overlaps another, so the outputs may replace the queries.
#[inline(always)]
pub(crate) fn attention<S: Simd>(
    s: S,
    mut io: QueryIo<'_, S::E>,
    p: &Problem<'_, S::E>,
    mut work: WorkRef<'_, S::E>,
) {
    p.check(&io);
    if p.sink_undefined() {
        p.write_undefined(&mut io, None);
        return;
    }
    let Dims { sq, dv, .. } = p.dims;
    assert!(
        work.acc.len() >= dv * MQ_MAX
            && work.p.len() >= KB * MQ_MAX
            && work.allowed.len() >= KB * MQ_MAX,
        "work buffer too short"
    );
    let (q, out) = io.pointers();
    let l = S::LANES;
    let mut lazy = Lazy::new();
    let mut i = 0;
    while i + 2 * l <= sq {
        tile::<S, 2>(s, q, out, p, &mut work, &mut lazy, i);
        i += 2 * l;
    }
    if i + l <= sq {
        tile::<S, 1>(s, q, out, p, &mut work, &mut lazy, i);
        i += l;
    }
    if i < sq {
        rows(s, q, out, p, work, &mut lazy, i, sq - i);
    }
}

/// One tile of `NV·LANES` queries from `i0`: the keys, then (if its outputs are not finite
/// and huge values explain it) the keys again with the rescale, then the outputs stored.
#[inline(always)]
fn tile<S: Simd, const NV: usize>(
    s: S,
    q: *const S::E,
    out: *mut S::E,
    p: &Problem<'_, S::E>,
    work: &mut WorkRef<'_, S::E>,
    lazy: &mut Lazy<S::E>,
    i0: usize,
) {
    assert!(i0 + NV * S::LANES <= p.dims.sq, "tile past the last query");
    if !tile_pass::<S, NV>(s, q, p, work, lazy, i0, S::E::ONE)
        && let Some(vscale) = lazy.rescale(p.v, p.dims)
    {
        tile_pass::<S, NV>(s, q, p, work, lazy, i0, vscale);
    }
    let Dims { dv, ldq, .. } = p.dims;
    let l = S::LANES;
    for e in 0..dv {
        // SAFETY: accumulator row `e < dv` (checked in `attention`) and output rows
        // `i0 .. i0 + NV·l ≤ sq` of column `e` (asserted above; the output holds `sq` rows of
        // `dv` columns with leading dimension `ldq`, checked by `Problem::check`).
        unsafe {
            let a = work.acc.as_ptr().add(e * MQ_MAX);
            let o = out.add(i0 + e * ldq);
            for n in 0..NV {
                s.store(o.add(n * l), s.load(a.add(n * l)));
            }
        }
    }
}

/// The keys over one tile, leaving its normalised outputs in the accumulator rows of `work`
/// (`acc / l` per lane, 0 where no key carried weight); every `p` entering the sums is scaled
/// by `vscale` and the outputs by its inverse. Returns whether every output is finite.
///
/// The online softmax: `m' = max(m, block max)`, `c = e^(m − m')`, `p = e^(s − m')`,
/// `l' = c·l + Σp`, `acc' = c·acc + P·V`. Before any key is seen `m' = −∞`: 0 is subtracted
/// instead, so that `−∞ − (−∞)` never forms. With a sink logit `s` every lane starts at
/// `m = s`, `l = 1`; with a soft-cap each block's scores are capped by [`soft_cap`] before
/// they are masked (one test per block).
#[inline(always)]
fn tile_pass<S: Simd, const NV: usize>(
    s: S,
    q: *const S::E,
    p: &Problem<'_, S::E>,
    work: &mut WorkRef<'_, S::E>,
    lazy: &mut Lazy<S::E>,
    i0: usize,
    vscale: S::E,
) -> bool {
    let Dims { dv, ldkv, .. } = p.dims;
    let (v, mask) = (p.v, p.mask);
    let l = S::LANES;
    let mq = NV * l;
    assert!(i0 + mq <= p.dims.sq, "tile past the last query");
    // SAFETY: rows `i0 .. i0 + mq ≤ sq` of q (`dk` columns, leading dimension `ldq`).
    let operands = QueryKeys::new(unsafe { q.add(i0) }, p);
    let ranges: TileRanges<S, NV> = tile_ranges::<S, NV>(s, mask, i0);
    let (lo_min, hi_max) = ranges.union;
    let (lo_max, hi_min) = ranges.common;
    let dense = mask.is_dense();
    let neg_inf = s.splat(S::E::NEG_INFINITY);
    let zero = s.splat(S::E::ZERO);
    let rescaled = (vscale != S::E::ONE).then(|| s.splat(vscale));
    // Capped scores arrive at `scale_and_mask` already scaled.
    let scale = if p.softcap.is_some() {
        S::E::ONE
    } else {
        p.scale
    };
    let (m0, l0) = match p.sink_logit() {
        Some(sink) => (s.splat(sink), s.splat(S::E::ONE)),
        None => (neg_inf, zero),
    };
    let mut m = [m0; NV];
    let mut lsum = [l0; NV];
    // The first block writes the accumulators, later ones add to them; a tile whose queries
    // see no key never writes them, so they start at zero.
    let mut first_block = true;
    if lo_min >= hi_max {
        work.acc[..dv * MQ_MAX].fill(S::E::ZERO);
    }
    let p_buf = work.p.as_mut_ptr();
    let allowed_buf = work.allowed.as_mut_ptr();

    let mut j0 = lo_min;
    while j0 < hi_max {
        let nk = KB.min(hi_max - j0);
        let full = !dense && j0 >= lo_max && j0 + nk <= hi_min;
        // SAFETY: the tile's `mq` queries, keys `j0 .. j0 + nk ≤ skv`, and `nk·mq ≤ KB·MQ_MAX`
        // values of P (lengths checked in `attention`).
        unsafe { qk_block::<S, NV>(s, operands, j0, nk, p_buf, mq) };
        if let Some(cap) = p.softcap {
            // SAFETY: `nk ≤ KB` rows of `mq` values in P.
            unsafe { soft_cap::<S, NV>(s, p_buf, mq, nk, p.scale, cap) };
        }
        // SAFETY: `nk ≤ KB` rows of `mq` values in P and in the mask buffer; the key masks
        // read lanes `i0 .. i0 + mq ≤ sq` of columns `j0 .. j0 + nk ≤ skv`.
        let bmax = unsafe {
            scale_and_mask::<S, NV>(
                s,
                mask,
                &ranges,
                i0,
                scale,
                p_buf,
                mq,
                j0,
                nk,
                |_| full,
                Some(allowed_buf),
            )
        };
        let mut corr = [zero; NV];
        let mut m_use = [zero; NV];
        for n in 0..NV {
            let m_new = s.max(bmax[n], m[n]);
            m_use[n] = s.select(s.eq(m_new, neg_inf), zero, m_new);
            corr[n] = s.exp(s.sub(m[n], m_use[n]));
            m[n] = m_new;
        }
        // SAFETY: `nk` rows of `mq` values in P.
        let bsum = unsafe { exp_and_sum::<S, NV>(s, p_buf, mq, nk, &m_use, rescaled) };
        for n in 0..NV {
            lsum[n] = s.fma(lsum[n], corr[n], bsum[n]);
        }
        // acc = c·acc + P·V over the block's keys. A masked key has p = 0, which is exact
        // unless V holds inf or NaN: then masked products are zeroed instead.
        let guarded = !full && !lazy.values_finite(v, p.dims);
        // The stored masks: all bits set where allowed, +0 elsewhere.
        let stored = |kk: usize| {
            let mut ok = [s.eq(zero, zero); NV];
            for (n, okn) in ok.iter_mut().enumerate() {
                // SAFETY: row `kk < nk ≤ KB` of the mask buffer.
                *okn = s.lt(unsafe { s.load(allowed_buf.add(kk * mq + n * l)) }, zero);
            }
            ok
        };
        // SAFETY: keys `j0 .. j0 + nk` of v (`dv` columns, leading dimension `ldkv`), P holds
        // `nk` rows of `mq`, and the accumulator `dv × MQ_MAX` (checked in `attention`).
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
    // 1/vscale, into the accumulator rows.
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
        // SAFETY: accumulator row `e < dv`.
        unsafe {
            let a = work.acc.as_mut_ptr().add(e * MQ_MAX);
            for n in 0..NV {
                let x = s.mul(s.load(a.add(n * l)), inv[n]);
                let x = s.select(empty[n], zero, x);
                finite = s.and(finite, s.eq(s.sub(x, x), zero));
                s.store(a.add(n * l), x);
            }
        }
    }
    s.all(finite)
}

/// Attention for one head that also writes the post-softmax weights into `weights` (`sq ×
/// skv`, column-major with leading dimension `ldq`): tiles as [`attention`]'s, the last rows
/// through the scalar kernel.
#[inline(always)]
pub(crate) fn attention_with_weights<S: Simd>(
    s: S,
    mut io: QueryIo<'_, S::E>,
    p: &Problem<'_, S::E>,
    weights: &mut [S::E],
) {
    p.check(&io);
    let Dims { sq, skv, .. } = p.dims;
    assert!(weights.len() >= p.dims.q_len(skv), "weights too short");
    if p.sink_undefined() {
        p.write_undefined(&mut io, Some(weights));
        return;
    }
    let (q, out) = io.pointers();
    let l = S::LANES;
    let mut lazy = Lazy::new();
    let w = weights.as_mut_ptr();
    let mut i = 0;
    while i + 2 * l <= sq {
        weight_tile::<S, 2>(s, q, out, p, w, &mut lazy, i);
        i += 2 * l;
    }
    if i + l <= sq {
        weight_tile::<S, 1>(s, q, out, p, w, &mut lazy, i);
        i += l;
    }
    if i < sq {
        // The last rows, each on its own (the pointers above are not used again).
        let n = sq - i;
        let mask = p.mask.rows(i, n);
        let rest = Problem {
            dims: Dims { sq: n, ..p.dims },
            mask: &mask,
            ..*p
        };
        let io = match io {
            QueryIo::Separate { q, out } => QueryIo::Separate {
                q: &q[i..],
                out: &mut out[i..],
            },
            QueryIo::InPlace(buf) => QueryIo::InPlace(&mut buf[i..]),
        };
        scalar::attention_with_weights(io, &rest, &mut weights[i..]);
    }
}

/// One tile of [`attention_with_weights`]: the scores straight into the weights' columns,
/// scaled (and soft-capped, in a pass of its own) and masked, `e^(s − m)` summed (with the
/// sink's `e^(s − m)`, `m` then also covering the sink) and normalised in place, then `W · V`.
#[inline(always)]
fn weight_tile<S: Simd, const NV: usize>(
    s: S,
    q: *const S::E,
    out: *mut S::E,
    p: &Problem<'_, S::E>,
    w: *mut S::E,
    lazy: &mut Lazy<S::E>,
    i0: usize,
) {
    let Dims {
        skv, dv, ldq, ldkv, ..
    } = p.dims;
    let (v, mask) = (p.v, p.mask);
    let l = S::LANES;
    let mq = NV * l;
    assert!(i0 + mq <= p.dims.sq, "tile past the last query");
    // SAFETY: rows `i0 .. i0 + mq ≤ sq` of q (`dk` columns, leading dimension `ldq`).
    let operands = QueryKeys::new(unsafe { q.add(i0) }, p);
    let zero = s.splat(S::E::ZERO);
    let neg_inf = s.splat(S::E::NEG_INFINITY);
    let dense = mask.is_dense();
    let ranges: TileRanges<S, NV> = tile_ranges::<S, NV>(s, mask, i0);
    let (lo_min, hi_max) = ranges.union;
    let (lo_max, hi_min) = ranges.common;
    // Keys no query of the tile sees get exact zeros.
    for j in (0..lo_min).chain(hi_max..skv) {
        for n in 0..NV {
            // SAFETY: lanes `i0 .. i0 + mq ≤ sq` of column `j < skv` of the weights (checked
            // in `attention_with_weights`).
            unsafe { s.store(w.add(i0 + n * l + j * ldq), zero) };
        }
    }
    let keys = hi_max - lo_min;
    // SAFETY: column `lo_min ≤ skv` of the weights' lanes `i0 .. i0 + mq` (leading dimension
    // `ldq`; checked in `attention_with_weights`).
    let cols = unsafe { w.add(i0 + lo_min * ldq) };
    // SAFETY: the tile's queries, keys `lo_min .. hi_max ≤ skv`, and the weights' lanes
    // `i0 .. i0 + mq` of those columns (leading dimension `ldq`); the key masks read the same
    // lanes of the mask's matrices (the blocks below rely on the same bounds).
    unsafe { qk_block::<S, NV>(s, operands, lo_min, keys, cols, ldq) };
    let scale = match p.softcap {
        Some(cap) => {
            // SAFETY: as above.
            unsafe { soft_cap::<S, NV>(s, cols, ldq, keys, p.scale, cap) };
            S::E::ONE
        }
        None => p.scale,
    };
    let full = |kk: usize| !dense && lo_min + kk >= lo_max && lo_min + kk < hi_min;
    // SAFETY: as above.
    let mut m = unsafe {
        scale_and_mask::<S, NV>(
            s, mask, &ranges, i0, scale, cols, ldq, lo_min, keys, full, None,
        )
    };
    let sink = p.sink_logit().map(|x| s.splat(x));
    if let Some(sink) = sink {
        for mn in &mut m {
            *mn = s.max(*mn, sink);
        }
    }
    // p = e^(s − m), summed; then normalised in place (rows with no key stay 0).
    let mut m_use = [zero; NV];
    for n in 0..NV {
        m_use[n] = s.select(s.eq(m[n], neg_inf), zero, m[n]);
    }
    // SAFETY: as above.
    let mut sum = unsafe { exp_and_sum::<S, NV>(s, cols, ldq, keys, &m_use, None) };
    if let Some(sink) = sink {
        for n in 0..NV {
            sum[n] = s.add(sum[n], s.exp(s.sub(sink, m_use[n])));
        }
    }
    let mut inv = [zero; NV];
    for n in 0..NV {
        let r = s.div(s.splat(S::E::ONE), sum[n]);
        inv[n] = s.select(s.eq(sum[n], zero), zero, r);
    }
    for kk in 0..keys {
        // SAFETY: as above.
        unsafe {
            let col = cols.add(kk * ldq);
            for n in 0..NV {
                s.store(col.add(n * l), s.mul(s.load(col.add(n * l)), inv[n]));
            }
        }
    }
    // out = W · V over the keys the tile sees; masked weights are exactly 0, and masked
    // products are zeroed when V holds non-finite values.
    let guarded = (dense || lo_max > lo_min || hi_min < hi_max) && !lazy.values_finite(v, p.dims);
    // The key masks, recomputed (key `lo_min + kk`).
    // SAFETY: `i0 + mq ≤ sq` and `lo_min + kk < hi_max ≤ skv`.
    let recomputed = |kk: usize| unsafe {
        key_mask::<S, NV>(
            s,
            mask,
            &ranges.lo,
            &ranges.hi,
            &ranges.qpos,
            i0,
            lo_min + kk,
        )
        .0
    };
    // SAFETY: the weights' lanes `i0 .. i0 + mq` of columns `lo_min .. hi_max` (leading
    // dimension `ldq`), value rows `lo_min .. hi_max`, and output rows `i0 .. i0 + mq` of `dv`
    // columns (leading dimension `ldq`). The tile's queries were all read by `qk_block`
    // above, so its outputs may replace them.
    unsafe {
        if keys > 0 {
            pv_block::<S, NV, _>(
                s,
                cols.cast_const(),
                ldq,
                v.as_ptr().add(lo_min),
                ldkv,
                keys,
                dv,
                out.add(i0),
                ldq,
                false,
                [zero; NV],
                guarded.then_some(&recomputed),
            );
        } else {
            for e in 0..dv {
                for n in 0..NV {
                    s.store(out.add(i0 + n * l + e * ldq), zero);
                }
            }
        }
    }
}
