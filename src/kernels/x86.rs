//! The x86-64 instruction sets: AVX2 + FMA (8 `f32` or 4 `f64` lanes per vector, 16
//! registers) and AVX-512F (16 `f32` or 8 `f64` lanes, 32 registers and mask registers), and
//! their four kernel tables.
//!
//! [`Avx2`] and [`Avx512`] are proof tokens: a value exists only where the CPU runs the
//! instruction set ([`avx2_available`], [`avx512_available`]: with `std` through
//! `is_x86_feature_detected!`; without, `cfg!(target_feature)` when the build already assumes
//! it, otherwise CPUID and XGETBV directly). The [`Simd`](super::simd::Simd) implementations
//! hold one, so their arithmetic is safe; the kernel entry points at the bottom are the
//! `#[target_feature]` functions the generic kernels of `vector/` are compiled into, one table
//! per instruction set and scalar type.

#![allow(clippy::inline_always)]

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

use super::args::LinearIo;
use super::simd::simd_impls;
use super::table::{Table, widen_bf16_paired, widen_portable};
use super::{Kernel, amx, amx_attention, amx_bf16, bf16, bf16_widen, int8, int8_avx2, vector};
use crate::weight::WeightKind;

/// Proof that the CPU runs AVX2, FMA and F16C (zero-sized; made only where they are known to
/// run).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

/// Proof that the CPU (and the OS, for the ZMM and mask registers) runs AVX-512F besides
/// everything [`Avx2`] proves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

/// Whether the CPU runs AVX2, FMA and F16C (detected once, then remembered). Every CPU with
/// AVX2 and FMA has had F16C; the half-precision weights' widening uses it.
pub(crate) fn avx2_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, probe_avx2)
}

/// Whether the CPU runs AVX-512F and everything [`avx2_available`] asks for (detected once,
/// then remembered).
pub(crate) fn avx512_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, || probe_avx512() && avx2_available())
}

/// Whether the CPU runs AVX512-BF16, AVX512-BW and AVX512-VNNI besides everything
/// [`avx512_available`] asks for (detected once, then remembered): the `bf16` and `i8`
/// projections of [`Kernel::Avx512Bf16`].
pub(crate) fn avx512_bf16_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, || probe_avx512_bf16() && avx512_available())
}

/// Whether the CPU runs AVX512-VNNI (`vpdpbusd` on 512 bits) besides everything
/// [`avx512_available`] asks for (detected once, then remembered): the `i8` projections of
/// [`Kernel::Avx512`] use it where it is there (Cascade Lake, Ice Lake: AVX512-VNNI without
/// AVX512-BF16).
pub(crate) fn avx512_vnni_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, || avx512_available() && probe_avx512_vnni())
}

/// Whether the CPU runs AVX-VNNI (`vpdpbusd` on 256 bits) besides everything
/// [`avx2_available`] asks for (detected once, then remembered): the `i8` projections of
/// [`Kernel::Avx2Fma`] use it where it is there.
pub(crate) fn avx_vnni_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, || avx2_available() && probe_avx_vnni())
}

/// Whether the CPU runs AMX-TILE, AMX-INT8 and AMX-BF16 besides everything
/// [`avx512_bf16_available`] asks for, and the OS lets this process use the tile data
/// (detected, and the permission asked for, once, then remembered): the `bf16` and `i8`
/// projections and the `i8` attention of [`Kernel::Avx512Bf16`] use the tile products where
/// they are there (Sapphire Rapids and later; every CPU with AMX so far has all three).
/// Linux only (elsewhere, and under Miri, `false`): the tile data is off until the process
/// asks the kernel for it.
pub(crate) fn amx_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, || avx512_bf16_available() && probe_amx())
}

