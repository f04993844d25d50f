//! A dense projection `y = x Wᵀ + b` with PyTorch's parameters.

use nalgebra::{SMatrix, SVector};

use crate::kernels::layout::weight_index;
use crate::kernels::{self, LinearIo, Table};
use crate::{Float, Weight};

/// Input features per panel of [`Linear::forward_into`]'s stack buffer.
const PANEL_DEPTH: usize = 64;

/// A linear map from `IN` to `OUT` features, `y = x Wᵀ + b`, exactly as PyTorch's `nn.Linear`.
///
/// `T` is the scalar type, `f32` unless named (`Linear<IN, OUT, f64>`); `W` is how the
/// weights are stored, `T` unless named (`Linear<IN, OUT, f32, f16>` keeps them in half
/// precision and computes in `f32`: see [`crate::weight`]). The bias is stored in `T`.
///
/// `W` is `OUT × IN` (PyTorch's `weight`), `b` has `OUT` entries. `W` is stored the way the
/// projection kernels read it, packed once at construction instead of on every call: in tiles
/// of 12 output features, each tile `IN` rows of 12 consecutive weights (the last tile holds the
/// remaining `OUT mod 12` features the same way). The layout is internal: read and write `W`
/// through [`Linear::weight`], [`Linear::weight_at`] and [`Linear::set_weight`].
/// [`Linear::from_rows`] is a `const fn` that takes PyTorch's row-major array and packs it at
/// compile time, so a `static` layer keeps its weights, packed, in read-only memory.
///
/// ```
/// use nalgebra::SMatrix;
/// use static_attention::Linear;
///
/// // W = [[1, 2], [3, 4], [5, 6]] (3 outputs, 2 inputs), b = [0, 0, 1]
/// const L: Linear<2, 3> = Linear::from_rows([[1., 2.], [3., 4.], [5., 6.]], [0., 0., 1.]);
/// let x = SMatrix::<f32, 1, 2>::new(1.0, 1.0);
/// assert_eq!(L.forward(&x), SMatrix::<f32, 1, 3>::new(3.0, 7.0, 12.0));
/// assert_eq!(L.weight_at(2, 0), 5.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float, W: bytemuck::Zeroable")]
pub struct Linear<const IN: usize, const OUT: usize, T = f32, W: Weight<T> = T> {
    /// `W` in tiles (`IN · OUT` values; the nesting of the array is only its size).
    weight: [[W; OUT]; IN],
    bias: SVector<T, OUT>,
    /// Per output feature: nothing for floating-point storage, the scale for `i8`.
    scales: [W::Scale; OUT],
    has_bias: bool,
}

impl<const IN: usize, const OUT: usize, T: Float, W: Weight<T>> Linear<IN, OUT, T, W> {
    /// `W` in the stored layout from PyTorch's row-major `weight[OUT][IN]`.
    const fn tiles(weight: &[[W; IN]; OUT]) -> [[W; OUT]; IN] {
        let mut packed = [[W::ZERO_WEIGHT; OUT]; IN];
        let mut n = 0;
        while n < OUT {
            let mut p = 0;
            while p < IN {
                let at = weight_index(W::KIND, n, p, IN, OUT);
                packed[at / OUT][at % OUT] = weight[n][p];
                p += 1;
            }
            n += 1;
        }
        packed
    }

    /// Builds the map from PyTorch's row-major `weight[OUT][IN]` and `bias[OUT]` (a
    /// `const fn`: evaluated at compile time for a `const` or `static`).
    #[must_use]
    pub const fn from_rows(weight: [[W; IN]; OUT], bias: [T; OUT]) -> Self {
        Self {
            weight: Self::tiles(&weight),
            bias: SMatrix::from_array_storage(nalgebra::ArrayStorage([bias])),
            scales: [W::ZERO_SCALE; OUT],
            has_bias: true,
        }
    }

    /// Builds a map without bias (PyTorch `bias=False`) from row-major `weight[OUT][IN]`.
    #[must_use]
    pub const fn from_rows_without_bias(weight: [[W; IN]; OUT]) -> Self {
        Self {
            weight: Self::tiles(&weight),
            bias: SMatrix::from_array_storage(nalgebra::ArrayStorage([[T::ZERO; OUT]])),
            scales: [W::ZERO_SCALE; OUT],
            has_bias: false,
        }
    }

