//! Positions (docs/SEMANTICS.md rules 11 and 12, and the paper's sinusoidal encoding): RoPE tables and
//! rotations against their formulas, ALiBi slopes against the rule, and ALiBi inside the
//! kernels (every path, every kernel through the public API) against the reference.

use nalgebra::SMatrix;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::kernels::{Kernel, with_kernel};
use static_attention::positions::{
    Rope, RopeConfig, RopeError, RopePrecision, RopeScaling, RopeStyle, alibi_slope, alibi_slopes,
    sinusoidal_into,
};
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
            let rope = Rope::<D, 40, f64>::new(base, style).expect("valid");
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
        let rope = Rope::<16, 64, f64>::new(10_000.0, style).unwrap();
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

/// transformers' float32 tables (scripts/gen_rope_reference.py).
#[allow(clippy::unreadable_literal)]
mod hf_reference {
    include!("data/rope_hf_reference.rs");
}

/// The distance between two `f32`s in units in the last place (0 for equal values, +0 = −0).
fn ulps(a: f32, b: f32) -> i64 {
    let ordered = |x: f32| {
        let i = x.to_bits() as i32;
        i64::from(if i < 0 { i32::MIN - i } else { i })
    };
    (ordered(a) - ordered(b)).abs()
}

/// The worst distance, in `f32` ulps, between the table `config` builds for heads of `HD`
/// features and transformers' cos/sin (`W` = rotary width numbers per row), at every listed
/// position and pair; checks that pairs past the rotary width have no entry.
fn worst_ulps<const HD: usize, const W: usize>(
    config: &RopeConfig,
    reference: &[[u32; W]; 16],
) -> i64 {
    let rope = Rope::<HD, 41, f32>::from_config(config).expect("valid");
    assert_eq!(rope.rotary_dim(), W);
    let mut worst = 0;
    for (k, &p) in hf_reference::POSITIONS.iter().enumerate() {
        for i in 0..W / 2 {
            let (c, s) = rope.cos_sin(p, i).expect("in the table");
            let (hc, hs) = (
                f32::from_bits(reference[k][i]),
                f32::from_bits(reference[k][W / 2 + i]),
            );
            worst = worst.max(ulps(c, hc)).max(ulps(s, hs));
        }
        assert_eq!(rope.cos_sin(p, W / 2), None);
    }
    worst
}

/// The cases of scripts/gen_rope_reference.py: (name, worst ulps of the `HuggingFace` table,
/// worst ulps of the `Exact` one).
fn hf_cases() -> Vec<(&'static str, i64, i64)> {
    use hf_reference as r;
    let half = |base| RopeConfig::new(base, RopeStyle::RotateHalf);
    let both = |name, f: &dyn Fn(&RopeConfig) -> i64, c: RopeConfig| {
        (
            name,
            f(&c.with_precision(RopePrecision::HuggingFace)),
            f(&c.with_precision(RopePrecision::Exact)),
        )
    };
    vec![
        both(
            "default",
            &|c| worst_ulps::<16, 16>(c, &r::DEFAULT),
            half(10_000.0),
        ),
        both(
            "default 500k",
            &|c| worst_ulps::<32, 32>(c, &r::DEFAULT_500K),
            half(500_000.0),
        ),
        both(
            "linear",
            &|c| worst_ulps::<16, 16>(c, &r::LINEAR),
            half(10_000.0).with_scaling(RopeScaling::linear(2.5)),
        ),
        both(
            "linear, partial",
            &|c| worst_ulps::<32, 16>(c, &r::LINEAR_PARTIAL),
            half(10_000.0)
                .with_scaling(RopeScaling::linear(4.0))
                .with_rotary_dim(16),
        ),
        both(
            "dynamic",
            &|c| worst_ulps::<16, 16>(c, &r::DYNAMIC),
            half(10_000.0).with_scaling(RopeScaling::dynamic(2.0, 16)),
        ),
        both(
            "dynamic 3",
            &|c| worst_ulps::<32, 32>(c, &r::DYNAMIC_3),
            half(500_000.0).with_scaling(RopeScaling::dynamic(3.0, 20)),
        ),
        both(
            "llama3",
            &|c| worst_ulps::<32, 32>(c, &r::LLAMA3),
            half(500_000.0).with_scaling(RopeScaling::llama3(8.0, 1.0, 4.0, 32)),
        ),
        both(
            "yarn",
            &|c| worst_ulps::<32, 32>(c, &r::YARN),
            half(10_000.0).with_scaling(RopeScaling::yarn(4.0, 32)),
        ),
        both(
            "yarn, mscale, partial",
            &|c| worst_ulps::<32, 16>(c, &r::YARN_MSCALE),
            half(10_000.0)
                .with_scaling(RopeScaling::Yarn {
                    factor: 3.0,
                    original_max_position_embeddings: 16,
                    beta_fast: 16.0,
                    beta_slow: 2.0,
                    mscale: 1.0,
                    mscale_all_dim: 0.707,
                    attention_factor: None,
                    truncate: false,
                })
                .with_rotary_dim(16),
        ),
        both(
            "yarn, attention factor",
            &|c| worst_ulps::<16, 16>(c, &r::YARN_ATTENTION),
            half(10_000.0).with_scaling(match RopeScaling::yarn(2.0, 32) {
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings,
                    beta_fast,
                    beta_slow,
                    mscale,
                    mscale_all_dim,
                    truncate,
                    ..
                } => RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings,
                    beta_fast,
                    beta_slow,
                    mscale,
                    mscale_all_dim,
                    attention_factor: Some(0.9),
                    truncate,
                },
                _ => unreachable!(),
            }),
        ),
        both(
            "partial",
            &|c| worst_ulps::<32, 8>(c, &r::PARTIAL),
            half(10_000.0).with_rotary_dim(8),
        ),
    ]
}

