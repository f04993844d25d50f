//! `i8` weights (symmetric, one scale per output feature) with inputs quantized per token on
//! the fly: every kernel this CPU runs against the contract of `static_attention::weight`
//! (the output against the exact product with the dequantized weights), every kernel bit for
//! bit against the scalar reference, the quantization of `to_weights`, `set_weight_at` and
//! `from_quantized`, and whole layers against their `f32` twins.

use proptest::prelude::{ProptestConfig, proptest};
use static_attention::kernels::{Kernel, with_kernel};
use static_attention::{Linear, Mask, MultiHead, SMatrix};

/// A deterministic `IN → OUT` map in `f32`, weights about `±1/√IN`, some biases.
fn linear<const IN: usize, const OUT: usize>(seed: u64) -> Linear<IN, OUT> {
    let w = SMatrix::<f32, OUT, IN>::from_fn(|n, p| {
        let h = (n as u64 * 131 + p as u64 * 71 + seed * 7919) % 197;
        (h as f32 / 98.0 - 1.0) / (IN as f32).sqrt()
    });
    let b = nalgebra::SVector::<f32, OUT>::from_fn(|n, _| (n % 7) as f32 * 0.05 - 0.15);
    Linear::from_matrix(&w, Some(&b))
}

fn input<const S: usize, const D: usize>(seed: u64, scale: f32) -> SMatrix<f32, S, D> {
    SMatrix::from_fn(|i, j| {
        let h = (i as u64 * 37 + j as u64 * 17 + seed * 101) % 113;
        (h as f32 / 56.0 - 1.0) * scale
    })
}

/// The documented contract, per output: `|ŷ − y| ≤ (a/127)·(½ + 2⁻¹⁴)·Σ_p |ŵ_np| +
/// 2⁻²¹·(Σ_p |x_p·ŵ_np| + |b_n|) + 2⁻¹²¹·Σ_p |ŵ_np| + 2⁻¹³⁵·din` against the exact
/// `y = Σ_p x_p·ŵ_np + b_n`, `a` the token's largest input magnitude, `ŵ` the dequantized
/// weights. Returns the worst ratio of error to bound.
fn worst_ratio<const S: usize, const IN: usize, const OUT: usize>(
    q: &Linear<IN, OUT, f32, i8>,
    x: &SMatrix<f32, S, IN>,
    y: &SMatrix<f32, S, OUT>,
) -> f64 {
    let b = q.bias().copied().unwrap_or_else(nalgebra::SVector::zeros);
    let mut worst = 0f64;
    for i in 0..S {
        let a = (0..IN)
            .map(|p| f64::from(x[(i, p)]).abs())
            .fold(0.0, f64::max);
        for n in 0..OUT {
            let w = |p: usize| f64::from(q.weight_at(n, p));
            let exact: f64 =
                (0..IN).map(|p| f64::from(x[(i, p)]) * w(p)).sum::<f64>() + f64::from(b[n]);
            let sum_w: f64 = (0..IN).map(|p| w(p).abs()).sum();
            let mag: f64 = (0..IN)
                .map(|p| (f64::from(x[(i, p)]) * w(p)).abs())
                .sum::<f64>()
                + f64::from(b[n]).abs();
            let bound = a / 127.0 * (0.5 + 2f64.powi(-14)) * sum_w
                + 2f64.powi(-21) * mag
                + 2f64.powi(-121) * sum_w
                + 2f64.powi(-135) * IN as f64;
            let err = (f64::from(y[(i, n)]) - exact).abs();
            assert!(
                err <= bound,
                "token {i}, output {n}: error {err:e} > bound {bound:e}"
            );
            if bound > 0.0 {
                worst = worst.max(err / bound);
            }
        }
    }
    worst
}