    /// All-zero weights and no bias (a `const fn`; built in place, with no temporary copy).
    #[must_use]
    pub const fn zeros() -> Self {
        Self {
            weight: [[W::ZERO_WEIGHT; OUT]; IN],
            bias: SMatrix::from_array_storage(nalgebra::ArrayStorage([[T::ZERO; OUT]])),
            scales: [W::ZERO_SCALE; OUT],
            has_bias: false,
        }
    }

    /// A map with weights drawn from `U(−bound, bound)` (in the row-major order of PyTorch's
    /// `weight`) and a zero or absent bias.
    pub(crate) fn random<R: rand::Rng + ?Sized>(
        rng: &mut R,
        bound: f64,
        bias: crate::Bias,
    ) -> Self {
        let mut l = Self::zeros();
        crate::init::fill_uniform(&mut l, bound, rng);
        l.set_zero_bias(bias);
        l
    }

    /// The weight `W` (`OUT × IN`), PyTorch's `weight`, as a matrix (a copy: `OUT · IN`
    /// scalars by value; see [`Linear::weight_into`] for large maps).
    #[must_use]
    pub fn weight(&self) -> SMatrix<T, OUT, IN> {
        let mut w = crate::zero_matrix();
        self.weight_into(&mut w);
        w
    }

    /// Copies `W` into `w`.
    pub fn weight_into(&self, w: &mut SMatrix<T, OUT, IN>) {
        for p in 0..IN {
            for n in 0..OUT {
                w[(n, p)] = self.weight_at(n, p);
            }
        }
    }

    /// `W[n, p]`, the weight from input feature `p` to output feature `n` (widened to `T`;
    /// for `i8` storage the stored integer times feature `n`'s scale). Panics if `n ≥ OUT` or
    /// `p ≥ IN`.
    #[inline]
    #[must_use]
    pub fn weight_at(&self, n: usize, p: usize) -> T {
        assert!(n < OUT && p < IN, "weight index out of range");
        let v = self.stored_at(n, p).widen();
        match W::scales(&self.scales) {
            [] => v,
            scales => v * scales[n],
        }
    }

    /// The stored value of `W[n, p]`.
    fn stored_at(&self, n: usize, p: usize) -> W {
        self.weight.as_flattened()[weight_index(W::KIND, n, p, IN, OUT)]
    }

    /// The stored value of `W[n, p]` in `T`: the weight, or for `i8` storage the integer.
    #[cfg(feature = "safetensors")]
    pub(crate) fn stored_value_at(&self, n: usize, p: usize) -> T {
        self.stored_at(n, p).widen()
    }

    /// Stores `value` (rounded to `W`; for `i8` storage an integer, saturated to `±127`) as
    /// `W[n, p]` as it is, whatever the scale.
    pub(crate) fn set_stored_at(&mut self, n: usize, p: usize, value: T) {
        self.weight.as_flattened_mut()[weight_index(W::KIND, n, p, IN, OUT)] = W::narrow(value);
    }

    /// The per-feature scales (empty for floating-point storage).
    pub(crate) fn scale_values(&self) -> &[T] {
        W::scales(&self.scales)
    }

    /// The per-feature scales, to write (empty for floating-point storage).
    pub(crate) fn scale_values_mut(&mut self) -> &mut [T] {
        W::scales_mut(&mut self.scales)
    }

    /// Sets `W[n, p]` (rounded to the storage type `W`). Panics if `n ≥ OUT` or `p ≥ IN`.
    ///
    /// For `i8` storage the value is quantized with feature `n`'s scale (rounded to the
    /// nearest multiple of it, ties to even); a value beyond `127 ·` the scale first raises the
    /// scale to `|value| / 127` and requantizes the feature's other weights with it (each
    /// moves by at most half the new scale). NaN stores `0`; an infinite value is not stored
    /// (the feature is left as it was).
    #[inline]
    pub fn set_weight_at(&mut self, n: usize, p: usize, value: T) {
        assert!(n < OUT && p < IN, "weight index out of range");
        let at = weight_index(W::KIND, n, p, IN, OUT);
        if W::scales(&self.scales).is_empty() {
            self.weight.as_flattened_mut()[at] = W::narrow(value);
            return;
        }
        if value.abs_() == -T::NEG_INFINITY {
            return;
        }
        let max_q = T::of(127.0);
        let scale = W::scales(&self.scales)[n];
        if value.abs_() > scale * max_q {
            let grown = value.abs_() / max_q;
            for d in 0..IN {
                let old = self.weight_at(n, d);
                let i = weight_index(W::KIND, n, d, IN, OUT);
                self.weight.as_flattened_mut()[i] = W::narrow(old / grown);
            }
            W::scales_mut(&mut self.scales)[n] = grown;
        }
        let scale = W::scales(&self.scales)[n];
        self.weight.as_flattened_mut()[at] = if scale == T::ZERO {
            W::ZERO_WEIGHT
        } else {
            W::narrow(value / scale)
        };
    }

