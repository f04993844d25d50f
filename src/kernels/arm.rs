//! aarch64 NEON (Advanced SIMD): 4 `f32` or 2 `f64` lanes per vector, 32 registers. NEON is
//! part of the aarch64 baseline, so no detection is needed: the [`Neon`] token exists on every
//! aarch64 build, and the generic kernels of `vector.rs` are compiled for it directly.

#![allow(clippy::inline_always)]

use core::arch::aarch64::*;

use super::simd::Simd;
use super::vector;
use super::{Dims, LinearIo, MaskView, WorkRef};
use crate::Float;

/// Proof that the CPU runs NEON: every aarch64 CPU does (the target's baseline).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    /// The token (NEON is always there on aarch64).
    pub(crate) fn detect() -> Option<Self> {
        cfg!(target_feature = "neon").then_some(Neon(()))
    }
}

/// NEON with 4 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF32(pub(crate) Neon);

/// NEON with 2 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF64(pub(crate) Neon);

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

    #[inline(always)]
    fn splat(self, x: f32) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: NEON, proven by the token. `vfmaq_f32(c, a, b)` is `c + a·b`, one rounding.
        unsafe { vfmaq_f32(c, a, b) }
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
    fn lt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vcltq_f32(a, b) }
    }
    #[inline(always)]
    fn ge(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vcgeq_f32(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vceqq_f32(a, b) }
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
    unsafe fn load(self, p: *const f32) -> float32x4_t {
        // SAFETY: NEON (token); the caller guarantees 4 readable floats at `p`.
        unsafe { vld1q_f32(p) }
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
    unsafe fn store(self, p: *mut f32, v: float32x4_t) {
        // SAFETY: NEON (token); the caller guarantees 4 writable floats at `p`.
        unsafe { vst1q_f32(p, v) }
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

    #[inline(always)]
    fn splat(self, x: f64) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vdupq_n_f64(x) }
    }
    #[inline(always)]
    fn add(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vaddq_f64(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vsubq_f64(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vmulq_f64(a, b) }
    }
    #[inline(always)]
    fn div(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vdivq_f64(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: float64x2_t, b: float64x2_t, c: float64x2_t) -> float64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vfmaq_f64(c, a, b) }
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
    fn lt(self, a: float64x2_t, b: float64x2_t) -> uint64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vcltq_f64(a, b) }
    }
    #[inline(always)]
    fn ge(self, a: float64x2_t, b: float64x2_t) -> uint64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vcgeq_f64(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: float64x2_t, b: float64x2_t) -> uint64x2_t {
        // SAFETY: NEON, proven by the token.
        unsafe { vceqq_f64(a, b) }
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
    unsafe fn load(self, p: *const f64) -> float64x2_t {
        // SAFETY: NEON (token); the caller guarantees 2 readable doubles at `p`.
        unsafe { vld1q_f64(p) }
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
    unsafe fn store(self, p: *mut f64, v: float64x2_t) {
        // SAFETY: NEON (token); the caller guarantees 2 writable doubles at `p`.
        unsafe { vst1q_f64(p, v) }
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

use super::simd::{cast, io_as, mask_as, work_as};

/// `linear` on NEON.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear<T: Float>(
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[T],
    dout: usize,
    bias: &[T],
    pack: &mut [T],
) {
    macro_rules! go {
        ($simd:expr, $e:ty) => {
            vector::linear(
                $simd,
                io_as(io),
                s,
                din,
                cast!($e, w),
                dout,
                cast!($e, bias),
                cast!(mut $e, pack),
            )
        };
    }
    let token = Neon::detect().expect("NEON is the aarch64 baseline");
    if T::BYTES == 4 {
        go!(NeonF32(token), f32)
    } else {
        go!(NeonF64(token), f64)
    }
}

/// `attention` on NEON; returns whether every output is finite.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    out: &mut [T],
    work: WorkRef<'_, T>,
    vscale: T,
) -> bool {
    macro_rules! go {
        ($simd:expr, $e:ty) => {
            vector::attention(
                $simd,
                cast!($e, q),
                cast!($e, k),
                cast!($e, v),
                dims,
                <$e>::of(scale.to_f64()),
                &mask_as(mask),
                cast!(mut $e, out),
                work_as(work),
                <$e>::of(vscale.to_f64()),
            )
        };
    }
    let token = Neon::detect().expect("NEON is the aarch64 baseline");
    if T::BYTES == 4 {
        go!(NeonF32(token), f32)
    } else {
        go!(NeonF64(token), f64)
    }
}

/// `attention_with_weights` on NEON.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with_weights<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    out: &mut [T],
    weights: &mut [T],
) {
    macro_rules! go {
        ($simd:expr, $e:ty) => {
            vector::attention_with_weights(
                $simd,
                cast!($e, q),
                cast!($e, k),
                cast!($e, v),
                dims,
                <$e>::of(scale.to_f64()),
                &mask_as(mask),
                cast!(mut $e, out),
                cast!(mut $e, weights),
            )
        };
    }
    let token = Neon::detect().expect("NEON is the aarch64 baseline");
    if T::BYTES == 4 {
        go!(NeonF32(token), f32)
    } else {
        go!(NeonF64(token), f64)
    }
}

/// `eˣ` over a slice with the NEON `exp`.
pub(crate) fn exp_in_place<T: Float>(xs: &mut [T]) {
    let token = Neon::detect().expect("NEON is the aarch64 baseline");
    if T::BYTES == 4 {
        vector::exp_slice(NeonF32(token), cast!(mut f32, xs));
    } else {
        vector::exp_slice(NeonF64(token), cast!(mut f64, xs));
    }
}
