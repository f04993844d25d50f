//! Random initialisation matching PyTorch's `nn.MultiheadAttention._reset_parameters`.
//!
//! - The packed in-projection `[3·DIM, DIM]` (W_q, W_k, W_v stacked) is Xavier-uniform:
//!   `U(−a, a)` with `a = √(6 / (fan_in + fan_out)) = √(6 / (DIM + 3·DIM))`.
//! - The output projection weight is `U(−1/√DIM, 1/√DIM)` (PyTorch's `nn.Linear` default,
//!   Kaiming-uniform with `a = √5`).
//! - Every bias is zero ([`Bias::Present`]) or absent ([`Bias::Absent`], PyTorch `bias=False`).
//!
//! Values are drawn from any [`rand::Rng`], row by row in PyTorch's layout (W_q, then W_k,
//! W_v, W_o), so a seeded generator gives the same weights on every run and platform. The
//! stream of numbers is not PyTorch's (its generator is different); the distributions are.
//!
//! The `from_seed(u64)` constructors ([`crate::MultiHead::from_seed`],
//! [`crate::SelfAttention::from_seed`]) use [`SeedRng`], rand's `Xoshiro256PlusPlus`, which
//! gives the same stream on every platform, so a caller needs no `rand` dependency of its own.

use rand::{Rng, RngExt};

use crate::Float;

/// The generator behind the `from_seed` constructors: rand's portable `Xoshiro256PlusPlus`,
/// seeded with `SeedableRng::seed_from_u64`.
pub type SeedRng = rand::rngs::Xoshiro256PlusPlus;

/// Whether a layer has bias terms: PyTorch's `bias=True` (present, initialised to zero) or
/// `bias=False` (absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bias {
    /// Every projection has a bias vector (initialised to zero by `reset_parameters`).
    Present,
    /// No projection has a bias (PyTorch `bias=False`).
    Absent,
}

/// Xavier-uniform bound for the packed `[3·DIM, DIM]` in-projection.
#[must_use]
pub fn in_proj_bound(dim: usize) -> f64 {
    crate::kernels::math::sqrt(6.0 / (4.0 * dim as f64))
}

/// Bound of the output projection's uniform weights, `1/√DIM`.
#[must_use]
pub fn out_proj_bound(dim: usize) -> f64 {
    1.0 / crate::kernels::math::sqrt(dim as f64)
}

/// Fills the weight of `l` (`OUT × IN`) with `U(−bound, bound)` samples in the row-major
/// order of PyTorch's `weight` (row by row), so a seed gives the same weights whatever the
/// storage.
pub(crate) fn fill_uniform<
    T: Float,
    W: crate::Weight<T>,
    R: Rng + ?Sized,
    const IN: usize,
    const OUT: usize,
>(
    l: &mut crate::Linear<IN, OUT, T, W>,
    bound: f64,
    rng: &mut R,
) {
    for n in 0..OUT {
        for p in 0..IN {
            l.set_weight_at(n, p, T::of(rng.random_range(-bound..bound)));
        }
    }
}

/// Re-draws `W_q`, `W_k`, `W_v` (Xavier-uniform over the packed in-projection of a `DIM`-wide
/// layer) and sets their biases to zero or removes them.
pub(crate) fn reset_in_projection<
    T: Float,
    W: crate::Weight<T>,
    R: Rng + ?Sized,
    const DIM: usize,
>(
    projections: [&mut crate::Linear<DIM, DIM, T, W>; 3],
    bias: Bias,
    rng: &mut R,
) {
    let a = in_proj_bound(DIM);
    for l in projections {
        fill_uniform(l, a, rng);
        l.set_zero_bias(bias);
    }
}
