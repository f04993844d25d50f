//! The scalar types the library computes in: `f32` (the main type) and `f64` (also the
//! accuracy oracle in the tests).

use nalgebra::RealField;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point scalar the attention code runs on: implemented for `f32` and `f64` only.
///
/// The trait is sealed. It gathers what the kernels need beyond nalgebra's [`RealField`]: the
/// special values of softmax and math functions that work the same with `std` and with the
/// `libm` feature under `#![no_std]`.
pub trait Float:
    RealField
    + Copy
    + Default
    + PartialOrd
    + bytemuck::Pod
    + core::fmt::Debug
    + sealed::Sealed
    + crate::Weight<Self>
{
    /// Negative infinity: the score of a masked key.
    const NEG_INFINITY: Self;
    /// Not a number.
    const NAN: Self;
    /// Zero, as a constant.
    const ZERO: Self;
    /// One, as a constant.
    const ONE: Self;
    /// The machine epsilon of the type.
    const EPSILON: Self;
    /// The largest finite value.
    const MAX: Self;
    /// Size of one value in bytes.
    const BYTES: usize = core::mem::size_of::<Self>();

    /// Converts from `f64` (rounding to nearest for `f32`).
    fn of(x: f64) -> Self;
    /// Converts to `f64` exactly.
    fn to_f64(self) -> f64;
    /// eˣ, with e^(−∞) = 0.
    fn exp_(self) -> Self;
    /// √x.
    fn sqrt_(self) -> Self;
    /// Whether the value is NaN.
    #[inline]
    #[allow(clippy::eq_op)]
    fn is_nan_(self) -> bool {
        self != self
    }
    /// Whether the value is finite (not NaN, not ±∞).
    #[inline]
    fn is_finite_(self) -> bool {
        self.abs_() <= Self::MAX
    }
    /// |x|.
    #[inline]
    fn abs_(self) -> Self {
        if self < Self::ZERO {
            Self::ZERO - self
        } else {
            self
        }
    }
    /// Larger of two values; NaN in `self` propagates.
    #[inline]
    fn max_(self, other: Self) -> Self {
        if other > self { other } else { self }
    }
}

macro_rules! impl_float {
    ($t:ty, $exp:ident, $sqrt:ident) => {
        impl Float for $t {
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const NAN: Self = <$t>::NAN;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const EPSILON: Self = <$t>::EPSILON;
            const MAX: Self = <$t>::MAX;

            #[inline]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp_(self) -> Self {
                math::$exp(self)
            }
            #[inline]
            fn sqrt_(self) -> Self {
                math::$sqrt(self)
            }
        }
    };
}

impl_float!(f32, expf, sqrtf);
impl_float!(f64, exp, sqrt);

/// Math functions: the standard library's with `std`, `libm`'s without.
pub(crate) mod math {
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
}
