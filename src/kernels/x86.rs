//! The x86-64 instruction sets: AVX2 + FMA (8 `f32` or 4 `f64` lanes per vector, 16
//! registers) and AVX-512F (16 `f32` or 8 `f64` lanes, 32 registers and mask registers).
//!
//! [`Avx2`] is the proof token: [`Avx2::detect`] returns one only when the CPU (and, for the
//! YMM registers, the operating system) supports AVX2 and FMA. With `std` that is
//! `is_x86_feature_detected!`; without, `cfg!(target_feature)` when the build already assumes
//! it, otherwise CPUID and XGETBV directly. [`Avx2F32`] and [`Avx2F64`] implement [`Simd`] on
//! top of it; the kernel entry points at the bottom are the `#[target_feature]` functions the
//! generic kernels are compiled into.

#![allow(clippy::inline_always)]

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

use super::simd::Simd;
use super::vector;
use super::{Dims, LinearIo, MaskView, WorkRef};

/// Proof that the CPU runs AVX2 and FMA (zero-sized; only [`Avx2::detect`] makes one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The token, if AVX2 and FMA are available (detected once, then remembered).
    pub(crate) fn detect() -> Option<Self> {
        static SEEN: AtomicU8 = AtomicU8::new(0);
        remembered(&SEEN, available).then_some(Avx2(()))
    }
}

/// `probe()`, run once and remembered in `seen` (0 = not yet, 1 = no, 2 = yes): detection can
/// be slow (CPUID traps to the hypervisor in a virtual machine) and dispatch asks often.
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
fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(feature = "std"))]
fn available() -> bool {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        return true;
    }
    // CPUID leaf 1: FMA (ECX bit 12), OSXSAVE (bit 27: the OS saves extended state and XGETBV
    // works), AVX (bit 28).
    const FMA: u32 = 1 << 12;
    const OSXSAVE: u32 = 1 << 27;
    const AVX: u32 = 1 << 28;
    if __cpuid(0).eax < 7 {
        return false;
    }
    let leaf1 = __cpuid(1);
    if leaf1.ecx & (FMA | OSXSAVE | AVX) != FMA | OSXSAVE | AVX {
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

/// Proof that the CPU (and the OS, for the ZMM and mask registers) runs AVX-512F.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The token, if AVX-512F is available (detected once, then remembered).
    pub(crate) fn detect() -> Option<Self> {
        static SEEN: AtomicU8 = AtomicU8::new(0);
        remembered(&SEEN, available_512).then_some(Avx512(()))
    }
}

#[cfg(feature = "std")]
fn available_512() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(feature = "std"))]
fn available_512() -> bool {
    if cfg!(target_feature = "avx512f") {
        return true;
    }
    // AVX-512F needs AVX-level support (checked by `available`), CPUID leaf 7 EBX bit 16, and
    // the OS saving the opmask and ZMM state: XCR0 bits 5, 6 and 7.
    if !available() {
        return false;
    }
    // SAFETY: XGETBV exists when OSXSAVE is set: `available` checked it from CPUID, or the
    // build assumes AVX2 (`target_feature`), which needs the OS to have enabled XSAVE.
    let xcr0 = unsafe { xgetbv0() };
    xcr0 & 0b1110_0000 == 0b1110_0000 && __cpuid_count(7, 0).ebx & (1 << 16) != 0
}

/// AVX2 + FMA with 8 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F32(pub(crate) Avx2);

/// AVX2 + FMA with 4 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F64(pub(crate) Avx2);

// Every `unsafe` block in the two `impl`s below calls AVX/AVX2/FMA intrinsics, which are sound
// to execute exactly when the CPU supports those instructions: `self` holds an `Avx2` token,
// which only `Avx2::detect` creates, after checking that. The loads and stores additionally
// rely on their own `# Safety` contracts (the caller's pointers).

