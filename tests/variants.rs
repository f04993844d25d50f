//! The attention variants of a `GroupedQuery` (QK-norm per head and over the full width, a
//! custom scale, soft-capping, sinks, a sliding window) and the decoder's cache interop:
//!
//! - decoding through a cache equals one causal forward over the whole sequence for every
//!   variant, alone and combined, with RoPE, through a growing cache and (with a window) a
//!   ring, in f32 (1e-5) and f64 (1e-12);
//! - each variant means what its docs say: the window equals the sliding-window mask, the
//!   scale equals scaled queries, QK-norm is invariant to the projections' scale, sinks take a
//!   share of every row's weight and a softcap bounds the logits;
//! - `decode_with_weights` gives the rows of `forward_with_weights`;
//! - the cache starts at any position and round-trips through Hugging Face's
//!   `[kv_heads, positions, head_dim]` layout, a continued decode giving the same outputs.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::positions::{NoPositions, PositionEncoding, Rope, RopeStyle};
use static_attention::variant::{QkNorm, Variant, VariantError};
use static_attention::{
    Alignment, Bias, CacheError, Float, GroupedQuery, KvCache, LayoutError, Mask, SMatrix,
};

/// Tokens in every sequence.
const N: usize = 12;
/// Features.
const DIM: usize = 32;
/// The sliding window.
const W: usize = 5;

/// 8 query heads of 4 features on 2 kv heads.
type Gqa<T> = GroupedQuery<DIM, 8, 2, DIM, 8, T>;

type TestResult = Result<(), TestCaseError>;

fn rope<T: Float>() -> Rope<4, 32, T> {
    Rope::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base")
}

fn sequence<T: Float>(seed: u64, scale: f64) -> SMatrix<T, N, DIM> {
    let mut rng = SmallRng::seed_from_u64(seed);
    SMatrix::from_fn(|_, _| T::of(rng.random_range(-scale..scale)))
}

fn close<T: Float, const R: usize, const C: usize>(
    what: &str,
    a: &SMatrix<T, R, C>,
    b: &SMatrix<T, R, C>,
    tol: f64,
) -> TestResult {
    for i in 0..R {
        for j in 0..C {
            let (x, y) = (a[(i, j)].to_f64(), b[(i, j)].to_f64());
            let err = (x - y).abs();
            if err.is_nan() || err > tol {
                return Err(TestCaseError::fail(format!(
                    "{what}: ({i}, {j}): {x:e} vs {y:e} (|diff| {err:e} > {tol:e})"
                )));
            }
        }
    }
    Ok(())
}

/// The layer `base` running `variant`, with random norm weights and sinks.
fn with_variant<T: Float>(base: &Gqa<T>, variant: Variant, seed: u64) -> Gqa<T> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut layer = base.clone();
    layer.set_variant(variant).expect("a valid variant");
    let (qn, kn) = layer.qk_norm_weights_mut();
    for w in qn.iter_mut().chain(kn.iter_mut()) {
        *w = T::of(rng.random_range(0.5..1.5));
    }
    for s in layer.sinks_mut() {
        *s = T::of(rng.random_range(-2.0..2.0));
    }
    layer
}

/// The full causal forward of `layer`, then the same sequence decoded through a cache of
/// `CAP` (a ring when `ring`): a `p`-token prompt, then one token at a time.
fn decode_equals_full<T: Float, const CAP: usize, P: PositionEncoding<T>>(
    what: &str,
    layer: &Gqa<T>,
    x: &SMatrix<T, N, DIM>,
    positions: &P,
    ring: bool,
    tol: f64,
) -> TestResult {
    let full = layer
        .forward(x, &Mask::causal(Alignment::BottomRight), positions)
        .expect("positions fit");
    let mut cache = if ring {
        KvCache::<CAP, 8, T>::sliding_window()
    } else {
        KvCache::<CAP, 8, T>::new()
    };
    let prompt = x.fixed_rows::<3>(0).into_owned();
    let y = layer.decode(&prompt, &mut cache, positions).expect("fits");
    close(
        &format!("{what}: prefill"),
        &y,
        &full.fixed_rows::<3>(0).into_owned(),
        tol,
    )?;
    for t in 3..N {
        let token = x.fixed_rows::<1>(t).into_owned();
        let y = layer.decode(&token, &mut cache, positions).expect("fits");
        close(
            &format!("{what}: token {t}"),
            &y,
            &full.fixed_rows::<1>(t).into_owned(),
            tol,
        )?;
    }
    Ok(())
}

