//! `state_dict` files in the safetensors format (what `safetensors.torch.save_file` writes).

#![allow(clippy::result_large_err)] // see the note in `io/mod.rs`

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};

use super::{Checked, CheckedLinear, LoadError, Shape, Text, Values};
use crate::{Float, GroupedQuery, MultiHead, SelfAttention, Weight, WeightKind};

/// Metadata key holding the head count (PyTorch does not store it in the `state_dict`; this
/// crate writes it, and checks it when present).
pub const NUM_HEADS_KEY: &str = "num_heads";

/// Length of the little-endian `u64` header size at the start of a safetensors file.
const HEADER_LEN_BYTES: usize = 8;

fn malformed(reason: impl core::fmt::Display) -> LoadError {
    LoadError::Malformed {
        reason: Text::new(&[&format!("{reason}")]),
    }
}

/// A parsed file: its header and the byte range of the tensor data.
struct File<'a> {
    meta: Metadata,
    data: &'a [u8],
}

impl<'a> File<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, LoadError> {
        let (header, meta) = SafeTensors::read_metadata(bytes).map_err(malformed)?;
        let data = HEADER_LEN_BYTES
            .checked_add(header)
            .and_then(|start| bytes.get(start..))
            .ok_or_else(|| malformed("header length exceeds the file"))?;
        Ok(File { meta, data })
    }

    /// The tensor `prefix + name` if present, checked against `expected` and against the
    /// dtypes `accept` allows.
    fn tensor<T: Float>(
        &self,
        prefix: &str,
        name: &str,
        expected: &[usize],
        dim: usize,
        accept: Accept,
    ) -> Result<Option<Values<'a, T>>, LoadError> {
        let full = format!("{prefix}{name}");
        let Some(info) = self.meta.info(&full) else {
            return Ok(None);
        };
        let name = Text::new(&[&full]);
        if info.shape != expected {
            return Err(LoadError::WrongShape {
                name,
                expected: Shape::new(expected),
                found: Shape::new(&info.shape),
                dim,
            });
        }
        let (start, end) = info.data_offsets;
        let bytes = self
            .data
            .get(start..end)
            .ok_or_else(|| malformed(format!("{full}: data offsets out of range")))?;
        let n: usize = expected.iter().product();
        let (values, width) = match info.dtype {
            Dtype::F32 if accept.float => (Values::F32Le(bytes), 4),
            Dtype::F64 if accept.float => (Values::F64Le(bytes), 8),
            Dtype::F16 if accept.half == Some(WeightKind::F16) => (Values::F16Le(bytes), 2),
            Dtype::BF16 if accept.half == Some(WeightKind::Bf16) => (Values::Bf16Le(bytes), 2),
            Dtype::I8 if accept.int8 => (Values::I8(bytes), 1),
            other => {
                return Err(LoadError::WrongDtype {
                    name,
                    found: Text::new(&[&format!("{other:?}")]),
                    expected: accept.names(),
                });
            }
        };
        if bytes.len() != n * width {
            return Err(malformed(format!(
                "{full}: data length does not match its shape"
            )));
        }
        Ok(Some(values))
    }

    fn required<T: Float>(
        &self,
        prefix: &str,
        name: &str,
        expected: &[usize],
        dim: usize,
        accept: Accept,
    ) -> Result<Values<'a, T>, LoadError> {
        self.tensor(prefix, name, expected, dim, accept)?
            .ok_or_else(|| LoadError::MissingTensor {
                name: Text::new(&[prefix, name]),
                expected: Shape::new(expected),
            })
    }

    fn has(&self, prefix: &str, name: &str) -> bool {
        self.meta.info(&format!("{prefix}{name}")).is_some()
    }

    /// An `nn.Linear(din, dout)` module named `module` (`prefix + module + ".weight"`, required,
    /// and `".bias"`, optional).
    pub(crate) fn linear<T: Float>(
        &self,
        prefix: &str,
        module: &str,
        din: usize,
        dout: usize,
        dim: usize,
        kind: WeightKind,
    ) -> Result<CheckedLinear<'a, T>, LoadError> {
        let full = format!("{prefix}{module}");
        Ok(CheckedLinear {
            weight: self.required(&full, ".weight", &[dout, din], dim, Accept::weights(kind))?,
            weight_start: 0,
            bias: self.tensor(&full, ".bias", &[dout], dim, Accept::biases(kind))?,
            bias_start: 0,
            scale: self.scales(&full, ".weight_scale", dout, dim, kind)?,
            scale_start: 0,
        })
    }

    /// For `i8` weights (`kind`), the per-feature scales `prefix + name` (`[dout]`, `F32` or
    /// `F64`, required, each finite and not negative); `None` for other weights.
    fn scales<T: Float>(
        &self,
        prefix: &str,
        name: &str,
        dout: usize,
        dim: usize,
        kind: WeightKind,
    ) -> Result<Option<Values<'a, T>>, LoadError> {
        if kind != WeightKind::I8 {
            return Ok(None);
        }
        let values = self.required(
            prefix,
            name,
            &[dout],
            dim,
            Accept::biases(WeightKind::Native),
        )?;
        let mut one = [T::ZERO];
        for n in 0..dout {
            values.copy_to(n, &mut one);
            if !(one[0].is_finite_() && one[0] >= T::ZERO) {
                return Err(LoadError::BadValue {
                    name: Text::new(&[prefix, name]),
                    reason: "a scale of i8 weights must be finite and not negative",
                });
            }
        }
        Ok(Some(values))
    }
}