impl Simd for Avx2F32 {
    type E = f32;
    type V = __m256;
    type M = __m256;
    const LANES: usize = 8;
    const TILE: usize = 6;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: see the comment above the impl (AVX, proven by the token).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA, proven by the token.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token. (VMAXPS returns the second operand when either
        // is NaN.)
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __m256, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token. BLENDVPS takes the second operand where the mask
        // is set.
        unsafe { _mm256_blendv_ps(b, a, m) }
    }
    #[inline(always)]
    fn keep(self, a: __m256, m: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_and_ps(a, m) }
    }
    #[inline(always)]
    fn lt(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn ge(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_cmp_ps::<_CMP_GE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn and(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_and_ps(a, b) }
    }
    #[inline(always)]
    fn and_not(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token. ANDNPS computes (not first) and second.
        unsafe { _mm256_andnot_ps(b, a) }
    }
    #[inline(always)]
    fn all(self, m: __m256) -> bool {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_movemask_ps(m) == 0xff }
    }
    #[inline(always)]
    fn round(self, v: __m256) -> __m256 {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }
    #[inline(always)]
    fn pow2(self, n: __m256) -> __m256 {
        // SAFETY: AVX and AVX2 (integer shifts and adds), proven by the token.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: __m256) -> f32 {
        // SAFETY: AVX, proven by the token.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        // SAFETY: AVX (token); the caller guarantees 8 readable floats at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> __m256 {
        debug_assert!(n <= 8);
        // SAFETY: AVX2 (token). `vmaskmovps` reads only the lanes whose mask is set, the
        // first `n`, which the caller guarantees readable; the others are zero.
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            _mm256_maskload_ps(p, mask)
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        // SAFETY: AVX (token); the caller guarantees 8 writable floats at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn broadcast(self, p: *const f32) -> __m256 {
        // SAFETY: AVX (token); the caller guarantees `p` is readable.
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn load_bools(self, p: *const bool) -> __m256 {
        // SAFETY: AVX2 (token); the caller guarantees 8 readable bytes at `p`. Booleans are 0
        // or 1, widened to 32-bit lanes and compared with 0.
        unsafe {
            let bytes = _mm_loadl_epi64(p.cast());
            let wide = _mm256_cvtepu8_epi32(bytes);
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(wide, _mm256_setzero_si256()))
        }
    }
}

impl Simd for Avx2F64 {
    type E = f64;
    type V = __m256d;
    type M = __m256d;
    const LANES: usize = 4;
    const TILE: usize = 6;

