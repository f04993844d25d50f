//! `bf16` layers against PyTorch's `bfloat16` `nn.MultiheadAttention` (tests/pytorch_bf16/,
//! written by scripts/gen_bf16_fixtures.py): the module's `bf16` `state_dict` loads into a
//! `MultiHead<_, _, _, f32, bf16>`, and its output on the module's input is compared with
//!
//! - the exact answer (the same rounded weights and input in `float64`): within the layer
//!   contract of the `weight` module's docs, `2⁻⁶ · max|y|`, wherever the kernel multiplies in
//!   `bf16`, and within the crate's `f32` bound where it widens;
//! - PyTorch's `bf16` module, which rounds every product, projection and softmax to `bf16`:
//!   within `2⁻⁶ · max|y|`, that module's own distance from the exact answer being up to
//!   `0.92 · 2⁻⁸ · max|y|` in these files (ours: 0.47 · 2⁻⁸ with `bf16` products on x86-64,
//!   0.33 · 2⁻⁸ on Arm, whose attention stays `f32`).
//!
//! `cargo test --test bf16_parity -- --nocapture` prints the measured ratios.
#![cfg(feature = "safetensors")]

mod common;

use common::{fixture, matrix};
use static_attention::kernels::{Kernel, selected};
use static_attention::{Mask, MultiHead, bf16};

const DIR: &str = "tests/pytorch_bf16";

fn case<const S: usize, const D: usize, const H: usize>(name: &str) {
    let bytes = fixture(DIR, name);
    let layer = MultiHead::<S, D, H, f32, bf16>::from_safetensors(&bytes, "")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let x = matrix::<f32, S, D>(&bytes, "input.query", None).expect("input");
    let exact = matrix::<f32, S, D>(&bytes, "output.attn_f32", None).expect("exact output");
    let torch = matrix::<f32, S, D>(&bytes, "output.attn_bf16", None).expect("bf16 output");
    let y = layer.forward(&x, &Mask::none());
    let scale = exact.amax();
    let products = matches!(selected(), Kernel::Avx512Bf16 | Kernel::NeonBf16);
    let to_exact = (y - exact).amax();
    if products {
        let bound = 2f32.powi(-6) * scale;
        assert!(
            to_exact <= bound,
            "{name}: {to_exact:e} from exact > {bound:e}"
        );
    } else {
        for (a, b) in y.iter().zip(exact.iter()) {
            assert!(
                (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
                "{name}: {a} vs exact {b}"
            );
        }
    }
    let to_torch = (y - torch).amax();
    let bound = 2f32.powi(-6) * scale;
    assert!(
        to_torch <= bound,
        "{name}: {to_torch:e} from PyTorch bf16 > {bound:e}"
    );
    let u = 2f32.powi(-8);
    println!(
        "{name} on {}: |ours − exact| ≤ {:.3}·u·max|y|, |ours − PyTorch bf16| ≤ {:.3}·u·max|y|, \
         |PyTorch bf16 − exact| ≤ {:.3}·u·max|y| (u = 2⁻⁸)",
        selected().name(),
        to_exact / u / scale,
        to_torch / u / scale,
        (torch - exact).amax() / u / scale
    );
}

#[test]
fn bf16_mha_24x64x4() {
    case::<24, 64, 4>("bf16_mha_24x64x4");
}

#[test]
fn bf16_mha_40x96x8() {
    case::<40, 96, 8>("bf16_mha_40x96x8");
}
