//! # static-attention
//!
//! Transformer attention with every shape a const generic: scaled dot-product attention,
//! single-head and multi-head self-attention with PyTorch's parameters, cross-attention and
//! masks, grouped-query decoder attention with a KV cache and rotary positions, on nalgebra's
//! stack-allocated [`SMatrix`]. Inference only.
//!
//! - **Checked at compile time.** `MultiHead<SEQ, DIM, HEADS>` takes `SMatrix<T, SEQ, DIM>`; a
//!   shape mismatch is a type error, and a `HEADS` that does not divide `DIM` (or a zero
//!   parameter) stops `cargo build` with "DIM must be divisible by HEADS: each head gets
//!   DIM / HEADS features".
//! - **Heap-free.** No forward pass allocates. Weights live inline in the types (a `static`
//!   layer keeps them in read-only memory), working memory is a typed [`Scratch`] a caller may
//!   own, and the crate builds for `#![no_std]` targets without `alloc`.
//! - **Streaming.** The default path is fused (flash-style): scores, online softmax and the
//!   weighted sum of values in one pass over the keys; no `SEQ × SEQ` matrix exists unless the
//!   caller asks for the attention weights.
//! - **PyTorch semantics.** Parameters, layout (`y = x Wᵀ + b`), scaling, masks and the
//!   fully-masked-row rule follow `nn.MultiheadAttention` and `scaled_dot_product_attention`
//!   (every rule is written down in [`semantics`]); [`io`] loads and saves PyTorch
//!   `state_dict`s (safetensors, or plain slices with no allocation), and the tests compare
//!   against outputs PyTorch and Hugging Face `transformers` produced.
//!
//! ## The math
//!
//! ```text
//! Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V          (softmax over keys, per row)
//! head_h             = Attention(X W_hQᵀ + b, X W_hKᵀ + b, X W_hVᵀ + b)
//! MultiHead(X)       = Concat(head_1, …, head_H) W_Oᵀ + b_O,   d_k = DIM / HEADS
//! ```
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
//! ## Where to start reading
//!
//! How attention works, from the equations to the fast path, in three steps:
//!
//! 1. [`reference`](mod@reference) (`src/reference.rs`, with `std`): the paper's equations
//!    line by line, every intermediate matrix built; the oracle the tests hold everything
//!    else to.
//! 2. The scalar kernel (`src/kernels/scalar.rs`): the same attention streamed over the keys
//!    with the online softmax (`m' = max(m, s)`, `l' = c·l + p`, `acc' = c·acc + p·v`), no
//!    `SEQ × SEQ` matrix.
//! 3. The SIMD tile (`src/kernels/vector/tiles.rs`): the scalar kernel's recurrence over a
//!    tile of queries held in vector lanes, blocks of keys at a time, written once over the
//!    `Simd` instruction-set trait.
//!
//! The layers themselves are thin: [`MultiHead`], [`SelfAttention`] and [`GroupedQuery`] all
//! run one core (`src/heads.rs`: project, attend each head, concatenate, project out).
//!
//! ## The API
//!
//! The three layer types share one set of methods, grouped the same way in their docs:
//!
//! | group | methods |
//! |---|---|
//! | build | `new(rng, Bias)`, `from_seed(u64)`, `zeros()`, `const fn from_parts(…)`, `reset_parameters`, `to_weights`, the projections (`q_proj`, …) |
//! | run | `forward` (by value), `forward_into` (caller-owned [`Scratch`] and output), `forward_batch_into` |
//! | weights | `forward_with_weights`, `cross_attention`, `cross_attention_with_weights`, `attend` (caller-owned, any query/key/value, weights optional) |
//! | decode | `decode`, `decode_into` (through a [`KvCache`]) |
//! | load | `from_safetensors`, `load_safetensors`, `to_safetensors`; slices through [`io::PyTorchParams`] |
//!
//! ([`GroupedQuery`] takes a `positions` argument besides, and has no by-value
//! cross-attention: `attend` is its cross-attention.) Large values go on the heap through one
//! helper, [`heap::zeroed`]; with the `rayon` feature, `Parallel` spreads a [`MultiHead`] or
//! [`GroupedQuery`] forward pass, or a batch, over threads.
//!
//! ## Decoding
//!
//! [`GroupedQuery`] is the attention block of Llama, Mistral and Qwen2: `HEADS` query heads
//! sharing `KV_HEADS` key/value heads, loaded from Hugging Face names. It and [`MultiHead`]
//! decode through a [`KvCache`]: `decode` appends a prompt or one token at the cache's next
//! positions and attends over what it holds, which gives the rows of one causal forward over
//! the whole sequence. Positions come from [`positions`]: RoPE tables in both pairings, ALiBi
//! slopes (also a [`Mask`] part computed in the kernels), the paper's sinusoidal encoding. A
//! sliding window of `W` keys (query `i` sees `i − W < j ≤ i`) is a [`Mask::sliding_window`]
//! for a whole sequence and a [`KvCache::sliding_window`] ring of capacity `W` for decoding.
//!
//! ```
//! use static_attention::positions::{Rope, RopeStyle};
//! use static_attention::{GroupedQuery, KvCache, SMatrix};
//!
//! let layer = GroupedQuery::<32, 4, 1, 32, 8>::from_seed(3); // multi-query: one kv head
//! let rope = Rope::<8, 64>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
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
//! - `f32` is the main scalar; `f64` works through the whole API ([`Float`]). Weights can be
//!   stored in half precision ([`weight`]: `MultiHead<SEQ, DIM, HEADS, f32, f16>`).
//! - Masks name their meaning ([`Mask`]); a query whose keys are all masked gets a zero output
//!   row (the layer then outputs `out_proj.bias`, as PyTorch does). [`semantics`] states every
//!   rule: layouts, masks, fully masked rows, non-finite values, scale, tolerances.
//!
//! ## Features
//!
//! | feature | default | effect |
//! |---|---|---|
//! | `std` | yes | [`heap`], [`reference`](mod@reference), math from `std` |
//! | `safetensors` | yes | `from_safetensors`, `load_safetensors`, `to_safetensors` (implies `std`) |
//! | `libm` | no | math from `libm`, for `#![no_std]` (`default-features = false, features = ["libm"]`) |
//! | `force-scalar` | no | always use the portable scalar kernel |
//! | `rayon` | no | threads (implies `std`): `Parallel` over one sequence's projections, heads and query blocks, or over a batch |
//!
//! One of `std` and `libm` must be enabled.
//!
//! ## Kernels
//!
//! Every forward pass runs through the [`kernels`] layer: a register-blocked GEMM for the
//! projections, and a fused streaming attention (scores, a vectorised `exp`, online softmax
//! and `P·V` over blocks of queries × keys, skipping key blocks the causal or sliding-window
//! pattern hides). On x86-64 the best of AVX-512F, AVX2 + FMA and the portable scalar kernel
//! is chosen at run time, with `std` or without, so the default target needs no
//! `-C target-cpu`; aarch64 gets NEON; other targets (a Cortex-M, say) the scalar kernel.
//! Each call looks the choice up once ([`kernels::selected`]) and passes the kernel's table of
//! functions down. `force-scalar` pins the scalar kernel, and [`kernels::with_kernel`] picks a
//! kernel for one closure on one thread. Results agree across kernels to within rounding
//! (2e-6 for unit-scale inputs).
//!
//! ## Memory
//!
//! Nothing allocates but [`heap::zeroed`], `Parallel`'s calls and the safetensors
//! conveniences. Every big value has three homes to choose from:
//!
//! - **by value** (`forward`, `new`, `from_seed`, …): simple, and the stack must hold it (see
//!   below);
//! - **caller-owned** (`forward_into`, `attend`, `decode_into`, `load_*` into a layer you
//!   own): the call needs only its own frames, whatever the shape; a [`Scratch`], the output
//!   and the [`AttentionWeights`] can live in a `static`, a struct or a `Box`;
//! - **heap** ([`heap::zeroed`] for any of those values, layers, caches and matrices
//!   included): allocated zeroed directly on the heap, never passing through the stack, then
//!   filled in place (`reset_parameters`, `load_safetensors`, [`io::PyTorchParams::load_into`],
//!   `forward_into`). `SEQ = 1024, DIM = 512, HEADS = 8` runs in a 2 MiB thread.
//!
//! ## Stack
//!
//! What a call needs, with its inputs elsewhere, is the big values it holds plus its own frames.
//! `SCRATCH_BYTES`, `OUTPUT_BYTES`, `WEIGHTS_BYTES` and `PARAM_BYTES` are the constants of
//! [`MultiHead`] and [`SelfAttention`] (and [`Scratch::BYTES`], [`AttentionWeights::BYTES`]);
//! for a [`GroupedQuery`] call over `S` tokens, `SCRATCH` is
//! `Scratch::<S, S, Q_DIM, T, KV_DIM>::BYTES`; for [`scaled_dot_product_attention`], `OUT` is
//! `SQ·DV` scalars and `W` is `SQ·SKV`. The `×2` terms are values built in the function and
//! moved once into the caller's slot; the fallible forms add the `Result` the caller unwraps.
//!
//! | entry point | holds (`opt-level ≥ 1`) |
//! |---|---|
//! | `forward`, `cross_attention` | `SCRATCH_BYTES + 2·OUTPUT_BYTES` |
//! | `forward_with_weights`, `cross_attention_with_weights` | `SCRATCH_BYTES + 2·(OUTPUT_BYTES + WEIGHTS_BYTES)` |
//! | `scaled_dot_product_attention` | `2·OUT + WORK` |
//! | `scaled_dot_product_attention_into` | `WORK`: `TILE_QUERIES·(DV + 2·KEY_BLOCK)` scalars ([`kernels::TILE_QUERIES`], [`kernels::KEY_BLOCK`]) |
//! | `scaled_dot_product_attention_with_weights` | `2·(OUT + W)` |
//! | `Linear::forward` | `2·S·OUT` scalars |
//! | `new`, `from_seed` | `2·PARAM_BYTES` (`PARAM_BYTES` + one projection in release) |
//! | `zeros` | `PARAM_BYTES` |
//! | `from_safetensors`, `try_from(&PyTorchParams)` (unwrapped) | `3·PARAM_BYTES` |
//! | `grouped_query_attention` | `2·HEADS·OUT + WORK` (`_into`: `WORK`) |
//! | `decode` (every layer type), `GroupedQuery::forward` | `SCRATCH + 3·OUTPUT_BYTES` (the result passes through a `Result`) |
//! | `GroupedQuery::forward_with_weights` | `SCRATCH + 3·(OUTPUT_BYTES + WEIGHTS_BYTES)` |
//! | `GroupedQuery::from_seed` / `from_safetensors` (unwrapped) | `2·PARAM_BYTES` / `3·PARAM_BYTES` |
//! | `KvCache::new`, `Rope::new` | `KvCache::BYTES`, `2·Rope::BYTES` |
//! | `Scratch::new`, `AttentionWeights::zeros` | `Scratch::BYTES`, `AttentionWeights::BYTES` |
//! | `AttentionWeights::average` | `3·SQ·SKV` scalars |
//! | `forward_into`, `attend`, `decode_into`, `forward_batch_into`, `load_*`, `reset_parameters`, `to_safetensors`, [`heap::zeroed`] | nothing big |
//!
//! **Frames.** Add 16 KiB for the call's own frames and a thread's start-up (measured: 8 KiB,
//! in release and in this crate's test profile, `opt-level = 1`).
//!
//! **Unoptimised builds** (`opt-level = 0`, cargo's default `dev` profile, so a plain
//! `cargo test` of *your* crate) keep up to three more temporary copies of each value a
//! function builds, because nothing removes them, and the SIMD kernels' frames grow (every
//! inlined micro-tile keeps its own slots: the attention kernel's frame is 252 KiB with AVX2
//! and 504 KiB with AVX-512): budget `4 ×` the "holds" column plus 640 KiB. Either call the
//! caller-owned or heap forms there, or let cargo optimise this crate in your dev profile:
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

