//! The portable kernel: plain loops over column-major slices, written so the compiler can
//! vectorise the innermost loops (over queries and over sequence positions). It is the
//! reference the instruction-set kernels are tested against, and the place to read the online
//! softmax (see [`attention`]) before the SIMD tiles of `vector/`.

use core::marker::PhantomData;

use super::args::{Dims, LinearIo, MQ_MAX, Problem, QueryIo, WorkRef, check_weights};
use super::layout::weight_index;
use super::table::{Table, widen_portable};
use super::{Float, Kernel, Lazy};
use crate::Weight;

/// The scalar kernel's table for scalar type `T`.
pub(super) struct Tables<T>(PhantomData<T>);

impl<T: Float> Tables<T> {
    pub(super) const TABLE: Table<T> = Table {
        kernel: Kernel::Scalar,
        linear: linear::<T, T>,
        attention: attention::<T>,
        weights: attention_with_weights::<T>,
        exp: exp_in_place::<T>,
        tanh: tanh_in_place::<T>,
        widen: widen_portable::<T>,
        linear_bf16: None,
        linear_i8: None,
        linear_bf16_exact: None,
        linear_widening: None,
        attention_bf16: None,
        attention_i8: None,
        fma_loop: fma_loop::<T>,
    };
}

/// Rows of queries the streaming kernel processes together.
const BLOCK_Q: usize = 8;

/// The FMA-peak loop on scalars: 12 independent multiply-add chains (what the compiler makes
/// of them is the compiler's; the vector kernels' loop is the one a peak is measured with).
fn fma_loop<T: Float>(rounds: usize) -> (u64, T) {
    let (a, b) = (T::of(0.999_999), T::of(1e-7));
    let mut acc = [T::ONE; 12];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = *x * a + b;
        }
    }
    (
        (rounds * 12 * 2) as u64,
        acc.iter().fold(T::ZERO, |t, &x| t + x),
    )
}

/// `eˣ` with the platform's `exp`.
fn exp_in_place<T: Float>(xs: &mut [T]) {
    xs.iter_mut().for_each(|x| *x = x.exp_());
}

/// `tanh(x)` with the platform's `tanh`.
fn tanh_in_place<T: Float>(xs: &mut [T]) {
    xs.iter_mut().for_each(|x| *x = x.tanh_());
}