/// Every kernel: the contract, and bit equality with the scalar kernel.
fn check<const S: usize, const IN: usize, const OUT: usize>(seed: u64, scale: f32) -> f64 {
    let q: Linear<IN, OUT, f32, i8> = linear::<IN, OUT>(seed).to_weights();
    let x = input::<S, IN>(seed, scale);
    let reference = with_kernel(Kernel::Scalar, || q.forward(&x)).expect("scalar runs");
    let mut worst = worst_ratio(&q, &x, &reference);
    for k in Kernel::supported() {
        let y = with_kernel(k, || q.forward(&x)).expect("supported");
        for (a, b) in y.iter().zip(reference.iter()) {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{k:?} differs from the scalar kernel"
            );
        }
        worst = worst.max(worst_ratio(&q, &x, &y));
    }
    worst
}

#[test]
fn projections_keep_the_contract_on_every_kernel() {
    let mut worst = 0f64;
    // (1e-38 and 3e-41: tokens whose `127 / a` overflows, and subnormal ones.)
    for (seed, scale) in [
        (1, 1.0),
        (2, 1e-3),
        (3, 1e3),
        (4, 1e-30),
        (5, 3e30),
        (6, 1e-38),
        (7, 3e-41),
    ] {
        worst = worst.max(check::<1, 5, 3>(seed, scale));
        worst = worst.max(check::<3, 1, 1>(seed, scale));
        worst = worst.max(check::<7, 13, 25>(seed, scale));
        worst = worst.max(check::<33, 67, 29>(seed, scale));
        worst = worst.max(check::<40, 256, 36>(seed, scale));
        worst = worst.max(check::<5, 600, 70>(seed, scale));
        // Past the 1 040 inputs the f32 GEMM sums exactly: the reference there.
        worst = worst.max(check::<3, 1100, 13>(seed, scale));
    }
    println!("worst error / contract bound: {worst:.3}");
    assert!(worst > 0.0, "the quantization should show");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 64 }))]
    #[test]
    fn random_inputs_keep_the_contract(
        seed in 0u64..1000,
        scale in -20i32..20,
        sparse in 0usize..5,
    ) {
        let q: Linear<19, 14, f32, i8> = linear::<19, 14>(seed).to_weights();
        let mut x = input::<9, 19>(seed, 2f32.powi(scale));
        // Some zero inputs, and a whole zero token.
        for (i, v) in x.iter_mut().enumerate() {
            if sparse > 0 && i % (sparse + 2) == 0 {
                *v = 0.0;
            }
        }
        x.row_mut(4).fill(0.0);
        let y = q.forward(&x);
        worst_ratio(&q, &x, &y);
        // A token whose inputs are all zero gets the bias.
        let b = q.bias().expect("bias");
        for n in 0..14 {
            assert_eq!(y[(4, n)], b[n]);
        }
    }
}

#[test]
fn to_weights_quantizes_each_feature_by_its_largest_weight() {
    let mut f: Linear<6, 3> = linear::<6, 3>(9);
    f.set_weight_at(1, 2, f32::NAN);
    f.set_weight_at(2, 4, f32::INFINITY);
    let q: Linear<6, 3, f32, i8> = f.to_weights();
    for n in 0..3 {
        let finite = (0..6)
            .map(|p| f.weight_at(n, p))
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(q.scales()[n], finite / 127.0);
        for p in 0..6 {
            let w = f.weight_at(n, p);
            let got = q.weight_at(n, p);
            if w.is_nan() {
                assert_eq!(got, 0.0);
            } else if w.is_infinite() {
                assert_eq!(got, 127.0 * q.scales()[n]);
            } else {
                assert!(
                    (got - w).abs() <= q.scales()[n] * 0.5 * (1.0 + 1e-6),
                    "{n} {p}"
                );
            }
        }
    }
    // Back to f32: the dequantized weights, the bias kept.
    let back: Linear<6, 3> = q.to_weights();
    assert_eq!(back.weight_at(0, 1), q.weight_at(0, 1));
    assert_eq!(back.bias(), f.bias());
}

