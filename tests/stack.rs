//! The stack each public entry point needs: documented, measured and tested.
//!
//! The crate docs (section "Stack") give every entry point's need as a formula in the types'
//! size constants (`SCRATCH_BYTES`, `OUTPUT_BYTES`, `WEIGHTS_BYTES`, `PARAM_BYTES`, ...) plus a
//! fixed allowance for the call's own frames. [`documented`] writes those formulas down once
//! more, independently, and the tests hold the library to them:
//!
//! - `every_entry_point_fits_its_documented_stack` runs each entry point at
//!   `MultiHead<128, 256, 8>` (and scaled dot-product attention at 512 × 512 × 64) in a thread
//!   whose stack is exactly the documented figure plus [`MARGIN`]. A larger need overflows that
//!   stack and aborts the test binary with "thread '<entry point>' has overflowed its stack".
//!   CI runs it in the test profile (`opt-level = 1`), in release and at `opt-level = 0`.
//! - `heap_paths_run_on_a_2_mib_stack` and `other_heap_paths_run_on_a_2_mib_stack` run every
//!   heap or caller-owned entry point at `SEQ = 1024, DIM = 512, HEADS = 8` (the input alone is
//!   2 MiB) in a 2 MiB thread.
//! - `measure` (ignored) finds each entry point's real need by bisection: it re-runs this test
//!   binary with `probe` for each candidate size (an overflow kills only the child) and
//!   prints the table the docs quote:
//!   `cargo test --release --test stack -- --ignored --nocapture measure`
//!   (`STACK_FILTER=forward` measures only the entry points whose name contains `forward`).

use std::hint::black_box;
use std::process::Command;

use static_attention::io::{InProjWeight, LinearParams, PyTorchParams, SelfAttentionParams};
use static_attention::kernels::{KEY_BLOCK, TILE_QUERIES};
use static_attention::positions::{NoPositions, Rope, RopeStyle};
use static_attention::{
    Alignment, AttentionWeights, DecoderScratch, GroupedQuery, KvCache, Mask, MultiHead, SMatrix,
    Scratch, SelfAttention, grouped_query_attention, grouped_query_attention_into, heap,
    scaled_dot_product_attention, scaled_dot_product_attention_into,
    scaled_dot_product_attention_with_weights, scaled_dot_product_attention_with_weights_into,
};

/// Allowance on top of every documented figure in the tests: thread start-up, the glibc TLS
/// block carved from the thread's stack, and page rounding.
const MARGIN: usize = 24 << 10;

const SEQ: usize = 128;
const DIM: usize = 256;
const HEADS: usize = 8;
/// Keys of the cross-attention memory.
const MEM: usize = 96;
/// Scaled dot-product attention shape: `SQ = SKV = 512`, `d = 64`.
const S: usize = 512;
const D: usize = 64;

type Layer = MultiHead<SEQ, DIM, HEADS>;
/// Key/value width of the grouped-query layer: 2 kv heads of 32.
const KV: usize = 64;
type Gqa = GroupedQuery<DIM, HEADS, 2, DIM, KV>;
/// Cache capacity for the decoding entry points.
const CAP: usize = 2 * SEQ;
type Head = SelfAttention<SEQ, DIM>;

const F32: usize = 4;

/// Which formula an entry point's documented need follows (crate docs, "Stack").
#[derive(Clone, Copy, Debug)]
enum Need {
    /// Only the call's own frames: [`frames`].
    Frames,
    /// `bytes` of values it holds, plus frames.
    Holds(usize),
}

/// The fixed allowance for an entry point's own frames (loops, pointers, small arrays), in
/// the profile this test was built with: 16 KiB at `opt-level ≥ 1`, 320 KiB at `opt-level =
/// 0`, where the SIMD kernels' inlined micro-tiles each keep their own stack slots. See the
/// crate docs.
fn frames() -> usize {
    if opt_level_zero() {
        320 << 10
    } else {
        16 << 10
    }
}

/// The documented need of an entry point that holds `held` bytes of big values at
/// `opt-level ≥ 1`; at `opt-level = 0` (no optimisation at all) the compiler keeps up to
/// three more temporary copies of each, so the crate documents `4·held` there.
fn documented(need: Need) -> usize {
    let held = match need {
        Need::Frames => 0,
        Need::Holds(bytes) => bytes,
    };
    let factor = if opt_level_zero() { 4 } else { 1 };
    factor * held + frames()
}

