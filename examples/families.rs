//! The attention of today's open models, one decoding step each: Llama 3.1 rotary scaling,
//! linear and dynamic-NTK scaling, YaRN, Qwen3 (per-head QK-norm), OLMo 2 (full-width
//! QK-norm), Gemma 2 (soft-capping, its own score scale, a sliding and a global layer), gpt-oss
//! (sinks, a sliding and a full layer) and StableLM (partial rotary).
//!
//! ```text
//! cargo run --release --example families
//! ```
//!
//! Each layer is built as a user builds one from a checkpoint: `LayerConfig::from_json` on the
//! model's `config.json`, `GroupedQuery::load_pretrained` on the layer's tensors (Hugging Face
//! names: `q_proj.weight`, `q_norm.weight`, `sinks`, …) and a `Rope` from the configuration.
//! The files are the test fixtures in `tests/hf/variants/`: small layers with random weights
//! that `scripts/gen_hf_variants.py` built in `transformers` 5.25, with the module's own
//! outputs. The example reads a 6-token prompt into the cache, decodes one more token, and
//! prints how far that step's output is from what `transformers` computed, and how much of
//! each head's softmax the keys received (below 1 only with sinks).

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use static_attention::config::LayerConfig;
use static_attention::positions::{Rope, RopePrecision, RopeScaling};
use static_attention::variant::QkNorm;
use static_attention::{GroupedQuery, KvCache, SMatrix, heap};

type Error = Box<dyn std::error::Error>;

/// The rotary table's length (past every position a fixture reaches) and the cache's.
const MAX_POS: usize = 64;
const CAP: usize = 32;
/// Prompt length of every fixture.
const PROMPT: usize = 6;

fn main() -> Result<(), Error> {
    println!(
        "kernel {}; each line: the model's attention, read from its config.json, then one \
         decoding step after a {PROMPT}-token prompt\n",
        static_attention::kernels::selected().name()
    );
    println!(
        "{:<17} {:<46} {:>10} {:>17}",
        "fixture", "what the attention adds", "|Δ| vs HF", "key share / head"
    );
    // (fixture, DIM, Q_DIM, KV_DIM, HEAD_DIM): every fixture has 4 query and 2 kv heads.
    step::<64, 64, 32, 16>("llama31")?;
    step::<32, 32, 16, 8>("llama_linear")?;
    step::<64, 64, 32, 16>("llama_dynamic")?;
    step::<64, 64, 32, 16>("yarn")?;
    step::<48, 64, 32, 16>("qwen3")?;
    step::<64, 64, 32, 16>("olmo2")?;
    step::<32, 64, 32, 16>("gemma2_sliding")?;
    step::<32, 64, 32, 16>("gemma2_global")?;
    step::<32, 64, 32, 16>("gpt_oss_sliding")?;
    step::<32, 64, 32, 16>("gpt_oss_full")?;
    step::<64, 64, 32, 16>("stablelm_partial")?;
    println!(
        "\n|Δ| is the largest difference from transformers' float32 output (this crate also in \
         f32, with Hugging Face's float32 rotary tables)."
    );
    Ok(())
}