#[cfg(all(target_os = "linux", not(miri)))]
fn probe_amx() -> bool {
    // Asked only after AVX-512F was found (so CPUID leaf 7 exists): AMX-BF16 is leaf 7,
    // sub-leaf 0, EDX bit 22, AMX-TILE bit 24, AMX-INT8 bit 25.
    const AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
    // (An unsafe function before Rust 1.94; the crate's minimum is 1.89.)
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU.
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    if leaf7.edx & AMX != AMX {
        return false;
    }
    // XCR0 bits 17 and 18: the OS manages the tile configuration and data.
    // SAFETY: XGETBV exists where AVX-512F was found (the OS enabled XSAVE for it).
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): Linux keeps the tile data off
    // (its first use faults) until the process asks for it; 0 when granted. The grant is for
    // the whole process, and from then on the kernel sizes signal frames for the tile state:
    // a later `sigaltstack` smaller than that (about 11 KiB) fails with ENOMEM.
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with two integer arguments: it reads and writes no
    // memory of ours; `syscall` clobbers RCX and R11 and returns in RAX.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, nomem)
        );
    }
    ret == 0
}

#[cfg(not(all(target_os = "linux", not(miri))))]
fn probe_amx() -> bool {
    false
}

/// `probe()`, run once and remembered in `seen` (0 = not yet, 1 = no, 2 = yes): detection can
/// be slow (CPUID traps to the hypervisor in a virtual machine).
fn remembered(seen: &AtomicU8, probe: fn() -> bool) -> bool {
    match seen.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = probe();
            seen.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

#[cfg(feature = "std")]
fn probe_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(feature = "std")]
fn probe_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

#[cfg(feature = "std")]
fn probe_avx512_bf16() -> bool {
    std::is_x86_feature_detected!("avx512bf16")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(feature = "std")]
fn probe_avx512_vnni() -> bool {
    std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(feature = "std"))]
fn probe_avx512_vnni() -> bool {
    // Asked only after AVX-512F was found (so CPUID leaf 7 exists): AVX512-VNNI is leaf 7,
    // sub-leaf 0, ECX bit 11.
    cfg!(target_feature = "avx512vnni") || __cpuid_count(7, 0).ecx & (1 << 11) != 0
}

#[cfg(feature = "std")]
fn probe_avx_vnni() -> bool {
    std::is_x86_feature_detected!("avxvnni")
}

#[cfg(not(feature = "std"))]
fn probe_avx_vnni() -> bool {
    if cfg!(target_feature = "avxvnni") {
        return true;
    }
    // Asked only after AVX2 was found (so CPUID leaf 7 exists): AVX-VNNI is leaf 7, sub-leaf
    // 1, EAX bit 4 (sub-leaf 1 exists when sub-leaf 0's EAX, the highest sub-leaf, is at
    // least 1).
    __cpuid_count(7, 0).eax >= 1 && __cpuid_count(7, 1).eax & (1 << 4) != 0
}

#[cfg(not(feature = "std"))]
fn probe_avx512_bf16() -> bool {
    if cfg!(all(
        target_feature = "avx512bf16",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    )) {
        return true;
    }
    // Asked only after AVX-512F was found (so CPUID leaf 7 exists): AVX512-BW is leaf 7,
    // sub-leaf 0, EBX bit 30, and AVX512-VNNI its ECX bit 11; AVX512-BF16 is sub-leaf 1, EAX
    // bit 5 (sub-leaf 1 exists when sub-leaf 0's EAX, the highest sub-leaf, is at least 1).
    let leaf7 = __cpuid_count(7, 0);
    leaf7.ebx & (1 << 30) != 0
        && leaf7.ecx & (1 << 11) != 0
        && leaf7.eax >= 1
        && __cpuid_count(7, 1).eax & (1 << 5) != 0
}

