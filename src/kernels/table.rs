//! The table of kernel functions of one instruction set for one scalar type.
//!
//! An entry point resolves its table once ([`super::table`]) and passes it down: the layers,
//! the projections and the attention loop call through it with no further dispatch, and
//! threads that share a call's work share its table (so they run the caller's kernel).

use super::args::{
    GEMV_TOKENS, I8Out, LinearIo, PANEL_ROWS, Problem, QueryIo, WorkRef, check_weights,
};
use super::{Float, Kernel, scalar};
use crate::weight::sealed::Stored;
use crate::weight::{Weight, WeightKind};

/// A projection kernel: `(io, s, din, w, dout, bias, pack)`, see [`Table::linear`].
type LinearFn<T> = unsafe fn(LinearIo<'_, T>, usize, usize, &[T], usize, &[T], &mut [T]);

/// A projection kernel on `i8` weights: `(x, s, din, projections, pack)`, see
/// [`Table::linear_i8`].
type I8LinearFn<T> = unsafe fn(&[T], usize, usize, &mut [I8Out<'_, T>], &mut [T]);

/// One projection of [`Table::linear_shared`]: `W` (`bias.len()` features) in the tile
/// layout of [`crate::Linear`], its scales (empty unless `i8`), and its outputs.
pub(crate) struct Projection<'a, T, W> {
    pub w: &'a [W],
    pub bias: &'a [T],
    pub scales: &'a [T],
    pub out: &'a mut [T],
}

/// A projection kernel on half-precision bits: `(io, s, din, w, dout, bias, pack)`.
type HalfLinearFn<T> = unsafe fn(LinearIo<'_, T>, usize, usize, &[u16], usize, &[T], &mut [T]);

/// The kernel functions of one instruction set for one scalar type.
///
/// The function pointers are `unsafe` because they may use instructions the CPU must have;
/// a table is only reachable through [`super::table`], which checks that the CPU runs its
/// kernel, so calling through it is sound. Every other requirement (operand lengths, mask
/// shapes) is checked by the kernels themselves.
pub struct Table<T: 'static> {
    pub(super) kernel: Kernel,
    /// `out = x · Wᵀ + b` (or `+=`) with weights in `T`, in the tile layout.
    pub(super) linear: LinearFn<T>,
    /// Streaming attention for one head.
    pub(super) attention: unsafe fn(QueryIo<'_, T>, &Problem<'_, T>, WorkRef<'_, T>),
    /// Attention for one head that also writes the post-softmax weights.
    pub(super) weights: unsafe fn(QueryIo<'_, T>, &Problem<'_, T>, &mut [T]),
    /// `eˣ` in place.
    pub(super) exp: unsafe fn(&mut [T]),
    /// `tanh(x)` in place (the soft-cap's; only the tests call it on its own).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) tanh: unsafe fn(&mut [T]),
    /// Half-precision weight bits of one kind widened to `T`: `(kind, bits, strip width,
    /// out)`, a chunk of a strip `width` features wide (`bf16` rows paired as stored, see
    /// `kernels/layout.rs`) into plain tile rows.
    pub(super) widen: WidenFn<T>,
    /// `out = x · Wᵀ + b` (or `+=`) with `bf16` weights in `bf16` products, for the kernels
    /// that have them ([`Kernel::Avx512Bf16`], [`Kernel::NeonBf16`]); `None` where `bf16`
    /// weights are widened.
    pub(super) linear_bf16: Option<HalfLinearFn<T>>,
    /// `out_p = x · W_pᵀ + b_p` with `i8` weights for one to three projections of the same
    /// `s` tokens `x` (`s × din`, `din > 0`), each bit for bit as `scalar::linear_i8`, with
    /// `pack` of at least two words of a panel; the kernels that pack panels of tokens
    /// quantize them once for all the projections. `None` where the scalar kernel serves.
    pub(super) linear_i8: Option<I8LinearFn<T>>,
    /// `out = x · Wᵀ + b` (or `+=`) with `bf16` weights widened to `T` in registers, exact
    /// products as [`Table::linear_half`]'s but without its buffer and its block calls
    /// (the `f32` tables of [`Kernel::Avx512`], and so of [`Kernel::Avx512Bf16`] under
    /// `with_kernel`, and of [`Kernel::Avx2Fma`]); `None` where the weights are widened into
    /// a buffer. It needs `pack` to hold two input columns
    /// of a panel ([`PANEL_ROWS`]` · 2`).
    pub(super) linear_bf16_exact: Option<HalfLinearFn<T>>,
    /// `out = x · Wᵀ + b` (or `+=`) with half-precision weights of either kind, each storage
    /// tile's rows widened into a small buffer per panel of tokens, in the native GEMM's loop
    /// order (`vector::linear_widening`): the x86 kernels' path for `f16` weights (and for
    /// `bf16` ones where [`Table::linear_bf16_exact`] is `None`). `None` where
    /// [`Table::linear_half`] serves. It needs `pack` to hold two
    /// input columns of a panel.
    pub(super) linear_widening: Option<WideningFn<T>>,
    /// Streaming attention for one head in `bf16` products, for layers with `bf16` weights
    /// on the kernels that have them ([`Kernel::Avx512Bf16`]); `false` (nothing written) for
    /// a problem it does not take. `None` elsewhere.
    pub(super) attention_bf16: Option<ReducedAttentionFn<T>>,
    /// Streaming attention for one head in `i8` tile products, for layers with `i8` weights
    /// on the kernels that have them (AMX, under [`Kernel::Avx512Bf16`]); `false` (nothing
    /// written) for a problem it does not take. `None` elsewhere.
    pub(super) attention_i8: Option<ReducedAttentionFn<T>>,
    /// The FMA-peak loop: FLOPs done and a checksum.
    pub(super) fma_loop: unsafe fn(usize) -> (u64, T),
}

/// [`Table::linear_widening`]'s signature: `(kind, io, s, din, bits, dout, bias, pack)`.
pub(super) type WideningFn<T> =
    unsafe fn(WeightKind, LinearIo<'_, T>, usize, usize, &[u16], usize, &[T], &mut [T]);

/// [`Table::widen`]'s signature.
pub(super) type WidenFn<T> = unsafe fn(WeightKind, &[u16], usize, &mut [T]);

/// An attention kernel that may decline a problem: `(io, problem, work) -> taken`.
pub(super) type ReducedAttentionFn<T> =
    unsafe fn(&mut QueryIo<'_, T>, &Problem<'_, T>, &mut WorkRef<'_, T>) -> bool;

impl<T: Float> Table<T> {
    /// The kernel these functions belong to.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `out = x · Wᵀ + b` for `s` tokens (see [`LinearIo`]), `W` (`dout × din`) in the tile
    /// layout of [`crate::Linear`], stored as `W`. Half-precision weights go to the scalar
    /// kernel as they are (it widens each as it reads it); over more than two tokens, `bf16`
    /// weights to the kernel's `bf16` products or in-register widening where it has them, and
    /// the rest to its per-tile widening where it has one; everything else to the vector
    /// kernels a block of output features and input features at a time, widened into a
    /// buffer first ([`Table::linear_half`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear<W: Weight<T>>(
        &self,
        io: LinearIo<'_, T>,
        s: usize,
        din: usize,
        w: &[W],
        dout: usize,
        bias: &[T],
        scales: &[T],
        pack: &mut [T],
    ) {
        match W::stored(w) {
            Stored::Int8(q) => match (self.linear_i8, io) {
                (Some(f), LinearIo::Out { x, out }) if pack.len() >= 2 * PANEL_ROWS && din > 0 => {
                    assert_eq!(scales.len(), dout, "one scale per output feature");
                    let mut proj = [I8Out {
                        q,
                        scales,
                        bias,
                        out,
                    }];
                    // SAFETY: the table's kernel runs on this CPU.
                    unsafe { f(x, s, din, &mut proj, pack) }
                }
                (_, io) => scalar::linear_i8(io, s, din, q, dout, scales, bias),
            },
            // SAFETY: the table's kernel runs on this CPU (see the type's docs).
            Stored::Native(w) => unsafe { (self.linear)(io, s, din, w, dout, bias, pack) },
            Stored::Half(_) if self.kernel == Kernel::Scalar => {
                scalar::linear(io, s, din, w, dout, bias, pack);
            }
            Stored::Half(bits) => {
                // One or two tokens (a decoding step) stay on the widening path, whose GEMV
                // reads each weight once per token; with no inputs every output is its bias,
                // which the native kernel writes.
                let many = s > GEMV_TOKENS && din > 0;
                let bf16 = many && W::KIND == WeightKind::Bf16;
                let room = pack.len() >= 2 * PANEL_ROWS;
                match (
                    self.linear_bf16,
                    self.linear_bf16_exact,
                    self.linear_widening,
                ) {
                    // SAFETY: the table's kernel runs on this CPU.
                    (Some(f), _, _) if bf16 => unsafe { f(io, s, din, bits, dout, bias, pack) },
                    (_, Some(f), _) if bf16 && room => {
                        // SAFETY: as above.
                        unsafe { f(io, s, din, bits, dout, bias, pack) }
                    }
                    (_, _, Some(f)) if many && room => {
                        // SAFETY: as above.
                        unsafe { f(W::KIND, io, s, din, bits, dout, bias, pack) }
                    }
                    _ => self.linear_half(W::KIND, io, s, din, bits, dout, bias, pack),
                }
            }
        }
    }

    /// Whether [`Table::linear_shared`] does anything that three [`Table::linear`] calls do
    /// not: `i8` weights on a kernel that quantizes shared inputs once. Elsewhere callers keep
    /// their own calls, whose dimensions may be constants the compiler specialises (the
    /// scalar kernel on a Cortex-M executed 9 % more instructions through the shared call).
    pub(crate) fn shares_inputs<W: Weight<T>>(&self) -> bool {
        self.linear_i8.is_some() && W::KIND == WeightKind::I8
    }

    /// [`Table::linear`] for each projection of the same `s` tokens `x` (`s × din`): with
    /// `i8` weights on a kernel that has [`Table::linear_i8`], the tokens are quantized
    /// once for all three (each output bit for bit as its own call's). No tokens: nothing to
    /// do.
    pub(crate) fn linear_shared<W: Weight<T>>(
        &self,
        x: &[T],
        s: usize,
        din: usize,
        projs: [Projection<'_, T, W>; 3],
        pack: &mut [T],
    ) {
        if s == 0 {
            return;
        }
        let [a, b, c] = projs;
        match (
            self.linear_i8,
            W::stored(a.w),
            W::stored(b.w),
            W::stored(c.w),
        ) {
            (Some(f), Stored::Int8(qa), Stored::Int8(qb), Stored::Int8(qc))
                if pack.len() >= 2 * PANEL_ROWS && din > 0 =>
            {
                let mut outs = [(a, qa), (b, qb), (c, qc)].map(|(p, q)| I8Out {
                    q,
                    scales: p.scales,
                    bias: p.bias,
                    out: p.out,
                });
                // SAFETY: the table's kernel runs on this CPU.
                unsafe { f(x, s, din, &mut outs, pack) }
            }
            _ => {
                for p in [a, b, c] {
                    let io = LinearIo::Out { x, out: p.out };
                    self.linear(io, s, din, p.w, p.bias.len(), p.bias, p.scales, pack);
                }
            }
        }
    }

    /// Streaming attention for one head: `out[sq × dv] = softmax(scale·q·kᵀ + mask) · v`,
    /// never holding more than a block of scores.
    pub(crate) fn attention(&self, io: QueryIo<'_, T>, p: &Problem<'_, T>, work: WorkRef<'_, T>) {
        // SAFETY: the table's kernel runs on this CPU.
        unsafe { (self.attention)(io, p, work) }
    }

    /// [`Table::attention`], in `bf16` or `i8` products when `reduced` names that storage (the
    /// layer stores such weights) and the kernel has those products for this problem (see
    /// [`crate::Weight`]).
    pub(crate) fn attention_reduced(
        &self,
        reduced: Option<WeightKind>,
        mut io: QueryIo<'_, T>,
        p: &Problem<'_, T>,
        mut work: WorkRef<'_, T>,
    ) {
        let kernel = match reduced {
            Some(WeightKind::Bf16) => self.attention_bf16,
            Some(WeightKind::I8) => self.attention_i8,
            _ => None,
        };
        if let Some(f) = kernel
            // SAFETY: the table's kernel runs on this CPU.
            && unsafe { f(&mut io, p, &mut work) }
        {
            return;
        }
        self.attention(io, p, work);
    }

    /// Attention for one head that also writes the post-softmax weights (`sq × skv`,
    /// column-major).
    pub(crate) fn attention_with_weights(
        &self,
        io: QueryIo<'_, T>,
        p: &Problem<'_, T>,
        weights: &mut [T],
    ) {
        // SAFETY: the table's kernel runs on this CPU.
        unsafe { (self.weights)(io, p, weights) }
    }

    /// `eˣ` over a slice with this kernel's `exp` (the scalar kernel uses the platform's).
    pub(crate) fn exp(&self, xs: &mut [T]) {
        // SAFETY: the table's kernel runs on this CPU.
        unsafe { (self.exp)(xs) }
    }

    /// `tanh(x)` over a slice with this kernel's `tanh` (the scalar kernel uses the
    /// platform's), as the soft-cap applies it.
    #[cfg(test)]
    pub(crate) fn tanh(&self, xs: &mut [T]) {
        // SAFETY: the table's kernel runs on this CPU.
        unsafe { (self.tanh)(xs) }
    }

    /// The FMA-peak loop on this kernel's vectors.
    pub(crate) fn fma_loop(&self, rounds: usize) -> (u64, T) {
        // SAFETY: the table's kernel runs on this CPU.
        unsafe { (self.fma_loop)(rounds) }
    }

    /// [`Table::linear`] for half-precision weights on a vector kernel. Blocks of
    /// [`HALF_STRIPS`] strips of 12 output features (the last, partial strip alone) are
    /// widened a chunk of input features at a time into a buffer of [`HALF_BUF`] scalars: each
    /// strip's chunk is contiguous in the tile layout, so the buffer holds the block in the
    /// tile layout of a `kc`-input matrix, and one call of the native GEMM multiplies it by the
    /// matching input columns (the first chunk writing the block's outputs, the others adding
    /// to them). A block of several strips lets the GEMM pack each panel of inputs once for
    /// all of them; one strip per call re-packed the inputs for every 12 outputs and ran
    /// 26–35 % slower than `f32` weights. Never inlined: the buffer must not join the frames
    /// of the native path.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn linear_half(
        &self,
        kind: WeightKind,
        io: LinearIo<'_, T>,
        s: usize,
        din: usize,
        w: &[u16],
        dout: usize,
        bias: &[T],
        pack: &mut [T],
    ) {
        const STRIP: usize = super::layout::WEIGHT_TILE;
        let (x, out, add) = io.checked(s, din, dout);
        check_weights(w, bias, din, dout);
        let mut aligned = WidenBuf([T::ZERO; HALF_BUF]);
        let buf = &mut aligned.0;
        let full = dout / STRIP * STRIP;
        // Blocks of up to HALF_STRIPS strips × `kc` inputs, widened into `buf` in the tile
        // layout of a `kc`-input, `cols`-output matrix (each strip's chunk is contiguous in
        // the stored layout), then one GEMM call per block.
        let kc_max = (HALF_BUF / (HALF_STRIPS * STRIP)).min(din);
        let mut t0 = 0;
        while t0 < dout {
            // Full strips of this block, then (alone) the last partial strip.
            let cols = if t0 < full {
                (HALF_STRIPS * STRIP).min(full - t0)
            } else {
                dout - full
            };
            // Even, so that a chunk never splits a pair of `bf16` rows.
            let kc_block = if t0 < full {
                kc_max
            } else {
                (HALF_BUF / cols.max(1) / 2 * 2).min(din)
            };
            let out_block = &mut out[t0 * s..(t0 + cols) * s];
            let mut pc = 0;
            while pc < din {
                let kc = kc_block.min(din - pc);
                let mut at = 0;
                let mut c0 = 0;
                while c0 < cols {
                    let sc = STRIP.min(cols - c0);
                    // Strip starting at feature t0 + c0: `din × sc` values at (t0 + c0)·din.
                    let base = (t0 + c0) * din;
                    let n = kc * sc;
                    let src = &w[base + pc * sc..base + pc * sc + n];
                    // SAFETY: the table's kernel runs on this CPU.
                    unsafe { (self.widen)(kind, src, sc, &mut buf[at..at + n]) };
                    at += n;
                    c0 += sc;
                }
                let x_chunk = &x[pc * s..(pc + kc) * s];
                let io = if pc == 0 && !add {
                    LinearIo::Out {
                        x: x_chunk,
                        out: &mut *out_block,
                    }
                } else {
                    LinearIo::Add {
                        x: x_chunk,
                        out: &mut *out_block,
                    }
                };
                let b = &bias[t0..t0 + cols];
                // SAFETY: the table's kernel runs on this CPU.
                unsafe { (self.linear)(io, s, kc, &buf[..at], cols, b, pack) };
                pc += kc;
            }
            t0 += cols;
        }
    }
}

/// Strips of 12 output features widened per block of [`Table::linear_half`] (8 measured
/// fastest of 2, 4, 8 and 22 on `Linear<256, 256>` over 128 tokens, with the `bf16` strips
/// widened by AVX2: 1.16, 1.10, 1.075 and 1.067 × the time of `f32` weights, the last with a
/// buffer of the whole matrix, 264 KiB).
const HALF_STRIPS: usize = 8;

/// [`Table::linear_half`]'s widening buffer, on a cache-line boundary.
#[repr(C, align(64))]
struct WidenBuf<T>([T; HALF_BUF]);

/// Scalars in [`Table::linear_half`]'s widening buffer on the stack (24 KiB of `f32`): a
/// block of 96 output features over 64 input features at a time.
const HALF_BUF: usize = 6144;

/// [`Table::widen`] value by value, for every kernel without a vector form.
pub(super) fn widen_portable<T: Float>(kind: WeightKind, src: &[u16], width: usize, dst: &mut [T]) {
    match kind {
        WeightKind::Bf16 => widen_bf16_paired(src, width, dst),
        _ => widen_f16_portable(src, dst),
    }
}

/// A chunk of a `bf16` strip `width` features wide, its rows paired (see
/// `kernels/layout.rs`), widened to `T` in plain tile rows (exact: a `bf16` is the upper half
/// of an `f32`). An odd last row (only at the end of the inputs) is not paired.
pub(super) fn widen_bf16_paired<T: Float>(src: &[u16], width: usize, dst: &mut [T]) {
    let widen = |b: u16| T::of(f64::from(f32::from_bits(u32::from(b) << 16)));
    let rows = src.len() / width.max(1);
    let pairs = rows / 2;
    for q in 0..pairs {
        let pair = &src[2 * q * width..2 * (q + 1) * width];
        let (even, odd) = dst[2 * q * width..2 * (q + 1) * width].split_at_mut(width);
        for (j, w) in pair.chunks_exact(2).enumerate() {
            even[j] = widen(w[0]);
            odd[j] = widen(w[1]);
        }
    }
    for i in 2 * pairs * width..src.len() {
        dst[i] = widen(src[i]);
    }
}

/// `f16` bits widened to `T`, value by value (exact).
fn widen_f16_portable<T: Float>(src: &[u16], dst: &mut [T]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = T::of(f64::from(half::f16::from_bits(b).to_f32()));
    }
}