#[test]
fn hugging_face_tables_match_transformers() {
    for (name, hf, exact) in hf_cases() {
        println!("{name}: HuggingFace {hf} ulp, Exact {exact} ulp");
        assert!(hf <= 2, "{name}: {hf} ulps from transformers");
    }
}

/// `θ'_i` of each scaling, written out from its documented formula (f64).
fn scaled_theta(config: &RopeConfig, width: usize, i: usize, p: usize) -> f64 {
    let d = width as f64;
    let theta = config.base.powf(-((2 * i) as f64) / d);
    match config.scaling {
        RopeScaling::Linear { factor } => theta / factor,
        RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings: l,
        } => {
            let n = (p + 1).max(l) as f64;
            let base = config.base * (factor * n / l as f64 - (factor - 1.0)).powf(d / (d - 2.0));
            base.powf(-((2 * i) as f64) / d)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: lo,
            high_freq_factor: hi,
            original_max_position_embeddings: l,
        } => {
            let wavelength = std::f64::consts::TAU / theta;
            let l = l as f64;
            if wavelength < l / hi {
                theta
            } else if wavelength > l / lo {
                theta / factor
            } else {
                let s = (l / wavelength - lo) / (hi - lo);
                (1.0 - s) * theta / factor + s * theta
            }
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: l,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            let c = |beta: f64| {
                d * (l as f64 / (beta * std::f64::consts::TAU)).ln() / (2.0 * config.base.ln())
            };
            let (mut lo, mut hi) = (c(beta_fast), c(beta_slow));
            if truncate {
                (lo, hi) = (lo.floor(), hi.ceil());
            }
            let lo = lo.max(0.0);
            let mut hi = hi.min(d - 1.0);
            if lo == hi {
                hi += 0.001;
            }
            let r = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
            theta / factor * r + theta * (1.0 - r)
        }
        _ => theta,
    }
}