/// Whether this binary was built without optimisation. Cargo does not tell a test its
/// optimisation level, so CI says so when it builds one: `STACK_TEST_OPT_LEVEL_0=1 cargo test
/// --profile dev --test stack` (the `dev` profile is `opt-level = 0`; `cargo test` itself uses
/// the `test` profile, `opt-level = 1` in this crate).
fn opt_level_zero() -> bool {
    option_env!("STACK_TEST_OPT_LEVEL_0").is_some()
}

/// A heap matrix whose `i`-th value (column-major order) is `f(i)`.
fn filled<const R: usize, const C: usize>(f: impl Fn(f32) -> f32) -> Box<SMatrix<f32, R, C>> {
    let mut m = heap::zeros::<f32, R, C>();
    m.iter_mut().enumerate().for_each(|(i, v)| *v = f(i as f32));
    m
}

/// The inputs every entry point reads, built once on the heap (outside the measured thread).
struct Inputs {
    layer: Box<Layer>,
    head: Box<Head>,
    x: Box<SMatrix<f32, SEQ, DIM>>,
    memory: Box<SMatrix<f32, MEM, DIM>>,
    q: Box<SMatrix<f32, S, D>>,
    mha_file: Vec<u8>,
    head_file: Vec<u8>,
    in_proj: Vec<f32>,
    out_proj: Vec<f32>,
    bias3: Vec<f32>,
    bias: Vec<f32>,
    gqa: Box<Gqa>,
    gqa_file: Vec<u8>,
    rope: Box<Rope<32, SEQ>>,
    heads_q: Box<[SMatrix<f32, SEQ, D>; 4]>,
    heads_kv: Box<[SMatrix<f32, SEQ, D>; 2]>,
    /// The outputs of `grouped_query_attention_into`, built outside the measured thread.
    heads_out: std::sync::Mutex<Box<[SMatrix<f32, SEQ, D>; 4]>>,
}

impl Inputs {
    fn new() -> Self {
        let layer = Layer::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(1));
        let head = Head::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(2));
        let x = filled::<SEQ, DIM>(|i| (i * 0.37).sin());
        let memory = filled::<MEM, DIM>(|i| (i * 0.11).cos());
        let q = filled::<S, D>(|i| (i * 0.07).sin());
        let gqa = Gqa::new_boxed(
            &mut static_attention::init::SeedRng::from_seed_u64(5),
            static_attention::Bias::Absent,
        );
        let mut heads_q = Box::new([SMatrix::<f32, SEQ, D>::zeros(); 4]);
        for (h, m) in heads_q.iter_mut().enumerate() {
            m.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = ((i + h) as f32 * 0.05).sin());
        }
        let heads_kv = Box::new([heads_q[0], heads_q[1]]);
        Self {
            gqa_file: gqa.to_safetensors("").unwrap(),
            gqa,
            rope: Rope::new_boxed(10_000.0, RopeStyle::RotateHalf),
            heads_q,
            heads_kv,
            heads_out: std::sync::Mutex::new(Box::new([SMatrix::zeros(); 4])),
            mha_file: layer.to_safetensors("").unwrap(),
            head_file: head.to_safetensors("").unwrap(),
            in_proj: vec![0.01; 3 * DIM * DIM],
            out_proj: vec![0.02; DIM * DIM],
            bias3: vec![0.0; 3 * DIM],
            bias: vec![0.0; DIM],
            layer,
            head,
            x,
            memory,
            q,
        }
    }

    fn pytorch(&self) -> PyTorchParams<'_, f32> {
        PyTorchParams {
            in_proj_weight: InProjWeight::Packed(&self.in_proj),
            in_proj_bias: Some(&self.bias3),
            out_proj_weight: &self.out_proj,
            out_proj_bias: Some(&self.bias),
        }
    }

    fn head_params(&self) -> SelfAttentionParams<'_, f32> {
        let l = LinearParams {
            weight: &self.out_proj,
            bias: Some(&self.bias),
        };
        SelfAttentionParams {
            q_proj: l,
            k_proj: l,
            v_proj: l,
        }
    }
}

/// A small extension so the test reads like user code.
trait SeedU64 {
    fn from_seed_u64(seed: u64) -> Self;
}
impl SeedU64 for static_attention::init::SeedRng {
    fn from_seed_u64(seed: u64) -> Self {
        use static_attention::rand::SeedableRng;
        Self::seed_from_u64(seed)
    }
}

