//! Attention benchmarks: the selected (SIMD) kernel beside the portable scalar kernel, in one
//! criterion group per workload so the ratio is read from one run.
//!
//! Run with `cargo bench --bench attention` (pin it with `taskset -c 1` on a shared machine;
//! `scripts/bench_peers.sh` does, and adds PyTorch and candle on the same shapes). Every group
//! sets a throughput of the operation's floating-point operations (one multiply-add = 2
//! FLOPs), so criterion's "elem/s" reads as FLOP/s (`Gelem/s` = GFLOP/s). Inputs are seeded.
//! Before timing, each group that compares kernels (`sdpa`, `layer`, `layer_f64`, `batch`,
//! `exp`) checks that they agree (within 1e-4), so the comparison is apples to apples;
//! `decode`, which runs the selected kernel only, checks that the MHA and the GQA step each
//! equal the last row of their layer's full causal forward (within 1e-4).
//!
//! - `sdpa`: one head, `SEQ × d` with (SEQ, d) = (128, 64), (512, 64), (1024, 64), with and
//!   without a causal mask: `4·SEQ²·d` FLOPs (causal counted dense).
//! - `layer`: `MultiHead<SEQ, DIM, HEADS>` self-attention at (16, 64, 4), (128, 256, 8),
//!   (512, 512, 8), through `forward_into` with a boxed scratch: `8·SEQ·DIM² + 4·SEQ²·DIM`;
//!   with the `rayon` feature also `simd_2threads` for (512, 512, 8).
//! - `layer_f64`: the (128, 256, 8) layer in f64.
//! - `batch`: 32 sequences through `MultiHead<16, 64, 4>` (`forward_batch_into`; with
//!   `rayon`, also `Parallel(&layer).forward_batch_into` as `simd_2threads`).
//! - `peak`: the core's FMA-loop peak per kernel (`kernels::fma_loop`), the ceiling of the
//!   GFLOP/s the other groups reach, and, where the selected kernel has `bf16` dot products,
//!   their peak (`simd/bf16_dot`, `kernels::bf16_dot_loop`), the ceiling of the `half` group's
//!   `bf16` rows.
//! - `exp`: the softmax's `exp` over 4096 values (elements per second).
//! - `decode`: one decoding step (one token's projections and attention over the cache) at
//!   cache lengths 128 and 1024, for `MultiHead<_, 512, 8>` (`mha_step`) and a grouped-query
//!   layer with 8 query heads on 2 kv heads of 64 features (`gqa_step`), beside recomputing
//!   the causal forward over the whole sequence (`*_recompute`); the selected kernel only.
//!   FLOPs of a step: `2·DIM·(Q_DIM + 2·KV_DIM) + 2·Q_DIM·DIM + 4·LEN·Q_DIM`.
//! - `variant`: the attention variants of today's models on that grouped-query layer, beside
//!   the plain layer: `plain`, `softcap` (Gemma 2's cap of 50), `sinks` (gpt-oss), both
//!   (`softcap_sinks`), and `qk_norm` (Qwen3's per-head RMSNorm); a causal prefill of 512
//!   tokens (`prefill_512`, FLOPs as `gqa_recompute`) and one decoding step at cache length
//!   1024 (`step_1024`, FLOPs as `gqa_step`); the selected kernel only. Each variant's prefill
//!   is checked against its decode step first (within 1e-4).
//!
//! - `half`: the (128, 256, 8) and (512, 512, 8) layers with `f32` weights (`f32`), `bf16`
//!   weights on the selected kernel (`bf16`: `bf16` products where the kernel has them),
//!   `bf16` weights widened to `f32` (`bf16_widened`, the best kernel without `bf16`
//!   products; only where the selected one has them), and `f16` weights (`f16`); where the
//!   selected kernel is AVX-512, the `f32`, `bf16` and `f16` layers on AVX2 too (`f32_avx2`,
//!   `bf16_avx2`, `f16_avx2`). FLOPs as `layer`. Each is checked against the `f32` layer on
//!   the same rounded weights first (within `2⁻⁶·max|y|`; the widened ones within `1e-4`).
//!
//! Function names are `scalar`, `simd` (the kernel `kernels::selected()` picked) and, when
//! that is AVX-512, `avx2` too; parameters name the shape, e.g. `sdpa/simd/512x64_causal`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    Bencher, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
    measurement::WallTime,
};
#[cfg(feature = "rayon")]
use static_attention::Parallel;
use static_attention::kernels::{self, Kernel, with_kernel};
use static_attention::positions::NoPositions;
use static_attention::variant::{QkNorm, Variant};
use static_attention::{
    Alignment, Bias, Float, GroupedQuery, KvCache, Mask, MultiHead, SMatrix, Scratch, bf16, f16,
    heap, scaled_dot_product_attention_into,
};

