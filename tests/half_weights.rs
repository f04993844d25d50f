//! Half-precision weights (`f16`, `bf16`): every layer and entry point against the same layer
//! with `f32` weights holding the same rounded values, on every kernel this CPU runs (the
//! vector kernels widen blocks of weights, the scalar kernel each weight), on shapes with more
//! input features than one widened chunk and with partial strips; their size; and their
//! safetensors files (`F16`/`BF16` tensors, typed errors for the others).
//!
//! Widened weights give the `f32` layer's results (the arithmetic is the same). Where a kernel
//! multiplies `bf16` weights in `bf16` products ([`Kernel::Avx512Bf16`],
//! [`Kernel::NeonBf16`], more than two tokens), the inputs of each projection are rounded to
//! `bf16`: a projection is then held to the contract of `static_attention::Weight` (every
//! output within `(u + 2(1 + u)·γ(IN + 1))·M + η` of the `f32` map's, `u = 2⁻⁸`,
//! `M = Σ|x·w| + |b|`), and a layer (whose attention runs in `bf16` products too on
//! `Kernel::Avx512Bf16`) to the documented `2⁻⁶ · max|y|`.

use proptest::prelude::{ProptestConfig, proptest};
use static_attention::kernels::{Kernel, with_kernel};
use static_attention::positions::{Rope, RopeStyle};
use static_attention::{
    Alignment, GroupedQuery, KvCache, Linear, Mask, MultiHead, SMatrix, SelfAttention, Weight,
    WeightKind, bf16, f16,
};

fn input<const S: usize, const D: usize>(seed: usize) -> SMatrix<f32, S, D> {
    SMatrix::from_fn(|i, j| ((((i + seed) * 31 + j * 17) % 37) as f32 / 18.0 - 1.0) * 0.8)
}

/// `|a − b| ≤ 1e-5 + 1e-5·|b|` everywhere (docs/SEMANTICS.md's f32 bound; in practice the two agree to
/// the last bits: the arithmetic is the same).
fn close<const R: usize, const C: usize>(
    what: &str,
    a: &SMatrix<f32, R, C>,
    b: &SMatrix<f32, R, C>,
) {
    for (x, y) in a.iter().zip(b.iter()) {
        let err = (x - y).abs();
        assert!(
            err <= 1e-5 + 1e-5 * y.abs(),
            "{what}: {x} vs {y} (|diff| {err:e})"
        );
    }
}

/// A random-ish `IN → OUT` map in f32.
fn linear<const IN: usize, const OUT: usize>(seed: u64) -> Linear<IN, OUT> {
    let w = SMatrix::<f32, OUT, IN>::from_fn(|n, p| {
        ((((n as u64 * 131 + p as u64 * 71 + seed) % 97) as f32) / 48.0 - 1.0) / (IN as f32).sqrt()
    });
    let b = nalgebra::SVector::<f32, OUT>::from_fn(|n, _| (n % 7) as f32 * 0.05 - 0.15);
    Linear::from_matrix(&w, Some(&b))
}

/// Whether `k` multiplies `bf16` weights in `bf16` products for `s` tokens.
fn bf16_products(k: Kernel, s: usize) -> bool {
    matches!(k, Kernel::Avx512Bf16 | Kernel::NeonBf16) && s > 2
}

/// The contract of a projection with `bf16` products against the `f32` map on the same
/// weights: `|ŷ − y| ≤ (u + 2(1 + u)·γ(IN + 1))·M + η` per output, `M = Σ_p |x_p·w_p| + |b|`,
/// `η = 2⁻¹²⁶·(IN + 1)·(1 + max|w|)`. Returns the worst ratio of error to bound.
fn within_contract<const S: usize, const IN: usize, const OUT: usize>(
    what: &str,
    map: &Linear<IN, OUT>,
    x: &SMatrix<f32, S, IN>,
    got: &SMatrix<f32, S, OUT>,
    want: &SMatrix<f32, S, OUT>,
) -> f64 {
    let u = 2f64.powi(-8);
    let n = IN as f64 + 1.0;
    // Unit 2⁻²³: Arm's `BFDOT` rounds its sums to odd (below one ulp).
    let gamma = n * 2f64.powi(-23) / (1.0 - n * 2f64.powi(-23));
    let w = map.weight();
    let wmax = w.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let eta = 2f64.powi(-126) * n * (1.0 + wmax);
    let bias = map.bias().copied().unwrap_or_else(nalgebra::SVector::zeros);
    let mut worst = 0f64;
    for i in 0..S {
        for o in 0..OUT {
            let mag = (0..IN)
                .map(|p| (f64::from(x[(i, p)]) * f64::from(w[(o, p)])).abs())
                .sum::<f64>()
                + f64::from(bias[o]).abs();
            let bound = (u + 2.0 * (1.0 + u) * gamma) * mag + eta;
            let err = (f64::from(got[(i, o)]) - f64::from(want[(i, o)])).abs();
            assert!(
                err <= bound,
                "{what}: token {i} feature {o}: |{} − {}| = {err:e} > {bound:e}",
                got[(i, o)],
                want[(i, o)]
            );
            worst = worst.max(err / bound);
        }
    }
    worst
}

