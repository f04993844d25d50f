//! Loading and saving PyTorch weights: the round trip, dtype conversion, prefixes, the
//! heap-free slice path, and every kind of bad input, each with its exact message and a check
//! that a failed load leaves the layer untouched.

mod common;

use std::collections::HashMap;

use common::{PYTORCH, fixture};
use nalgebra::SMatrix;
use rand::{SeedableRng, rngs::SmallRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use static_attention::io::{
    InProjWeight, LinearParams, LoadError, PyTorchParams, SelfAttentionParams,
};
use static_attention::{Bias, Mask, MultiHead, heap};

type Seed = MultiHead<3, 4, 2>;

/// The tensors of a file as (dtype, shape, bytes), and its metadata.
type Tensors = HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn open(bytes: &[u8]) -> (Tensors, HashMap<String, String>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let tensors = st
        .iter()
        .map(|(name, v)| {
            (
                name.to_owned(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect();
    (tensors, common::metadata(bytes))
}

fn save(tensors: &Tensors, meta: &HashMap<String, String>) -> Vec<u8> {
    let views = tensors.iter().map(|(name, (dtype, shape, data))| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    let meta = if meta.is_empty() {
        None
    } else {
        Some(meta.clone().into_iter().collect())
    };
    safetensors::serialize(views, meta).unwrap()
}

/// The seed case's file, edited by `edit`.
fn edited(edit: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) -> Vec<u8> {
    let (mut t, mut m) = open(&fixture(PYTORCH, "seed_3x4x2"));
    edit(&mut t, &mut m);
    save(&t, &m)
}

/// Loads `bytes` into a random layer and checks that a failure leaves it unchanged.
fn load_err(bytes: &[u8], prefix: &str) -> LoadError {
    let mut layer = Seed::new(&mut SmallRng::seed_from_u64(1), Bias::Present);
    let before = layer.clone();
    let err = layer
        .load_safetensors(bytes, prefix)
        .expect_err("load must fail");
    assert_eq!(layer, before, "a failed load changed the layer");
    println!("{err}");
    err
}

/// The message of loading the seed file with tensor `name` removed.
fn error_without(name: &str) -> String {
    let bytes = edited(|t, _| {
        t.remove(name);
    });
    load_err(&bytes, "").to_string()
}

#[test]
fn round_trip_is_exact() {
    let layer = Seed::from_safetensors(&fixture(PYTORCH, "seed_3x4x2"), "").unwrap();
    let bytes = layer.to_safetensors("").unwrap();
    assert_eq!(Seed::from_safetensors(&bytes, "").unwrap(), layer);
    // Saving the loaded layer reproduces PyTorch's tensors byte for byte.
    let (ours, meta) = open(&bytes);
    let (theirs, _) = open(&fixture(PYTORCH, "seed_3x4x2"));
    for name in [
        "in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
    ] {
        assert_eq!(ours[name], theirs[name], "{name}");
    }
    assert_eq!(meta["num_heads"], "2");

    // f64, bias=False and a prefix round-trip too.
    let mut rng = SmallRng::seed_from_u64(9);
    let layer = MultiHead::<5, 12, 3, f64>::new(&mut rng, Bias::Absent);
    let bytes = layer.to_safetensors("model.attn.").unwrap();
    let back = MultiHead::<5, 12, 3, f64>::from_safetensors(&bytes, "model.attn.").unwrap();
    assert_eq!(back, layer);
    assert!(!back.q_proj().has_bias() && !back.out_proj().has_bias());
    assert!(!open(&bytes).0.contains_key("model.attn.in_proj_bias"));
}

#[test]
fn f32_and_f64_files_load_into_either_type() {
    let x = SMatrix::<f64, 5, 12>::from_fn(|i, j| ((i * 12 + j) as f64 * 0.3).sin());
    // An f64 file into an f32 layer, and an f32 file into an f64 layer.
    let f64_file = fixture(PYTORCH, "f64_5x12x3");
    let exact = MultiHead::<5, 12, 3, f64>::from_safetensors(&f64_file, "").unwrap();
    let rounded = MultiHead::<5, 12, 3, f32>::from_safetensors(&f64_file, "").unwrap();
    let y64 = exact.forward(&x, &Mask::none());
    let y32 = rounded.forward(&x.cast::<f32>(), &Mask::none());
    assert!((y32.cast::<f64>() - y64).amax() < 1e-5);

    let f32_file = fixture(PYTORCH, "odd_5x12x3");
    let widened = MultiHead::<5, 12, 3, f64>::from_safetensors(&f32_file, "").unwrap();
    let native = MultiHead::<5, 12, 3, f32>::from_safetensors(&f32_file, "").unwrap();
    assert_eq!(
        widened.q_proj().weight().cast::<f32>(),
        native.q_proj().weight(),
        "f32 → f64 is exact"
    );
}

#[test]
fn the_slice_path_matches_the_file_path() {
    let file = fixture(PYTORCH, "odd_5x12x3");
    let from_file = MultiHead::<5, 12, 3>::from_safetensors(&file, "").unwrap();
    let f = |name: &str| -> Vec<f32> {
        common::tensor(&file, name)
            .unwrap()
            .0
            .into_iter()
            .map(|x| x as f32)
            .collect()
    };
    let (w, b, ow, ob) = (
        f("in_proj_weight"),
        f("in_proj_bias"),
        f("out_proj.weight"),
        f("out_proj.bias"),
    );
    let params = PyTorchParams {
        in_proj_weight: InProjWeight::Packed(&w),
        in_proj_bias: Some(&b),
        out_proj_weight: &ow,
        out_proj_bias: Some(&ob),
    };
    assert_eq!(MultiHead::<5, 12, 3>::try_from(&params).unwrap(), from_file);
    let mut in_place: Box<MultiHead<5, 12, 3>> = heap::zeroed();
    params.load_into(&mut in_place).unwrap();
    assert_eq!(*in_place, from_file);

    let (q, k, v) = (&w[..144], &w[144..288], &w[288..]);
    let separate = PyTorchParams {
        in_proj_weight: InProjWeight::Separate { q, k, v },
        ..params
    };
    assert_eq!(
        MultiHead::<5, 12, 3>::try_from(&separate).unwrap(),
        from_file
    );

    // Wrong lengths are named, and a failed in-place load changes nothing.
    let mut layer = from_file.clone();
    let bad = PyTorchParams {
        in_proj_weight: InProjWeight::Separate { q, k: &k[..143], v },
        ..params
    };
    let err = bad.load_into(&mut layer).unwrap_err();
    assert_eq!(
        err.to_string(),
        "k_proj_weight has 143 values, expected 144 ([12, 12]) for DIM = 12"
    );
    let bad = PyTorchParams {
        in_proj_bias: Some(&b[..12]),
        ..params
    };
    assert_eq!(
        bad.load_into(&mut layer).unwrap_err().to_string(),
        "in_proj_bias has 12 values, expected 36 ([36]) for DIM = 12"
    );
    assert_eq!(layer, from_file);
}

#[test]
fn missing_tensor() {
    assert_eq!(
        error_without("out_proj.weight"),
        "missing tensor out_proj.weight (expected shape [4, 4])"
    );
    assert_eq!(
        error_without("in_proj_weight"),
        "missing tensor in_proj_weight (expected shape [12, 4])"
    );
}

#[test]
fn wrong_prefix_reports_the_full_name() {
    let bytes = fixture(PYTORCH, "prefixed_4x8x2");
    let err = MultiHead::<4, 8, 2>::from_safetensors(&bytes, "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing tensor in_proj_weight (expected shape [24, 8])"
    );
    let err = MultiHead::<4, 8, 2>::from_safetensors(&bytes, "decoder.").unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing tensor decoder.in_proj_weight (expected shape [24, 8])"
    );
}

#[test]
fn wrong_dim_is_a_shape_error() {
    // The seed file has DIM = 4; a layer with DIM = 8 (and the file's 2 heads) cannot take it.
    let err =
        MultiHead::<3, 8, 2>::from_safetensors(&fixture(PYTORCH, "seed_3x4x2"), "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "in_proj_weight has shape [12, 4], expected [24, 8] for DIM = 8"
    );
    assert!(matches!(err, LoadError::WrongShape { dim: 8, .. }));
    // A 1-D tensor where a matrix belongs.
    let bytes = edited(|t, _| {
        let w = t.get_mut("out_proj.weight").unwrap();
        w.1 = vec![16];
    });
    assert_eq!(
        load_err(&bytes, "").to_string(),
        "out_proj.weight has shape [16], expected [4, 4] for DIM = 4"
    );
}

#[test]
fn wrong_heads_is_reported() {
    let err =
        MultiHead::<3, 4, 4>::from_safetensors(&fixture(PYTORCH, "seed_3x4x2"), "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the file was saved with num_heads = 2, but the layer has HEADS = 4"
    );
    let bytes = edited(|_, m| {
        m.insert("num_heads".into(), "two".into());
    });
    assert_eq!(
        load_err(&bytes, "").to_string(),
        "malformed safetensors data: metadata num_heads = \"two\" is not a number"
    );
    // Without the metadata, the head count cannot be checked (PyTorch does not store it).
    let bytes = edited(|_, m| {
        m.clear();
    });
    assert!(MultiHead::<3, 4, 4>::from_safetensors(&bytes, "").is_ok());
}

#[test]
fn wrong_dtype() {
    let bytes = edited(|t, _| {
        let w = t.get_mut("in_proj_weight").unwrap();
        w.0 = Dtype::I32;
    });
    assert_eq!(
        load_err(&bytes, "").to_string(),
        "in_proj_weight has dtype I32, expected F32 or F64"
    );
    let bytes = edited(|t, _| {
        let (dtype, _, data) = t.get_mut("out_proj.bias").unwrap();
        *dtype = Dtype::BF16;
        data.truncate(8);
    });
    assert_eq!(
        load_err(&bytes, "").to_string(),
        "out_proj.bias has dtype BF16, expected F32 or F64"
    );
}

#[test]
fn unsupported_tensors() {
    let bytes = edited(|t, _| {
        t.insert("bias_k".into(), (Dtype::F32, vec![1, 1, 4], vec![0; 16]));
    });
    assert_eq!(
        load_err(&bytes, "").to_string(),
        "bias_k: add_bias_kv=True is not supported by MultiHead"
    );
    let bytes = edited(|t, _| {
        t.insert(
            "q_proj_weight".into(),
            (Dtype::F32, vec![4, 4], vec![0; 64]),
        );
    });
    assert_eq!(
        load_err(&bytes, "").to_string(),
        "q_proj_weight: both in_proj_weight and separate projection weights are present"
    );
    // The separate form needs all three.
    let bytes = fixture(PYTORCH, "separate_proj_5x12x3");
    let (mut t, m) = open(&bytes);
    t.remove("v_proj_weight");
    let err = MultiHead::<5, 12, 3>::from_safetensors(&save(&t, &m), "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing tensor v_proj_weight (expected shape [12, 12])"
    );
}

#[test]
fn malformed_bytes() {
    let good = fixture(PYTORCH, "seed_3x4x2");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header length", good[..5].to_vec()),
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("header length past the end", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
            b
        }),
        ("header not JSON", {
            let mut b = 4u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{{{{");
            b
        }),
        ("trailing bytes", {
            let mut b = good.clone();
            b.extend_from_slice(&[0; 4]);
            b
        }),
        ("header length near u64::MAX", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (what, bytes) in cases {
        let err = load_err(&bytes, "");
        assert!(
            matches!(err, LoadError::Malformed { .. }),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("malformed safetensors data: "),
            "{what}: {err}"
        );
    }
}

#[test]
fn errors_are_std_errors_with_long_names_truncated() {
    let long = "x".repeat(300);
    let err =
        MultiHead::<3, 4, 2>::from_safetensors(&fixture(PYTORCH, "seed_3x4x2"), &long).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("missing tensor xxxx") && text.contains('…'),
        "{text}"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn a_large_layer_loads_in_place_on_the_heap() {
    // heap::zeroed, reset_parameters and load_safetensors: no stack copy of the parameters.
    let mut src: Box<MultiHead<8, 256, 8>> = heap::zeroed();
    src.reset_parameters(&mut SmallRng::seed_from_u64(3), Bias::Present);
    let bytes = src.to_safetensors("").unwrap();
    let mut dst: Box<MultiHead<8, 256, 8>> = heap::zeroed();
    dst.reset_parameters(&mut SmallRng::seed_from_u64(4), Bias::Present);
    assert!(*dst != *src);
    dst.load_safetensors(&bytes, "").unwrap();
    assert!(*dst == *src);
}

#[test]
fn saving_is_deterministic() {
    // Found by the fuzzer: with several metadata keys the header order varied between runs.
    let layer = Seed::from_safetensors(&fixture(PYTORCH, "seed_3x4x2"), "").unwrap();
    let first = layer.to_safetensors("p.").unwrap();
    for _ in 0..20 {
        let again = Seed::from_safetensors(&first, "p.").unwrap();
        assert_eq!(again.to_safetensors("p.").unwrap(), first);
    }
}

#[test]
fn biases_come_in_pairs() {
    // PyTorch's `bias` flag adds in_proj_bias and out_proj.bias together.
    assert_eq!(
        error_without("in_proj_bias"),
        "missing tensor in_proj_bias (expected shape [12])"
    );
    assert_eq!(
        error_without("out_proj.bias"),
        "missing tensor out_proj.bias (expected shape [4])"
    );
    let w = [0.5f32; 48];
    let ow = [0.5f32; 16];
    let b = [0.1f32; 12];
    let params = PyTorchParams {
        in_proj_weight: InProjWeight::Packed(&w),
        in_proj_bias: Some(&b),
        out_proj_weight: &ow,
        out_proj_bias: None,
    };
    assert_eq!(
        Seed::try_from(&params).unwrap_err().to_string(),
        "missing tensor out_proj.bias (expected shape [4])"
    );
}

#[test]
fn a_mixed_bias_layer_saves_with_zero_biases() {
    // from_parts can mix biased and unbiased projections, which PyTorch cannot express: the
    // saved file has all biases, zeros for the missing ones.
    let src = Seed::from_safetensors(&fixture(PYTORCH, "seed_3x4x2"), "").unwrap();
    let mut k = *src.k_proj();
    k.set_bias(None);
    let mixed = Seed::from_parts(*src.q_proj(), k, *src.v_proj(), *src.out_proj());
    assert!(mixed.q_proj().has_bias() && !mixed.k_proj().has_bias());
    let back = Seed::from_safetensors(&mixed.to_safetensors("").unwrap(), "").unwrap();
    assert_eq!(back.k_proj().bias(), Some(&nalgebra::SVector::zeros()));
    assert_eq!(back.q_proj(), mixed.q_proj());
    let x = SMatrix::<f32, 3, 4>::from_fn(|i, j| (i + j) as f32 * 0.25);
    assert_eq!(
        back.forward(&x, &Mask::none()),
        mixed.forward(&x, &Mask::none())
    );
}

// ------------------------------------------------------------------------------------------
// SelfAttention: three nn.Linear modules named q_proj, k_proj, v_proj
// ------------------------------------------------------------------------------------------

type Head = static_attention::SelfAttention<6, 16>;

/// The single-head case's file, edited by `edit`.
fn head_edited(edit: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let (mut t, m) = open(&fixture(PYTORCH, "head_self_6x16"));
    edit(&mut t);
    save(&t, &m)
}

/// Loads `bytes` into a random head, checks that a failure leaves it unchanged, and returns
/// the message.
fn head_err(bytes: &[u8], prefix: &str) -> String {
    let mut head = Head::from_seed(4);
    let before = head.clone();
    let err = head.load_safetensors(bytes, prefix).unwrap_err();
    assert_eq!(head, before, "a failed load changed the head");
    assert_eq!(Head::from_safetensors(bytes, prefix).unwrap_err(), err);
    let mut boxed: Box<Head> = heap::zeroed();
    assert_eq!(boxed.load_safetensors(bytes, prefix).unwrap_err(), err);
    err.to_string()
}

#[test]
fn self_attention_round_trip_and_forms() {
    let bytes = fixture(PYTORCH, "head_self_6x16");
    let head = Head::from_safetensors(&bytes, "").unwrap();
    let mut boxed: Box<Head> = heap::zeroed();
    boxed.load_safetensors(&bytes, "").unwrap();
    assert_eq!(*boxed, head);
    let again = Head::from_safetensors(&head.to_safetensors("").unwrap(), "").unwrap();
    assert_eq!(again, head);
    // A prefix, and a head where only the query projection has a bias.
    let cross = fixture(PYTORCH, "head_cross_4x7x8");
    let c =
        static_attention::SelfAttention::<4, 8>::from_safetensors(&cross, "encoder.attn.").unwrap();
    assert!(c.q_proj().has_bias() && !c.k_proj().has_bias() && !c.v_proj().has_bias());
    let saved = c.to_safetensors("x.").unwrap();
    let mut names: Vec<String> = SafeTensors::deserialize(&saved)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "x.k_proj.weight",
            "x.q_proj.bias",
            "x.q_proj.weight",
            "x.v_proj.weight"
        ]
    );
    // The slice path gives the same head as the file path.
    let (t, _) = open(&bytes);
    let floats = |name: &str| -> Vec<f32> {
        t[name]
            .2
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (qw, qb, kw, kb, vw, vb) = (
        floats("q_proj.weight"),
        floats("q_proj.bias"),
        floats("k_proj.weight"),
        floats("k_proj.bias"),
        floats("v_proj.weight"),
        floats("v_proj.bias"),
    );
    let params = SelfAttentionParams {
        q_proj: LinearParams {
            weight: &qw,
            bias: Some(&qb),
        },
        k_proj: LinearParams {
            weight: &kw,
            bias: Some(&kb),
        },
        v_proj: LinearParams {
            weight: &vw,
            bias: Some(&vb),
        },
    };
    assert_eq!(Head::try_from(&params).unwrap(), head);
    let mut boxed: Box<Head> = heap::zeroed();
    params.load_into(&mut boxed).unwrap();
    assert_eq!(*boxed, head);
}

#[test]
fn self_attention_bad_files() {
    let missing = head_edited(|t| {
        t.remove("k_proj.weight");
    });
    assert_eq!(
        head_err(&missing, ""),
        "missing tensor k_proj.weight (expected shape [16, 16])"
    );
    assert_eq!(
        head_err(&fixture(PYTORCH, "head_self_6x16"), "model."),
        "missing tensor model.q_proj.weight (expected shape [16, 16])"
    );
    let wrong_shape = head_edited(|t| {
        let (_, shape, data) = t.get_mut("v_proj.bias").unwrap();
        *shape = vec![8];
        data.truncate(8 * 4);
    });
    assert_eq!(
        head_err(&wrong_shape, ""),
        "v_proj.bias has shape [8], expected [16] for DIM = 16"
    );
    let wrong_dtype = head_edited(|t| {
        t.get_mut("q_proj.weight").unwrap().0 = Dtype::I32;
    });
    assert_eq!(
        head_err(&wrong_dtype, ""),
        "q_proj.weight has dtype I32, expected F32 or F64"
    );
    let truncated = &fixture(PYTORCH, "head_self_6x16")[..300];
    assert!(head_err(truncated, "").starts_with("malformed safetensors data"));
    // A slice of the wrong length names the module and the parameter.
    let w = [0.0f32; 16 * 16];
    let short = SelfAttentionParams {
        q_proj: LinearParams {
            weight: &w,
            bias: None,
        },
        k_proj: LinearParams {
            weight: &w,
            bias: Some(&w[..15]),
        },
        v_proj: LinearParams {
            weight: &w,
            bias: None,
        },
    };
    let mut head = Head::from_seed(9);
    let before = head.clone();
    assert_eq!(
        short.load_into(&mut head).unwrap_err().to_string(),
        "k_proj.bias has 15 values, expected 16 ([16]) for DIM = 16"
    );
    assert_eq!(head, before);
}

#[test]
fn multi_head_heap_loaders_match() {
    let bytes = fixture(PYTORCH, "seed_3x4x2");
    let layer = Seed::from_safetensors(&bytes, "").unwrap();
    let mut boxed: Box<Seed> = heap::zeroed();
    boxed.load_safetensors(&bytes, "").unwrap();
    assert_eq!(*boxed, layer);
    let x = SMatrix::<f32, 3, 4>::repeat(0.5);
    assert_eq!(
        layer.forward(&x, &Mask::none()),
        boxed.forward(&x, &Mask::none())
    );
}
