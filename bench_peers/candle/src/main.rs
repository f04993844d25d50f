//! candle on the attention workloads of `benches/attention.rs`, for `scripts/bench_peers.sh`.
//!
//! Every workload is a straightforward port of what a candle user would write (eager ops on
//! f32 CPU tensors, `candle_nn::ops::softmax_last_dim`), not a tuned kernel:
//!
//! - `sdpa/<S>x<d>[_causal]`: one head, `softmax(q kᵀ / √d [+ mask]) v` with q, k, v `S × d`;
//!   the causal mask (`-∞` above the diagonal, top-left aligned like PyTorch's
//!   `is_causal=True`) is built once, outside the timed region, and added to the scores.
//! - `layer/<SEQ>x<DIM>x<HEADS>`: `nn.MultiheadAttention` self-attention (bias, no mask) on one
//!   sequence `[1, SEQ, DIM]`: three projections `x Wᵀ + b`, split into heads, batched
//!   per-head attention, heads concatenated, output projection.
//! - `batch/32x16x64x4`: the same layer on 32 sequences at once (`[32, 16, 64]`).
//!
//! Before timing anything, every workload's output is compared with a plain-loop f64
//! reference computed here from the same data; a difference above `1e-4` aborts the run.
//!
//! Threads: candle's matmuls (`gemm`) and `softmax_last_dim` (rayon) use as many threads as
//! `RAYON_NUM_THREADS` says; the script sets it. `--threads N` only labels the output and is
//! checked against what candle will actually use. Timing runs inside `Device::with_context`,
//! candle's own CPU thread pool.
//!
//! Output: JSON lines on stdout, one per workload:
//! `{"peer":"candle","threads":1,"id":"sdpa/128x64","median_us":…,"min_us":…,"samples":30,"iters":…}`.
//! Progress and the correctness report go to stderr.
//!
//! Usage: `bench-peers-candle --threads N [--quick] [--only SUBSTRING]` (`--only` keeps the
//! workloads whose id contains `SUBSTRING`).

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::{D, Device, Result, Tensor};
use candle_nn::ops::softmax_last_dim;

/// Largest allowed absolute difference between candle's output and the f64 reference.
const TOL: f64 = 1e-4;

/// Single-head shapes `(S, d)`.
const SDPA_SHAPES: [(usize, usize); 3] = [(128, 64), (512, 64), (1024, 64)];
/// Multi-head layer shapes `(SEQ, DIM, HEADS)`.
const LAYER_SHAPES: [(usize, usize, usize); 3] = [(16, 64, 4), (128, 256, 8), (512, 512, 8)];
/// The batched workload: `BATCH` sequences through the `(16, 64, 4)` layer.
const BATCH: usize = 32;
const BATCH_LAYER: (usize, usize, usize) = (16, 64, 4);

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

/// How long to measure: warm-up, then `samples` samples of at least `min_sample` each.
struct Plan {
    warmup: Duration,
    samples: usize,
    min_sample: Duration,
}

impl Plan {
    const FULL: Plan = Plan {
        warmup: Duration::from_millis(500),
        samples: 30,
        min_sample: Duration::from_millis(10),
    };
    const QUICK: Plan = Plan {
        warmup: Duration::from_millis(200),
        samples: 10,
        min_sample: Duration::from_millis(5),
    };
}

/// Result of one measurement: times per call.
struct Stats {
    median: Duration,
    min: Duration,
    /// Back-to-back calls per sample.
    iters: u32,
}

/// Warms `f` up, calibrates how many back-to-back calls fill one sample, then takes the samples
/// and returns the median (and minimum) time per call.
fn measure(plan: &Plan, mut f: impl FnMut() -> Result<Tensor>) -> Result<Stats> {
    let start = Instant::now();
    while start.elapsed() < plan.warmup {
        black_box(f()?);
    }
    // Double the batch until one batch lasts at least `min_sample`.
    let mut iters: u32 = 1;
    loop {
        let t0 = Instant::now();
        for _ in 0..iters {
            black_box(f()?);
        }
        if t0.elapsed() >= plan.min_sample {
            break;
        }
        iters *= 2;
    }
    let mut per_call = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        let t0 = Instant::now();
        for _ in 0..iters {
            black_box(f()?);
        }
        per_call.push(t0.elapsed() / iters);
    }
    per_call.sort_unstable();
    Ok(Stats {
        median: per_call[per_call.len() / 2],
        min: per_call[0],
        iters,
    })
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// A tiny deterministic generator (SplitMix64), so candle and the reference see the same data
/// without depending on candle's own RNG.
struct Rng(u64);