/// One entry point: its name, its documented need, and a call of it.
struct Entry {
    name: &'static str,
    need: Need,
    run: fn(&Inputs),
}

macro_rules! entries {
    ($($name:literal, $need:expr, |$i:ident| $body:expr;)+) => {
        vec![$(Entry { name: $name, need: $need, run: |$i: &Inputs| { black_box($body); } }),+]
    };
}

/// Sizes of the big values, from the crate's constants.
const PARAM: usize = Layer::PARAM_BYTES;
const HEAD_PARAM: usize = Head::PARAM_BYTES;
const SCRATCH: usize = Layer::SCRATCH_BYTES;
const CROSS_SCRATCH: usize = Scratch::<SEQ, MEM, DIM>::BYTES;
const OUT: usize = Layer::OUTPUT_BYTES;
const WEIGHTS: usize = Layer::WEIGHTS_BYTES;
const CROSS_WEIGHTS: usize = AttentionWeights::<SEQ, MEM, HEADS>::BYTES;
const HEAD_WEIGHTS: usize = Head::WEIGHTS_BYTES;
const SDPA_OUT: usize = S * D * F32;
const SDPA_WEIGHTS: usize = S * S * F32;
const DEC_SCRATCH: usize = DecoderScratch::<SEQ, DIM, DIM>::BYTES;
const GQA_SCRATCH: usize = DecoderScratch::<SEQ, DIM, KV>::BYTES;
const GQA_PARAM: usize = Gqa::PARAM_BYTES;
/// A rotary table for heads of 32 and 4096 positions.
const ROPE_POS: usize = 4096;
const ROPE: usize = Rope::<32, ROPE_POS>::BYTES;
/// 4 query heads of `SEQ × D`.
const GQA_SDPA_OUT: usize = 4 * SEQ * D * F32;
/// The streaming kernel's block state: `TILE_QUERIES · (D + 2 · KEY_BLOCK)` scalars.
const SDPA_WORK: usize = TILE_QUERIES * (D + 2 * KEY_BLOCK) * F32;

