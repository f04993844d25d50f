//! The operands the kernels take: shapes ([`Dims`]), where queries come from and outputs go
//! ([`QueryIo`], [`LinearIo`]), a mask lowered to slices ([`MaskView`]) and the per-call
//! working memory ([`Work`]). Everything is a plain column-major slice (nalgebra's storage
//! order), so the public types hand their storage straight through, and each kernel is
//! compiled once per scalar type however many shapes a program uses.

use super::Float;
use super::pattern::Pattern;

/// Queries a tile of the attention kernels holds at most, and rows of a projection panel:
/// two vectors of `f32` of the widest instruction set the target can have (32 on x86-64, for
/// AVX-512), or the scalar kernel's 8 where there is no vector kernel. The working memory of
/// a call is sized by it (see [`crate::Scratch`]).
pub const TILE_QUERIES: usize = if cfg!(target_arch = "x86_64") { 32 } else { 8 };
/// Keys per block of the vector attention kernels (0 where there is none: the scalar kernel
/// needs no block buffers).
pub const KEY_BLOCK: usize = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
    64
} else {
    0
};

pub(crate) const MQ_MAX: usize = TILE_QUERIES;
pub(crate) const KB: usize = KEY_BLOCK;

/// Rows of a GEMM row panel: a projection's pack buffer holds at least this many rows of one
/// input feature.
pub(crate) const PANEL_ROWS: usize = MQ_MAX;

/// Token counts up to which a projection runs token by token (the vector kernels' GEMV, and
/// the widening path for `bf16` weights even where the kernel has `bf16` products) instead of
/// in row panels, whose vectors would be mostly padding (decoding runs one token).
pub(crate) const GEMV_TOKENS: usize = 2;

/// Shape of one head's attention problem: `sq` queries of width `dk`, `skv` keys and values of
/// widths `dk` and `dv`. Queries and outputs are the first `sq` rows of column-major matrices
/// with leading dimension `ldq ≥ sq` (a token of a longer sequence, decoding through a ring;
/// `sq` otherwise); keys and values the first `skv` rows of column-major matrices with leading
/// dimension `ldkv ≥ skv` (a KV cache's capacity; `skv` otherwise).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub sq: usize,
    pub skv: usize,
    pub dk: usize,
    pub dv: usize,
    pub ldq: usize,
    pub ldkv: usize,
}

impl Dims {
    /// Dense operands (`ldq = sq`, `ldkv = skv`).
    pub(crate) const fn new(sq: usize, skv: usize, dk: usize, dv: usize) -> Self {
        Self {
            sq,
            skv,
            dk,
            dv,
            ldq: sq,
            ldkv: skv,
        }
    }

    /// Scalars a key (`width = dk`) or value (`width = dv`) slice must hold.
    pub(crate) const fn kv_len(&self, width: usize) -> usize {
        span(self.skv, width, self.ldkv)
    }

    /// Scalars a query (`width = dk`) or output (`width = dv`) slice must hold.
    pub(crate) const fn q_len(&self, width: usize) -> usize {
        span(self.sq, width, self.ldq)
    }
}

/// Scalars spanned by `rows × cols` of a column-major matrix with leading dimension `ld`.
const fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (cols - 1) * ld + rows
    }
}

/// Where an attention kernel reads its queries and writes its outputs.
pub(crate) enum QueryIo<'a, T> {
    /// Queries from `q`, outputs into `out` (both with leading dimension `ldq`).
    Separate { q: &'a [T], out: &'a mut [T] },
    /// Each output replaces the query it came from (`dk == dv`): a layer's concatenated heads
    /// end up where its projected queries were, with no buffer of their own. The kernels
    /// read a row's query before they write its output, and never write a row another part
    /// of the call still reads.
    InPlace(&'a mut [T]),
}

