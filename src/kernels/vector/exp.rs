//! The vector `exp` ([`Simd::exp`]) over slices and single values, so that every use of `exp`
//! in a kernel (the softmax's `p`, the online correction `c`, the benchmarks) is the same
//! function.

use super::super::Float;
use super::super::args::MQ_MAX;
use super::super::simd::Simd;

/// `rounds` rounds of [`PEAK_CHAINS`] independent fused multiply-adds on whole vectors: the
/// loop a core's FMA peak is measured with. Returns the floating-point operations done (two
/// per lane per FMA) and the sum of the results, which depends on every one of them.
#[inline(always)]
pub(crate) fn fma_loop<S: Simd>(s: S, rounds: usize) -> (u64, S::E) {
    let a = s.splat(S::E::of(0.999_999));
    let b = s.splat(S::E::of(1e-7));
    let mut acc = [s.splat(S::E::ONE); PEAK_CHAINS];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = s.fma(*x, a, b);
        }
    }
    let total = acc.iter().fold(s.splat(S::E::ZERO), |t, &x| s.add(t, x));
    let flops = (rounds * PEAK_CHAINS * S::LANES * 2) as u64;
    (flops, s.reduce_add(total))
}

/// Independent accumulator chains of [`fma_loop`]: enough to keep two FMA units busy through
/// a latency of up to six cycles.
pub(crate) const PEAK_CHAINS: usize = 12;

/// `exp` over a slice (the tail value by value through [`exp_scalar`]).
#[inline(always)]
pub(crate) fn exp_slice<S: Simd>(s: S, xs: &mut [S::E]) {
    let l = S::LANES;
    let full = xs.len() / l * l;
    let mut c = 0;
    while c < full {
        // SAFETY: `c + l ≤ full ≤ xs.len()`.
        unsafe { s.store(xs.as_mut_ptr().add(c), s.exp(s.load(xs.as_ptr().add(c)))) };
        c += l;
    }
    for x in &mut xs[full..] {
        *x = exp_scalar(s, *x);
    }
}

/// [`Simd::tanh`] over a slice (the tail through one vector padded with zeros), as the
/// soft-cap pass applies it: what the tests measure its accuracy through.
#[inline(always)]
pub(crate) fn tanh_slice<S: Simd>(s: S, xs: &mut [S::E]) {
    let l = S::LANES;
    let full = xs.len() / l * l;
    let mut c = 0;
    while c < full {
        // SAFETY: `c + l ≤ full ≤ xs.len()`.
        unsafe { s.store(xs.as_mut_ptr().add(c), s.tanh(s.load(xs.as_ptr().add(c)))) };
        c += l;
    }
    let rest = xs.len() - full;
    if rest > 0 {
        let mut lanes = [S::E::ZERO; MQ_MAX];
        // SAFETY: `rest < l` values from `full`, and `lanes` holds `MQ_MAX ≥ LANES` values.
        unsafe {
            let x = s.load_partial(xs.as_ptr().add(full), rest);
            s.store(lanes.as_mut_ptr(), s.tanh(x));
        }
        xs[full..].copy_from_slice(&lanes[..rest]);
    }
}

/// `e^x` of one value with the vector `exp`.
#[inline(always)]
pub(crate) fn exp_scalar<S: Simd>(s: S, x: S::E) -> S::E {
    let mut lanes = [S::E::ZERO; MQ_MAX];
    // SAFETY: `lanes` holds `MQ_MAX ≥ LANES` values.
    unsafe { s.store(lanes.as_mut_ptr(), s.exp(s.splat(x))) };
    lanes[0]
}

/// `p = e^(p − shift)` over a slice; returns `Σ p`.
#[inline(always)]
pub(crate) fn exp_shifted<S: Simd>(s: S, p: &mut [S::E], shift: S::E) -> S::E {
    let l = S::LANES;
    let sh = s.splat(shift);
    let mut acc = s.splat(S::E::ZERO);
    let full = p.len() / l * l;
    let mut c = 0;
    while c < full {
        // SAFETY: `c + l ≤ full ≤ p.len()`.
        unsafe {
            let x = s.exp(s.sub(s.load(p.as_ptr().add(c)), sh));
            acc = s.add(acc, x);
            s.store(p.as_mut_ptr().add(c), x);
        }
        c += l;
    }
    let mut total = s.reduce_add(acc);
    for x in &mut p[full..] {
        *x = exp_scalar(s, *x - shift);
        total += *x;
    }
    total
}