// Bottom-up: the kernel layer (with the scalar and weight types it runs on) first, the core
// built on it, the layer types on the core, loading last.
pub mod weight;

pub mod kernels;

mod cache;
pub mod init;
pub mod mask;
pub mod positions;
mod scratch;
pub mod variant;

mod heads;
mod layer_api;

mod batch;
mod grouped_query;
mod linear;
mod multi_head;
#[cfg(feature = "rayon")]
mod parallel;
mod sdpa;
mod self_attention;

#[cfg(feature = "config")]
pub mod config;
pub mod io;
#[cfg(feature = "std")]
pub mod reference;
pub mod semantics;

pub use batch::BatchError;
pub use cache::{CacheError, KvCache, LayoutError};
pub use grouped_query::GroupedQuery;
/// Half-precision storage types for weights (from the `half` crate): see [`weight`].
pub use half::{bf16, f16};
pub use heads::default_scale;
pub use init::Bias;
pub use kernels::Float;
pub use linear::Linear;
pub use mask::{Alibi, Alignment, Mask, NoAdditive, Pattern};
pub use multi_head::MultiHead;
#[cfg(feature = "rayon")]
pub use parallel::Parallel;
pub use scratch::{AttentionWeights, Scratch};
pub use sdpa::{
    grouped_query_attention, grouped_query_attention_into, scaled_dot_product_attention,
    scaled_dot_product_attention_into, scaled_dot_product_attention_with_weights,
    scaled_dot_product_attention_with_weights_into,
};
pub use self_attention::SelfAttention;
pub use weight::{Weight, WeightKind};

