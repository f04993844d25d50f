//! The methods the layer types share, written once.
//!
//! Every layer type has the same constructors (`new`, `from_seed`, `zeros`, `from_parts`,
//! `to_weights`, the projections) and the same decode pair; [`MultiHead`](crate::MultiHead)
//! and [`SelfAttention`](crate::SelfAttention) also have the same forward, weights and
//! cross-attention methods (a one-head layer's weights are one matrix, not one per head). The
//! macros here write those methods for each type from one text, so the grid of entry points
//! has no holes and one name means one thing everywhere; each method is a few lines over the
//! type's own parts (`SHAPE_OK`, how each projection is drawn) or over the core
//! ([`crate::heads::Layer`]). A type's own doc comments given to a macro (its examples) follow
//! the shared text of the method they are given for.
//!
//! The macros name the invoking type's generic parameters (`SEQ`, `DIM`, `T`) as they are
//! spelled in every layer type.

/// The constructors of a layer type: `new` (with the type's own docs), `from_seed`, `zeros`,
/// `from_parts`, `to_weights` and one accessor per projection. `projections` lists them in the
/// struct's field order as `accessor: field: type = draw` with the accessor's docs before it,
/// `draw` being how `new(rng, bias)` draws the projection (the names given after `new:`);
/// `to_weights` names the type with `W2` weights. `extra: field = value` names a field that is
/// not a projection (kept by `to_weights`) and its value in `new` and `from_parts`.
macro_rules! build_api {
    (
        impl[$($generics:tt)*] $Layer:ident<$($param:ident),*>,
        new: |$rng:ident, $bias:ident| {$(#[$new:meta])*},
        from_seed: $seed_bias:ident $seed_bias_words:literal,
        to_weights: $Converted:ty,
        projections: {$(
            $(#[$doc:meta])*
            $accessor:ident: $field:ident: $Proj:ty = $draw:expr
        ),* $(,)?}
        $(, extra: $efield:ident = $edefault:expr)? $(,)?
    ) => {
        /// Build: constructors, conversion and the projections.
        impl<$($generics)*> $Layer<$($param),*> {
            $(#[$new])*
            #[must_use]
            pub fn new<R: $crate::rand::Rng + ?Sized>($rng: &mut R, $bias: $crate::Bias) -> Self {
                let () = Self::SHAPE_OK;
                // Each projection drawn straight into place, in field order (the order
                // `reset_parameters` draws them in).
                Self { $($field: $draw,)* $($efield: $edefault)? }
            }

            #[doc = concat!("[`", stringify!($Layer), "::new`] ", $seed_bias_words, ", from a \
                seed, with the crate's portable generator \
                ([`init::SeedRng`](crate::init::SeedRng)): the same seed gives the same \
                weights on every platform, and the caller needs no `rand`.")]
            #[must_use]
            pub fn from_seed(seed: u64) -> Self {
                use $crate::rand::SeedableRng;
                let mut rng = $crate::init::SeedRng::seed_from_u64(seed);
                Self::new(&mut rng, $crate::Bias::$seed_bias)
            }

            #[doc = concat!("All-zero weights and no biases, to load parameters into; built \
                in place, it needs [`", stringify!($Layer), "::PARAM_BYTES`] of stack and no \
                more ([`crate::heap::zeroed`] allocates one on the heap).")]
            #[must_use]
            pub fn zeros() -> Self {
                let () = Self::SHAPE_OK;
                bytemuck::Zeroable::zeroed()
            }

            /// Builds the layer from its projections (a `const fn`, so a `static` layer works
            /// and keeps its weights in read-only memory).
            #[must_use]
            pub const fn from_parts($($field: $Proj),*) -> Self {
                let () = Self::SHAPE_OK;
                Self { $($field,)* $($efield: $edefault)? }
            }

            /// The same layer with its weights stored as `W2`, each rounded to it (see
            /// [`crate::weight`]): `to_weights::<f16>()` halves the parameters' size. By value.
            #[must_use]
            pub fn to_weights<W2: $crate::Weight<T>>(&self) -> $Converted {
                $Layer { $($field: self.$field.to_weights(),)* $($efield: self.$efield.clone())? }
            }

            $(
                $(#[$doc])*
                #[must_use]
                pub const fn $accessor(&self) -> &$Proj {
                    &self.$field
                }
            )*
        }
    };
}
pub(crate) use build_api;

/// The forward, weights and cross-attention groups of a layer without position encodings:
/// `forward`, `forward_into`, `forward_batch_into`, `forward_with_weights`, `cross_attention`,
/// `cross_attention_with_weights` and `attend`.
///
/// `weights: Name[before][after]` spells the attention weights of `SQ` queries over `SKV` keys
/// as `Name<before.., SQ, SKV, after..>`; `weights_are` describes them in words.
macro_rules! self_attention_api {
    (
        impl[$($generics:tt)*] $Layer:ident<$($param:ident),*>,
        weights: $Weights:ident[$($before:ident),*][$($after:ident),*],
        weights_are: $weights_are:literal,
        forward_into: {$(#[$forward_into:meta])*},
        forward_batch_into: {$(#[$batch:meta])*},
        attend: {$(#[$attend:meta])*} $(,)?
    ) => {
        /// Forward: self-attention, by value, into caller-owned buffers, and over a batch.
        impl<$($generics)*> $Layer<$($param),*> {
            #[doc = concat!("Self-attention over `SEQ` tokens: `x` is `SEQ × DIM`, so is the \
                result.\n\nThe working memory ([`", stringify!($Layer), "::SCRATCH_BYTES`]) \
                lives on the stack and the result is moved out once: see the [crate \
                docs](crate#memory) for the stack this needs, and [`", stringify!($Layer),
                "::forward_into`] for large shapes.")]
            #[must_use]
            pub fn forward<A: $crate::mask::Additive<T, SEQ, SEQ>>(
                &self,
                x: &$crate::SMatrix<T, SEQ, DIM>,
                mask: &$crate::Mask<'_, SEQ, SEQ, A>,
            ) -> $crate::SMatrix<T, SEQ, DIM> {
                self.cross_attention(x, x, mask)
            }

            #[doc = concat!("[`", stringify!($Layer), "::forward`] into a caller-owned \
                output with caller-owned scratch: nothing big on the stack, nothing \
                allocated.")]
            $(#[$forward_into])*
            pub fn forward_into<A: $crate::mask::Additive<T, SEQ, SEQ>>(
                &self,
                x: &$crate::SMatrix<T, SEQ, DIM>,
                mask: &$crate::Mask<'_, SEQ, SEQ, A>,
                scratch: &mut $crate::Scratch<SEQ, SEQ, DIM, T>,
                out: &mut $crate::SMatrix<T, SEQ, DIM>,
            ) {
                self.run(x, (x, x), mask, scratch.buffers(), out.as_mut_slice(), None);
            }

            #[doc = concat!("Self-attention over a batch of sequences (PyTorch's batch \
                dimension), `xs[b] → outs[b]`, one after the other through one caller-owned \
                [`Scratch`](crate::Scratch): nothing is allocated. `masks` holds one mask for \
                the whole batch or one per sequence (per-sequence key padding, say); \
                `weights`, when given, takes each sequence's ", $weights_are, ".\n\n\
                # Errors\n\n[`BatchError`](crate::BatchError) if `outs` (or `weights`) is not \
                as long as `xs`, or `masks` is neither 1 nor as long; nothing is written then.")]
            $(#[$batch])*
            pub fn forward_batch_into<A: $crate::mask::Additive<T, SEQ, SEQ>>(
                &self,
                xs: &[$crate::SMatrix<T, SEQ, DIM>],
                masks: &[$crate::Mask<'_, SEQ, SEQ, A>],
                scratch: &mut $crate::Scratch<SEQ, SEQ, DIM, T>,
                outs: &mut [$crate::SMatrix<T, SEQ, DIM>],
                mut weights: Option<&mut [$Weights<$($before,)* SEQ, SEQ $(, $after)*>]>,
            ) -> Result<(), $crate::BatchError> {
                let weights_len = weights.as_deref().map(<[_]>::len);
                $crate::batch::check(xs.len(), outs.len(), masks.len(), weights_len)?;
                for (b, (x, out)) in xs.iter().zip(outs.iter_mut()).enumerate() {
                    let w = weights.as_deref_mut().map(|w| w[b].as_mut_slice());
                    let mask = $crate::batch::mask_of(masks, b);
                    self.run(x, (x, x), mask, scratch.buffers(), out.as_mut_slice(), w);
                }
                Ok(())
            }

            /// `SQ` queries attend to `SKV` keys and values, the result into `out` (and the
            /// weights into `weights`), on the selected kernel.
            fn run<const SQ: usize, const SKV: usize, A: $crate::mask::Additive<T, SQ, SKV>>(
                &self,
                query: &$crate::SMatrix<T, SQ, DIM>,
                kv: (&$crate::SMatrix<T, SKV, DIM>, &$crate::SMatrix<T, SKV, DIM>),
                mask: &$crate::Mask<'_, SQ, SKV, A>,
                buf: $crate::heads::Buffers<'_, T>,
                out: &mut [T],
                weights: Option<&mut [T]>,
            ) {
                let kt = $crate::kernels::current::<T>();
                let none = &$crate::positions::NoPositions;
                let done = (self.layer()).forward(kt, query, kv, mask, none, buf, out, weights);
                debug_assert!(done.is_ok(), "no positions, no position error");
            }
        }

        /// Weights and cross-attention: the attention weights on request, other key and
        /// value sequences, and the general caller-owned form.
        impl<$($generics)*> $Layer<$($param),*> {
            #[doc = concat!("Self-attention that also returns the ", $weights_are, ", by \
                value: see the [crate docs](crate#memory) for the stack this needs, and [`",
                stringify!($Layer), "::attend`] for caller-owned buffers.")]
            #[must_use]
            pub fn forward_with_weights<A: $crate::mask::Additive<T, SEQ, SEQ>>(
                &self,
                x: &$crate::SMatrix<T, SEQ, DIM>,
                mask: &$crate::Mask<'_, SEQ, SEQ, A>,
            ) -> (
                $crate::SMatrix<T, SEQ, DIM>,
                $Weights<$($before,)* SEQ, SEQ $(, $after)*>,
            ) {
                self.cross_attention_with_weights(x, x, mask)
            }

            /// Cross-attention: the `SEQ` tokens of `x` query `SKV` tokens of `memory` (an
            /// encoder output, say), which give the keys and values. The result is
            /// `SEQ × DIM`, by value.
            #[must_use]
            pub fn cross_attention<const SKV: usize, A: $crate::mask::Additive<T, SEQ, SKV>>(
                &self,
                x: &$crate::SMatrix<T, SEQ, DIM>,
                memory: &$crate::SMatrix<T, SKV, DIM>,
                mask: &$crate::Mask<'_, SEQ, SKV, A>,
            ) -> $crate::SMatrix<T, SEQ, DIM> {
                let () = Self::SHAPE_OK;
                $crate::heads::local_buffers!(buf, T, SEQ, SKV, DIM, DIM);
                let mut out: $crate::SMatrix<T, SEQ, DIM> = $crate::zero_matrix();
                self.run(x, (memory, memory), mask, buf, out.as_mut_slice(), None);
                out
            }

            #[doc = concat!("[`", stringify!($Layer), "::cross_attention`] that also returns \
                the ", $weights_are, ", by value.")]
            #[must_use]
            pub fn cross_attention_with_weights<
                const SKV: usize,
                A: $crate::mask::Additive<T, SEQ, SKV>,
            >(
                &self,
                x: &$crate::SMatrix<T, SEQ, DIM>,
                memory: &$crate::SMatrix<T, SKV, DIM>,
                mask: &$crate::Mask<'_, SEQ, SKV, A>,
            ) -> (
                $crate::SMatrix<T, SEQ, DIM>,
                $Weights<$($before,)* SEQ, SKV $(, $after)*>,
            ) {
                let () = Self::SHAPE_OK;
                $crate::heads::local_buffers!(buf, T, SEQ, SKV, DIM, DIM);
                // Both parts all zeros, built in place.
                let mut result: (
                    $crate::SMatrix<T, SEQ, DIM>,
                    $Weights<$($before,)* SEQ, SKV $(, $after)*>,
                ) = bytemuck::Zeroable::zeroed();
                let (out, weights) = (&mut result.0, &mut result.1);
                let w = Some(weights.as_mut_slice());
                self.run(x, (memory, memory), mask, buf, out.as_mut_slice(), w);
                result
            }

            #[doc = concat!("The general caller-owned entry point: `SQ` queries from `query` \
                attend to `SKV` keys from `key` and values from `value` (PyTorch \
                `forward(query, key, value)`), writing the `SQ × DIM` result into `out` and, \
                when `weights` is given, the ", $weights_are, "; otherwise no `SQ × SKV` \
                matrix exists. Self-attention is `attend(&x, &x, &x, …)`, cross-attention \
                `attend(&x, &memory, &memory, …)`.\n\nNothing is allocated and nothing big is \
                on the stack (see the [crate docs](crate#memory)). Any `SQ` and `SKV` work \
                with the same weights, `0` included (an empty key set gives the output bias \
                for every query).")]
            $(#[$attend])*
            #[allow(clippy::too_many_arguments)]
            pub fn attend<
                const SQ: usize,
                const SKV: usize,
                A: $crate::mask::Additive<T, SQ, SKV>,
            >(
                &self,
                query: &$crate::SMatrix<T, SQ, DIM>,
                key: &$crate::SMatrix<T, SKV, DIM>,
                value: &$crate::SMatrix<T, SKV, DIM>,
                mask: &$crate::Mask<'_, SQ, SKV, A>,
                scratch: &mut $crate::Scratch<SQ, SKV, DIM, T>,
                out: &mut $crate::SMatrix<T, SQ, DIM>,
                weights: Option<&mut $Weights<$($before,)* SQ, SKV $(, $after)*>>,
            ) {
                let w = weights.map(|w| w.as_mut_slice());
                let buf = scratch.buffers();
                self.run(query, (key, value), mask, buf, out.as_mut_slice(), w);
            }
        }
    };
}
pub(crate) use self_attention_api;

/// The decode group of a layer type: `decode` and `decode_into` through a
/// [`KvCache`](crate::KvCache) of `kv_dim` features, with the type's `check_positions` and
/// `layer`. `q_dim` and `kv_dim` name the query and key/value widths of its projections.
macro_rules! decode_api {
    (
        impl[$($generics:tt)*] $Layer:ident<$($param:ident),*>,
        q_dim: $q_dim:ident,
        kv_dim: $kv_dim:ident,
        heads: $heads:tt,
        decode: {$(#[$decode:meta])*} $(,)?
    ) => {
        /// Decode: token by token through a [`KvCache`](crate::KvCache).
        impl<$($generics)*> $Layer<$($param),*> {
            #[doc = concat!("Appends `SQ` tokens (a prompt, or one token) to `cache` at its \
                next positions and returns their outputs, each token attending to every \
                cached position up to its own (the last `CAP` of them with a \
                [`KvCache::sliding_window`](crate::KvCache::sliding_window)): prefill and then \
                token-by-token decoding give the rows of one causal forward \
                ([`Mask::causal`](crate::Mask::causal)) over the whole sequence. By value; see \
                [`", stringify!($Layer), "::decode_into`] for caller-owned scratch.\n\n\
                # Errors\n\n[`CacheError::Full`](crate::CacheError::Full) if the tokens do not \
                fit, [`CacheError::Position`](crate::CacheError::Position) if their positions \
                are past a rotary table; the cache is unchanged then.")]
            $(#[$decode])*
            pub fn decode<const SQ: usize, const CAP: usize, P>(
                &self,
                x: &$crate::SMatrix<T, SQ, DIM>,
                cache: &mut $crate::KvCache<CAP, $kv_dim, T>,
                positions: &P,
            ) -> Result<$crate::SMatrix<T, SQ, DIM>, $crate::CacheError>
            where
                P: $crate::positions::PositionEncoding<T>,
            {
                const { Self::check_positions::<P>() };
                $crate::heads::local_buffers!(buf, T, SQ, SQ, $q_dim, $kv_dim);
                let mut out: $crate::SMatrix<T, SQ, DIM> = $crate::zero_matrix();
                let kt = $crate::kernels::current::<T>();
                (self.layer()).decode(kt, x, cache, positions, buf, out.as_mut_slice(), None)?;
                Ok(out)
            }

            #[doc = concat!("[`", stringify!($Layer), "::decode`] with caller-owned scratch \
                and output: nothing big on the stack.\n\n# Errors\n\nAs [`",
                stringify!($Layer), "::decode`]; the cache and `out` are unchanged then.")]
            pub fn decode_into<const SQ: usize, const CAP: usize, P>(
                &self,
                x: &$crate::SMatrix<T, SQ, DIM>,
                cache: &mut $crate::KvCache<CAP, $kv_dim, T>,
                positions: &P,
                scratch: &mut $crate::Scratch<SQ, SQ, $q_dim, T, $kv_dim>,
                out: &mut $crate::SMatrix<T, SQ, DIM>,
            ) -> Result<(), $crate::CacheError>
            where
                P: $crate::positions::PositionEncoding<T>,
            {
                const { Self::check_positions::<P>() };
                let kt = $crate::kernels::current::<T>();
                let buf = scratch.buffers();
                (self.layer()).decode(kt, x, cache, positions, buf, out.as_mut_slice(), None)
            }

            #[doc = concat!("[`", stringify!($Layer), "::decode`] that also returns each \
                query head's attention weights: one `SQ × CAP` matrix per head, column `r` \
                for the cache's row `r` ([`KvCache::keys`](crate::KvCache::keys) says which \
                position a row holds) as the token saw it, 0 for rows it did not attend to. \
                With a [`KvCache::sliding_window`](crate::KvCache::sliding_window) ring and \
                `SQ > 1`, a later token of the same call may overwrite a row an earlier one \
                attended to. By value.\n\n# Errors\n\nAs [`", stringify!($Layer),
                "::decode`]; the cache is unchanged then.")]
            #[allow(clippy::type_complexity)]
            pub fn decode_with_weights<const SQ: usize, const CAP: usize, P>(
                &self,
                x: &$crate::SMatrix<T, SQ, DIM>,
                cache: &mut $crate::KvCache<CAP, $kv_dim, T>,
                positions: &P,
            ) -> Result<
                (
                    $crate::SMatrix<T, SQ, DIM>,
                    $crate::AttentionWeights<SQ, CAP, $heads, T>,
                ),
                $crate::CacheError,
            >
            where
                P: $crate::positions::PositionEncoding<T>,
            {
                const { Self::check_positions::<P>() };
                $crate::heads::local_buffers!(buf, T, SQ, SQ, $q_dim, $kv_dim);
                let mut result: (
                    $crate::SMatrix<T, SQ, DIM>,
                    $crate::AttentionWeights<SQ, CAP, $heads, T>,
                ) = bytemuck::Zeroable::zeroed();
                let (out, weights) = (&mut result.0, &mut result.1);
                let w = Some(weights.as_mut_slice());
                let kt = $crate::kernels::current::<T>();
                (self.layer()).decode(kt, x, cache, positions, buf, out.as_mut_slice(), w)?;
                Ok(result)
            }
        }
    };
}
pub(crate) use decode_api;

/// The shape rules the layer types share, checked when their `SHAPE_OK` is evaluated (at build
/// time); each panic message is the build error a user sees.
pub(crate) mod rules {
    /// `SEQ ≥ 1`.
    pub const fn tokens(seq: usize) {
        assert!(
            seq > 0,
            "SEQ must be at least 1: an attention layer needs at least one token"
        );
    }

    /// `DIM ≥ 1`.
    pub const fn features(dim: usize) {
        assert!(
            dim > 0,
            "DIM must be at least 1: tokens need at least one feature"
        );
    }

    /// `HEADS ≥ 1`.
    pub const fn heads(heads: usize) {
        assert!(
            heads > 0,
            "HEADS must be at least 1: attention needs at least one head"
        );
    }
}
