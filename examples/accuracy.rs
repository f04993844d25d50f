//! How far f32 results are from an f64 oracle computed from the same f32 inputs, as the
//! logits grow: `cargo run --release --example accuracy`.
//!
//! For each shape and input scale, several seeded layers (PyTorch's initialisation) and inputs
//! uniform in `[-scale, scale]` run through `MultiHead::forward` in f32; the oracle is the
//! same layer and inputs widened to f64 through `reference::multi_head`. Beside the library
//! stands a naive f32 computation (the same `reference` code run in f32), so the table shows
//! what any f32 implementation loses. Errors are reported as the worst
//! `|Δ| / (1e-5 + 1e-5·|ref|)`, the bound of docs/SEMANTICS.md (≤ 1 means within it), with the
//! largest logit `|q·k|/√d` seen.

use static_attention::{Mask, MultiHead, SMatrix, reference};

/// Seeds (layers and inputs) per shape and scale.
const SEEDS: u64 = 8;

fn bound_ratio<const R: usize, const C: usize>(
    got: &SMatrix<f64, R, C>,
    want: &SMatrix<f64, R, C>,
) -> f64 {
    got.iter()
        .zip(want.iter())
        .map(|(g, w)| (g - w).abs() / (1e-5 + 1e-5 * w.abs()))
        .fold(0.0, f64::max)
}

/// Worst ratio for the library, for naive f32, and the largest logit.
fn case<const S: usize, const D: usize, const H: usize>(scale: f32) -> (f64, f64, f64) {
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for seed in 0..SEEDS {
        let layer = MultiHead::<S, D, H>::from_seed(seed);
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let x = SMatrix::<f32, S, D>::from_fn(|_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        });
        let mask = Mask::none();
        let l64 = MultiHead::<S, D, H, f64>::from_parts(
            widen(layer.q_proj()),
            widen(layer.k_proj()),
            widen(layer.v_proj()),
            widen(layer.out_proj()),
        );
        let x64 = x.cast::<f64>();
        let (want, _) = reference::multi_head(&l64, &x64, &x64, &x64, &mask);
        let got = layer.forward(&x, &mask).cast::<f64>();
        let (naive, _) = reference::multi_head(&layer, &x, &x, &x, &mask);
        // Largest logit: |q·k|/√d over every head.
        let q = l64.q_proj().forward(&x64);
        let k = l64.k_proj().forward(&x64);
        let d = D / H;
        let mut logit = 0.0f64;
        for h in 0..H {
            let s = q.columns(h * d, d) * k.columns(h * d, d).transpose() / (d as f64).sqrt();
            logit = logit.max(s.amax());
        }
        worst.0 = worst.0.max(bound_ratio(&got, &want));
        worst.1 = worst.1.max(bound_ratio(&naive.cast(), &want));
        worst.2 = worst.2.max(logit);
    }
    worst
}

fn widen<const N: usize>(
    l: &static_attention::Linear<N, N>,
) -> static_attention::Linear<N, N, f64> {
    let w = l.weight().cast::<f64>();
    static_attention::Linear::from_matrix(&w, l.bias().map(|b| b.cast::<f64>()).as_ref())
}

fn row<const S: usize, const D: usize, const H: usize>() {
    for scale in [1.0, 10.0, 30.0] {
        let (lib, naive, logit) = case::<S, D, H>(scale);
        println!("| `MultiHead<{S}, {D}, {H}>` | ×{scale} | {logit:.0} | {lib:.2} | {naive:.2} |");
    }
}

fn main() {
    println!(
        "| shape | inputs | largest logit | this crate, worst / bound | naive f32, worst / bound |"
    );
    println!("|---|---|---|---|---|");
    row::<6, 16, 4>();
    row::<16, 64, 4>();
    row::<64, 64, 8>();
    row::<128, 256, 8>();
}