#[test]
fn set_weight_at_grows_the_scale_only_when_it_must() {
    let mut q: Linear<4, 2, f32, i8> =
        Linear::from_quantized([[10, -20, 30, 127], [1, 2, 3, 4]], [0.5, 0.25], [0.0, 1.0]);
    assert_eq!(q.weight_at(0, 3), 63.5);
    q.set_weight_at(0, 0, 7.4); // 14.8 steps of 0.5: 15
    assert_eq!((q.weight_at(0, 0), q.scales()[0]), (7.5, 0.5));
    q.set_weight_at(0, 1, -127.0); // beyond 63.5: the scale becomes 1
    assert_eq!(q.scales()[0], 1.0);
    assert_eq!(q.weight_at(0, 1), -127.0);
    assert_eq!(q.weight_at(0, 3), 64.0); // 63.5 requantized: ties to even
    assert_eq!(q.weight_at(0, 2), 15.0);
    q.set_weight_at(1, 0, f32::INFINITY); // not stored
    assert_eq!((q.weight_at(1, 0), q.scales()[1]), (0.25, 0.25));
    q.set_weight_at(1, 0, f32::NAN);
    assert_eq!(q.weight_at(1, 0), 0.0);
    // -128 is read as -127.
    let m: Linear<1, 1, f32, i8> = Linear::from_quantized([[-128]], [1.0], [0.0]);
    assert_eq!(m.weight_at(0, 0), -127.0);
}

/// Quantized at compile time: NaN, an infinity, a row of zeros, ties (2.5 and −0.5 steps),
/// and weights beyond the scale of their row's finite ones.
static FROM_ROWS: Linear<4, 3, f32, i8> = Linear::from_f32_rows(
    [
        [0.25, -0.05, 12.7, f32::NAN],
        [0.0, 0.0, -0.0, 0.0],
        [1.0, f32::NEG_INFINITY, -0.5 / 127.0, 2.5 / 127.0],
    ],
    [1.0, -2.0, 0.5],
);

#[test]
fn const_quantization_matches_to_weights() {
    let rows = [
        [0.25, -0.05, 12.7, f32::NAN],
        [0.0, 0.0, -0.0, 0.0],
        [1.0, f32::NEG_INFINITY, -0.5 / 127.0, 2.5 / 127.0],
    ];
    let want: Linear<4, 3, f32, i8> =
        Linear::<4, 3>::from_rows(rows, [1.0, -2.0, 0.5]).to_weights();
    assert_eq!(FROM_ROWS, want);
    assert_eq!(FROM_ROWS.scales()[1], 0.0);
    assert_eq!(FROM_ROWS.weight_at(0, 3), 0.0);
    assert_eq!(FROM_ROWS.weight_at(2, 1), -127.0 * FROM_ROWS.scales()[2]);
    // The same at run time over many rows, ties included.
    for seed in 0..20u64 {
        let f = linear::<40, 13>(seed);
        let mut rows = [[0.0f32; 40]; 13];
        for (n, row) in rows.iter_mut().enumerate() {
            for (p, w) in row.iter_mut().enumerate() {
                *w = f.weight_at(n, p);
            }
            row[(seed as usize + n) % 40] = row[0] * (0.5 + (n % 3) as f32) / 127.0;
        }
        let bias: [f32; 13] = core::array::from_fn(|n| f.bias().map_or(0.0, |b| b[n]));
        let want: Linear<40, 13, f32, i8> = Linear::<40, 13>::from_rows(rows, bias).to_weights();
        assert_eq!(Linear::from_f32_rows(rows, bias), want, "seed {seed}");
    }
}

