//! Loading (and, with `safetensors`, saving) PyTorch `nn.MultiheadAttention` weights.
//!
//! PyTorch's parameter layout: `in_proj_weight` `[3·DIM, DIM]` holds `W_q`,
//! `W_k`, `W_v` stacked by rows; `in_proj_bias` `[3·DIM]`; `out_proj.weight` `[DIM, DIM]`;
//! `out_proj.bias` `[DIM]`; all row-major. Modules built with separate projection weights store
//! `q_proj_weight`, `k_proj_weight`, `v_proj_weight` (`[DIM, DIM]` each) instead of
//! `in_proj_weight`. `bias=False` modules have no bias tensors.
//!
//! Two ways in:
//! - [`PyTorchParams`] (and [`SelfAttentionParams`]) borrow plain slices in that layout: no
//!   file format, no allocation, `#![no_std]`-friendly (weights baked into flash, received
//!   over a wire, …). `MultiHead::try_from(&params)` builds a layer by value,
//!   [`PyTorchParams::load_into`] fills one in place (on the heap, or in a `static`).
//! - With the `safetensors` feature, `from_safetensors` (by value) and `load_safetensors` (in
//!   place) read a `state_dict` saved with `safetensors.torch.save_file`, optionally under a
//!   name prefix, into a [`MultiHead`], a [`SelfAttention`] or a [`crate::GroupedQuery`], and
//!   `to_safetensors` writes one back (the round trip is exact).
//!
//! Every check runs before anything is written: a failed load returns a [`LoadError`] and
//! leaves the layer exactly as it was. Nothing panics on bad input.

// `LoadError` keeps its names and messages inline so that loading needs no allocator (the
// slice path runs under `#![no_std]` without `alloc`); a few hundred bytes on the error path is
// the price, and it is paid only on failure.
#![allow(clippy::result_large_err)]

#[cfg(feature = "safetensors")]
mod safetensors;
#[cfg(feature = "safetensors")]
pub use self::safetensors::{NUM_HEADS_KEY, SaveError};

use core::fmt;

use crate::{Float, Linear, MultiHead, SelfAttention, Weight};

/// A short piece of text kept inline (no allocation), truncated with `…` past its capacity:
/// tensor names (with their prefix) and parser messages inside a [`LoadError`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Text {
    bytes: [u8; Text::CAPACITY],
    len: u8,
    truncated: bool,
}

impl Text {
    /// Bytes kept.
    pub const CAPACITY: usize = 160;

    /// Builds from pieces, concatenated.
    #[must_use]
    pub fn new(parts: &[&str]) -> Self {
        let mut t = Text {
            bytes: [0; Self::CAPACITY],
            len: 0,
            truncated: false,
        };
        for part in parts {
            t.push(part);
        }
        t
    }

    fn push(&mut self, s: &str) {
        for ch in s.chars() {
            let mut buf = [0; 4];
            let enc = ch.encode_utf8(&mut buf).as_bytes();
            let at = usize::from(self.len);
            if at + enc.len() > Self::CAPACITY {
                self.truncated = true;
                return;
            }
            self.bytes[at..at + enc.len()].copy_from_slice(enc);
            self.len += enc.len() as u8;
        }
    }

