//! The x86-64 AVX2 + FMA instruction set: 8 `f32` or 4 `f64` lanes per vector.
//!
//! [`Avx2`] is the proof token: [`Avx2::detect`] returns one only when the CPU (and, for the
//! YMM registers, the operating system) supports AVX2 and FMA. With `std` that is
//! `is_x86_feature_detected!`; without, `cfg!(target_feature)` when the build already assumes
//! it, otherwise CPUID and XGETBV directly. [`Avx2F32`] and [`Avx2F64`] implement [`Simd`] on
//! top of it; the kernel entry points at the bottom are the `#[target_feature]` functions the
//! generic kernels are compiled into.

#![allow(clippy::inline_always)]

use core::arch::x86_64::*;

use super::simd::{self, Simd};
use super::vector;
use super::{Dims, LinearIo, MaskView, WorkRef};

/// Proof that the CPU runs AVX2 and FMA (zero-sized; only [`Avx2::detect`] makes one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The token, if AVX2 and FMA are available.
    pub(crate) fn detect() -> Option<Self> {
        available().then_some(Avx2(()))
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
    fn exp(self, x: __m256) -> __m256 {
        // eˣ = 2ⁿ · eʳ with n = round(x / ln 2) and r = x − n·ln 2 (|r| ≤ ln 2 / 2, computed in
        // two steps so that it is exact to f32 precision), eʳ = 1 + r·p(r), and the result
        // assembled as 2ⁿ + (r·2ⁿ)·p(r) with a single rounding. Below ln(MIN_POSITIVE) the
        // result is 0 (this also covers −∞, for which the arithmetic gives NaN); NaN stays NaN.
        let c = simd::EXP_F32;
        // SAFETY: AVX, AVX2 (integer shifts and adds) and FMA, proven by the token.
        unsafe {
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(simd::LOG2E_F32)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(simd::LN2_HI_F32), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(simd::LN2_LO_F32), r);
            let mut p = _mm256_set1_ps(c[5]);
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[4]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[3]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[2]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[1]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[0]));
            // 2ⁿ from its exponent bits; n ≥ −126 wherever the result is kept.
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            let two_n = _mm256_castsi256_ps(bits);
            let y = _mm256_fmadd_ps(_mm256_mul_ps(r, two_n), p, two_n);
            let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(simd::EXP_CUTOFF_F32));
            _mm256_blendv_ps(y, _mm256_setzero_ps(), tiny)
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
    fn exp(self, x: __m256d) -> __m256d {
        // As for f32, with a degree-10 polynomial and the exponent built in 64-bit lanes.
        let c = simd::EXP_F64;
        // SAFETY: AVX, AVX2 and FMA, proven by the token.
        unsafe {
            let n = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_pd(x, _mm256_set1_pd(simd::LOG2E_F64)),
            );
            let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(simd::LN2_HI_F64), x);
            let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(simd::LN2_LO_F64), r);
            let mut p = _mm256_set1_pd(c[10]);
            for &ci in c[..10].iter().rev() {
                p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(ci));
            }
            // n is integral and within ±1100 wherever the result is kept: 4 × i32, widened.
            let ni = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
            let bits = _mm256_slli_epi64::<52>(_mm256_add_epi64(ni, _mm256_set1_epi64x(1023)));
            let two_n = _mm256_castsi256_pd(bits);
            let y = _mm256_fmadd_pd(_mm256_mul_pd(r, two_n), p, two_n);
            let tiny = _mm256_cmp_pd::<_CMP_LT_OQ>(x, _mm256_set1_pd(simd::EXP_CUTOFF_F64));
            _mm256_blendv_pd(y, _mm256_setzero_pd(), tiny)
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

// ---- Kernel entry points: the generic kernels compiled with AVX2 and FMA enabled ----------
//
// Each is a safe `#[target_feature]` function taking the token; calling it needs `unsafe`
// only because the caller is compiled without those features, and the token in its
// arguments is the proof that the CPU has them.

macro_rules! entry_points {
    ($e:ty, $simd:ident, $linear:ident, $attention:ident, $weights:ident) => {
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $linear(
            token: Avx2,
            io: LinearIo<'_, $e>,
            s: usize,
            din: usize,
            w_t: &[$e],
            dout: usize,
            bias: &[$e],
            pack: &mut [$e],
        ) {
            vector::linear($simd(token), io, s, din, w_t, dout, bias, pack)
        }

        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $attention(
            token: Avx2,
            q: &[$e],
            k: &[$e],
            v: &[$e],
            dims: Dims,
            scale: $e,
            mask: &MaskView<'_, $e>,
            out: &mut [$e],
            work: WorkRef<'_, $e>,
            vscale: $e,
        ) {
            vector::attention($simd(token), q, k, v, dims, scale, mask, out, work, vscale)
        }

        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $weights(
            token: Avx2,
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
    };
}

entry_points!(f32, Avx2F32, linear_f32, attention_f32, weights_f32);
entry_points!(f64, Avx2F64, linear_f64, attention_f64, weights_f64);

/// `exp` over a slice with AVX2 (the benchmarks' and tests' view of the vector `exp`).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp_f32(token: Avx2, xs: &mut [f32]) {
    vector::exp_slice(Avx2F32(token), xs);
}

/// `exp` over a slice of `f64` with AVX2.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp_f64(token: Avx2, xs: &mut [f64]) {
    vector::exp_slice(Avx2F64(token), xs);
}