#[cfg(not(feature = "std"))]
fn probe_avx2() -> bool {
    if cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )) {
        return true;
    }
    // CPUID leaf 1: FMA (ECX bit 12), OSXSAVE (bit 27: the OS saves extended state and XGETBV
    // works), AVX (bit 28), F16C (bit 29).
    const FMA: u32 = 1 << 12;
    const OSXSAVE: u32 = 1 << 27;
    const AVX: u32 = 1 << 28;
    const F16C: u32 = 1 << 29;
    const LEAF1: u32 = FMA | OSXSAVE | AVX | F16C;
    if __cpuid(0).eax < 7 {
        return false;
    }
    if __cpuid(1).ecx & LEAF1 != LEAF1 {
        return false;
    }
    // XCR0 bits 1 and 2: the OS saves SSE and AVX (YMM) state across context switches.
    // SAFETY: OSXSAVE is set (checked above), so the XGETBV instruction is available.
    let xcr0 = unsafe { xgetbv0() };
    if xcr0 & 0b110 != 0b110 {
        return false;
    }
    // CPUID leaf 7, sub-leaf 0: AVX2 (EBX bit 5).
    __cpuid_count(7, 0).ebx & (1 << 5) != 0
}

#[cfg(not(feature = "std"))]
fn probe_avx512() -> bool {
    if cfg!(all(target_feature = "avx512f", target_feature = "avx512bw")) {
        return true;
    }
    // AVX-512F needs AVX-level support (checked by `probe_avx2`), CPUID leaf 7 EBX bit 16
    // (AVX512-BW is bit 30), and the OS saving the opmask and ZMM state: XCR0 bits 5, 6, 7.
    if !probe_avx2() {
        return false;
    }
    // SAFETY: XGETBV exists when OSXSAVE is set: `probe_avx2` checked it from CPUID, or the
    // build assumes AVX2 (`target_feature`), which needs the OS to have enabled XSAVE.
    let xcr0 = unsafe { xgetbv0() };
    let ebx = __cpuid_count(7, 0).ebx;
    xcr0 & 0b1110_0000 == 0b1110_0000 && ebx & (1 << 16) != 0 && ebx & (1 << 30) != 0
}

/// XCR0, read with XGETBV.
///
/// # Safety
/// The CPU must support XGETBV (CPUID.1:ECX.OSXSAVE).
#[cfg(not(feature = "std"))]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller guarantees XGETBV exists; register 0 (XCR0) is always readable.
    unsafe { _xgetbv(0) }
}

/// AVX2 + FMA with 8 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F32(Avx2);

/// AVX2 + FMA with 4 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F64(Avx2);

/// AVX-512F with 16 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512F32(Avx512);

/// AVX-512F with 8 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512F64(Avx512);

// The four `Simd` implementations, by `simd_impls!` from one table: AVX2 f32 and f64, then
// AVX-512 f32 and f64, whose comparisons give mask registers (their logic is plain bit logic)
// and whose micro-tiles are 12 wide (32 vector registers). Every `unsafe` block it makes calls
// intrinsics of the column's instruction set, which are sound to execute exactly when the CPU
// supports it: `self` holds the token, which exists only where it does. The loads and stores
// additionally rely on their own `# Safety` contracts (the caller's pointers).

/// Round to nearest, ties to even, without raising exceptions.
const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

