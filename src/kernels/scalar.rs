//! The portable kernel: plain loops over column-major slices, written so the compiler can
//! vectorise the innermost loops (over queries and over sequence positions). It is the
//! reference the instruction-set kernels are tested against.

use super::{Dims, LinearIo, MQ_MAX, MaskView, PANEL_ROWS, WorkRef};
use crate::linear::tiled_index;
use crate::{Float, Weight};

/// Rows of queries the streaming kernel processes together.
const BLOCK_Q: usize = 8;

/// `out[s × dout] = x[s × din] · Wᵀ + b` (column-major; `W` in the tile layout of
/// [`crate::Linear`], stored as `Wt` and widened as it is read), `out += x · Wᵀ` for
/// [`LinearIo::Add`], or the same in place, a panel of [`PANEL_ROWS`] rows at a time copied
/// into `pack` first.
pub(crate) fn linear<T: Float, Wt: Weight<T>>(
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[Wt],
    dout: usize,
    bias: &[T],
    pack: &mut [T],
) {
    assert!(w.len() >= din * dout);
    let wt = |c: usize, d: usize| w[tiled_index(c, d, din, dout)].widen();
    match io {
        LinearIo::Out { x, out } => linear_out(x, s, din, &wt, dout, bias, out, false),
        LinearIo::Add { x, out } => linear_out(x, s, din, &wt, dout, bias, out, true),
        LinearIo::InPlace(buf) => {
            assert!(din == dout && buf.len() >= s * din && pack.len() >= PANEL_ROWS * din);
            let mut i0 = 0;
            while i0 < s {
                let rows = PANEL_ROWS.min(s - i0);
                for d in 0..din {
                    for r in 0..rows {
                        pack[d * PANEL_ROWS + r] = buf[i0 + r + d * s];
                    }
                }
                for c in 0..dout {
                    for r in 0..rows {
                        let mut acc = bias[c];
                        for d in 0..din {
                            acc += pack[d * PANEL_ROWS + r] * wt(c, d);
                        }
                        buf[i0 + r + c * s] = acc;
                    }
                }
                i0 += rows;
            }
        }
    }
}