/// The dtypes a tensor may have: `F32`/`F64` (`float`) and the one half type (`half`).
/// Weights must be in the layer's storage type (`F32`/`F64` for `f32`/`f64` storage, either
/// converting exactly as before; `F16` or `BF16` for half storage); biases, which layers keep
/// in `T`, may also be `F32`/`F64`.
#[derive(Clone, Copy)]
pub(crate) struct Accept {
    float: bool,
    half: Option<WeightKind>,
    int8: bool,
}

impl Accept {
    fn weights(kind: WeightKind) -> Self {
        match kind {
            WeightKind::Native => Self {
                float: true,
                half: None,
                int8: false,
            },
            WeightKind::I8 => Self {
                float: false,
                half: None,
                int8: true,
            },
            half => Self {
                float: false,
                half: Some(half),
                int8: false,
            },
        }
    }

    fn biases(kind: WeightKind) -> Self {
        Self {
            float: true,
            half: matches!(kind, WeightKind::F16 | WeightKind::Bf16).then_some(kind),
            int8: false,
        }
    }

    fn names(self) -> &'static str {
        if self.int8 {
            return "I8 (the layer stores i8 weights)";
        }
        match (self.float, self.half) {
            (true, None) => "F32 or F64",
            (true, Some(WeightKind::F16)) => "F32, F64 or F16",
            (true, Some(_)) => "F32, F64 or BF16",
            (false, Some(WeightKind::F16)) => "F16 (the layer stores f16 weights)",
            (false, _) => "BF16 (the layer stores bf16 weights)",
        }
    }
}

/// The loading pair every layer type has, over the type's own `check_file` (finds and checks
/// every tensor, writing nothing) and `write_checked` (copies them in, cannot fail):
/// `from_safetensors`, by value, with the docs given, and `load_safetensors`, in place.
macro_rules! loaders {
    (
        impl[$($generics:tt)*] $Layer:ident<$($param:ident),*>,
        from_safetensors: {$(#[$from:meta])*} $(,)?
    ) => {
        /// Loading: from safetensors bytes, by value or in place.
        impl<$($generics)*> $Layer<$($param),*> {
            $(#[$from])*
            pub fn from_safetensors(bytes: &[u8], prefix: &str) -> Result<Self, LoadError> {
                let mut layer = Self::zeros();
                layer.load_safetensors(bytes, prefix)?;
                Ok(layer)
            }

            #[doc = concat!("[`", stringify!($Layer), "::from_safetensors`] into an existing \
                layer, in place. Everything is checked before anything is written: on error \
                the layer is unchanged.\n\n# Errors\n\nAs [`", stringify!($Layer),
                "::from_safetensors`].")]
            pub fn load_safetensors(
                &mut self,
                bytes: &[u8],
                prefix: &str,
            ) -> Result<(), LoadError> {
                let file = File::parse(bytes)?;
                let checked = self.check_file(&file, prefix)?;
                self.write_checked(&checked);
                Ok(())
            }
        }
    };
}

/// A tensor to write: its name (without the prefix), shape, dtype and little-endian bytes.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: Vec<u8>,
}