impl<T> QueryIo<'_, T> {
    /// The queries.
    pub(crate) fn queries(&self) -> &[T] {
        match self {
            QueryIo::Separate { q, .. } => q,
            QueryIo::InPlace(buf) => buf,
        }
    }

    /// The outputs.
    pub(crate) fn outputs(&mut self) -> &mut [T] {
        match self {
            QueryIo::Separate { out, .. } => out,
            QueryIo::InPlace(buf) => buf,
        }
    }

    /// Checks the lengths against `dims` (and `dk == dv` in place).
    pub(crate) fn check(&self, dims: &Dims) {
        match self {
            QueryIo::Separate { q, out } => assert!(
                q.len() >= dims.q_len(dims.dk) && out.len() >= dims.q_len(dims.dv),
                "queries or outputs too short"
            ),
            QueryIo::InPlace(buf) => assert!(
                dims.dk == dims.dv && buf.len() >= dims.q_len(dims.dk),
                "in-place queries too short, or of another width than the values"
            ),
        }
    }

    /// Read and write pointers (derived from one pointer in place, so writes through the
    /// second never invalidate reads through the first).
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) fn pointers(&mut self) -> (*const T, *mut T) {
        match self {
            QueryIo::Separate { q, out } => (q.as_ptr(), out.as_mut_ptr()),
            QueryIo::InPlace(buf) => {
                let p = buf.as_mut_ptr();
                (p.cast_const(), p)
            }
        }
    }
}

/// The operands of a projection: separate input and output, or accumulation into the output.
pub(crate) enum LinearIo<'a, T> {
    /// `out = x · Wᵀ + b`.
    Out { x: &'a [T], out: &'a mut [T] },
    /// `out += x · Wᵀ`, the bias not added (the half-precision path adds chunks of input
    /// features).
    Add { x: &'a [T], out: &'a mut [T] },
}

impl<'a, T> LinearIo<'a, T> {
    /// The input (`s × din`) and output (`s × dout`) after checking their lengths, and whether
    /// the products are added to the outputs ([`LinearIo::Add`]) rather than written.
    pub(crate) fn checked(self, s: usize, din: usize, dout: usize) -> (&'a [T], &'a mut [T], bool) {
        let (x, out, add) = match self {
            LinearIo::Out { x, out } => (x, out, false),
            LinearIo::Add { x, out } => (x, out, true),
        };
        assert!(
            x.len() >= s * din && out.len() >= s * dout,
            "projection operands too short"
        );
        (x, out, add)
    }
}

/// One projection of an `i8` call that shares its inputs with others: `out = x · Wᵀ + b`
/// with `W` (`dout × din`, `dout = scales.len()`) as `i8` in the tile layout (`q`), one scale
/// and one bias per feature, and `out` (`s × dout`, column-major).
pub(crate) struct I8Out<'a, T> {
    pub q: &'a [i8],
    pub scales: &'a [T],
    pub bias: &'a [T],
    pub out: &'a mut [T],
}

impl<T> I8Out<'_, T> {
    /// Output features: one per scale.
    pub(crate) fn dout(&self) -> usize {
        self.scales.len()
    }

    /// Checks the lengths for `s` tokens of `din` inputs.
    pub(crate) fn check(&self, s: usize, din: usize) {
        check_weights(self.q, self.bias, din, self.dout());
        assert!(
            self.out.len() >= s * self.dout(),
            "projection operands too short"
        );
    }
}

/// The checks of an `i8` kernel's call ([`I8Out`]): at least one input, `x` of `s × din`
/// inputs, a pack of at least `min_pack` values, and each projection's lengths.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn check_i8<T>(
    x: &[T],
    s: usize,
    din: usize,
    projs: &[I8Out<'_, T>],
    (pack, min_pack): (usize, usize),
) {
    assert!(
        pack >= min_pack && din > 0 && x.len() >= s * din,
        "the i8 kernels take inputs, and a pack of two words per token"
    );
    for p in projs {
        p.check(s, din);
    }
}

