//! Random initialisation matching PyTorch's `nn.MultiheadAttention._reset_parameters`.
//!
//! - The packed in-projection `[3·DIM, DIM]` (W_q, W_k, W_v stacked) is Xavier-uniform:
//!   `U(−a, a)` with `a = √(6 / (fan_in + fan_out)) = √(6 / (DIM + 3·DIM))`.
//! - The output projection weight is `U(−1/√DIM, 1/√DIM)` (PyTorch's `nn.Linear` default,
//!   Kaiming-uniform with `a = √5`).
//! - Every bias is zero.
//!
//! Values are drawn from any [`rand::Rng`], row by row in PyTorch's layout (W_q, then W_k,
//! W_v, W_o), so a seeded generator gives the same weights on every run and platform. The
//! stream of numbers is not PyTorch's (its generator is different); the distributions are.

use nalgebra::SMatrix;
use rand::{Rng, RngExt};

use crate::Float;

/// Xavier-uniform bound for the packed `[3·DIM, DIM]` in-projection.
#[must_use]
pub fn in_proj_bound(dim: usize) -> f64 {
    crate::float::math::sqrt(6.0 / (4.0 * dim as f64))
}

/// Bound of the output projection's uniform weights, `1/√DIM`.
#[must_use]
pub fn out_proj_bound(dim: usize) -> f64 {
    1.0 / crate::float::math::sqrt(dim as f64)
}

/// Fills `w` (any shape) with `U(−bound, bound)` samples in row-major order of the PyTorch
/// weight it stores (that is, the storage order of our transposed matrix).
pub(crate) fn fill_uniform<T: Float, R: Rng + ?Sized, const A: usize, const B: usize>(
    w: &mut SMatrix<T, A, B>,
    bound: f64,
    rng: &mut R,
) {
    for x in w.as_mut_slice() {
        *x = T::of(rng.random_range(-bound..bound));
    }
}
