//! The largest `MultiHead` the README says fits a part with 1 MiB of flash and 256 KiB of RAM:
//! `MultiHead<48, 248, 8>` with `f32` weights, `MultiHead<32, 352, 8, f32, f16>` with the
//! `f16` feature, or `MultiHead<16, 488, 8, f32, i8>` with the `i8` feature (weights from a
//! `const fn` formula), one causal
//! forward pass with the scratch, input and output in `.bss`. It prints the stack the forward
//! pass needs and a checksum; CI checks flash (`.vector_table` + `.text` + `.rodata`) ≤ 1 MiB
//! and RAM (`.data` + `.bss` + the forward pass's stack) ≤ 256 KiB.

#![no_std]
#![no_main]
// Building 4 × 488² weights in `const fn`s takes the compiler a while; it is meant to.
#![allow(long_running_const_eval)]

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use static_attention::nalgebra::ArrayStorage;
use static_attention::{Alignment, Linear, Mask, MultiHead, SMatrix, Scratch};

/// `f32` weights by default; with the `f16` feature, half-precision weights and a wider layer;
/// with the `i8` feature, symmetric `i8` weights with one `f32` scale per output feature.
#[cfg(not(any(feature = "f16", feature = "i8")))]
mod shape {
    pub const SEQ: usize = 48;
    pub const DIM: usize = 248;
    pub type Wt = f32;
    pub const NAME: &str = "f32";
    pub const fn weight(x: f32) -> Wt {
        x
    }
    pub const fn linear(seed: usize, bias: f32) -> super::Linear<DIM, DIM, f32, Wt> {
        super::Linear::from_rows(super::weights(seed), [bias; DIM])
    }
}
#[cfg(feature = "f16")]
mod shape {
    pub const SEQ: usize = 32;
    pub const DIM: usize = 352;
    pub type Wt = static_attention::f16;
    pub const NAME: &str = "f16";
    pub const fn weight(x: f32) -> Wt {
        static_attention::f16::from_f32_const(x)
    }
    pub const fn linear(seed: usize, bias: f32) -> super::Linear<DIM, DIM, f32, Wt> {
        super::Linear::from_rows(super::weights(seed), [bias; DIM])
    }
}
#[cfg(all(feature = "i8", not(feature = "f16")))]
mod shape {
    pub const SEQ: usize = 16;
    pub const DIM: usize = 488;
    pub type Wt = i8;
    pub const NAME: &str = "i8";
    /// Integers in `−127 ..= 127` from the same kind of formula, each feature's scale
    /// `0.03 / 127` (weights within ±0.03, as in the `f32` layer).
    pub const fn weight(x: f32) -> Wt {
        (x * (127.0 / 0.032)) as i8
    }
    pub const fn linear(seed: usize, bias: f32) -> super::Linear<DIM, DIM, f32, Wt> {
        super::Linear::from_quantized(super::weights(seed), [0.03 / 127.0; DIM], [bias; DIM])
    }
}
use shape::{DIM, SEQ, Wt};
const HEADS: usize = 8;

/// `weight[OUT][IN]` from a formula (values in `−0.03 .. 0.032`), each stored as
/// `shape::weight` makes it.
const fn weights(seed: usize) -> [[Wt; DIM]; DIM] {
    let mut w = [[shape::weight(0.0); DIM]; DIM];
    let mut n = 0;
    while n < DIM {
        let mut p = 0;
        while p < DIM {
            w[n][p] = shape::weight(((n * 31 + p * 17 + seed) % 101) as f32 / 1616.0 - 0.03);
            p += 1;
        }
        n += 1;
    }
    w
}

// One constant per projection: four shorter constant evaluations than one for the whole layer.
const Q: Linear<DIM, DIM, f32, Wt> = shape::linear(1, 0.01);
const K: Linear<DIM, DIM, f32, Wt> = shape::linear(2, 0.0);
const V: Linear<DIM, DIM, f32, Wt> = shape::linear(3, -0.01);
const O: Linear<DIM, DIM, f32, Wt> = shape::linear(4, 0.02);

static LAYER: MultiHead<SEQ, DIM, HEADS, f32, Wt> = MultiHead::from_parts(Q, K, V, O);

/// The working memory, in `.bss`: cortex-m's `singleton!` hands out each `&'static mut` once.
/// (Its initialisers go through this function's frame, which is gone before the forward pass.)
#[inline(never)]
#[allow(clippy::type_complexity)]
fn buffers() -> (
    &'static mut Scratch<SEQ, SEQ, DIM>,
    &'static mut SMatrix<f32, SEQ, DIM>,
    &'static mut SMatrix<f32, SEQ, DIM>,
) {
    let zeros = || SMatrix::from_array_storage(ArrayStorage([[0.0; SEQ]; DIM]));
    (
        cortex_m::singleton!(: Scratch<SEQ, SEQ, DIM> = Scratch::new()).unwrap(),
        cortex_m::singleton!(: SMatrix<f32, SEQ, DIM> = zeros()).unwrap(),
        cortex_m::singleton!(: SMatrix<f32, SEQ, DIM> = zeros()).unwrap(),
    )
}

#[entry]
fn main() -> ! {
    let (scratch, x, y) = buffers();
    for t in 0..SEQ {
        for f in 0..DIM {
            x[(t, f)] = ((t * 7 + f * 13) % 29) as f32 / 14.0 - 1.0;
        }
    }
    // The stack the forward pass needs: repaint what is free now, run, measure.
    cortex_m_stack::repaint_stack();
    let before = cortex_m_stack::stack_size() as usize - cortex_m_stack::stack_painted() as usize;
    LAYER.forward_into(x, &Mask::causal(Alignment::TopLeft), scratch, y);
    let after = cortex_m_stack::stack_size() as usize - cortex_m_stack::stack_painted() as usize;
    hprintln!("forward pass stack: {} bytes", after - before);
    let sum: f32 = y.iter().sum();
    hprintln!(
        "largest: MultiHead<{}, {}, {}, f32, {}> PARAM_BYTES {} SCRATCH_BYTES {} checksum {:?}",
        SEQ,
        DIM,
        HEADS,
        shape::NAME,
        MultiHead::<SEQ, DIM, HEADS, f32, Wt>::PARAM_BYTES,
        MultiHead::<SEQ, DIM, HEADS, f32, Wt>::SCRATCH_BYTES,
        sum
    );
    let ok = sum.is_finite();
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