/// Checks that `w` holds a `dout × din` weight matrix (in the tile layout) and `bias` its
/// `dout` biases.
pub(crate) fn check_weights<W, T>(w: &[W], bias: &[T], din: usize, dout: usize) {
    assert!(
        w.len() >= din * dout && bias.len() >= dout,
        "weights or biases too short"
    );
}

/// One head's attention problem besides its queries: keys, values, shape, softmax scale,
/// mask, and the two logit variants of today's models.
///
/// A score is `z = scale · q·k`, then, with `softcap = Some(c)`, `z = c · tanh(z / c)`
/// (Gemma 2's soft-capping), then the mask's bias and ALiBi are added. With `sink = Some(s)`,
/// the logit `s` joins every row's softmax denominator (gpt-oss's attention sinks) and carries
/// no value: row `i`'s weights are `exp(z_ij − m) / (exp(s − m) + Σ_j exp(z_ij − m))`, so they
/// sum to less than 1.
///
/// The rules of the variants, in every kernel and path:
///
/// - `c` must be positive and finite ([`Problem::check`] asserts it). The cap is applied
///   before the mask, so a masked key is still `−∞` (never `−c`) and its NaN still never
///   leaks; an allowed key's `±∞` score becomes `±c` and a NaN score stays NaN.
/// - `m` is the maximum over the row's allowed scores and `s`. A row whose keys are all masked
///   gets zero outputs and zero weights, with a sink as without one.
/// - A sink of `−∞` is no sink (`exp(−∞) = 0`), exactly. A NaN or `+∞` sink leaves the
///   denominator undefined (`∞ − ∞`): every output and every weight of the call is NaN, as
///   PyTorch's softmax over the concatenated sink column gives.
#[derive(Clone, Copy)]
pub(crate) struct Problem<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub dims: Dims,
    pub scale: T,
    pub mask: &'a MaskView<'a, T>,
    pub softcap: Option<T>,
    pub sink: Option<T>,
}

impl<T: Float> Problem<'_, T> {
    /// The bounds every attention kernel relies on: operand lengths and the mask's shape.
    pub(crate) fn check(&self, io: &QueryIo<'_, T>) {
        let Dims { sq, skv, ldq, .. } = self.dims;
        io.check(&self.dims);
        assert!(
            self.k.len() >= self.dims.kv_len(self.dims.dk)
                && self.v.len() >= self.dims.kv_len(self.dims.dv),
            "keys or values too short"
        );
        assert!(self.dims.ldkv >= skv, "key stride shorter than the keys");
        assert!(ldq >= sq, "query stride shorter than the queries");
        let mask = self.mask;
        assert!(mask.sq == sq && mask.skv == skv, "mask of another shape");
        // The view's queries are rows `q_offset ..` of matrices of `sq_total` rows.
        assert!(
            mask.q_offset + sq <= mask.sq_total,
            "mask rows out of range"
        );
        let cells = mask.sq_total * skv;
        assert!(
            mask.attend.is_none_or(|m| m.len() >= cells)
                && mask.block.is_none_or(|m| m.len() >= cells)
                && mask.additive.is_none_or(|m| m.len() >= cells)
                && mask.pad.is_none_or(|m| m.len() >= skv),
            "mask too short"
        );
        // Key positions are compared as floating-point numbers: exact below 2^24.
        assert!(skv < 1 << 24, "more than 2^24 keys");
        assert!(
            self.softcap.is_none_or(|c| c > T::ZERO && c.is_finite_()),
            "soft-cap not positive and finite"
        );
    }

    /// The sink logit every row's softmax starts from (running maximum `s`, denominator 1):
    /// `None` without a sink and for a sink of `−∞`, which adds nothing.
    #[inline]
    pub(crate) fn sink_logit(&self) -> Option<T> {
        self.sink.filter(|&s| s != T::NEG_INFINITY)
    }

    /// Whether the sink is NaN or `+∞`, which leaves every row's denominator undefined.
    #[inline]
    pub(crate) fn sink_undefined(&self) -> bool {
        self.sink.is_some_and(|s| s.is_nan_() || s > T::MAX)
    }

    /// What a call with an undefined sink ([`Problem::sink_undefined`]) writes: NaN in every
    /// output (`sq × dv`) and, when given, every weight (`sq × skv`), both with leading
    /// dimension `ldq`. Lengths as [`Problem::check`] checked them.
    pub(crate) fn write_undefined(&self, io: &mut QueryIo<'_, T>, weights: Option<&mut [T]>) {
        let Dims {
            sq, skv, dv, ldq, ..
        } = self.dims;
        let out = io.outputs();
        for e in 0..dv {
            out[e * ldq..e * ldq + sq].fill(T::NAN);
        }
        if let Some(w) = weights {
            for j in 0..skv {
                w[j * ldq..j * ldq + sq].fill(T::NAN);
            }
        }
    }
}