simd_impls! {
    impl Simd for Avx2F32, Avx2F64, Avx512F32, Avx512F64;
    type E = f32, f64, f32, f64;
    type V = __m256, __m256d, __m512, __m512d;
    type M = __m256, __m256d, __mmask16, __mmask8;
    const LANES = 8, 4, 16, 8;
    const TILE = 6, 6, 12, 12;
    splat(x): _mm256_set1_ps, _mm256_set1_pd, _mm512_set1_ps, _mm512_set1_pd;
    add(a, b): _mm256_add_ps, _mm256_add_pd, _mm512_add_ps, _mm512_add_pd;
    sub(a, b): _mm256_sub_ps, _mm256_sub_pd, _mm512_sub_ps, _mm512_sub_pd;
    mul(a, b): _mm256_mul_ps, _mm256_mul_pd, _mm512_mul_ps, _mm512_mul_pd;
    div(a, b): _mm256_div_ps, _mm256_div_pd, _mm512_div_ps, _mm512_div_pd;
    fma(a, b, c): _mm256_fmadd_ps, _mm256_fmadd_pd, _mm512_fmadd_ps, _mm512_fmadd_pd;
    // VMAXPS/PD return the second operand when either is NaN.
    max(a, b): _mm256_max_ps, _mm256_max_pd, _mm512_max_ps, _mm512_max_pd;
    // Both blends take their second operand where the mask is set.
    select(m, a, b): { _mm256_blendv_ps(b, a, m) }, { _mm256_blendv_pd(b, a, m) },
        { _mm512_mask_blend_ps(m, b, a) }, { _mm512_mask_blend_pd(m, b, a) };
    keep(a, m): _mm256_and_ps, _mm256_and_pd,
        { _mm512_maskz_mov_ps(m, a) }, { _mm512_maskz_mov_pd(m, a) };
    lt(a, b): { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }, { _mm256_cmp_pd::<_CMP_LT_OQ>(a, b) },
        { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }, { _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, b) };
    ge(a, b): { _mm256_cmp_ps::<_CMP_GE_OQ>(a, b) }, { _mm256_cmp_pd::<_CMP_GE_OQ>(a, b) },
        { _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b) }, { _mm512_cmp_pd_mask::<_CMP_GE_OQ>(a, b) };
    eq(a, b): { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }, { _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b) },
        { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) }, { _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a, b) };
    and(a, b): _mm256_and_ps, _mm256_and_pd, { a & b }, { a & b };
    // ANDNPS/PD compute (not first) and second.
    and_not(a, b): { _mm256_andnot_ps(b, a) }, { _mm256_andnot_pd(b, a) }, { a & !b }, { a & !b };
    all(m): { _mm256_movemask_ps(m) == 0xff }, { _mm256_movemask_pd(m) == 0xf },
        { m == __mmask16::MAX }, { m == __mmask8::MAX };
    round(v): { _mm256_round_ps::<ROUND>(v) }, { _mm256_round_pd::<ROUND>(v) },
        { _mm512_roundscale_ps::<ROUND>(v) }, { _mm512_roundscale_pd::<ROUND>(v) };
    // 2ⁿ: the biased exponent `e = n + bias` shifted into place; f64 converts n to i32 (it is
    // within ±1100 wherever the result is kept) and widens it.
    pow2(n): {
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
    }, {
        let ni = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
        let e = _mm256_add_epi64(ni, _mm256_set1_epi64x(1023));
        _mm256_castsi256_pd(_mm256_slli_epi64::<52>(e))
    }, {
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
    }, {
        let ni = _mm512_cvtepi32_epi64(_mm512_cvtpd_epi32(n));
        let e = _mm512_add_epi64(ni, _mm512_set1_epi64(1023));
        _mm512_castsi512_pd(_mm512_slli_epi64::<52>(e))
    };
    reduce_add(v): {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }, {
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        let s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
        _mm_cvtsd_f64(s)
    }, _mm512_reduce_add_ps, _mm512_reduce_add_pd;
    load(p): _mm256_loadu_ps, _mm256_loadu_pd, _mm512_loadu_ps, _mm512_loadu_pd;
    // Masked loads: only the lanes whose mask is set, the first `n`, are read (no fault on the
    // others), and the others are zero.
    load_partial(p, n): {
        debug_assert!(n <= 8);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
        _mm256_maskload_ps(p, mask)
    }, {
        debug_assert!(n <= 4);
        let lanes = _mm256_setr_epi64x(0, 1, 2, 3);
        let mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), lanes);
        _mm256_maskload_pd(p, mask)
    }, {
        debug_assert!(n <= 16);
        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
    }, {
        debug_assert!(n <= 8);
        _mm512_maskz_loadu_pd(((1u32 << n) - 1) as __mmask8, p)
    };
    store(p, v): _mm256_storeu_ps, _mm256_storeu_pd, _mm512_storeu_ps, _mm512_storeu_pd;
    broadcast(p): { _mm256_broadcast_ss(&*p) }, { _mm256_broadcast_sd(&*p) },
        { _mm512_set1_ps(*p) }, { _mm512_set1_pd(*p) };
    // Booleans are 0 or 1: `LANES` bytes widened to the lanes, then compared with 0 (AVX2) or
    // tested against themselves (AVX-512).
    load_bools(p): {
        let bytes = _mm_loadl_epi64(p.cast());
        let wide = _mm256_cvtepu8_epi32(bytes);
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(wide, _mm256_setzero_si256()))
    }, {
        let bytes = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
        let wide = _mm256_cvtepu8_epi64(bytes);
        _mm256_castsi256_pd(_mm256_cmpgt_epi64(wide, _mm256_setzero_si256()))
    }, {
        let wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
        _mm512_test_epi32_mask(wide, wide)
    }, {
        let wide = _mm512_cvtepu8_epi64(_mm_loadl_epi64(p.cast()));
        _mm512_test_epi64_mask(wide, wide)
    };
}

