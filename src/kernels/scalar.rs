//! The portable kernel: plain loops over column-major slices, written so the compiler can
//! vectorise the innermost loops (over queries and over sequence positions). It is the
//! reference the instruction-set kernels are tested against.

use super::{BLOCK_Q, Dims, Work};
use crate::Float;
use crate::mask::Mask;

/// `out[s × dout] = x[s × din] · Wᵀ + b` (column-major; `w_t[d + c·din] = W[c][d]`).
pub(crate) fn linear<T: Float>(
    x: &[T],
    s: usize,
    din: usize,
    w_t: &[T],
    dout: usize,
    bias: &[T],
    out: &mut [T],
) {
    debug_assert!(x.len() >= s * din && w_t.len() >= din * dout && bias.len() >= dout);
    for (c, col) in out.chunks_exact_mut(s).take(dout).enumerate() {
        col.fill(bias[c]);
        let w_row = &w_t[c * din..(c + 1) * din];
        for (d, &w) in w_row.iter().enumerate() {
            let x_col = &x[d * s..(d + 1) * s];
            for (o, &xv) in col.iter_mut().zip(x_col) {
                *o += w * xv;
            }
        }
    }
}

/// Streaming (flash-style) attention for one head.
///
/// Queries are taken `BLOCK_Q` rows at a time; for each key the block's scores are computed
/// together (a loop over the block, which vectorises), the running maximum, denominator and
/// output sums are updated by the online-softmax recurrence
///
/// ```text
/// m' = max(m, s),  c = e^(m − m'),  p = e^(s − m'),  l' = c·l + p,  acc' = c·acc + p·v_j
/// ```
///
/// and at the end `out = acc / l`. A key the mask blocks is skipped for that row: it never
/// touches `m`, `l` or `acc`, so NaN values behind a mask cannot leak, and `−∞ − (−∞)` is never
/// formed. A row that saw no key ends with `l = 0` and is written as zeros.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<T: Float, const SQ: usize, const SKV: usize, const D: usize>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &Mask<'_, T, SQ, SKV>,
    out: &mut [T],
    work: &mut Work<T, D>,
) {
    let Dims { sq, skv, dk, dv } = dims;
    debug_assert!(sq == SQ && skv == SKV && dv <= D);
    debug_assert!(q.len() >= sq * dk && k.len() >= skv * dk && v.len() >= skv * dv);
    debug_assert!(out.len() >= sq * dv);
    let dense = mask.is_dense();

    let mut i0 = 0;
    while i0 < sq {
        let nb = BLOCK_Q.min(sq - i0);
        let mut ranges = [(0usize, 0usize); BLOCK_Q];
        let (mut lo, mut hi) = (usize::MAX, 0);
        for (r, range) in ranges.iter_mut().enumerate().take(nb) {
            *range = mask.key_range(i0 + r);
            if range.0 < range.1 {
                lo = lo.min(range.0);
                hi = hi.max(range.1);
            }
        }
        work.max = [T::NEG_INFINITY; BLOCK_Q];
        work.sum = [T::ZERO; BLOCK_Q];
        for col in work.acc.iter_mut().take(dv) {
            *col = [T::ZERO; BLOCK_Q];
        }

        for j in lo..hi {
            // Which rows of the block use key j, and with what additive bias.
            let mut used = [false; BLOCK_Q];
            let mut bias = [T::ZERO; BLOCK_Q];
            let mut any = false;
            for r in 0..nb {
                let (a, b) = ranges[r];
                if j >= a && j < b {
                    let entry = if dense {
                        mask.dense_entry(i0 + r, j)
                    } else {
                        Some(T::ZERO)
                    };
                    if let Some(m) = entry {
                        used[r] = true;
                        bias[r] = m;
                        any = true;
                    }
                }
            }
            if !any {
                continue;
            }

            // s[r] = q[i0 + r, :] · k[j, :]
            let mut s = [T::ZERO; BLOCK_Q];
            for d in 0..dk {
                let kv = k[j + d * skv];
                let q_col = &q[i0 + d * sq..i0 + d * sq + nb];
                for (sr, &qv) in s.iter_mut().zip(q_col) {
                    *sr += qv * kv;
                }
            }

            let mut corr = [T::ONE; BLOCK_Q];
            let mut p = [T::ZERO; BLOCK_Q];
            for r in 0..nb {
                if !used[r] {
                    continue;
                }
                let sr = s[r] * scale + bias[r];
                if sr == T::NEG_INFINITY {
                    // exp(−∞) = 0: the key carries no weight; skipping it avoids −∞ − (−∞).
                    used[r] = false;
                    continue;
                }
                let m_old = work.max[r];
                let m_new = m_old.max_(sr);
                corr[r] = if m_old == T::NEG_INFINITY {
                    T::ZERO
                } else {
                    (m_old - m_new).exp_()
                };
                p[r] = (sr - m_new).exp_();
                work.sum[r] = work.sum[r] * corr[r] + p[r];
                work.max[r] = m_new;
            }

            for (e, acc) in work.acc.iter_mut().enumerate().take(dv) {
                let ve = v[j + e * skv];
                for r in 0..BLOCK_Q {
                    if used[r] {
                        acc[r] = acc[r] * corr[r] + p[r] * ve;
                    }
                }
            }
        }

        for (e, acc) in work.acc.iter().enumerate().take(dv) {
            let o = &mut out[i0 + e * sq..i0 + e * sq + nb];
            for (r, or) in o.iter_mut().enumerate() {
                let l = work.sum[r];
                *or = if l > T::ZERO { acc[r] / l } else { T::ZERO };
            }
        }
        i0 += nb;
    }
}