fn entry_points() -> Vec<Entry> {
    use Need::{Frames, Holds};
    entries![
        // Construction and loading.
        "MultiHead::zeros", Holds(PARAM), |_i| Layer::zeros();
        "MultiHead::from_seed", Holds(2 * PARAM), |_i| Layer::from_seed(3);
        "MultiHead::new_boxed", Frames, |_i| Layer::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(3));
        "MultiHead::zeros_boxed", Frames, |_i| Layer::zeros_boxed();
        "MultiHead::from_pytorch", Holds(3 * PARAM), |i| Layer::from_pytorch(&i.pytorch()).unwrap();
        "MultiHead::from_pytorch_boxed", Frames, |i| Layer::from_pytorch_boxed(&i.pytorch()).unwrap();
        "MultiHead::from_safetensors", Holds(3 * PARAM), |i| Layer::from_safetensors(&i.mha_file, "").unwrap();
        "MultiHead::from_safetensors_boxed", Frames, |i| Layer::from_safetensors_boxed(&i.mha_file, "").unwrap();
        "MultiHead::load_safetensors", Frames, |i| {
            let mut l = Layer::zeros_boxed();
            l.load_safetensors(&i.mha_file, "").unwrap();
            l
        };
        "MultiHead::to_safetensors", Frames, |i| i.layer.to_safetensors("").unwrap();
        "SelfAttention::from_seed", Holds(2 * HEAD_PARAM), |_i| Head::from_seed(3);
        "SelfAttention::new_boxed", Frames, |_i| Head::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(3));
        "SelfAttention::from_pytorch", Holds(3 * HEAD_PARAM), |i| Head::from_pytorch(&i.head_params()).unwrap();
        "SelfAttention::from_pytorch_boxed", Frames, |i| Head::from_pytorch_boxed(&i.head_params()).unwrap();
        "SelfAttention::from_safetensors", Holds(3 * HEAD_PARAM), |i| Head::from_safetensors(&i.head_file, "").unwrap();
        "SelfAttention::from_safetensors_boxed", Frames, |i| Head::from_safetensors_boxed(&i.head_file, "").unwrap();
        "Scratch::new", Holds(SCRATCH), |_i| Scratch::<SEQ, SEQ, DIM>::new();
        "Scratch::new_boxed", Frames, |_i| Scratch::<SEQ, SEQ, DIM>::new_boxed();
        "AttentionWeights::zeros", Holds(WEIGHTS), |_i| AttentionWeights::<SEQ, SEQ, HEADS>::zeros();
        "AttentionWeights::new_boxed", Frames, |_i| AttentionWeights::<SEQ, SEQ, HEADS>::new_boxed();
        // MultiHead forward passes.
        "MultiHead::forward", Holds(SCRATCH + 2 * OUT), |i| i.layer.forward(&i.x, &Mask::causal(Alignment::TopLeft));
        "MultiHead::forward_into", Frames, |i| {
            let (mut s, mut o) = (Scratch::new_boxed(), heap::zeros());
            i.layer.forward_into(&i.x, &Mask::none(), &mut s, &mut o);
        };
        "MultiHead::forward_boxed", Frames, |i| i.layer.forward_boxed(&i.x, &Mask::none());
        "MultiHead::forward_with_weights", Holds(SCRATCH + 2 * (OUT + WEIGHTS)), |i| i.layer.forward_with_weights(&i.x, &Mask::none());
        "MultiHead::forward_with_weights_into", Frames, |i| {
            let (mut s, mut o, mut w) = (Scratch::new_boxed(), heap::zeros(), AttentionWeights::new_boxed());
            i.layer.forward_with_weights_into(&i.x, &Mask::none(), &mut s, &mut o, &mut w);
        };
        "MultiHead::forward_with_weights_boxed", Frames, |i| i.layer.forward_with_weights_boxed(&i.x, &Mask::none());
        "MultiHead::cross_attention", Holds(CROSS_SCRATCH + 2 * OUT), |i| i.layer.cross_attention(&i.x, &i.memory, &Mask::none());
        "MultiHead::cross_attention_into", Frames, |i| {
            let (mut s, mut o) = (Scratch::new_boxed(), heap::zeros());
            i.layer.cross_attention_into(&i.x, &i.memory, &Mask::none(), &mut s, &mut o);
        };
        "MultiHead::cross_attention_with_weights", Holds(CROSS_SCRATCH + 2 * (OUT + CROSS_WEIGHTS)), |i| i.layer.cross_attention_with_weights(&i.x, &i.memory, &Mask::none());
        "MultiHead::cross_attention_with_weights_into", Frames, |i| {
            let (mut s, mut o, mut w) = (Scratch::new_boxed(), heap::zeros(), AttentionWeights::new_boxed());
            i.layer.cross_attention_with_weights_into(&i.x, &i.memory, &Mask::none(), &mut s, &mut o, &mut w);
        };
        "MultiHead::attend", Frames, |i| {
            let (mut s, mut o, mut w) = (Scratch::new_boxed(), heap::zeros(), AttentionWeights::new_boxed());
            i.layer.attend(&i.x, &i.memory, &i.memory, &Mask::none(), &mut s, &mut o, Some(&mut w));
        };
        // SelfAttention forward passes.
        "SelfAttention::forward", Holds(SCRATCH + 2 * OUT), |i| i.head.forward(&i.x, &Mask::none());
        "SelfAttention::forward_into", Frames, |i| {
            let (mut s, mut o) = (Scratch::new_boxed(), heap::zeros());
            i.head.forward_into(&i.x, &Mask::none(), &mut s, &mut o);
        };
        "SelfAttention::forward_boxed", Frames, |i| i.head.forward_boxed(&i.x, &Mask::none());
        "SelfAttention::forward_with_weights", Holds(SCRATCH + 2 * (OUT + HEAD_WEIGHTS)), |i| i.head.forward_with_weights(&i.x, &Mask::none());
        "SelfAttention::forward_with_weights_into", Frames, |i| {
            let (mut s, mut o, mut w) = (Scratch::new_boxed(), heap::zeros(), heap::zeros());
            i.head.forward_with_weights_into(&i.x, &Mask::none(), &mut s, &mut o, &mut w);
        };
        "SelfAttention::forward_with_weights_boxed", Frames, |i| i.head.forward_with_weights_boxed(&i.x, &Mask::none());
        "SelfAttention::cross_attention", Holds(CROSS_SCRATCH + 2 * OUT), |i| i.head.cross_attention(&i.x, &i.memory, &Mask::none());
        "SelfAttention::cross_attention_with_weights", Holds(CROSS_SCRATCH + 2 * (OUT + SEQ * MEM * F32)), |i| i.head.cross_attention_with_weights(&i.x, &i.memory, &Mask::none());
        "SelfAttention::attend", Frames, |i| {
            let (mut s, mut o, mut w) = (Scratch::new_boxed(), heap::zeros(), heap::zeros());
            i.head.attend(&i.x, &i.memory, &i.memory, &Mask::none(), &mut s, &mut o, Some(&mut w));
        };
        // Scaled dot-product attention, 512 × 512 × 64.
        "scaled_dot_product_attention", Holds(2 * SDPA_OUT + SDPA_WORK), |i| scaled_dot_product_attention(&i.q, &i.q, &i.q, &Mask::none(), None);
        "scaled_dot_product_attention_into", Holds(SDPA_WORK), |i| {
            let mut o = heap::zeros();
            scaled_dot_product_attention_into(&i.q, &i.q, &i.q, &Mask::none(), None, &mut o);
        };
        "scaled_dot_product_attention_with_weights", Holds(2 * (SDPA_OUT + SDPA_WEIGHTS)), |i| scaled_dot_product_attention_with_weights(&i.q, &i.q, &i.q, &Mask::none(), None);
        "scaled_dot_product_attention_with_weights_into", Frames, |i| {
            let (mut o, mut w) = (heap::zeros(), heap::zeros());
            scaled_dot_product_attention_with_weights_into(&i.q, &i.q, &i.q, &Mask::none(), None, &mut o, &mut w);
        };
        // Pieces.
        "Linear::forward", Holds(2 * OUT), |i| i.layer.q_proj().forward(&i.x);
        "Linear::forward_into", Frames, |i| {
            let mut o = heap::zeros();
            i.layer.q_proj().forward_into(&i.x, &mut o);
        };
        // Decoder pieces: a SEQ-token prompt into a boxed cache.
        "MultiHead::decode", Holds(DEC_SCRATCH + 3 * OUT), |i| {
            let mut c = KvCache::<CAP, DIM>::new_boxed();
            i.layer.decode(&i.x, &mut c, &NoPositions).expect("fits")
        };
        "MultiHead::decode_into", Frames, |i| {
            let (mut c, mut s, mut o) = (KvCache::<CAP, DIM>::new_boxed(), DecoderScratch::new_boxed(), heap::zeros());
            i.layer.decode_into(&i.x, &mut c, &NoPositions, &mut s, &mut o).expect("fits");
        };
        "GroupedQuery::forward", Holds(GQA_SCRATCH + 3 * OUT), |i| {
            i.gqa.forward(&i.x, &Mask::causal(Alignment::TopLeft), &*i.rope).expect("fits")
        };
        "GroupedQuery::forward_into", Frames, |i| {
            let (mut s, mut o) = (DecoderScratch::new_boxed(), heap::zeros());
            i.gqa.forward_into(&i.x, &Mask::causal(Alignment::TopLeft), &*i.rope, &mut s, &mut o).expect("fits");
        };
        "GroupedQuery::decode", Holds(GQA_SCRATCH + 3 * OUT), |i| {
            let mut c = KvCache::<CAP, KV>::new_boxed();
            i.gqa.decode(&i.x, &mut c, &*i.rope).expect("fits")
        };
        "GroupedQuery::decode_into", Frames, |i| {
            let (mut c, mut s, mut o) = (KvCache::<CAP, KV>::new_boxed(), DecoderScratch::new_boxed(), heap::zeros());
            i.gqa.decode_into(&i.x, &mut c, &*i.rope, &mut s, &mut o).expect("fits");
        };
        "GroupedQuery::from_seed", Holds(2 * GQA_PARAM), |_i| Gqa::from_seed(3);
        "GroupedQuery::new_boxed", Frames, |_i| Gqa::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(3), static_attention::Bias::Present);
        "GroupedQuery::from_safetensors", Holds(3 * GQA_PARAM), |i| Gqa::from_safetensors(&i.gqa_file, "").expect("loads");
        "GroupedQuery::from_safetensors_boxed", Frames, |i| Gqa::from_safetensors_boxed(&i.gqa_file, "").expect("loads");
        "KvCache::new", Holds(KvCache::<CAP, DIM>::BYTES), |_i| KvCache::<CAP, DIM>::new();
        "KvCache::new_boxed", Frames, |_i| KvCache::<CAP, DIM>::new_boxed();
        "Rope::new", Holds(2 * ROPE), |_i| Rope::<32, ROPE_POS>::new(10_000.0, RopeStyle::RotateHalf);
        "Rope::new_boxed", Frames, |_i| Rope::<32, ROPE_POS>::new_boxed(10_000.0, RopeStyle::RotateHalf);
        "grouped_query_attention", Holds(2 * GQA_SDPA_OUT + SDPA_WORK), |i| {
            grouped_query_attention(&i.heads_q, &i.heads_kv, &i.heads_kv, &Mask::none(), None)
        };
        "grouped_query_attention_into", Holds(SDPA_WORK), |i| {
            let mut o = i.heads_out.lock().unwrap();
            grouped_query_attention_into(&i.heads_q, &i.heads_kv, &i.heads_kv, &Mask::none(), None, &mut o);
        };
        "AttentionWeights::average", Holds(3 * SEQ * SEQ * F32), |i| {
            let w = AttentionWeights::<SEQ, SEQ, HEADS>::new_boxed();
            let _ = i;
            w.average()
        };
    ]
}