#[test]
fn scaled_exact_tables_match_their_formulas() {
    let half = RopeConfig::new(10_000.0, RopeStyle::RotateHalf);
    let yarn = |mscale, mscale_all_dim, attention_factor, truncate| RopeScaling::Yarn {
        factor: 3.0,
        original_max_position_embeddings: 16,
        beta_fast: 16.0,
        beta_slow: 2.0,
        mscale,
        mscale_all_dim,
        attention_factor,
        truncate,
    };
    let m = |k: f64| 0.1 * k * 3f64.ln() + 1.0;
    let cases = [
        (half, 1.0),
        (half.with_scaling(RopeScaling::linear(2.5)), 1.0),
        (half.with_scaling(RopeScaling::dynamic(2.0, 16)), 1.0),
        (
            RopeConfig::new(500_000.0, RopeStyle::Interleaved)
                .with_scaling(RopeScaling::llama3(8.0, 1.0, 4.0, 32)),
            1.0,
        ),
        (
            half.with_scaling(RopeScaling::yarn(4.0, 32)),
            0.1 * 4f64.ln() + 1.0,
        ),
        (half.with_scaling(yarn(0.0, 0.0, None, false)), m(1.0)),
        (half.with_scaling(yarn(1.0, 0.0, None, true)), m(1.0)),
        (
            half.with_scaling(yarn(1.0, 0.707, None, true)),
            m(1.0) / m(0.707),
        ),
        (half.with_scaling(yarn(1.0, 0.707, Some(0.9), true)), 0.9),
        (
            half.with_scaling(yarn(0.0, 0.0, None, true))
                .with_rotary_dim(8),
            m(1.0),
        ),
        (
            half.with_scaling(RopeScaling::dynamic(3.0, 20))
                .with_rotary_dim(12),
            1.0,
        ),
    ];
    for (config, attention) in cases {
        assert!(
            (config.scaling.attention_factor() - attention).abs() < 1e-15,
            "{config:?}"
        );
        let rope = Rope::<16, 48, f64>::from_config(&config).expect("valid");
        let width = rope.rotary_dim();
        for p in 0..48 {
            for i in 0..width / 2 {
                let angle = p as f64 * scaled_theta(&config, width, i, p);
                let (c, s) = rope.cos_sin(p, i).expect("in the table");
                assert!(
                    (c - angle.cos() * attention).abs() < 1e-12,
                    "{config:?} {p} {i}"
                );
                assert!(
                    (s - angle.sin() * attention).abs() < 1e-12,
                    "{config:?} {p} {i}"
                );
            }
        }
    }
}

#[test]
fn dynamic_rows_use_the_length_decoded_so_far() {
    let plain = Rope::<8, 40, f64>::new(10_000.0, RopeStyle::RotateHalf).expect("valid");
    let config = RopeConfig::new(10_000.0, RopeStyle::RotateHalf)
        .with_scaling(RopeScaling::dynamic(2.0, 16));
    let dynamic = Rope::<8, 40, f64>::from_config(&config).expect("valid");
    // Positions 0..16 (sequences up to L = 16 tokens): unscaled.
    for p in 0..16 {
        for i in 0..4 {
            assert_eq!(dynamic.cos_sin(p, i), plain.cos_sin(p, i), "{p} {i}");
        }
    }
    // Position 16 is the 17th token: base' = base·(2·17/16 − 1)^(8/6).
    let base = 10_000.0 * (2.0 * 17.0 / 16.0 - 1.0f64).powf(8.0 / 6.0);
    let theta = base.powf(-2.0 / 8.0);
    let (c, s) = dynamic.cos_sin(16, 1).expect("in the table");
    assert!((c - (16.0 * theta).cos()).abs() < 1e-14 && (s - (16.0 * theta).sin()).abs() < 1e-14);
    assert_ne!(dynamic.cos_sin(16, 1), plain.cos_sin(16, 1));
    // Pair 0 has θ = 1 whatever the base.
    assert_eq!(dynamic.cos_sin(30, 0), plain.cos_sin(30, 0));
}