    /// The text (without the truncation mark).
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 characters are ever pushed, so this never fails.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("…")
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A tensor shape, displayed as PyTorch prints it: `[96, 32]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; Shape::MAX_RANK],
    rank: usize,
}

impl Shape {
    /// Dimensions kept; a longer shape keeps its first `MAX_RANK` and displays `…`.
    pub const MAX_RANK: usize = 6;

    /// A shape from its dimensions.
    #[must_use]
    pub fn new(dims: &[usize]) -> Self {
        let mut s = Shape {
            dims: [0; Self::MAX_RANK],
            rank: dims.len(),
        };
        for (d, &x) in s.dims.iter_mut().zip(dims) {
            *d = x;
        }
        s
    }

    /// The dimensions (at most [`Shape::MAX_RANK`]).
    #[must_use]
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank.min(Self::MAX_RANK)]
    }

    /// The number of dimensions.
    #[must_use]
    pub fn rank(&self) -> usize {
        self.rank
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.rank > Self::MAX_RANK {
            f.write_str(", …")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why PyTorch weights could not be loaded. Each message names the tensor and says what was
/// expected and what was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// A required tensor is absent.
    MissingTensor {
        /// Full tensor name (with prefix).
        name: Text,
        /// The shape it should have.
        expected: Shape,
    },
    /// A tensor has the wrong shape, e.g. a `DIM` that does not match the file.
    WrongShape {
        /// Full tensor name (with prefix).
        name: Text,
        /// The shape `MultiHead<_, DIM, _>` needs.
        expected: Shape,
        /// The shape in the input.
        found: Shape,
        /// The layer's `DIM`.
        dim: usize,
    },
    /// A slice has the wrong number of values.
    WrongLength {
        /// Tensor name.
        name: Text,
        /// Values needed (and the shape they form).
        expected: Shape,
        /// Values given.
        found: usize,
        /// The layer's `DIM`.
        dim: usize,
    },
    /// A tensor's element type is not one the layer stores: `F32` or `F64` for weights kept
    /// in `f32`/`f64`, `F16` or `BF16` for half-precision weights (biases: `F32`, `F64` or
    /// the weights' half type).
    WrongDtype {
        /// Full tensor name (with prefix).
        name: Text,
        /// The dtype found, as safetensors names it (`BF16`, `I64`, …).
        found: Text,
        /// The dtypes the layer accepts there (`F32 or F64`, `F16`, …).
        expected: &'static str,
    },
    /// The file records a head count different from the layer's `HEADS`.
    WrongHeads {
        /// The layer's `HEADS`.
        expected: usize,
        /// The file's `num_heads` metadata.
        found: usize,
    },
    /// A key or value projection with another number of rows than the layer's
    /// `KV_HEADS · HEAD_DIM` (a grouped-query layer whose `KV_HEADS`, or `HEAD_DIM`, is not
    /// the file's). The rows are the file's kv heads times their width: a file without a
    /// configuration cannot say which, so both readings are given.
    WrongKvHeads {
        /// Full tensor name (with prefix).
        name: Text,
        /// The layer's `KV_HEADS`.
        expected: usize,
        /// The kv heads the tensor holds if they are `head_dim` wide (its rows over
        /// `head_dim`, rounded down).
        found: usize,
        /// The layer's `HEAD_DIM`.
        head_dim: usize,
        /// The tensor's rows: the file's `KV_HEADS · HEAD_DIM`.
        rows: usize,
    },
    /// A tensor for a feature this layer does not have (`bias_k`/`bias_v` of
    /// `add_bias_kv=True`), or both the packed and the separate projection forms.
    Unsupported {
        /// Full tensor name (with prefix).
        name: Text,
        /// What it means.
        reason: &'static str,
    },
    /// A tensor holds a value the layer cannot take: a scale of `i8` weights that is
    /// negative, infinite or NaN.
    BadValue {
        /// Full tensor name (with prefix).
        name: Text,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The bytes are not a valid safetensors file (truncated, bad header, bad offsets, …).
    Malformed {
        /// The parser's explanation.
        reason: Text,
    },
    /// The configuration given to `GroupedQuery::load_pretrained` does not describe this
    /// layer (another shape, or an invalid variant).
    #[cfg(feature = "config")]
    Config(crate::config::ConfigError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::MissingTensor { name, expected } => {
                write!(f, "missing tensor {name} (expected shape {expected})")
            }
            LoadError::WrongShape {
                name,
                expected,
                found,
                dim,
            } => {
                write!(
                    f,
                    "{name} has shape {found}, expected {expected} for DIM = {dim}"
                )
            }
            LoadError::WrongLength {
                name,
                expected,
                found,
                dim,
            } => {
                let n: usize = expected.dims().iter().product();
                write!(
                    f,
                    "{name} has {found} values, expected {n} ({expected}) for DIM = {dim}"
                )
            }
            LoadError::WrongDtype {
                name,
                found,
                expected,
            } => write!(f, "{name} has dtype {found}, expected {expected}"),
            LoadError::WrongHeads { expected, found } => write!(
                f,
                "the file was saved with num_heads = {found}, but the layer has HEADS = {expected}"
            ),
            LoadError::WrongKvHeads {
                name,
                expected,
                found,
                head_dim,
                rows,
            } => write!(
                f,
                "{name} has {rows} rows (the file's kv heads times their width: {found} kv \
                 heads if they are {head_dim} wide like the layer's, or as many heads of \
                 another width as the file's head count says), but the layer needs KV_HEADS · \
                 HEAD_DIM = {expected} · {head_dim} = {} rows",
                expected * head_dim
            ),
            LoadError::Unsupported { name, reason } | LoadError::BadValue { name, reason } => {
                write!(f, "{name}: {reason}")
            }
            LoadError::Malformed { reason } => write!(f, "malformed safetensors data: {reason}"),
            #[cfg(feature = "config")]
            LoadError::Config(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for LoadError {}

/// `in_proj_bias` and `out_proj.bias` come together: PyTorch's `bias` flag adds both or
/// neither, and a file (or a call) with only one of them is missing the other.
fn check_bias_pair(
    prefix: &str,
    in_bias: bool,
    out_bias: bool,
    dim: usize,
) -> Result<(), LoadError> {
    match (in_bias, out_bias) {
        (true, false) => Err(LoadError::MissingTensor {
            name: Text::new(&[prefix, "out_proj.bias"]),
            expected: Shape::new(&[dim]),
        }),
        (false, true) => Err(LoadError::MissingTensor {
            name: Text::new(&[prefix, "in_proj_bias"]),
            expected: Shape::new(&[3 * dim]),
        }),
        _ => Ok(()),
    }
}

/// Where the query, key and value projection weights come from.
#[derive(Clone, Copy, Debug)]
pub enum InProjWeight<'a, T> {
    /// PyTorch's packed `in_proj_weight`, `[3·DIM, DIM]` row-major (`3·DIM·DIM` values).
    Packed(&'a [T]),
    /// Separate `q_proj_weight`, `k_proj_weight`, `v_proj_weight`, `[DIM, DIM]` row-major each.
    Separate {
        /// `q_proj_weight`.
        q: &'a [T],
        /// `k_proj_weight`.
        k: &'a [T],
        /// `v_proj_weight`.
        v: &'a [T],
    },
}

/// Borrowed `nn.MultiheadAttention` parameters in PyTorch's layout (row-major, `y = x Wᵀ + b`).
#[derive(Clone, Copy, Debug)]
pub struct PyTorchParams<'a, T> {
    /// The query, key and value projection weights.
    pub in_proj_weight: InProjWeight<'a, T>,
    /// `in_proj_bias`, `3·DIM` values, or `None` for `bias=False`.
    pub in_proj_bias: Option<&'a [T]>,
    /// `out_proj.weight`, `DIM·DIM` values.
    pub out_proj_weight: &'a [T],
    /// `out_proj.bias`, `DIM` values, or `None` for `bias=False`.
    pub out_proj_bias: Option<&'a [T]>,
}

/// A source of values that have been checked for length: native slices or little-endian
/// bytes of `f32`/`f64` from a file.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "safetensors"), allow(dead_code))]
pub(crate) enum Values<'a, T> {
    Native(&'a [T]),
    F32Le(&'a [u8]),
    F64Le(&'a [u8]),
    F16Le(&'a [u8]),
    Bf16Le(&'a [u8]),
    /// `i8` integers.
    I8(&'a [u8]),
}

impl<T: Float> Values<'_, T> {
    fn len(&self) -> usize {
        match self {
            Values::Native(s) => s.len(),
            Values::F32Le(b) => b.len() / 4,
            Values::F64Le(b) => b.len() / 8,
            Values::F16Le(b) | Values::Bf16Le(b) => b.len() / 2,
            Values::I8(b) => b.len(),
        }
    }

    /// Copies the values from `start` into `out` (the caller checked the length).
    pub(crate) fn copy_to(&self, start: usize, out: &mut [T]) {
        match self {
            Values::Native(s) => out.copy_from_slice(&s[start..start + out.len()]),
            Values::F32Le(b) => {
                for (o, c) in out.iter_mut().zip(b[start * 4..].chunks_exact(4)) {
                    *o = T::of(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                }
            }
            Values::F64Le(b) => {
                for (o, c) in out.iter_mut().zip(b[start * 8..].chunks_exact(8)) {
                    *o = T::of(f64::from_le_bytes([
                        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                    ]));
                }
            }
            // Half precision widens exactly to f32 (and so to T).
            Values::F16Le(b) => {
                for (o, c) in out.iter_mut().zip(b[start * 2..].chunks_exact(2)) {
                    let h = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                    *o = T::of(f64::from(h.to_f32()));
                }
            }
            Values::Bf16Le(b) => {
                for (o, c) in out.iter_mut().zip(b[start * 2..].chunks_exact(2)) {
                    let h = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                    *o = T::of(f64::from(h.to_f32()));
                }
            }
            Values::I8(b) => {
                for (o, &c) in out.iter_mut().zip(&b[start..]) {
                    *o = T::of(f64::from(c.cast_signed()));
                }
            }
        }
    }
}

/// Validated parameters of a [`MultiHead`], ready to copy: q, k, v and out.
pub(crate) type Checked<'a, T> = [CheckedLinear<'a, T>; 4];

impl<'a, T: Float> PyTorchParams<'a, T> {
    /// Loads these parameters into `layer`, in place (for a layer on the heap or in a
    /// `static`; `MultiHead::try_from(&params)` builds one by value). Lengths are checked:
    /// `3·DIM·DIM` for a packed `in_proj_weight`, `DIM·DIM` for each separate or output
    /// weight, `3·DIM` and `DIM` for the biases. On error the layer is unchanged.
    ///
    /// # Errors
    ///
    /// [`LoadError::WrongLength`] naming the slice whose length is wrong;
    /// [`LoadError::MissingTensor`] when only one of the two biases is given (PyTorch's `bias`
    /// flag adds both or neither).
    ///
    /// ```
    /// use static_attention::MultiHead;
    /// use static_attention::io::{InProjWeight, PyTorchParams};
    ///
    /// let in_w = [0.1f32; 3 * 4 * 4];
    /// let out_w = [0.2f32; 4 * 4];
    /// let params = PyTorchParams {
    ///     in_proj_weight: InProjWeight::Packed(&in_w),
    ///     in_proj_bias: None,
    ///     out_proj_weight: &out_w,
    ///     out_proj_bias: None,
    /// };
    /// let layer = MultiHead::<3, 4, 2>::try_from(&params)?;
    /// assert!(!layer.out_proj().has_bias());
    ///
    /// let mut in_place = MultiHead::<3, 4, 2>::zeros();
    /// params.load_into(&mut in_place)?;
    /// assert_eq!(in_place, layer);
    ///
    /// let short = PyTorchParams { out_proj_weight: &out_w[..15], ..params };
    /// let err = MultiHead::<3, 4, 2>::try_from(&short).unwrap_err();
    /// assert_eq!(err.to_string(), "out_proj.weight has 15 values, expected 16 ([4, 4]) for DIM = 4");
    /// # Ok::<(), static_attention::io::LoadError>(())
    /// ```
    pub fn load_into<const SEQ: usize, const DIM: usize, const HEADS: usize, W: Weight<T>>(
        &self,
        layer: &mut MultiHead<SEQ, DIM, HEADS, T, W>,
    ) -> Result<(), LoadError> {
        let checked = MultiHead::<SEQ, DIM, HEADS, T, W>::check_pytorch(self)?;
        layer.write_checked(&checked);
        Ok(())
    }
}

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    TryFrom<&PyTorchParams<'_, T>> for MultiHead<SEQ, DIM, HEADS, T, W>
{
    type Error = LoadError;

    /// Builds a layer from PyTorch's parameters given as slices (see
    /// [`PyTorchParams::load_into`] for the checks), by value: about `2 · PARAM_BYTES` of
    /// stack.
    fn try_from(params: &PyTorchParams<'_, T>) -> Result<Self, LoadError> {
        let mut layer = Self::zeros();
        params.load_into(&mut layer)?;
        Ok(layer)
    }
}

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Checks every length, without writing anything.
    fn check_pytorch<'a>(params: &PyTorchParams<'a, T>) -> Result<Checked<'a, T>, LoadError> {
        let dd = DIM * DIM;
        let (q, k, v) = match params.in_proj_weight {
            InProjWeight::Packed(w) => {
                check_len("in_proj_weight", w, &[3 * DIM, DIM], DIM)?;
                let p = Values::Native(w);
                ((p, 0), (p, dd), (p, 2 * dd))
            }
            InProjWeight::Separate { q, k, v } => {
                check_len("q_proj_weight", q, &[DIM, DIM], DIM)?;
                check_len("k_proj_weight", k, &[DIM, DIM], DIM)?;
                check_len("v_proj_weight", v, &[DIM, DIM], DIM)?;
                (
                    (Values::Native(q), 0),
                    (Values::Native(k), 0),
                    (Values::Native(v), 0),
                )
            }
        };
        if let Some(b) = params.in_proj_bias {
            check_len("in_proj_bias", b, &[3 * DIM], DIM)?;
        }
        check_len("out_proj.weight", params.out_proj_weight, &[DIM, DIM], DIM)?;
        if let Some(b) = params.out_proj_bias {
            check_len("out_proj.bias", b, &[DIM], DIM)?;
        }
        check_bias_pair(
            "",
            params.in_proj_bias.is_some(),
            params.out_proj_bias.is_some(),
            DIM,
        )?;
        let in_bias = params.in_proj_bias.map(Values::Native);
        Ok(Self::checked_from_parts(
            [q, k, v],
            in_bias,
            Values::Native(params.out_proj_weight),
            params.out_proj_bias.map(Values::Native),
        ))
    }

    /// Assembles the four projections from PyTorch's packed or separate form: each of `qkv` is
    /// a source and the offset of its `DIM·DIM` weights; the packed `in_bias` holds the three
    /// biases one after the other.
    pub(crate) fn checked_from_parts<'a>(
        qkv: [(Values<'a, T>, usize); 3],
        in_bias: Option<Values<'a, T>>,
        out_w: Values<'a, T>,
        out_b: Option<Values<'a, T>>,
    ) -> Checked<'a, T> {
        let [q, k, v] = qkv.map(|(weight, weight_start)| CheckedLinear {
            weight,
            weight_start,
            bias: in_bias,
            bias_start: 0,
            scale: None,
            scale_start: 0,
        });
        [
            q,
            CheckedLinear {
                bias_start: DIM,
                ..k
            },
            CheckedLinear {
                bias_start: 2 * DIM,
                ..v
            },
            CheckedLinear {
                weight: out_w,
                weight_start: 0,
                bias: out_b,
                bias_start: 0,
                scale: None,
                scale_start: 0,
            },
        ]
    }

    /// Copies validated parameters in; cannot fail.
    pub(crate) fn write_checked(&mut self, c: &Checked<'_, T>) {
        c[0].write(&mut self.q);
        c[1].write(&mut self.k);
        c[2].write(&mut self.v);
        c[3].write(&mut self.out);
    }
}

