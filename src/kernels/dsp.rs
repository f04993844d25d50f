//! The `i8` projections' inner loop on a Cortex-M with the DSP extension (Cortex-M4, M7, M33
//! with DSP): `SMLAD`, a dual 16-bit multiply-accumulate, sums two products of 16-bit halves
//! per instruction. Used by `scalar::linear_i8` on that target only
//! (`cfg(static_attention_dsp)`, which the crate's `build.rs` sets on `thumbv7em` targets and
//! wherever the `dsp` target feature is enabled: stable Rust does not expose
//! `cfg(target_feature = "dsp")`); the integer sums are exact, so it gives the scalar loop's
//! bits.
//!
//! A word of four `i8` weights `[w0, w1, w2, w3]` (one output feature's weights for four
//! consecutive inputs, as `crate::Linear` stores them) becomes two words of 16-bit halves with
//! `SXTB16`, which sign-extends bytes 0 and 2: `[w0, w2]`, and after a rotation by 8 bits
//! `[w1, w3]`. The inputs are packed the same way once per token ([`pack`]), so each group of
//! four products is one load, two `SXTB16` and two `SMLAD`s against two packed input words;
//! [`dot_quads_x4`] sums four output features of a tile per pass, loading each packed input
//! word once for the four (on `MultiHead<16, 32, 4>`, the firmware's layer when it was
//! written, the `i8` forward pass executed 389 684 instructions this way, 640 696 with the
//! plain loop).
//! The functions `sxtb16`, `sxtb16_ror8` and `smlad` are the instructions, written out in
//! plain Rust off Arm: the model the host tests check the packing with, and with which
//! `RUSTFLAGS="--cfg static_attention_dsp" cargo test --test int8_weights` runs this path's
//! logic on the host against the other kernels.

