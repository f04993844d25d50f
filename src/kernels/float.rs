//! The scalar types the library computes in: `f32` (the main type) and `f64` (also the
//! accuracy oracle in the tests). Each carries, hidden, its table of kernel functions per
//! instruction set (see `kernels::Table`), so that the kernels are chosen by type with no
//! casts between scalar types.

use nalgebra::RealField;

use super::Kernel;
use super::math;
use super::table::Table;

pub(crate) mod sealed {
    use super::{Kernel, Table};

    /// What makes a scalar type one the kernels run on; implemented for `f32` and `f64` only.
    pub trait Element: Sized + 'static {
        /// The kernel table of `kernel` for this scalar type.
        ///
        /// # Safety
        /// The CPU must run `kernel` (`kernel.is_supported()`): the table's functions use its
        /// instructions.
        unsafe fn table(kernel: Kernel) -> &'static Table<Self>;

        /// `tanh(x)` with the platform's `tanh` (the scalar kernel's soft-capping). Here
        /// rather than on `Float` so that the public trait does not grow.
        fn tanh_(self) -> Self;
    }
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
    + sealed::Element
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
    ($t:ty, $exp:ident, $sqrt:ident, $tanh:ident, $tables:ident) => {
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

        impl sealed::Element for $t {
            unsafe fn table(kernel: Kernel) -> &'static Table<Self> {
                match kernel {
                    // SAFETY: the caller guarantees the CPU runs `kernel`.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2Fma | Kernel::Avx512 | Kernel::Avx512Bf16 => unsafe {
                        super::x86::$tables(kernel)
                    },
                    // SAFETY: as above (NEON is the aarch64 baseline in any case).
                    #[cfg(target_arch = "aarch64")]
                    Kernel::Neon | Kernel::NeonBf16 => unsafe { super::arm::$tables(kernel) },
                    _ => &super::scalar::Tables::<$t>::TABLE,
                }
            }

            #[inline]
            fn tanh_(self) -> Self {
                math::$tanh(self)
            }
        }
    };
}

impl_float!(f32, expf, sqrtf, tanhf, table_f32);
impl_float!(f64, exp, sqrt, tanh, table_f64);
