//! The Cortex-M4F firmware (`embedded/cortex-m4f/`) against the host.
//!
//! The firmware's model lives in `embedded/cortex-m4f/src/model.rs`, included here, so host
//! and firmware decode the same `model.bin` with the same `const fn`s and run the same inputs.
//! - `the_blob_is_the_seeded_model`: `model.bin` is what the seeded model writes (rewrite it
//!   with `cargo test --test firmware -- --ignored write_the_blob`);
//! - `the_static_layers_hold_the_blob`: the compile-time decoding gives those weights bit for
//!   bit;
//! - `the_firmware_matches_the_host` (ignored unless CI hands it the firmware's output in
//!   `FIRMWARE_LOG`): every value the firmware printed under QEMU within docs/SEMANTICS.md's f32
//!   tolerance of the host's; for the `i8` layer (`mha8`) see [`int8_bound`].

#[path = "../embedded/cortex-m4f/src/model.rs"]
#[allow(dead_code)]
mod model;

use rand::{RngExt, SeedableRng};
use static_attention::init::SeedRng;
use static_attention::kernels::{Kernel, with_kernel};
use static_attention::positions::{Rope, RopeStyle};
use static_attention::{Alignment, Bias, GroupedQuery, KvCache, Linear, Mask, MultiHead, SMatrix};

use model::{CAP, DIM, HEAD_DIM, HEADS, KV_DIM, KV_HEADS, MAX_POS, PROMPT, SEQ, STEPS};

const BLOB_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/embedded/cortex-m4f/model.bin");

/// The seeded layers the blob holds: PyTorch's initialisation with random biases for the
/// multi-head layer, `nn.Linear`'s without biases for the grouped-query one.
fn seeded() -> (
    MultiHead<SEQ, DIM, HEADS>,
    GroupedQuery<DIM, HEADS, KV_HEADS, DIM, KV_DIM>,
) {
    let mut rng = SeedRng::seed_from_u64(2017);
    let mha = MultiHead::<SEQ, DIM, HEADS>::new(&mut rng, Bias::Present);
    let mut biased = |l: &Linear<DIM, DIM>| {
        let mut l = *l;
        let b = nalgebra::SVector::<f32, DIM>::from_fn(|_, _| rng.random_range(-0.1f32..0.1));
        l.set_bias(Some(&b));
        l
    };
    let mha = MultiHead::from_parts(
        biased(mha.q_proj()),
        biased(mha.k_proj()),
        biased(mha.v_proj()),
        biased(mha.out_proj()),
    );
    let gqa = GroupedQuery::new(&mut rng, Bias::Absent);
    (mha, gqa)
}

fn push_weights<const IN: usize, const OUT: usize>(out: &mut Vec<u8>, l: &Linear<IN, OUT>) {
    for n in 0..OUT {
        for p in 0..IN {
            out.extend_from_slice(&l.weight_at(n, p).to_le_bytes());
        }
    }
}

fn seeded_blob() -> Vec<u8> {
    let (mha, gqa) = seeded();
    let mut blob = Vec::new();
    for l in [mha.q_proj(), mha.k_proj(), mha.v_proj(), mha.out_proj()] {
        push_weights(&mut blob, l);
        for x in l.bias().expect("biases").iter() {
            blob.extend_from_slice(&x.to_le_bytes());
        }
    }
    push_weights(&mut blob, gqa.q_proj());
    push_weights(&mut blob, gqa.k_proj());
    push_weights(&mut blob, gqa.v_proj());
    push_weights(&mut blob, gqa.out_proj());
    assert_eq!(blob.len(), model::BLOB_BYTES);
    blob
}

#[test]
fn the_blob_is_the_seeded_model() {
    let committed = std::fs::read(BLOB_PATH).expect("model.bin");
    assert!(
        committed == seeded_blob(),
        "model.bin differs from the seeded model"
    );
}

#[test]
#[ignore = "writes embedded/cortex-m4f/model.bin"]
fn write_the_blob() {
    std::fs::write(BLOB_PATH, seeded_blob()).expect("write model.bin");
}

#[test]
fn the_static_layers_hold_the_blob() {
    let (mha, gqa) = seeded();
    assert_eq!(model::MHA, mha);
    assert_eq!(model::GQA, gqa);
    // The const rounding to f16 is the run-time one.
    assert_eq!(model::MHA16, mha.to_weights::<static_attention::f16>());
    // The const quantization to i8 is the run-time one (per-channel max-abs, ties to even).
    assert_eq!(model::MHA8, mha.to_weights::<i8>());
}