impl Rng {
    /// Uniform in `[-scale, scale)`.
    fn uniform(&mut self, scale: f32) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        (2.0 * unit - 1.0) * scale
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }
}

/// Row-major `rows × cols` matrix, the reference's storage.
struct Mat {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Mat {
    fn random(rng: &mut Rng, rows: usize, cols: usize, scale: f32) -> Self {
        Mat {
            rows,
            cols,
            data: rng.vec(rows * cols, scale),
        }
    }

    fn at(&self, r: usize, c: usize) -> f64 {
        f64::from(self.data[r * self.cols + c])
    }

    /// Transposed copy (`cols × rows`), for candle's pre-transposed weights.
    fn transposed(&self) -> Mat {
        let mut data = Vec::with_capacity(self.data.len());
        for c in 0..self.cols {
            for r in 0..self.rows {
                data.push(self.data[r * self.cols + c]);
            }
        }
        Mat {
            rows: self.cols,
            cols: self.rows,
            data,
        }
    }

    fn tensor(&self, dev: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.data.clone(), (self.rows, self.cols), dev)
    }
}

// ---------------------------------------------------------------------------------------------
// Reference (plain loops, f64 accumulation)
// ---------------------------------------------------------------------------------------------

/// `softmax(q kᵀ · scale [causal]) v` for row-major `q [S × d]`, `k`, `v`, all given as
/// accessors so the same code serves one head of a wider matrix.
fn reference_attention(
    s: usize,
    d: usize,
    causal: bool,
    q: impl Fn(usize, usize) -> f64,
    k: impl Fn(usize, usize) -> f64,
    v: impl Fn(usize, usize) -> f64,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; s * d];
    let mut w = vec![0.0; s];
    for i in 0..s {
        // Top-left causal: query i sees keys 0..=i.
        let keys = if causal { i + 1 } else { s };
        for (j, wj) in w.iter_mut().enumerate().take(keys) {
            *wj = (0..d).map(|c| q(i, c) * k(j, c)).sum::<f64>() * scale;
        }
        let max = w[..keys].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for wj in &mut w[..keys] {
            *wj = (*wj - max).exp();
            sum += *wj;
        }
        for c in 0..d {
            out[i * d + c] = (0..keys).map(|j| w[j] * v(j, c)).sum::<f64>() / sum;
        }
    }
    out
}

/// `x Wᵀ + b` for row-major `x [S × in]`, `W [out × in]`.
fn reference_linear(x: &Mat, w: &Mat, b: &[f32]) -> Mat {
    let mut data = Vec::with_capacity(x.rows * w.rows);
    for r in 0..x.rows {
        for (o, &bo) in b.iter().enumerate() {
            let dot: f64 = (0..x.cols).map(|c| x.at(r, c) * w.at(o, c)).sum();
            data.push((dot + f64::from(bo)) as f32);
        }
    }
    Mat {
        rows: x.rows,
        cols: w.rows,
        data,
    }
}

/// Largest absolute difference between candle's (flattened) output and the reference.
fn max_abs_diff(got: &Tensor, want: &[f64]) -> Result<f64> {
    let got = got.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(got.len(), want.len(), "output sizes differ");
    Ok(got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max))
}

// ---------------------------------------------------------------------------------------------
// The candle ports
// ---------------------------------------------------------------------------------------------

/// Single-head SDPA: `softmax(q kᵀ / √d + mask) v`; `mask` is the precomputed causal mask.
fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    softmax_last_dim(&scores)?.matmul(v)
}

