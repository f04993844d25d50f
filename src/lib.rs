//! # static-attention
//!
//! Transformer attention with every shape a const generic: scaled dot-product attention,
//! single-head and multi-head self-attention with PyTorch's parameters, cross-attention and
//! masks, on nalgebra's stack-allocated [`SMatrix`]. Inference only.
//!
//! - **Checked at compile time.** `MultiHead<SEQ, DIM, HEADS>` takes `SMatrix<T, SEQ, DIM>`; a
//!   shape mismatch is a type error, and a `HEADS` that does not divide `DIM` (or a zero
//!   parameter) stops `cargo build` with "DIM must be divisible by HEADS: each head gets
//!   DIM / HEADS features".
//! - **Heap-free.** No forward pass allocates. Weights live inline in the types (a `static`
//!   layer keeps them in read-only memory), working memory is a typed [`Scratch`] of
//!   [`MultiHead::SCRATCH_BYTES`] bytes that a caller may own, and the crate builds for
//!   `#![no_std]` targets without `alloc`.
//! - **Streaming.** The default path is fused (flash-style): scores, online softmax and the
//!   weighted sum of values in one pass over the keys; no `SEQ × SEQ` matrix exists unless the
//!   caller asks for the attention weights.
//! - **PyTorch semantics.** Parameters, layout (`y = x Wᵀ + b`), scaling, masks and the
//!   fully-masked-row rule follow `nn.MultiheadAttention` and `scaled_dot_product_attention`;
//!   [`io`] loads and saves PyTorch `state_dict`s (safetensors, or plain slices with no
//!   allocation), and the tests compare against outputs PyTorch produced.
//!
//! ## The math
//!
//! ```text
//! Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V          (softmax over keys, per row)
//! head_h             = Attention(X W_hQᵀ + b, X W_hKᵀ + b, X W_hVᵀ + b)
//! MultiHead(X)       = Concat(head_1, …, head_H) W_Oᵀ + b_O,   d_k = DIM / HEADS
//! ```
//!
//! [`reference`](mod@reference) spells these out line by line (with `std`); the forward passes compute the
//! same thing through the [`kernels`] layer and are tested against it.
//!
//! ## Example
//!
//! ```
//! use nalgebra::SMatrix;
//! use rand::{SeedableRng, rngs::SmallRng};
//! use static_attention::{Alignment, Mask, MultiHead};
//!
//! // 6 tokens of 16 features, 4 heads of 4 features; weights drawn as PyTorch draws them.
//! let layer = MultiHead::<6, 16, 4>::new(&mut SmallRng::seed_from_u64(42));
//! let x = SMatrix::<f32, 6, 16>::from_fn(|t, f| ((t * 16 + f) as f32).cos());
//! let (y, weights) = layer.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft));
//! assert_eq!(y.shape(), (6, 16));
//! assert!((weights.average().row(3).sum() - 1.0).abs() < 1e-6);
//! ```
//!
//! ## Conventions
//!
//! - Tokens are rows: a sequence is `SMatrix<T, SEQ, DIM>` (PyTorch `(seq, dim)`).
//! - `f32` is the main scalar; `f64` works through the whole API ([`Float`]).
//! - Scale is `1/√d_k` by default; an explicit scale is used exactly.
//! - Masks name their meaning ([`Mask`]): [`Mask::attend_where`] (`true` = may attend),
//!   [`Mask::block_where`] (`true` = masked out), [`Mask::key_is_padding`], [`Mask::additive`],
//!   [`Mask::causal`] with a named [`Alignment`], [`Mask::sliding_window`].
//! - A query whose keys are all masked gets a zero attention output and a zero weight row (the
//!   layer then outputs `out_proj.bias`, as PyTorch does); masked keys' values never reach the
//!   output, even NaN ones. Non-finite values in *unmasked* inputs propagate as in PyTorch.
//!
//! ## Features
//!
//! | feature | default | effect |
//! |---|---|---|
//! | `std` | yes | heap entry points (`*_boxed`), [`reference`](mod@reference), math from `std` |
//! | `safetensors` | yes | [`MultiHead::from_safetensors`] and friends (implies `std`) |
//! | `libm` | no | math from `libm`, for `#![no_std]` (`default-features = false, features = ["libm"]`) |
//! | `force-scalar` | no | always use the portable scalar kernel |
//!
//! One of `std` and `libm` must be enabled.
//!
//! ## Memory
//!
//! [`MultiHead::forward`] needs [`MultiHead::SCRATCH_BYTES`] of stack (Q, K and V, `SEQ·DIM`
//! scalars each, and `8·(DIM + 2)` scalars of kernel state, each part padded to a multiple of
//! 64 bytes) plus its `SEQ·DIM` output.
//! [`MultiHead::attend`] takes the [`Scratch`] and the output from the caller instead, and
//! [`MultiHead::forward_boxed`] / [`MultiHead::new_boxed`] put everything on the heap
//! (`SEQ = 1024, DIM = 512` runs in a 2 MiB thread).

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(any(feature = "std", feature = "libm")))]
compile_error!(
    "static-attention needs a math backend: enable the `std` feature (default) or, for no_std, \
     `libm`"
);

mod float;
pub mod init;
pub mod io;
pub mod kernels;
mod layer;
mod linear;
pub mod mask;
mod multi_head;
#[cfg(feature = "std")]
pub mod reference;
mod scratch;
mod sdpa;
mod self_attention;

pub use float::Float;
pub use init::Bias;
pub use linear::Linear;
pub use mask::{Alignment, Mask, NoAdditive, Pattern};
pub use multi_head::MultiHead;
pub use scratch::{AttentionWeights, Scratch};
pub use sdpa::{
    default_scale, scaled_dot_product_attention, scaled_dot_product_attention_into,
    scaled_dot_product_attention_with_weights, scaled_dot_product_attention_with_weights_into,
};
pub use self_attention::SelfAttention;

/// The nalgebra this API is built on (0.35): its `SMatrix` is the type of every input and
/// output. Use these re-exports (or depend on the same version) so the types match.
pub use nalgebra;
pub use nalgebra::{SMatrix, SVector};
/// The rand this API is built on (0.10): `new(&mut rng)` takes any `rand::Rng`. The
/// `from_seed(u64)` constructors need no generator of your own.
pub use rand;

/// Heap helpers (with `std`): allocate large matrices directly on the heap, never passing
/// them through the stack.
#[cfg(feature = "std")]
pub mod heap {
    use std::boxed::Box;

    use crate::{Float, SMatrix};

    /// A zeroed `R × C` matrix allocated directly on the heap.
    ///
    /// ```
    /// let x = static_attention::heap::zeros::<f32, 1024, 512>(); // 2 MiB, never on the stack
    /// assert_eq!(x[(1023, 511)], 0.0);
    /// ```
    #[must_use]
    pub fn zeros<T: Float, const R: usize, const C: usize>() -> Box<SMatrix<T, R, C>> {
        bytemuck::zeroed_box()
    }
}

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