/// Runs `entry` in a thread with exactly `stack` bytes of stack.
fn run_with_stack(entry: &Entry, inputs: &Inputs, stack: usize) {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(entry.name.into())
            .stack_size(stack)
            .spawn_scoped(scope, || (entry.run)(inputs))
            .expect("spawn")
            .join()
            .expect("the entry point panicked");
    });
}

#[test]
fn every_entry_point_fits_its_documented_stack() {
    let inputs = Inputs::new();
    for entry in entry_points() {
        // An overflow aborts the whole binary, naming the thread (the entry point).
        run_with_stack(&entry, &inputs, documented(entry.need) + MARGIN);
    }
}

/// Child side of `measure`: runs the entry point named in `STACK_PROBE` ("name=bytes") in a
/// thread of that many bytes. Does nothing without the variable.
#[test]
#[ignore = "helper process of `measure`"]
fn probe() {
    let Ok(spec) = std::env::var("STACK_PROBE") else {
        return;
    };
    let (name, bytes) = spec.split_once('=').expect("name=bytes");
    let bytes: usize = bytes.parse().expect("bytes");
    let entry = entry_points()
        .into_iter()
        .find(|e| e.name == name)
        .expect("known entry point");
    run_with_stack(&entry, &Inputs::new(), bytes);
}