#[test]
fn partial_rotary_rotates_the_leading_features_only() {
    const D: usize = 12;
    const R: usize = 8;
    let x = SMatrix::<f64, 3, D>::from_fn(|i, j| ((i * D + j) as f64 * 0.41).cos());
    for style in [RopeStyle::RotateHalf, RopeStyle::Interleaved] {
        let config = RopeConfig::new(10_000.0, style).with_rotary_dim(R);
        let rope = Rope::<D, 32, f64>::from_config(&config).expect("valid");
        assert_eq!((rope.rotary_dim(), rope.config()), (R, config));
        let mut y = x;
        rope.rotate(&mut y, 20).expect("20..23 fit");
        for t in 0..3 {
            let p = (20 + t) as f64;
            for i in 0..R / 2 {
                // Frequencies over the rotary width, not the head width.
                let theta = 10_000f64.powf(-((2 * i) as f64) / R as f64);
                let (c, s) = ((p * theta).cos(), (p * theta).sin());
                let (ia, ib) = match style {
                    RopeStyle::RotateHalf => (i, i + R / 2),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (x[(t, ia)], x[(t, ib)]);
                assert!((y[(t, ia)] - (a * c - b * s)).abs() < 1e-12, "{style:?}");
                assert!((y[(t, ib)] - (b * c + a * s)).abs() < 1e-12, "{style:?}");
            }
            for j in R..D {
                assert_eq!(
                    y[(t, j)],
                    x[(t, j)],
                    "{style:?}: feature {j} passes through"
                );
            }
        }
    }
    // The full width is the default and `Some(HEAD_DIM)` builds the same table.
    let full = RopeConfig::new(10_000.0, RopeStyle::RotateHalf);
    let a = Rope::<D, 8, f64>::from_config(&full).expect("valid");
    let b = Rope::<D, 8, f64>::from_config(&full.with_rotary_dim(D)).expect("valid");
    assert_eq!(a.cos_sin(7, 5), b.cos_sin(7, 5));
    assert_eq!(b.config().rotary_dim, Some(D));
}

#[test]
fn cos_sin_is_none_past_the_table_or_the_pairs() {
    let rope = Rope::<8, 10>::new(10_000.0, RopeStyle::Interleaved).expect("valid");
    assert_eq!(rope.cos_sin(0, 0), Some((1.0, 0.0)));
    assert!(rope.cos_sin(9, 3).is_some());
    assert_eq!(rope.cos_sin(10, 0), None);
    assert_eq!(rope.cos_sin(0, 4), None);
    assert_eq!(rope.cos_sin(usize::MAX, usize::MAX), None);
}

#[test]
fn configs_round_trip_and_a_zeroed_rope_is_documented() {
    let half = RopeConfig::new(1_000_000.0, RopeStyle::RotateHalf);
    let configs = [
        half,
        half.with_precision(RopePrecision::HuggingFace),
        half.with_scaling(RopeScaling::linear(2.0))
            .with_rotary_dim(6),
        half.with_scaling(RopeScaling::dynamic(4.0, 8)),
        half.with_scaling(RopeScaling::llama3(8.0, 1.0, 4.0, 8192)),
        half.with_scaling(RopeScaling::yarn(16.0, 4096)),
        half.with_scaling(RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
            attention_factor: Some(1.25),
            truncate: false,
        }),
    ];
    // The table, then the configuration (80 bytes).
    assert_eq!(Rope::<8, 32>::BYTES, 8 * 32 * 4 + 80);
    let mut rope: Box<Rope<8, 16>> = static_attention::heap::zeroed();
    // Zeroed: base 0, interleaved, unscaled, every pair cos = sin = 0.
    assert_eq!(rope.config(), RopeConfig::new(0.0, RopeStyle::Interleaved));
    assert_eq!(rope.cos_sin(3, 3), Some((0.0, 0.0)));
    let mut x = SMatrix::<f32, 2, 8>::repeat(1.0);
    rope.rotate(&mut x, 0).expect("fits");
    assert_eq!(x, SMatrix::<f32, 2, 8>::zeros());
    for config in configs {
        rope.rebuild(&config).expect("valid");
        assert_eq!(rope.config(), config);
        assert_eq!(rope.base(), config.base);
        assert_eq!(rope.style(), config.style);
        let by_value = Rope::<8, 16>::from_config(&config).expect("valid");
        assert_eq!(by_value, *rope);
    }
}