// ---- Kernel entry points and tables -------------------------------------------------------
//
// Each table's functions are the generic kernels compiled with its instruction set enabled
// (`vector::table!`). They are safe `#[target_feature]` functions: calling one needs `unsafe`
// (the caller must know the CPU runs the features), which is what the table's function
// pointers say, and inside one the features are there, so it may make the token that proves
// them.

vector::table! {
    #[target_feature(enable = "avx2,fma")]
    mod avx2_f32: f32 = Avx2F32(Avx2(())), Kernel::Avx2Fma, widen_half;
    mod avx2_f64: f64 = Avx2F64(Avx2(())), Kernel::Avx2Fma, widen_portable;
}
vector::table! {
    #[target_feature(enable = "avx512f")]
    mod avx512_f32: f32 = Avx512F32(Avx512(())), Kernel::Avx512, widen_half;
    mod avx512_f64: f64 = Avx512F64(Avx512(())), Kernel::Avx512, widen_portable;
}

/// The AVX-512 `f32` implementation of `Simd`, for the `bf16` attention's softmax.
///
/// # Safety
/// The CPU must run AVX-512F (the token's promise).
pub(crate) unsafe fn avx512_f32() -> Avx512F32 {
    Avx512F32(Avx512(()))
}

/// [`Kernel::Avx2Fma`]'s `f32` table: the generic kernels, with `bf16` weights widened in
/// registers (`bf16_widen.rs`), `f16` weights per storage tile and panel
/// (`vector::linear_widening`) and `i8` weights in 16-bit pair products (`int8_avx2.rs`).
/// [`table_f32`] gives it on a CPU without AVX-VNNI.
static AVX2_F32: Table<f32> = Table {
    linear_bf16_exact: Some(bf16_widen::linear_avx2),
    linear_i8: Some(int8_avx2::linear),
    linear_widening: Some(avx2_linear_widening),
    ..avx2_f32::TABLE
};

/// [`Kernel::Avx2Fma`]'s `f32` table on a CPU with AVX-VNNI: [`AVX2_F32`], with the `i8`
/// projections in `vpdpbusd`.
static AVX2_VNNI_F32: Table<f32> = Table {
    linear_i8: Some(int8_avx2::linear_vnni),
    ..AVX2_F32
};

/// [`Kernel::Avx512`]'s `f32` table: the generic kernels, with `bf16` weights widened in
/// registers (`bf16_widen.rs`, which needs AVX512-BW; the kernel requires it), `f16`
/// weights per storage tile and panel (`vector::linear_widening`), and `i8` weights in
/// AVX2's 16-bit pair products (`int8_avx2.rs`; faster here than the `f32` GEMM's exact
/// sums: 198 against 155–163 µs for `Linear<256, 256>` over 128 tokens, but half the width
/// of the `f32` FMA, so slower than `f32` weights). [`table_f32`] gives it on a CPU without
/// AVX512-VNNI.
static AVX512_F32: Table<f32> = Table {
    linear_bf16_exact: Some(bf16_widen::linear),
    linear_i8: Some(int8_avx2::linear),
    linear_widening: Some(avx512_linear_widening),
    ..avx512_f32::TABLE
};