#[test]
fn a_non_finite_input_makes_its_token_nan() {
    let q: Linear<5, 4, f32, i8> = linear::<5, 4>(3).to_weights();
    let mut x = input::<3, 5>(1, 1.0);
    x[(1, 2)] = f32::INFINITY;
    x[(2, 0)] = f32::NAN;
    for k in Kernel::supported() {
        let y = with_kernel(k, || q.forward(&x)).expect("supported");
        assert!(y.row(0).iter().all(|v| v.is_finite()));
        assert!(
            y.row(1).iter().chain(y.row(2).iter()).all(|v| v.is_nan()),
            "{k:?}"
        );
    }
}

/// `static` construction: the layer is decoded at compile time.
static STATIC_Q: Linear<2, 2, f32, i8> =
    Linear::from_quantized([[127, -64], [0, 1]], [0.01, 2.0], [0.5, -0.5]);

#[test]
fn static_layers_hold_quantized_weights() {
    let x = SMatrix::<f32, 1, 2>::new(1.0, 1.0);
    let y = STATIC_Q.forward(&x);
    // The token's inputs quantize exactly (both 127 steps of 1/127).
    assert!((y[(0, 0)] - (1.27 - 0.64 + 0.5)).abs() < 1e-6);
    assert!((y[(0, 1)] - 1.5).abs() < 1e-6);
}

/// The layer: against the `f32` layer holding the dequantized weights and against the
/// original `f32` layer, as a share of the largest output.
#[test]
fn layers_stay_close_to_their_f32_twins() {
    let full = MultiHead::<16, 64, 4>::from_seed(11);
    let q = full.to_weights::<i8>();
    let deq = q.to_weights::<f32>();
    let x = input::<16, 64>(4, 1.0);
    let none = Mask::none();
    let (y_q, y_deq, y_full) = (
        q.forward(&x, &none),
        deq.forward(&x, &none),
        full.forward(&x, &none),
    );
    let rel =
        |a: &SMatrix<f32, 16, 64>, b: &SMatrix<f32, 16, 64>| f64::from((a - b).amax() / b.amax());
    let (vs_deq, vs_full) = (rel(&y_q, &y_deq), rel(&y_q, &y_full));
    println!(
        "MultiHead<16, 64, 4> i8: max|Δy|/max|y| {vs_deq:.2e} against dequantized f32, {vs_full:.2e} against the original"
    );
    assert!(vs_deq <= 2f64.powi(-5) && vs_full <= 2f64.powi(-5));
}

/// Layers whose attention the selected kernel may run in `i8` tile products (AMX; heads of
/// 64, more than two tokens, masks that are only a pattern): under a causal mask and a
/// sliding window, against the `f32` layer holding the dequantized weights on the selected
/// kernel and, where the CPU has it, on `Kernel::Avx512` (whose attention is `f32`; its
/// projections give the same bits as every kernel's).
#[test]
fn masked_layers_stay_close_to_their_f32_twins() {
    use static_attention::Alignment;
    let full = MultiHead::<96, 128, 2>::from_seed(21);
    let q = full.to_weights::<i8>();
    let deq = q.to_weights::<f32>();
    let x = input::<96, 128>(9, 1.0);
    let masks = [
        Mask::causal(Alignment::TopLeft),
        Mask::sliding_window(40, Alignment::TopLeft),
        Mask::none(),
    ];
    let kernels = [None, Some(Kernel::Avx512)];
    for kernel in kernels {
        for mask in &masks {
            let run = || {
                let (y_q, y_deq) = (q.forward(&x, mask), deq.forward(&x, mask));
                f64::from((y_q - y_deq).amax() / y_deq.amax())
            };
            let rel = match kernel {
                None => run(),
                Some(k) if Kernel::supported().any(|s| s == k) => with_kernel(k, run).unwrap(),
                Some(_) => continue,
            };
            println!("MultiHead<96, 128, 2> i8, {kernel:?}: max|Δy|/max|y| {rel:.2e}");
            assert!(rel <= 2f64.powi(-5), "{kernel:?}: {rel:.2e}");
        }
    }
}