/// Values in `T`'s dtype (`F32` or `F64`): biases, and the weights of layers storing `T`.
fn floats<T: Float>(name: &str, shape: Vec<usize>, values: &[T]) -> Tensor {
    Tensor {
        name: name.into(),
        shape,
        dtype: if T::BYTES == 4 {
            Dtype::F32
        } else {
            Dtype::F64
        },
        bytes: if T::BYTES == 4 {
            values
                .iter()
                .flat_map(|&x| (x.to_f64() as f32).to_le_bytes())
                .collect()
        } else {
            values
                .iter()
                .flat_map(|&x| x.to_f64().to_le_bytes())
                .collect()
        },
    }
}

/// Weights in the storage type `W`'s dtype (each value already is a `W`, so exactly; for
/// `i8` storage the values are the stored integers).
fn weights<T: Float, W: Weight<T>>(name: &str, shape: Vec<usize>, values: &[T]) -> Tensor {
    let half = |shape: Vec<usize>, dtype: Dtype, bits: &dyn Fn(f32) -> u16| Tensor {
        name: name.into(),
        shape,
        dtype,
        bytes: values
            .iter()
            .flat_map(|&x| bits(x.to_f64() as f32).to_le_bytes())
            .collect(),
    };
    match W::KIND {
        WeightKind::Native => floats(name, shape, values),
        WeightKind::F16 => half(shape, Dtype::F16, &|x| half::f16::from_f32(x).to_bits()),
        WeightKind::Bf16 => half(shape, Dtype::BF16, &|x| half::bf16::from_f32(x).to_bits()),
        // The stored integers (`row_major` gives them for `i8` storage).
        WeightKind::I8 => Tensor {
            name: name.into(),
            shape,
            dtype: Dtype::I8,
            bytes: values
                .iter()
                .map(|&x| (x.to_f64() as i8).cast_unsigned())
                .collect(),
        },
    }
}

/// Serialises `tensors` with `prefix` before every name, with one metadata entry (more than
/// one would make the bytes vary: the header's metadata is a hash map).
fn serialize(
    prefix: &str,
    tensors: &[Tensor],
    metadata: Option<(&str, String)>,
) -> Result<Vec<u8>, SaveError> {
    let views = tensors.iter().filter_map(|t| {
        // Shapes and lengths agree by construction, so the view always builds.
        TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
            .ok()
            .map(|view| (format!("{prefix}{}", t.name), view))
    });
    let metadata = metadata.map(|(k, v)| [(k.to_owned(), v)].into_iter().collect());
    safetensors::serialize(views, metadata).map_err(|e| SaveError {
        reason: Text::new(&[&format!("{e}")]),
    })
}

loaders! {
    impl[const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>]
        MultiHead<SEQ, DIM, HEADS, T, W>,
    from_safetensors: {
        /// Reads an `nn.MultiheadAttention` `state_dict` from safetensors bytes. `prefix` is
        /// prepended to every tensor name (`""` for a bare module, `"encoder.layers.0.self_attn."`
        /// for a layer inside a bigger model). `F32` and `F64` tensors load into either scalar
        /// type.
        ///
        /// The layer is returned by value (about `2 · PARAM_BYTES` of stack); for large shapes load
        /// into a layer on the heap with [`MultiHead::load_safetensors`].
        ///
        /// # Errors
        ///
        /// A [`LoadError`] naming the tensor and what was expected and found: a missing tensor, a
        /// wrong shape (a `DIM` that does not fit the file), a wrong dtype, a `num_heads` in the
        /// file's metadata that differs from `HEADS`, only one of `in_proj_bias` and
        /// `out_proj.bias`, `bias_k`/`bias_v` (unsupported), or bytes that are not a valid
        /// safetensors file.
    },
}

