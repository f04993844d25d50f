//! What the integration tests share: reading the reference files (tests/pytorch/*.safetensors
//! from PyTorch, tests/hf/*.safetensors from Hugging Face `transformers`) into nalgebra types,
//! comparing against them, and building seeded inputs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use nalgebra::SMatrix;
use safetensors::{Dtype, SafeTensors};
use static_attention::Float;

/// The PyTorch reference files (scripts/gen_pytorch_fixtures.py), relative to the crate.
pub const PYTORCH: &str = "tests/pytorch";
/// The Hugging Face `transformers` reference files (scripts/gen_hf_fixtures.py).
pub const HF: &str = "tests/hf";

/// The bytes of reference file `name` in `dir` ([`PYTORCH`] or [`HF`]).
pub fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(format!("{name}.safetensors"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every reference file's case name in `dir`, sorted.
pub fn all_fixtures(dir: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut names: Vec<String> = std::fs::read_dir(path)
        .expect(dir)
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".safetensors").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// The file's string metadata.
pub fn metadata(bytes: &[u8]) -> HashMap<String, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).expect("valid file");
    meta.metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// A tensor as f64 values (row-major) and its shape; booleans as 0/1.
pub fn tensor(bytes: &[u8], name: &str) -> Option<(Vec<f64>, Vec<usize>)> {
    let st = SafeTensors::deserialize(bytes).expect("valid file");
    let view = st.tensor(name).ok()?;
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::BOOL | Dtype::U8 => data.iter().map(|&b| f64::from(b)).collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    Some((values, view.shape().to_vec()))
}

/// A 2-D tensor (or a slice `index` of a 3-D one) as an `R × C` matrix of `T`.
pub fn matrix<T: Float, const R: usize, const C: usize>(
    bytes: &[u8],
    name: &str,
    index: Option<usize>,
) -> Option<SMatrix<T, R, C>> {
    let (values, shape) = tensor(bytes, name)?;
    let offset = match index {
        None => {
            assert_eq!(shape, [R, C], "{name}");
            0
        }
        Some(i) => {
            assert_eq!(shape[1..], [R, C], "{name}");
            i * R * C
        }
    };
    let rows: Vec<T> = values[offset..offset + R * C]
        .iter()
        .map(|&x| T::of(x))
        .collect();
    Some(SMatrix::from_row_slice(&rows))
}

/// A boolean matrix (nonzero = true).
pub fn bool_matrix<const R: usize, const C: usize>(
    bytes: &[u8],
    name: &str,
) -> Option<SMatrix<bool, R, C>> {
    let (values, shape) = tensor(bytes, name)?;
    assert_eq!(shape, [R, C], "{name}");
    Some(SMatrix::from_fn(|i, j| values[i * C + j] != 0.0))
}

/// A boolean vector.
pub fn bool_vector<const N: usize>(bytes: &[u8], name: &str) -> Option<[bool; N]> {
    let (values, shape) = tensor(bytes, name)?;
    assert_eq!(shape, [N], "{name}");
    Some(core::array::from_fn(|i| values[i] != 0.0))
}

/// Worst error over a pair of matrices against the crate's bound `|Δ| ≤ atol + rtol·|ref|`
/// (`atol = rtol = tol`), returned as (worst |Δ|, worst ratio to the bound); panics past the
/// bound, naming `what`. A NaN on either side fails: where PyTorch gives NaN rows, callers
/// first replace them with the zero rows the crate promises for fully masked queries.
pub fn compare<T: Float, const R: usize, const C: usize>(
    what: &str,
    got: &SMatrix<T, R, C>,
    want: &SMatrix<T, R, C>,
    tol: f64,
) -> (f64, f64) {
    let mut worst = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want.iter()) {
        let (g, w) = (g.to_f64(), w.to_f64());
        let err = (g - w).abs();
        let bound = tol + tol * w.abs();
        assert!(
            err <= bound,
            "{what}: |{g} − {w}| = {err:e} exceeds {bound:e}"
        );
        worst.0 = worst.0.max(err);
        worst.1 = worst.1.max(err / bound);
    }
    worst
}

/// A matrix on the heap (never on the stack) whose `i`-th value in column-major order is
/// `f(i)`.
pub fn filled<const R: usize, const C: usize>(f: impl Fn(f32) -> f32) -> Box<SMatrix<f32, R, C>> {
    let mut m: Box<SMatrix<f32, R, C>> = static_attention::heap::zeroed();
    m.iter_mut().enumerate().for_each(|(i, v)| *v = f(i as f32));
    m
}

/// Deterministic values uniform in `[-scale, scale]` (xorshift, so every platform draws the
/// same).
pub fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// An `R × C` matrix of [`values`].
pub fn seeded<const R: usize, const C: usize>(seed: u64, scale: f64) -> SMatrix<f64, R, C> {
    SMatrix::from_column_slice(&values(seed, R * C, scale))
}