/// The kernels each group compares: the portable one, the selected one (`simd`) if it
/// differs, and AVX2 (`avx2`) when the selected one is AVX-512.
fn kernels() -> Vec<(&'static str, Kernel)> {
    let mut ks = vec![("scalar", Kernel::Scalar)];
    let selected = kernels::selected();
    if selected != Kernel::Scalar {
        ks.push(("simd", selected));
    }
    if matches!(selected, Kernel::Avx512 | Kernel::Avx512Bf16) && Kernel::Avx2Fma.is_supported() {
        ks.push(("avx2", Kernel::Avx2Fma));
    }
    ks
}

/// A seeded matrix on the heap with entries uniform in [-1, 1].
fn random<T: Float, const R: usize, const C: usize>(seed: u64) -> Box<SMatrix<T, R, C>> {
    let mut m: Box<SMatrix<T, R, C>> = heap::zeroed();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for x in m.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *x = T::of((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0);
    }
    m
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, flops: u64, slow: bool) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if slow { 4 } else { 2 }))
        .sample_size(if slow { 10 } else { 30 })
        .throughput(Throughput::Elements(flops));
    if slow {
        group.sampling_mode(SamplingMode::Flat);
    }
}

fn max_diff<T: Float, const R: usize, const C: usize>(
    a: &SMatrix<T, R, C>,
    b: &SMatrix<T, R, C>,
) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max)
}

fn sdpa_case<const S: usize, const D: usize>(c: &mut Criterion) {
    let (q, k, v) = (
        random::<f32, S, D>(1),
        random::<f32, S, D>(2),
        random::<f32, S, D>(3),
    );
    let mut out: Box<SMatrix<f32, S, D>> = heap::zeroed();
    let mut group = c.benchmark_group("sdpa");
    configure(&mut group, (4 * S * S * D) as u64, S >= 512);
    for causal in [false, true] {
        let mask = if causal {
            Mask::causal(Alignment::TopLeft)
        } else {
            Mask::none()
        };
        let param = format!("{S}x{D}{}", if causal { "_causal" } else { "" });
        let mut outs = Vec::new();
        for (_, kernel) in kernels() {
            with_kernel(kernel, || {
                scaled_dot_product_attention_into(&q, &k, &v, &mask, None, &mut out)
            })
            .expect("supported");
            outs.push(out.clone());
        }
        assert!(
            outs.iter().all(|o| max_diff(o, &outs[0]) < 1e-4),
            "kernels disagree on sdpa {param}"
        );
        for (name, kernel) in kernels() {
            group.bench_function(BenchmarkId::new(name, &param), |b| {
                with_kernel(kernel, || {
                    b.iter(|| {
                        scaled_dot_product_attention_into(
                            black_box(&*q),
                            black_box(&*k),
                            black_box(&*v),
                            black_box(&mask),
                            None,
                            &mut out,
                        )
                    })
                })
                .expect("supported");
            });
        }
    }
    group.finish();
}