/// `S × S` additive mask: `-∞` where key `j` is after query `i` (top-left causal).
fn causal_mask(s: usize, dev: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..s * s)
        .map(|ij| {
            if ij % s > ij / s {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(data, (s, s), dev)
}

/// One `nn.MultiheadAttention` layer's parameters, in PyTorch's layout (`W` is `out × in`).
struct LayerWeights {
    heads: usize,
    /// q, k, v, out projections: `(W, b)`.
    proj: [(Mat, Vec<f32>); 4],
}

impl LayerWeights {
    fn random(rng: &mut Rng, dim: usize, heads: usize) -> Self {
        // nn.Linear's default init range; the values only matter for the correctness check.
        let bound = 1.0 / (dim as f32).sqrt();
        let mut one = || (Mat::random(rng, dim, dim, bound), rng.vec(dim, bound));
        LayerWeights {
            heads,
            proj: [one(), one(), one(), one()],
        }
    }

    /// f64 reference of the layer on one sequence `x [SEQ × DIM]`, row-major flattened.
    fn reference(&self, x: &Mat) -> Vec<f64> {
        let [(wq, bq), (wk, bk), (wv, bv), (wo, bo)] = &self.proj;
        let (q, k, v) = (
            reference_linear(x, wq, bq),
            reference_linear(x, wk, bk),
            reference_linear(x, wv, bv),
        );
        let (seq, dim) = (x.rows, x.cols);
        let hd = dim / self.heads;
        let mut concat = Mat {
            rows: seq,
            cols: dim,
            data: vec![0.0; seq * dim],
        };
        for h in 0..self.heads {
            let c0 = h * hd;
            let o = reference_attention(
                seq,
                hd,
                false,
                |i, c| q.at(i, c0 + c),
                |j, c| k.at(j, c0 + c),
                |j, c| v.at(j, c0 + c),
            );
            for i in 0..seq {
                for c in 0..hd {
                    concat.data[i * dim + c0 + c] = o[i * hd + c] as f32;
                }
            }
        }
        let y = reference_linear(&concat, wo, bo);
        y.data.iter().map(|&e| f64::from(e)).collect()
    }
}

/// The candle port of the layer: pre-transposed weights (`Wᵀ`, `in × out`) and biases.
struct CandleLayer {
    heads: usize,
    proj: [(Tensor, Tensor); 4],
}

impl CandleLayer {
    fn new(w: &LayerWeights, dev: &Device) -> Result<Self> {
        let t = |(m, b): &(Mat, Vec<f32>)| -> Result<(Tensor, Tensor)> {
            Ok((
                m.transposed().tensor(dev)?,
                Tensor::from_slice(b, b.len(), dev)?,
            ))
        };
        let [pq, pk, pv, po] = &w.proj;
        Ok(CandleLayer {
            heads: w.heads,
            proj: [t(pq)?, t(pk)?, t(pv)?, t(po)?],
        })
    }

    /// Self-attention of `x [B, SEQ, DIM]`, no mask; returns `[B, SEQ, DIM]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, seq, dim) = x.dims3()?;
        let (h, hd) = (self.heads, dim / self.heads);
        let [(wq, bq), (wk, bk), (wv, bv), (wo, bo)] = &self.proj;
        // All tokens of all sequences go through each projection as one matrix.
        let x2 = x.reshape((b * seq, dim))?;
        // x Wᵀ + b, then [B·SEQ, DIM] → [B, H, SEQ, hd] (contiguous, as batched matmul needs).
        let heads = |w: &Tensor, bias: &Tensor| -> Result<Tensor> {
            x2.matmul(w)?
                .broadcast_add(bias)?
                .reshape((b, seq, h, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(wq, bq)?, heads(wk, bk)?, heads(wv, bv)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let p = softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        // [B, H, SEQ, hd] → [B·SEQ, DIM]: heads concatenated along the features.
        let concat = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * seq, dim))?;
        concat.matmul(wo)?.broadcast_add(bo)?.reshape((b, seq, dim))
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// One workload: its id (criterion's `group/parameter`), the call to time, and the
/// reference output it must match.
struct Workload {
    id: String,
    run: Box<dyn FnMut() -> Result<Tensor> + Send>,
    reference: Vec<f64>,
}

fn workloads(dev: &Device) -> Result<Vec<Workload>> {
    let mut rng = Rng(0x5eed);
    let mut out = Vec::new();
    for (s, d) in SDPA_SHAPES {
        let (q, k, v) = (
            Mat::random(&mut rng, s, d, 1.0),
            Mat::random(&mut rng, s, d, 1.0),
            Mat::random(&mut rng, s, d, 1.0),
        );
        for causal in [false, true] {
            let reference = reference_attention(
                s,
                d,
                causal,
                |i, c| q.at(i, c),
                |j, c| k.at(j, c),
                |j, c| v.at(j, c),
            );
            let (qt, kt, vt) = (q.tensor(dev)?, k.tensor(dev)?, v.tensor(dev)?);
            let mask = if causal {
                Some(causal_mask(s, dev)?)
            } else {
                None
            };
            out.push(Workload {
                id: format!("sdpa/{s}x{d}{}", if causal { "_causal" } else { "" }),
                run: Box::new(move || sdpa(&qt, &kt, &vt, mask.as_ref())),
                reference,
            });
        }
    }
    for (seq, dim, heads) in LAYER_SHAPES {
        let weights = LayerWeights::random(&mut rng, dim, heads);
        let x = Mat::random(&mut rng, seq, dim, 1.0);
        let layer = CandleLayer::new(&weights, dev)?;
        let xt = x.tensor(dev)?.reshape((1, seq, dim))?;
        out.push(Workload {
            id: format!("layer/{seq}x{dim}x{heads}"),
            run: Box::new(move || layer.forward(&xt)),
            reference: weights.reference(&x),
        });
    }
    {
        let (seq, dim, heads) = BATCH_LAYER;
        let weights = LayerWeights::random(&mut rng, dim, heads);
        let xs: Vec<Mat> = (0..BATCH)
            .map(|_| Mat::random(&mut rng, seq, dim, 1.0))
            .collect();
        // The batched reference is each sequence's reference, one after the other.
        let reference = xs.iter().flat_map(|x| weights.reference(x)).collect();
        let flat: Vec<f32> = xs.iter().flat_map(|x| x.data.iter().copied()).collect();
        let xt = Tensor::from_vec(flat, (BATCH, seq, dim), dev)?;
        let layer = CandleLayer::new(&weights, dev)?;
        out.push(Workload {
            id: format!("batch/{BATCH}x{seq}x{dim}x{heads}"),
            run: Box::new(move || layer.forward(&xt)),
            reference,
        });
    }
    Ok(out)
}

fn run() -> std::result::Result<(), String> {
    let mut threads: Option<usize> = None;
    let mut only: Option<String> = None;
    let mut plan = &Plan::FULL;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => {
                let n = args.next().ok_or("--threads needs a value")?;
                threads = Some(
                    n.parse()
                        .map_err(|_| format!("bad --threads value {n:?}"))?,
                );
            }
            "--quick" => plan = &Plan::QUICK,
            "--only" => only = Some(args.next().ok_or("--only needs a value")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: --threads N [--quick] [--only SUBSTRING])"
                ));
            }
        }
    }
    let threads = threads.ok_or("--threads N is required")?;
    // What candle's matmul and softmax will really use (RAYON_NUM_THREADS, else the cores).
    let actual = candle_core::utils::get_num_threads();
    if actual != threads {
        return Err(format!(
            "--threads {threads} but candle would use {actual} threads: set RAYON_NUM_THREADS={threads}"
        ));
    }

    let dev = Device::Cpu;
    let mut all = workloads(&dev).map_err(|e| format!("building workloads: {e}"))?;
    if let Some(only) = &only {
        all.retain(|w| w.id.contains(only.as_str()));
        if all.is_empty() {
            return Err(format!("no workload id contains {only:?}"));
        }
    }

    // Correctness first: a benchmark of wrong code is worthless.
    for w in &mut all {
        let got = (w.run)().map_err(|e| format!("{}: {e}", w.id))?;
        let diff = max_abs_diff(&got, &w.reference).map_err(|e| format!("{}: {e}", w.id))?;
        eprintln!(
            "candle check {:<22} max |candle - reference| = {diff:.2e}",
            w.id
        );
        // (NaN compares false, so test it explicitly.)
        if diff.is_nan() || diff >= TOL {
            return Err(format!(
                "{}: candle output differs from the reference by {diff:e} (> {TOL:e})",
                w.id
            ));
        }
    }

    for w in &mut all {
        // The whole measurement runs inside candle's own CPU thread pool, as candle advises for
        // a forward pass: its parallel sections (gemm, softmax) then run on warm workers
        // instead of each waking the global rayon pool from outside (which costs ~10 µs a
        // call, even with one thread).
        let stats = dev
            .with_context(|| measure(plan, &mut w.run))
            .map_err(|e| format!("{}: {e}", w.id))?;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        eprintln!(
            "candle {threads}T {:<22} {:>12.2} µs",
            w.id,
            us(stats.median)
        );
        println!(
            r#"{{"peer":"candle","threads":{threads},"id":"{}","median_us":{:.3},"min_us":{:.3},"samples":{},"iters":{}}}"#,
            w.id,
            us(stats.median),
            us(stats.min),
            plan.samples,
            stats.iters
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-peers-candle: error: {e}");
            ExitCode::FAILURE
        }
    }
}
