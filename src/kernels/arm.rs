//! aarch64 NEON (Advanced SIMD): 4 `f32` or 2 `f64` lanes per vector, 32 registers. NEON is
//! part of the aarch64 baseline, so no detection is needed: the [`Neon`] token exists on every
//! aarch64 build, and the generic kernels of `vector/` are compiled for it directly.

#![allow(clippy::inline_always)]

use core::arch::aarch64::*;

use super::simd::simd_impls;
use super::table::{Table, widen_portable};
use super::{Kernel, arm_bf16, arm_int8, vector};

/// Whether the CPU has the BF16 extension (`BFDOT`) and the dot-product extension (`SDOT`),
/// for [`Kernel::NeonBf16`]: with `std` detected at run time, without it known only when the
/// build targets both. (Every core with BF16, Armv8.6-A and later, has the dot product.)
pub(crate) fn bf16_dotprod_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
            && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "bf16", target_feature = "dotprod"))
    }
}

/// Proof that the CPU runs NEON: every aarch64 CPU does (the target's baseline).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

/// NEON with 4 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF32(Neon);

/// NEON with 2 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF64(Neon);

// The two `Simd` implementations, by `simd_impls!` from one table (f32 and f64 columns).
// Every `unsafe` block it makes calls NEON intrinsics, which are sound to execute exactly when
// the CPU has NEON: `self` holds a `Neon` token, which exists only on targets whose baseline
// includes it. The loads and stores additionally rely on their own `# Safety` contracts (the
// caller's pointers).

simd_impls! {
    impl Simd for NeonF32, NeonF64;
    type E = f32, f64;
    type V = float32x4_t, float64x2_t;
    type M = uint32x4_t, uint64x2_t;
    const LANES = 4, 2;
    const TILE = 12, 12;
    splat(x): vdupq_n_f32, vdupq_n_f64;
    add(a, b): vaddq_f32, vaddq_f64;
    sub(a, b): vsubq_f32, vsubq_f64;
    mul(a, b): vmulq_f32, vmulq_f64;
    div(a, b): vdivq_f32, vdivq_f64;
    fma(a, b, c): { vfmaq_f32(c, a, b) }, { vfmaq_f64(c, a, b) };
    // `a > b ? a : b`, so a NaN in either gives `b`: the x86 MAXPS rule the kernels are
    // written to.
    max(a, b): { vbslq_f32(vcgtq_f32(a, b), a, b) }, { vbslq_f64(vcgtq_f64(a, b), a, b) };
    select(m, a, b): vbslq_f32, vbslq_f64;
    keep(a, m): {
        vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), m))
    }, {
        vreinterpretq_f64_u64(vandq_u64(vreinterpretq_u64_f64(a), m))
    };
    lt(a, b): vcltq_f32, vcltq_f64;
    ge(a, b): vcgeq_f32, vcgeq_f64;
    eq(a, b): vceqq_f32, vceqq_f64;
    and(a, b): vandq_u32, vandq_u64;
    // BIC computes `a AND NOT b`.
    and_not(a, b): vbicq_u32, vbicq_u64;
    all(m): {
        vminvq_u32(m) == u32::MAX
    }, {
        vgetq_lane_u64::<0>(m) == u64::MAX && vgetq_lane_u64::<1>(m) == u64::MAX
    };
    round(v): vrndnq_f32, vrndnq_f64;
    // 2ⁿ: the biased exponent `e = n + bias` shifted into place.
    pow2(n): {
        let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
    }, {
        let e = vaddq_s64(vcvtq_s64_f64(n), vdupq_n_s64(1023));
        vreinterpretq_f64_s64(vshlq_n_s64::<52>(e))
    };
    reduce_add(v): vaddvq_f32, vaddvq_f64;
    load(p): vld1q_f32, vld1q_f64;
    // NEON has no masked load: lane by lane into zeros (a copy of `n` values through a buffer
    // would be a call to `memcpy` per load); lane `i` is read only when `i < n`.
    load_partial(p, n): {
        debug_assert!(n <= 4);
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
    }, {
        debug_assert!(n <= 2);
        match n {
            0 => vdupq_n_f64(0.0),
            1 => vld1q_lane_f64::<0>(p, vdupq_n_f64(0.0)),
            _ => vld1q_f64(p),
        }
    };
    store(p, v): vst1q_f32, vst1q_f64;
    broadcast(p): vld1q_dup_f32, vld1q_dup_f64;
    // Booleans (0 or 1) widened to the lanes and compared with 0.
    load_bools(p): {
        let b = [
            u32::from(*p),
            u32::from(*p.add(1)),
            u32::from(*p.add(2)),
            u32::from(*p.add(3)),
        ];
        vcgtq_u32(vld1q_u32(b.as_ptr()), vdupq_n_u32(0))
    }, {
        let b = [u64::from(*p), u64::from(*p.add(1))];
        vcgtq_u64(vld1q_u64(b.as_ptr()), vdupq_n_u64(0))
    };
}

// ---- Kernel tables -------------------------------------------------------------------------
//
// NEON is the baseline: the generic kernels compile for it as plain functions
// (`vector::table!` with no `#[target_feature]`).

vector::table! {
    mod neon_f32: f32 = NeonF32(Neon(())), Kernel::Neon, widen_portable;
    mod neon_f64: f64 = NeonF64(Neon(())), Kernel::Neon, widen_portable;
}

/// [`Kernel::NeonBf16`]'s `f32` table: NEON's, with the `bf16` projections (`BFDOT`) and the
/// `i8` ones (`SDOT`).
static NEON_BF16_F32: Table<f32> = Table {
    kernel: Kernel::NeonBf16,
    linear_bf16: Some(arm_bf16::linear),
    linear_i8: Some(arm_int8::linear),
    ..neon_f32::TABLE
};

/// [`Kernel::NeonBf16`]'s `f64` table: NEON's (`bf16` weights compute in `f32` only).
static NEON_BF16_F64: Table<f64> = Table {
    kernel: Kernel::NeonBf16,
    ..neon_f64::TABLE
};

/// The `f32` table of an aarch64 kernel.
///
/// # Safety
/// The CPU must run `kernel` ([`Kernel::Neon`], the aarch64 baseline, or
/// [`Kernel::NeonBf16`]: BF16 and the dot product).
pub(crate) unsafe fn table_f32(kernel: Kernel) -> &'static Table<f32> {
    match kernel {
        Kernel::NeonBf16 => &NEON_BF16_F32,
        _ => &neon_f32::TABLE,
    }
}

/// The `f64` table of an aarch64 kernel.
///
/// # Safety
/// As [`table_f32`].
pub(crate) unsafe fn table_f64(kernel: Kernel) -> &'static Table<f64> {
    match kernel {
        Kernel::NeonBf16 => &NEON_BF16_F64,
        _ => &neon_f64::TABLE,
    }
}
