//! aarch64 NEON (Advanced SIMD): 4 `f32` or 2 `f64` lanes per vector, 32 registers. NEON is
//! part of the aarch64 baseline, so no detection is needed: the [`Neon`] token exists on every
//! aarch64 build, and the generic kernels of `vector/` are compiled for it directly.

#![allow(clippy::inline_always)]

use core::arch::aarch64::*;

use super::args::{LinearIo, Problem, QueryIo, WorkRef};
use super::simd::{Simd, one_intrinsic_each};
use super::table::{Table, widen_f16_portable};
use super::{Kernel, vector};

/// Proof that the CPU runs NEON: every aarch64 CPU does (the target's baseline).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

/// NEON with 4 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF32(Neon);

/// NEON with 2 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF64(Neon);

/// `c + a·b` in one rounding, with the arguments in `Simd::fma`'s order.
#[inline(always)]
unsafe fn fma_f32(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is the target's baseline.
    unsafe { vfmaq_f32(c, a, b) }
}

/// `c + a·b` in one rounding, with the arguments in `Simd::fma`'s order.
#[inline(always)]
unsafe fn fma_f64(a: float64x2_t, b: float64x2_t, c: float64x2_t) -> float64x2_t {
    // SAFETY: NEON is the target's baseline.
    unsafe { vfmaq_f64(c, a, b) }
}

// Every `unsafe` block in the two `impl`s below calls NEON intrinsics, which are sound to
// execute exactly when the CPU has NEON: `self` holds a `Neon` token, which exists only on
// targets whose baseline includes it. The loads and stores additionally rely on their own
// `# Safety` contracts (the caller's pointers).

impl Simd for NeonF32 {
    type E = f32;
    type V = float32x4_t;
    type M = uint32x4_t;
    const LANES: usize = 4;
    const TILE: usize = 12;

