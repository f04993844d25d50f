//! Parity with the attention of today's open models in Hugging Face `transformers` 5.25
//! (tests/hf/variants/, written by scripts/gen_hf_variants.py): Llama 3.1 rotary scaling
//! (positions past `original_max_position_embeddings`), linear and dynamic-NTK scaling,
//! YaRN, Qwen3 (per-head QK-norm), OLMo 2 (full-width QK-norm), Gemma 2 (soft-capping, the
//! `query_pre_attn_scalar` scale, a sliding and a global layer), gpt-oss (sinks, biases on
//! every projection, a sliding and a full layer) and StableLM (partial rotary).
//!
//! Each case is built the way a user builds it: `LayerConfig::from_json` on the model's
//! `config.json` (stored in the file), `GroupedQuery::load_pretrained` on the module's
//! `state_dict`, a `Rope` from the configuration. Checked, per case:
//!
//! - f32 against the module (tolerance `1e-5 + 1e-5·|ref|`, Hugging Face's float32 rotary
//!   tables): the prefill's output and weights, every decode step's output and weights, and
//!   what the cache holds at the end, in the `[kv_heads, positions, head_dim]` layout;
//! - f64 against the generator's float64 re-derivation of the same layer (`1e-12`, exact
//!   rotary tables): the full causal forward over the whole sequence, its weights over the
//!   prompt, and the same sequence decoded token by token;
//! - for a sliding layer, decoding through a ring as large as the window gives the same.

mod common;

use common::{compare, fixture, metadata, tensor};
use nalgebra::SMatrix;
use static_attention::config::LayerConfig;
use static_attention::positions::{Rope, RopePrecision};
use static_attention::{Alignment, Float, GroupedQuery, KvCache, Mask};

const DIR: &str = "tests/hf/variants";
/// Rotary table length: past every position a case reaches.
const MAX_POS: usize = 64;
/// The growing cache's capacity.
const CAP: usize = 32;

/// Rows `first .. first + R` of a 2-D tensor.
fn rows<T: Float, const R: usize, const C: usize>(
    bytes: &[u8],
    name: &str,
    first: usize,
) -> SMatrix<T, R, C> {
    let (v, shape) = tensor(bytes, name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(shape[1], C, "{name}");
    SMatrix::from_fn(|i, j| T::of(v[(first + i) * C + j]))
}

/// The worst error of each check, as (|Δ|, ratio to the bound).
#[derive(Default, Debug)]
struct Worst {
    prefill: (f64, f64),
    decode: (f64, f64),
    weights: (f64, f64),
    cache: (f64, f64),
}

fn worse(a: &mut (f64, f64), b: (f64, f64)) {
    a.0 = a.0.max(b.0);
    a.1 = a.1.max(b.1);
}

/// `|got − want| ≤ tol + tol·|want|` for two slices of the same length.
fn compare_values(what: &str, got: &[f64], want: &[f64], tol: f64) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f64, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let bound = tol + tol * w.abs();
        assert!(
            err <= bound,
            "{what}[{i}]: |{g} − {w}| = {err:e} > {bound:e}"
        );
        worst.0 = worst.0.max(err);
        worst.1 = worst.1.max(err / bound);
    }
    worst
}

/// Runs one case in `T`: f32 against the module, f64 against the float64 re-derivation.
#[allow(clippy::too_many_lines)]
fn case<
    T: Float,
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    const HEAD_DIM: usize,
    const P: usize,
    const S: usize,
    const L: usize,