/// Saving: the layer as safetensors bytes (and the checks loading runs).
impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Finds and checks every tensor, without writing anything.
    fn check_file<'a>(&self, file: &File<'a>, prefix: &str) -> Result<Checked<'a, T>, LoadError> {
        if let Some(meta) = file.meta.metadata()
            && let Some(heads) = meta.get(NUM_HEADS_KEY)
        {
            let found: usize = heads.trim().parse().map_err(|_| {
                malformed(format!(
                    "metadata {NUM_HEADS_KEY} = {heads:?} is not a number"
                ))
            })?;
            if found != HEADS {
                return Err(LoadError::WrongHeads {
                    expected: HEADS,
                    found,
                });
            }
        }
        for name in ["bias_k", "bias_v"] {
            if file.has(prefix, name) {
                return Err(LoadError::Unsupported {
                    name: Text::new(&[prefix, name]),
                    reason: "add_bias_kv=True is not supported by MultiHead",
                });
            }
        }
        let dd = DIM * DIM;
        let (wa, ba) = (Accept::weights(W::KIND), Accept::biases(W::KIND));
        let packed = file.tensor::<T>(prefix, "in_proj_weight", &[3 * DIM, DIM], DIM, wa)?;
        let separate = ["q_proj_weight", "k_proj_weight", "v_proj_weight"];
        let (q, k, v) = match packed {
            Some(p) => {
                if let Some(name) = separate.iter().find(|n| file.has(prefix, n)) {
                    return Err(LoadError::Unsupported {
                        name: Text::new(&[prefix, name]),
                        reason: "both in_proj_weight and separate projection weights are present",
                    });
                }
                ((p, 0), (p, dd), (p, 2 * dd))
            }
            None if separate.iter().any(|n| file.has(prefix, n)) => (
                (file.required(prefix, separate[0], &[DIM, DIM], DIM, wa)?, 0),
                (file.required(prefix, separate[1], &[DIM, DIM], DIM, wa)?, 0),
                (file.required(prefix, separate[2], &[DIM, DIM], DIM, wa)?, 0),
            ),
            None => {
                return Err(LoadError::MissingTensor {
                    name: Text::new(&[prefix, "in_proj_weight"]),
                    expected: Shape::new(&[3 * DIM, DIM]),
                });
            }
        };
        let in_bias = file.tensor(prefix, "in_proj_bias", &[3 * DIM], DIM, ba)?;
        let out_w = file.required(prefix, "out_proj.weight", &[DIM, DIM], DIM, wa)?;
        let out_b = file.tensor(prefix, "out_proj.bias", &[DIM], DIM, ba)?;
        super::check_bias_pair(prefix, in_bias.is_some(), out_b.is_some(), DIM)?;
        // `i8` weights: their scales beside them (`in_proj_weight_scale`, `[3·DIM]`, or one per
        // separate projection weight, and `out_proj.weight_scale`).
        let in_scales: [(Option<Values<'a, T>>, usize); 3] = if file.has(prefix, "in_proj_weight") {
            let s = file.scales(prefix, "in_proj_weight_scale", 3 * DIM, DIM, W::KIND)?;
            [(s, 0), (s, DIM), (s, 2 * DIM)]
        } else {
            [
                (
                    file.scales(prefix, "q_proj_weight_scale", DIM, DIM, W::KIND)?,
                    0,
                ),
                (
                    file.scales(prefix, "k_proj_weight_scale", DIM, DIM, W::KIND)?,
                    0,
                ),
                (
                    file.scales(prefix, "v_proj_weight_scale", DIM, DIM, W::KIND)?,
                    0,
                ),
            ]
        };
        let out_scale = file.scales(prefix, "out_proj.weight_scale", DIM, DIM, W::KIND)?;
        let mut checked = Self::checked_from_parts([q, k, v], in_bias, out_w, out_b);
        for (c, (scale, start)) in checked.iter_mut().zip(in_scales) {
            (c.scale, c.scale_start) = (scale, start);
        }
        checked[3].scale = out_scale;
        Ok(checked)
    }

    /// Writes the layer as an `nn.MultiheadAttention` `state_dict` in safetensors format, in
    /// the packed form (`in_proj_weight`, `in_proj_bias`, `out_proj.weight`, `out_proj.bias`),
    /// with `prefix` before every name, in `T`'s dtype, and `num_heads` in the metadata. The
    /// bytes are deterministic: the same layer always gives the same file.
    /// `safetensors.torch.load_file` reads it back into PyTorch.
    ///
    /// Loading the file here gives the same layer bit for bit (signalling NaNs come back quiet)
    /// when its projections all have biases or none does, which is every layer PyTorch can
    /// express. A layer built with [`MultiHead::from_parts`] from a mix is saved with biases,
    /// zeros standing in for the missing ones.
    ///
    /// # Errors
    ///
    /// [`SaveError`] if the safetensors header would exceed the format's 100 MB limit (only
    /// possible with an absurdly long `prefix`).
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>, SaveError> {
        let (q, k, v, o) = (self.q_proj(), self.k_proj(), self.v_proj(), self.out_proj());
        let has_bias = [q, k, v, o].iter().any(|l| l.has_bias());
        let cat = |parts: &[&[T]]| -> Vec<T> { parts.concat() };
        let mut tensors = std::vec![weights::<T, W>(
            "in_proj_weight",
            std::vec![3 * DIM, DIM],
            &cat(&[&row_major(q), &row_major(k), &row_major(v)]),
        )];
        if W::KIND == WeightKind::I8 {
            tensors.push(floats(
                "in_proj_weight_scale",
                std::vec![3 * DIM],
                &cat(&[q.scale_values(), k.scale_values(), v.scale_values()]),
            ));
        }
        if has_bias {
            tensors.push(floats(
                "in_proj_bias",
                std::vec![3 * DIM],
                &cat(&[
                    q.bias_or_zero().as_slice(),
                    k.bias_or_zero().as_slice(),
                    v.bias_or_zero().as_slice(),
                ]),
            ));
        }
        tensors.push(weights::<T, W>(
            "out_proj.weight",
            std::vec![DIM, DIM],
            &row_major(o),
        ));
        if W::KIND == WeightKind::I8 {
            tensors.push(floats(
                "out_proj.weight_scale",
                std::vec![DIM],
                o.scale_values(),
            ));
        }
        if has_bias {
            tensors.push(floats(
                "out_proj.bias",
                std::vec![DIM],
                o.bias_or_zero().as_slice(),
            ));
        }
        serialize(prefix, &tensors, Some((NUM_HEADS_KEY, format!("{HEADS}"))))
    }
}