/// Attention for one head that also writes the post-softmax weights: per query row, the
/// scores go into the row of `weights` (masked keys get exactly 0), the row is normalised,
/// and the output is the weighted sum over the keys the mask allows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with_weights<T: Float, const SQ: usize, const SKV: usize>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &Mask<'_, T, SQ, SKV>,
    out: &mut [T],
    weights: &mut [T],
) {
    let Dims { sq, skv, dk, dv } = dims;
    debug_assert!(sq == SQ && skv == SKV);
    debug_assert!(weights.len() >= sq * skv && out.len() >= sq * dv);
    let dense = mask.is_dense();
    for i in 0..sq {
        let (lo, hi) = mask.key_range(i);
        let mut m = T::NEG_INFINITY;
        for j in 0..skv {
            let entry = if j < lo || j >= hi {
                None
            } else if dense {
                mask.dense_entry(i, j)
            } else {
                Some(T::ZERO)
            };
            let s = match entry {
                Some(bias) => {
                    let mut dot = T::ZERO;
                    for d in 0..dk {
                        dot += q[i + d * sq] * k[j + d * skv];
                    }
                    dot * scale + bias
                }
                None => T::NEG_INFINITY,
            };
            m = m.max_(s);
            weights[i + j * sq] = s;
        }
        // Normalise the row; a row with no finite score (all masked) becomes all zeros.
        let mut l = T::ZERO;
        for j in 0..skv {
            let w = &mut weights[i + j * sq];
            *w = if *w == T::NEG_INFINITY {
                T::ZERO
            } else {
                (*w - m).exp_()
            };
            l += *w;
        }
        let inv = if l > T::ZERO { T::ONE / l } else { T::ZERO };
        for j in 0..skv {
            weights[i + j * sq] *= inv;
        }
        for e in 0..dv {
            let mut acc = T::ZERO;
            for j in lo..hi {
                let w = weights[i + j * sq];
                // Skip blocked keys (weight exactly 0) so their values, even NaN, never enter.
                if (!dense || mask.dense_entry(i, j).is_some()) && w != T::ZERO {
                    acc += w * v[j + e * skv];
                }
            }
            out[i + e * sq] = acc;
        }
    }
}