>(
    name: &str,
) -> Worst {
    let bytes = fixture(DIR, name);
    let meta = metadata(&bytes);
    let f32_case = T::BYTES == 4;
    let tol = if f32_case { 1e-5 } else { 1e-12 };
    assert_eq!(meta["prompt"], P.to_string(), "{name}");
    assert_eq!(meta["steps"], S.to_string(), "{name}");
    assert_eq!(P + S, L);
    let layer_idx: usize = meta["layer_idx"].parse().expect("layer_idx");
    let config = LayerConfig::from_json(&meta["config"], layer_idx).expect("config.json reads");

    let mut layer: Box<GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T>> =
        static_attention::heap::zeroed();
    layer
        .load_pretrained(&config, &bytes, "")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let precision = if f32_case {
        RopePrecision::HuggingFace
    } else {
        RopePrecision::Exact
    };
    let rope_config = config
        .rope
        .expect("a rotary model")
        .with_precision(precision);
    let rope: Box<Rope<HEAD_DIM, MAX_POS, T>> =
        Box::new(Rope::from_config(&rope_config).unwrap_or_else(|e| panic!("{name}: {e}")));
    let (out, weights) = if f32_case {
        ("output", "weights")
    } else {
        ("ref64.output", "ref64.weights")
    };
    let mut worst = Worst::default();
    let causal = Mask::causal(Alignment::TopLeft);

    // The prefill as one forward, with its weights.
    let prompt = rows::<T, P, DIM>(&bytes, "input.prompt", 0);
    let (y, w) = layer
        .forward_with_weights(&prompt, &causal, &*rope)
        .expect("fits");
    let want = rows::<T, P, DIM>(&bytes, &format!("{out}.prompt"), 0);
    worse(
        &mut worst.prefill,
        compare(&format!("{name} prefill"), &y, &want, tol),
    );
    let (wv, shape) = tensor(&bytes, &format!("{weights}.prompt")).expect("prompt weights");
    assert_eq!(shape, [HEADS, P, P], "{name}");
    let got: Vec<f64> = (0..HEADS)
        .flat_map(|h| (0..P).flat_map(move |i| (0..P).map(move |j| (h, i, j))))
        .map(|(h, i, j)| w.head(h)[(i, j)].to_f64())
        .collect();
    worse(
        &mut worst.weights,
        compare_values(&format!("{name} prefill weights"), &got, &wv, tol),
    );

    // The whole sequence, f64: one causal forward against the re-derivation.
    let steps = rows::<T, S, DIM>(&bytes, "input.step", 0);
    if !f32_case {
        let x = SMatrix::<T, L, DIM>::from_fn(|i, j| {
            if i < P {
                prompt[(i, j)]
            } else {
                steps[(i - P, j)]
            }
        });
        let y = layer
            .forward(&x, &Mask::causal(Alignment::TopLeft), &*rope)
            .expect("fits");
        let want_steps = rows::<T, S, DIM>(&bytes, &format!("{out}.step"), 0);
        let want = SMatrix::<T, L, DIM>::from_fn(|i, j| {
            if i < P {
                want[(i, j)]
            } else {
                want_steps[(i - P, j)]
            }
        });
        worse(
            &mut worst.prefill,
            compare(&format!("{name} full"), &y, &want, tol),
        );
    }

    // Prefill, then token by token through a growing cache (row r holds position r).
    let mut cache: Box<KvCache<CAP, KV_DIM, T>> = static_attention::heap::zeroed();
    let (y, _) = layer
        .decode_with_weights(&prompt, &mut cache, &*rope)
        .expect("fits");
    worse(
        &mut worst.decode,
        compare(&format!("{name} decode prefill"), &y, &want, tol),
    );
    for t in 0..S {
        let x = rows::<T, 1, DIM>(&bytes, "input.step", t);
        let (y, w) = layer
            .decode_with_weights(&x, &mut cache, &*rope)
            .expect("fits");
        let want = rows::<T, 1, DIM>(&bytes, &format!("{out}.step"), t);
        worse(
            &mut worst.decode,
            compare(&format!("{name} step {t}"), &y, &want, tol),
        );
        if f32_case {
            let (wv, shape) = tensor(&bytes, &format!("weights.step.{t}")).expect("weights");
            let (pos, _) = tensor(&bytes, &format!("weights.step.{t}.positions")).expect("pos");
            assert_eq!(shape, [HEADS, pos.len()], "{name}");
            let got: Vec<f64> = (0..HEADS)
                .flat_map(|h| pos.iter().map(move |&p| (h, p as usize)))
                .map(|(h, p)| w.head(h)[(0, p)].to_f64())
                .collect();
            worse(
                &mut worst.weights,
                compare_values(&format!("{name} step {t} weights"), &got, &wv, tol),
            );
            // Every weight outside the keys the module attended to is 0.
            for h in 0..HEADS {
                let attended: f64 = pos
                    .iter()
                    .map(|&p| w.head(h)[(0, p as usize)].to_f64())
                    .sum();
                let all: f64 = (0..CAP).map(|r| w.head(h)[(0, r)].to_f64()).sum();
                assert!((attended - all).abs() < 1e-7, "{name} step {t} head {h}");
            }
        }
    }

    // The cache against the module's, in its layout.
    if f32_case {
        let len = cache.len();
        let (mut k, mut v) = (vec![T::ZERO; len * KV_DIM], vec![T::ZERO; len * KV_DIM]);
        cache
            .to_hf_layout(KV_HEADS, &mut k, &mut v)
            .expect("layout");
        let (pos, _) = tensor(&bytes, "cache.positions").expect("cache positions");
        for (part, ours) in [("cache.keys", &k), ("cache.values", &v)] {
            let (want, shape) = tensor(&bytes, part).expect(part);
            assert_eq!(shape, [KV_HEADS, pos.len(), HEAD_DIM], "{name} {part}");
            let got: Vec<f64> = (0..KV_HEADS)
                .flat_map(|g| pos.iter().map(move |&p| (g, p as usize)))
                .flat_map(|(g, p)| {
                    (0..HEAD_DIM).map(move |d| ours[(g * len + p) * HEAD_DIM + d].to_f64())
                })
                .collect();
            worse(
                &mut worst.cache,
                compare_values(&format!("{name} {part}"), &got, &want, tol),
            );
        }
    }

    // A sliding layer through a ring as large as its window.
    if let Some(window) = config.variant.sliding_window {
        ring::<T, DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, HEAD_DIM, P, S>(
            name, &layer, &rope, &bytes, window, out, tol,
        );
    }
    eprintln!(
        "{name} ({}): {worst:?}",
        if f32_case { "f32" } else { "f64" }
    );
    worst
}