fn variants() -> [Variant; 7] {
    let plain = Variant::PLAIN;
    [
        plain.with_qk_norm(QkNorm::PerHead { eps: 1e-6 }),
        plain
            .with_qk_norm(QkNorm::Full { eps: 1e-5 })
            .with_scale(0.3),
        plain.with_softcap(1.5),
        plain.with_sinks(),
        plain.with_sliding_window(W),
        plain.with_scale(2.0).with_softcap(0.8).with_sinks(),
        plain
            .with_qk_norm(QkNorm::PerHead { eps: 1e-6 })
            .with_scale(0.7)
            .with_softcap(2.0)
            .with_sinks()
            .with_sliding_window(W),
    ]
}

fn check_variants<T: Float>(seed: u64, scale: f64, tol: f64) -> TestResult {
    let mut rng = SmallRng::seed_from_u64(seed);
    let base = Gqa::<T>::new(&mut rng, Bias::Present);
    let x = sequence::<T>(seed ^ 3, scale);
    let rope = rope::<T>();
    for (i, variant) in variants().into_iter().enumerate() {
        let layer = with_variant(&base, variant, seed ^ i as u64);
        let what = format!("{variant:?}");
        decode_equals_full::<T, 16, _>(&what, &layer, &x, &rope, false, tol)?;
        decode_equals_full::<T, 12, _>(&what, &layer, &x, &NoPositions, false, tol)?;
        if variant.sliding_window.is_some() {
            decode_equals_full::<T, W, _>(&format!("{what}, ring"), &layer, &x, &rope, true, tol)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn every_variant_decodes_as_it_runs_forward_f32(seed in any::<u64>(), scale in 0.1f64..3.0) {
        check_variants::<f32>(seed, scale, 1e-5)?;
    }

    #[test]
    fn every_variant_decodes_as_it_runs_forward_f64(seed in any::<u64>(), scale in 0.1f64..3.0) {
        check_variants::<f64>(seed, scale, 1e-12)?;
    }

    #[test]
    fn a_window_is_the_sliding_window_mask(seed in any::<u64>()) {
        let base = Gqa::<f64>::new(&mut SmallRng::seed_from_u64(seed), Bias::Present);
        let x = sequence::<f64>(seed ^ 5, 1.0);
        let windowed = with_variant(&base, Variant::PLAIN.with_sliding_window(W), seed);
        let causal = Mask::causal(Alignment::TopLeft);
        let a = windowed.forward(&x, &causal, &rope()).expect("fits");
        let b = base.forward(&x, &Mask::sliding_window(W, Alignment::TopLeft), &rope()).expect("fits");
        close("window", &a, &b, 1e-12)?;
        // A narrower mask window wins; a full mask stays full.
        let c = windowed.forward(&x, &Mask::sliding_window(2, Alignment::TopLeft), &rope()).expect("fits");
        let d = base.forward(&x, &Mask::sliding_window(2, Alignment::TopLeft), &rope()).expect("fits");
        close("narrower mask", &c, &d, 1e-12)?;
        let e = windowed.forward(&x, &Mask::none(), &rope()).expect("fits");
        let f = base.forward(&x, &Mask::none(), &rope()).expect("fits");
        close("full mask", &e, &f, 1e-12)?;
    }

    #[test]
    fn a_scale_is_scaled_queries(seed in any::<u64>(), s in 0.1f64..3.0) {
        let base = Gqa::<f64>::new(&mut SmallRng::seed_from_u64(seed), Bias::Present);
        let x = sequence::<f64>(seed ^ 6, 1.0);
        let scaled = with_variant(&base, Variant::PLAIN.with_scale(s), seed);
        // The default scale is 1/√4 = 0.5: queries times 2s give the same scores.
        let mut q = *base.q_proj();
        let w = q.weight() * (2.0 * s);
        q.set_weight(&w);
        let b = q.bias().map(|b| b * (2.0 * s));
        q.set_bias(b.as_ref());
        let manual = Gqa::<f64>::from_parts(q, *base.k_proj(), *base.v_proj(), *base.out_proj());
        let causal = Mask::causal(Alignment::TopLeft);
        let a = scaled.forward(&x, &causal, &NoPositions).expect("fits");
        let m = manual.forward(&x, &causal, &NoPositions).expect("fits");
        close("scale", &a, &m, 1e-12)?;
    }

    #[test]
    fn qk_norm_ignores_the_projections_scale(seed in any::<u64>(), c in 0.2f64..5.0) {
        let base = Gqa::<f64>::new(&mut SmallRng::seed_from_u64(seed), Bias::Absent);
        let x = sequence::<f64>(seed ^ 7, 1.0);
        for norm in [QkNorm::PerHead { eps: 0.0 }, QkNorm::Full { eps: 0.0 }] {
            let layer = with_variant(&base, Variant::PLAIN.with_qk_norm(norm), seed);
            let (mut q, mut k) = (*layer.q_proj(), *layer.k_proj());
            q.set_weight(&(q.weight() * c));
            k.set_weight(&(k.weight() * (1.0 / c)));
            let mut scaled = Gqa::<f64>::from_parts(q, k, *layer.v_proj(), *layer.out_proj());
            scaled.set_variant(layer.variant()).expect("valid");
            let (qn, kn) = layer.qk_norm_weights();
            let (sq, sk) = scaled.qk_norm_weights_mut();
            (*sq, *sk) = (*qn, *kn);
            let causal = Mask::causal(Alignment::TopLeft);
            let a = layer.forward(&x, &causal, &rope()).expect("fits");
            let b = scaled.forward(&x, &causal, &rope()).expect("fits");
            close(&format!("{norm:?}"), &a, &b, 1e-10)?;
            // Without the norm the scale matters (the check can fail).
            let plain_a = base.forward(&x, &causal, &rope()).expect("fits");
            let mut raw = Gqa::<f64>::from_parts(q, k, *base.v_proj(), *base.out_proj());
            raw.set_variant(Variant::PLAIN).expect("valid");
            let plain_b = raw.forward(&x, &causal, &rope()).expect("fits");
            prop_assert!((plain_a - plain_b).amax() > 0.0 || c == 1.0);
        }
    }

    #[test]
    fn sinks_take_a_share_and_softcaps_bound_the_logits(seed in any::<u64>(), sink in -3.0f64..3.0) {
        let base = Gqa::<f64>::new(&mut SmallRng::seed_from_u64(seed), Bias::Present);
        let x = sequence::<f64>(seed ^ 8, 2.0);
        let causal = Mask::causal(Alignment::TopLeft);
        let mut sinky = base.clone();
        sinky.set_variant(Variant::PLAIN.with_sinks()).expect("valid");
        sinky.sinks_mut().fill(sink);
        let (_, w) = sinky.forward_with_weights(&x, &causal, &NoPositions).expect("fits");
        let (_, plain) = base.forward_with_weights(&x, &causal, &NoPositions).expect("fits");
        for h in 0..8 {
            for i in 0..N {
                // w_ij = p_ij / (1 + e^s / Σ_j e^{z_ij}): each plain weight shrunk by one factor
                // per row, the row summing to less than 1.
                let sum: f64 = (0..N).map(|j| w.head(h)[(i, j)]).sum();
                prop_assert!(sum < 1.0 && sum > 0.0, "row sum {sum}");
                for j in 0..=i {
                    let ratio = w.head(h)[(i, j)] / plain.head(h)[(i, j)];
                    prop_assert!((ratio - sum).abs() < 1e-12, "ratio {ratio} vs row sum {sum}");
                }
            }
        }
        // A cap of c keeps every logit within ±c: weights within a row differ by at most e^{2c}.
        let cap = 0.25;
        let mut capped = base.clone();
        capped.set_variant(Variant::PLAIN.with_softcap(cap)).expect("valid");
        let (_, w) = capped.forward_with_weights(&x, &causal, &NoPositions).expect("fits");
        for h in 0..8 {
            for i in 1..N {
                let row: Vec<f64> = (0..=i).map(|j| w.head(h)[(i, j)]).collect();
                let (lo, hi) = row.iter().fold((f64::MAX, 0.0f64), |(l, u), &v| (l.min(v), u.max(v)));
                prop_assert!(hi / lo <= (2.0 * cap).exp() * (1.0 + 1e-12), "{hi} / {lo}");
            }
        }
    }
}

#[test]
fn decode_with_weights_gives_the_rows_of_forward_with_weights() {
    let base = Gqa::<f64>::new(&mut SmallRng::seed_from_u64(11), Bias::Present);
    let layer = with_variant(&base, Variant::PLAIN.with_sinks().with_softcap(3.0), 12);
    let x = sequence::<f64>(13, 1.0);
    let (_, full) = layer
        .forward_with_weights(&x, &Mask::causal(Alignment::TopLeft), &rope())
        .expect("fits");
    let mut cache = KvCache::<16, 8, f64>::new();
    let prompt = x.fixed_rows::<4>(0).into_owned();
    let (_, w) = layer
        .decode_with_weights(&prompt, &mut cache, &rope())
        .expect("fits");
    for h in 0..8 {
        for i in 0..4 {
            for j in 0..16 {
                let expected = if j < N { full.head(h)[(i, j)] } else { 0.0 };
                assert!(
                    (w.head(h)[(i, j)] - expected).abs() < 1e-12,
                    "prefill {h} {i} {j}"
                );
            }
        }
    }
    for t in 4..N {
        let token = x.fixed_rows::<1>(t).into_owned();
        let (_, w) = layer
            .decode_with_weights(&token, &mut cache, &rope())
            .expect("fits");
        for h in 0..8 {
            for j in 0..16 {
                let expected = if j < N { full.head(h)[(t, j)] } else { 0.0 };
                assert!(
                    (w.head(h)[(0, j)] - expected).abs() < 1e-12,
                    "step {t} {h} {j}"
                );
            }
        }
    }
    // A ring: column r is the ring's row r.
    let windowed = with_variant(&base, Variant::PLAIN.with_sliding_window(W), 14);
    let (_, full) = windowed
        .forward_with_weights(&x, &Mask::causal(Alignment::TopLeft), &rope())
        .expect("fits");
    let mut ring = KvCache::<W, 8, f64>::sliding_window();
    for t in 0..N {
        let token = x.fixed_rows::<1>(t).into_owned();
        let (_, w) = windowed
            .decode_with_weights(&token, &mut ring, &rope())
            .expect("fits");
        for h in 0..8 {
            for (r, p) in (ring.first_position()..ring.position()).map(|p| (p % W, p)) {
                let got = w.head(h)[(0, r)];
                assert!(
                    (got - full.head(h)[(t, p)]).abs() < 1e-12,
                    "ring {t} {h} {p}"
                );
            }
        }
    }
}

#[test]
fn bad_variants_and_rings_are_typed_errors() {
    let mut layer = Gqa::<f32>::from_seed(1);
    let before = layer.clone();
    for (v, e) in [
        (Variant::PLAIN.with_scale(0.0), VariantError::Scale(0.0)),
        (
            Variant::PLAIN.with_softcap(f64::INFINITY),
            VariantError::Softcap(f64::INFINITY),
        ),
        (
            Variant::PLAIN.with_qk_norm(QkNorm::Full { eps: -1.0 }),
            VariantError::NormEps(-1.0),
        ),
        (
            Variant::PLAIN.with_sliding_window(0),
            VariantError::EmptyWindow,
        ),
    ] {
        assert_eq!(layer.set_variant(v), Err(e));
        assert_eq!(layer, before);
    }
    assert!(matches!(
        layer.set_variant(Variant::PLAIN.with_scale(f64::NAN)),
        Err(VariantError::Scale(s)) if s.is_nan()
    ));
    // A ring whose capacity is not the window.
    layer
        .set_variant(Variant::PLAIN.with_sliding_window(4))
        .expect("valid");
    let mut ring = KvCache::<5, 8>::sliding_window();
    let token = SMatrix::<f32, 1, DIM>::repeat(0.5);
    assert_eq!(
        layer.decode(&token, &mut ring, &NoPositions).unwrap_err(),
        CacheError::Window {
            window: 4,
            capacity: 5
        }
    );
    assert!(ring.is_empty());
    // A growing cache of any capacity works.
    let mut cache = KvCache::<7, 8>::new();
    assert!(layer.decode(&token, &mut cache, &NoPositions).is_ok());
}

#[test]
fn a_cache_starts_anywhere_and_round_trips_through_the_hf_layout() {
    let layer = Gqa::<f64>::new(&mut SmallRng::seed_from_u64(21), Bias::Present);
    let rope = rope::<f64>();
    let x = sequence::<f64>(22, 1.0);

    // Keys are stored rotated at their absolute positions: starting at 9, the first key is
    // k_proj(x_0) rotated to position 9.
    let mut late = KvCache::<8, 8, f64>::starting_at(9);
    let prompt = x.fixed_rows::<2>(0).into_owned();
    layer.decode(&prompt, &mut late, &rope).expect("fits");
    assert_eq!(
        (late.first_position(), late.position(), late.len()),
        (9, 11, 2)
    );
    let k = layer.k_proj().forward(&prompt);
    for g in 0..2 {
        let mut head = k.fixed_columns::<4>(4 * g).into_owned();
        rope.rotate(&mut head, 9).expect("fits");
        for t in 0..2 {
            for d in 0..4 {
                let stored = late.keys()[(t, 4 * g + d)];
                assert!((stored - head[(t, d)]).abs() < 1e-15);
            }
        }
    }

    // Prefill 7 tokens, copy the cache out in Hugging Face's layout and into a new one:
    // decoding on gives the same outputs, and the layout reads back.
    let mut cache = KvCache::<16, 8, f64>::new();
    layer
        .decode(&x.fixed_rows::<7>(0).into_owned(), &mut cache, &rope)
        .expect("fits");
    let (mut k_hf, mut v_hf) = (vec![0.0; 7 * 8], vec![0.0; 7 * 8]);
    cache.to_hf_layout(2, &mut k_hf, &mut v_hf).expect("layout");
    // [kv_heads, positions, head_dim]: head 1, position 3, feature 2 is column 6 of row 3.
    assert_eq!(k_hf[(7 + 3) * 4 + 2], cache.keys()[(3, 6)]);
    let mut copy = KvCache::<16, 8, f64>::new();
    copy.load_hf_layout(2, 0, &k_hf, &v_hf).expect("fits");
    assert_eq!(copy.position(), 7);
    for t in 7..N {
        let token = x.fixed_rows::<1>(t).into_owned();
        let a = layer.decode(&token, &mut cache, &rope).expect("fits");
        let b = layer.decode(&token, &mut copy, &rope).expect("fits");
        assert_eq!(a, b);
    }

    // A ring is exported oldest first.
    let mut ring = KvCache::<4, 8, f64>::sliding_window();
    for t in 0..6 {
        layer
            .decode(&x.fixed_rows::<1>(t).into_owned(), &mut ring, &rope)
            .expect("fits");
    }
    assert_eq!((ring.first_position(), ring.len()), (2, 4));
    let (mut k4, mut v4) = (vec![0.0; 4 * 8], vec![0.0; 4 * 8]);
    ring.to_hf_layout(2, &mut k4, &mut v4).expect("layout");
    for t in 0..4 {
        let row = (2 + t) % 4; // position 2 + t
        assert_eq!(k4[t * 4], ring.keys()[(row, 0)]);
        assert_eq!(v4[(4 + t) * 4 + 3], ring.values()[(row, 7)]);
    }

    // Bad layouts are typed errors and change nothing.
    let before = copy.clone();
    assert_eq!(
        copy.load_hf_layout(3, 0, &k_hf, &v_hf),
        Err(LayoutError::KvHeads {
            kv_heads: 3,
            kv_dim: 8
        })
    );
    assert_eq!(
        copy.load_hf_layout(2, 0, &k_hf, &v_hf[..8]),
        Err(LayoutError::Length {
            expected: 56,
            found: 8
        })
    );
    assert!(matches!(
        copy.load_hf_layout(2, 0, &k_hf[..5], &v_hf[..5]),
        Err(LayoutError::Length { .. })
    ));
    let long = vec![0.0; 17 * 8];
    assert_eq!(
        copy.load_hf_layout(2, 0, &long, &long),
        Err(LayoutError::TooMany {
            len: 17,
            capacity: 16
        })
    );
    assert_eq!(copy, before);
    assert!(matches!(
        copy.to_hf_layout(2, &mut [0.0; 3], &mut [0.0; 3]),
        Err(LayoutError::Length { .. })
    ));
    // Positions never overflow.
    let mut end = KvCache::<4, 8, f64>::starting_at(usize::MAX);
    assert!(matches!(
        layer.decode(&x.fixed_rows::<1>(0).into_owned(), &mut end, &NoPositions),
        Err(CacheError::Full { .. })
    ));
}
