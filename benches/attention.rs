//! Attention benchmarks: the library against a naive nalgebra implementation of the same math.
//!
//! Run with `cargo bench --bench attention`. Every group sets a throughput of the operation's
//! floating-point operations (one multiply-add = 2 FLOPs), so what criterion prints as
//! "elem/s" reads as FLOP/s: `Gelem/s` = GFLOP/s. Peers share a group so their ratios come from
//! one run, and before measuring each group asserts that the naive and library outputs agree
//! within `1e-4`, so the comparison is apples to apples.
//!
//! - `sdpa_single_head`: `softmax(Q Kᵀ/√d) V` for one head, `SEQ = 128`, `d = 64`, f32;
//!   `4·SEQ²·d` FLOPs (`Q Kᵀ` and the product with `V`, `2·SEQ²·d` each).
//! - `multi_head_layer`: `MultiHead<128, 256, 8>` self-attention, f32, with no mask and with a
//!   causal mask; `8·SEQ·DIM² + 4·SEQ²·DIM` FLOPs (four `DIM × DIM` projections plus the
//!   attention of all heads).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use nalgebra::{DMatrix, Dim, Matrix, SMatrix, SVector, StorageMut};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use static_attention::{Alignment, Mask, MultiHead, Scratch, scaled_dot_product_attention};

/// Tokens in the sequence.
const SEQ: usize = 128;
/// Head width of the single-head benchmark.
const D: usize = 64;
/// Model width of the layer benchmark.
const DIM: usize = 256;
/// Heads of the layer benchmark.
const HEADS: usize = 8;
/// Features per head in the layer benchmark.
const HEAD_DIM: usize = DIM / HEADS;
/// Largest allowed absolute difference between the library and the naive outputs.
const TOL: f32 = 1e-4;

type Layer = MultiHead<SEQ, DIM, HEADS>;

fn random<const R: usize, const C: usize>(rng: &mut SmallRng) -> SMatrix<f32, R, C> {
    SMatrix::from_fn(|_, _| rng.random_range(-1.0f32..1.0))
}

fn to_dynamic<const R: usize, const C: usize>(m: &SMatrix<f32, R, C>) -> DMatrix<f32> {
    DMatrix::from_column_slice(R, C, m.as_slice())
}

/// Largest absolute elementwise difference.
fn max_abs_diff(a: &DMatrix<f32>, b: &DMatrix<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b).amax()
}

/// Softmax of every row, in place (rows with `-∞` entries give them weight 0).
fn softmax_rows<R: Dim, C: Dim, S: StorageMut<f32, R, C>>(s: &mut Matrix<f32, R, C, S>) {
    for mut row in s.row_iter_mut() {
        let m = row.max();
        row.apply(|x| *x = (*x - m).exp());
        let sum = row.sum();
        row /= sum;
    }
}

/// Blocks every key after the query (causal, top-left aligned) with `-∞`.
fn mask_causal(s: &mut DMatrix<f32>) {
    for j in 0..s.ncols() {
        for i in 0..j.min(s.nrows()) {
            s[(i, j)] = f32::NEG_INFINITY;
        }
    }
}

/// Naive single-head attention on stack matrices (nalgebra's own static-size matmul).
fn naive_sdpa_static(
    q: &SMatrix<f32, SEQ, D>,
    k: &SMatrix<f32, SEQ, D>,
    v: &SMatrix<f32, SEQ, D>,
) -> SMatrix<f32, SEQ, D> {
    let scale = 1.0 / (D as f32).sqrt();
    let mut s: SMatrix<f32, SEQ, SEQ> = q * k.transpose() * scale;
    softmax_rows(&mut s);
    s * v
}

/// Naive single-head attention on heap matrices (nalgebra's `DMatrix` product, which goes
/// through `matrixmultiply`'s blocked GEMM).
fn naive_sdpa_dynamic(q: &DMatrix<f32>, k: &DMatrix<f32>, v: &DMatrix<f32>) -> DMatrix<f32> {
    let scale = 1.0 / (q.ncols() as f32).sqrt();
    let mut s = q * k.transpose() * scale;
    softmax_rows(&mut s);
    s * v
}

/// A multi-head layer written out with `DMatrix`, holding copies of a library layer's weights.
struct NaiveLayer {
    /// `Wᵀ` (`DIM × DIM`) and bias of q, k, v, out.
    proj: [(DMatrix<f32>, Vec<f32>); 4],
}

impl NaiveLayer {
    fn from_layer(layer: &Layer) -> Self {
        let copy = |l: &static_attention::Linear<DIM, DIM, f32>| {
            let w_t = to_dynamic(l.weight_t());
            let b = l.bias().map_or(vec![0.0; DIM], |b| b.as_slice().to_vec());
            (w_t, b)
        };
        Self {
            proj: [
                copy(layer.q_proj()),
                copy(layer.k_proj()),
                copy(layer.v_proj()),
                copy(layer.out_proj()),
            ],
        }
    }

    /// `x Wᵀ + b`.
    fn project(x: &DMatrix<f32>, (w_t, b): &(DMatrix<f32>, Vec<f32>)) -> DMatrix<f32> {
        let mut y = x * w_t;
        for (mut col, &bj) in y.column_iter_mut().zip(b) {
            col.add_scalar_mut(bj);
        }
        y
    }