/// Decodes the case through a ring of the layer's window (4 or 8 in these cases).
#[allow(clippy::too_many_arguments)]
fn ring<
    T: Float,
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    const HEAD_DIM: usize,
    const P: usize,
    const S: usize,
>(
    name: &str,
    layer: &GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T>,
    rope: &Rope<HEAD_DIM, MAX_POS, T>,
    bytes: &[u8],
    window: usize,
    out: &str,
    tol: f64,
) {
    macro_rules! run {
        ($w:literal) => {{
            let mut ring = KvCache::<$w, KV_DIM, T>::sliding_window();
            for t in 0..P + S {
                let (input, output, row) = if t < P {
                    ("input.prompt", format!("{out}.prompt"), t)
                } else {
                    ("input.step", format!("{out}.step"), t - P)
                };
                let x = rows::<T, 1, DIM>(bytes, input, row);
                let y = layer.decode(&x, &mut ring, rope).expect("fits");
                let want = rows::<T, 1, DIM>(bytes, &output, row);
                compare(&format!("{name} ring, token {t}"), &y, &want, tol);
            }
        }};
    }
    match window {
        4 => run!(4),
        8 => run!(8),
        w => panic!("{name}: no ring of {w} here"),
    }
}

/// One case in f32 (against the module) and f64 (against the re-derivation).
macro_rules! family {
    ($test:ident, $file:literal, $dim:literal, $q:literal, $kv:literal, $hd:literal, $s:literal) => {
        #[test]
        fn $test() {
            case::<f32, $dim, 4, 2, $q, $kv, $hd, 6, $s, { 6 + $s }>($file);
            case::<f64, $dim, 4, 2, $q, $kv, $hd, 6, $s, { 6 + $s }>($file);
        }
    };
}

family!(llama_3_1_rope_scaling, "llama31", 64, 64, 32, 16, 6);
family!(linear_rope_scaling, "llama_linear", 32, 32, 16, 8, 6);
family!(dynamic_ntk_rope_scaling, "llama_dynamic", 64, 64, 32, 16, 8);
family!(yarn_rope_scaling, "yarn", 64, 64, 32, 16, 6);
family!(qwen3_per_head_qk_norm, "qwen3", 48, 64, 32, 16, 6);
family!(olmo2_full_width_qk_norm, "olmo2", 64, 64, 32, 16, 6);
family!(gemma2_sliding_layer, "gemma2_sliding", 32, 64, 32, 16, 6);
family!(gemma2_global_layer, "gemma2_global", 32, 64, 32, 16, 6);
family!(gpt_oss_sliding_layer, "gpt_oss_sliding", 32, 64, 32, 16, 6);
family!(gpt_oss_full_layer, "gpt_oss_full", 32, 64, 32, 16, 6);
family!(
    stablelm_partial_rotary,
    "stablelm_partial",
    64,
    64,
    32,
    16,
    6
);