/// Whether the entry point runs with `bytes` of stack, in a child process.
fn fits(name: &str, bytes: usize) -> bool {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["probe", "--exact", "--ignored", "--test-threads=1"])
        .env("STACK_PROBE", format!("{name}={bytes}"))
        .output()
        .expect("child")
        .status
        .success()
}

#[test]
#[ignore = "measurement; prints the table the docs quote"]
fn measure() {
    const STEP: usize = 4 << 10;
    println!("| entry point | measured KiB | documented KiB | documented − measured |");
    println!("|---|---|---|---|");
    let only = std::env::var("STACK_FILTER").unwrap_or_default();
    for entry in entry_points()
        .into_iter()
        .filter(|e| e.name.contains(&only))
    {
        let (mut lo, mut hi) = (STEP, 64 << 20);
        assert!(
            fits(entry.name, hi),
            "{} does not run in 64 MiB",
            entry.name
        );
        while hi - lo > STEP {
            let mid = (lo + hi) / 2 / STEP * STEP;
            if fits(entry.name, mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let doc = documented(entry.need);
        println!(
            "| `{}` | {} | {} | {:+} |",
            entry.name,
            hi >> 10,
            doc >> 10,
            (doc as isize - hi as isize) >> 10
        );
    }
}

/// Largest absolute difference (without building a difference matrix on the stack).
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `SEQ = 1024, DIM = 512, HEADS = 8`: every heap or caller-owned entry point in a 2 MiB
/// thread.
#[test]
fn heap_paths_run_on_a_2_mib_stack() {
    const SEQ: usize = 1024;
    const DIM: usize = 512;
    const HEADS: usize = 8;
    type Big = MultiHead<SEQ, DIM, HEADS>;
    type BigHead = SelfAttention<SEQ, DIM>;
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let layer = Big::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(5));
            let file = layer.to_safetensors("").expect("save");
            let loaded = Big::from_safetensors_boxed(&file, "").expect("load");
            assert_eq!(*loaded, *layer);
            let x = filled::<SEQ, DIM>(|i| (i * 0.013).sin());
            let mask = Mask::causal(Alignment::TopLeft);

            let y = layer.forward_boxed(&x, &mask);
            let (yw, w) = layer.forward_with_weights_boxed(&x, &mask);
            assert!(max_diff(y.as_slice(), yw.as_slice()) < 2e-6);
            assert!((w.head(7).row(1023).sum() - 1.0).abs() < 1e-4);

            let mut scratch = Scratch::<SEQ, SEQ, DIM>::new_boxed();
            let mut out = heap::zeros::<f32, SEQ, DIM>();
            layer.forward_into(&x, &mask, &mut scratch, &mut out);
            assert_eq!(*out, *y);

            let head = BigHead::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(6));
            let hy = head.forward_boxed(&x, &mask);
            let (hyw, _) = head.forward_with_weights_boxed(&x, &mask);
            assert!(max_diff(hy.as_slice(), hyw.as_slice()) < 2e-6);

            // Scaled dot-product attention over 1024 × 1024 × 64 with its 4 MiB of weights.
            let q = heap::zeros::<f32, SEQ, 64>();
            let mut o = heap::zeros::<f32, SEQ, 64>();
            let mut sw = heap::zeros::<f32, SEQ, SEQ>();
            scaled_dot_product_attention_with_weights_into(
                &q, &q, &q, &mask, None, &mut o, &mut sw,
            );
            assert!((sw.row(1023).sum() - 1.0).abs() < 1e-4);
        })
        .expect("spawn")
        .join()
        .expect("the 2 MiB thread finished without overflowing its stack");
}