    fn forward(&self, x: &DMatrix<f32>, causal: bool) -> DMatrix<f32> {
        let [pq, pk, pv, po] = &self.proj;
        let q = Self::project(x, pq);
        let k = Self::project(x, pk);
        let v = Self::project(x, pv);
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        let mut concat = DMatrix::<f32>::zeros(x.nrows(), DIM);
        for h in 0..HEADS {
            let c0 = h * HEAD_DIM;
            let mut s = q.columns(c0, HEAD_DIM) * k.columns(c0, HEAD_DIM).transpose() * scale;
            if causal {
                mask_causal(&mut s);
            }
            softmax_rows(&mut s);
            concat
                .columns_mut(c0, HEAD_DIM)
                .copy_from(&(s * v.columns(c0, HEAD_DIM)));
        }
        Self::project(&concat, po)
    }
}

fn sdpa_single_head(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0x5d9a);
    let q = random::<SEQ, D>(&mut rng);
    let k = random::<SEQ, D>(&mut rng);
    let v = random::<SEQ, D>(&mut rng);
    let (qd, kd, vd) = (to_dynamic(&q), to_dynamic(&k), to_dynamic(&v));
    let mask = Mask::none();

    // Same result from all three before any timing.
    let lib = to_dynamic(&scaled_dot_product_attention(&q, &k, &v, &mask, None));
    let diff_static = max_abs_diff(&lib, &to_dynamic(&naive_sdpa_static(&q, &k, &v)));
    let diff_dynamic = max_abs_diff(&lib, &naive_sdpa_dynamic(&qd, &kd, &vd));
    assert!(
        diff_static < TOL && diff_dynamic < TOL,
        "sdpa: library and naive disagree (static {diff_static:e}, dynamic {diff_dynamic:e})"
    );

    let mut group = c.benchmark_group("sdpa_single_head");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        // FLOPs: criterion's "elem/s" is FLOP/s here.
        .throughput(Throughput::Elements((4 * SEQ * SEQ * D) as u64));
    group.bench_function("static_attention", |b| {
        b.iter(|| {
            scaled_dot_product_attention(
                black_box(&q),
                black_box(&k),
                black_box(&v),
                black_box(&mask),
                None,
            )
        });
    });
    group.bench_function("naive_smatrix", |b| {
        b.iter(|| naive_sdpa_static(black_box(&q), black_box(&k), black_box(&v)));
    });
    group.bench_function("naive_dmatrix", |b| {
        b.iter(|| naive_sdpa_dynamic(black_box(&qd), black_box(&kd), black_box(&vd)));
    });
    group.finish();
}

fn multi_head_layer(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0x3a7e);
    // About 1 MiB of parameters: built directly on the heap.
    let mut layer = Layer::new_boxed(&mut rng);
    // PyTorch initialises biases to zero; give them values so the check below covers them.
    for proj in layer.projections_mut() {
        let b = SVector::<f32, DIM>::from_fn(|_, _| rng.random_range(-0.1f32..0.1));
        proj.set_bias(Some(&b));
    }
    let naive = NaiveLayer::from_layer(&layer);
    let x = random::<SEQ, DIM>(&mut rng);
    let xd = to_dynamic(&x);
    let mut scratch = Scratch::<SEQ, SEQ, DIM, f32>::new_boxed();
    let mut out = static_attention::heap::zeros::<f32, SEQ, DIM>();

    let mut group = c.benchmark_group("multi_head_layer");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        // Several ms per iteration: equal iteration counts per sample keep the run short.
        .sampling_mode(SamplingMode::Flat)
        // FLOPs of the dense computation (criterion's "elem/s" is FLOP/s here). The causal
        // variant is counted with the same dense formula although about half the scores are
        // masked, so its GFLOP/s are "dense-equivalent".
        .throughput(Throughput::Elements(
            (8 * SEQ * DIM * DIM + 4 * SEQ * SEQ * DIM) as u64,
        ));

    for (name, mask, causal) in [
        ("none", Mask::none(), false),
        ("causal", Mask::causal(Alignment::TopLeft), true),
    ] {
        // Same result from all three entry points before any timing.
        let reference = naive.forward(&xd, causal);
        let forward = to_dynamic(&layer.forward(&x, &mask));
        layer.attend(&x, &x, &x, &mask, &mut scratch, &mut out, None);
        let attend = to_dynamic(&*out);
        let (d_fwd, d_att) = (
            max_abs_diff(&forward, &reference),
            max_abs_diff(&attend, &reference),
        );
        assert!(
            d_fwd < TOL && d_att < TOL,
            "layer ({name}): library and naive disagree (forward {d_fwd:e}, attend {d_att:e})"
        );

        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| layer.forward(black_box(&x), black_box(&mask)));
        });
        group.bench_function(BenchmarkId::new("attend_boxed", name), |b| {
            b.iter(|| {
                layer.attend(
                    black_box(&x),
                    black_box(&x),
                    black_box(&x),
                    black_box(&mask),
                    &mut scratch,
                    &mut out,
                    None,
                );
                black_box(&*out);
            });
        });
        group.bench_function(BenchmarkId::new("naive_dmatrix", name), |b| {
            b.iter(|| naive.forward(black_box(&xd), causal));
        });
    }
    group.finish();
}

fn main() {
    eprintln!(
        "static_attention kernel: {}",
        static_attention::kernels::selected().name()
    );
    let mut c = Criterion::default().configure_from_args();
    sdpa_single_head(&mut c);
    multi_head_layer(&mut c);
    c.final_summary();
}
