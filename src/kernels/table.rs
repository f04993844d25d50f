//! The table of kernel functions of one instruction set for one scalar type.
//!
//! An entry point resolves its table once ([`super::table`]) and passes it down: the layers,
//! the projections and the attention loop call through it with no further dispatch, and
//! threads that share a call's work share its table (so they run the caller's kernel).

use super::args::{LinearIo, Problem, QueryIo, WorkRef, check_weights};
use super::{Float, Kernel, scalar};
use crate::weight::sealed::Stored;
use crate::weight::{Weight, WeightKind};

/// A projection kernel: `(io, s, din, w, dout, bias, pack)`, see [`Table::linear`].
type LinearFn<T> = unsafe fn(LinearIo<'_, T>, usize, usize, &[T], usize, &[T], &mut [T]);

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
    /// `f16` bits widened to `T`.
    pub(super) widen_f16: unsafe fn(&[u16], &mut [T]),
    /// The FMA-peak loop: FLOPs done and a checksum.
    pub(super) fma_loop: unsafe fn(usize) -> (u64, T),
}

impl<T: Float> Table<T> {
    /// The kernel these functions belong to.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `out = x · Wᵀ + b` for `s` tokens (see [`LinearIo`]), `W` (`dout × din`) in the tile
    /// layout of [`crate::Linear`], stored as `W`. Half-precision weights go to the scalar
    /// kernel as they are (it widens each as it reads it) and to the vector kernels a strip of
    /// 12 output features and at most [`HALF_CHUNK`] input features at a time, widened into a
    /// buffer first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear<W: Weight<T>>(
        &self,
        io: LinearIo<'_, T>,
        s: usize,
        din: usize,
        w: &[W],
        dout: usize,
        bias: &[T],
        pack: &mut [T],
    ) {
        match W::stored(w) {
            // SAFETY: the table's kernel runs on this CPU (see the type's docs).
            Stored::Native(w) => unsafe { (self.linear)(io, s, din, w, dout, bias, pack) },
            Stored::Half(_) if self.kernel == Kernel::Scalar => {
                scalar::linear(io, s, din, w, dout, bias, pack);
            }
            Stored::Half(bits) => self.linear_half(W::KIND, io, s, din, bits, dout, bias, pack),
        }
    }

    /// Streaming attention for one head: `out[sq × dv] = softmax(scale·q·kᵀ + mask) · v`,
    /// never holding more than a block of scores.
    pub(crate) fn attention(&self, io: QueryIo<'_, T>, p: &Problem<'_, T>, work: WorkRef<'_, T>) {
        // SAFETY: the table's kernel runs on this CPU.
        unsafe { (self.attention)(io, p, work) }
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

    /// [`Table::linear`] for half-precision weights on a vector kernel: each strip of 12
    /// output features (the tile layout keeps a strip's `din × 12` weights together) is
    /// widened [`HALF_CHUNK`] input features at a time and multiplied by the matching input
    /// columns, the first chunk writing the strip's outputs and the others adding to them.
    /// Never inlined: its widening buffer (`12 · HALF_CHUNK` scalars) must not join the
    /// frames of the native path.
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
        let mut buf = [T::ZERO; STRIP * HALF_CHUNK];
        let full = dout / STRIP * STRIP;
        let mut t0 = 0;
        while t0 < dout {
            let (cols, base) = if t0 < full {
                (STRIP, t0 * din)
            } else {
                (dout - full, full * din)
            };
            let out_strip = &mut out[t0 * s..(t0 + cols) * s];
            let mut pc = 0;
            while pc < din {
                let kc = HALF_CHUNK.min(din - pc);
                let n = kc * cols;
                let src = &w[base + pc * cols..base + pc * cols + n];
                match kind {
                    WeightKind::Bf16 => widen_bf16(src, &mut buf[..n]),
                    // SAFETY: the table's kernel runs on this CPU.
                    _ => unsafe { (self.widen_f16)(src, &mut buf[..n]) },
                }
                let x_chunk = &x[pc * s..(pc + kc) * s];
                // A strip of `cols` features over `kc` inputs is itself in the tile layout;
                // the bias enters with the first chunk only (`Add` never reads it).
                let io = if pc == 0 && !add {
                    LinearIo::Out {
                        x: x_chunk,
                        out: &mut *out_strip,
                    }
                } else {
                    LinearIo::Add {
                        x: x_chunk,
                        out: &mut *out_strip,
                    }
                };
                let b = &bias[t0..t0 + cols];
                // SAFETY: the table's kernel runs on this CPU.
                unsafe { (self.linear)(io, s, kc, &buf[..n], cols, b, pack) };
                pc += kc;
            }
            t0 += cols;
        }
    }
}

/// Input features per widened chunk of a half-precision strip (a buffer of `12 ·` this many
/// scalars on the stack).
pub(crate) const HALF_CHUNK: usize = 256;

/// `bf16` bits widened to `T` (exact: a `bf16` is the upper half of an `f32`).
fn widen_bf16<T: Float>(src: &[u16], dst: &mut [T]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = T::of(f64::from(f32::from_bits(u32::from(b) << 16)));
    }
}

/// `f16` bits widened to `T`, value by value (exact).
pub(super) fn widen_f16_portable<T: Float>(src: &[u16], dst: &mut [T]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = T::of(f64::from(half::f16::from_bits(b).to_f32()));
    }
}