/// The remaining heap and caller-owned entry points at `SEQ = 1024, DIM = 512, HEADS = 8` in
/// a 2 MiB thread: construction and loading in place (zeroed then `load_safetensors`, the
/// PyTorch loaders, `SelfAttention`'s loader), cross-attention and `attend` (a 16-key memory
/// keeps the work small under emulation), scaled dot-product attention without weights,
/// grouped-query attention, `Linear::forward_into`, and the decoder pieces (boxed caches,
/// scratch, rotary table and a grouped-query layer at the same width).
#[test]
fn other_heap_paths_run_on_a_2_mib_stack() {
    const SEQ: usize = 1024;
    const DIM: usize = 512;
    const HEADS: usize = 8;
    const MEM: usize = 16;
    const D: usize = DIM / HEADS;
    type Big = MultiHead<SEQ, DIM, HEADS>;
    type BigHead = SelfAttention<SEQ, DIM>;
    type BigGqa = GroupedQuery<DIM, HEADS, 2, DIM, { 2 * D }>;
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let layer = Big::new_boxed(&mut static_attention::init::SeedRng::from_seed_u64(7));
            let mut loaded = Big::zeros_boxed();
            loaded
                .load_safetensors(&layer.to_safetensors("").expect("save"), "")
                .expect("load");
            assert_eq!(*loaded, *layer);

            // The PyTorch loaders, from flat row-major arrays.
            let (w3, b3) = (vec![0.01_f32; 3 * DIM * DIM], vec![0.5_f32; 3 * DIM]);
            let (w, b) = (vec![0.02_f32; DIM * DIM], vec![0.25_f32; DIM]);
            let torch = Big::from_pytorch_boxed(&PyTorchParams {
                in_proj_weight: InProjWeight::Packed(&w3),
                in_proj_bias: Some(&b3),
                out_proj_weight: &w,
                out_proj_bias: Some(&b),
            })
            .expect("PyTorch weights load");
            // `weight()` would copy 1 MiB onto the stack; `weight_into` writes where it is told.
            let mut wq = heap::zeros::<f32, DIM, DIM>();
            torch.q_proj().weight_into(&mut wq);
            assert!(wq.iter().all(|&v| v == 0.01));
            let l = LinearParams {
                weight: &w,
                bias: Some(&b),
            };
            let head = BigHead::from_pytorch_boxed(&SelfAttentionParams {
                q_proj: l,
                k_proj: l,
                v_proj: l,
            })
            .expect("PyTorch weights load");
            let head_again =
                BigHead::from_safetensors_boxed(&head.to_safetensors("").expect("save"), "")
                    .expect("load");
            assert_eq!(*head_again, *head);

            let x = filled::<SEQ, DIM>(|i| (i * 0.017).sin());
            let memory = filled::<MEM, DIM>(|i| (i * 0.029).cos());

            // Cross-attention three ways: they must agree.
            let mut scratch = Scratch::<SEQ, MEM, DIM>::new_boxed();
            let mut out = heap::zeros::<f32, SEQ, DIM>();
            layer.cross_attention_into(&x, &memory, &Mask::none(), &mut scratch, &mut out);
            let mut out_w = heap::zeros::<f32, SEQ, DIM>();
            let mut weights = AttentionWeights::<SEQ, MEM, HEADS>::new_boxed();
            layer.cross_attention_with_weights_into(
                &x,
                &memory,
                &Mask::none(),
                &mut scratch,
                &mut out_w,
                &mut weights,
            );
            assert!(max_diff(out.as_slice(), out_w.as_slice()) < 2e-6);
            assert!((weights.head(3).row(SEQ - 1).sum() - 1.0).abs() < 1e-4);
            let mut out_a = heap::zeros::<f32, SEQ, DIM>();
            layer.attend(
                &x,
                &memory,
                &memory,
                &Mask::none(),
                &mut scratch,
                &mut out_a,
                None,
            );
            assert_eq!(*out_a, *out);

            // One projection alone.
            let mut q = heap::zeros::<f32, SEQ, DIM>();
            layer.q_proj().forward_into(&x, &mut q);
            assert!(q.iter().all(|v| v.is_finite()));

            // Scaled dot-product attention without weights, and grouped-query attention whose
            // first query head reads the first kv head: the two agree.
            let mut heads_q = heap::zeros_array::<f32, SEQ, D, 2>();
            for (h, m) in heads_q.iter_mut().enumerate() {
                m.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = ((i + 3 * h) as f32 * 0.031).sin());
            }
            let mut heads_kv = heap::zeros_array::<f32, SEQ, D, 1>();
            heads_kv[0].copy_from(&heads_q[1]);
            let mut sdpa = heap::zeros::<f32, SEQ, D>();
            let causal = Mask::causal(Alignment::TopLeft);
            scaled_dot_product_attention_into(
                &heads_q[0],
                &heads_kv[0],
                &heads_kv[0],
                &causal,
                None,
                &mut sdpa,
            );
            let mut heads_out = heap::zeros_array::<f32, SEQ, D, 2>();
            grouped_query_attention_into(
                &heads_q,
                &heads_kv,
                &heads_kv,
                &causal,
                None,
                &mut heads_out,
            );
            assert_eq!(heads_out[0], *sdpa);

            // Decoder pieces: one token into boxed caches.
            let token = SMatrix::<f32, 1, DIM>::from_fn(|_, c| (c as f32 * 0.1).sin());
            let mut cache = KvCache::<SEQ, DIM>::new_boxed();
            let mut dec = DecoderScratch::<1, DIM, DIM>::new_boxed();
            let mut y = SMatrix::<f32, 1, DIM>::zeros();
            layer
                .decode_into(&token, &mut cache, &NoPositions, &mut dec, &mut y)
                .expect("an empty cache has room");
            assert_eq!(cache.len(), 1);
            assert!(y.iter().all(|v| v.is_finite()));

            let gqa = BigGqa::new_boxed(
                &mut static_attention::init::SeedRng::from_seed_u64(8),
                static_attention::Bias::Absent,
            );
            let gqa = BigGqa::from_safetensors_boxed(&gqa.to_safetensors("").expect("save"), "")
                .expect("load");
            let rope = Rope::<D, SEQ>::new_boxed(10_000.0, RopeStyle::RotateHalf);
            let mut gqa_cache = KvCache::<SEQ, { 2 * D }>::new_boxed();
            let mut gqa_dec = DecoderScratch::<1, DIM, { 2 * D }>::new_boxed();
            gqa.decode_into(&token, &mut gqa_cache, &*rope, &mut gqa_dec, &mut y)
                .expect("an empty cache has room");
            assert_eq!(gqa_cache.len(), 1);
            assert!(y.iter().all(|v| v.is_finite()));
        })
        .expect("spawn")
        .join()
        .expect("the 2 MiB thread finished without overflowing its stack");
}