loaders! {
    impl[const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>] SelfAttention<SEQ, DIM, T, W>,
    from_safetensors: {
        /// Reads a head's `q_proj`, `k_proj` and `v_proj` `nn.Linear(DIM, DIM)` modules from
        /// safetensors bytes (`prefix` + `q_proj.weight`, optional `q_proj.bias`, and so on; the
        /// names Hugging Face attention modules use). `F32` and `F64` tensors load into either
        /// scalar type; other tensors in the file are ignored.
        ///
        /// Returned by value (about `2 · PARAM_BYTES` of stack); see
        /// [`SelfAttention::load_safetensors`] for a head on the heap.
        ///
        /// # Errors
        ///
        /// A [`LoadError`] naming the tensor: missing weight, wrong shape or dtype, or bytes that
        /// are not a valid safetensors file.
    },
}

/// Saving: the layer as safetensors bytes (and the checks loading runs).
impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    fn check_file<'a>(
        &self,
        file: &File<'a>,
        prefix: &str,
    ) -> Result<[CheckedLinear<'a, T>; 3], LoadError> {
        Ok([
            file.linear(prefix, "q_proj", DIM, DIM, DIM, W::KIND)?,
            file.linear(prefix, "k_proj", DIM, DIM, DIM, W::KIND)?,
            file.linear(prefix, "v_proj", DIM, DIM, DIM, W::KIND)?,
        ])
    }

    /// Writes the head as `q_proj`, `k_proj`, `v_proj` (`.weight`, and `.bias` for the
    /// projections that have one), with `prefix` before every name, in `T`'s dtype.
    /// [`SelfAttention::from_safetensors`] reads it back bit for bit.
    ///
    /// # Errors
    ///
    /// [`SaveError`] if the header would exceed the format's limit (an absurd `prefix`).
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>, SaveError> {
        let mut tensors = Vec::new();
        for (name, l) in [
            ("q_proj", &self.q),
            ("k_proj", &self.k),
            ("v_proj", &self.v),
        ] {
            push_linear(&mut tensors, name, l);
        }
        serialize(prefix, &tensors, None)
    }
}

