//! The few math functions the crate needs, from the standard library with `std` and from
//! `libm` without it, so the same code builds for `#![no_std]` targets.

#[cfg(feature = "std")]
mod imp {
    #[inline]
    pub fn expf(x: f32) -> f32 {
        x.exp()
    }
    #[inline]
    pub fn exp(x: f64) -> f64 {
        x.exp()
    }
    #[inline]
    pub fn sqrtf(x: f32) -> f32 {
        x.sqrt()
    }
    #[inline]
    pub fn sqrt(x: f64) -> f64 {
        x.sqrt()
    }
    #[inline]
    pub fn sin(x: f64) -> f64 {
        x.sin()
    }
    #[inline]
    pub fn cos(x: f64) -> f64 {
        x.cos()
    }
    #[inline]
    pub fn pow(x: f64, y: f64) -> f64 {
        x.powf(y)
    }
}
#[cfg(all(not(feature = "std"), feature = "libm"))]
mod imp {
    pub use libm::{cos, exp, expf, pow, sin, sqrt, sqrtf};
}
#[allow(unused_imports)]
pub(crate) use imp::*;

/// `2^e` for `−1022 ≤ e ≤ 1023`, exactly (built from the exponent bits; no library call).
#[must_use]
pub(crate) fn powi2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

// RoPE scaling (positions.rs): natural logarithm, floor and ceiling, from std or libm.
#[cfg(feature = "std")]
mod rope_imp {
    #[inline]
    pub fn ln(x: f64) -> f64 {
        x.ln()
    }
    #[inline]
    pub fn floor(x: f64) -> f64 {
        x.floor()
    }
    #[inline]
    pub fn ceil(x: f64) -> f64 {
        x.ceil()
    }
}
#[cfg(all(not(feature = "std"), feature = "libm"))]
mod rope_imp {
    pub use libm::{ceil, floor, log as ln};
}
pub(crate) use rope_imp::{ceil, floor, ln};

/// `tanh`, for the soft-capping of attention scores (`c · tanh(z / c)`): the standard
/// library's with `std`, `libm`'s without.
#[cfg(feature = "std")]
#[inline]
pub(crate) fn tanhf(x: f32) -> f32 {
    x.tanh()
}
/// See [`tanhf`].
#[cfg(feature = "std")]
#[inline]
pub(crate) fn tanh(x: f64) -> f64 {
    x.tanh()
}
#[cfg(all(not(feature = "std"), feature = "libm"))]
pub(crate) use libm::{tanh, tanhf};