/// Loads fixture `name` as a `GroupedQuery<DIM, 4, 2, Q_DIM, KV_DIM>`, decodes its prompt and
/// one token, and prints a line.
fn step<const DIM: usize, const Q_DIM: usize, const KV_DIM: usize, const HEAD_DIM: usize>(
    name: &str,
) -> Result<(), Error> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hf/variants")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = metadata(&bytes)?;
    let layer_idx: usize = meta.get("layer_idx").ok_or("no layer_idx")?.parse()?;
    let config = LayerConfig::from_json(meta.get("config").ok_or("no config")?, layer_idx)?;

    let mut layer: Box<GroupedQuery<DIM, 4, 2, Q_DIM, KV_DIM>> = heap::zeroed();
    layer.load_pretrained(&config, &bytes, "")?;
    let rope_config = config
        .rope
        .ok_or("a rotary model")?
        .with_precision(RopePrecision::HuggingFace);
    let rope: Box<Rope<HEAD_DIM, MAX_POS>> = Box::new(Rope::from_config(&rope_config)?);

    let prompt: SMatrix<f32, PROMPT, DIM> = rows(&bytes, "input.prompt", 0)?;
    let token: SMatrix<f32, 1, DIM> = rows(&bytes, "input.step", 0)?;
    let want: SMatrix<f32, 1, DIM> = rows(&bytes, "output.step", 0)?;
    let mut cache: Box<KvCache<CAP, KV_DIM>> = heap::zeroed();
    layer.decode(&prompt, &mut cache, &*rope)?;
    let (y, w) = layer.decode_with_weights(&token, &mut cache, &*rope)?;
    let err = (y - want).abs().max();
    // The tests hold every family to `1e-5 + 1e-5·|ref|`; so does the example.
    let bound = 1e-5 * (1.0 + want.abs().max());
    if err > bound {
        return Err(format!("{name}: |Δ| = {err:e} exceeds {bound:e}").into());
    }
    // Each head's weights over the cache: 1 without a sink, 1 − the sink's share with one.
    let shares: Vec<String> = (0..4)
        .map(|h| format!("{:.2}", w.head(h).row(0).sum()))
        .collect();
    println!(
        "{name:<17} {:<46} {err:>10.1e} {:>17}",
        describe(&config),
        shares.join(" ")
    );
    Ok(())
}

/// What a layer's attention adds to plain rotary attention, in a few words.
fn describe(config: &LayerConfig) -> String {
    let mut parts = Vec::new();
    if let Some(rope) = &config.rope {
        match rope.scaling {
            RopeScaling::Llama3 { factor, .. } => parts.push(format!("llama3 rope ×{factor}")),
            RopeScaling::Linear { factor } => parts.push(format!("linear rope ×{factor}")),
            RopeScaling::Dynamic { factor, .. } => parts.push(format!("dynamic NTK ×{factor}")),
            RopeScaling::Yarn { factor, .. } => parts.push(format!("yarn ×{factor}")),
            _ => {}
        }
        if let Some(width) = rope.rotary_dim {
            parts.push(format!("rotary {width} of {}", config.head_dim));
        }
    }
    let v = &config.variant;
    match v.qk_norm {
        QkNorm::PerHead { .. } => parts.push("qk-norm per head".into()),
        QkNorm::Full { .. } => parts.push("qk-norm full width".into()),
        _ => {}
    }
    if let Some(scale) = v.scale {
        parts.push(format!("scale {scale:.3}"));
    }
    if let Some(cap) = v.softcap {
        parts.push(format!("softcap {cap}"));
    }
    if v.sinks {
        parts.push("sinks".into());
    }
    if let Some(window) = v.sliding_window {
        parts.push(format!("window {window}"));
    }
    if config.qkv_bias {
        parts.push("biases".into());
    }
    if parts.is_empty() {
        "(plain)".into()
    } else {
        parts.join(", ")
    }
}

/// The file's string metadata (`config` is the model's `config.json`).
fn metadata(bytes: &[u8]) -> Result<HashMap<String, String>, Error> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    Ok(meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// Rows `first .. first + R` of the 2-D float32 tensor `name`.
fn rows<const R: usize, const C: usize>(
    bytes: &[u8],
    name: &str,
    first: usize,
) -> Result<SMatrix<f32, R, C>, Error> {
    let file = SafeTensors::deserialize(bytes)?;
    let t = file.tensor(name)?;
    if t.dtype() != Dtype::F32 || t.shape().len() != 2 || t.shape()[1] != C {
        return Err(format!("{name}: {:?} {:?}, not F32 [_, {C}]", t.dtype(), t.shape()).into());
    }
    if t.shape()[0] < first + R {
        return Err(format!("{name}: {} rows, not {}", t.shape()[0], first + R).into());
    }
    let value = |i: usize| {
        let b = &t.data()[4 * i..4 * i + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    Ok(SMatrix::from_fn(|i, j| value((first + i) * C + j)))
}
