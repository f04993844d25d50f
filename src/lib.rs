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
//! use static_attention::{Alignment, Mask, MultiHead, SMatrix};
//!
//! // 6 tokens of 16 features, 4 heads of 4 features; weights drawn as PyTorch draws them.
//! let layer = MultiHead::<6, 16, 4>::from_seed(42);
//! let x = SMatrix::<f32, 6, 16>::from_fn(|t, f| ((t * 16 + f) as f32).cos());
//! let (y, weights) = layer.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft));
//! assert_eq!(y.shape(), (6, 16));
//! assert!((weights.average().row(3).sum() - 1.0).abs() < 1e-6);
//! ```
//!
//! ## Decoding
//!
//! [`GroupedQuery`] is the attention block of Llama, Mistral and Qwen2: `HEADS` query heads
//! sharing `KV_HEADS` key/value heads (SPEC rule 9), loaded from Hugging Face names. It and
//! [`MultiHead`] decode through a [`KvCache`]: [`GroupedQuery::decode`] appends a prompt or one
//! token at the cache's next positions and attends over what it holds, which gives the rows
//! of one causal forward over the whole sequence (rule 14). Positions come from
//! [`positions`]: RoPE tables in both pairings (rule 11), ALiBi slopes (rule 12, also a
//! [`Mask`] part computed in the kernels), the paper's sinusoidal encoding. A sliding window
//! of `W` keys (rule 13: query `i` sees `i − W < j ≤ i`) is a [`Mask::sliding_window`] for a
//! whole sequence and a [`KvCache::sliding_window`] ring of capacity `W` for decoding.
//!
//! ```
//! use static_attention::positions::{Rope, RopeStyle};
//! use static_attention::{GroupedQuery, KvCache, SMatrix};
//!
//! let layer = GroupedQuery::<32, 4, 1, 32, 8>::from_seed(3); // multi-query: one kv head
//! let rope = Rope::<8, 64>::new(10_000.0, RopeStyle::RotateHalf);
//! let mut cache = KvCache::<64, 8>::new();
//! let prompt = SMatrix::<f32, 3, 32>::repeat(0.25);
//! layer.decode(&prompt, &mut cache, &rope)?;
//! let next = layer.decode(&SMatrix::<f32, 1, 32>::repeat(0.5), &mut cache, &rope)?;
//! assert!(next.iter().all(|v| v.is_finite()) && cache.len() == 4);
//! # Ok::<(), static_attention::CacheError>(())
//! ```
//!
//! ## Conventions
//!
//! - Built on nalgebra 0.35 and rand 0.10, both re-exported ([`nalgebra`], [`rand`]); every
//!   type puts its shapes first and its scalar last, `f32` unless named.
//! - Tokens are rows: a sequence is `SMatrix<T, SEQ, DIM>` (PyTorch `(seq, dim)`).
//! - `f32` is the main scalar; `f64` works through the whole API ([`Float`]).
//! - Scale is `1/√d_k` by default; an explicit scale is used exactly.
//! - Masks name their meaning ([`Mask`]): [`Mask::attend_where`] (`true` = may attend),
//!   [`Mask::block_where`] (`true` = masked out), [`Mask::key_is_padding`], [`Mask::additive`],
//!   [`Mask::causal`] with a named [`Alignment`], [`Mask::sliding_window`]. Their parts
//!   combine: a key is used only when every part allows it.
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
//! | `rayon` | no | threads (implies `std`): `forward_batch_par` over a batch, `forward_par_into` over one sequence's projections, heads and query blocks |
//!
//! One of `std` and `libm` must be enabled.
//!
//! ## Kernels
//!
//! Every forward pass runs through the [`kernels`] layer: a register-blocked GEMM for the
//! projections, and a fused streaming attention (scores, a vectorised `exp`, online softmax
//! and `P·V` over blocks of queries × keys, skipping key blocks the causal or sliding-window
//! pattern hides). On x86-64 the best of AVX-512F, AVX2 + FMA and the portable scalar kernel
//! is chosen once per process at run time, with `std` or without, so the default target needs
//! no `-C target-cpu`; aarch64 gets NEON; other targets (a Cortex-M, say) the scalar kernel.
//! [`kernels::selected`] says which. The scalar kernel is the readable
//! reference the others are tested against; `force-scalar` pins it, and
//! [`kernels::with_kernel`] picks a kernel for one closure on one thread. Results agree across
//! kernels to within rounding (2e-6 for unit-scale inputs).
//!
//! Many sequences go through [`MultiHead::forward_batch_into`] (one scratch, no allocation),
//! and with the `rayon` feature over threads. Weights can be stored in half precision
//! ([`weight`]: `MultiHead<SEQ, DIM, HEADS, f32, f16>`), with `f32` arithmetic.
//!
//! ## Memory
//!
//! Nothing allocates unless its name ends in `_boxed` (or it is a `to_safetensors`/loading
//! convenience with `std`). Every big value has three homes to choose from:
//!
//! - **by value** (`forward`, `new`, `from_seed`, …): simple, and the stack must hold it (see
//!   below);
//! - **caller-owned** (`*_into`, `attend`, `load_*` into a layer you own): the call needs only
//!   its own frames, whatever the shape; a [`Scratch`], the output and the
//!   [`AttentionWeights`] can live in a `static`, a struct or a `Box`;
//! - **heap** (`*_boxed`, [`heap::zeros`], [`heap::zeros_array`]): allocated zeroed directly
//!   on the heap, never passing through the stack (`SEQ = 1024, DIM = 512, HEADS = 8` runs in
//!   a 2 MiB thread).
//!
//! ## Stack
//!
//! What a call needs, with its inputs elsewhere, is the big values it holds plus its own frames.
//! `SCRATCH_BYTES`, `OUTPUT_BYTES`, `WEIGHTS_BYTES` and `PARAM_BYTES` are the constants of
//! [`MultiHead`] and [`SelfAttention`] (and [`Scratch::BYTES`], [`AttentionWeights::BYTES`]);
//! for [`scaled_dot_product_attention`], `OUT` is `SQ·DV` scalars and `W` is `SQ·SKV`. The
//! `×2` terms are values built in the function and moved once into the caller's slot; the
//! fallible constructors add the `Result` the caller unwraps.
//!
//! | entry point | holds (`opt-level ≥ 1`) |
//! |---|---|
//! | `forward`, `cross_attention` | `SCRATCH_BYTES + 2·OUTPUT_BYTES` |
//! | `forward_with_weights`, `cross_attention_with_weights` | `SCRATCH_BYTES + 2·(OUTPUT_BYTES + WEIGHTS_BYTES)` |
//! | `scaled_dot_product_attention` | `2·OUT + WORK` |
//! | `scaled_dot_product_attention_into` | `WORK`: `TILE_QUERIES·(DV + 2·KEY_BLOCK)` scalars ([`kernels::TILE_QUERIES`], [`kernels::KEY_BLOCK`]) |
//! | `scaled_dot_product_attention_with_weights` | `2·(OUT + W)` |
//! | `Linear::forward` | `2·S·OUT` scalars |
//! | `new`, `from_seed`, `new_without_bias` | `2·PARAM_BYTES` (`PARAM_BYTES` + one projection in release) |
//! | `zeros` | `PARAM_BYTES` |
//! | `from_pytorch`, `from_safetensors` (unwrapped) | `3·PARAM_BYTES` |
//! | `grouped_query_attention` | `2·HQ·OUT + WORK` (`_into`: `WORK`) |
//! | `MultiHead::decode`, `GroupedQuery::forward`, `GroupedQuery::decode` | `DecoderScratch::BYTES + 3·OUTPUT_BYTES` (the result passes through a `Result`) |
//! | `GroupedQuery::from_seed` / `from_safetensors` (unwrapped) | `2·PARAM_BYTES` / `3·PARAM_BYTES` |
//! | `KvCache::new`, `Rope::new` | `KvCache::BYTES`, `2·Rope::BYTES` |
//! | `Scratch::new`, `AttentionWeights::zeros` | `Scratch::BYTES`, `AttentionWeights::BYTES` |
//! | `AttentionWeights::average` | `3·SQ·SKV` scalars |
//! | other `*_into`, `attend`, `*_boxed`, `load_*`, `to_safetensors`, `decode_into` | nothing big |
//!
//! **Frames.** Add 16 KiB for the call's own frames and a thread's start-up (measured: 8 KiB,
//! in release and in this crate's test profile, `opt-level = 1`).
//!
//! **Unoptimised builds** (`opt-level = 0`, cargo's default `dev` profile, so a plain
//! `cargo test` of *your* crate) keep up to three more temporary copies of each value a
//! function builds, because nothing removes them, and the SIMD kernels' frames grow to about
//! 256 KiB (every inlined micro-tile keeps its own slots; measured: 264 KiB with the thread's
//! start-up): budget `4 ×` the "holds" column plus 320 KiB.
//! For example `MultiHead::<128, 256, 8>::forward` needs 732 KiB in release and 1496 KiB
//! unoptimised, `forward_with_weights` 1756 KiB and 4188 KiB. Either call the caller-owned
//! or heap forms there, or let cargo optimise this crate in your dev profile:
//!
//! ```toml
//! [profile.dev.package.static-attention]
//! opt-level = 1
//! ```
//!
//! `tests/stack.rs` runs every entry point in a thread whose stack is exactly its figure plus
//! 24 KiB, in release, in the test profile and unoptimised, and prints the measured needs:
//! `cargo test --release --test stack -- --ignored --nocapture measure`.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(any(feature = "std", feature = "libm")))]
compile_error!(
    "static-attention needs a math backend: enable the `std` feature (default) or, for no_std, \
     `libm`"
);