/// Borrowed `nn.Linear` parameters in PyTorch's layout (`y = x Wᵀ + b`).
#[derive(Clone, Copy, Debug)]
pub struct LinearParams<'a, T> {
    /// `weight`, `[OUT, IN]` row-major (`OUT·IN` values).
    pub weight: &'a [T],
    /// `bias`, `OUT` values, or `None` for `bias=False`.
    pub bias: Option<&'a [T]>,
}

/// Borrowed parameters of a [`SelfAttention`] head: three `nn.Linear(DIM, DIM)` modules, named
/// as Hugging Face names them (`q_proj`, `k_proj`, `v_proj`). Each may have a bias or not.
#[derive(Clone, Copy, Debug)]
pub struct SelfAttentionParams<'a, T> {
    /// The query projection.
    pub q_proj: LinearParams<'a, T>,
    /// The key projection.
    pub k_proj: LinearParams<'a, T>,
    /// The value projection.
    pub v_proj: LinearParams<'a, T>,
}

/// Checks that a slice has the values a shape needs.
fn check_len<T>(name: &str, v: &[T], shape: &[usize], dim: usize) -> Result<(), LoadError> {
    let n: usize = shape.iter().product();
    if v.len() == n {
        Ok(())
    } else {
        Err(LoadError::WrongLength {
            name: Text::new(&[name]),
            expected: Shape::new(shape),
            found: v.len(),
            dim,
        })
    }
}