loaders! {
    impl[const DIM: usize, const HEADS: usize, const KV_HEADS: usize, const Q_DIM: usize,
        const KV_DIM: usize, T: Float, W: Weight<T>]
        GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>,
    from_safetensors: {
        /// Reads a Hugging Face attention module (`LlamaAttention`, `MistralAttention`,
        /// `Qwen2Attention`, …) from safetensors bytes: `prefix` + `q_proj.weight` `[Q_DIM, DIM]`,
        /// `k_proj.weight` and `v_proj.weight` `[KV_DIM, DIM]`, `o_proj.weight` `[DIM, Q_DIM]`,
        /// each with an optional `.bias`. `prefix` is `""` for a bare module or, say,
        /// `"model.layers.0.self_attn."` for a whole model's file; other tensors are ignored. `F32`
        /// and `F64` tensors load into either scalar type.
        ///
        /// ```
        /// use static_attention::GroupedQuery;
        ///
        /// let layer = GroupedQuery::<16, 4, 2, 16, 8>::from_seed(1);
        /// let bytes = layer.to_safetensors("model.layers.0.self_attn.")?;
        /// let back = GroupedQuery::<16, 4, 2, 16, 8>::from_safetensors(&bytes, "model.layers.0.self_attn.")?;
        /// assert_eq!(back, layer);
        /// // The same file read as a layer with one kv head:
        /// let err = GroupedQuery::<16, 4, 1, 16, 4>::from_safetensors(&bytes, "model.layers.0.self_attn.")
        ///     .unwrap_err();
        /// assert_eq!(
        ///     err.to_string(),
        ///     "model.layers.0.self_attn.k_proj.weight has 8 rows (the file's kv heads times their \
        ///      width: 2 kv heads if they are 4 wide like the layer's, or as many heads of \
        ///      another width as the file's head count says), but the layer needs KV_HEADS · \
        ///      HEAD_DIM = 1 · 4 = 4 rows"
        /// );
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        ///
        /// # Errors
        ///
        /// A [`LoadError`] naming the tensor: a missing weight, a key or value projection with
        /// another number of kv heads ([`LoadError::WrongKvHeads`]), another wrong shape or dtype,
        /// or bytes that are not a valid safetensors file.
    },
}

/// Saving: the layer as safetensors bytes (and the checks loading runs).
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>
{
    fn check_file<'a>(
        &self,
        file: &File<'a>,
        prefix: &str,
    ) -> Result<CheckedGroupedQuery<'a, T>, LoadError> {
        check_grouped::<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>(self.variant(), file, prefix)
    }

    fn write_checked(&mut self, c: &CheckedGroupedQuery<'_, T>) {
        c.linears[0].write(&mut self.q);
        c.linears[1].write(&mut self.k);
        c.linears[2].write(&mut self.v);
        c.linears[3].write(&mut self.o);
        let (qn, kn) = self.qk_norm_weights_mut();
        let plain = crate::variant::Extras::<HEADS, Q_DIM, KV_DIM, T>::plain();
        *qn = plain.q_norm;
        *kn = plain.k_norm;
        if let Some(v) = &c.q_norm {
            v.copy_to(0, &mut qn[..v.len()]);
        }
        if let Some(v) = &c.k_norm {
            v.copy_to(0, &mut kn[..v.len()]);
        }
        let sinks = self.sinks_mut();
        *sinks = plain.sinks;
        if let Some(v) = &c.sinks {
            v.copy_to(0, sinks);
        }
    }

    /// Loads a whole layer as `config` describes it (from a model's `config.json`, see
    /// [`crate::config::LayerConfig`]): checks the configuration's shape against this type
    /// ([`GroupedQuery::check_config`]), reads the projections (with the biases the
    /// configuration says exist, all required: a file without them is an error, and so is a
    /// bias the configuration does not have), the QK-norm weights (`q_norm.weight`,
    /// `k_norm.weight`) and sinks (`sinks`) the variant needs, and makes the layer run the
    /// configuration's [`Variant`](crate::variant::Variant). Everything is checked before
    /// anything is written: on error the layer is unchanged. The rotary table is the
    /// caller's, built from `config.rope`.
    ///
    /// ```
    /// use static_attention::config::LayerConfig;
    /// use static_attention::variant::Variant;
    /// use static_attention::GroupedQuery;
    ///
    /// type Layer = GroupedQuery<16, 4, 2, 16, 8>;
    /// let json = r#"{"model_type": "gpt_oss", "hidden_size": 16, "num_attention_heads": 4,
    ///     "num_key_value_heads": 2, "head_dim": 4, "attention_bias": true,
    ///     "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}"#;
    /// let config = LayerConfig::from_json(json, 0)?;
    /// use static_attention::rand::SeedableRng;
    /// let mut rng = static_attention::init::SeedRng::seed_from_u64(1);
    /// let mut saved = Layer::new(&mut rng, static_attention::Bias::Present);
    /// saved.set_variant(Variant::PLAIN.with_sinks())?;
    /// saved.sinks_mut().copy_from_slice(&[0.1, 0.2, 0.3, 0.4]);
    /// let bytes = saved.to_safetensors("")?;
    ///
    /// let mut layer = Layer::zeros();
    /// // gpt-oss has an o_proj bias, this file has none: an error, and nothing changed.
    /// assert!(layer.load_pretrained(&config, &bytes, "").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`LoadError::Config`] if the configuration's shape is not this type's or its variant
    /// is invalid; otherwise as [`GroupedQuery::load_safetensors`], a missing bias, norm or
    /// sink being a [`LoadError::MissingTensor`] and an unexpected one a
    /// [`LoadError::Unsupported`].
    #[cfg(feature = "config")]
    pub fn load_pretrained(
        &mut self,
        config: &crate::config::LayerConfig,
        bytes: &[u8],
        prefix: &str,
    ) -> Result<(), LoadError> {
        Self::check_config(config).map_err(LoadError::Config)?;
        let variant = config.variant;
        variant.check().map_err(|e| {
            LoadError::Config(crate::config::ConfigError::Invalid {
                field: "variant",
                reason: Text::new(&[&format!("{e}")]),
            })
        })?;
        let file = File::parse(bytes)?;
        let checked =
            check_grouped::<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>(variant, &file, prefix)?;
        let full = |module: &str| format!("{prefix}{module}.bias");
        for (module, present, expected) in [
            ("q_proj", checked.linears[0].bias.is_some(), config.qkv_bias),
            ("k_proj", checked.linears[1].bias.is_some(), config.qkv_bias),
            ("v_proj", checked.linears[2].bias.is_some(), config.qkv_bias),
            ("o_proj", checked.linears[3].bias.is_some(), config.o_bias),
        ] {
            let len = if module == "q_proj" {
                Q_DIM
            } else if module == "o_proj" {
                DIM
            } else {
                KV_DIM
            };
            if expected && !present {
                return Err(LoadError::MissingTensor {
                    name: Text::new(&[&full(module)]),
                    expected: Shape::new(&[len]),
                });
            }
            if present && !expected {
                return Err(LoadError::Unsupported {
                    name: Text::new(&[&full(module)]),
                    reason: "the configuration says this projection has no bias",
                });
            }
        }
        self.write_checked(&checked);
        self.extra.set(&variant);
        Ok(())
    }
}