    /// The same map with its weights stored as `W2` (each rounded to `W2`; the bias is kept).
    ///
    /// To `i8` storage, each output feature gets the scale `max_p |W[n, p]| / 127` over its
    /// finite weights (symmetric, per channel) and every weight the nearest multiple of it
    /// (ties to even); a NaN weight becomes `0` and an infinite one `±127 ·` the scale.
    #[must_use]
    pub fn to_weights<W2: Weight<T>>(&self) -> Linear<IN, OUT, T, W2> {
        let mut l = Linear::<IN, OUT, T, W2>::zeros();
        if !W2::scales(&l.scales).is_empty() {
            let max_q = T::of(127.0);
            for n in 0..OUT {
                let mut amax = T::ZERO;
                for p in 0..IN {
                    let v = self.weight_at(n, p).abs_();
                    if v.is_finite_() && v > amax {
                        amax = v;
                    }
                }
                let scale = amax / max_q;
                W2::scales_mut(&mut l.scales)[n] = scale;
                for p in 0..IN {
                    let v = self.weight_at(n, p);
                    let i = weight_index(W2::KIND, n, p, IN, OUT);
                    l.weight.as_flattened_mut()[i] = if scale == T::ZERO {
                        W2::ZERO_WEIGHT
                    } else {
                        W2::narrow(v / scale)
                    };
                }
            }
        } else {
            // The two storage types may lay the weights out differently (`bf16` pairs rows).
            for p in 0..IN {
                for n in 0..OUT {
                    l.set_weight_at(n, p, self.weight_at(n, p));
                }
            }
        }
        l.bias = self.bias;
        l.has_bias = self.has_bias;
        l
    }

    /// Replaces `W` (`OUT × IN`).
    pub fn set_weight(&mut self, w: &SMatrix<T, OUT, IN>) {
        for p in 0..IN {
            for n in 0..OUT {
                self.set_weight_at(n, p, w[(n, p)]);
            }
        }
    }

    /// The stored weights, in the kernels' tile layout.
    pub(crate) fn weight_tiles(&self) -> &[W] {
        self.weight.as_flattened()
    }
    /// The bias, or `None` for a map built without one.
    #[must_use]
    pub const fn bias(&self) -> Option<&SVector<T, OUT>> {
        if self.has_bias {
            Some(&self.bias)
        } else {
            None
        }
    }

    /// Sets or removes the bias.
    pub fn set_bias(&mut self, bias: Option<&SVector<T, OUT>>) {
        self.has_bias = bias.is_some();
        self.bias = bias.copied().unwrap_or_else(SVector::zeros);
    }

    /// Gives the map a zero bias ([`crate::Bias::Present`]) or removes it
    /// ([`crate::Bias::Absent`]).
    pub fn set_zero_bias(&mut self, bias: crate::Bias) {
        self.has_bias = bias == crate::Bias::Present;
        self.bias.fill(T::ZERO);
    }

    /// Whether the map has a bias term.
    #[must_use]
    pub const fn has_bias(&self) -> bool {
        self.has_bias
    }

    /// The bias storage, to copy a loaded bias into (the caller sets `has_bias`).
    pub(crate) fn bias_mut_slice(&mut self) -> &mut [T] {
        self.bias.as_mut_slice()
    }

    /// The bias as stored (zeros when there is none).
    #[cfg(feature = "std")]
    pub(crate) fn bias_or_zero(&self) -> &SVector<T, OUT> {
        &self.bias
    }

    /// `y = x Wᵀ + b` for `S` tokens in rows: `S × IN → S × OUT`.
    #[must_use]
    pub fn forward<const S: usize>(&self, x: &SMatrix<T, S, IN>) -> SMatrix<T, S, OUT> {
        let mut y = crate::zero_matrix();
        self.forward_into(x, &mut y);
        y
    }