/// `max |a − b| / max |b|` and `‖a − b‖₂ / ‖b‖₂`.
fn errors<const S: usize, const D: usize>(
    a: &SMatrix<f32, S, D>,
    b: &SMatrix<f32, S, D>,
) -> (f64, f64) {
    let d = a - b;
    (
        f64::from(d.amax() / b.amax()),
        f64::from(d.norm() / b.norm()),
    )
}

/// An `i8` layer, its dequantized twin and the original on `x`: the errors of the `i8`
/// layer against the dequantized twin and against the original ([`errors`]).
fn layer_errors<const S: usize, const D: usize, const H: usize>(
    full: &MultiHead<S, D, H>,
    x: &SMatrix<f32, S, D>,
) -> [(f64, f64); 2] {
    let q = full.to_weights::<i8>();
    let deq = q.to_weights::<f32>();
    let none = Mask::none();
    let (y_q, y_deq, y_full) = (
        q.forward(x, &none),
        deq.forward(x, &none),
        full.forward(x, &none),
    );
    [errors(&y_q, &y_deq), errors(&y_q, &y_full)]
}

/// A `MultiHead<S, D, H>` whose weights and biases are uniform in `[−1, 1]` (no
/// initialisation's scaling: the inputs of the output projection are larger).
fn random_layer<const S: usize, const D: usize, const H: usize>(seed: u64) -> MultiHead<S, D, H> {
    use static_attention::io::{InProjWeight, PyTorchParams};
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    let (in_w, in_b, out_w, out_b) = (
        uniform(3 * D * D),
        uniform(3 * D),
        uniform(D * D),
        uniform(D),
    );
    let params = PyTorchParams {
        in_proj_weight: InProjWeight::Packed(&in_w),
        in_proj_bias: Some(&in_b),
        out_proj_weight: &out_w,
        out_proj_bias: Some(&out_b),
    };
    MultiHead::try_from(&params).expect("the lengths fit")
}

/// The error of whole `i8` layers against the original `f32` layer (what quantizing costs)
/// and against the dequantized twin (the kernels' share), on random layers and on
/// PyTorch-initialised ones (the crate's `nn.MultiheadAttention` initialisation, and a layer
/// PyTorch initialised and wrote itself): printed for the README; initialised layers within
/// `2⁻⁵` of the largest output, random ones (larger inputs to the output projection, whose
/// activations quantize coarser) within `2⁻⁴`.
#[test]
fn relative_errors_against_the_original_layers() {
    let mut rows = Vec::new();
    for seed in 1..=3 {
        let x = input::<16, 64>(seed, 1.0);
        rows.push((
            "random 16×64×4",
            layer_errors(&random_layer::<16, 64, 4>(seed), &x),
            4,
        ));
        rows.push((
            "initialised 16×64×4",
            layer_errors(&MultiHead::<16, 64, 4>::from_seed(seed), &x),
            5,
        ));
        let x = input::<32, 128>(seed, 1.0);
        rows.push((
            "random 32×128×8",
            layer_errors(&random_layer::<32, 128, 8>(seed), &x),
            4,
        ));
        rows.push((
            "initialised 32×128×8",
            layer_errors(&MultiHead::<32, 128, 8>::from_seed(seed), &x),
            5,
        ));
    }
    #[cfg(feature = "safetensors")]
    {
        let bytes = std::fs::read("tests/pytorch/large_64x64x8.safetensors").expect("the file");
        let full = MultiHead::<64, 64, 8>::from_safetensors(&bytes, "").expect("loads");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let query = st.tensor("input.query").unwrap();
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(query.data());
        // PyTorch's row-major [tokens, features].
        let x = SMatrix::<f32, 64, 64>::from_row_slice(&values);
        rows.push(("PyTorch's own 64×64×8", layer_errors(&full, &x), 5));
    }
    let mut smallest = f64::INFINITY;
    for &(name, [(deq_max, deq_rms), (full_max, full_rms)], k) in &rows {
        println!(
            "{name}: against the original max|Δy|/max|y| {full_max:.2e}, ‖Δy‖/‖y‖ {full_rms:.2e}; \
             against the dequantized twin {deq_max:.2e}, {deq_rms:.2e}"
        );
        let worst = deq_max.max(full_max);
        assert!(worst <= 2f64.powi(-k), "{name}: {worst:.2e} > 2^-{k}");
        smallest = smallest.min(full_rms);
    }
    assert!(smallest > 0.0, "the quantization should show");
}

