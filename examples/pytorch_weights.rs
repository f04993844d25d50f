//! Load an `nn.MultiheadAttention` that PyTorch saved, run it, and compare with PyTorch's own
//! output for the same input.
//!
//! `cargo run --example pytorch_weights [path/to/case.safetensors]`
//!
//! The default file, tests/pytorch/causal_7x12x3.safetensors, was written by
//! scripts/gen_pytorch_fixtures.py: the module's state_dict (`in_proj_weight`, `in_proj_bias`,
//! `out_proj.weight`, `out_proj.bias`), an input, a causal mask and PyTorch's output. Loading a
//! plain `safetensors.torch.save_file(mha.state_dict(), "mha.safetensors")` works the same way.

use std::error::Error;

use nalgebra::SMatrix;
use safetensors::{Dtype, SafeTensors};
use static_attention::{Alignment, Mask, MultiHead};

const SEQ: usize = 7;
const DIM: usize = 12;
const HEADS: usize = 3;

/// A row-major 2-D f32 tensor from the file as an `R × C` matrix.
fn matrix<const R: usize, const C: usize>(
    file: &SafeTensors<'_>,
    name: &str,
) -> Result<SMatrix<f32, R, C>, Box<dyn Error>> {
    let t = file.tensor(name)?;
    if t.dtype() != Dtype::F32 || t.shape() != [R, C] {
        return Err(format!(
            "{name}: expected F32 [{R}, {C}], found {:?} {:?}",
            t.dtype(),
            t.shape()
        )
        .into());
    }
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(SMatrix::from_row_slice(&values))
}

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pytorch/causal_7x12x3.safetensors"
        )
        .to_owned()
    });
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;

    // The weights: a typed error (missing tensor, wrong shape or dtype, …) if they don't fit.
    let layer = MultiHead::<SEQ, DIM, HEADS>::from_safetensors(&bytes, "")?;
    println!("loaded {path}");
    println!(
        "  MultiHead<{SEQ}, {DIM}, {HEADS}>, biases: {}",
        layer.q_proj().has_bias()
    );

    // The input and PyTorch's output, stored next to the weights.
    let file = SafeTensors::deserialize(&bytes)?;
    let x: SMatrix<f32, SEQ, DIM> = matrix(&file, "input.query")?;
    let torch_out: SMatrix<f32, SEQ, DIM> = matrix(&file, "output.attn")?;

    let y = layer.forward(&x, &Mask::causal(Alignment::TopLeft));
    let diff = (y - torch_out).amax();
    let row = |m: &SMatrix<f32, SEQ, DIM>| {
        m.row(0)
            .iter()
            .map(|v| format!("{v:8.4}"))
            .collect::<String>()
    };
    println!("  output row 0, ours:    {}", row(&y));
    println!("  output row 0, PyTorch: {}", row(&torch_out));
    println!("largest |ours − PyTorch| over {SEQ} × {DIM} outputs: {diff:.2e}");
    if diff > 1e-5 {
        return Err("differs from PyTorch by more than 1e-5".into());
    }
    Ok(())
}
