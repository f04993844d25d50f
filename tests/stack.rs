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
//!   2 MiB) in a 2 MiB thread: each big value comes from `heap::zeroed` and is filled in place,
//!   and each result is checked.
//! - `a_value_built_on_the_stack_overflows_2_mib` shows those two tests can fail: replacing a
//!   heap allocation there with `Box::new(…)` of a value built by value (the 4 MiB layer of
//!   `Box::new(MultiHead::<1024, 512, 8>::from_seed(5))` instead of `heap::zeroed()` and
//!   `reset_parameters`) aborts the 2 MiB thread with "has overflowed its stack" (in a child
//!   process, since the abort takes the whole process with it).
//! - `measure` (ignored) finds each entry point's real need by bisection: it re-runs this test
//!   binary with `probe` for each candidate size (an overflow kills only the child) and
//!   prints the table the docs quote:
//!   `cargo test --release --test stack -- --ignored --nocapture measure`
//!   (`STACK_FILTER=forward` measures only the entry points whose name contains `forward`).

use std::hint::black_box;
use std::process::{Command, Output};

use static_attention::init::SeedRng;
use static_attention::io::{InProjWeight, LinearParams, PyTorchParams, SelfAttentionParams};
use static_attention::kernels::{KEY_BLOCK, TILE_QUERIES};
use static_attention::positions::{NoPositions, Rope, RopeConfig, RopeStyle};
use static_attention::rand::SeedableRng;
use static_attention::{
    Alignment, AttentionWeights, Bias, GroupedQuery, KvCache, Mask, MultiHead, SMatrix, Scratch,
    SelfAttention, grouped_query_attention, grouped_query_attention_into, heap,
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
/// One `SEQ × DIM` sequence, an input or an output.
type Seq = SMatrix<f32, SEQ, DIM>;

const F32: usize = 4;

/// Which formula an entry point's documented need follows (crate docs, "Stack").
#[derive(Clone, Copy, Debug)]
enum Need {
    /// Only the call's own frames: [`frames`].
    Frames,
    /// `bytes` of values it holds, plus frames.
    Holds(usize),
    /// Frames, plus `bytes` the kernels keep on the stack for a layer's storage (`bf16`
    /// weights, `i8` weights: docs/MEMORY.md).
    Storage(usize),
}

/// What a layer with `bf16` weights adds for its kernels (docs/MEMORY.md): 24 KiB.
const BF16_STACK: usize = 24 << 10;
/// What a layer with `i8` weights adds for its kernels (docs/MEMORY.md): 48 KiB (the
/// attention in AMX tile products).
const I8_STACK: usize = 48 << 10;

/// The fixed allowance for an entry point's own frames (loops, pointers, small arrays), in
/// the profile this test was built with: 16 KiB at `opt-level ≥ 1`, 640 KiB at `opt-level =
/// 0`, where the SIMD kernels' inlined micro-tiles each keep their own stack slots (the
/// AVX-512 attention kernel's frame alone is 504 KiB there). See the crate docs.
fn frames() -> usize {
    if opt_level_zero() {
        640 << 10
    } else {
        16 << 10
    }
}

/// The documented need of an entry point that holds `held` bytes of big values at
/// `opt-level ≥ 1`; at `opt-level = 0` (no optimisation at all) the compiler keeps up to
/// three more temporary copies of each, so the crate documents `4·held` there.
fn documented(need: Need) -> usize {
    let (held, storage) = match need {
        Need::Frames => (0, 0),
        Need::Holds(bytes) => (bytes, 0),
        Need::Storage(bytes) => (0, bytes),
    };
    let factor = if opt_level_zero() { 4 } else { 1 };
    factor * held + storage + frames()
}

/// Whether this binary was built without optimisation. Cargo does not tell a test its
/// optimisation level, so CI says so when it builds one: `STACK_TEST_OPT_LEVEL_0=1 cargo test
/// --profile dev --test stack` (the `dev` profile is `opt-level = 0`; `cargo test` itself uses
/// the `test` profile, `opt-level = 1` in this crate).
fn opt_level_zero() -> bool {
    option_env!("STACK_TEST_OPT_LEVEL_0").is_some()
}

/// The crate's portable generator, seeded.
fn rng(seed: u64) -> SeedRng {
    SeedRng::seed_from_u64(seed)
}

/// A heap matrix whose `i`-th value (column-major order) is `f(i)`.
fn filled<const R: usize, const C: usize>(f: impl Fn(f32) -> f32) -> Box<SMatrix<f32, R, C>> {
    let mut m: Box<SMatrix<f32, R, C>> = heap::zeroed();
    m.iter_mut().enumerate().for_each(|(i, v)| *v = f(i as f32));
    m
}

/// The inputs every entry point reads, built once on the heap (outside the measured thread).
struct Inputs {
    layer: Box<Layer>,
    /// `layer` with its weights rounded to `bf16` and quantized to `i8`.
    layer_bf16: Box<MultiHead<SEQ, DIM, HEADS, f32, half::bf16>>,
    layer_i8: Box<MultiHead<SEQ, DIM, HEADS, f32, i8>>,
    head: Box<Head>,
    x: Box<Seq>,
    /// Two sequences for the batch entry points.
    batch: Box<[Seq; 2]>,
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
        let mut layer: Box<Layer> = heap::zeroed();
        layer.reset_parameters(&mut rng(1), Bias::Present);
        let mut head: Box<Head> = heap::zeroed();
        head.reset_parameters(&mut rng(2), Bias::Present);
        let mut gqa: Box<Gqa> = heap::zeroed();
        gqa.reset_parameters(&mut rng(5), Bias::Absent);
        let mut rope: Box<Rope<32, SEQ>> = heap::zeroed();
        rope.rebuild(&RopeConfig::new(10_000.0, RopeStyle::RotateHalf))
            .expect("a valid base");
        let x = filled::<SEQ, DIM>(|i| (i * 0.37).sin());
        let mut batch: Box<[Seq; 2]> = heap::zeroed();
        batch[0].copy_from(&*x);
        batch[1].copy_from(&*filled::<SEQ, DIM>(|i| (i * 0.23).cos()));
        let mut heads_q: Box<[SMatrix<f32, SEQ, D>; 4]> = heap::zeroed();
        for (h, m) in heads_q.iter_mut().enumerate() {
            m.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = ((i + h) as f32 * 0.05).sin());
        }
        let mut heads_kv: Box<[SMatrix<f32, SEQ, D>; 2]> = heap::zeroed();
        heads_kv.copy_from_slice(&heads_q[..2]);
        Self {
            layer_bf16: Box::new(layer.to_weights()),
            layer_i8: Box::new(layer.to_weights()),
            gqa_file: gqa.to_safetensors("").unwrap(),
            gqa,
            rope,
            heads_q,
            heads_kv,
            heads_out: std::sync::Mutex::new(heap::zeroed()),
            mha_file: layer.to_safetensors("").unwrap(),
            head_file: head.to_safetensors("").unwrap(),
            in_proj: vec![0.01; 3 * DIM * DIM],
            out_proj: vec![0.02; DIM * DIM],
            bias3: vec![0.0; 3 * DIM],
            bias: vec![0.0; DIM],
            layer,
            head,
            x,
            batch,
            memory: filled::<MEM, DIM>(|i| (i * 0.11).cos()),
            q: filled::<S, D>(|i| (i * 0.07).sin()),
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

    /// One mask per sequence of [`Inputs::batch`].
    fn batch_masks() -> [Mask<'static, SEQ, SEQ>; 2] {
        [Mask::causal(Alignment::TopLeft), Mask::none()]
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
const HEAD_SCRATCH: usize = Head::SCRATCH_BYTES;
/// The scratch of a cross-attention call: `SEQ` queries, `MEM` keys.
const CROSS_SCRATCH: usize = Scratch::<SEQ, MEM, DIM>::BYTES;
const OUT: usize = Layer::OUTPUT_BYTES;
const HEAD_OUT: usize = Head::OUTPUT_BYTES;
const WEIGHTS: usize = Layer::WEIGHTS_BYTES;
const CROSS_WEIGHTS: usize = AttentionWeights::<SEQ, MEM, HEADS>::BYTES;
const HEAD_WEIGHTS: usize = Head::WEIGHTS_BYTES;
/// A head's cross-attention weights: one `SEQ × MEM` matrix.
const HEAD_CROSS_WEIGHTS: usize = SEQ * MEM * F32;
const SDPA_OUT: usize = S * D * F32;
const SDPA_WEIGHTS: usize = S * S * F32;
/// A grouped-query call over `SEQ` tokens: `Scratch<SEQ, SEQ, Q_DIM, T, KV_DIM>`.
const GQA_SCRATCH: usize = Scratch::<SEQ, SEQ, DIM, f32, KV>::BYTES;
const GQA_WEIGHTS: usize = AttentionWeights::<SEQ, SEQ, HEADS>::BYTES;
const GQA_PARAM: usize = Gqa::PARAM_BYTES;
/// A rotary table for heads of 32 and 4096 positions.
const ROPE_POS: usize = 4096;
const ROPE: usize = Rope::<32, ROPE_POS>::BYTES;
/// 4 query heads of `SEQ × D`.
const GQA_SDPA_OUT: usize = 4 * SEQ * D * F32;
/// The streaming kernel's block state: `TILE_QUERIES · (D + 2 · KEY_BLOCK)` scalars.
const SDPA_WORK: usize = TILE_QUERIES * (D + 2 * KEY_BLOCK) * F32;

fn entry_points() -> Vec<Entry> {
    use Need::{Frames, Holds, Storage};
    entries![
        // Construction and loading: by value, and their in-place forms into a layer from
        // `heap::zeroed`.
        "MultiHead::zeros", Holds(PARAM), |_i| Layer::zeros();
        "MultiHead::new", Holds(2 * PARAM), |_i| Layer::new(&mut rng(3), Bias::Absent);
        "MultiHead::from_seed", Holds(2 * PARAM), |_i| Layer::from_seed(3);
        "heap::zeroed::<MultiHead>", Frames, |_i| heap::zeroed::<Layer>();
        "MultiHead::reset_parameters", Frames, |_i| {
            let mut l: Box<Layer> = heap::zeroed();
            l.reset_parameters(&mut rng(3), Bias::Present);
            l
        };
        "MultiHead::try_from(&PyTorchParams)", Holds(3 * PARAM), |i| Layer::try_from(&i.pytorch()).unwrap();
        "PyTorchParams::load_into", Frames, |i| {
            let mut l: Box<Layer> = heap::zeroed();
            i.pytorch().load_into(&mut l).unwrap();
            l
        };
        "MultiHead::from_safetensors", Holds(3 * PARAM), |i| Layer::from_safetensors(&i.mha_file, "").unwrap();
        "MultiHead::load_safetensors", Frames, |i| {
            let mut l: Box<Layer> = heap::zeroed();
            l.load_safetensors(&i.mha_file, "").unwrap();
            l
        };
        "MultiHead::to_safetensors", Frames, |i| i.layer.to_safetensors("").unwrap();
        "SelfAttention::zeros", Holds(HEAD_PARAM), |_i| Head::zeros();
        "SelfAttention::new", Holds(2 * HEAD_PARAM), |_i| Head::new(&mut rng(3), Bias::Absent);
        "SelfAttention::from_seed", Holds(2 * HEAD_PARAM), |_i| Head::from_seed(3);
        "SelfAttention::reset_parameters", Frames, |_i| {
            let mut h: Box<Head> = heap::zeroed();
            h.reset_parameters(&mut rng(3), Bias::Present);
            h
        };
        "SelfAttention::try_from(&SelfAttentionParams)", Holds(3 * HEAD_PARAM), |i| Head::try_from(&i.head_params()).unwrap();
        "SelfAttentionParams::load_into", Frames, |i| {
            let mut h: Box<Head> = heap::zeroed();
            i.head_params().load_into(&mut h).unwrap();
            h
        };
        "SelfAttention::from_safetensors", Holds(3 * HEAD_PARAM), |i| Head::from_safetensors(&i.head_file, "").unwrap();
        "SelfAttention::load_safetensors", Frames, |i| {
            let mut h: Box<Head> = heap::zeroed();
            h.load_safetensors(&i.head_file, "").unwrap();
            h
        };
        "Scratch::new", Holds(SCRATCH), |_i| Scratch::<SEQ, SEQ, DIM>::new();
        "heap::zeroed::<Scratch>", Frames, |_i| heap::zeroed::<Scratch<SEQ, SEQ, DIM>>();
        "AttentionWeights::zeros", Holds(WEIGHTS), |_i| AttentionWeights::<SEQ, SEQ, HEADS>::zeros();
        "heap::zeroed::<AttentionWeights>", Frames, |_i| heap::zeroed::<AttentionWeights<SEQ, SEQ, HEADS>>();
        // MultiHead forward passes. `attend` is the caller-owned form of every one of them:
        // self-attention with weights, cross-attention without and with.
        "MultiHead::forward", Holds(SCRATCH + 2 * OUT), |i| i.layer.forward(&i.x, &Mask::causal(Alignment::TopLeft));
        "MultiHead::forward_into", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.layer.forward_into(&i.x, &Mask::none(), &mut s, &mut o);
        };
        "MultiHead<…, bf16>::forward_into", Storage(BF16_STACK), |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.layer_bf16.forward_into(&i.x, &Mask::causal(Alignment::TopLeft), &mut s, &mut o);
        };
        "MultiHead<…, i8>::forward_into", Storage(I8_STACK), |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.layer_i8.forward_into(&i.x, &Mask::causal(Alignment::TopLeft), &mut s, &mut o);
        };
        "MultiHead::forward_with_weights", Holds(SCRATCH + 2 * (OUT + WEIGHTS)), |i| i.layer.forward_with_weights(&i.x, &Mask::none());
        "MultiHead::attend(x, x, x, Some(w))", Frames, |i| {
            let (mut s, mut o, mut w): (Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>, Box<AttentionWeights<SEQ, SEQ, HEADS>>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.layer.attend(&i.x, &i.x, &i.x, &Mask::none(), &mut s, &mut o, Some(&mut w));
        };
        "MultiHead::forward_batch_into(…, None)", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<[Seq; 2]>) = (heap::zeroed(), heap::zeroed());
            i.layer.forward_batch_into(&i.batch[..], &Inputs::batch_masks(), &mut s, &mut o[..], None).unwrap();
        };
        "MultiHead::forward_batch_into(…, Some(w))", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<[Seq; 2]>) = (heap::zeroed(), heap::zeroed());
            let mut w: Box<[AttentionWeights<SEQ, SEQ, HEADS>; 2]> = heap::zeroed();
            i.layer.forward_batch_into(&i.batch[..], &Inputs::batch_masks(), &mut s, &mut o[..], Some(&mut w[..])).unwrap();
        };
        "MultiHead::cross_attention", Holds(CROSS_SCRATCH + 2 * OUT), |i| i.layer.cross_attention(&i.x, &i.memory, &Mask::none());
        "MultiHead::cross_attention_with_weights", Holds(CROSS_SCRATCH + 2 * (OUT + CROSS_WEIGHTS)), |i| i.layer.cross_attention_with_weights(&i.x, &i.memory, &Mask::none());
        "MultiHead::attend(x, m, m, None)", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, MEM, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.layer.attend(&i.x, &i.memory, &i.memory, &Mask::none(), &mut s, &mut o, None);
        };
        "MultiHead::attend(x, m, m, Some(w))", Frames, |i| {
            let (mut s, mut o, mut w): (Box<Scratch<SEQ, MEM, DIM>>, Box<Seq>, Box<AttentionWeights<SEQ, MEM, HEADS>>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.layer.attend(&i.x, &i.memory, &i.memory, &Mask::none(), &mut s, &mut o, Some(&mut w));
        };
        // SelfAttention forward passes.
        "SelfAttention::forward", Holds(HEAD_SCRATCH + 2 * HEAD_OUT), |i| i.head.forward(&i.x, &Mask::none());
        "SelfAttention::forward_into", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.head.forward_into(&i.x, &Mask::none(), &mut s, &mut o);
        };
        "SelfAttention::forward_with_weights", Holds(HEAD_SCRATCH + 2 * (HEAD_OUT + HEAD_WEIGHTS)), |i| i.head.forward_with_weights(&i.x, &Mask::none());
        "SelfAttention::attend(x, x, x, Some(w))", Frames, |i| {
            let (mut s, mut o, mut w): (Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>, Box<SMatrix<f32, SEQ, SEQ>>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.head.attend(&i.x, &i.x, &i.x, &Mask::none(), &mut s, &mut o, Some(&mut w));
        };
        "SelfAttention::forward_batch_into(…, Some(w))", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM>>, Box<[Seq; 2]>) = (heap::zeroed(), heap::zeroed());
            let mut w: Box<[SMatrix<f32, SEQ, SEQ>; 2]> = heap::zeroed();
            i.head.forward_batch_into(&i.batch[..], &Inputs::batch_masks(), &mut s, &mut o[..], Some(&mut w[..])).unwrap();
        };
        "SelfAttention::cross_attention", Holds(CROSS_SCRATCH + 2 * HEAD_OUT), |i| i.head.cross_attention(&i.x, &i.memory, &Mask::none());
        "SelfAttention::cross_attention_with_weights", Holds(CROSS_SCRATCH + 2 * (HEAD_OUT + HEAD_CROSS_WEIGHTS)), |i| i.head.cross_attention_with_weights(&i.x, &i.memory, &Mask::none());
        "SelfAttention::attend(x, m, m, Some(w))", Frames, |i| {
            let (mut s, mut o, mut w): (Box<Scratch<SEQ, MEM, DIM>>, Box<Seq>, Box<SMatrix<f32, SEQ, MEM>>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.head.attend(&i.x, &i.memory, &i.memory, &Mask::none(), &mut s, &mut o, Some(&mut w));
        };
        // Scaled dot-product attention, 512 × 512 × 64.
        "scaled_dot_product_attention", Holds(2 * SDPA_OUT + SDPA_WORK), |i| scaled_dot_product_attention(&i.q, &i.q, &i.q, &Mask::none(), None);
        "scaled_dot_product_attention_into", Holds(SDPA_WORK), |i| {
            let mut o: Box<SMatrix<f32, S, D>> = heap::zeroed();
            scaled_dot_product_attention_into(&i.q, &i.q, &i.q, &Mask::none(), None, &mut o);
        };
        "scaled_dot_product_attention_with_weights", Holds(2 * (SDPA_OUT + SDPA_WEIGHTS)), |i| scaled_dot_product_attention_with_weights(&i.q, &i.q, &i.q, &Mask::none(), None);
        "scaled_dot_product_attention_with_weights_into", Frames, |i| {
            let (mut o, mut w): (Box<SMatrix<f32, S, D>>, Box<SMatrix<f32, S, S>>) = (heap::zeroed(), heap::zeroed());
            scaled_dot_product_attention_with_weights_into(&i.q, &i.q, &i.q, &Mask::none(), None, &mut o, &mut w);
        };
        // Pieces.
        "Linear::forward", Holds(2 * OUT), |i| i.layer.q_proj().forward(&i.x);
        "Linear::forward_into", Frames, |i| {
            let mut o: Box<Seq> = heap::zeroed();
            i.layer.q_proj().forward_into(&i.x, &mut o);
        };
        // Decoding: a SEQ-token prompt into a cache from `heap::zeroed`, and the grouped-query
        // layer's other passes.
        "MultiHead::decode", Holds(SCRATCH + 3 * OUT), |i| {
            let mut c: Box<KvCache<CAP, DIM>> = heap::zeroed();
            i.layer.decode(&i.x, &mut c, &NoPositions).expect("fits")
        };
        "MultiHead::decode_into", Frames, |i| {
            let (mut c, mut s, mut o): (Box<KvCache<CAP, DIM>>, Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.layer.decode_into(&i.x, &mut c, &NoPositions, &mut s, &mut o).expect("fits");
        };
        "SelfAttention::decode", Holds(HEAD_SCRATCH + 3 * HEAD_OUT), |i| {
            let mut c: Box<KvCache<CAP, DIM>> = heap::zeroed();
            i.head.decode(&i.x, &mut c, &NoPositions).expect("fits")
        };
        "SelfAttention::decode_into", Frames, |i| {
            let (mut c, mut s, mut o): (Box<KvCache<CAP, DIM>>, Box<Scratch<SEQ, SEQ, DIM>>, Box<Seq>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.head.decode_into(&i.x, &mut c, &NoPositions, &mut s, &mut o).expect("fits");
        };
        "GroupedQuery::forward", Holds(GQA_SCRATCH + 3 * OUT), |i| {
            i.gqa.forward(&i.x, &Mask::causal(Alignment::TopLeft), &*i.rope).expect("fits")
        };
        "GroupedQuery::forward_into", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, SEQ, DIM, f32, KV>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.gqa.forward_into(&i.x, &Mask::causal(Alignment::TopLeft), &*i.rope, &mut s, &mut o).expect("fits");
        };
        "GroupedQuery::forward_with_weights", Holds(GQA_SCRATCH + 3 * (OUT + GQA_WEIGHTS)), |i| {
            i.gqa.forward_with_weights(&i.x, &Mask::causal(Alignment::TopLeft), &*i.rope).expect("fits")
        };
        "GroupedQuery::attend(x, x, x, Some(w))", Frames, |i| {
            let (mut s, mut o, mut w): (Box<Scratch<SEQ, SEQ, DIM, f32, KV>>, Box<Seq>, Box<AttentionWeights<SEQ, SEQ, HEADS>>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.gqa.attend(&i.x, &i.x, &i.x, &Mask::causal(Alignment::TopLeft), &*i.rope, &mut s, &mut o, Some(&mut w)).expect("fits");
        };
        "GroupedQuery::attend(x, m, m, None)", Frames, |i| {
            let (mut s, mut o): (Box<Scratch<SEQ, MEM, DIM, f32, KV>>, Box<Seq>) = (heap::zeroed(), heap::zeroed());
            i.gqa.attend(&i.x, &i.memory, &i.memory, &Mask::none(), &*i.rope, &mut s, &mut o, None).expect("fits");
        };
        "GroupedQuery::decode", Holds(GQA_SCRATCH + 3 * OUT), |i| {
            let mut c: Box<KvCache<CAP, KV>> = heap::zeroed();
            i.gqa.decode(&i.x, &mut c, &*i.rope).expect("fits")
        };
        "GroupedQuery::decode_into", Frames, |i| {
            let (mut c, mut s, mut o): (Box<KvCache<CAP, KV>>, Box<Scratch<SEQ, SEQ, DIM, f32, KV>>, Box<Seq>) = (heap::zeroed(), heap::zeroed(), heap::zeroed());
            i.gqa.decode_into(&i.x, &mut c, &*i.rope, &mut s, &mut o).expect("fits");
        };
        "GroupedQuery::zeros", Holds(GQA_PARAM), |_i| Gqa::zeros();
        "GroupedQuery::new", Holds(2 * GQA_PARAM), |_i| Gqa::new(&mut rng(3), Bias::Present);
        "GroupedQuery::from_seed", Holds(2 * GQA_PARAM), |_i| Gqa::from_seed(3);
        "GroupedQuery::reset_parameters", Frames, |_i| {
            let mut l: Box<Gqa> = heap::zeroed();
            l.reset_parameters(&mut rng(3), Bias::Present);
            l
        };
        "GroupedQuery::from_safetensors", Holds(3 * GQA_PARAM), |i| Gqa::from_safetensors(&i.gqa_file, "").expect("loads");
        "GroupedQuery::load_safetensors", Frames, |i| {
            let mut l: Box<Gqa> = heap::zeroed();
            l.load_safetensors(&i.gqa_file, "").expect("loads");
            l
        };
        "KvCache::new", Holds(KvCache::<CAP, DIM>::BYTES), |_i| KvCache::<CAP, DIM>::new();
        "heap::zeroed::<KvCache>", Frames, |_i| heap::zeroed::<KvCache<CAP, DIM>>();
        "KvCache::reset_sliding_window", Frames, |_i| {
            let mut c: Box<KvCache<CAP, DIM>> = heap::zeroed();
            c.reset_sliding_window();
            c
        };
        "Rope::new", Holds(2 * ROPE), |_i| Rope::<32, ROPE_POS>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
        "Rope::rebuild", Frames, |_i| {
            let mut r: Box<Rope<32, ROPE_POS>> = heap::zeroed();
            r.rebuild(&RopeConfig::new(10_000.0, RopeStyle::RotateHalf)).expect("a valid base");
            r
        };
        "grouped_query_attention", Holds(2 * GQA_SDPA_OUT + SDPA_WORK), |i| {
            grouped_query_attention(&i.heads_q, &i.heads_kv, &i.heads_kv, &Mask::none(), None)
        };
        "grouped_query_attention_into", Holds(SDPA_WORK), |i| {
            let mut o = i.heads_out.lock().unwrap();
            grouped_query_attention_into(&i.heads_q, &i.heads_kv, &i.heads_kv, &Mask::none(), None, &mut o);
        };
        "AttentionWeights::average", Holds(3 * SEQ * SEQ * F32), |_i| {
            let w: Box<AttentionWeights<SEQ, SEQ, HEADS>> = heap::zeroed();
            w.average()
        };
    ]
}

/// The name [`regression`] runs under in `probe`.
const REGRESSION: &str = "regression: Box::new(MultiHead::<1024, 512, 8>::from_seed(5))";

/// A heap path regressed to building its value on the stack: the first line of
/// `heap_paths_run_on_a_2_mib_stack` with `Box::new` of the 4 MiB layer built by value in
/// place of `heap::zeroed()` and `reset_parameters`. Not an entry point: only
/// `a_value_built_on_the_stack_overflows_2_mib` runs it.
fn regression() -> Entry {
    Entry {
        name: REGRESSION,
        need: Need::Frames,
        run: |_i| {
            black_box(Box::new(MultiHead::<1024, 512, 8>::from_seed(5)));
        },
    }
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

/// Child side of `measure` and `a_value_built_on_the_stack_overflows_2_mib`: runs the entry
/// point named in `STACK_PROBE` ("name=bytes") in a thread of that many bytes. Does nothing
/// without the variable.
#[test]
#[ignore = "helper process of `measure` and `a_value_built_on_the_stack_overflows_2_mib`"]
fn probe() {
    let Ok(spec) = std::env::var("STACK_PROBE") else {
        return;
    };
    let (name, bytes) = spec.split_once('=').expect("name=bytes");
    let bytes: usize = bytes.parse().expect("bytes");
    let entry = entry_points()
        .into_iter()
        .chain([regression()])
        .find(|e| e.name == name)
        .expect("known entry point");
    run_with_stack(&entry, &Inputs::new(), bytes);
}

/// Runs the entry point `name` with `bytes` of stack in a child process.
fn run_in_child(name: &str, bytes: usize) -> Output {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["probe", "--exact", "--ignored", "--test-threads=1"])
        .env("STACK_PROBE", format!("{name}={bytes}"))
        .output()
        .expect("child")
}

/// Whether the entry point runs with `bytes` of stack, in a child process.
fn fits(name: &str, bytes: usize) -> bool {
    run_in_child(name, bytes).status.success()
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

/// The 2 MiB tests below can fail: the [`regression`] of their first heap path overflows
/// the same 2 MiB, and the child says so.
#[test]
fn a_value_built_on_the_stack_overflows_2_mib() {
    let child = run_in_child(REGRESSION, 2 << 20);
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "the regression ran in 2 MiB");
    // The message is "thread '<name>' (<id>) has overflowed its stack" (older Rust has no id).
    assert!(
        stderr.contains(&format!("thread '{REGRESSION}'"))
            && stderr.contains("has overflowed its stack"),
        "the child failed otherwise: {stderr}"
    );
}

/// Largest absolute difference (without building a difference matrix on the stack).
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `SEQ = 1024, DIM = 512, HEADS = 8`: every heap or caller-owned self-attention entry point
/// in a 2 MiB thread, each value from `heap::zeroed` filled in place.
#[test]
fn heap_paths_run_on_a_2_mib_stack() {
    const SEQ: usize = 1024;
    const DIM: usize = 512;
    const HEADS: usize = 8;
    type Big = MultiHead<SEQ, DIM, HEADS>;
    type BigHead = SelfAttention<SEQ, DIM>;
    type Seq = SMatrix<f32, SEQ, DIM>;
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            // A 4 MiB layer drawn in place, saved, and loaded in place into another.
            let mut layer: Box<Big> = heap::zeroed();
            layer.reset_parameters(&mut rng(5), Bias::Present);
            let file = layer.to_safetensors("").expect("save");
            let mut loaded: Box<Big> = heap::zeroed();
            loaded.load_safetensors(&file, "").expect("load");
            assert_eq!(*loaded, *layer);
            let x = filled::<SEQ, DIM>(|i| (i * 0.013).sin());
            let mask = Mask::causal(Alignment::TopLeft);

            // Self-attention with a 6 MiB scratch, then with the 32 MiB of per-head weights
            // through `attend`: the same result.
            let mut scratch: Box<Scratch<SEQ, SEQ, DIM>> = heap::zeroed();
            let mut y: Box<Seq> = heap::zeroed();
            layer.forward_into(&x, &mask, &mut scratch, &mut y);
            let mut yw: Box<Seq> = heap::zeroed();
            let mut w: Box<AttentionWeights<SEQ, SEQ, HEADS>> = heap::zeroed();
            layer.attend(&x, &x, &x, &mask, &mut scratch, &mut yw, Some(&mut w));
            assert!(max_diff(y.as_slice(), yw.as_slice()) < 2e-6);
            assert!((w.head(7).row(1023).sum() - 1.0).abs() < 1e-4);

            // The batch API over that one sequence, weights included, gives what `attend` gave.
            let mut yb: Box<Seq> = heap::zeroed();
            let mut wb: Box<AttentionWeights<SEQ, SEQ, HEADS>> = heap::zeroed();
            layer
                .forward_batch_into(
                    std::slice::from_ref(&*x),
                    std::slice::from_ref(&mask),
                    &mut scratch,
                    std::slice::from_mut(&mut *yb),
                    Some(std::slice::from_mut(&mut *wb)),
                )
                .expect("one input, one mask, one output, one set of weights");
            assert_eq!(*yb, *yw);
            // `assert!`, not `assert_eq!`: a failure would print 32 MiB of weights.
            assert!(*wb == *w, "the batch's weights differ from attend's");

            // One head, the same two ways; its 4 MiB of weights sum to 1 per row.
            let mut head: Box<BigHead> = heap::zeroed();
            head.reset_parameters(&mut rng(6), Bias::Present);
            let mut hy: Box<Seq> = heap::zeroed();
            head.forward_into(&x, &mask, &mut scratch, &mut hy);
            let mut hyw: Box<Seq> = heap::zeroed();
            let mut hw: Box<SMatrix<f32, SEQ, SEQ>> = heap::zeroed();
            head.attend(&x, &x, &x, &mask, &mut scratch, &mut hyw, Some(&mut hw));
            assert!(max_diff(hy.as_slice(), hyw.as_slice()) < 2e-6);
            assert!((hw.row(1023).sum() - 1.0).abs() < 1e-4);

            // Scaled dot-product attention over 1024 × 1024 × 64 with its 4 MiB of weights.
            let q: Box<SMatrix<f32, SEQ, 64>> = heap::zeroed();
            let mut o: Box<SMatrix<f32, SEQ, 64>> = heap::zeroed();
            let mut sw: Box<SMatrix<f32, SEQ, SEQ>> = heap::zeroed();
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
/// a 2 MiB thread: loading in place (`load_safetensors`, both PyTorch loaders'
/// `load_into`), cross-attention through `attend` (a 16-key memory keeps the work small under
/// emulation), scaled dot-product attention without weights, grouped-query attention,
/// `Linear::forward_into`, and decoding (caches, scratch and a rotary table from
/// `heap::zeroed`, a sliding-window ring, and a grouped-query layer at the same width, its
/// `attend` included).
#[test]
fn other_heap_paths_run_on_a_2_mib_stack() {
    const SEQ: usize = 1024;
    const DIM: usize = 512;
    const HEADS: usize = 8;
    const MEM: usize = 16;
    const D: usize = DIM / HEADS;
    const KV: usize = 2 * D;
    type Big = MultiHead<SEQ, DIM, HEADS>;
    type BigHead = SelfAttention<SEQ, DIM>;
    type BigGqa = GroupedQuery<DIM, HEADS, 2, DIM, KV>;
    type Seq = SMatrix<f32, SEQ, DIM>;
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let mut layer: Box<Big> = heap::zeroed();
            layer.reset_parameters(&mut rng(7), Bias::Present);
            let mut loaded: Box<Big> = heap::zeroed();
            loaded
                .load_safetensors(&layer.to_safetensors("").expect("save"), "")
                .expect("load");
            assert_eq!(*loaded, *layer);

            // The PyTorch loaders, from flat row-major arrays, into layers from `heap::zeroed`.
            let (w3, b3) = (vec![0.01_f32; 3 * DIM * DIM], vec![0.5_f32; 3 * DIM]);
            let (w, b) = (vec![0.02_f32; DIM * DIM], vec![0.25_f32; DIM]);
            let mut torch: Box<Big> = heap::zeroed();
            PyTorchParams {
                in_proj_weight: InProjWeight::Packed(&w3),
                in_proj_bias: Some(&b3),
                out_proj_weight: &w,
                out_proj_bias: Some(&b),
            }
            .load_into(&mut torch)
            .expect("PyTorch weights load");
            // `weight()` would copy 1 MiB onto the stack; `weight_into` writes where it is told.
            let mut wq: Box<SMatrix<f32, DIM, DIM>> = heap::zeroed();
            torch.q_proj().weight_into(&mut wq);
            assert!(wq.iter().all(|&v| v == 0.01));
            let l = LinearParams {
                weight: &w,
                bias: Some(&b),
            };
            let mut head: Box<BigHead> = heap::zeroed();
            SelfAttentionParams {
                q_proj: l,
                k_proj: l,
                v_proj: l,
            }
            .load_into(&mut head)
            .expect("PyTorch weights load");
            let mut head_again: Box<BigHead> = heap::zeroed();
            head_again
                .load_safetensors(&head.to_safetensors("").expect("save"), "")
                .expect("load");
            assert_eq!(*head_again, *head);

            let x = filled::<SEQ, DIM>(|i| (i * 0.017).sin());
            let memory = filled::<MEM, DIM>(|i| (i * 0.029).cos());

            // Cross-attention through `attend` three ways, which must agree: without the
            // weights, with them, and with the values in a buffer of their own.
            let mut scratch: Box<Scratch<SEQ, MEM, DIM>> = heap::zeroed();
            let mut out: Box<Seq> = heap::zeroed();
            layer.attend(
                &x,
                &memory,
                &memory,
                &Mask::none(),
                &mut scratch,
                &mut out,
                None,
            );
            let mut out_w: Box<Seq> = heap::zeroed();
            let mut weights: Box<AttentionWeights<SEQ, MEM, HEADS>> = heap::zeroed();
            layer.attend(
                &x,
                &memory,
                &memory,
                &Mask::none(),
                &mut scratch,
                &mut out_w,
                Some(&mut weights),
            );
            assert!(max_diff(out.as_slice(), out_w.as_slice()) < 2e-6);
            assert!((weights.head(3).row(SEQ - 1).sum() - 1.0).abs() < 1e-4);
            let mut values: Box<SMatrix<f32, MEM, DIM>> = heap::zeroed();
            values.copy_from(&*memory);
            let mut out_a: Box<Seq> = heap::zeroed();
            layer.attend(
                &x,
                &memory,
                &values,
                &Mask::none(),
                &mut scratch,
                &mut out_a,
                None,
            );
            assert_eq!(*out_a, *out);

            // One projection alone.
            let mut q: Box<Seq> = heap::zeroed();
            layer.q_proj().forward_into(&x, &mut q);
            assert!(q.iter().all(|v| v.is_finite()));

            // Scaled dot-product attention without weights, and grouped-query attention whose
            // first query head reads the first kv head: the two agree.
            let mut heads_q: Box<[SMatrix<f32, SEQ, D>; 2]> = heap::zeroed();
            for (h, m) in heads_q.iter_mut().enumerate() {
                m.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = ((i + 3 * h) as f32 * 0.031).sin());
            }
            let mut heads_kv: Box<[SMatrix<f32, SEQ, D>; 1]> = heap::zeroed();
            heads_kv[0].copy_from(&heads_q[1]);
            let mut sdpa: Box<SMatrix<f32, SEQ, D>> = heap::zeroed();
            let causal = Mask::causal(Alignment::TopLeft);
            scaled_dot_product_attention_into(
                &heads_q[0],
                &heads_kv[0],
                &heads_kv[0],
                &causal,
                None,
                &mut sdpa,
            );
            let mut heads_out: Box<[SMatrix<f32, SEQ, D>; 2]> = heap::zeroed();
            grouped_query_attention_into(
                &heads_q,
                &heads_kv,
                &heads_kv,
                &causal,
                None,
                &mut heads_out,
            );
            assert_eq!(heads_out[0], *sdpa);

            // Decoding one token into empty caches. The first position sees only itself: the
            // layer's output is what `attend` over that one token gives, the head's is the
            // token's value.
            let token = SMatrix::<f32, 1, DIM>::from_fn(|_, c| (c as f32 * 0.1).sin());
            let mut cache: Box<KvCache<SEQ, DIM>> = heap::zeroed();
            let mut dec: Box<Scratch<1, 1, DIM>> = heap::zeroed();
            let mut y = SMatrix::<f32, 1, DIM>::zeros();
            layer
                .decode_into(&token, &mut cache, &NoPositions, &mut dec, &mut y)
                .expect("an empty cache has room");
            assert_eq!(cache.len(), 1);
            assert!(y.iter().all(|v| v.is_finite()));
            let mut alone = SMatrix::<f32, 1, DIM>::zeros();
            layer.attend(
                &token,
                &token,
                &token,
                &Mask::none(),
                &mut dec,
                &mut alone,
                None,
            );
            assert!(max_diff(y.as_slice(), alone.as_slice()) < 1e-5);

            let mut head_cache: Box<KvCache<SEQ, DIM>> = heap::zeroed();
            head.decode_into(&token, &mut head_cache, &NoPositions, &mut dec, &mut y)
                .expect("an empty cache has room");
            assert_eq!(head_cache.len(), 1);
            head.v_proj().forward_into(&token, &mut alone);
            assert!(max_diff(y.as_slice(), alone.as_slice()) < 1e-5);

            // The grouped-query layer: drawn in place, saved and loaded in place, then one
            // token into a sliding-window ring with a rotary table built in place.
            let mut gqa: Box<BigGqa> = heap::zeroed();
            gqa.reset_parameters(&mut rng(8), Bias::Absent);
            let mut gqa_loaded: Box<BigGqa> = heap::zeroed();
            gqa_loaded
                .load_safetensors(&gqa.to_safetensors("").expect("save"), "")
                .expect("load");
            assert_eq!(*gqa_loaded, *gqa);
            let mut rope: Box<Rope<D, SEQ>> = heap::zeroed();
            rope.rebuild(&RopeConfig::new(10_000.0, RopeStyle::RotateHalf))
                .expect("a valid base");
            let mut ring: Box<KvCache<SEQ, KV>> = heap::zeroed();
            ring.reset_sliding_window();
            let mut gqa_dec: Box<Scratch<1, 1, DIM, f32, KV>> = heap::zeroed();
            gqa_loaded
                .decode_into(&token, &mut ring, &*rope, &mut gqa_dec, &mut y)
                .expect("a ring always has room");
            assert!(ring.is_sliding_window() && ring.len() == 1);
            assert!(y.iter().all(|v| v.is_finite()));
            gqa.attend(
                &token,
                &token,
                &token,
                &Mask::none(),
                &*rope,
                &mut gqa_dec,
                &mut alone,
                None,
            )
            .expect("position 0 is in the table");
            assert!(max_diff(y.as_slice(), alone.as_slice()) < 1e-5);

            // Its cross-attention with per-head weights, rotated at positions 0 .. SEQ.
            let mut gqa_scratch: Box<Scratch<SEQ, MEM, DIM, f32, KV>> = heap::zeroed();
            let mut gqa_weights: Box<AttentionWeights<SEQ, MEM, HEADS>> = heap::zeroed();
            gqa.attend(
                &x,
                &memory,
                &memory,
                &Mask::none(),
                &*rope,
                &mut gqa_scratch,
                &mut out,
                Some(&mut gqa_weights),
            )
            .expect("SEQ positions are in the table");
            assert!(out.iter().all(|v| v.is_finite()));
            assert!((gqa_weights.head(7).row(SEQ - 1).sum() - 1.0).abs() < 1e-4);
        })
        .expect("spawn")
        .join()
        .expect("the 2 MiB thread finished without overflowing its stack");
}