    /// `y = x Wᵀ + b` into a caller-owned output. Besides its frames it keeps a small panel
    /// buffer on the stack (`32 × 64` scalars).
    pub fn forward_into<const S: usize>(&self, x: &SMatrix<T, S, IN>, y: &mut SMatrix<T, S, OUT>) {
        let mut pack = [[T::ZERO; kernels::PANEL_ROWS]; PANEL_DEPTH];
        let kt = kernels::current::<T>();
        self.project(
            kt,
            x.as_slice(),
            S,
            y.as_mut_slice(),
            pack.as_flattened_mut(),
        );
    }

    /// `y = x Wᵀ + b` for `s` tokens with the kernels of `kt`, `x` and `y` column-major
    /// (`s·IN` and `s·OUT` values), with `pack` as the kernel's panel buffer.
    pub(crate) fn project(&self, kt: &Table<T>, x: &[T], s: usize, y: &mut [T], pack: &mut [T]) {
        if s == 0 {
            return;
        }
        kt.linear(
            LinearIo::Out { x, out: y },
            s,
            IN,
            self.weight_tiles(),
            OUT,
            self.bias.as_slice(),
            W::scales(&self.scales),
            pack,
        );
    }

    /// This map as one of [`Table::linear_shared`]'s projections, into `y`.
    pub(crate) fn projection<'a>(&'a self, y: &'a mut [T]) -> kernels::Projection<'a, T, W> {
        kernels::Projection {
            w: self.weight_tiles(),
            bias: self.bias.as_slice(),
            scales: W::scales(&self.scales),
            out: y,
        }
    }

    /// The bias storage (zeros when there is none), for the kernels.
    #[cfg(feature = "rayon")]
    pub(crate) fn bias_slice(&self) -> &[T] {
        self.bias.as_slice()
    }
}

impl<const IN: usize, const OUT: usize, T: Float> Linear<IN, OUT, T> {
    /// Builds the map from `W` (`OUT × IN`) and an optional bias, storing the weights in `T`
    /// (for half-precision storage, follow with [`Linear::to_weights`]).
    #[must_use]
    pub fn from_matrix(weight: &SMatrix<T, OUT, IN>, bias: Option<&SVector<T, OUT>>) -> Self {
        let mut l = Self::zeros();
        l.set_weight(weight);
        l.set_bias(bias);
        l
    }
}

impl<const IN: usize, const OUT: usize> Linear<IN, OUT, f32, i8> {
    /// Builds an `i8` map from PyTorch's row-major quantized `weight[OUT][IN]` (integers in
    /// `−127 ..= 127`; `−128` is taken as `−127`), one scale per output feature (`W[n, p] =
    /// weight[n][p] · scales[n]`) and `bias[OUT]` (a `const fn`, for `static` layers).
    #[must_use]
    pub const fn from_quantized(
        weight: [[i8; IN]; OUT],
        scales: [f32; OUT],
        bias: [f32; OUT],
    ) -> Self {
        let mut w = weight;
        let mut n = 0;
        while n < OUT {
            let mut p = 0;
            while p < IN {
                if w[n][p] == i8::MIN {
                    w[n][p] = -127;
                }
                p += 1;
            }
            n += 1;
        }
        let mut l = Self::from_rows(w, bias);
        l.scales = scales;
        l
    }