/// A mask lowered to slices for the kernels (column-major `sq_total × skv` matrices), for
/// the `sq` queries starting at `q_offset` (a block of a larger problem when `sq < sq_total`;
/// the kernels index their queries from 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MaskView<'a, T> {
    pub pattern: Pattern,
    pub sq: usize,
    pub skv: usize,
    pub q_offset: usize,
    pub sq_total: usize,
    pub attend: Option<&'a [bool]>,
    pub block: Option<&'a [bool]>,
    pub pad: Option<&'a [bool]>,
    pub additive: Option<&'a [T]>,
    pub alibi: Option<AlibiView<T>>,
}

/// ALiBi as the kernels apply it: `slope · (key position − query position)` added to the
/// scaled score. Query `i` sits at `q_offset + i + skv − sq_total` (queries aligned with the
/// last keys, as in decoding); key `j` at `j`, or, for a ring of keys whose oldest entry is at
/// index `key_rotate`, at `(j − key_rotate) mod skv` (shifted by `skv` so it stays positive).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AlibiView<T> {
    pub slope: T,
    pub key_rotate: usize,
}

impl<T> AlibiView<T> {
    /// The position of key `j` of `skv`.
    #[inline(always)]
    pub(crate) fn key_position(&self, j: usize, skv: usize) -> usize {
        if self.key_rotate == 0 {
            j
        } else {
            let p = j + skv - self.key_rotate;
            if p >= skv { p - skv } else { p }
        }
    }
}