/// A grouped-query layer's tensors, found and checked.
struct CheckedGroupedQuery<'a, T> {
    linears: [CheckedLinear<'a, T>; 4],
    q_norm: Option<Values<'a, T>>,
    k_norm: Option<Values<'a, T>>,
    sinks: Option<Values<'a, T>>,
}

/// Finds and checks a grouped-query layer's tensors for `variant`: the projections, and the
/// QK-norm weights and sinks it needs (required) or does not (absent).
fn check_grouped<
    'a,
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
>(
    variant: crate::variant::Variant,
    file: &File<'a>,
    prefix: &str,
) -> Result<CheckedGroupedQuery<'a, T>, LoadError> {
    use crate::variant::QkNorm;
    if let Some(meta) = file.meta.metadata()
        && let Some(heads) = meta.get(NUM_HEADS_KEY)
    {
        let found: usize = heads.trim().parse().map_err(|_| {
            malformed(format!(
                "metadata {NUM_HEADS_KEY} = {heads:?} is not a number"
            ))
        })?;
        if found != HEADS {
            return Err(LoadError::WrongHeads {
                expected: HEADS,
                found,
            });
        }
    }
    {
        let head_dim = Q_DIM / HEADS;
        // A key or value projection of another kv-head count says so in words.
        let kv = |module: &str| {
            file.linear(prefix, module, DIM, KV_DIM, DIM, W::KIND)
                .map_err(|e| match e {
                    LoadError::WrongShape { name, found, .. }
                        if found.rank() == 2
                            && found.dims()[1] == DIM
                            && name.as_str().ends_with(".weight") =>
                    {
                        LoadError::WrongKvHeads {
                            name,
                            expected: KV_HEADS,
                            found: found.dims()[0] / head_dim,
                            head_dim,
                            rows: found.dims()[0],
                        }
                    }
                    e => e,
                })
        };
        let linears = [
            file.linear(prefix, "q_proj", DIM, Q_DIM, DIM, W::KIND)?,
            kv("k_proj")?,
            kv("v_proj")?,
            file.linear(prefix, "o_proj", Q_DIM, DIM, DIM, W::KIND)?,
        ];
        let (qw, kw) = match variant.qk_norm {
            QkNorm::None => (0, 0),
            QkNorm::PerHead { .. } => (head_dim, head_dim),
            QkNorm::Full { .. } => (Q_DIM, KV_DIM),
        };
        let params = Accept::biases(WeightKind::Native);
        let part = |name: &'static str, len: usize| -> Result<_, LoadError> {
            if len == 0 {
                if file.has(prefix, name) {
                    return Err(LoadError::Unsupported {
                        name: Text::new(&[prefix, name]),
                        reason: "the layer's variant does not use this tensor (set it with \
                                 set_variant, or load with a config)",
                    });
                }
                return Ok(None);
            }
            file.required(prefix, name, &[len], DIM, params).map(Some)
        };
        Ok(CheckedGroupedQuery {
            linears,
            q_norm: part("q_norm.weight", qw)?,
            k_norm: part("k_norm.weight", kw)?,
            sinks: part("sinks", if variant.sinks { HEADS } else { 0 })?,
        })
    }
}