/// A layer with `bf16` products against its `f32` twin: `|ŷ − y| ≤ 2⁻⁶ · max|y|`.
fn close_bf16<const R: usize, const C: usize>(
    what: &str,
    a: &SMatrix<f32, R, C>,
    b: &SMatrix<f32, R, C>,
) {
    let tol = 2f32.powi(-6) * b.amax();
    let err = (a - b).amax();
    assert!(err <= tol, "{what}: max |diff| {err:e} > {tol:e}");
}

/// [`close_bf16`] where the values came through `bf16` products (`products`), [`close`]
/// otherwise.
fn close_half<const R: usize, const C: usize>(
    products: bool,
    what: &str,
    a: &SMatrix<f32, R, C>,
    b: &SMatrix<f32, R, C>,
) {
    if products {
        close_bf16(what, a, b);
    } else {
        close(what, a, b);
    }
}

fn check_linear<W: Weight<f32>, const S: usize, const IN: usize, const OUT: usize>(what: &str) {
    let full = linear::<IN, OUT>(3);
    let half: Linear<IN, OUT, f32, W> = full.to_weights();
    let rounded: Linear<IN, OUT> = half.to_weights();
    let x = input::<S, IN>(1);
    for k in Kernel::supported() {
        with_kernel(k, || {
            let what = format!("{what} {S}×{IN}→{OUT} on {}", k.name());
            let (got, want) = (half.forward(&x), rounded.forward(&x));
            if W::KIND == WeightKind::Bf16 && bf16_products(k, S) {
                within_contract(&what, &rounded, &x, &got, &want);
            } else {
                close(&what, &got, &want);
            }
        })
        .expect("supported");
    }
}

#[test]
fn linear_maps_with_half_weights_equal_their_rounded_f32_maps() {
    // One and two tokens (the vector kernels' GEMV), a panel and more; more input features
    // than one widened chunk (128); output widths with partial strips and blocks of 48; odd
    // input counts (an unpaired last row of `bf16` weights).
    check_linear::<f16, 1, 300, 40>("f16");
    check_linear::<f16, 2, 64, 29>("f16");
    check_linear::<f16, 17, 300, 13>("f16");
    check_linear::<f16, 40, 96, 100>("f16");
    check_linear::<bf16, 1, 300, 40>("bf16");
    check_linear::<bf16, 2, 37, 13>("bf16");
    check_linear::<bf16, 3, 7, 5>("bf16");
    check_linear::<bf16, 17, 301, 13>("bf16");
    check_linear::<bf16, 33, 260, 25>("bf16");
    check_linear::<bf16, 40, 96, 100>("bf16");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The projection contract on random maps and inputs over many scales, on every kernel.
    #[test]
    fn bf16_projections_keep_the_contract_on_every_kernel(
        w in proptest::collection::vec(-1.0f32..1.0, 23 * 37),
        x in proptest::collection::vec(-1.0f32..1.0, 9 * 37),
        b in proptest::collection::vec(-1.0f32..1.0, 23),
        wexp in -20i32..20,
        xexp in -30i32..30,
    ) {
        let wm = SMatrix::<f32, 23, 37>::from_fn(|n, p| w[n * 37 + p] * 2f32.powi(wexp));
        let bias = nalgebra::SVector::<f32, 23>::from_fn(|n, _| b[n]);
        let map: Linear<37, 23, f32, bf16> = Linear::<37, 23>::from_matrix(&wm, Some(&bias)).to_weights();
        let rounded: Linear<37, 23> = map.to_weights();
        let xs = SMatrix::<f32, 9, 37>::from_fn(|i, p| x[i * 37 + p] * 2f32.powi(xexp));
        for k in Kernel::supported() {
            with_kernel(k, || {
                let (got, want) = (map.forward(&xs), rounded.forward(&xs));
                within_contract(&format!("bf16 on {}", k.name()), &rounded, &xs, &got, &want);
            })
            .expect("supported");
        }
    }
}