/// An `nn.Linear`'s parameters whose lengths have been checked.
#[derive(Clone, Copy)]
pub(crate) struct CheckedLinear<'a, T> {
    /// Source of the weights, starting at `weight_start`.
    pub weight: Values<'a, T>,
    pub weight_start: usize,
    /// Source of the bias, starting at `bias_start`.
    pub bias: Option<Values<'a, T>>,
    pub bias_start: usize,
    /// Source of the per-feature scales of `i8` weights, starting at `scale_start` (checked
    /// finite and not negative); `None` for other weights, or for `i8` weights given as
    /// floats, which are quantized as they are written.
    pub scale: Option<Values<'a, T>>,
    pub scale_start: usize,
}

impl<'a, T: Float> CheckedLinear<'a, T> {
    /// Checks `params` for a `din → dout` map; `name` is the module's name (`q_proj`), `dim`
    /// the layer's `DIM` for the message.
    fn from_params(
        name: &str,
        params: &LinearParams<'a, T>,
        din: usize,
        dout: usize,
        dim: usize,
    ) -> Result<Self, LoadError> {
        check_len(
            Text::new(&[name, ".weight"]).as_str(),
            params.weight,
            &[dout, din],
            dim,
        )?;
        if let Some(b) = params.bias {
            check_len(Text::new(&[name, ".bias"]).as_str(), b, &[dout], dim)?;
        }
        Ok(Self {
            weight: Values::Native(params.weight),
            weight_start: 0,
            bias: params.bias.map(Values::Native),
            bias_start: 0,
            scale: None,
            scale_start: 0,
        })
    }

