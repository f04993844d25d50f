//! Decoding with a KV cache: a Llama-style grouped-query layer (8 query heads sharing 2
//! key/value heads of 32 features, RoPE) reads a prompt, then generates token by token.
//!
//! ```text
//! cargo run --release --example decode                         # a layer drawn from a seed
//! cargo run --release --example decode -- layer.safetensors model.layers.0.self_attn.
//! ```
//!
//! With a file, the layer is loaded from its `q_proj`/`k_proj`/`v_proj`/`o_proj` tensors (Hugging
//! Face names, under the given prefix; 256 features, 8 heads, 2 kv heads). Each step is checked
//! against a full causal recomputation, and the example prints the latency per token with the
//! cache (one token's projections, attention over the cache) and without it (the causal forward
//! over the whole 128-token window again, as a fixed-shape engine without a cache must do).

use std::time::Instant;

use static_attention::positions::{Rope, RopeConfig, RopeStyle};
use static_attention::{Alignment, GroupedQuery, KvCache, Mask, SMatrix, Scratch, heap};

/// Model width, heads, kv heads, query and key/value widths: Llama's shape, scaled down.
const DIM: usize = 256;
const HEADS: usize = 8;
const KV_HEADS: usize = 2;
const KV_DIM: usize = 64;
type Layer = GroupedQuery<DIM, HEADS, KV_HEADS, DIM, KV_DIM>;

/// Prompt length and the whole window (prompt + generated tokens).
const PROMPT: usize = 32;
const WINDOW: usize = 128;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layer = match args.first() {
        Some(path) => {
            let prefix = args.get(1).map_or("", String::as_str);
            println!("layer: {path} (prefix {prefix:?})");
            let mut layer: Box<Layer> = heap::zeroed();
            layer.load_safetensors(&std::fs::read(path)?, prefix)?;
            layer
        }
        None => {
            println!("layer: drawn from seed 7 (nn.Linear's initialisation, no biases)");
            Box::new(Layer::from_seed(7))
        }
    };
    println!(
        "GroupedQuery<{DIM}, {HEADS}, {KV_HEADS}, {DIM}, {KV_DIM}>: {HEADS} query heads of {} \
         features on {KV_HEADS} kv heads, RoPE base 10 000 (rotate-half), kernel {}",
        Layer::HEAD_DIM,
        static_attention::kernels::selected().name()
    );
    let mut rope: Box<Rope<32, WINDOW>> = heap::zeroed();
    rope.rebuild(&RopeConfig::new(10_000.0, RopeStyle::RotateHalf))?;

    // The whole sequence: a prompt and the tokens "generated" after it (here, fixed
    // pseudo-random embeddings: the layer is one attention block, not a language model).
    let mut x: Box<SMatrix<f32, WINDOW, DIM>> = heap::zeroed();
    for (i, v) in x.iter_mut().enumerate() {
        *v = ((i as f32 * 0.618).sin() * 43_758.547).fract() - 0.5;
    }

    // Reference: the causal forward over the whole window, once. Row t is what token t must
    // get, whatever comes after it.
    let mut full_scratch: Box<Scratch<WINDOW, WINDOW, DIM, f32, KV_DIM>> = heap::zeroed();
    let mut full: Box<SMatrix<f32, WINDOW, DIM>> = heap::zeroed();
    let causal = Mask::causal(Alignment::BottomRight);
    layer.forward_into(&x, &causal, &*rope, &mut full_scratch, &mut full)?;

    // Prefill: the prompt in one call.
    let mut cache: Box<KvCache<WINDOW, KV_DIM>> = heap::zeroed();
    let mut prompt_scratch: Box<Scratch<PROMPT, PROMPT, DIM, f32, KV_DIM>> = heap::zeroed();
    let mut prompt_out = SMatrix::<f32, PROMPT, DIM>::zeros();
    let prompt = x.fixed_rows::<PROMPT>(0).into_owned();
    let t0 = Instant::now();
    layer.decode_into(
        &prompt,
        &mut cache,
        &*rope,
        &mut prompt_scratch,
        &mut prompt_out,
    )?;
    let prefill = t0.elapsed();
    let mut worst = (prompt_out - full.fixed_rows::<PROMPT>(0)).amax();
    println!(
        "prefill: {PROMPT} tokens in {:.1} µs ({:.2} µs per token)",
        prefill.as_secs_f64() * 1e6,
        prefill.as_secs_f64() * 1e6 / PROMPT as f64
    );

    // Decode: one token at a time, each checked against the full forward.
    let mut step_scratch: Box<Scratch<1, 1, DIM, f32, KV_DIM>> = heap::zeroed();
    let mut y = SMatrix::<f32, 1, DIM>::zeros();
    let mut with_cache = Vec::new();
    for t in PROMPT..WINDOW {
        let token = x.fixed_rows::<1>(t).into_owned();
        let t0 = Instant::now();
        layer.decode_into(&token, &mut cache, &*rope, &mut step_scratch, &mut y)?;
        with_cache.push(t0.elapsed().as_secs_f64());
        worst = worst.max((y - full.fixed_rows::<1>(t)).amax());
    }
    assert!(
        worst <= 1e-5,
        "decode differs from the full forward by {worst:e}"
    );

    // Without a cache: recompute the causal forward over the window for a new token.
    let mut without = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        layer.forward_into(&x, &causal, &*rope, &mut full_scratch, &mut full)?;
        without.push(t0.elapsed().as_secs_f64());
    }

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e6
    };
    let first_steps = with_cache[..8].to_vec();
    let last_steps = with_cache[with_cache.len() - 8..].to_vec();
    println!(
        "decode: {} tokens, cache length {}..{}; largest |decoded − full| = {worst:.1e}",
        WINDOW - PROMPT,
        PROMPT + 1,
        WINDOW
    );
    println!(
        "  per token with the cache: median {:.1} µs (first 8 steps {:.1} µs, last 8 {:.1} µs)",
        median(&mut with_cache),
        median(&mut first_steps.clone()),
        median(&mut last_steps.clone())
    );
    println!(
        "  per token without it (causal forward over {WINDOW} tokens): median {:.1} µs",
        median(&mut without)
    );
    Ok(())
}