/// Where the CPU has `bf16` dot products, a `bf16` layer uses them: its inputs are rounded to
/// `bf16` (`1 + 2⁻¹⁰` becomes 1), which the widening path never does. Elsewhere the input
/// is kept. (A kernel selection that silently lost the `bf16` kernel fails here.)
#[test]
fn bf16_layers_use_bf16_products_where_the_cpu_has_them() {
    let map = Linear::<1, 1, f32, bf16>::from_rows([[bf16::ONE]], [0.0]);
    let x = SMatrix::<f32, 4, 1>::repeat(1.0 + 2f32.powi(-10));
    let y = map.forward(&x);
    let bf16_here = bf16_products(static_attention::kernels::selected(), 4);
    let want = if bf16_here { 1.0 } else { 1.0 + 2f32.powi(-10) };
    assert!(
        y.iter().all(|&v| v == want),
        "{y} (bf16 products here: {bf16_here})"
    );
    // One or two tokens take the widening path everywhere.
    let one = map.forward(&SMatrix::<f32, 1, 1>::repeat(1.0 + 2f32.powi(-10)));
    assert_eq!(one[0], 1.0 + 2f32.powi(-10));
    // CI names the kernel its machine must run; under `force-scalar` every choice is scalar.
    let required = std::env::var("STATIC_ATTENTION_REQUIRE_KERNEL").unwrap_or_default();
    if required.ends_with("+bf16") && static_attention::kernels::detect() != Kernel::Scalar {
        assert!(
            bf16_here,
            "the {required} kernel is required but not selected"
        );
    }
}

#[test]
fn rounding_is_to_nearest() {
    let full = Linear::<1, 1>::from_rows([[1.0 + 1.0 / 1024.0 + 1.0 / 4096.0]], [0.0]);
    assert_eq!(full.to_weights::<f16>().weight_at(0, 0), 1.0 + 1.0 / 1024.0);
    assert_eq!(full.to_weights::<bf16>().weight_at(0, 0), 1.0);
}

#[test]
fn layers_with_half_weights_equal_their_rounded_f32_layers() {
    let mha = MultiHead::<20, 48, 4>::from_seed(11);
    let head = SelfAttention::<20, 48>::from_seed(12);
    let x = input::<20, 48>(2);
    let mask = Mask::causal(Alignment::TopLeft);
    for k in Kernel::supported() {
        with_kernel(k, || {
            let h16 = mha.to_weights::<f16>();
            let r16 = h16.to_weights::<f32>();
            close(
                "MultiHead f16",
                &h16.forward(&x, &mask),
                &r16.forward(&x, &mask),
            );
            let (y, w) = h16.forward_with_weights(&x, &mask);
            let (ry, rw) = r16.forward_with_weights(&x, &mask);
            close("MultiHead f16 with weights", &y, &ry);
            close("MultiHead f16 weights", w.head(2), rw.head(2));
            let hb = mha.to_weights::<bf16>();
            let rb = hb.to_weights::<f32>();
            let products = bf16_products(k, 20);
            close_half(
                products,
                "MultiHead bf16",
                &hb.forward(&x, &mask),
                &rb.forward(&x, &mask),
            );
            let memory = input::<7, 48>(5);
            close_half(
                products,
                "MultiHead bf16 cross-attention",
                &hb.cross_attention(&x, &memory, &Mask::none()),
                &rb.cross_attention(&x, &memory, &Mask::none()),
            );
            let sa = head.to_weights::<f16>();
            close(
                "SelfAttention f16",
                &sa.forward(&x, &mask),
                &sa.to_weights::<f32>().forward(&x, &mask),
            );
        })
        .expect("supported");
    }
}

#[test]
fn decoding_with_half_weights() {
    let gqa = GroupedQuery::<32, 4, 2, 32, 16>::from_seed(13);
    let rope = Rope::<8, 32>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
    let x = input::<10, 32>(3);
    for k in Kernel::supported() {
        with_kernel(k, || {
            let h = gqa.to_weights::<bf16>();
            let r = h.to_weights::<f32>();
            let mask = Mask::causal(Alignment::TopLeft);
            let products = bf16_products(k, 10);
            close_half(
                products,
                "GroupedQuery bf16 forward",
                &h.forward(&x, &mask, &rope).unwrap(),
                &r.forward(&x, &mask, &rope).unwrap(),
            );
            let (mut ch, mut cr) = (KvCache::<16, 16>::new(), KvCache::<16, 16>::new());
            let p = x.fixed_rows::<6>(0).into_owned();
            // The prefill's 6 tokens go through `bf16` products where the kernel has them; so
            // do the keys and values the cache then holds for the steps.
            let products_p = bf16_products(k, 6);
            close_half(
                products_p,
                "prefill",
                &h.decode(&p, &mut ch, &rope).unwrap(),
                &r.decode(&p, &mut cr, &rope).unwrap(),
            );
            for t in 6..10 {
                let tok = x.fixed_rows::<1>(t).into_owned();
                // The cache holds the prefill's keys and values, made with `bf16` products where
                // the kernel has them; the step itself widens.
                close_half(
                    products_p,
                    "decode step",
                    &h.decode(&tok, &mut ch, &rope).unwrap(),
                    &r.decode(&tok, &mut cr, &rope).unwrap(),
                );
            }
        })
        .expect("supported");
    }
}

