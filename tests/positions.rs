//! Positions (docs/SEMANTICS.md rules 11 and 12, and the paper's sinusoidal encoding): RoPE tables and
//! rotations against their formulas, ALiBi slopes against the rule, and ALiBi inside the
//! kernels (every path, every kernel through the public API) against the reference.

use nalgebra::SMatrix;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::kernels::{Kernel, with_kernel};
use static_attention::positions::{Rope, RopeStyle, alibi_slope, alibi_slopes, sinusoidal_into};
use static_attention::{
    Alibi, Alignment, Bias, Mask, MultiHead, grouped_query_attention, reference,
    scaled_dot_product_attention, scaled_dot_product_attention_with_weights,
};

#[test]
fn sinusoidal_matches_the_paper() {
    let mut pe = SMatrix::<f64, 5, 7>::zeros();
    sinusoidal_into(3, &mut pe);
    for t in 0..5 {
        for c in 0..7 {
            let pos = (3 + t) as f64;
            let angle = pos / 10_000f64.powf((c / 2 * 2) as f64 / 7.0);
            let want = if c % 2 == 0 { angle.sin() } else { angle.cos() };
            assert!((pe[(t, c)] - want).abs() < 1e-15, "({t}, {c})");
        }
    }
}

#[test]
fn alibi_slopes_follow_the_rule() {
    // Powers of two: 2^(−8(h+1)/n).
    for n in [1usize, 2, 4, 8, 16, 32] {
        for h in 0..n {
            let want = 2f64.powf(-8.0 * (h + 1) as f64 / n as f64);
            assert!(
                (alibi_slope(h, n) - want).abs() < 1e-15 * want,
                "{h} of {n}"
            );
        }
    }
    // Other counts: the p = 2^⌊log2 n⌋ slopes, then every other slope of the 2p sequence.
    for n in [3usize, 5, 6, 7, 12, 20, 24, 40] {
        let p = 1usize << n.ilog2();
        let base: Vec<f64> = (0..p)
            .map(|h| 2f64.powf(-8.0 * (h + 1) as f64 / p as f64))
            .collect();
        let extra: Vec<f64> = (0..2 * p)
            .map(|h| 2f64.powf(-8.0 * (h + 1) as f64 / (2 * p) as f64))
            .step_by(2)
            .take(n - p)
            .collect();
        let want: Vec<f64> = base.into_iter().chain(extra).collect();
        for (h, w) in want.iter().enumerate() {
            assert!((alibi_slope(h, n) - w).abs() < 1e-15 * w, "{h} of {n}");
        }
    }
    // The ALiBi paper's 12-head list starts 2^-1, 2^-2, …, 2^-8 then 2^-0.5, 2^-1.5, ….
    let twelve = alibi_slopes::<12>();
    assert_eq!(twelve[0], 0.5);
    assert_eq!(twelve[7], 1.0 / 256.0);
    assert!((twelve[8] - 2f64.powf(-0.5)).abs() < 1e-16);
    assert!((twelve[11] - 2f64.powf(-3.5)).abs() < 1e-16);
}

