//! Attention for a few queries (a decoding step, or the rows left after the tiles), one query
//! at a time with the keys in the vector lanes.

use super::super::Float;
use super::super::Lazy;
use super::super::args::{Dims, KB, MQ_MAX, Problem, WorkRef};
use super::super::simd::Simd;
use super::exp::{exp_scalar, exp_shifted};
use super::steps::{QueryKeys, soft_cap};

/// Streaming attention for the `n` queries from row `r0`, each walking its keys in blocks of
/// [`KB`] with the keys in the vector lanes; the `P·V` sums are kept per lane and reduced at
/// the end. A row's output is written after its query has been read, so it may replace it;
/// a row whose outputs are not finite because huge values overflowed its sums is redone with
/// the rescale ([`Lazy::rescale`]).
#[inline(always)]
pub(super) fn rows<S: Simd>(
    s: S,
    q: *const S::E,
    out: *mut S::E,
    p: &Problem<'_, S::E>,
    mut work: WorkRef<'_, S::E>,
    lazy: &mut Lazy<S::E>,
    r0: usize,
    n: usize,
) {
    let Dims { sq, dv, ldq, .. } = p.dims;
    assert!(r0 + n <= sq, "rows past the last query");
    let l = S::LANES;
    assert!(
        work.acc.len() >= dv * l && work.p.len() >= KB && work.allowed.len() >= KB,
        "work buffer too short"
    );
    for i in r0..r0 + n {
        let mut vscale = S::E::ONE;
        let mut lsum = row_any(s, q, p, work.reborrow(), lazy, i, vscale);
        let output = |lanes: &[S::E], lsum: S::E, vscale: S::E, e: usize| {
            // SAFETY: lane row `e < dv` of the per-lane sums (`dv · l` values, checked above).
            let total = s.reduce_add(unsafe { s.load(lanes.as_ptr().add(e * l)) });
            if lsum == S::E::ZERO {
                S::E::ZERO
            } else {
                total / lsum * (S::E::ONE / vscale)
            }
        };
        let finite = (0..dv).all(|e| output(work.acc, lsum, vscale, e).is_finite_());
        if !finite && let Some(rescale) = lazy.rescale(p.v, p.dims) {
            vscale = rescale;
            lsum = row_any(s, q, p, work.reborrow(), lazy, i, vscale);
        }
        for e in 0..dv {
            let x = output(work.acc, lsum, vscale, e);
            // SAFETY: row `i < sq` of output column `e < dv` (leading dimension `ldq`; the
            // lengths were checked by `Problem::check`).
            unsafe { *out.add(i + e * ldq) = x };
        }
    }
}

/// [`row`], in its own instantiation for a capped problem, so that the plain one has no cap
/// code (a direct call either way: a function pointer would not be inlined into the
/// instruction set's entry point).
#[inline(always)]
fn row_any<S: Simd>(
    s: S,
    q: *const S::E,
    p: &Problem<'_, S::E>,
    work: WorkRef<'_, S::E>,
    lazy: &mut Lazy<S::E>,
    i: usize,
    vscale: S::E,
) -> S::E {
    if p.softcap.is_some() {
        row::<S, true>(s, q, p, work, lazy, i, vscale)
    } else {
        row::<S, false>(s, q, p, work, lazy, i, vscale)
    }
}