    /// Copies the parameters into `l`; cannot fail.
    pub(crate) fn write<const IN: usize, const OUT: usize, W: Weight<T>>(
        &self,
        l: &mut Linear<IN, OUT, T, W>,
    ) {
        debug_assert!(self.weight.len() >= self.weight_start + IN * OUT);
        // PyTorch's `weight[OUT][IN]` is row-major; the map stores `W` in its own layout.
        let mut row = [T::ZERO; 64];
        if !l.scale_values().is_empty() {
            self.write_quantized(l);
        } else {
            for n in 0..OUT {
                let mut p0 = 0;
                while p0 < IN {
                    let len = (IN - p0).min(row.len());
                    self.weight
                        .copy_to(self.weight_start + n * IN + p0, &mut row[..len]);
                    for (p, &x) in row[..len].iter().enumerate() {
                        l.set_weight_at(n, p0 + p, x);
                    }
                    p0 += len;
                }
            }
        }
        l.set_zero_bias(match self.bias {
            Some(_) => crate::Bias::Present,
            None => crate::Bias::Absent,
        });
        if let Some(b) = self.bias {
            b.copy_to(self.bias_start, l.bias_mut_slice());
        }
    }

    /// [`CheckedLinear::write`]'s weights into `i8` storage: the file's integers and scales
    /// as they are, or floating-point weights quantized per feature as
    /// [`Linear::to_weights`] does (scale `max |w| / 127` over the finite weights).
    fn write_quantized<const IN: usize, const OUT: usize, W: Weight<T>>(
        &self,
        l: &mut Linear<IN, OUT, T, W>,
    ) {
        // The row `n` of the file in chunks: `(first input, values)`.
        let chunks = |n: usize, f: &mut dyn FnMut(usize, &[T])| {
            let mut row = [T::ZERO; 64];
            let mut p0 = 0;
            while p0 < IN {
                let len = (IN - p0).min(row.len());
                self.weight
                    .copy_to(self.weight_start + n * IN + p0, &mut row[..len]);
                f(p0, &row[..len]);
                p0 += len;
            }
        };
        for n in 0..OUT {
            let scale = if let Some(s) = self.scale {
                let mut one = [T::ZERO];
                s.copy_to(self.scale_start + n, &mut one);
                one[0]
            } else {
                let mut amax = T::ZERO;
                chunks(n, &mut |_, xs| {
                    for &x in xs {
                        if x.is_finite_() && x.abs_() > amax {
                            amax = x.abs_();
                        }
                    }
                });
                amax / T::of(127.0)
            };
            l.scale_values_mut()[n] = scale;
            let integers = self.scale.is_some();
            chunks(n, &mut |p0, xs| {
                for (p, &x) in xs.iter().enumerate() {
                    let q = if integers {
                        x
                    } else if scale == T::ZERO {
                        T::ZERO
                    } else {
                        x / scale
                    };
                    l.set_stored_at(n, p0 + p, q);
                }
            });
        }
    }
}