/// `out[s × dout] = x[s × din] · Wᵀ + b` (column-major; `W` in the tile layout of
/// [`crate::Linear`], stored as `Wt` and widened as it is read), or `out += x · Wᵀ` for
/// [`LinearIo::Add`]. The pack buffer is not needed.
pub(super) fn linear<T: Float, Wt: Weight<T>>(
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[Wt],
    dout: usize,
    bias: &[T],
    _pack: &mut [T],
) {
    check_weights(w, bias, din, dout);
    let wt = |c: usize, d: usize| w[weight_index(Wt::KIND, c, d, din, dout)].widen();
    let (x, out, add) = io.checked(s, din, dout);
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

/// `out[s × dout] = x[s × din] · Wᵀ + b` (or `out += x · Wᵀ`) with symmetric `i8` weights
/// `q` (in the tile layout of [`crate::Linear`], rows in fours) and one scale per output
/// feature: the reference every `i8` kernel matches bit for bit. Each token's inputs are
/// quantized on the fly with their own scale, the products summed exactly in `i32`:
///
/// ```text
/// a = max_p |x_p|,  r = 127 / a,  x̂_p = round(x_p · r) (ties to even, within ±127)
/// y_n = f(Σ_p x̂_p · q_np) · ((a / 127) · scale_n) + b_n
/// ```
///
/// (`f` rounds the `i32` sum to `T`; each operation rounds once, none is fused). A token
/// whose inputs are all zero gets `y = b`; one with a NaN or infinite input gets NaN in every
/// output.
///
/// Each output feature's weights for four consecutive inputs are one 32-bit word, and
/// consecutive words of a feature lie `4 · width` bytes apart (`width` the feature's tile);
/// the sums run over those words ([`dot_quads`]). With the Cortex-M DSP extension
/// (`cfg(static_attention_dsp)`, set by `build.rs`) they run on its dual 16-bit
/// multiply-accumulate `SMLAD` instead (`super::dsp`), four features of a tile at a time, the
/// quantized inputs sign-extended to 16-bit pairs once per token; integer sums are exact, so
/// both give the same bits.
pub(super) fn linear_i8<T: Float>(
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    q: &[i8],
    dout: usize,
    scales: &[T],
    bias: &[T],
) {
    use super::layout::WEIGHT_TILE;
    use crate::WeightKind::I8;
    check_weights(q, bias, din, dout);
    assert_eq!(scales.len(), dout, "one scale per output feature");
    let (x, out, add) = io.checked(s, din, dout);
    let max_q = T::of(127.0);
    // Sums of a block of outputs, over the token's inputs quantized a chunk at a time (on the
    // stack: 768 bytes; with the DSP extension 1 KiB more for the inputs as 16-bit pairs).
    const OUTS: usize = 64;
    const INS: usize = 512;
    let mut sums = [0i32; OUTS];
    let mut xq = [0i8; INS];
    #[cfg(static_attention_dsp)]
    let mut pairs = [0u32; INS / 2];
    // Inputs in whole groups of four (the rest, `din mod 4`, are stored one row each).
    let quads = din / 4 * 4;
    let full = dout / WEIGHT_TILE * WEIGHT_TILE;
    for i in 0..s {
        let row = |d: usize| x[i + d * s];
        let (amax, finite) = amax_finite(x, i, s, din);
        let r = max_q / amax;
        let sx = amax / max_q;
        let mut c0 = 0;
        while c0 < dout {
            let cs = OUTS.min(dout - c0);
            sums[..cs].fill(0);
            if finite && amax != T::ZERO {
                let mut d0 = 0;
                while d0 < din {
                    let ds = INS.min(din - d0);
                    for (k, q) in xq[..ds].iter_mut().enumerate() {
                        *q = quantize(row(d0 + k) * r);
                    }
                    // `d0` is a multiple of 4: the chunk's first `dq` inputs are whole groups.
                    let dq = quads.saturating_sub(d0).min(ds);
                    // Feature `c`'s products with the chunk's inputs past the whole groups.
                    let rest = |c: usize, xs: &[i8]| -> i32 {
                        xs.iter()
                            .enumerate()
                            .map(|(j, &xv)| {
                                let w = q[weight_index(I8, c, d0 + dq + j, din, dout)];
                                i32::from(xv) * i32::from(w)
                            })
                            .sum()
                    };
                    #[cfg(static_attention_dsp)]
                    super::dsp::pack(&xq[..dq], &mut pairs[..dq / 2]);
                    let mut k = 0;
                    while k < cs {
                        let c = c0 + k;
                        let (width, j) = if c < full {
                            (WEIGHT_TILE, c % WEIGHT_TILE)
                        } else {
                            (dout - full, c - full)
                        };
                        // With the DSP extension, four features of one tile at a time.
                        #[cfg(static_attention_dsp)]
                        if dq > 0 && k + 4 <= cs && j + 4 <= width {
                            let first = weight_index(I8, c, d0, din, dout);
                            let four =
                                super::dsp::dot_quads_x4(&pairs[..dq / 2], q, first, 4 * width);
                            for (n, (sum, part)) in sums[k..k + 4].iter_mut().zip(four).enumerate()
                            {
                                *sum += part + rest(c + n, &xq[dq..ds]);
                            }
                            k += 4;
                            continue;
                        }
                        let sum = &mut sums[k];
                        if dq > 0 {
                            let first = weight_index(I8, c, d0, din, dout);
                            #[cfg(static_attention_dsp)]
                            {
                                *sum +=
                                    super::dsp::dot_quads(&pairs[..dq / 2], q, first, 4 * width);
                            }
                            #[cfg(not(static_attention_dsp))]
                            {
                                *sum += dot_quads(&xq[..dq], q, first, 4 * width);
                            }
                        }
                        *sum += rest(c, &xq[dq..ds]);
                        let _ = j; // (read by the DSP path only)
                        k += 1;
                    }
                    d0 += ds;
                }
            }
            for (k, &sum) in sums[..cs].iter().enumerate() {
                let c = c0 + k;
                let term = if !finite {
                    T::NAN
                } else if amax == T::ZERO {
                    T::ZERO
                } else {
                    to_float::<T>(sum) * (sx * scales[c])
                };
                let y = &mut out[i + c * s];
                *y = if add { *y + term } else { term + bias[c] };
            }
            c0 += cs;
        }
    }
}

/// [`amax_finite`] for tokens `g0 .. g0 + amax.len()` of `x` (`s × din`, column-major) into
/// `amax` and `finite`: column by column, the tokens side by side (which vectorises). NaN
/// fails `a > m`: it leaves the maximum alone, and marks its token as infinities do. The
/// vector `i8` kernels' quantization starts here.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[inline(always)]
pub(super) fn group_amax_finite<T: Float>(
    x: &[T],
    s: usize,
    din: usize,
    g0: usize,
    amax: &mut [T],
    finite: &mut [bool],
) {
    let n = amax.len();
    amax.fill(T::ZERO);
    finite[..n].fill(true);
    for p in 0..din {
        let col = &x[g0 + p * s..g0 + p * s + n];
        for ((m, f), &v) in amax.iter_mut().zip(&mut finite[..n]).zip(col) {
            let a = v.abs_();
            *f &= a.is_finite_();
            if a > *m {
                *m = a;
            }
        }
    }
}

/// The largest `|x|` over token `i`'s `din` inputs (column-major, `s` tokens), and whether
/// they are all finite.
#[inline(always)]
fn amax_finite<T: Float>(x: &[T], i: usize, s: usize, din: usize) -> (T, bool) {
    // `f32` (the only 4-byte `Float`) on its bits: without the sign bit, finite values order
    // as their bits, and infinities and NaN lie above them all (one integer maximum per
    // input, where comparing floats takes a Cortex-M4F five instructions).
    if T::BYTES == 4
        && let Ok(bits) = bytemuck::try_cast_slice::<T, u32>(x)
    {
        let m = (0..din).fold(0u32, |m, d| m.max(bits[i + d * s] & 0x7fff_ffff));
        if let Ok(amax) = bytemuck::try_cast::<f32, T>(f32::from_bits(m)) {
            return (amax, m < 0x7f80_0000);
        }
    }
    let mut amax = T::ZERO;
    let mut finite = true;
    for d in 0..din {
        let a = x[i + d * s].abs_();
        finite &= a.is_finite_();
        amax = amax.max_(a);
    }
    (amax, finite)
}

/// `x` rounded to the nearest integer (ties to even) and saturated to `±127`, NaN to `0`:
/// `crate::weight::quantize` in `T` itself (the same integer, as `x` is a `T`; on a
/// Cortex-M4F, where `f64` arithmetic is a library call, the difference is what it costs).
#[inline(always)]
fn quantize<T: Float>(x: T) -> i8 {
    // Adding and subtracting 1.5 / ε (1.5·2²³ for `f32`, 1.5·2⁵² for `f64`) rounds to an
    // integer, ties to even, for |x| < 0.5 / ε; anything larger (or infinite) stays beyond
    // ±127 and saturates below.
    let magic = T::of(1.5) / T::EPSILON;
    let v = (x + magic) - magic;
    // `as i32` saturates and takes NaN to 0 (one `vcvt` on a Cortex-M4F). `Float` is `f32`
    // or `f64`: an `f32` converts directly, without the soft-float `f64` of the Cortex-M4F.
    let i = match bytemuck::try_cast::<T, f32>(v) {
        Ok(v) => v as i32,
        Err(_) => v.to_f64() as i32,
    };
    i.clamp(-127, 127) as i8
}

/// `sum` rounded to `T` (to nearest): directly for `f32` (`vcvt` on a Cortex-M4F), through
/// the exact `f64` for `f64`.
#[inline(always)]
fn to_float<T: Float>(sum: i32) -> T {
    bytemuck::try_cast::<f32, T>(sum as f32).unwrap_or_else(|_| T::of(f64::from(sum)))
}

/// `Σ_p x_p · q_p` over whole groups of four inputs (`x.len()` a multiple of 4): the weights
/// of group `g` are the four bytes at `q[first + g · stride ..]`.
#[cfg_attr(static_attention_dsp, allow(dead_code))]
#[inline(always)]
fn dot_quads(x: &[i8], q: &[i8], first: usize, stride: usize) -> i32 {
    let mut sum = 0i32;
    for (xs, w) in x.chunks_exact(4).zip(q[first..].chunks(stride)) {
        let w = &w[..4];
        sum += i32::from(xs[0]) * i32::from(w[0])
            + i32::from(xs[1]) * i32::from(w[1])
            + i32::from(xs[2]) * i32::from(w[2])
            + i32::from(xs[3]) * i32::from(w[3]);
    }
    sum
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
/// and at the end `out = acc / l`. Each row starts at `m = −∞`, `l = 0`, or with a sink logit
/// `s` at `m = s`, `l = 1` (the sink's `e^(s − m)`, which the recurrence then rescales like
/// any other term, and which adds nothing to `acc`). With a soft-cap `c`, a key's scores are
/// capped (`c · tanh(z / c)`) as soon as they are computed, before the mask's bias is added:
/// one test per key, never per score. A key the mask blocks is skipped for that row: it never
/// touches `m`, `l` or `acc`, so NaN values behind a mask cannot leak, and `−∞ − (−∞)` is never
/// formed. A row that saw no key ends with `l = 0` and is written as zeros.
///
/// A block's outputs are written only after its last key, so they may replace its queries
/// ([`QueryIo::InPlace`]). If a block's outputs are not finite because huge values overflowed
/// the sums, the block is redone with every `p` scaled by a power of two
/// ([`super::overflow_rescale`]) and the outputs scaled back.
pub(super) fn attention<T: Float>(
    mut io: QueryIo<'_, T>,
    p: &Problem<'_, T>,
    work: WorkRef<'_, T>,
) {
    p.check(&io);
    if p.sink_undefined() {
        p.write_undefined(&mut io, None);
        return;
    }
    let Dims { sq, dv, ldq, .. } = p.dims;
    assert!(work.acc.len() >= dv * MQ_MAX, "work buffer too short");
    let mut state = State {
        acc: work.acc,
        max: [T::ZERO; BLOCK_Q],
        sum: [T::ZERO; BLOCK_Q],
    };
    let mut lazy = Lazy::new();
    let mut i0 = 0;
    while i0 < sq {
        let nb = BLOCK_Q.min(sq - i0);
        let rows = |q, vscale| Rows {
            q,
            p,
            i0,
            nb,
            vscale,
        };
        block(rows(io.queries(), T::ONE), &mut state);
        let mut vscale = T::ONE;
        if !state.outputs_finite(nb, dv)
            && let Some(rescale) = lazy.rescale(p.v, p.dims)
        {
            vscale = rescale;
            block(rows(io.queries(), vscale), &mut state);
        }
        // `vscale` is 1, or a power of two: either way its inverse is exact.
        let inv_vscale = T::ONE / vscale;
        let out = io.outputs();
        for (e, acc) in state.acc.chunks_exact(MQ_MAX).enumerate().take(dv) {
            let o = &mut out[i0 + e * ldq..i0 + e * ldq + nb];
            for (r, or) in o.iter_mut().enumerate() {
                *or = state.output(acc[r], r) * inv_vscale;
            }
        }
        i0 += nb;
    }
}

/// The streaming kernel's state for one block of queries: output sums (one row of
/// [`MQ_MAX`] per value column, the first [`BLOCK_Q`] used), running maxima and denominators.
struct State<'a, T> {
    acc: &'a mut [T],
    max: [T; BLOCK_Q],
    sum: [T; BLOCK_Q],
}

impl<T: Float> State<'_, T> {
    /// Row `r`'s output from its sum `acc`: `acc / l`, or 0 when no key carried weight
    /// (`l = 0`: a fully masked row, zeros rather than 0/0; with a sink, `l ≥ e^0` and
    /// `acc = 0` there). A NaN `l` (a NaN score)
    /// propagates, as in PyTorch.
    #[inline(always)]
    fn output(&self, acc: T, r: usize) -> T {
        let l = self.sum[r];
        if l == T::ZERO { T::ZERO } else { acc / l }
    }

    /// Whether every output of the block's `nb` rows is finite.
    fn outputs_finite(&self, nb: usize, dv: usize) -> bool {
        self.acc
            .chunks_exact(MQ_MAX)
            .take(dv)
            .all(|acc| (0..nb).all(|r| self.output(acc[r], r).is_finite_()))
    }
}