/// [`Kernel::Avx512`]'s `f32` table on a CPU with AVX512-VNNI: [`AVX512_F32`], with the `i8`
/// projections in `vpdpbusd` on 512 bits (`int8.rs`, as [`Kernel::Avx512Bf16`]).
static AVX512_VNNI_F32: Table<f32> = Table {
    linear_i8: Some(int8::linear),
    ..AVX512_F32
};

/// [`Kernel::Avx512Bf16`]'s `f32` table on a CPU with AMX (AMX-TILE, AMX-INT8 and
/// AMX-BF16): [`AVX512_BF16_F32`], with the `bf16` and `i8` projections and the `i8`
/// attention in tile products (`amx_bf16.rs`, `amx.rs`, `amx_attention.rs`), and the
/// attention of `bf16` layers in `f32`: on these Xeons `vdpbf16ps` runs at half the `f32`
/// FMA rate, so the `bf16` attention is the slower (`MultiHead<512, 512, 8>` with `bf16`
/// weights: 7.4–7.8 ms with it, 5.2–5.3 with the `f32` one; one-off timers).
static AVX512_BF16_AMX_F32: Table<f32> = Table {
    linear_bf16: Some(amx_bf16::linear),
    linear_i8: Some(amx::linear),
    attention_bf16: None,
    attention_i8: Some(amx_attention::attention),
    ..AVX512_BF16_F32
};

/// `$name`: [`vector::linear_widening`] on the `Simd` built by `$simd`, compiled with
/// `$features`, widening with [`widen_half`] (which needs AVX2 and F16C).
macro_rules! linear_widening {
    ($name:ident, $features:literal, $simd:expr) => {
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        fn $name(
            kind: WeightKind,
            io: LinearIo<'_, f32>,
            s: usize,
            din: usize,
            w: &[u16],
            dout: usize,
            bias: &[f32],
            pack: &mut [f32],
        ) {
            // SAFETY: `widen_half` needs AVX2 and F16C, and the token the features of
            // `$features`, which this function is compiled with and its callers guarantee.
            unsafe {
                vector::linear_widening($simd, kind, io, s, din, w, dout, bias, pack, widen_half);
            }
        }
    };
}
linear_widening!(avx2_linear_widening, "avx2,fma,f16c", Avx2F32(Avx2(())));
linear_widening!(
    avx512_linear_widening,
    "avx512f,avx2,fma,f16c",
    Avx512F32(Avx512(()))
);

/// [`Kernel::Avx512Bf16`]'s `f32` table: AVX-512's, with the `bf16` projections and attention.
static AVX512_BF16_F32: Table<f32> = Table {
    kernel: Kernel::Avx512Bf16,
    linear_bf16: Some(bf16::linear),
    linear_i8: Some(int8::linear),
    attention_bf16: Some(bf16::attention),
    ..AVX512_F32
};

/// [`Kernel::Avx512Bf16`]'s `f64` table: AVX-512's (`bf16` weights compute in `f32` only).
static AVX512_BF16_F64: Table<f64> = Table {
    kernel: Kernel::Avx512Bf16,
    ..avx512_f64::TABLE
};

/// The `f32` table of an x86 kernel.
///
/// # Safety
/// The CPU must run `kernel` ([`Kernel::Avx2Fma`], [`Kernel::Avx512`] or
/// [`Kernel::Avx512Bf16`]).
pub(crate) unsafe fn table_f32(kernel: Kernel) -> &'static Table<f32> {
    match kernel {
        Kernel::Avx512Bf16 if amx_available() => &AVX512_BF16_AMX_F32,
        Kernel::Avx512Bf16 => &AVX512_BF16_F32,
        Kernel::Avx512 if avx512_vnni_available() => &AVX512_VNNI_F32,
        Kernel::Avx512 => &AVX512_F32,
        _ if avx_vnni_available() => &AVX2_VNNI_F32,
        _ => &AVX2_F32,
    }
}