#[cfg(feature = "safetensors")]
mod files {
    use super::*;
    use static_attention::io::LoadError;
    use static_attention::{GroupedQuery, SelfAttention};

    /// The dtype of `name` in a safetensors file.
    fn dtype(bytes: &[u8], name: &str) -> String {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        format!("{:?}", st.tensor(name).unwrap().dtype())
    }

    /// A file with the tensors of `base` and `name` replaced by (`dtype`, `shape`, `bytes`).
    fn with_tensor(
        base: &[u8],
        name: &str,
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(base).unwrap();
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != name)
            .collect();
        views.push((
            name.into(),
            safetensors::tensor::TensorView::new(dtype, shape, bytes).unwrap(),
        ));
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn i8_files_round_trip_with_their_scales() {
        let mha = MultiHead::<6, 16, 2>::from_seed(21).to_weights::<i8>();
        let bytes = mha.to_safetensors("").unwrap();
        assert_eq!(dtype(&bytes, "in_proj_weight"), "I8");
        assert_eq!(dtype(&bytes, "in_proj_weight_scale"), "F32");
        assert_eq!(dtype(&bytes, "out_proj.weight_scale"), "F32");
        let back = MultiHead::<6, 16, 2, f32, i8>::from_safetensors(&bytes, "").unwrap();
        assert_eq!(back, mha);

        let gqa = GroupedQuery::<32, 4, 2, 32, 16>::from_seed(22).to_weights::<i8>();
        let prefix = "model.layers.0.self_attn.";
        let bytes = gqa.to_safetensors(prefix).unwrap();
        assert_eq!(
            dtype(&bytes, "model.layers.0.self_attn.k_proj.weight"),
            "I8"
        );
        assert_eq!(
            dtype(&bytes, "model.layers.0.self_attn.k_proj.weight_scale"),
            "F32"
        );
        let back =
            GroupedQuery::<32, 4, 2, 32, 16, f32, i8>::from_safetensors(&bytes, prefix).unwrap();
        assert_eq!(back, gqa);

        let head = SelfAttention::<4, 8>::from_seed(23).to_weights::<i8>();
        let back =
            SelfAttention::<4, 8, f32, i8>::from_safetensors(&head.to_safetensors("").unwrap(), "")
                .unwrap();
        assert_eq!(back, head);
    }