/// One block of query rows of the streaming kernel: the `nb ≤ BLOCK_Q` rows of `q` from `i0`
/// against the keys of `p`, every `p` entering the output sums scaled by `vscale`.
#[derive(Clone, Copy)]
struct Rows<'a, 'p, T> {
    q: &'a [T],
    p: &'a Problem<'p, T>,
    i0: usize,
    nb: usize,
    vscale: T,
}

/// Runs the keys over a block of rows, leaving the sums in `work`.
fn block<T: Float>(rows: Rows<'_, '_, T>, work: &mut State<'_, T>) {
    let Rows {
        q,
        p,
        i0,
        nb,
        vscale,
    } = rows;
    let Dims {
        dk, dv, ldq, ldkv, ..
    } = p.dims;
    let (k, v, mask) = (p.k, p.v, p.mask);
    // With a soft-cap the scores are scaled (and capped) before the bias is added, and the
    // product with 1 below is exact.
    let scale = if p.softcap.is_some() { T::ONE } else { p.scale };
    let dense = mask.is_dense();
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
    // Every row starts with the sink alone (`m = s`, `l = e^(s − s)`), or with nothing.
    let (m0, l0) = match p.sink_logit() {
        Some(sink) => (sink, T::ONE),
        None => (T::NEG_INFINITY, T::ZERO),
    };
    work.max = [m0; BLOCK_Q];
    work.sum = [l0; BLOCK_Q];
    for col in work.acc.chunks_exact_mut(MQ_MAX).take(dv) {
        col[..BLOCK_Q].fill(T::ZERO);
    }

    for j in lo..hi {
        if j >= all_lo && j < all_hi && full_block_key(rows, j, work) {
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
            let q_col = &q[i0 + d * ldq..i0 + d * ldq + nb];
            for (sr, &qv) in s.iter_mut().zip(q_col) {
                *sr += qv * kv;
            }
        }
        if let Some(c) = p.softcap {
            for sr in &mut s[..nb] {
                *sr = soft_cap(*sr * p.scale, c);
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
/// rows (`rows.nb = BLOCK_Q`) use key `j` with no additive bias. The rescaling of the running
/// sums is skipped when no row's maximum moved (most keys, after the first few). Returns
/// `false`, having changed nothing, if a score is `−∞`, which the general path handles.
#[inline(always)]
fn full_block_key<T: Float>(rows: Rows<'_, '_, T>, j: usize, work: &mut State<'_, T>) -> bool {
    let Rows {
        q, p, i0, vscale, ..
    } = rows;
    let Dims {
        dk, dv, ldq, ldkv, ..
    } = p.dims;
    let scale = p.scale;
    let mut s = [T::ZERO; BLOCK_Q];
    for d in 0..dk {
        let kv = p.k[j + d * ldkv];
        let q_col = &q[i0 + d * ldq..i0 + d * ldq + BLOCK_Q];
        for r in 0..BLOCK_Q {
            s[r] += q_col[r] * kv;
        }
    }
    match p.softcap {
        None => s.iter_mut().for_each(|sr| *sr *= scale),
        Some(c) => s.iter_mut().for_each(|sr| *sr = soft_cap(*sr * scale, c)),
    }
    if s.contains(&T::NEG_INFINITY) {
        return false;
    }
    let mut corr = [T::ONE; BLOCK_Q];
    let mut pr = [T::ZERO; BLOCK_Q];
    for r in 0..BLOCK_Q {
        (corr[r], pr[r]) = online_step(&mut work.max[r], &mut work.sum[r], s[r]);
        pr[r] *= vscale;
    }
    // Multiplying by c = 1 changes nothing, so the rescale is skipped when no maximum moved.
    if corr != [T::ONE; BLOCK_Q] {
        for (e, acc) in work.acc.chunks_exact_mut(MQ_MAX).enumerate().take(dv) {
            let ve = p.v[j + e * ldkv];
            for r in 0..BLOCK_Q {
                acc[r] = acc[r] * corr[r] + pr[r] * ve;
            }
        }
    } else {
        for (e, acc) in work.acc.chunks_exact_mut(MQ_MAX).enumerate().take(dv) {
            let ve = p.v[j + e * ldkv];
            for r in 0..BLOCK_Q {
                acc[r] += pr[r] * ve;
            }
        }
    }
    true
}

/// Attention for one head that also writes the post-softmax weights: per query row, the
/// scores go into the row of `weights` (`sq × skv`, column-major with leading dimension
/// `ldq`; masked keys get exactly 0), soft-capped if asked (the row's loop is compiled once
/// per case, so the plain one never tests for the cap),
/// the row is normalised (its denominator including the sink's `e^(s − m)`, `m` the maximum
/// of the scores and `s`), and the output is the weighted sum over the keys the mask allows.
/// A row's output is written after its query has been read, so it may replace it.
pub(super) fn attention_with_weights<T: Float>(
    mut io: QueryIo<'_, T>,
    p: &Problem<'_, T>,
    weights: &mut [T],
) {
    p.check(&io);
    assert!(
        weights.len() >= p.dims.q_len(p.dims.skv),
        "weights too short"
    );
    if p.sink_undefined() {
        p.write_undefined(&mut io, Some(weights));
        return;
    }
    let Dims {
        sq,
        skv,
        dv,
        ldq,
        ldkv,
        ..
    } = p.dims;
    let (v, mask) = (p.v, p.mask);
    let dense = mask.is_dense();
    let sink = p.sink_logit();
    for i in 0..sq {
        let (lo, hi) = mask.key_range(i);
        let q = io.queries();
        let m0 = sink.unwrap_or(T::NEG_INFINITY);
        let m = match p.softcap {
            None => row_scores(q, p, i, weights, m0, |z| z),
            Some(c) => row_scores(q, p, i, weights, m0, |z| soft_cap(z, c)),
        };
        // Normalise the row; a row with no finite score (all masked) becomes all zeros (with
        // a sink, `m = s` there and the denominator is 1).
        let mut l = match sink {
            Some(s) => (s - m).exp_(),
            None => T::ZERO,
        };
        for j in 0..skv {
            let w = &mut weights[i + j * ldq];
            *w = if *w == T::NEG_INFINITY {
                T::ZERO
            } else {
                (*w - m).exp_()
            };
            l += *w;
        }
        let inv = if l == T::ZERO { T::ZERO } else { T::ONE / l };
        for j in 0..skv {
            weights[i + j * ldq] *= inv;
        }
        // out[i, :] = Σ_j w_ij v[j, :] over the keys the mask allows (one mask look-up per
        // key); blocked keys are skipped so their values, even NaN, never enter, and every
        // allowed key contributes, as in the streaming path.
        let out = io.outputs();
        for e in 0..dv {
            out[i + e * ldq] = T::ZERO;
        }
        for j in lo..hi {
            if dense && mask.dense_entry(i, j).is_none() {
                continue;
            }
            let w = weights[i + j * ldq];
            for e in 0..dv {
                out[i + e * ldq] += w * v[j + e * ldkv];
            }
        }
    }
}

/// Row `i`'s scores into its row of `weights` (leading dimension `ldq`): `cap(scale · q·k)`
/// plus the key's bias where the mask allows the key, `−∞` elsewhere. Returns the maximum of
/// `m0` and the scores.
#[inline(always)]
fn row_scores<T: Float>(
    q: &[T],
    p: &Problem<'_, T>,
    i: usize,
    weights: &mut [T],
    m0: T,
    cap: impl Fn(T) -> T,
) -> T {
    let Dims {
        skv, dk, ldq, ldkv, ..
    } = p.dims;
    let (k, mask) = (p.k, p.mask);
    let dense = mask.is_dense();
    let (lo, hi) = mask.key_range(i);
    let mut m = m0;
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
                    dot += q[i + d * ldq] * k[j + d * ldkv];
                }
                cap(dot * p.scale) + bias
            }
            None => T::NEG_INFINITY,
        };
        m = m.max_(s);
        weights[i + j * ldq] = s;
    }
    m
}

/// The soft-capped score `c · tanh(z / c)` (see [`Problem`]).
#[inline(always)]
pub(super) fn soft_cap<T: Float>(z: T, c: T) -> T {
    c * (z / c).tanh_()
}