/// The `f64` table of an x86 kernel.
///
/// # Safety
/// The CPU must run `kernel` ([`Kernel::Avx2Fma`], [`Kernel::Avx512`] or
/// [`Kernel::Avx512Bf16`]).
pub(crate) unsafe fn table_f64(kernel: Kernel) -> &'static Table<f64> {
    match kernel {
        Kernel::Avx512Bf16 => &AVX512_BF16_F64,
        Kernel::Avx512 => &avx512_f64::TABLE,
        _ => &avx2_f64::TABLE,
    }
}

/// [`Table::widen`] for the x86 `f32` tables: `bf16` with AVX2 shifts and masks, `f16` with
/// F16C (both x86 kernels require AVX2 and F16C).
#[target_feature(enable = "avx2,f16c")]
fn widen_half(kind: WeightKind, src: &[u16], width: usize, dst: &mut [f32]) {
    match kind {
        WeightKind::Bf16 => widen_bf16_avx2(src, width, dst),
        _ => widen_f16_f16c(src, dst),
    }
}

/// A chunk of a `bf16` strip `width` features wide, its rows paired (rows `2q` and `2q + 1`
/// interleaved value by value, `kernels/layout.rs`), widened to plain tile rows: each 32-bit
/// word holds a pair, the even row's `bf16` in its low half and the odd row's in its high
/// half, so the even row's `f32` is the word shifted up by 16 and the odd row's the word with
/// its low half cleared (exact: a `bf16` is the upper half of an `f32`). Eight words at a
/// time, then four, then one; an odd last row (at the end of the inputs only) is not paired.
#[target_feature(enable = "avx2")]
fn widen_bf16_avx2(src: &[u16], width: usize, dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let pairs = n.checked_div(width).unwrap_or(0) / 2;
    let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    for q in 0..pairs {
        let pair = &src[2 * q * width..2 * (q + 1) * width];
        let (even, odd) = dst[2 * q * width..2 * (q + 1) * width].split_at_mut(width);
        let mut j = 0;
        // SAFETY: words `j .. j + 8 ≤ width` of the pair (`u16` values `2j .. 2j + 16 ≤
        // 2·width`) and values `j .. j + 8` of each row; unaligned loads and stores.
        unsafe {
            while j + 8 <= width {
                let w = _mm256_loadu_si256(pair.as_ptr().add(2 * j).cast());
                _mm256_storeu_si256(even.as_mut_ptr().add(j).cast(), _mm256_slli_epi32::<16>(w));
                _mm256_storeu_si256(odd.as_mut_ptr().add(j).cast(), _mm256_and_si256(w, high));
                j += 8;
            }
            if j + 4 <= width {
                let w = _mm_loadu_si128(pair.as_ptr().add(2 * j).cast());
                _mm_storeu_si128(even.as_mut_ptr().add(j).cast(), _mm_slli_epi32::<16>(w));
                let h = _mm256_castsi256_si128(high);
                _mm_storeu_si128(odd.as_mut_ptr().add(j).cast(), _mm_and_si128(w, h));
                j += 4;
            }
        }
        for k in j..width {
            even[k] = f32::from_bits(u32::from(pair[2 * k]) << 16);
            odd[k] = f32::from_bits(u32::from(pair[2 * k + 1]) << 16);
        }
    }
    let done = 2 * pairs * width;
    widen_bf16_paired(&src[done..n], width, &mut dst[done..n]);
}

/// `f16` bits widened to `f32` with F16C, eight at a time.
#[target_feature(enable = "f16c,avx")]
fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements `i .. i + 8 ≤ n` of both slices; F16C and AVX are enabled for
        // this function, whose callers guarantee them.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = half::f16::from_bits(src[j]).to_f32();
    }
}
