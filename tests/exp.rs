//! The vectorised `exp` of the softmax, against `f64::exp` (correctly rounded to far below an
//! f32 ulp), through `kernels::exp_in_place` with each vector kernel the CPU runs (AVX2 + FMA,
//! AVX-512, NEON).
//!
//! - `every_f32_in_the_softmax_range` (ignored in the default run, about 1.1e9 values; CI runs
//!   it in release: `cargo test --release --test exp -- --ignored`) checks every f32 in
//!   `[−87.3, 0]` to ≤ 2 ulp.
//! - The default run checks a strided sample of the same range, the special values, and f64.

use static_attention::kernels::{Kernel, exp_in_place, with_kernel};

/// The vector kernels this CPU runs (the scalar kernel's `exp` is the platform's and needs
/// no test here).
fn vector_kernels() -> impl Iterator<Item = Kernel> {
    Kernel::supported().filter(|&k| k != Kernel::Scalar)
}

/// Runs `f` with each vector kernel selected on this thread, passing it the kernel (so work
/// it hands to other threads can select the same one).
fn on_vector_kernel(f: impl Fn(Kernel)) {
    for k in vector_kernels() {
        eprintln!("kernel {}", k.name());
        with_kernel(k, || f(k)).expect("supported");
    }
}

/// Error of `got` in units of the last place of the correctly rounded f32 result.
fn ulps(got: f32, x: f32) -> f64 {
    let exact = f64::from(x).exp();
    let rounded = exact as f32;
    let ulp = f64::from(f32::from_bits(rounded.to_bits() + 1) - rounded);
    (f64::from(got) - exact).abs() / ulp
}

/// Worst ulp error over the f32 bit patterns `bits` (negative floats: sign bit set).
fn worst_over(bits: impl Iterator<Item = u32>) -> (f64, f32) {
    let mut xs: Vec<f32> = Vec::with_capacity(1 << 16);
    let mut worst = (0.0, 0.0);
    let mut flush = |xs: &mut Vec<f32>| {
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let e = ulps(y, x);
            if e > worst.0 {
                worst = (e, x);
            }
        }
        xs.clear();
    };
    for b in bits {
        xs.push(f32::from_bits(b));
        if xs.len() == 1 << 16 {
            flush(&mut xs);
        }
    }
    flush(&mut xs);
    worst
}

/// Bit patterns of the negative f32 from −0 down to −87.3 (IEEE order: larger patterns are
/// more negative).
fn softmax_range() -> core::ops::RangeInclusive<u32> {
    (-0.0f32).to_bits()..=(-87.3f32).to_bits()
}

#[test]
fn special_values() {
    on_vector_kernel(|_| {
        let mut xs = [
            f32::NEG_INFINITY,
            -1e30,
            -104.0,
            -88.0,
            -0.0,
            0.0,
            f32::NAN,
            -f32::NAN,
            1.0,
        ];
        exp_in_place(&mut xs);
        assert_eq!(
            &xs[..5],
            &[0.0, 0.0, 0.0, 0.0, 1.0],
            "exp(−∞), very negative, exp(−0)"
        );
        assert_eq!(xs[5], 1.0);
        assert!(xs[6].is_nan() && xs[7].is_nan(), "NaN stays NaN");
        assert!((xs[8] - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
        let mut ys = [f64::NEG_INFINITY, -1e300, -800.0, 0.0, f64::NAN];
        exp_in_place(&mut ys);
        assert_eq!(&ys[..4], &[0.0, 0.0, 0.0, 1.0]);
        assert!(ys[4].is_nan());
    });
}

#[test]
fn sampled_f32_range_within_2_ulp() {
    on_vector_kernel(|k| {
        // Every 997th pattern: about 1.1 million values spread over the whole range.
        let (worst, at) = worst_over(softmax_range().step_by(997));
        println!("{}: worst {worst:.3} ulp at {at:e}", k.name());
        assert!(worst <= 2.0, "{worst} ulp at {at:e}");
    });
}

#[test]
fn f64_within_2_ulp() {
    on_vector_kernel(|k| {
        let mut worst = 0.0f64;
        let n = 200_000;
        let xs: Vec<f64> = (0..n)
            .map(|i| -708.0 * i as f64 / n as f64 - 1e-3 * (i % 7) as f64)
            .collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = x.exp();
            let ulp = f64::from_bits(exact.to_bits() + 1) - exact;
            worst = worst.max((y - exact).abs() / ulp);
        }
        println!(
            "{}: f64 worst {worst:.3} ulp (against the platform's exp)",
            k.name()
        );
        assert!(worst <= 2.0, "{worst}");
    });
}

/// Every f32 in [−87.3, 0]: run in release by CI (`-- --ignored`), on both cores.
#[test]
#[ignore = "1.1e9 values: run in release, `cargo test --release --test exp -- --ignored`"]
fn every_f32_in_the_softmax_range() {
    on_vector_kernel(|k| {
        let range = softmax_range();
        let (lo, hi) = (*range.start(), *range.end());
        let mid = lo + (hi - lo) / 2;
        let worst = std::thread::scope(|scope| {
            let halves = [(lo, mid), (mid + 1, hi)].map(|(a, b)| {
                scope.spawn(move || with_kernel(k, || worst_over(a..=b)).expect("vector kernel"))
            });
            halves.map(|h| h.join().expect("thread"))
        });
        let (e, at) = if worst[0].0 >= worst[1].0 {
            worst[0]
        } else {
            worst[1]
        };
        println!(
            "{}: every f32 in [−87.3, 0] ({} values): worst {e:.3} ulp at {at:e}",
            k.name(),
            hi - lo + 1
        );
        assert!(e <= 2.0, "{e} ulp at {at:e}");
    });
}