/// The host's values of everything the firmware prints: `(layer, token, feature) → value`.
fn host_values() -> Vec<(&'static str, usize, usize, f32)> {
    let mut v = Vec::new();
    let y = model::MHA.forward(&model::input(), &Mask::causal(Alignment::TopLeft));
    for t in 0..SEQ {
        for f in 0..DIM {
            v.push(("mha", t, f, y[(t, f)]));
        }
    }
    let y = model::MHA16.forward(&model::input(), &Mask::causal(Alignment::TopLeft));
    for t in 0..SEQ {
        for f in 0..DIM {
            v.push(("mha16", t, f, y[(t, f)]));
        }
    }
    // The `i8` layer on the scalar kernel: its projections give the same bits on every
    // kernel, and its attention is `f32` as the firmware's is (with AMX the selected kernel
    // runs an `i8` layer's attention in `i8` tile products, another contract).
    let y = with_kernel(Kernel::Scalar, || {
        model::MHA8.forward(&model::input(), &Mask::causal(Alignment::TopLeft))
    })
    .expect("the scalar kernel runs everywhere");
    for t in 0..SEQ {
        for f in 0..DIM {
            v.push(("mha8", t, f, y[(t, f)]));
        }
    }
    let rope =
        Rope::<HEAD_DIM, MAX_POS>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
    let mut cache = KvCache::<CAP, KV_DIM>::new();
    let tokens = model::tokens();
    let p = model::GQA
        .decode(
            &tokens.fixed_rows::<PROMPT>(0).into_owned(),
            &mut cache,
            &rope,
        )
        .expect("fits");
    for t in 0..PROMPT {
        for f in 0..DIM {
            v.push(("gqa", t, f, p[(t, f)]));
        }
    }
    for t in PROMPT..PROMPT + STEPS {
        let y: SMatrix<f32, 1, DIM> = model::GQA
            .decode(&tokens.fixed_rows::<1>(t).into_owned(), &mut cache, &rope)
            .expect("fits");
        for f in 0..DIM {
            v.push(("gqa", t, f, y[(0, f)]));
        }
    }
    v
}

/// What the `i8` layer's output `(t, n)` may differ by besides the `f32` bound: one step of
/// the output projection's input rounding, allowed in at most one token.
///
/// The `i8` projections are bit-exact between kernels given the same inputs (exact integer
/// sums), and the q/k/v projections get the same inputs on both sides, so they agree bit for
/// bit. The attention runs in `f32` (the firmware's `libm` `exp` against the host's), so its
/// outputs, the output projection's inputs, agree only within the `f32` bound; an input whose
/// scaled value `x_p · 127 / a` lies that close to a half-integer may round to neighbouring
/// integers on the two sides, which moves `y_n` by `(a / 127) · |ŵ_np|`. The extra tolerance
/// is one such step, with `a` bounded by the largest `|v|` token `t` can attend to (each
/// attention output is a convex combination of value rows) and `ŵ` the dequantized weight, so a
/// single flipped rounding passes and anything else (another quantization, another scale,
/// another weight) does not.
fn int8_bound(t: usize, n: usize) -> f64 {
    let v = model::MHA8.v_proj().forward(&model::input());
    let a = (0..=t)
        .flat_map(|j| (0..DIM).map(move |p| (j, p)))
        .map(|(j, p)| f64::from(v[(j, p)]).abs())
        .fold(0.0, f64::max);
    let w = (0..DIM)
        .map(|p| f64::from(model::MHA8.out_proj().weight_at(n, p)).abs())
        .fold(0.0, f64::max);
    a / 127.0 * w
}

#[test]
#[ignore = "needs the firmware's output: FIRMWARE_LOG=<file> (CI runs it after QEMU)"]
fn the_firmware_matches_the_host() {
    let path = std::env::var("FIRMWARE_LOG").expect("FIRMWARE_LOG names the firmware's output");
    let log = std::fs::read_to_string(&path).expect("firmware log");
    let mut printed = std::collections::HashMap::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["mha" | "mha16" | "mha8" | "gqa", t, f, v] = parts[..] {
            let key = (
                parts[0].to_owned(),
                t.parse::<usize>().unwrap(),
                f.parse::<usize>().unwrap(),
            );
            printed.insert(key, v.parse::<f32>().expect("a float"));
        }
    }
    assert!(
        log.contains("firmware: ok"),
        "the firmware did not report success"
    );
    let host = host_values();
    assert_eq!(printed.len(), host.len(), "values printed by the firmware");
    let mut worst = 0f64;
    let mut worst_i8 = 0f64;
    // Tokens of the i8 layer with an output beyond the f32 bound (within one rounding step).
    let mut flipped = std::collections::BTreeSet::new();
    for (layer, t, f, want) in host {
        let got = printed[&(layer.to_owned(), t, f)];
        let err = (f64::from(got) - f64::from(want)).abs();
        let bound = 1e-5 + 1e-5 * f64::from(want).abs();
        if layer == "mha8" && err > bound {
            assert!(
                err <= bound + int8_bound(t, f),
                "{layer} token {t} feature {f}: firmware {got}, host {want}"
            );
            flipped.insert(t);
        } else {
            assert!(
                err <= bound,
                "{layer} token {t} feature {f}: firmware {got}, host {want}"
            );
        }
        if layer == "mha8" {
            worst_i8 = worst_i8.max(err);
        }
        worst = worst.max(err);
    }
    assert!(
        flipped.len() <= 1,
        "mha8: tokens {flipped:?} beyond the f32 bound (one flipped rounding is allowed)"
    );
    println!(
        "firmware (Cortex-M4F, QEMU) vs host: {} values, worst |Δ| {worst:.1e} (i8 layer: \
         {worst_i8:.1e}, {} token(s) with a flipped input rounding)",
        printed.len(),
        flipped.len()
    );
}