fn layer_case<T: Float, const S: usize, const D: usize, const H: usize>(
    c: &mut Criterion,
    group_name: &str,
) {
    let layer = seeded_layer::<T, S, D, H>(7);
    let x = random::<T, S, D>(8);
    let mut scratch: Box<Scratch<S, S, D, T>> = heap::zeroed();
    let mut out: Box<SMatrix<T, S, D>> = heap::zeroed();
    let mut group = c.benchmark_group(group_name);
    configure(&mut group, (8 * S * D * D + 4 * S * S * D) as u64, S >= 512);
    let param = format!("{S}x{D}x{H}");
    let mut outs = Vec::new();
    for (_, kernel) in kernels() {
        with_kernel(kernel, || {
            layer.forward_into(&x, &Mask::none(), &mut scratch, &mut out)
        })
        .expect("supported");
        outs.push(out.clone());
    }
    assert!(
        outs.iter().all(|o| max_diff(o, &outs[0]) < 1e-4),
        "kernels disagree on {param}"
    );
    for (name, kernel) in kernels() {
        group.bench_function(BenchmarkId::new(name, &param), |b| {
            with_kernel(kernel, || {
                b.iter(|| {
                    layer.forward_into(
                        black_box(&*x),
                        black_box(&Mask::none()),
                        &mut scratch,
                        &mut out,
                    )
                })
            })
            .expect("supported");
        });
    }
    group.finish();
}

/// 32 sequences through `MultiHead<16, 64, 4>`: `forward_batch_into` with each kernel, and
/// with the `rayon` feature `Parallel(&layer).forward_batch_into` (function `simd_2threads`).
fn batch_case(c: &mut Criterion) {
    const S: usize = 16;
    const D: usize = 64;
    const H: usize = 4;
    const B: usize = 32;
    let layer = MultiHead::<S, D, H>::from_seed(9);
    let xs: Vec<SMatrix<f32, S, D>> = (0..B as u64)
        .map(|b| *random::<f32, S, D>(100 + b))
        .collect();
    let mut outs = vec![SMatrix::<f32, S, D>::zeros(); B];
    let mut scratch: Box<Scratch<S, S, D>> = heap::zeroed();
    let mask = [Mask::none()];
    // One closure runs both the check and the timed loop: a second call site of
    // `forward_batch_into` in this function changed how it was inlined here and cost the
    // timed loop 5 %.
    let run = |scratch: &mut Scratch<S, S, D>, outs: &mut [SMatrix<f32, S, D>]| {
        layer
            .forward_batch_into(black_box(&xs), &mask, scratch, outs, None)
            .expect("lengths fit");
    };
    let mut all = Vec::new();
    for (_, kernel) in kernels() {
        with_kernel(kernel, || run(&mut scratch, &mut outs)).expect("supported");
        all.push(outs.clone());
    }
    assert!(
        all.iter()
            .all(|o| o.iter().zip(&all[0]).all(|(a, b)| max_diff(a, b) < 1e-4)),
        "kernels disagree on batch 32x16x64x4"
    );
    let mut group = c.benchmark_group("batch");
    configure(
        &mut group,
        (B * (8 * S * D * D + 4 * S * S * D)) as u64,
        false,
    );
    for (name, kernel) in kernels() {
        group.bench_function(BenchmarkId::new(name, "32x16x64x4"), |b| {
            with_kernel(kernel, || b.iter(|| run(&mut scratch, &mut outs))).expect("supported");
        });
    }
    #[cfg(feature = "rayon")]
    group.bench_function(BenchmarkId::new("simd_2threads", "32x16x64x4"), |b| {
        b.iter(|| {
            Parallel(&layer)
                .forward_batch_into(black_box(&xs), &mask, &mut outs)
                .expect("lengths fit")
        })
    });
    group.finish();
}

/// `MultiHead<512, 512, 8>` over rayon's threads (`Parallel(&layer).forward_into`), in the
/// `layer` group.
#[cfg(feature = "rayon")]
fn threads_case(c: &mut Criterion) {
    const S: usize = 512;
    const D: usize = 512;
    const H: usize = 8;
    let layer = seeded_layer::<f32, S, D, H>(7);
    let x = random::<f32, S, D>(8);
    let mut scratch: Box<Scratch<S, S, D>> = heap::zeroed();
    let mut out: Box<SMatrix<f32, S, D>> = heap::zeroed();
    let mut group = c.benchmark_group("layer");
    configure(&mut group, (8 * S * D * D + 4 * S * S * D) as u64, true);
    group.bench_function(BenchmarkId::new("simd_2threads", "512x512x8"), |b| {
        b.iter(|| {
            Parallel(&*layer).forward_into(black_box(&*x), &Mask::none(), &mut scratch, &mut out)
        })
    });
    group.finish();
}