impl<'a, T: Float> SelfAttentionParams<'a, T> {
    /// Loads these parameters into `head`, in place (`SelfAttention::try_from(&params)` builds
    /// one by value). Each projection may have a bias or not. On error the head is unchanged.
    ///
    /// # Errors
    ///
    /// [`LoadError::WrongLength`] naming the slice whose length is wrong (`DIM·DIM` per weight,
    /// `DIM` per bias).
    ///
    /// ```
    /// use static_attention::SelfAttention;
    /// use static_attention::io::{LinearParams, SelfAttentionParams};
    ///
    /// let w = [0.25f32; 4 * 4];
    /// let b = [0.5f32; 4];
    /// let params = SelfAttentionParams {
    ///     q_proj: LinearParams { weight: &w, bias: Some(&b) },
    ///     k_proj: LinearParams { weight: &w, bias: None },
    ///     v_proj: LinearParams { weight: &w, bias: None },
    /// };
    /// let head = SelfAttention::<3, 4>::try_from(&params)?;
    /// assert_eq!(head.q_proj().bias().map(|b| b[0]), Some(0.5));
    ///
    /// let short = SelfAttentionParams { v_proj: LinearParams { weight: &w[..15], bias: None }, ..params };
    /// let err = SelfAttention::<3, 4>::try_from(&short).unwrap_err();
    /// assert_eq!(err.to_string(), "v_proj.weight has 15 values, expected 16 ([4, 4]) for DIM = 4");
    /// # Ok::<(), static_attention::io::LoadError>(())
    /// ```
    pub fn load_into<const SEQ: usize, const DIM: usize, W: Weight<T>>(
        &self,
        head: &mut SelfAttention<SEQ, DIM, T, W>,
    ) -> Result<(), LoadError> {
        let checked = SelfAttention::<SEQ, DIM, T, W>::check_pytorch(self)?;
        head.write_checked(&checked);
        Ok(())
    }
}

impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>>
    TryFrom<&SelfAttentionParams<'_, T>> for SelfAttention<SEQ, DIM, T, W>
{
    type Error = LoadError;

    /// Builds a head from the parameters of three PyTorch `nn.Linear(DIM, DIM)` modules given
    /// as slices (see [`SelfAttentionParams::load_into`]), by value.
    fn try_from(params: &SelfAttentionParams<'_, T>) -> Result<Self, LoadError> {
        let mut head = Self::zeros();
        params.load_into(&mut head)?;
        Ok(head)
    }
}

impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    fn check_pytorch<'a>(
        params: &SelfAttentionParams<'a, T>,
    ) -> Result<[CheckedLinear<'a, T>; 3], LoadError> {
        Ok([
            CheckedLinear::from_params("q_proj", &params.q_proj, DIM, DIM, DIM)?,
            CheckedLinear::from_params("k_proj", &params.k_proj, DIM, DIM, DIM)?,
            CheckedLinear::from_params("v_proj", &params.v_proj, DIM, DIM, DIM)?,
        ])
    }

    /// Copies validated q, k, v parameters in; cannot fail.
    pub(crate) fn write_checked(&mut self, c: &[CheckedLinear<'_, T>; 3]) {
        c[0].write(&mut self.q);
        c[1].write(&mut self.k);
        c[2].write(&mut self.v);
    }
}