#[test]
fn bad_configs_are_typed_errors() {
    let half = RopeConfig::new(10_000.0, RopeStyle::RotateHalf);
    let scaling = |field: &'static str, value: f64| (field, value);
    let yarn = RopeScaling::yarn(4.0, 32);
    let with_yarn = |f: &dyn Fn(&mut [f64; 4], &mut Option<f64>)| {
        let RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            mut attention_factor,
            truncate,
        } = yarn
        else {
            unreachable!()
        };
        let mut v = [beta_fast, beta_slow, mscale, mscale_all_dim];
        f(&mut v, &mut attention_factor);
        half.with_scaling(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast: v[0],
            beta_slow: v[1],
            mscale: v[2],
            mscale_all_dim: v[3],
            attention_factor,
            truncate,
        })
    };
    // Bases.
    for base in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = Rope::<8, 4>::new(base, RopeStyle::RotateHalf).unwrap_err();
        assert!(matches!(err, RopeError::Base { base: b } if b.to_bits() == base.to_bits()));
    }
    assert_eq!(
        Rope::<8, 4>::from_config(&RopeConfig::new(1.0, RopeStyle::RotateHalf).with_scaling(yarn)),
        Err(RopeError::Base { base: 1.0 })
    );
    assert!(Rope::<8, 4>::new(1.0, RopeStyle::RotateHalf).is_ok());
    // Rotary widths.
    for width in [0, 1, 3, 7, 10, 12] {
        assert_eq!(
            Rope::<8, 4>::from_config(&half.with_rotary_dim(width)),
            Err(RopeError::RotaryDim {
                rotary_dim: width,
                head_dim: 8
            })
        );
    }
    assert_eq!(
        Rope::<8, 4>::from_config(
            &half
                .with_scaling(RopeScaling::dynamic(2.0, 4))
                .with_rotary_dim(2)
        ),
        Err(RopeError::RotaryDim {
            rotary_dim: 2,
            head_dim: 8
        })
    );
    assert_eq!(
        Rope::<2, 4>::from_config(&half.with_scaling(RopeScaling::dynamic(2.0, 4))),
        Err(RopeError::RotaryDim {
            rotary_dim: 2,
            head_dim: 2
        })
    );
    // Scaling fields: (config, field, value).
    let mut cases = Vec::new();
    for bad in [0.0, -2.0, f64::NAN, f64::INFINITY] {
        cases.push((
            half.with_scaling(RopeScaling::linear(bad)),
            scaling("factor", bad),
        ));
        cases.push((
            half.with_scaling(RopeScaling::dynamic(bad, 8)),
            scaling("factor", bad),
        ));
        cases.push((
            half.with_scaling(RopeScaling::llama3(bad, 1.0, 4.0, 8)),
            scaling("factor", bad),
        ));
        cases.push((
            half.with_scaling(RopeScaling::llama3(8.0, bad, 4.0, 8)),
            scaling("low_freq_factor", bad),
        ));
        cases.push((
            half.with_scaling(RopeScaling::yarn(bad, 8)),
            scaling("factor", bad),
        ));
        cases.push((with_yarn(&|v, _| v[1] = bad), scaling("beta_slow", bad)));
        cases.push((
            with_yarn(&|_, a| *a = Some(bad)),
            scaling("attention_factor", bad),
        ));
    }
    for bad in [-0.5, f64::NAN, f64::INFINITY] {
        cases.push((with_yarn(&|v, _| v[2] = bad), scaling("mscale", bad)));
        cases.push((
            with_yarn(&|v, _| v[3] = bad),
            scaling("mscale_all_dim", bad),
        ));
    }
    for high in [1.0, 0.5, f64::NAN, f64::INFINITY] {
        cases.push((
            half.with_scaling(RopeScaling::llama3(8.0, 1.0, high, 8)),
            scaling("high_freq_factor", high),
        ));
    }
    for fast in [1.0, 0.5, f64::NAN] {
        cases.push((with_yarn(&|v, _| v[0] = fast), scaling("beta_fast", fast)));
    }
    let context = scaling("original_max_position_embeddings", 0.0);
    cases.push((half.with_scaling(RopeScaling::dynamic(2.0, 0)), context));
    cases.push((
        half.with_scaling(RopeScaling::llama3(8.0, 1.0, 4.0, 0)),
        context,
    ));
    cases.push((half.with_scaling(RopeScaling::yarn(4.0, 0)), context));
    for (config, (field, value)) in cases {
        let err = Rope::<8, 4>::from_config(&config).unwrap_err();
        match err {
            RopeError::Scaling {
                field: f,
                value: v,
                rule,
            } => {
                assert_eq!(f, field, "{config:?}");
                assert_eq!(v.to_bits(), value.to_bits(), "{config:?}");
                let text = err.to_string();
                assert!(text.contains(field) && text.contains(rule), "{text}");
            }
            other => panic!("{config:?}: {other:?}"),
        }
        // In place: the table and its configuration are unchanged.
        let mut rope = Rope::<8, 4>::new(500_000.0, RopeStyle::Interleaved).expect("valid");
        let before = rope.clone();
        let again = rope.rebuild(&config).unwrap_err();
        assert_eq!(format!("{again:?}"), format!("{err:?}"));
        assert_eq!(rope, before);
    }
    // The errors are std errors with messages.
    let err: Box<dyn std::error::Error> = Box::new(RopeError::Base { base: -1.0 });
    assert!(err.to_string().contains("-1"));
    let width = RopeError::RotaryDim {
        rotary_dim: 3,
        head_dim: 8,
    };
    assert!(width.to_string().contains("rotary width 3"));
}