#[test]
fn half_weights_take_half_the_bytes() {
    type F32 = MultiHead<16, 256, 8>;
    type F16 = MultiHead<16, 256, 8, f32, f16>;
    type Bf16 = MultiHead<16, 256, 8, f32, bf16>;
    let weights = 4 * 256 * 256;
    assert_eq!(F32::PARAM_BYTES - F16::PARAM_BYTES, weights * 2);
    assert_eq!(F16::PARAM_BYTES, Bf16::PARAM_BYTES);
    assert_eq!(
        GroupedQuery::<64, 8, 2, 64, 16>::PARAM_BYTES
            - GroupedQuery::<64, 8, 2, 64, 16, f32, f16>::PARAM_BYTES,
        (2 * 64 * 64 + 2 * 16 * 64) * 2
    );
}

/// A `static` layer with f16 weights, built at compile time.
static STATIC_F16: Linear<2, 3, f32, f16> = Linear::from_rows(
    [
        [f16::from_f32_const(1.0), f16::from_f32_const(-2.0)],
        [f16::from_f32_const(0.5), f16::from_f32_const(0.25)],
        [f16::from_f32_const(3.0), f16::from_f32_const(1.5)],
    ],
    [0.0, 1.0, -1.0],
);

#[test]
fn static_half_layers_build_at_compile_time() {
    let y = STATIC_F16.forward(&SMatrix::<f32, 1, 2>::new(1.0, 2.0));
    assert_eq!(y, SMatrix::<f32, 1, 3>::new(-3.0, 2.0, 5.0));
}

#[cfg(feature = "safetensors")]
mod files {
    use super::*;
    use static_attention::io::LoadError;

    /// The dtype of `name` in a safetensors file.
    fn dtype(bytes: &[u8], name: &str) -> String {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        format!("{:?}", st.tensor(name).unwrap().dtype())
    }

    #[test]
    fn f16_and_bf16_files_round_trip() {
        let mha = MultiHead::<6, 16, 2>::from_seed(21).to_weights::<f16>();
        let bytes = mha.to_safetensors("").unwrap();
        assert_eq!(dtype(&bytes, "in_proj_weight"), "F16");
        assert_eq!(dtype(&bytes, "in_proj_bias"), "F32");
        let back = MultiHead::<6, 16, 2, f32, f16>::from_safetensors(&bytes, "").unwrap();
        assert_eq!(back, mha);

        let gqa = GroupedQuery::<32, 4, 2, 32, 16>::from_seed(22).to_weights::<bf16>();
        let bytes = gqa.to_safetensors("model.layers.0.self_attn.").unwrap();
        assert_eq!(
            dtype(&bytes, "model.layers.0.self_attn.k_proj.weight"),
            "BF16"
        );
        let back = GroupedQuery::<32, 4, 2, 32, 16, f32, bf16>::from_safetensors(
            &bytes,
            "model.layers.0.self_attn.",
        )
        .unwrap();
        assert_eq!(back, gqa);

        let head = SelfAttention::<4, 8>::from_seed(23).to_weights::<f16>();
        let back = SelfAttention::<4, 8, f32, f16>::from_safetensors(
            &head.to_safetensors("").unwrap(),
            "",
        )
        .unwrap();
        assert_eq!(back, head);
    }

    #[test]
    fn a_dtype_that_is_not_the_storage_type_is_a_typed_error() {
        let f16_file = MultiHead::<6, 16, 2>::from_seed(24)
            .to_weights::<f16>()
            .to_safetensors("")
            .unwrap();
        // An f32 layer does not take F16 weights (as before), a bf16 layer neither.
        let err = MultiHead::<6, 16, 2>::from_safetensors(&f16_file, "").unwrap_err();
        assert!(matches!(err, LoadError::WrongDtype { .. }));
        assert_eq!(
            err.to_string(),
            "in_proj_weight has dtype F16, expected F32 or F64"
        );
        let mut bf = MultiHead::<6, 16, 2, f32, bf16>::zeros();
        let before = bf.clone();
        let err = bf.load_safetensors(&f16_file, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "in_proj_weight has dtype F16, expected BF16 (the layer stores bf16 weights)"
        );
        assert_eq!(bf, before);
        // An f16 layer does not take F32 weights: rounding is the caller's decision.
        let f32_file = MultiHead::<6, 16, 2>::from_seed(24)
            .to_safetensors("")
            .unwrap();
        let err = MultiHead::<6, 16, 2, f32, f16>::from_safetensors(&f32_file, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "in_proj_weight has dtype F32, expected F16 (the layer stores f16 weights)"
        );
    }
}