/// The nalgebra this API is built on (0.35): its `SMatrix` is the type of every input and
/// output. Use these re-exports (or depend on the same version) so the types match.
pub use nalgebra;
pub use nalgebra::{SMatrix, SVector};
/// The rand this API is built on (0.10): `new(&mut rng, bias)` takes any `rand::Rng`. The
/// `from_seed(u64)` constructors need no generator of your own.
pub use rand;

/// A zero `R × C` matrix as a `const fn`, written so that it is built in place (nalgebra's
/// `zeros()` goes through a temporary that doubles its stack use).
#[inline(always)]
#[must_use]
pub(crate) const fn zero_matrix<T: Float, const R: usize, const C: usize>() -> SMatrix<T, R, C> {
    SMatrix::from_array_storage(nalgebra::ArrayStorage([[T::ZERO; R]; C]))
}

/// Heap allocation (with `std`) that never passes through the stack.
#[cfg(feature = "std")]
pub mod heap {
    use std::boxed::Box;

    /// A value that is valid all zeros, so it can be allocated zeroed: the layers (zero
    /// weights, no biases), [`crate::Scratch`], [`crate::AttentionWeights`], an empty
    /// [`crate::KvCache`], a [`crate::positions::Rope`] to build in place
    /// ([`crate::positions::Rope::rebuild`]), [`crate::Linear`], matrices of [`crate::Float`]s
    /// and arrays of any of them. (Every type `bytemuck` knows to be zeroable is one.)
    pub trait Zeroed: bytemuck::Zeroable {}