impl<T: Float> MaskView<'_, T> {
    /// A view with only a structural pattern, for `sq` queries and `skv` keys.
    pub(crate) fn structural(pattern: Pattern, sq: usize, skv: usize) -> Self {
        Self {
            pattern,
            sq,
            skv,
            q_offset: 0,
            sq_total: sq,
            attend: None,
            block: None,
            pad: None,
            additive: None,
            alibi: None,
        }
    }

    /// This view with ALiBi at `slope` (none for `None`), the oldest key at index
    /// `key_rotate` (0 for keys in order; see [`AlibiView`]).
    #[must_use]
    pub(crate) fn with_alibi(self, slope: Option<f64>, key_rotate: usize) -> Self {
        Self {
            alibi: slope.map(|m| AlibiView {
                slope: T::of(m),
                key_rotate,
            }),
            ..self
        }
    }

    /// The view of queries `start .. start + count` of this one.
    #[must_use]
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) fn rows(&self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.sq, "mask rows out of range");
        Self {
            sq: count,
            q_offset: self.q_offset + start,
            ..*self
        }
    }

    /// The position of query `i` for ALiBi: aligned so the last query meets the last key
    /// (`q_offset + i + skv − sq_total`), as an exact signed integer.
    #[inline(always)]
    pub(crate) fn query_position(&self, i: usize) -> i64 {
        (self.q_offset + i) as i64 + self.skv as i64 - self.sq_total as i64
    }

    /// ALiBi's bias for query `i`, key `j` (0 without ALiBi).
    #[inline]
    pub(crate) fn alibi_bias(&self, i: usize, j: usize) -> T {
        match self.alibi {
            None => T::ZERO,
            Some(a) => {
                let d = a.key_position(j, self.skv) as i64 - self.query_position(i);
                a.slope * T::of(d as f64)
            }
        }
    }

    /// Index of query `i`, key `j` in the mask's matrices.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> usize {
        self.q_offset + i + j * self.sq_total
    }

    /// The keys the pattern lets query `i` see, `[lo, hi)`.
    #[inline]
    pub(crate) fn key_range(&self, i: usize) -> (usize, usize) {
        if i >= self.sq {
            return (0, 0);
        }
        self.pattern
            .key_range(self.q_offset + i, self.sq_total, self.skv)
    }

    /// Whether some part must be looked up per (query, key) pair.
    #[inline]
    pub(crate) fn is_dense(&self) -> bool {
        self.attend.is_some()
            || self.block.is_some()
            || self.pad.is_some()
            || self.additive.is_some()
            || self.alibi.is_some()
    }

    /// For a key inside the pattern's range: `None` if a matrix or padding part masks it,
    /// otherwise its additive bias (0 without one).
    #[inline]
    pub(crate) fn dense_entry(&self, i: usize, j: usize) -> Option<T> {
        let at = self.at(i, j);
        if self.pad.is_some_and(|p| p[j])
            || self.attend.is_some_and(|m| !m[at])
            || self.block.is_some_and(|m| m[at])
        {
            return None;
        }
        let bias = match self.additive {
            None => T::ZERO,
            // NaN fails the comparison, so NaN and −∞ both mask the key.
            Some(a) if a[at] > T::NEG_INFINITY => a[at],
            Some(_) => return None,
        };
        Some(match self.alibi {
            None => bias,
            Some(_) => bias + self.alibi_bias(i, j),
        })
    }
}

/// Per-call working memory of the attention kernels: the running output sums of a query tile
/// (`D` value columns × [`TILE_QUERIES`] lanes), and one block of scores and of key masks
/// ([`KEY_BLOCK`] × [`TILE_QUERIES`] each). `D` is the largest value width it serves.
#[derive(Clone, Debug, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: Float")]
pub(crate) struct Work<T, const D: usize> {
    pub(crate) acc: [[T; MQ_MAX]; D],
    pub(crate) p: [[T; MQ_MAX]; KB],
    pub(crate) allowed: [[T; MQ_MAX]; KB],
}

impl<T: Float, const D: usize> Work<T, D> {
    /// Zeroed working memory.
    #[must_use]
    pub(crate) const fn new() -> Self {
        Self {
            acc: [[T::ZERO; MQ_MAX]; D],
            p: [[T::ZERO; MQ_MAX]; KB],
            allowed: [[T::ZERO; MQ_MAX]; KB],
        }
    }

    /// The buffers, borrowed for one call.
    pub(crate) fn parts(&mut self) -> WorkRef<'_, T> {
        WorkRef {
            acc: self.acc.as_flattened_mut(),
            p: self.p.as_flattened_mut(),
            allowed: self.allowed.as_flattened_mut(),
        }
    }
}

/// [`Work`] as slices.
pub(crate) struct WorkRef<'a, T> {
    /// Running output sums: `dv` rows of [`MQ_MAX`].
    pub acc: &'a mut [T],
    /// A block of scores: [`KB`] rows of [`MQ_MAX`].
    pub p: &'a mut [T],
    /// A block of key masks: [`KB`] rows of [`MQ_MAX`].
    pub allowed: &'a mut [T],
}

impl<T> WorkRef<'_, T> {
    /// No working memory, for the paths that need none (attention with weights).
    pub(crate) fn empty() -> Self {
        WorkRef {
            acc: &mut [],
            p: &mut [],
            allowed: &mut [],
        }
    }

    /// A shorter-lived copy of the borrow.
    pub(crate) fn reborrow(&mut self) -> WorkRef<'_, T> {
        WorkRef {
            acc: self.acc,
            p: self.p,
            allowed: self.allowed,
        }
    }
}