    #[test]
    fn wrong_dtypes_missing_and_bad_scales_are_typed_errors() {
        let q_file = MultiHead::<6, 16, 2>::from_seed(24)
            .to_weights::<i8>()
            .to_safetensors("")
            .unwrap();
        let f_file = MultiHead::<6, 16, 2>::from_seed(24)
            .to_safetensors("")
            .unwrap();
        let err = MultiHead::<6, 16, 2>::from_safetensors(&q_file, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "in_proj_weight has dtype I8, expected F32 or F64"
        );
        let mut layer = MultiHead::<6, 16, 2, f32, i8>::zeros();
        let before = layer.clone();
        let err = layer.load_safetensors(&f_file, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "in_proj_weight has dtype F32, expected I8 (the layer stores i8 weights)"
        );
        // The scales are required, of the right shape, finite and not negative.
        let st = safetensors::SafeTensors::deserialize(&q_file).unwrap();
        let views: Vec<_> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != "out_proj.weight_scale")
            .collect();
        let missing = safetensors::serialize(views, None).unwrap();
        let err = layer.load_safetensors(&missing, "").unwrap_err();
        assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
        let short = with_tensor(
            &q_file,
            "out_proj.weight_scale",
            safetensors::Dtype::F32,
            vec![15],
            &[0; 60],
        );
        assert!(matches!(
            layer.load_safetensors(&short, "").unwrap_err(),
            LoadError::WrongShape { .. }
        ));
        for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
            let mut scales = [0.5f32; 16];
            scales[7] = bad;
            let bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let file = with_tensor(
                &q_file,
                "out_proj.weight_scale",
                safetensors::Dtype::F32,
                vec![16],
                &bytes,
            );
            let err = layer.load_safetensors(&file, "").unwrap_err();
            assert_eq!(
                err.to_string(),
                "out_proj.weight_scale: a scale of i8 weights must be finite and not negative"
            );
        }
        assert_eq!(layer, before, "a failed load writes nothing");
        // -128 in a file is read as -127.
        let mut ints = [1u8; 256];
        ints[5] = 0x80;
        let file = with_tensor(
            &q_file,
            "out_proj.weight",
            safetensors::Dtype::I8,
            vec![16, 16],
            &ints,
        );
        layer.load_safetensors(&file, "").unwrap();
        let o = layer.out_proj();
        assert_eq!(o.weight_at(0, 5), -127.0 * o.scales()[0]);
        assert_eq!(o.weight_at(0, 4), o.scales()[0]);
    }
}

/// Every kernel bit for bit as the scalar kernel on `x`.
fn same_bits<const S: usize, const IN: usize, const OUT: usize>(
    q: &Linear<IN, OUT, f32, i8>,
    x: &SMatrix<f32, S, IN>,
) {
    let reference = with_kernel(Kernel::Scalar, || q.forward(x)).expect("scalar runs");
    for k in Kernel::supported() {
        let y = with_kernel(k, || q.forward(x)).expect("supported");
        for (a, b) in y.iter().zip(reference.iter()) {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{k:?} differs from the scalar kernel over {S} tokens, {IN} → {OUT}"
            );
        }
    }
}

/// `S` tokens of `IN` inputs at `scale`, with (where there are that many tokens) a token of
/// zeros, one whose only non-zero input is the smallest subnormal (its `127/a` overflows to
/// infinity), one with an infinity and one with a NaN.
fn awkward_tokens<const S: usize, const IN: usize>(seed: u64, scale: f32) -> SMatrix<f32, S, IN> {
    let mut x = input::<S, IN>(seed, scale);
    if S > 1 {
        x.row_mut(1).fill(0.0);
    }
    if S > 3 {
        x.row_mut(3).fill(0.0);
        x[(3, IN / 2)] = f32::from_bits(1);
    }
    if S > 4 {
        x[(4, IN / 3)] = f32::NEG_INFINITY;
    }
    if S > 6 {
        x[(6, IN - 1)] = f32::NAN;
    }
    x
}

/// Every token count from 1 to 40 (the 8-token panels of NEON, the 32-token ones of AVX-512,
/// and their tails), inputs not a multiple of 4 and more than a pack buffer holds, widths
/// not a multiple of the 12-feature tile, input scales from subnormal to huge, and the
/// awkward tokens: every kernel bit for bit as the scalar one.
#[test]
fn every_token_count_matches_the_scalar_kernel_bit_for_bit() {
    let q_small: Linear<37, 17, f32, i8> = linear::<37, 17>(5).to_weights();
    let q_large: Linear<301, 7, f32, i8> = linear::<301, 7>(6).to_weights();
    macro_rules! counts {
        ($($s:literal)*) => {$(
            for (seed, scale) in [(1, 1.0), (2, 1e-40), (3, 3e30)] {
                same_bits(&q_small, &awkward_tokens::<$s, 37>(seed, scale));
                same_bits(&q_large, &awkward_tokens::<$s, 301>(seed, scale));
            }
        )*};
    }
    counts!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
            21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40);
}
