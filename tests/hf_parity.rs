//! Parity with Hugging Face `transformers` (tests/hf/, written by scripts/gen_hf_fixtures.py):
//! `LlamaAttention` (grouped-query and multi-query heads, RoPE with bases 10 000 and
//! 500 000), `MistralAttention` (sliding window 4, against a ring cache) and `Qwen2Attention`
//! (q/k/v biases, weights under a model prefix), each loaded from the module's safetensors
//! `state_dict`, run on a prompt and then token by token through a `KvCache`, and compared
//! with the module's outputs and with what its `DynamicCache` holds at the end (keys after
//! RoPE). Tolerance (docs/SEMANTICS.md): `1e-5 + 1e-5·|ref|` in f32; `1e-12` in f64, against a float64
//! reference (transformers itself computes rotary tables and the softmax in float32).

mod common;

use common::{HF, all_fixtures, compare, fixture, metadata, tensor};
use nalgebra::SMatrix;
use static_attention::positions::{Rope, RopeStyle};
use static_attention::{Float, GroupedQuery, KvCache};

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
    const CAP: usize,
>(
    name: &str,
) {
    let bytes = fixture(HF, name);
    let meta = metadata(&bytes);
    assert_eq!(meta["dim"], DIM.to_string());
    assert_eq!(meta["heads"], HEADS.to_string());
    assert_eq!(meta["kv_heads"], KV_HEADS.to_string());
    assert_eq!(meta["head_dim"], HEAD_DIM.to_string());
    assert_eq!(meta["dtype"], if T::BYTES == 4 { "f32" } else { "f64" });
    let tol = if T::BYTES == 4 { 1e-5 } else { 1e-12 };
    let steps: usize = meta["steps"].parse().unwrap();
    assert_eq!(meta["prompt"], P.to_string());
    let theta: f64 = meta["rope_theta"].parse().unwrap();
    let window = match meta["sliding_window"].as_str() {
        "none" => None,
        w => Some(w.parse::<usize>().unwrap()),
    };

    let layer = GroupedQuery::<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T>::from_safetensors(
        &bytes,
        &meta["prefix"],
    )
    .expect("loads the module's state_dict");
    let rope = Rope::<HEAD_DIM, 64, T>::new(theta, RopeStyle::RotateHalf).expect("a valid base");
    let mut cache = match window {
        None => KvCache::<CAP, KV_DIM, T>::new(),
        Some(w) => {
            assert_eq!(w, CAP, "{name}: the ring's capacity is the window");
            KvCache::sliding_window()
        }
    };

    let prompt = rows::<T, P, DIM>(&bytes, "input.prompt", 0);
    let got = layer.decode(&prompt, &mut cache, &rope).expect("fits");
    let want = rows::<T, P, DIM>(&bytes, "output.prompt", 0);
    let mut worst = compare(&format!("{name} prompt"), &got, &want, tol);
    for t in 0..steps {
        let x = rows::<T, 1, DIM>(&bytes, "input.step", t);
        let got = layer.decode(&x, &mut cache, &rope).expect("fits");
        let want = rows::<T, 1, DIM>(&bytes, "output.step", t);
        let w = compare(&format!("{name} step {t}"), &got, &want, tol);
        worst = (worst.0.max(w.0), worst.1.max(w.1));
    }

    // The cache: transformers keeps the last `len` positions (a sliding window keeps
    // window − 1 between calls); ours holds them too, position p in row p (mod CAP).
    let total = P + steps;
    assert_eq!(cache.position(), total);
    let mut cache_worst = 0f64;
    for (part, ours) in [
        ("cache.keys", cache.keys()),
        ("cache.values", cache.values()),
    ] {
        let (v, shape) = tensor(&bytes, part).unwrap();
        let (kvh, len, hd) = (shape[0], shape[1], shape[2]);
        assert_eq!((kvh, hd), (KV_HEADS, HEAD_DIM));
        for g in 0..kvh {
            for r in 0..len {
                let pos = total - len + r;
                for e in 0..hd {
                    let want = v[(g * len + r) * hd + e];
                    let got = ours[(pos % CAP, g * hd + e)].to_f64();
                    let err = (got - want).abs();
                    assert!(
                        err <= tol + tol * want.abs(),
                        "{name} {part}: kv head {g}, position {pos}, feature {e}: {got} vs {want}"
                    );
                    cache_worst = cache_worst.max(err);
                }
            }
        }
    }
    println!(
        "{name:24} {:>3} worst |Δ|: outputs {:.1e} (worst/bound {:.2}), cache {:.1e}",
        if T::BYTES == 4 { "f32" } else { "f64" },
        worst.0,
        worst.1,
        cache_worst
    );
    if let Some((hf, _)) = tensor(&bytes, "hf_output.step") {
        // The f64 case: how far transformers' own float64 output (float32 rotary tables and
        // softmax inside) is from the float64 reference the test holds us to.
        let (reference, _) = tensor(&bytes, "output.step").unwrap();
        let gap = hf
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        println!("{name:24}     transformers' f64 output vs the f64 reference: {gap:.1e}");
    }
}

#[test]
fn llama_gqa_8q2kv() {
    case::<f32, 64, 8, 2, 64, 16, 8, 5, 16>("llama_gqa_8q2kv");
}

#[test]
fn llama_mqa_theta500k() {
    case::<f32, 32, 4, 1, 32, 8, 8, 3, 8>("llama_mqa_theta500k");
}

#[test]
fn mistral_window4() {
    case::<f32, 32, 4, 2, 32, 16, 8, 6, 4>("mistral_window4");
}

#[test]
fn qwen2_bias_prefixed() {
    case::<f32, 48, 6, 2, 48, 16, 8, 4, 8>("qwen2_bias_prefixed");
}

#[test]
fn llama_f64() {
    case::<f64, 32, 4, 2, 32, 16, 8, 4, 7>("llama_f64");
}

#[test]
fn every_reference_file_has_a_test() {
    assert_eq!(
        all_fixtures(HF),
        [
            "llama_f64",
            "llama_gqa_8q2kv",
            "llama_mqa_theta500k",
            "mistral_window4",
            "qwen2_bias_prefixed"
        ]
    );
}