/// Saving: the layer as safetensors bytes.
impl<
    const DIM: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    T: Float,
    W: Weight<T>,
> GroupedQuery<DIM, HEADS, KV_HEADS, Q_DIM, KV_DIM, T, W>
{
    /// Writes the layer with Hugging Face's names (`q_proj.weight`, `k_proj.weight`,
    /// `v_proj.weight`, `o_proj.weight`, and `.bias` for the projections that have one), with
    /// `prefix` before every name, in `T`'s dtype: `load_state_dict` of the matching
    /// `transformers` module reads it. [`GroupedQuery::from_safetensors`] reads it back bit
    /// for bit.
    ///
    /// # Errors
    ///
    /// [`SaveError`] if the header would exceed the format's limit (an absurd `prefix`).
    pub fn to_safetensors(&self, prefix: &str) -> Result<Vec<u8>, SaveError> {
        let mut tensors = Vec::new();
        push_linear(&mut tensors, "q_proj", self.q_proj());
        push_linear(&mut tensors, "k_proj", self.k_proj());
        push_linear(&mut tensors, "v_proj", self.v_proj());
        push_linear(&mut tensors, "o_proj", self.out_proj());
        let variant = self.variant();
        let (qn, kn) = self.qk_norm_weights();
        let widths = match variant.qk_norm {
            crate::variant::QkNorm::None => None,
            crate::variant::QkNorm::PerHead { .. } => Some((Self::HEAD_DIM, Self::HEAD_DIM)),
            crate::variant::QkNorm::Full { .. } => Some((Q_DIM, KV_DIM)),
        };
        if let Some((qw, kw)) = widths {
            tensors.push(floats("q_norm.weight", vec![qw], &qn[..qw]));
            tensors.push(floats("k_norm.weight", vec![kw], &kn[..kw]));
        }
        if variant.sinks {
            tensors.push(floats("sinks", vec![HEADS], self.sinks()));
        }
        serialize(prefix, &tensors, Some((NUM_HEADS_KEY, format!("{HEADS}"))))
    }
}

/// Why a layer could not be written as safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveError {
    /// The serialiser's explanation.
    pub reason: Text,
}

impl core::fmt::Display for SaveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cannot write safetensors data: {}", self.reason)
    }
}

impl core::error::Error for SaveError {}

/// Appends an `nn.Linear`'s tensors: `name.weight` (`[OUT, IN]`, in the storage type's dtype)
/// and, if the map has a bias, `name.bias` (`[OUT]`, in `T`'s dtype).
fn push_linear<const IN: usize, const OUT: usize, T: Float, W: Weight<T>>(
    tensors: &mut Vec<Tensor>,
    name: &str,
    l: &crate::Linear<IN, OUT, T, W>,
) {
    let weight = row_major(l);
    tensors.push(weights::<T, W>(
        &format!("{name}.weight"),
        std::vec![OUT, IN],
        &weight,
    ));
    if W::KIND == WeightKind::I8 {
        tensors.push(floats(
            &format!("{name}.weight_scale"),
            std::vec![OUT],
            l.scale_values(),
        ));
    }
    if let Some(b) = l.bias() {
        tensors.push(floats(
            &format!("{name}.bias"),
            std::vec![OUT],
            b.as_slice(),
        ));
    }
}

/// A map's stored weight in PyTorch's row-major order (`weight[OUT][IN]`): the weights, or
/// for `i8` storage the integers (their scales are saved beside them).
fn row_major<const IN: usize, const OUT: usize, T: Float, W: Weight<T>>(
    l: &crate::Linear<IN, OUT, T, W>,
) -> Vec<T> {
    (0..OUT)
        .flat_map(|n| (0..IN).map(move |p| l.stored_value_at(n, p)))
        .collect()
}