    impl<X: bytemuck::Zeroable> Zeroed for X {}

    /// A value of `X`, all zeros, allocated directly on the heap: it never passes through
    /// the stack, whatever its size. The crate's one heap helper: a large layer, scratch,
    /// cache, weights matrix or input goes on the heap through it and is then filled in place.
    ///
    /// ```
    /// use static_attention::{Bias, MultiHead, SMatrix, Scratch, heap, Mask};
    /// use static_attention::init::SeedRng;
    /// use static_attention::rand::SeedableRng;
    ///
    /// // SEQ = 1024, DIM = 512, HEADS = 8: a 4 MiB layer, 2 MiB inputs and outputs, a 6 MiB
    /// // scratch, none of them on the stack.
    /// let mut layer: Box<MultiHead<1024, 512, 8>> = heap::zeroed();
    /// layer.reset_parameters(&mut SeedRng::seed_from_u64(7), Bias::Present);
    /// let x: Box<SMatrix<f32, 1024, 512>> = heap::zeroed();
    /// let mut scratch: Box<Scratch<1024, 1024, 512>> = heap::zeroed();
    /// let mut out: Box<SMatrix<f32, 1024, 512>> = heap::zeroed();
    /// layer.forward_into(&x, &Mask::none(), &mut scratch, &mut out);
    /// // Arrays of heads for `grouped_query_attention_into`:
    /// let heads: Box<[SMatrix<f32, 1024, 64>; 8]> = heap::zeroed();
    /// assert_eq!(heads[7][(1023, 63)], 0.0);
    /// ```
    #[must_use]
    pub fn zeroed<X: Zeroed>() -> Box<X> {
        bytemuck::zeroed_box()
    }
}

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The guide's examples, likewise.
#[cfg(doctest)]
#[doc = include_str!("../docs/GUIDE.md")]
struct GuideDoctests;