    one_intrinsic_each! {
        splat: vdupq_n_f32,
        load: vld1q_f32,
        store: vst1q_f32,
        fma: fma_f32,
        ops: [add: vaddq_f32, sub: vsubq_f32, mul: vmulq_f32, div: vdivq_f32],
        cmps: [lt: vcltq_f32, ge: vcgeq_f32, eq: vceqq_f32],
    }
    #[inline(always)]
    fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token. `a > b ? a : b`, so a NaN in either gives `b`:
        // the x86 MAXPS rule the kernels are written to.
        unsafe { vbslq_f32(vcgtq_f32(a, b), a, b) }
    }
    #[inline(always)]
    fn select(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vbslq_f32(m, a, b) }
    }
    #[inline(always)]
    fn keep(self, a: float32x4_t, m: uint32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), m)) }
    }
    #[inline(always)]
    fn and(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vandq_u32(a, b) }
    }
    #[inline(always)]
    fn and_not(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON, proven by the token. BIC computes `a AND NOT b`.
        unsafe { vbicq_u32(a, b) }
    }
    #[inline(always)]
    fn all(self, m: uint32x4_t) -> bool {
        // SAFETY: NEON, proven by the token.
        unsafe { vminvq_u32(m) == u32::MAX }
    }
    #[inline(always)]
    fn round(self, v: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vrndnq_f32(v) }
    }
    #[inline(always)]
    fn pow2(self, n: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe {
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
                vcvtq_s32_f32(n),
                vdupq_n_s32(127),
            )))
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: float32x4_t) -> f32 {
        // SAFETY: NEON, proven by the token.
        unsafe { vaddvq_f32(v) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> float32x4_t {
        debug_assert!(n <= 4);
        // NEON has no masked load: lane by lane into zeros (a copy of `n` values through a
        // buffer would be a call to `memcpy` per load).
        // SAFETY: NEON (token); the caller guarantees `n` readable floats at `p`, and lane `i`
        // is read only when `i < n`.
        unsafe {
            if n >= 4 {
                return vld1q_f32(p);
            }
            let mut v = vdupq_n_f32(0.0);
            if n > 0 {
                v = vld1q_lane_f32::<0>(p, v);
            }
            if n > 1 {
                v = vld1q_lane_f32::<1>(p.add(1), v);
            }
            if n > 2 {
                v = vld1q_lane_f32::<2>(p.add(2), v);
            }
            v
        }
    }
    #[inline(always)]
    unsafe fn broadcast(self, p: *const f32) -> float32x4_t {
        // SAFETY: NEON (token); the caller guarantees `p` is readable.
        unsafe { vld1q_dup_f32(p) }
    }
    #[inline(always)]
    unsafe fn load_bools(self, p: *const bool) -> uint32x4_t {
        // SAFETY: the caller guarantees 4 readable booleans (0 or 1) at `p`; NEON (token).
        unsafe {
            let b = [
                u32::from(*p),
                u32::from(*p.add(1)),
                u32::from(*p.add(2)),
                u32::from(*p.add(3)),
            ];
            vcgtq_u32(vld1q_u32(b.as_ptr()), vdupq_n_u32(0))
        }
    }
}

impl Simd for NeonF64 {
    type E = f64;
    type V = float64x2_t;
    type M = uint64x2_t;
    const LANES: usize = 2;
    const TILE: usize = 12;

    one_intrinsic_each! {
        splat: vdupq_n_f64,
        load: vld1q_f64,
        store: vst1q_f64,
        fma: fma_f64,
        ops: [add: vaddq_f64, sub: vsubq_f64, mul: vmulq_f64, div: vdivq_f64],
        cmps: [lt: vcltq_f64, ge: vcgeq_f64, eq: vceqq_f64],
    }
    #[inline(always)]
    fn max(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token. `a > b ? a : b` (see the f32 impl).
        unsafe { vbslq_f64(vcgtq_f64(a, b), a, b) }
    }
    #[inline(always)]
    fn select(self, m: uint64x2_t, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vbslq_f64(m, a, b) }
    }
    #[inline(always)]
    fn keep(self, a: float64x2_t, m: uint64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vreinterpretq_f64_u64(vandq_u64(vreinterpretq_u64_f64(a), m)) }
    }
    #[inline(always)]
    fn and(self, a: uint64x2_t, b: uint64x2_t) -> uint64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vandq_u64(a, b) }
    }
    #[inline(always)]
    fn and_not(self, a: uint64x2_t, b: uint64x2_t) -> uint64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vbicq_u64(a, b) }
    }
    #[inline(always)]
    fn all(self, m: uint64x2_t) -> bool {
        // SAFETY: NEON, proven by the token.
        unsafe { vgetq_lane_u64::<0>(m) == u64::MAX && vgetq_lane_u64::<1>(m) == u64::MAX }
    }
    #[inline(always)]
    fn round(self, v: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vrndnq_f64(v) }
    }
    #[inline(always)]
    fn pow2(self, n: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe {
            vreinterpretq_f64_s64(vshlq_n_s64::<52>(vaddq_s64(
                vcvtq_s64_f64(n),
                vdupq_n_s64(1023),
            )))
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: float64x2_t) -> f64 {
        // SAFETY: NEON, proven by the token.
        unsafe { vaddvq_f64(v) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f64, n: usize) -> float64x2_t {
        debug_assert!(n <= 2);
        // SAFETY: NEON (token); the caller guarantees `n` readable doubles at `p`, and lane
        // `i` is read only when `i < n`.
        unsafe {
            match n {
                0 => vdupq_n_f64(0.0),
                1 => vld1q_lane_f64::<0>(p, vdupq_n_f64(0.0)),
                _ => vld1q_f64(p),
            }
        }
    }
    #[inline(always)]
    unsafe fn broadcast(self, p: *const f64) -> float64x2_t {
        // SAFETY: NEON (token); the caller guarantees `p` is readable.
        unsafe { vld1q_dup_f64(p) }
    }
    #[inline(always)]
    unsafe fn load_bools(self, p: *const bool) -> uint64x2_t {
        // SAFETY: the caller guarantees 2 readable booleans at `p`; NEON (token).
        unsafe {
            let b = [u64::from(*p), u64::from(*p.add(1))];
            vcgtq_u64(vld1q_u64(b.as_ptr()), vdupq_n_u64(0))
        }
    }
}

// ---- Kernel tables -------------------------------------------------------------------------
//
// NEON is the baseline: the generic kernels compile for it as plain functions.

/// One kernel table: the generic kernels compiled with the `Simd` implementation `$simd`.
macro_rules! table {
    ($module:ident, $e:ty, $simd:ident) => {
        mod $module {
            use super::*;

            fn linear(
                io: LinearIo<'_, $e>,
                s: usize,
                din: usize,
                w: &[$e],
                dout: usize,
                bias: &[$e],
                pack: &mut [$e],
            ) {
                vector::linear($simd(Neon(())), io, s, din, w, dout, bias, pack)
            }

            fn attention(io: QueryIo<'_, $e>, p: &Problem<'_, $e>, work: WorkRef<'_, $e>) {
                vector::attention($simd(Neon(())), io, p, work)
            }

            fn weights(io: QueryIo<'_, $e>, p: &Problem<'_, $e>, weights: &mut [$e]) {
                vector::attention_with_weights($simd(Neon(())), io, p, weights)
            }

            fn exp(xs: &mut [$e]) {
                vector::exp_slice($simd(Neon(())), xs)
            }

            fn fma_loop(rounds: usize) -> (u64, $e) {
                vector::fma_loop($simd(Neon(())), rounds)
            }

            pub(super) static TABLE: Table<$e> = Table {
                kernel: Kernel::Neon,
                linear,
                attention,
                weights,
                exp,
                fma_loop,
                widen_f16: widen_f16_portable,
            };
        }
    };
}

table!(neon_f32, f32, NeonF32);
table!(neon_f64, f64, NeonF64);

/// The `f32` NEON table.
///
/// # Safety
/// None beyond the target's (NEON is the aarch64 baseline); `unsafe` like the x86 tables'.
pub(crate) unsafe fn table_f32(_: Kernel) -> &'static Table<f32> {
    &neon_f32::TABLE
}

/// The `f64` NEON table.
///
/// # Safety
/// As [`table_f32`].
pub(crate) unsafe fn table_f64(_: Kernel) -> &'static Table<f64> {
    &neon_f64::TABLE
}