/// [`linear`] with separate input and output (`add`: accumulate into `out`).
#[allow(clippy::too_many_arguments)]
fn linear_out<T: Float>(
    x: &[T],
    s: usize,
    din: usize,
    wt: &impl Fn(usize, usize) -> T,
    dout: usize,
    bias: &[T],
    out: &mut [T],
    add: bool,
) {
    assert!(x.len() >= s * din && bias.len() >= dout);
    assert!(out.len() >= s * dout);
    // `add` leaves the outputs as they are (no bias) and adds the products to them.
    let start = |col: &mut [T], b: T| {
        if !add {
            col.fill(b);
        }
    };
    // Four output columns per pass, so each input column is read once per four outputs.
    let mut c = 0;
    while c + 4 <= dout {
        let (c0, rest) = out[c * s..(c + 4) * s].split_at_mut(s);
        let (c1, rest) = rest.split_at_mut(s);
        let (c2, c3) = rest.split_at_mut(s);
        start(c0, bias[c]);
        start(c1, bias[c + 1]);
        start(c2, bias[c + 2]);
        start(c3, bias[c + 3]);
        for d in 0..din {
            let w = [wt(c, d), wt(c + 1, d), wt(c + 2, d), wt(c + 3, d)];
            let x_col = &x[d * s..(d + 1) * s];
            for ((((o0, o1), o2), o3), &xv) in c0
                .iter_mut()
                .zip(c1.iter_mut())
                .zip(c2.iter_mut())
                .zip(c3.iter_mut())
                .zip(x_col)
            {
                *o0 += w[0] * xv;
                *o1 += w[1] * xv;
                *o2 += w[2] * xv;
                *o3 += w[3] * xv;
            }
        }
        c += 4;
    }
    for c in c..dout {
        let col = &mut out[c * s..(c + 1) * s];
        start(col, bias[c]);
        for d in 0..din {
            let wd = wt(c, d);
            for (o, &xv) in col.iter_mut().zip(&x[d * s..(d + 1) * s]) {
                *o += wd * xv;
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
/// and at the end `out = acc / l`. (With `vscale ≠ 1` every `p` entering `acc` is scaled by it,
/// and the output by its inverse: see `kernels::attention`.) A key the mask blocks is skipped for that row: it never
/// touches `m`, `l` or `acc`, so NaN values behind a mask cannot leak, and `−∞ − (−∞)` is never
/// formed. A row that saw no key ends with `l = 0` and is written as zeros.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    out: &mut [T],
    work: WorkRef<'_, T>,
    vscale: T,
) -> bool {
    let Dims {
        sq,
        skv,
        dk,
        dv,
        ldkv,
    } = dims;
    assert!(mask.sq == sq && mask.skv == skv && work.acc.len() >= dv * MQ_MAX);
    let mut finite = true;
    assert!(q.len() >= sq * dk && k.len() >= dims.kv_len(dk) && v.len() >= dims.kv_len(dv));
    assert!(ldkv >= skv);
    assert!(out.len() >= sq * dv);
    let dense = mask.is_dense();
    let mut state = State {
        acc: work.acc,
        max: [T::ZERO; BLOCK_Q],
        sum: [T::ZERO; BLOCK_Q],
    };
    let work = &mut state;
    // `vscale` is 1, or a power of two that keeps the sums of huge values finite (see
    // `kernels::attention`); either way its inverse is exact.
    let inv_vscale = T::ONE / vscale;

    let mut i0 = 0;
    while i0 < sq {
        let nb = BLOCK_Q.min(sq - i0);
        let mut ranges = [(0usize, 0usize); BLOCK_Q];
        // Union of the rows' key ranges, and the keys every row of a full block uses.
        let (mut lo, mut hi) = (usize::MAX, 0);
        let (mut all_lo, mut all_hi) = (0, usize::MAX);
        for (r, range) in ranges.iter_mut().enumerate().take(nb) {
            *range = mask.key_range(i0 + r);
            all_lo = all_lo.max(range.0);
            all_hi = all_hi.min(range.1);
            if range.0 < range.1 {
                lo = lo.min(range.0);
                hi = hi.max(range.1);
            }
        }
        if nb < BLOCK_Q || dense {
            all_hi = 0;
        }
        work.max = [T::NEG_INFINITY; BLOCK_Q];
        work.sum = [T::ZERO; BLOCK_Q];
        for col in work.acc.chunks_exact_mut(MQ_MAX).take(dv) {
            col[..BLOCK_Q].fill(T::ZERO);
        }

        for j in lo..hi {
            if j >= all_lo
                && j < all_hi
                && full_block_key(q, k, v, dims, i0, j, scale, vscale, work)
            {
                continue;
            }
            // General path: which rows of the block use key j, and with what additive bias.
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
                let kv = k[j + d * ldkv];
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
                    // exp(−∞) = 0: an allowed key whose score overflowed to −∞ carries no
                    // weight (p = 0, c = 1, as in the other paths); not forming m − m' avoids
                    // −∞ − (−∞) when no key has been seen yet.
                    continue;
                }
                (corr[r], p[r]) = online_step(&mut work.max[r], &mut work.sum[r], sr);
                p[r] *= vscale;
            }

            for (e, acc) in work.acc.chunks_exact_mut(MQ_MAX).enumerate().take(dv) {
                let ve = v[j + e * ldkv];
                for r in 0..BLOCK_Q {
                    if used[r] {
                        acc[r] = acc[r] * corr[r] + p[r] * ve;
                    }
                }
            }
        }

        for (e, acc) in work.acc.chunks_exact(MQ_MAX).enumerate().take(dv) {
            let o = &mut out[i0 + e * sq..i0 + e * sq + nb];
            for (r, or) in o.iter_mut().enumerate() {
                let l = work.sum[r];
                // l = 0 only when no key carried weight (fully masked row): zeros, not 0/0.
                // A NaN l (a NaN score) propagates, as in PyTorch.
                *or = if l == T::ZERO {
                    T::ZERO
                } else {
                    acc[r] / l * inv_vscale
                };
                finite &= or.is_finite_();
            }
        }
        i0 += nb;
    }
    finite
}

/// The streaming kernel's state for one block of queries: output sums (one row of
/// [`MQ_MAX`] per value column, the first [`BLOCK_Q`] used), running maxima and denominators.
struct State<'a, T> {
    acc: &'a mut [T],
    max: [T; BLOCK_Q],
    sum: [T; BLOCK_Q],
}

