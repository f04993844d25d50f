//! Proves the library builds and runs without `std` or `alloc`: a `#![no_std]` `#![no_main]`
//! program, linked against the C runtime only for its entry point, runs a multi-head forward
//! pass over `static` weights (kept in read-only memory), decodes the same tokens through a KV
//! cache, and reports through its exit code.

#![no_std]
#![no_main]

use core::panic::PanicInfo;

use static_attention::positions::NoPositions;
use static_attention::{Alignment, KvCache, Linear, Mask, MultiHead, SMatrix};

const SEQ: usize = 4;
const DIM: usize = 8;
const HEADS: usize = 2;

/// Deterministic weights: a scaled identity plus a small pattern, built in a `const fn`.
const fn weights(seed: usize) -> [[f32; DIM]; DIM] {
    let mut w = [[0.0f32; DIM]; DIM];
    let mut r = 0;
    while r < DIM {
        let mut c = 0;
        while c < DIM {
            let k = (r * 7 + c * 3 + seed) % 11;
            w[r][c] = if r == c { 0.5 } else { 0.0 } + (k as f32 - 5.0) * 0.02;
            c += 1;
        }
        r += 1;
    }
    w
}

static LAYER: MultiHead<SEQ, DIM, HEADS> = MultiHead::from_parts(
    Linear::from_rows(weights(1), [0.01; DIM]),
    Linear::from_rows(weights(2), [0.0; DIM]),
    Linear::from_rows(weights(3), [-0.01; DIM]),
    Linear::from_rows(weights(4), [0.1; DIM]),
);

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let x = SMatrix::<f32, SEQ, DIM>::from_fn(|i, j| ((i * DIM + j) % 5) as f32 * 0.25 - 0.5);
    let y = LAYER.forward(&x, &Mask::causal(Alignment::TopLeft));
    let (y2, w) = LAYER.forward_with_weights(&x, &Mask::causal(Alignment::TopLeft));
    // Exit 0 only if the pass produced finite output, both paths agree, and the weights are
    // causal probability rows.
    // Which kernel the no_std detection (cfg!(target_feature), else CPUID + XGETBV) chose.
    let name = static_attention::kernels::selected().name();
    let mut line = [0u8; 32];
    let text = b"kernel: ";
    line[..text.len()].copy_from_slice(text);
    line[text.len()..text.len() + name.len()].copy_from_slice(name.as_bytes());
    line[text.len() + name.len()] = b'\n';
    // SAFETY: writes `len` initialised bytes of `line` to standard output.
    unsafe { write(1, line.as_ptr(), text.len() + name.len() + 1) };
    // Decoding the same tokens one at a time through a cache on the stack gives the rows of
    // the causal forward.
    let mut cache = KvCache::<8, DIM>::new();
    let mut decoded = true;
    for t in 0..SEQ {
        let token = x.fixed_rows::<1>(t).into_owned();
        decoded &= match LAYER.decode(&token, &mut cache, &NoPositions) {
            Ok(row) => (row - y.fixed_rows::<1>(t)).amax() < 1e-5,
            Err(_) => false,
        };
    }
    let finite = y.iter().all(|v| v.is_finite());
    let agree = (y - y2).amax() < 1e-5;
    let causal = w.head(0)[(0, 1)] == 0.0 && (w.head(1).row(2).sum() - 1.0).abs() < 1e-5;
    if finite && agree && causal && decoded {
        0
    } else {
        1
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}

// The C library provides the entry point (`_start` calls `main`) and `memset`/`memcpy`; no
// Rust standard library is linked.
#[link(name = "c")]
unsafe extern "C" {
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
}

/// The precompiled `core` refers to the unwinding personality routine even though this binary
/// aborts on panic (`panic = "abort"`); nothing ever calls it. Without `std`, a stable build
/// has to provide the symbol itself.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