fn seeded(seed: u64) -> static_attention::init::SeedRng {
    use static_attention::rand::SeedableRng;
    static_attention::init::SeedRng::seed_from_u64(seed)
}

/// A layer on the heap with PyTorch's initialisation (biases present), drawn from `seed`.
fn seeded_layer<T: Float, const S: usize, const D: usize, const H: usize>(
    seed: u64,
) -> Box<MultiHead<S, D, H, T>> {
    let mut layer: Box<MultiHead<S, D, H, T>> = heap::zeroed();
    layer.reset_parameters(&mut seeded(seed), Bias::Present);
    layer
}

fn exp_case(c: &mut Criterion) {
    let xs: Vec<f32> = (0..4096).map(|i| -87.0 * i as f32 / 4096.0).collect();
    let mut ys = xs.clone();
    // One call site of the `exp` for the check and the timed loop (see `batch_case`).
    let run = |ys: &mut [f32]| {
        ys.copy_from_slice(&xs);
        kernels::exp_in_place(black_box(ys));
    };
    let mut all = Vec::new();
    for (_, kernel) in kernels() {
        with_kernel(kernel, || run(&mut ys)).expect("supported");
        all.push(ys.clone());
    }
    assert!(
        all.iter()
            .all(|o| o.iter().zip(&all[0]).all(|(a, b)| (a - b).abs() < 1e-4)),
        "kernels disagree on exp"
    );
    let mut group = c.benchmark_group("exp");
    configure(&mut group, xs.len() as u64, false);
    for (name, kernel) in kernels() {
        group.bench_function(BenchmarkId::new(name, "4096"), |b| {
            with_kernel(kernel, || b.iter(|| run(&mut ys))).expect("supported");
        });
    }
    group.finish();
}

/// The FMA-loop peak of this core on each kernel (`kernels::fma_loop`: 12 independent chains
/// of fused multiply-adds on whole vectors, 2 FLOPs per lane each): the ceiling the other
/// groups' GFLOP/s are read against.
fn peak_case(c: &mut Criterion) {
    const ROUNDS: usize = 100_000;
    let mut group = c.benchmark_group("peak");
    let (flops, _) = kernels::fma_loop(1);
    configure(&mut group, flops * ROUNDS as u64, false);
    for (name, kernel) in kernels() {
        let (flops, _) = with_kernel(kernel, || kernels::fma_loop(1)).expect("supported");
        group.throughput(Throughput::Elements(flops * ROUNDS as u64));
        group.bench_function(BenchmarkId::new(name, "fma"), |b| {
            with_kernel(kernel, || b.iter(|| kernels::fma_loop(black_box(ROUNDS))))
                .expect("supported");
        });
    }
    // The i8 projections' product on each kernel that has one (AMX's `tdpbssd` on the
    // selected kernel where the CPU has AMX-INT8; 512-bit `vpdpbusd` with AVX512-VNNI; AVX2:
    // `vpmaddwd` pairs, or 256-bit `vpdpbusd` with AVX-VNNI).
    for (name, kernel) in kernels() {
        let Some((ops, _)) = with_kernel(kernel, || kernels::i8_dot_loop(1)).expect("supported")
        else {
            continue;
        };
        group.throughput(Throughput::Elements(ops * ROUNDS as u64));
        group.bench_function(BenchmarkId::new(name, "i8_dot"), |b| {
            with_kernel(kernel, || {
                b.iter(|| kernels::i8_dot_loop(black_box(ROUNDS)))
            })
            .expect("supported");
        });
    }
    if let Some((flops, _)) = kernels::bf16_dot_loop(1) {
        group.throughput(Throughput::Elements(flops * ROUNDS as u64));
        group.bench_function(BenchmarkId::new("simd", "bf16_dot"), |b| {
            b.iter(|| kernels::bf16_dot_loop(black_box(ROUNDS)));
        });
    }
    group.finish();
}