/// One online-softmax step for one query row: folds the finite-or-NaN score `s` into the
/// running maximum `m` and denominator `l` (`m' = max(m, s)`, `l' = c·l + p`) and returns
/// `(c, p)` with `c = e^(m − m')` and `p = e^(s − m')`, for the caller's `acc' = c·acc + p·v`.
/// When the maximum does not move, `c` is exactly 1 and costs no `exp`; when no key has been
/// seen yet (`m = −∞`), `c` is 0 without forming `−∞ − m'`. A NaN score leaves `m` alone and
/// makes `p`, and so `l` and the output, NaN.
#[inline(always)]
fn online_step<T: Float>(m: &mut T, l: &mut T, s: T) -> (T, T) {
    let m_old = *m;
    let m_new = m_old.max_(s);
    // `max_` never returns less than `m_old`, so "did not move" is equality.
    let c = if m_new == m_old {
        T::ONE
    } else if m_old == T::NEG_INFINITY {
        T::ZERO
    } else {
        (m_old - m_new).exp_()
    };
    let p = (s - m_new).exp_();
    *l = *l * c + p;
    *m = m_new;
    (c, p)
}

/// The common case, written branch-free over a whole block so it vectorises: all `BLOCK_Q`
/// rows use key `j` with no additive bias. The rescaling of the running sums is skipped when no
/// row's maximum moved (most keys, after the first few). Returns `false`, having changed
/// nothing, if a score is `−∞`, which the general path handles.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn full_block_key<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    i0: usize,
    j: usize,
    scale: T,
    vscale: T,
    work: &mut State<'_, T>,
) -> bool {
    let Dims {
        sq, dk, dv, ldkv, ..
    } = dims;
    let mut s = [T::ZERO; BLOCK_Q];
    for d in 0..dk {
        let kv = k[j + d * ldkv];
        let q_col = &q[i0 + d * sq..i0 + d * sq + BLOCK_Q];
        for r in 0..BLOCK_Q {
            s[r] += q_col[r] * kv;
        }
    }
    for sr in &mut s {
        *sr *= scale;
    }
    if s.contains(&T::NEG_INFINITY) {
        return false;
    }
    let mut corr = [T::ONE; BLOCK_Q];
    let mut p = [T::ZERO; BLOCK_Q];
    for r in 0..BLOCK_Q {
        (corr[r], p[r]) = online_step(&mut work.max[r], &mut work.sum[r], s[r]);
        p[r] *= vscale;
    }
    // Multiplying by c = 1 changes nothing, so the rescale is skipped when no maximum moved.
    if corr != [T::ONE; BLOCK_Q] {
        for (e, acc) in work.acc.chunks_exact_mut(MQ_MAX).enumerate().take(dv) {
            let ve = v[j + e * ldkv];
            for r in 0..BLOCK_Q {
                acc[r] = acc[r] * corr[r] + p[r] * ve;
            }
        }
    } else {
        for (e, acc) in work.acc.chunks_exact_mut(MQ_MAX).enumerate().take(dv) {
            let ve = v[j + e * ldkv];
            for r in 0..BLOCK_Q {
                acc[r] += p[r] * ve;
            }
        }
    }
    true
}