mod batch;
mod cache;
mod decoder;
mod float;
pub mod init;
pub mod io;
pub mod kernels;
mod layer;
mod linear;
pub mod mask;
mod multi_head;
#[cfg(feature = "rayon")]
mod parallel;
pub mod positions;
#[cfg(feature = "std")]
pub mod reference;
mod scratch;
mod sdpa;
mod self_attention;
pub mod weight;

pub use batch::BatchError;
pub use cache::{CacheError, KvCache};
pub use decoder::{DecoderScratch, GroupedQuery};
pub use float::Float;
/// Half-precision storage types for weights (from the `half` crate): see [`weight`].
pub use half::{bf16, f16};
pub use init::Bias;
pub use linear::Linear;
pub use mask::{Alibi, Alignment, Mask, NoAdditive, Pattern};
pub use multi_head::MultiHead;
pub use scratch::{AttentionWeights, Scratch};
pub use sdpa::{
    default_scale, grouped_query_attention, grouped_query_attention_into,
    scaled_dot_product_attention, scaled_dot_product_attention_into,
    scaled_dot_product_attention_with_weights, scaled_dot_product_attention_with_weights_into,
};
pub use self_attention::SelfAttention;
pub use weight::{Weight, WeightKind};

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

    /// `N` zeroed `R × C` matrices allocated directly on the heap: the arrays of heads that
    /// [`grouped_query_attention_into`](crate::grouped_query_attention_into) reads and writes.
    ///
    /// ```
    /// // 8 query heads of 1024 × 64 (2 MiB), never on the stack.
    /// let heads = static_attention::heap::zeros_array::<f32, 1024, 64, 8>();
    /// assert_eq!(heads[7][(1023, 63)], 0.0);
    /// ```
    #[must_use]
    pub fn zeros_array<T: Float, const R: usize, const C: usize, const N: usize>()
    -> Box<[SMatrix<T, R, C>; N]> {
        bytemuck::zeroed_box()
    }
}

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
