//! Attention on a Cortex-M4F, no heap: a `MultiHead<16, 64, 4>` forward pass and a
//! grouped-query layer decoding through a KV cache with RoPE, both layers `static` (weights in
//! flash, built at compile time from `model.bin`). Results go out over semihosting, one value
//! per line (`mha t f value`, `mha16 …` for the copy with f16 weights, `mha8 …` for the one
//! with i8 weights, `gqa t f value`), then
//! a checksum, the stack high-water mark and the layers' sizes; the program exits 0 through
//! semihosting.
//!
//! `cargo run --release` (from this directory) runs it under QEMU; `tests/firmware.rs` in the
//! library checks the printed values against the same model computed on the host.

#![no_std]
#![no_main]

mod model;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use static_attention::positions::{Rope, RopeStyle};
use static_attention::{Alignment, KvCache, Mask, MultiHead, SMatrix, Scratch};

use model::{CAP, DIM, GQA, HEAD_DIM, KV_DIM, MAX_POS, MHA, MHA8, MHA16, PROMPT, SEQ, STEPS};

#[entry]
fn main() -> ! {
    hprintln!("kernel {}", static_attention::kernels::selected().name());

    // Every output goes out as `label token feature value` (the line `tests/firmware.rs`
    // parses) and into the checksum. `rows` is an `n × DIM` matrix's column-major storage (as
    // nalgebra keeps it), its first row token `first`.
    let mut sum = 0.0f64;
    let mut sum_sq = 0.0f64;
    let mut emit = |label: &str, first: usize, rows: &[f32], n: usize| {
        for t in 0..n {
            for f in 0..DIM {
                let v = rows[t + f * n];
                hprintln!("{} {} {} {:?}", label, first + t, f, v);
                sum += f64::from(v);
                sum_sq += f64::from(v) * f64::from(v);
            }
        }
    };

    // Forward pass: caller-owned scratch and output on the stack.
    let x = model::input();
    let mut scratch = Scratch::<SEQ, SEQ, DIM>::new();
    let mut y = SMatrix::<f32, SEQ, DIM>::zeros();
    // Each forward pass is bracketed by marks (see `mark`); the first pair, with nothing
    // between, is the marks' own cost.
    mark();
    mark();
    mark();
    MHA.forward_into(&x, &Mask::causal(Alignment::TopLeft), &mut scratch, &mut y);
    mark();
    emit("mha", 0, y.as_slice(), SEQ);

    // The same forward pass with the f16-weight copy of the layer.
    mark();
    MHA16.forward_into(&x, &Mask::causal(Alignment::TopLeft), &mut scratch, &mut y);
    mark();
    emit("mha16", 0, y.as_slice(), SEQ);

    // And with the i8-weight copy (W8A8 projections, f32 attention).
    mark();
    MHA8.forward_into(&x, &Mask::causal(Alignment::TopLeft), &mut scratch, &mut y);
    mark();
    emit("mha8", 0, y.as_slice(), SEQ);

    // Decoding: a prompt, then one token at a time, RoPE at the cache's positions.
    // Matched, not `expect`ed: `expect` would link `RopeError`'s `Debug` formatting (about
    // 5 KB of flash) for an error this constant base cannot raise.
    let Ok(rope) = Rope::<HEAD_DIM, MAX_POS>::new(10_000.0, RopeStyle::RotateHalf) else {
        panic!("RoPE base 10 000 is valid");
    };
    let mut cache = KvCache::<CAP, KV_DIM>::new();
    let tokens = model::tokens();
    let prompt = tokens.fixed_rows::<PROMPT>(0).into_owned();
    let mut decoded = 0usize;
    let mut pscratch = Scratch::<PROMPT, PROMPT, DIM, f32, KV_DIM>::new();
    let mut pout = SMatrix::<f32, PROMPT, DIM>::zeros();
    let ok = GQA
        .decode_into(&prompt, &mut cache, &rope, &mut pscratch, &mut pout)
        .is_ok();
    emit("gqa", 0, pout.as_slice(), PROMPT);
    decoded += PROMPT;
    let mut sscratch = Scratch::<1, 1, DIM, f32, KV_DIM>::new();
    let mut sout = SMatrix::<f32, 1, DIM>::zeros();
    let mut steps_ok = ok;
    for t in PROMPT..PROMPT + STEPS {
        let token = tokens.fixed_rows::<1>(t).into_owned();
        steps_ok &= GQA
            .decode_into(&token, &mut cache, &rope, &mut sscratch, &mut sout)
            .is_ok();
        emit("gqa", t, sout.as_slice(), 1);
        decoded += 1;
    }

    hprintln!(
        "checksum {:?} {:?} over {} values",
        sum,
        sum_sq,
        (3 * SEQ + decoded) * DIM
    );
    let stack = cortex_m_stack::stack_size() as usize;
    let untouched = cortex_m_stack::stack_painted() as usize;
    hprintln!("stack high-water mark {} bytes", stack - untouched);
    hprintln!(
        "sizes MultiHead PARAM_BYTES {} (f16 weights: {}, i8 weights: {}) SCRATCH_BYTES {} | GroupedQuery PARAM_BYTES {} | KvCache BYTES {} | decoding Scratch<1, 1, DIM, f32, KV_DIM> BYTES {} | Rope BYTES {}",
        MultiHead::<SEQ, DIM, { model::HEADS }>::PARAM_BYTES,
        MultiHead::<SEQ, DIM, { model::HEADS }, f32, static_attention::f16>::PARAM_BYTES,
        MultiHead::<SEQ, DIM, { model::HEADS }, f32, i8>::PARAM_BYTES,
        MultiHead::<SEQ, DIM, { model::HEADS }>::SCRATCH_BYTES,
        static_attention::GroupedQuery::<DIM, { model::HEADS }, { model::KV_HEADS }, DIM, KV_DIM>::PARAM_BYTES,
        KvCache::<CAP, KV_DIM>::BYTES,
        Scratch::<1, 1, DIM, f32, KV_DIM>::BYTES,
        Rope::<HEAD_DIM, MAX_POS>::BYTES,
    );
    let ok = steps_ok && cache.len() == PROMPT + STEPS && sum.is_finite();
    hprintln!(
        "{}",
        if ok {
            "firmware: ok"
        } else {
            "firmware: FAILED"
        }
    );
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

/// A mark for `scripts/insn_counts.sh`: QEMU's `insn` plugin (`match=sev`) reports the
/// instructions executed between consecutive `sev`s. `SEV` (send event) is a hint that
/// changes nothing here (no other core waits for events), and the firmware executes it
/// nowhere else.
#[inline(always)]
fn mark() {
    cortex_m::asm::sev();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