/// The keys of query `i`, leaving its per-lane sums in `work.acc` (`dv` rows of `LANES`);
/// every `p` entering them is scaled by `vscale`. Returns the softmax denominator. A sink
/// logit `s` starts it at `m = s`, `l = 1`; with `CAP` (a soft-capped problem) each block of
/// scores is capped in a pass of its own before the mask.
#[inline(always)]
fn row<S: Simd, const CAP: bool>(
    s: S,
    q: *const S::E,
    p: &Problem<'_, S::E>,
    work: WorkRef<'_, S::E>,
    lazy: &mut Lazy<S::E>,
    i: usize,
    vscale: S::E,
) -> S::E {
    let Dims { dv, ldkv, .. } = p.dims;
    let (v, mask) = (p.v, p.mask);
    // Capped scores are scaled by the cap's pass.
    let (scale, cap) = match p.softcap {
        Some(c) if CAP => (S::E::ONE, c),
        _ => (p.scale, S::E::ONE),
    };
    // SAFETY: query `i < sq` of q (leading dimension `ldq`).
    let operands = QueryKeys::new(unsafe { q.add(i) }, p);
    let l = S::LANES;
    let neg_inf = S::E::NEG_INFINITY;
    let dense = mask.is_dense();
    // Work: per-lane sums `dv × LANES`, the block's probabilities and key masks. A block's
    // keys are padded to whole vectors: the scores of the padding lanes are −∞ (so their
    // probabilities are 0), and the values there are loaded as zeros (masked loads).
    let lane_acc = &mut work.acc[..dv * l];
    let pb = &mut work.p[..KB];
    let ok = &mut work.allowed[..KB];
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
    let (lo, hi) = mask.key_range(i);
    lane_acc.fill(S::E::ZERO);
    let (mut m, mut lsum) = match p.sink_logit() {
        Some(sink) => (sink, S::E::ONE),
        None => (neg_inf, S::E::ZERO),
    };
    let mut j0 = lo;
    while j0 < hi {
        let nk = KB.min(hi - j0);
        // Whole vectors: `KB` is a multiple of LANES, so `np ≤ KB`.
        let np = nk.div_ceil(l) * l;
        // QueryKeys: four vectors of keys at a time share each broadcast query element.
        // SAFETY: keys `j0 .. j0 + nk ≤ skv`, and `np ≤ KB` values of p.
        unsafe { dot_keys(s, operands, j0, nk, pb.as_mut_ptr()) };
        if CAP {
            // SAFETY: `np / l` whole vectors of p (`np ≤ KB`); the padding lanes hold zeros,
            // capped to zeros and masked below.
            unsafe { soft_cap::<S, 1>(s, pb.as_mut_ptr(), l, np / l, p.scale, cap) };
        }
        // Scale and mask; the block's maximum.
        let mut bmax_v = ninf;
        if dense {
            for (kk, pk) in pb.iter_mut().enumerate().take(np) {
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
                bmax_v = s.max(unsafe { s.load(pb.as_ptr().add(c)) }, bmax_v);
                c += l;
            }
        } else {
            let mut c = 0;
            while c < np {
                // SAFETY: `c + l ≤ np ≤ KB`.
                unsafe {
                    let mut x = s.mul(s.load(pb.as_ptr().add(c)), scale_v);
                    if c + l > nk {
                        let valid = s.lt(lane, s.splat(S::E::of((nk - c) as f64)));
                        x = s.select(valid, x, ninf);
                    }
                    s.store(pb.as_mut_ptr().add(c), x);
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
        let bsum = exp_shifted(s, &mut pb[..np], m_use);
        lsum = lsum * corr + bsum;
        if vscale != S::E::ONE {
            pb[..np].iter_mut().for_each(|x| *x *= vscale);
        }
        // P·V. A masked key has p = 0, exact unless V holds inf or NaN: then the sums move
        // only for allowed keys (same arithmetic, so bit for bit the same result).
        let guarded = dense && !lazy.values_finite(v, p.dims);
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
                    let f = s.fma(s.load(pb.as_ptr().add(c)), vv, sum);
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
    lsum
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

/// `p[kk] = q · k[j0 + kk]` for `nk` keys from `j0`, keys in lanes, the last vector padded
/// with zeros (its keys past `nk` are never read).
///
/// # Safety
/// `ops.q` points at the query's first element; `j0 + nk ≤ skv` (the keys' length, checked by
/// `Problem::check`); `p` holds `⌈nk / LANES⌉ · LANES` values.
#[inline(always)]
unsafe fn dot_keys<S: Simd>(s: S, ops: QueryKeys<S::E>, j0: usize, nk: usize, p: *mut S::E) {
    let QueryKeys {
        q, ldq, ldk, dk, ..
    } = ops;
    // SAFETY: key `j0 ≤ skv`.
    let k = unsafe { ops.k.add(j0) };
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