#[test]
fn rope_tables_and_rotations_match_their_formulas() {
    const D: usize = 8;
    for style in [RopeStyle::RotateHalf, RopeStyle::Interleaved] {
        for base in [10_000.0, 500_000.0, 1_000_000.0] {
            let rope = Rope::<D, 40, f64>::new(base, style);
            let x = SMatrix::<f64, 3, D>::from_fn(|i, j| ((i * D + j) as f64 * 0.7).sin());
            let mut y = x;
            rope.rotate(&mut y, 37).expect("37..40 fit");
            for t in 0..3 {
                let p = (37 + t) as f64;
                for i in 0..D / 2 {
                    let theta = base.powf(-((2 * i) as f64) / D as f64);
                    let (c, s) = ((p * theta).cos(), (p * theta).sin());
                    let (ia, ib) = match style {
                        RopeStyle::RotateHalf => (i, i + D / 2),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (a, b) = (x[(t, ia)], x[(t, ib)]);
                    assert!((y[(t, ia)] - (a * c - b * s)).abs() < 1e-12);
                    assert!((y[(t, ib)] - (b * c + a * s)).abs() < 1e-12);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// RoPE's point: after rotation, q_m · k_n depends on m − n only.
    #[test]
    fn rope_scores_depend_on_relative_position(
        seed in any::<u64>(), m in 0usize..40, n in 0usize..40, shift in 0usize..20,
        half in any::<bool>(),
    ) {
        let style = if half { RopeStyle::RotateHalf } else { RopeStyle::Interleaved };
        let rope = Rope::<16, 64, f64>::new(10_000.0, style);
        let mut rng = SmallRng::seed_from_u64(seed);
        let q0 = SMatrix::<f64, 1, 16>::from_fn(|_, _| rng.random_range(-1.0..1.0));
        let k0 = SMatrix::<f64, 1, 16>::from_fn(|_, _| rng.random_range(-1.0..1.0));
        let score = |a: usize, b: usize| {
            let (mut q, mut k) = (q0, k0);
            rope.rotate(&mut q, a).unwrap();
            rope.rotate(&mut k, b).unwrap();
            q.dot(&k)
        };
        prop_assert!((score(m, n) - score(m + shift, n + shift)).abs() < 1e-12);
        // And a rotation keeps lengths.
        let mut q = q0;
        rope.rotate(&mut q, m).unwrap();
        prop_assert!((q.norm() - q0.norm()).abs() < 1e-12);
    }

    /// ALiBi in the streaming kernel, the weights path and the grouped entry point, f32 and
    /// f64, against the reference (which adds the bias itself); with the other mask parts; on
    /// every kernel.
    #[test]
    fn alibi_matches_the_reference(seed in any::<u64>(), slope in 0.01f64..2.0, per_head in any::<bool>()) {
        const SQ: usize = 7;
        const SKV: usize = 11;
        let mut rng = SmallRng::seed_from_u64(seed);
        let q = SMatrix::<f64, SQ, 8>::from_fn(|_, _| rng.random_range(-1.0..1.0));
        let k = SMatrix::<f64, SKV, 8>::from_fn(|_, _| rng.random_range(-1.0..1.0));
        let v = SMatrix::<f64, SKV, 5>::from_fn(|_, _| rng.random_range(-1.0..1.0));
        let pad: [bool; SKV] = core::array::from_fn(|j| j == 4);
        for kernel in Kernel::supported() {
            let on = kernel.name();
            with_kernel(kernel, || -> Result<(), TestCaseError> {
                for base in [
                    Mask::<SQ, SKV>::causal(Alignment::BottomRight),
                    Mask::none().with_key_is_padding(&pad),
                    Mask::sliding_window(3, Alignment::BottomRight),
                ] {
                    let mask = if per_head { base.with_alibi() } else { base.with_alibi_slope(slope) };
                    let (r_out, r_w) = reference::attention(&q, &k, &v, &mask, None);
                    let out64 = scaled_dot_product_attention(&q, &k, &v, &mask, None);
                    prop_assert!((out64 - r_out).amax() < 1e-12, "{}", on);
                    let (o64, w64) = scaled_dot_product_attention_with_weights(&q, &k, &v, &mask, None);
                    prop_assert!((o64 - r_out).amax() < 1e-12, "{}: {:e}", on, (o64 - r_out).amax());
                    prop_assert!((w64 - r_w).amax() < 1e-12, "{}: {:e}", on, (w64 - r_w).amax());
                    let (q32, k32, v32) = (q.cast::<f32>(), k.cast::<f32>(), v.cast::<f32>());
                    let (o32, w32) = scaled_dot_product_attention_with_weights(&q32, &k32, &v32, &mask, None);
                    let s32 = scaled_dot_product_attention(&q32, &k32, &v32, &mask, None);
                    let (r32, rw32) = reference::attention(&q32.cast::<f64>(), &k32.cast::<f64>(), &v32.cast::<f64>(), &mask, None);
                    prop_assert!((s32.cast::<f64>() - r32).amax() < 1e-5, "{}: {:e}", on, (s32.cast::<f64>() - r32).amax());
                    prop_assert!((o32.cast::<f64>() - r32).amax() < 1e-5, "{}", on);
                    prop_assert!((w32.cast::<f64>() - rw32).amax() < 1e-5, "{}", on);
                    // Grouped: 4 query heads on 2 kv heads, head h with its own slope.
                    let qs = [q, q * 0.5, -q, q * 2.0];
                    let out = grouped_query_attention(&qs, &[k, k * 0.7], &[v, v * 1.5], &mask, None);
                    for h in 0..4 {
                        let g = h / 2;
                        let (kh, vh) = ([k, k * 0.7][g], [v, v * 1.5][g]);
                        let slope_h = mask.alibi().unwrap().slope(h, 4);
                        let one = base.with_alibi_slope(slope_h);
                        let (want, _) = reference::attention(&qs[h], &kh, &vh, &one, None);
                        prop_assert!((out[h] - want).amax() < 1e-12, "{}: head {}", on, h);
                    }
                }
                Ok(())
            })
            .expect("supported")?;
        }
    }

    /// ALiBi in a layer: head h of H uses slope m_h(H), in the streaming and the weights
    /// paths, against the reference, on every kernel.
    #[test]
    fn alibi_in_multi_head_matches_the_reference(seed in any::<u64>()) {
        let layer = MultiHead::<6, 24, 6, f64>::new(&mut SmallRng::seed_from_u64(seed), Bias::Present);
        let mut rng = SmallRng::seed_from_u64(seed ^ 5);
        let x = SMatrix::<f64, 6, 24>::from_fn(|_, _| rng.random_range(-1.0..1.0));
        let mask = Mask::causal(Alignment::TopLeft).with_alibi();
        let (want, want_w) = reference::multi_head(&layer, &x, &x, &x, &mask);
        for kernel in Kernel::supported() {
            let on = kernel.name();
            with_kernel(kernel, || -> Result<(), TestCaseError> {
                let (y, w) = layer.forward_with_weights(&x, &mask);
                prop_assert!((layer.forward(&x, &mask) - want).amax() < 1e-12, "{}", on);
                prop_assert!((y - want).amax() < 1e-12, "{}", on);
                for (h, ww) in want_w.iter().enumerate() {
                    prop_assert!((w.head(h) - ww).amax() < 1e-12, "{}: head {}", on, h);
                }
                // ALiBi changes the result (the slopes reach the kernel).
                prop_assert!((layer.forward(&x, &Mask::causal(Alignment::TopLeft)) - want).amax() > 1e-6, "{}", on);
                Ok(())
            })
            .expect("supported")?;
        }
    }
}

#[test]
fn alibi_per_head_slopes_differ_from_one_slope() {
    let m = Mask::<3, 3>::none().with_alibi();
    assert_eq!(m.alibi(), Some(Alibi::PerHead));
    assert_eq!(m.head_entry::<f64>(2, 0, 0, 8), Some(-0.5 * 2.0));
    assert_eq!(m.head_entry::<f64>(2, 0, 7, 8), Some(-2.0 / 256.0));
    // Queries sit at the last keys: with SQ = 1 and SKV = 4, the query is at position 3.
    let one = Mask::<1, 4>::none().with_alibi_slope(0.25);
    assert_eq!(one.head_entry::<f64>(0, 3, 0, 1), Some(0.0));
    assert_eq!(one.head_entry::<f64>(0, 0, 5, 9), Some(-0.75));
    // Through the kernels: with per-head slopes, head h of 4 uses 2^(−2(h+1)); with one slope
    // 2^−2 for every head, head 0 is unchanged and every other head's output differs.
    let x = SMatrix::<f64, 6, 4>::from_fn(|i, j| ((i * 4 + j) as f64 * 0.37).sin());
    let v = SMatrix::<f64, 6, 3>::from_fn(|i, j| (i * 3 + j) as f64 * 0.25 - 1.0);
    let qs = [x, x * 0.5, -x, x * 2.0];
    let causal = Mask::<6, 6>::causal(Alignment::TopLeft);
    for kernel in Kernel::supported() {
        with_kernel(kernel, || {
            let per_head = grouped_query_attention(&qs, &[x], &[v], &causal.with_alibi(), None);
            let shared =
                grouped_query_attention(&qs, &[x], &[v], &causal.with_alibi_slope(0.25), None);
            assert!(
                (per_head[0] - shared[0]).amax() < 1e-12,
                "{}: head 0 has slope 2^-2 either way",
                kernel.name()
            );
            for h in 1..4 {
                let diff = (per_head[h] - shared[h]).amax();
                assert!(
                    diff > 1e-3,
                    "{}: head {h} differs by only {diff:e}",
                    kernel.name()
                );
            }
        })
        .expect("supported");
    }
}