/// Sign-extends bytes 0 and 2 of `x` to the low and high 16-bit halves (`SXTB16`).
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    #[cfg(all(target_arch = "arm", static_attention_dsp))]
    {
        let r: u32;
        // SAFETY: `SXTB16` only reads and writes registers, and the DSP extension it needs is
        // enabled for this build (the `cfg` above).
        unsafe {
            core::arch::asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    #[cfg(not(all(target_arch = "arm", static_attention_dsp)))]
    {
        let lo = u32::from(x as u8 as i8 as i16 as u16);
        let hi = u32::from((x >> 16) as u8 as i8 as i16 as u16);
        lo | hi << 16
    }
}

/// Sign-extends bytes 1 and 3 of `x` to the low and high 16-bit halves (`SXTB16` with
/// `ROR #8`).
#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    #[cfg(all(target_arch = "arm", static_attention_dsp))]
    {
        let r: u32;
        // SAFETY: as in `sxtb16`: registers only, and the build has the DSP extension.
        unsafe {
            core::arch::asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    #[cfg(not(all(target_arch = "arm", static_attention_dsp)))]
    {
        sxtb16(x.rotate_right(8))
    }
}

/// `acc + a.lo · b.lo + a.hi · b.hi`, the halves signed 16-bit (`SMLAD`; the sum wraps, and
/// the instruction's overflow flag is not read).
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(all(target_arch = "arm", static_attention_dsp))]
    {
        let r: i32;
        // SAFETY: `SMLAD` only reads and writes registers (and sets the sticky Q flag, which
        // nothing reads: `preserves_flags` covers the condition flags NZCV only, which it
        // leaves alone); the build has the DSP extension.
        unsafe {
            core::arch::asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a,
                b = in(reg) b, acc = in(reg) acc, options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    #[cfg(not(all(target_arch = "arm", static_attention_dsp)))]
    {
        let half = |x: u32, shift: u32| i32::from((x >> shift) as u16 as i16);
        acc.wrapping_add(half(a, 0) * half(b, 0))
            .wrapping_add(half(a, 16) * half(b, 16))
    }
}

/// The inputs `x` (whole groups of four) as 16-bit pairs: for group `g`, `out[2g]` holds
/// inputs `4g` and `4g + 2`, `out[2g + 1]` inputs `4g + 1` and `4g + 3` (what [`dot_quads`]
/// multiplies a weight word's two `SXTB16` halves with).
#[inline]
pub(super) fn pack(x: &[i8], out: &mut [u32]) {
    for (xs, o) in x.chunks_exact(4).zip(out.chunks_exact_mut(2)) {
        let word = u32::from_le_bytes([xs[0] as u8, xs[1] as u8, xs[2] as u8, xs[3] as u8]);
        o[0] = sxtb16(word);
        o[1] = sxtb16_ror8(word);
    }
}

/// `Σ_p x_p · q_p` over the groups of four inputs that [`pack`] made `pairs` of: the weights
/// of group `g` are the four bytes at `q[first + g · stride ..]`.
#[inline(always)]
pub(super) fn dot_quads(pairs: &[u32], q: &[i8], first: usize, stride: usize) -> i32 {
    let mut acc = 0i32;
    for (x, w) in pairs.chunks_exact(2).zip(q[first..].chunks(stride)) {
        let word = u32::from_le_bytes([w[0] as u8, w[1] as u8, w[2] as u8, w[3] as u8]);
        acc = smlad(x[0], sxtb16(word), acc);
        acc = smlad(x[1], sxtb16_ror8(word), acc);
    }
    acc
}

/// [`dot_quads`] for four consecutive output features of one weight tile at once (their words
/// of a group are the 16 bytes from `q[first + g · stride]`): each packed input word is loaded
/// once for the four.
#[inline(always)]
pub(super) fn dot_quads_x4(pairs: &[u32], q: &[i8], first: usize, stride: usize) -> [i32; 4] {
    let groups = pairs.len() / 2;
    let mut acc = [0i32; 4];
    if groups == 0 {
        return acc;
    }
    assert!(
        stride >= 16 && first + (groups - 1) * stride + 16 <= q.len(),
        "four features' weights in groups of 16 bytes"
    );
    let mut w = q[first..].as_ptr();
    for x in pairs.chunks_exact(2) {
        // SAFETY: at group `g < groups`, `w` is `q`'s pointer plus `first + g · stride`, and
        // the assertion above keeps those 16 bytes inside `q`; the read is unaligned, which
        // `read_unaligned` allows (a Cortex-M4 loads unaligned words natively).
        let words: [u32; 4] = unsafe { core::ptr::read_unaligned(w.cast::<[u32; 4]>()) };
        for (a, word) in acc.iter_mut().zip(words) {
            let word = u32::from_le(word);
            *a = smlad(x[0], sxtb16(word), *a);
            *a = smlad(x[1], sxtb16_ror8(word), *a);
        }
        w = w.wrapping_add(stride);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packing and the instructions' model give the plain integer dot product, on every
    /// input and weight value (`−128` included, though weights never hold it) and on strides
    /// of every tile width.
    #[test]
    fn packed_products_are_the_plain_sums() {
        let mut state = 0x2017_u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8 as i8
        };
        // Fewer cases under Miri, which interprets every step.
        let sizes: &[usize] = if cfg!(miri) {
            &[0, 1, 5]
        } else {
            &[0, 1, 2, 5, 16, 128]
        };
        for &groups in sizes {
            for width in 1..=12 {
                let stride = 4 * width;
                let first = 4 * (width / 2);
                let x: Vec<i8> = (0..4 * groups).map(|_| next()).collect();
                let q: Vec<i8> = (0..first + stride * groups + 4).map(|_| next()).collect();
                let mut pairs = vec![0u32; 2 * groups];
                pack(&x, &mut pairs);
                let want: i32 = (0..4 * groups)
                    .map(|p| i32::from(x[p]) * i32::from(q[first + p / 4 * stride + p % 4]))
                    .sum();
                assert_eq!(dot_quads(&pairs, &q, first, stride), want);
            }
        }
        // Four features of a tile at once: each the single feature's sum.
        for groups in [1usize, 3, 8] {
            for width in 4..=12 {
                let stride = 4 * width;
                let first = 4 * (width - 4);
                let x: Vec<i8> = (0..4 * groups).map(|_| next()).collect();
                let q: Vec<i8> = (0..first + stride * groups).map(|_| next()).collect();
                let mut pairs = vec![0u32; 2 * groups];
                pack(&x, &mut pairs);
                let four = dot_quads_x4(&pairs, &q, first, stride);
                for (k, &sum) in four.iter().enumerate() {
                    assert_eq!(sum, dot_quads(&pairs, &q, first + 4 * k, stride));
                }
            }
        }
        // The extremes: every product −128 · −128 and 127 · −128.
        let x = [-128i8; 8];
        let mut pairs = [0u32; 4];
        pack(&x, &mut pairs);
        assert_eq!(dot_quads(&pairs, &[-128; 8], 0, 4), 8 * 16_384);
        assert_eq!(dot_quads(&pairs, &[127; 8], 0, 4), 8 * -16_256);
    }
}