/// Attention for one head that also writes the post-softmax weights: per query row, the
/// scores go into the row of `weights` (masked keys get exactly 0), the row is normalised,
/// and the output is the weighted sum over the keys the mask allows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with_weights<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    out: &mut [T],
    weights: &mut [T],
) {
    let Dims {
        sq,
        skv,
        dk,
        dv,
        ldkv,
    } = dims;
    assert!(mask.sq == sq && mask.skv == skv);
    assert!(weights.len() >= sq * skv && out.len() >= sq * dv);
    assert!(q.len() >= sq * dk && k.len() >= dims.kv_len(dk) && v.len() >= dims.kv_len(dv));
    assert!(ldkv >= skv);
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
                        dot += q[i + d * sq] * k[j + d * ldkv];
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
        let inv = if l == T::ZERO { T::ZERO } else { T::ONE / l };
        for j in 0..skv {
            weights[i + j * sq] *= inv;
        }
        // out[i, :] = Σ_j w_ij v[j, :] over the keys the mask allows (one mask look-up per
        // key); blocked keys are skipped so their values, even NaN, never enter, and every
        // allowed key contributes, as in the streaming path.
        for e in 0..dv {
            out[i + e * sq] = T::ZERO;
        }
        for j in lo..hi {
            if dense && mask.dense_entry(i, j).is_none() {
                continue;
            }
            let w = weights[i + j * sq];
            for e in 0..dv {
                out[i + e * sq] += w * v[j + e * ldkv];
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    //! The scalar kernel against the reference path, on odd sizes (block tails) and across
    //! input scales from tiny to large logits.
    use nalgebra::SMatrix;

    use crate::{Alignment, Mask, reference};

    /// A deterministic pseudo-random matrix in `[-scale, scale]`.
    fn matrix<const R: usize, const C: usize>(seed: u64, scale: f64) -> SMatrix<f64, R, C> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        SMatrix::from_fn(|_, _| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
    }

    fn check<const SQ: usize, const SKV: usize, const D: usize, const DV: usize>(seed: u64) {
        // Under Miri (an interpreter) one scale; the shapes below are small already.
        let scales: &[f64] = if cfg!(miri) {
            &[1.0]
        } else {
            &[1e-3, 0.1, 1.0, 4.0, 30.0]
        };
        for &scale in scales {
            let q = matrix::<SQ, D>(seed, scale);
            let k = matrix::<SKV, D>(seed + 1, scale);
            let v = matrix::<SKV, DV>(seed + 2, 1.0);
            let pad: [bool; SKV] = core::array::from_fn(|j| j % 3 == 1);
            for mask in &masks::<SQ, SKV>(&pad) {
                let (want, want_w) = reference::attention(&q, &k, &v, mask, None);
                let got = crate::scaled_dot_product_attention(&q, &k, &v, mask, None);
                let (got2, got_w) =
                    crate::scaled_dot_product_attention_with_weights(&q, &k, &v, mask, None);
                let tol = 1e-12 * (1.0 + want.amax());
                assert!((got - want).amax() <= tol, "streaming, scale {scale}");
                assert!((got2 - want).amax() <= tol, "weights path, scale {scale}");
                assert!((got_w - want_w).amax() <= 1e-12, "weights, scale {scale}");

                // f32 kernel against the f64 reference on the same (f32-rounded) inputs, within
                // SPEC.md's bound at unit scale, widened in proportion to the largest logit
                // (f32 rounding of a logit s moves exp(s) by about |s|·2⁻²⁴).
                let (q32, k32, v32) = (q.cast::<f32>(), k.cast::<f32>(), v.cast::<f32>());
                let (want, _) =
                    reference::attention(&q32.cast::<f64>(), &k32.cast(), &v32.cast(), mask, None);
                let got = crate::scaled_dot_product_attention(&q32, &k32, &v32, mask, None);
                let logit = scale * scale * (D as f64).sqrt();
                let atol = 1e-5 * (1.0 + logit / 4.0);
                for (g, w) in got.iter().zip(want.iter()) {
                    let err = (f64::from(*g) - w).abs();
                    assert!(
                        err <= atol + 1e-5 * w.abs(),
                        "f32 at scale {scale}: {g} vs {w}"
                    );
                }
            }
        }
    }

    fn masks<const SQ: usize, const SKV: usize>(pad: &[bool; SKV]) -> [Mask<'_, SQ, SKV>; 4] {
        [
            Mask::none(),
            Mask::causal(Alignment::TopLeft),
            Mask::causal(Alignment::BottomRight).with_key_is_padding(pad),
            Mask::sliding_window(3, Alignment::BottomRight),
        ]
    }

    #[test]
    fn attention_matches_reference_on_odd_sizes_and_scales() {
        check::<1, 1, 1, 1>(1);
        check::<7, 7, 5, 3>(2);
        check::<9, 13, 12, 7>(3);
        check::<17, 5, 3, 11>(4);
        if !cfg!(miri) {
            check::<33, 33, 16, 16>(5);
        }
    }

    #[test]
    fn linear_matches_naive_on_odd_sizes() {
        fn run<const S: usize, const I: usize, const O: usize>(seed: u64) {
            for scale in [1e-3, 1.0, 1e3] {
                let x = matrix::<S, I>(seed, scale);
                let w = matrix::<O, I>(seed + 1, 1.0);
                let b = matrix::<O, 1>(seed + 2, 1.0);
                let l = crate::Linear::from_matrix(&w, Some(&b));
                let want = x * w.transpose() + SMatrix::<f64, S, 1>::repeat(1.0) * b.transpose();
                let got = l.forward(&x);
                assert!((got - want).amax() <= 1e-12 * (1.0 + want.amax()));
            }
        }
        run::<1, 1, 1>(1);
        run::<7, 12, 5>(2);
        run::<13, 3, 17>(3);
    }
}