    #[inline(always)]
    fn splat(self, x: f64) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_set1_pd(x) }
    }
    #[inline(always)]
    fn add(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_add_pd(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_sub_pd(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_mul_pd(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_div_pd(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        // SAFETY: FMA, proven by the token.
        unsafe { _mm256_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_max_pd(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __m256d, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_blendv_pd(b, a, m) }
    }
    #[inline(always)]
    fn keep(self, a: __m256d, m: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_and_pd(a, m) }
    }
    #[inline(always)]
    fn lt(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_cmp_pd::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn ge(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_cmp_pd::<_CMP_GE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn and(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_and_pd(a, b) }
    }
    #[inline(always)]
    fn and_not(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_andnot_pd(b, a) }
    }
    #[inline(always)]
    fn all(self, m: __m256d) -> bool {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_movemask_pd(m) == 0xf }
    }
    #[inline(always)]
    fn round(self, v: __m256d) -> __m256d {
        // SAFETY: AVX, proven by the token.
        unsafe { _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }
    #[inline(always)]
    fn pow2(self, n: __m256d) -> __m256d {
        // n is within ±1100 wherever the result is kept: 4 × i32, widened.
        // SAFETY: AVX and AVX2 (integer conversions, shifts and adds), proven by the token.
        unsafe {
            let ni = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
            _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(
                ni,
                _mm256_set1_epi64x(1023),
            )))
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: __m256d) -> f64 {
        // SAFETY: AVX, proven by the token.
        unsafe {
            let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
            let s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
            _mm_cvtsd_f64(s)
        }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f64) -> __m256d {
        // SAFETY: AVX (token); the caller guarantees 4 readable doubles at `p`.
        unsafe { _mm256_loadu_pd(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f64, n: usize) -> __m256d {
        debug_assert!(n <= 4);
        // SAFETY: AVX2 (token). `vmaskmovpd` reads only the lanes whose mask is set, the
        // first `n`, which the caller guarantees readable; the others are zero.
        unsafe {
            let lanes = _mm256_setr_epi64x(0, 1, 2, 3);
            let mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), lanes);
            _mm256_maskload_pd(p, mask)
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64, v: __m256d) {
        // SAFETY: AVX (token); the caller guarantees 4 writable doubles at `p`.
        unsafe { _mm256_storeu_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn broadcast(self, p: *const f64) -> __m256d {
        // SAFETY: AVX (token); the caller guarantees `p` is readable.
        unsafe { _mm256_broadcast_sd(&*p) }
    }
    #[inline(always)]
    unsafe fn load_bools(self, p: *const bool) -> __m256d {
        // SAFETY: AVX2 (token); the caller guarantees 4 readable bytes at `p`.
        unsafe {
            let bytes = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
            let wide = _mm256_cvtepu8_epi64(bytes);
            _mm256_castsi256_pd(_mm256_cmpgt_epi64(wide, _mm256_setzero_si256()))
        }
    }
}

// The AVX-512 implementations: as above, with the `Avx512` token as the proof, 16 `f32` or 8
// `f64` lanes, mask registers for comparisons, and micro-tiles of 12 (32 vector registers).

/// AVX-512F with 16 `f32` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512F32(pub(crate) Avx512);

/// AVX-512F with 8 `f64` lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512F64(pub(crate) Avx512);

impl Simd for Avx512F32 {
    type E = f32;
    type V = __m512;
    type M = __mmask16;
    const LANES: usize = 16;
    const TILE: usize = 12;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token. (VMAXPS returns the second operand when either
        // is NaN.)
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token. The blend takes the second operand where the
        // mask is set.
        unsafe { _mm512_mask_blend_ps(m, b, a) }
    }
    #[inline(always)]
    fn keep(self, a: __m512, m: __mmask16) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_maskz_mov_ps(m, a) }
    }
    #[inline(always)]
    fn lt(self, a: __m512, b: __m512) -> __mmask16 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn ge(self, a: __m512, b: __m512) -> __mmask16 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: __m512, b: __m512) -> __mmask16 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn and(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    fn and_not(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a & !b
    }
    #[inline(always)]
    fn all(self, m: __mmask16) -> bool {
        m == 0xffff
    }
    #[inline(always)]
    fn round(self, v: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }
    #[inline(always)]
    fn pow2(self, n: __m512) -> __m512 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n),
                _mm512_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: __m512) -> f32 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: AVX-512F (token); the caller guarantees 16 readable floats at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> __m512 {
        debug_assert!(n <= 16);
        let mask = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: AVX-512F (token). A masked load reads only the first `n` lanes (no fault
        // on the others), which the caller guarantees readable.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        // SAFETY: AVX-512F (token); the caller guarantees 16 writable floats at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn broadcast(self, p: *const f32) -> __m512 {
        // SAFETY: AVX-512F (token); the caller guarantees `p` is readable.
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn load_bools(self, p: *const bool) -> __mmask16 {
        // SAFETY: AVX-512F (token); the caller guarantees 16 readable bytes at `p`. Booleans
        // are 0 or 1, widened to 32-bit lanes and tested against themselves.
        unsafe {
            let wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
            _mm512_test_epi32_mask(wide, wide)
        }
    }
}

impl Simd for Avx512F64 {
    type E = f64;
    type V = __m512d;
    type M = __mmask8;
    const LANES: usize = 8;
    const TILE: usize = 12;

    #[inline(always)]
    fn splat(self, x: f64) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_set1_pd(x) }
    }
    #[inline(always)]
    fn add(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_add_pd(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_sub_pd(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_mul_pd(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_div_pd(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_max_pd(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __mmask8, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_mask_blend_pd(m, b, a) }
    }
    #[inline(always)]
    fn keep(self, a: __m512d, m: __mmask8) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_maskz_mov_pd(m, a) }
    }
    #[inline(always)]
    fn lt(self, a: __m512d, b: __m512d) -> __mmask8 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn ge(self, a: __m512d, b: __m512d) -> __mmask8 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_cmp_pd_mask::<_CMP_GE_OQ>(a, b) }
    }
    #[inline(always)]
    fn eq(self, a: __m512d, b: __m512d) -> __mmask8 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a, b) }
    }
    #[inline(always)]
    fn and(self, a: __mmask8, b: __mmask8) -> __mmask8 {
        a & b
    }
    #[inline(always)]
    fn and_not(self, a: __mmask8, b: __mmask8) -> __mmask8 {
        a & !b
    }
    #[inline(always)]
    fn all(self, m: __mmask8) -> bool {
        m == 0xff
    }
    #[inline(always)]
    fn round(self, v: __m512d) -> __m512d {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }
    #[inline(always)]
    fn pow2(self, n: __m512d) -> __m512d {
        // As `Avx2F64::pow2`: 8 × i32, widened.
        // SAFETY: AVX-512F, proven by the token.
        unsafe {
            let ni = _mm512_cvtepi32_epi64(_mm512_cvtpd_epi32(n));
            _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(
                ni,
                _mm512_set1_epi64(1023),
            )))
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: __m512d) -> f64 {
        // SAFETY: AVX-512F, proven by the token.
        unsafe { _mm512_reduce_add_pd(v) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f64) -> __m512d {
        // SAFETY: AVX-512F (token); the caller guarantees 8 readable doubles at `p`.
        unsafe { _mm512_loadu_pd(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f64, n: usize) -> __m512d {
        debug_assert!(n <= 8);
        let mask = ((1u32 << n) - 1) as __mmask8;
        // SAFETY: AVX-512F (token). A masked load reads only the first `n` lanes (no fault
        // on the others), which the caller guarantees readable.
        unsafe { _mm512_maskz_loadu_pd(mask, p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64, v: __m512d) {
        // SAFETY: AVX-512F (token); the caller guarantees 8 writable doubles at `p`.
        unsafe { _mm512_storeu_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn broadcast(self, p: *const f64) -> __m512d {
        // SAFETY: AVX-512F (token); the caller guarantees `p` is readable.
        unsafe { _mm512_set1_pd(*p) }
    }
    #[inline(always)]
    unsafe fn load_bools(self, p: *const bool) -> __mmask8 {
        // SAFETY: AVX-512F (token); the caller guarantees 8 readable bytes at `p`.
        unsafe {
            let wide = _mm512_cvtepu8_epi64(_mm_loadl_epi64(p.cast()));
            _mm512_test_epi64_mask(wide, wide)
        }
    }
}

// ---- Kernel entry points: the generic kernels compiled with AVX2 and FMA enabled ----------
//
// Each is a safe `#[target_feature]` function taking the token; calling it needs `unsafe`
// only because the caller is compiled without those features, and the token in its
// arguments is the proof that the CPU has them.

macro_rules! entry_points {
    ($feature:literal, $token:ty, $e:ty, $simd:ident, $linear:ident, $attention:ident, $weights:ident, $exp:ident) => {
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $linear(
            token: $token,
            io: LinearIo<'_, $e>,
            s: usize,
            din: usize,
            w: &[$e],
            dout: usize,
            bias: &[$e],
            pack: &mut [$e],
        ) {
            vector::linear($simd(token), io, s, din, w, dout, bias, pack)
        }

        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $attention(
            token: $token,
            q: &[$e],
            k: &[$e],
            v: &[$e],
            dims: Dims,
            scale: $e,
            mask: &MaskView<'_, $e>,
            out: &mut [$e],
            work: WorkRef<'_, $e>,
            vscale: $e,
        ) -> bool {
            vector::attention($simd(token), q, k, v, dims, scale, mask, out, work, vscale)
        }

        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $weights(
            token: $token,
            q: &[$e],
            k: &[$e],
            v: &[$e],
            dims: Dims,
            scale: $e,
            mask: &MaskView<'_, $e>,
            out: &mut [$e],
            weights: &mut [$e],
        ) {
            vector::attention_with_weights($simd(token), q, k, v, dims, scale, mask, out, weights)
        }

        /// The vector `exp` over a slice (the benchmarks' and tests' view of it).
        #[target_feature(enable = $feature)]
        pub(crate) fn $exp(token: $token, xs: &mut [$e]) {
            vector::exp_slice($simd(token), xs);
        }
    };
}

entry_points!(
    "avx2,fma",
    Avx2,
    f32,
    Avx2F32,
    linear_f32,
    attention_f32,
    weights_f32,
    exp_f32
);
entry_points!(
    "avx2,fma",
    Avx2,
    f64,
    Avx2F64,
    linear_f64,
    attention_f64,
    weights_f64,
    exp_f64
);
entry_points!(
    "avx512f",
    Avx512,
    f32,
    Avx512F32,
    linear512_f32,
    attention512_f32,
    weights512_f32,
    exp512_f32
);
entry_points!(
    "avx512f",
    Avx512,
    f64,
    Avx512F64,
    linear512_f64,
    attention512_f64,
    weights512_f64,
    exp512_f64
);

// ---- Dispatch: the crate's generic scalar `T` to the entry point of the kernel and type ----

use super::Kernel;
use super::simd::{cast, io_as, mask_as, work_as};
use crate::Float;

/// The token of an x86 kernel the caller selected (so detected as supported).
fn token<K>(detected: Option<K>) -> K {
    detected.expect("the selected kernel runs on this CPU")
}

/// `kernels::linear` on an x86 kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear<T: Float>(
    kernel: Kernel,
    io: LinearIo<'_, T>,
    s: usize,
    din: usize,
    w: &[T],
    dout: usize,
    bias: &[T],
    pack: &mut [T],
) {
    macro_rules! go {
        ($f:ident, $tok:expr, $e:ty) => {
            // SAFETY: the token proves the instruction set, the only requirement of the
            // `#[target_feature]` entry point.
            unsafe {
                $f(
                    $tok,
                    io_as(io),
                    s,
                    din,
                    cast!($e, w),
                    dout,
                    cast!($e, bias),
                    cast!(mut $e, pack),
                )
            }
        };
    }
    match (kernel, T::BYTES == 4) {
        (Kernel::Avx512, true) => go!(linear512_f32, token(Avx512::detect()), f32),
        (Kernel::Avx512, false) => go!(linear512_f64, token(Avx512::detect()), f64),
        (_, true) => go!(linear_f32, token(Avx2::detect()), f32),
        (_, false) => go!(linear_f64, token(Avx2::detect()), f64),
    }
}

/// `kernels::attention` (one pass) on an x86 kernel; whether every output is finite.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<T: Float>(
    kernel: Kernel,
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
        ($f:ident, $tok:expr, $e:ty) => {
            // SAFETY: the token proves the instruction set.
            unsafe {
                $f(
                    $tok,
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
            }
        };
    }
    match (kernel, T::BYTES == 4) {
        (Kernel::Avx512, true) => go!(attention512_f32, token(Avx512::detect()), f32),
        (Kernel::Avx512, false) => go!(attention512_f64, token(Avx512::detect()), f64),
        (_, true) => go!(attention_f32, token(Avx2::detect()), f32),
        (_, false) => go!(attention_f64, token(Avx2::detect()), f64),
    }
}

/// `kernels::attention_with_weights` on an x86 kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with_weights<T: Float>(
    kernel: Kernel,
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
        ($f:ident, $tok:expr, $e:ty) => {
            // SAFETY: the token proves the instruction set.
            unsafe {
                $f(
                    $tok,
                    cast!($e, q),
                    cast!($e, k),
                    cast!($e, v),
                    dims,
                    <$e>::of(scale.to_f64()),
                    &mask_as(mask),
                    cast!(mut $e, out),
                    cast!(mut $e, weights),
                )
            }
        };
    }
    match (kernel, T::BYTES == 4) {
        (Kernel::Avx512, true) => go!(weights512_f32, token(Avx512::detect()), f32),
        (Kernel::Avx512, false) => go!(weights512_f64, token(Avx512::detect()), f64),
        (_, true) => go!(weights_f32, token(Avx2::detect()), f32),
        (_, false) => go!(weights_f64, token(Avx2::detect()), f64),
    }
}

/// `kernels::exp_in_place` on an x86 kernel.
pub(crate) fn exp_in_place<T: Float>(kernel: Kernel, xs: &mut [T]) {
    // SAFETY (each arm): the token proves the instruction set.
    match (kernel, T::BYTES == 4) {
        // SAFETY: the token proves AVX-512F.
        (Kernel::Avx512, true) => unsafe {
            exp512_f32(token(Avx512::detect()), cast!(mut f32, xs))
        },
        // SAFETY: the token proves AVX-512F.
        (Kernel::Avx512, false) => unsafe {
            exp512_f64(token(Avx512::detect()), cast!(mut f64, xs))
        },
        // SAFETY: the token proves AVX2 and FMA.
        (_, true) => unsafe { exp_f32(token(Avx2::detect()), cast!(mut f32, xs)) },
        // SAFETY: the token proves AVX2 and FMA.
        (_, false) => unsafe { exp_f64(token(Avx2::detect()), cast!(mut f64, xs)) },
    }
}

/// Whether the CPU converts half precision with F16C (detected once, then remembered).
fn f16c_available() -> bool {
    static SEEN: AtomicU8 = AtomicU8::new(0);
    remembered(&SEEN, || {
        #[cfg(feature = "std")]
        {
            std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx")
        }
        #[cfg(not(feature = "std"))]
        {
            // CPUID.1:ECX bit 29 (F16C) with the AVX state the OS saves (checked by `available`).
            cfg!(all(target_feature = "f16c", target_feature = "avx"))
                || (available() && __cpuid(1).ecx & (1 << 29) != 0)
        }
    })
}

/// `f16` bits widened to `f32` with F16C, eight at a time; `false` (nothing written) where
/// the CPU has no F16C.
pub(crate) fn widen_f16(src: &[u16], dst: &mut [f32]) -> bool {
    if !f16c_available() {
        return false;
    }
    // SAFETY: F16C and AVX were detected just above.
    unsafe { widen_f16_f16c(src, dst) };
    true
}

/// # Safety
/// The CPU must support F16C and AVX.
#[target_feature(enable = "f16c,avx")]
unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements `i .. i + 8 ≤ n` of both slices; F16C and AVX (the caller).
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