    /// Builds an `i8` map from `f32` weights in PyTorch's row-major `weight[OUT][IN]` and
    /// `bias[OUT]`, quantized as [`Linear::to_weights`] quantizes them: output feature `n`
    /// gets the scale `max_p |weight[n][p]| / 127` (in `f32`, over its finite weights) and
    /// each weight the integer nearest `weight[n][p] / scale` (ties to even, within `±127`,
    /// NaN to `0`; every weight `0` when the scale is `0`). The bias stays `f32`. A `const
    /// fn`: a `static` layer is quantized at compile time, and holds the same values as
    /// `Linear::from_rows(weight, bias).to_weights::<i8>()`. The rows are taken by value: at
    /// run time a large layer's arrays are on the stack (`4·IN·OUT` bytes and the result; prefer
    /// `to_weights` there), and a large `static` is slow to evaluate (rustc's
    /// `long_running_const_eval` lint may need allowing).
    ///
    /// ```
    /// use static_attention::Linear;
    ///
    /// static L: Linear<3, 2, f32, i8> =
    ///     Linear::from_f32_rows([[1.0, -0.5, 0.25], [0.0, 2.54, 1.0]], [0.5, -1.0]);
    /// assert_eq!(*L.scales(), [1.0 / 127.0, 2.54 / 127.0]);
    /// let full = Linear::<3, 2>::from_rows([[1.0, -0.5, 0.25], [0.0, 2.54, 1.0]], [0.5, -1.0]);
    /// assert_eq!(L, full.to_weights::<i8>());
    /// // Each weight within half a step of its scale.
    /// assert!((L.weight_at(1, 2) - 1.0).abs() <= 0.5 * 2.54 / 127.0);
    /// ```
    #[must_use]
    pub const fn from_f32_rows(weight: [[f32; IN]; OUT], bias: [f32; OUT]) -> Self {
        let mut q = [[0i8; IN]; OUT];
        let mut scales = [0.0f32; OUT];
        let mut n = 0;
        while n < OUT {
            let mut amax = 0.0f32;
            let mut p = 0;
            while p < IN {
                let a = weight[n][p].abs();
                if a.is_finite() && a > amax {
                    amax = a;
                }
                p += 1;
            }
            let scale = amax / 127.0;
            scales[n] = scale;
            if scale != 0.0 {
                p = 0;
                while p < IN {
                    q[n][p] = crate::weight::quantize(weight[n][p] / scale);
                    p += 1;
                }
            }
            n += 1;
        }
        Self::from_quantized(q, scales, bias)
    }

    /// The scale of each output feature.
    #[must_use]
    pub const fn scales(&self) -> &[f32; OUT] {
        &self.scales
    }
}

impl<const IN: usize, const OUT: usize> Linear<IN, OUT, f32> {
    /// Builds the map from little-endian bytes: `OUT · IN` `f32` weights in PyTorch's
    /// row-major order, then `OUT` `f32` biases (a `const fn`: a `static` layer can be decoded
    /// at compile time from `include_bytes!`). A blob of another length stops the build when
    /// evaluated in a `const` or `static`, and panics at run time otherwise.
    ///
    /// ```
    /// use static_attention::Linear;
    ///
    /// const BLOB: [u8; 4 * (2 * 1 + 2)] = [
    ///     0, 0, 128, 63, 0, 0, 0, 64, // weights 1.0, 2.0
    ///     0, 0, 0, 0, 0, 0, 128, 191, // biases 0.0, -1.0
    /// ];
    /// static L: Linear<1, 2> = Linear::from_le_bytes(&BLOB);
    /// assert_eq!((L.weight_at(1, 0), L.bias().unwrap()[1]), (2.0, -1.0));
    /// ```
    #[must_use]
    pub const fn from_le_bytes(bytes: &[u8]) -> Self {
        assert!(
            bytes.len() == 4 * (IN * OUT + OUT),
            "the blob must hold exactly OUT·IN f32 weights (row-major) and OUT f32 biases, little-endian"
        );
        let (w, b) = bytes.split_at(4 * IN * OUT);
        Self::from_rows(le_rows::<IN, OUT>(w), le_array::<OUT>(b))
    }

    /// [`Linear::from_le_bytes`] for a map without bias: exactly `OUT · IN` `f32` weights.
    #[must_use]
    pub const fn from_le_bytes_without_bias(bytes: &[u8]) -> Self {
        assert!(
            bytes.len() == 4 * IN * OUT,
            "the blob must hold exactly OUT·IN f32 weights (row-major), little-endian"
        );
        Self::from_rows_without_bias(le_rows::<IN, OUT>(bytes))
    }
}

/// The `f32` at index `i` of little-endian bytes.
const fn le_f32(bytes: &[u8], i: usize) -> f32 {
    f32::from_bits(u32::from_le_bytes([
        bytes[4 * i],
        bytes[4 * i + 1],
        bytes[4 * i + 2],
        bytes[4 * i + 3],
    ]))
}

const fn le_rows<const IN: usize, const OUT: usize>(bytes: &[u8]) -> [[f32; IN]; OUT] {
    let mut w = [[0.0; IN]; OUT];
    let mut n = 0;
    while n < OUT {
        let mut p = 0;
        while p < IN {
            w[n][p] = le_f32(bytes, n * IN + p);
            p += 1;
        }
        n += 1;
    }
    w
}

const fn le_array<const N: usize>(bytes: &[u8]) -> [f32; N] {
    let mut a = [0.0; N];
    let mut i = 0;
    while i < N {
        a[i] = le_f32(bytes, i);
        i += 1;
    }
    a
}