/// `MultiHead<S, D, H>` with `f32`, `bf16` and `f16` weights on the selected kernel, and
/// `bf16` widened on the best kernel without `bf16` products (see the module docs).
fn half_case<const S: usize, const D: usize, const H: usize>(c: &mut Criterion) {
    let full = seeded_layer::<f32, S, D, H>(7);
    let b16: Box<MultiHead<S, D, H, f32, bf16>> = Box::new(full.to_weights());
    let h16: Box<MultiHead<S, D, H, f32, f16>> = Box::new(full.to_weights());
    let q8: Box<MultiHead<S, D, H, f32, i8>> = Box::new(full.to_weights());
    let rounded: Box<MultiHead<S, D, H>> = Box::new(b16.to_weights());
    let x = random::<f32, S, D>(8);
    let mut scratch: Box<Scratch<S, S, D>> = heap::zeroed();
    let mut out: Box<SMatrix<f32, S, D>> = heap::zeroed();
    let mut want: Box<SMatrix<f32, S, D>> = heap::zeroed();
    let none = Mask::none();
    let selected = kernels::selected();
    let widened = (selected == Kernel::Avx512Bf16).then_some(Kernel::Avx512);
    rounded.forward_into(&x, &none, &mut scratch, &mut want);
    let tol = 2f64.powi(-6) * f64::from(want.amax());
    b16.forward_into(&x, &none, &mut scratch, &mut out);
    assert!(max_diff(&out, &want) <= tol, "bf16 layer vs f32");
    if let Some(k) = widened {
        with_kernel(k, || b16.forward_into(&x, &none, &mut scratch, &mut out)).expect("runs");
        assert!(max_diff(&out, &want) < 1e-4, "widened bf16 layer vs f32");
    }
    // The i8 layer against its f32 twin on the dequantized weights.
    let deq: Box<MultiHead<S, D, H>> = Box::new(q8.to_weights());
    let mut twin: Box<SMatrix<f32, S, D>> = heap::zeroed();
    deq.forward_into(&x, &none, &mut scratch, &mut twin);
    q8.forward_into(&x, &none, &mut scratch, &mut out);
    assert!(
        max_diff(&out, &twin) <= 2f64.powi(-5) * f64::from(twin.amax()),
        "i8 layer vs f32"
    );
    let mut group = c.benchmark_group("half");
    configure(&mut group, (8 * S * D * D + 4 * S * S * D) as u64, S >= 512);
    let param = format!("{S}x{D}x{H}");
    group.bench_function(BenchmarkId::new("f32", &param), |b| {
        b.iter(|| full.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
    });
    group.bench_function(BenchmarkId::new("bf16", &param), |b| {
        b.iter(|| b16.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
    });
    if let Some(k) = widened {
        group.bench_function(BenchmarkId::new("bf16_widened", &param), |b| {
            with_kernel(k, || {
                b.iter(|| b16.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
            })
            .expect("runs");
        });
    }
    group.bench_function(BenchmarkId::new("f16", &param), |b| {
        b.iter(|| h16.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
    });
    group.bench_function(BenchmarkId::new("i8", &param), |b| {
        b.iter(|| q8.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
    });
    // The three weight formats again on AVX2, where the selected kernel is AVX-512: the
    // widening paths of a CPU without AVX-512, beside their own `f32` time.
    if matches!(selected, Kernel::Avx512 | Kernel::Avx512Bf16) && Kernel::Avx2Fma.is_supported() {
        let k = Kernel::Avx2Fma;
        with_kernel(k, || b16.forward_into(&x, &none, &mut scratch, &mut out)).expect("runs");
        assert!(max_diff(&out, &want) < 1e-4, "bf16 layer on AVX2 vs f32");
        group.bench_function(BenchmarkId::new("f32_avx2", &param), |b| {
            with_kernel(k, || {
                b.iter(|| full.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
            })
            .expect("runs");
        });
        group.bench_function(BenchmarkId::new("bf16_avx2", &param), |b| {
            with_kernel(k, || {
                b.iter(|| b16.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
            })
            .expect("runs");
        });
        group.bench_function(BenchmarkId::new("f16_avx2", &param), |b| {
            with_kernel(k, || {
                b.iter(|| h16.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
            })
            .expect("runs");
        });
        with_kernel(k, || q8.forward_into(&x, &none, &mut scratch, &mut out)).expect("runs");
        assert!(
            max_diff(&out, &twin) <= 2f64.powi(-5) * f64::from(twin.amax()),
            "i8 layer on AVX2 vs f32"
        );
        group.bench_function(BenchmarkId::new("i8_avx2", &param), |b| {
            with_kernel(k, || {
                b.iter(|| q8.forward_into(black_box(&*x), &none, &mut scratch, &mut out));
            })
            .expect("runs");
        });
    }
    group.finish();
}

/// FLOPs of a grouped-query layer's causal forward over `seq` tokens (dense count):
/// projections `2·seq·DIM·(Q_DIM + 2·KV_DIM) + 2·seq·Q_DIM·DIM`, attention `4·seq²·Q_DIM`.
fn gqa_forward_flops(seq: usize, dim: usize, q: usize, kv: usize) -> u64 {
    (2 * seq * dim * (q + 2 * kv) + 2 * seq * q * dim + 4 * seq * seq * q) as u64
}

/// FLOPs of one decoding step at cache length `len`:
/// `2·DIM·(Q_DIM + 2·KV_DIM) + 2·Q_DIM·DIM + 4·len·Q_DIM`.
fn step_flops(len: usize, dim: usize, q: usize, kv: usize) -> u64 {
    (2 * dim * (q + 2 * kv) + 2 * q * dim + 4 * len * q) as u64
}

/// Times `step` alone on `cache`, which is restored (untimed) from `filled`, the prefilled
/// cache, before each call.
fn time_steps<const CAP: usize, const KVD: usize>(
    b: &mut Bencher<'_>,
    cache: &mut KvCache<CAP, KVD>,
    filled: &KvCache<CAP, KVD>,
    mut step: impl FnMut(&mut KvCache<CAP, KVD>),
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            cache.copy_from(filled);
            let t = std::time::Instant::now();
            step(cache);
            total += t.elapsed();
        }
        total
    });
}

/// Decoding at cache length `L` (`P = L − 1` positions prefilled, then one step), against the
/// causal forward over all `L` tokens.
fn decode_case<const L: usize, const P: usize>(c: &mut Criterion) {
    const DIM: usize = 512;
    const KV: usize = 128;
    let mha = seeded_layer::<f32, L, DIM, 8>(11);
    let gqa = GroupedQuery::<DIM, 8, 2, DIM, KV>::from_seed(12);
    let x = random::<f32, L, DIM>(13);
    let mut prompt: Box<SMatrix<f32, P, DIM>> = heap::zeroed();
    prompt.copy_from(&x.fixed_rows::<P>(0));
    let token = x.fixed_rows::<1>(P).into_owned();
    let mut y = SMatrix::<f32, 1, DIM>::zeros();
    let mut step: Box<Scratch<1, 1, DIM>> = heap::zeroed();
    let mut step_gqa: Box<Scratch<1, 1, DIM, f32, KV>> = heap::zeroed();
    // The prefilled caches, cloned before every timed step.
    let mut mha_cache: Box<KvCache<L, DIM>> = heap::zeroed();
    let mut gqa_cache: Box<KvCache<L, KV>> = heap::zeroed();
    {
        let mut sc: Box<Scratch<P, P, DIM>> = heap::zeroed();
        let mut out: Box<SMatrix<f32, P, DIM>> = heap::zeroed();
        mha.decode_into(&*prompt, &mut mha_cache, &NoPositions, &mut sc, &mut out)
            .expect("fits");
        let mut sc: Box<Scratch<P, P, DIM, f32, KV>> = heap::zeroed();
        gqa.decode_into(&*prompt, &mut gqa_cache, &NoPositions, &mut sc, &mut out)
            .expect("fits");
    }
    // Each step equals the last row of its layer's full causal forward.
    let causal = Mask::causal(Alignment::BottomRight);
    let mut full: Box<SMatrix<f32, L, DIM>> = heap::zeroed();
    let mut scratch: Box<Scratch<L, L, DIM>> = heap::zeroed();
    mha.forward_into(&x, &causal, &mut scratch, &mut full);
    let mut cache: Box<KvCache<L, DIM>> = heap::zeroed();
    cache.copy_from(&mha_cache);
    mha.decode_into(&token, &mut cache, &NoPositions, &mut step, &mut y)
        .expect("fits");
    assert!(
        max_diff(&y, &full.fixed_rows::<1>(P).into_owned()) < 1e-4,
        "mha step vs the full forward at cache_{L}"
    );
    let mut gsc: Box<Scratch<L, L, DIM, f32, KV>> = heap::zeroed();
    gqa.forward_into(&x, &causal, &NoPositions, &mut gsc, &mut full)
        .expect("no table");
    let mut gcache: Box<KvCache<L, KV>> = heap::zeroed();
    gcache.copy_from(&gqa_cache);
    gqa.decode_into(&token, &mut gcache, &NoPositions, &mut step_gqa, &mut y)
        .expect("fits");
    assert!(
        max_diff(&y, &full.fixed_rows::<1>(P).into_owned()) < 1e-4,
        "gqa step vs the full forward at cache_{L}"
    );

    let param = format!("cache_{L}");
    let mut group = c.benchmark_group("decode");
    configure(&mut group, step_flops(L, DIM, DIM, DIM), false);
    // Each timed step starts from the prefilled cache, restored (untimed) before it.
    group.bench_function(BenchmarkId::new("mha_step", &param), |b| {
        time_steps(b, &mut cache, &mha_cache, |cache| {
            mha.decode_into(black_box(&token), cache, &NoPositions, &mut step, &mut y)
                .expect("fits");
        });
    });
    configure(&mut group, step_flops(L, DIM, DIM, KV), false);
    group.bench_function(BenchmarkId::new("gqa_step", &param), |b| {
        time_steps(b, &mut gcache, &gqa_cache, |cache| {
            gqa.decode_into(
                black_box(&token),
                cache,
                &NoPositions,
                &mut step_gqa,
                &mut y,
            )
            .expect("fits");
        });
    });
    let dense = (8 * L * DIM * DIM + 4 * L * L * DIM) as u64;
    configure(&mut group, dense, L > 256);
    group.bench_function(BenchmarkId::new("mha_recompute", &param), |b| {
        b.iter(|| mha.forward_into(black_box(&x), &causal, &mut scratch, &mut full))
    });
    configure(&mut group, gqa_forward_flops(L, DIM, DIM, KV), L > 256);
    group.bench_function(BenchmarkId::new("gqa_recompute", &param), |b| {
        b.iter(|| {
            gqa.forward_into(black_box(&x), &causal, &NoPositions, &mut gsc, &mut full)
                .expect("no table")
        })
    });
    group.finish();
}

/// The variants of today's models on the decode group's grouped-query layer: a causal prefill
/// of `P` tokens and one step at cache length `L`, each beside the plain layer.
fn variant_case<const P: usize, const L: usize, const LM1: usize>(c: &mut Criterion) {
    const DIM: usize = 512;
    const KV: usize = 128;
    type Layer = GroupedQuery<DIM, 8, 2, DIM, KV>;
    let variants = [
        ("plain", Variant::PLAIN),
        ("softcap", Variant::PLAIN.with_softcap(50.0)),
        ("sinks", Variant::PLAIN.with_sinks()),
        (
            "softcap_sinks",
            Variant::PLAIN.with_softcap(50.0).with_sinks(),
        ),
        (
            "qk_norm",
            Variant::PLAIN.with_qk_norm(QkNorm::PerHead { eps: 1e-6 }),
        ),
    ];
    let layers: Vec<(&str, Box<Layer>)> = variants
        .iter()
        .map(|&(name, v)| {
            // The same weights for every variant (on the heap: 2.6 MB each).
            let mut layer: Box<Layer> = heap::zeroed();
            layer.reset_parameters(&mut seeded(12), Bias::Absent);
            layer.set_variant(v).expect("a valid variant");
            // Sink logits around the scores' size, so the sink takes a real share.
            for (h, s) in layer.sinks_mut().iter_mut().enumerate() {
                *s = 0.25 * h as f32 - 1.0;
            }
            (name, layer)
        })
        .collect();
    let x = random::<f32, L, DIM>(13);
    let mut prompt: Box<SMatrix<f32, P, DIM>> = heap::zeroed();
    prompt.copy_from(&x.fixed_rows::<P>(0));
    let mut before: Box<SMatrix<f32, LM1, DIM>> = heap::zeroed();
    before.copy_from(&x.fixed_rows::<LM1>(0));
    let token = x.fixed_rows::<1>(LM1).into_owned();
    let causal = Mask::causal(Alignment::TopLeft);
    let mut prefill: Box<Scratch<P, P, DIM, f32, KV>> = heap::zeroed();
    let mut out: Box<SMatrix<f32, P, DIM>> = heap::zeroed();
    let mut step: Box<Scratch<1, 1, DIM, f32, KV>> = heap::zeroed();
    let mut y = SMatrix::<f32, 1, DIM>::zeros();

    let mut group = c.benchmark_group("variant");
    configure(&mut group, gqa_forward_flops(P, DIM, DIM, KV), true);
    for (name, layer) in &layers {
        group.bench_function(BenchmarkId::new(*name, format!("prefill_{P}")), |b| {
            b.iter(|| {
                layer
                    .forward_into(
                        black_box(&prompt),
                        &causal,
                        &NoPositions,
                        &mut prefill,
                        &mut out,
                    )
                    .expect("no table")
            })
        });
    }
    configure(&mut group, step_flops(L, DIM, DIM, KV), false);
    // Untimed working memory: the prefill of `L − 1` tokens and the full forward over `L`.
    let mut before_sc: Box<Scratch<LM1, LM1, DIM, f32, KV>> = heap::zeroed();
    let mut before_out: Box<SMatrix<f32, LM1, DIM>> = heap::zeroed();
    let mut full_sc: Box<Scratch<L, L, DIM, f32, KV>> = heap::zeroed();
    let mut full: Box<SMatrix<f32, L, DIM>> = heap::zeroed();
    let full_causal = Mask::causal(Alignment::TopLeft);
    let mut filled: Box<KvCache<L, KV>> = heap::zeroed();
    let mut cache: Box<KvCache<L, KV>> = heap::zeroed();
    for (name, layer) in &layers {
        // The prefilled cache (`L − 1` positions), restored (untimed) before each step.
        filled.reset();
        layer
            .decode_into(
                &*before,
                &mut filled,
                &NoPositions,
                &mut before_sc,
                &mut before_out,
            )
            .expect("fits");
        // The step equals the last row of the layer's causal forward over all L tokens.
        cache.copy_from(&filled);
        layer
            .decode_into(&token, &mut cache, &NoPositions, &mut step, &mut y)
            .expect("fits");
        layer
            .forward_into(&x, &full_causal, &NoPositions, &mut full_sc, &mut full)
            .expect("no table");
        assert!(
            max_diff(&y, &full.fixed_rows::<1>(LM1).into_owned()) < 1e-4,
            "{name}: step vs the full forward"
        );
        group.bench_function(BenchmarkId::new(*name, format!("step_{L}")), |b| {
            time_steps(b, &mut cache, &filled, |cache| {
                layer
                    .decode_into(black_box(&token), cache, &NoPositions, &mut step, &mut y)
                    .expect("fits");
            });
        });
    }
    group.finish();
}

fn main() {
    eprintln!("static_attention kernel: {}", kernels::selected().name());
    let mut c = Criterion::default().configure_from_args();
    peak_case(&mut c);
    sdpa_case::<128, 64>(&mut c);
    sdpa_case::<512, 64>(&mut c);
    sdpa_case::<1024, 64>(&mut c);
    layer_case::<f32, 16, 64, 4>(&mut c, "layer");
    layer_case::<f32, 128, 256, 8>(&mut c, "layer");
    layer_case::<f32, 512, 512, 8>(&mut c, "layer");
    #[cfg(feature = "rayon")]
    threads_case(&mut c);
    layer_case::<f64, 128, 256, 8>(&mut c, "layer_f64");
    half_case::<128, 256, 8>(&mut c);
    half_case::<512, 512, 8>(&mut c);
    batch_case(&mut c);
    exp_case(&mut c);
    decode_case::<128, 127>(&mut c);
    decode_case::<1024, 1023>(&mut c);
    variant_case::<512, 1024, 1023>(&mut c);
    c.final_summary();
}
