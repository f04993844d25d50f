//! Golden tests against outputs PyTorch itself produced (tests/pytorch/, written by
//! scripts/gen_pytorch_fixtures.py). Every case loads the module's `state_dict` through the
//! public API, runs the same inputs and masks, and compares the attention output, the
//! head-averaged weights and the per-head weights within the crate's bound
//! (`|Δ| ≤ 1e-5 + 1e-5·|ref|` for f32, `1e-12` for f64). Each case prints its worst error:
//! `cargo test --test pytorch_parity -- --nocapture`.

mod common;

use common::{PYTORCH, all_fixtures, bool_matrix, bool_vector, compare, fixture, matrix, metadata};
use nalgebra::SMatrix;
use static_attention::mask::Additive;
use static_attention::{
    Alignment, AttentionWeights, Float, Mask, MultiHead, Scratch, SelfAttention,
    grouped_query_attention, scaled_dot_product_attention,
};

fn tolerance<T: Float>() -> f64 {
    if T::BYTES == 4 { 1e-5 } else { 1e-12 }
}

/// One `nn.MultiheadAttention` case: `SQ` queries against `SKV` keys/values.
fn mha<T: Float, const SQ: usize, const SKV: usize, const DIM: usize, const HEADS: usize>(
    case: &str,
) {
    let bytes = fixture(PYTORCH, case);
    let meta = metadata(&bytes);
    let prefix = meta.get("prefix").map_or("", String::as_str);
    let layer = MultiHead::<SQ, DIM, HEADS, T>::from_safetensors(&bytes, prefix)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let has_bias = meta["bias"] == "true";
    for l in [
        layer.q_proj(),
        layer.k_proj(),
        layer.v_proj(),
        layer.out_proj(),
    ] {
        assert_eq!(l.has_bias(), has_bias, "{case}: bias");
    }

    let query = matrix::<T, SQ, DIM>(&bytes, "input.query", None).unwrap();
    let key = matrix::<T, SKV, DIM>(&bytes, "input.key", None).unwrap();
    let value = matrix::<T, SKV, DIM>(&bytes, "input.value", None).unwrap();
    let blocked = bool_matrix::<SQ, SKV>(&bytes, "mask.attn_bool");
    let additive = matrix::<T, SQ, SKV>(&bytes, "mask.attn_float", None);
    let padding = bool_vector::<SKV>(&bytes, "mask.key_padding");
    let mut mask = Mask::none();
    if let Some(m) = &blocked {
        mask = mask.with_block_where(m); // PyTorch MHA: true = masked out
    }
    if let Some(p) = &padding {
        mask = mask.with_key_is_padding(p);
    }
    let inputs = (&query, &key, &value);
    match &additive {
        Some(a) => mha_check(
            case,
            &bytes,
            &layer,
            inputs,
            &mask.with_additive(a),
            &padding,
        ),
        None => mha_check(case, &bytes, &layer, inputs, &mask, &padding),
    }
}

/// The queries, keys and values of a case.
type Inputs<'a, T, const SQ: usize, const SKV: usize, const DIM: usize> = (
    &'a SMatrix<T, SQ, DIM>,
    &'a SMatrix<T, SKV, DIM>,
    &'a SMatrix<T, SKV, DIM>,
);

/// Runs a loaded `nn.MultiheadAttention` case with its mask and compares with PyTorch.
fn mha_check<
    T: Float,
    A: Additive<T, SQ, SKV>,
    const SQ: usize,
    const SKV: usize,
    const DIM: usize,
    const HEADS: usize,
>(
    case: &str,
    bytes: &[u8],
    layer: &MultiHead<SQ, DIM, HEADS, T>,
    (query, key, value): Inputs<'_, T, SQ, SKV, DIM>,
    mask: &Mask<'_, SQ, SKV, A>,
    padding: &Option<[bool; SKV]>,
) {
    let meta = metadata(bytes);
    let want = matrix::<T, SQ, DIM>(bytes, "output.attn", None).unwrap();
    let want_avg = matrix::<T, SQ, SKV>(bytes, "output.weights_avg", None).unwrap();
    let mut scratch = Scratch::<SQ, SKV, DIM, T>::new();
    let mut streamed = SMatrix::<T, SQ, DIM>::zeros();
    layer.attend(query, key, value, mask, &mut scratch, &mut streamed, None);
    let mut out = SMatrix::<T, SQ, DIM>::zeros();
    let mut weights = AttentionWeights::<SQ, SKV, HEADS, T>::zeros();
    layer.attend(
        query,
        key,
        value,
        mask,
        &mut scratch,
        &mut out,
        Some(&mut weights),
    );

    let tol = tolerance::<T>();
    let (e_stream, r_stream) = compare(&format!("{case}: streamed output"), &streamed, &want, tol);
    let (e_out, r_out) = compare(&format!("{case}: output"), &out, &want, tol);

    // Weights: PyTorch's need_weights path gives NaN rows where every key is masked; the crate
    // gives zero rows there (`semantics`, rule 7).
    let nan_rows: Vec<usize> = (0..SQ)
        .filter(|&i| want_avg.row(i).iter().any(|w| w.to_f64().is_nan()))
        .collect();
    let zero_nan_rows = |m: &SMatrix<T, SQ, SKV>| {
        let mut m = *m;
        for &i in &nan_rows {
            m.row_mut(i).fill(T::ZERO);
        }
        m
    };
    let (e_avg, r_avg) = compare(
        &format!("{case}: weights_avg"),
        &weights.average(),
        &zero_nan_rows(&want_avg),
        tol,
    );
    let mut e_heads = (0.0f64, 0.0f64);
    for h in 0..HEADS {
        let want_h = matrix::<T, SQ, SKV>(bytes, "output.weights", Some(h)).unwrap();
        let (e, r) = compare(
            &format!("{case}: weights of head {h}"),
            weights.head(h),
            &zero_nan_rows(&want_h),
            tol,
        );
        e_heads = (e_heads.0.max(e), e_heads.1.max(r));
    }
    for &i in &nan_rows {
        // The fully masked query: zero weights, and the layer outputs out_proj.bias.
        let bias = layer.out_proj().bias().expect("case has biases");
        for j in 0..DIM {
            assert_eq!(
                out[(i, j)],
                bias[j],
                "{case}: fully masked row {i} is out_proj.bias"
            );
        }
    }

    // A causal case was generated with PyTorch's bool triu mask; the named mask must agree.
    if meta.get("causal").map(String::as_str) == Some("top_left") {
        let mut causal_out = SMatrix::<T, SQ, DIM>::zeros();
        let causal = Mask::causal(Alignment::TopLeft);
        let causal = if let Some(p) = &padding {
            causal.with_key_is_padding(p)
        } else {
            causal
        };
        layer.attend(
            query,
            key,
            value,
            &causal,
            &mut scratch,
            &mut causal_out,
            None,
        );
        assert_eq!(
            causal_out, streamed,
            "{case}: Mask::causal(TopLeft) vs PyTorch's triu mask"
        );
    }

    println!(
        "{case:28} {:>4} worst |Δ|: output {:.1e} (streaming {:.1e}), weights_avg {:.1e}, \
         per-head {:.1e}; worst/bound {:.2}",
        if T::BYTES == 4 { "f32" } else { "f64" },
        e_out,
        e_stream,
        e_avg,
        e_heads.0,
        r_out.max(r_stream).max(r_avg).max(e_heads.1),
    );
}

/// One single-head case: a PyTorch module of three `nn.Linear`s (`q_proj`, `k_proj`,
/// `v_proj`) and SDPA, loaded as a `SelfAttention`; `SQ` queries against `SKV` memory tokens
/// (the queries themselves for self-attention).
fn head<T: Float, const SQ: usize, const SKV: usize, const DIM: usize>(case: &str) {
    let bytes = fixture(PYTORCH, case);
    let meta = metadata(&bytes);
    let prefix = meta.get("prefix").map_or("", String::as_str);
    let head = SelfAttention::<SQ, DIM, T>::from_safetensors(&bytes, prefix)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(head.q_proj().has_bias(), meta["q_bias"] == "true", "{case}");
    assert_eq!(
        head.k_proj().has_bias(),
        meta["kv_bias"] == "true",
        "{case}"
    );
    let query = matrix::<T, SQ, DIM>(&bytes, "input.query", None).unwrap();
    let memory = matrix::<T, SKV, DIM>(&bytes, "input.memory", None)
        .unwrap_or_else(|| SMatrix::from_fn(|i, j| query[(i % SQ, j)]));
    let allowed = bool_matrix::<SQ, SKV>(&bytes, "mask.attend_bool");
    let mask = match &allowed {
        Some(m) => Mask::attend_where(m),
        None => Mask::none(),
    };
    let want = matrix::<T, SQ, DIM>(&bytes, "output.attn", None).unwrap();
    let want_w = matrix::<T, SQ, SKV>(&bytes, "output.weights", None).unwrap();
    let (out, w) = head.cross_attention_with_weights(&query, &memory, &mask);
    let streamed = head.cross_attention(&query, &memory, &mask);
    let tol = tolerance::<T>();
    let (e_out, r_out) = compare(&format!("{case}: output"), &out, &want, tol);
    let (e_stream, r_stream) = compare(&format!("{case}: streamed output"), &streamed, &want, tol);
    let (e_w, r_w) = compare(&format!("{case}: weights"), &w, &want_w, tol);
    if meta["causal"] == "true" {
        // Self-attention with a causal mask: the named mask must give the same result.
        let named = head.forward(&query, &Mask::causal(Alignment::TopLeft));
        compare(&format!("{case}: Mask::causal output"), &named, &want, tol);
    }
    println!(
        "{case:28} {:>4} worst |Δ|: output {:.1e} (streaming {:.1e}), weights {:.1e}; \
         worst/bound {:.2}",
        if T::BYTES == 4 { "f32" } else { "f64" },
        e_out,
        e_stream,
        e_w,
        r_out.max(r_stream).max(r_w)
    );
}

/// One `scaled_dot_product_attention` case: `HQ` query heads over `HKV` key/value heads
/// (grouped-query attention when they differ: query head `h` uses kv head `h / (HQ / HKV)`).
fn sdpa<
    T: Float,
    const HQ: usize,
    const HKV: usize,
    const L: usize,
    const S: usize,
    const E: usize,
    const EV: usize,
>(
    case: &str,
) {
    let bytes = fixture(PYTORCH, case);
    let meta = metadata(&bytes);
    let scale = match meta["scale"].as_str() {
        "default" => None,
        s => Some(T::of(s.parse::<f64>().expect("scale"))),
    };
    let allowed = bool_matrix::<L, S>(&bytes, "mask.attend_bool");
    let additive = matrix::<T, L, S>(&bytes, "mask.attn_float", None);
    let plain = match (meta["causal"].as_str(), &allowed, &additive) {
        ("top_left", None, None) => Mask::causal(Alignment::TopLeft),
        ("bottom_right", Some(file_mask), None) => {
            // PyTorch got the bottom-right mask explicitly; the named alignment must match it.
            let named = Mask::<L, S>::causal(Alignment::BottomRight);
            for i in 0..L {
                for j in 0..S {
                    assert_eq!(named.allows(i, j), file_mask[(i, j)], "{case}: ({i}, {j})");
                }
            }
            named
        }
        ("none", None, _) => Mask::none(),
        other => panic!("{case}: unexpected mask combination {:?}", other.0),
    };
    match &additive {
        Some(m) => {
            sdpa_check::<T, _, HQ, HKV, L, S, E, EV>(case, &bytes, &Mask::additive(m), scale)
        }
        None => sdpa_check::<T, _, HQ, HKV, L, S, E, EV>(case, &bytes, &plain, scale),
    }
}

/// Runs an SDPA case head by head with its mask and compares with PyTorch.
fn sdpa_check<
    T: Float,
    A: Additive<T, L, S>,
    const HQ: usize,
    const HKV: usize,
    const L: usize,
    const S: usize,
    const E: usize,
    const EV: usize,
>(
    case: &str,
    bytes: &[u8],
    mask: &Mask<'_, L, S, A>,
    scale: Option<T>,
) {
    let tol = tolerance::<T>();
    let mut worst = (0.0f64, 0.0f64);
    // All heads in one call, grouped as PyTorch's `enable_gqa=True` groups them.
    let q: [SMatrix<T, L, E>; HQ] = core::array::from_fn(|h| matrix(bytes, "q", Some(h)).unwrap());
    let k: [SMatrix<T, S, E>; HKV] = core::array::from_fn(|g| matrix(bytes, "k", Some(g)).unwrap());
    let v: [SMatrix<T, S, EV>; HKV] =
        core::array::from_fn(|g| matrix(bytes, "v", Some(g)).unwrap());
    let got = grouped_query_attention(&q, &k, &v, mask, scale);
    for (h, got) in got.iter().enumerate() {
        let want = matrix::<T, L, EV>(bytes, "output.attn", Some(h)).unwrap();
        let (e, r) = compare(&format!("{case}: head {h}"), got, &want, tol);
        worst = (worst.0.max(e), worst.1.max(r));
        // Head by head through the single-head function: the same numbers.
        let one = scaled_dot_product_attention(
            &q[h],
            &k[h / (HQ / HKV)],
            &v[h / (HQ / HKV)],
            mask,
            scale,
        );
        assert_eq!(&one, got, "{case}: head {h}");
    }
    println!(
        "{case:28} {:>4} worst |Δ|: output {:.1e}; worst/bound {:.2}",
        if T::BYTES == 4 { "f32" } else { "f64" },
        worst.0,
        worst.1
    );
}

macro_rules! cases {
    ($($kind:ident $name:ident: $($arg:ty),+ ; $($c:literal),+;)+) => {
        $(
            #[test]
            fn $name() {
                $kind::<$($arg),+, $($c),+>(stringify!($name));
            }
        )+

        #[test]
        fn every_reference_file_has_a_test() {
            let mut tested = vec![$(stringify!($name)),+];
            tested.sort_unstable();
            assert_eq!(all_fixtures(PYTORCH), tested);
        }
    };
}

cases! {
    // nn.MultiheadAttention: T; SQ, SKV, DIM, HEADS
    mha seed_3x4x2: f32; 3, 3, 4, 2;
    mha odd_5x12x3: f32; 5, 5, 12, 3;
    mha single_token_1x8x2: f32; 1, 1, 8, 2;
    mha large_64x64x8: f32; 64, 64, 64, 8;
    mha no_bias_6x16x4: f32; 6, 6, 16, 4;
    mha causal_7x12x3: f32; 7, 7, 12, 3;
    mha key_padding_6x8x2: f32; 6, 6, 8, 2;
    mha float_mask_5x8x2: f32; 5, 5, 8, 2;
    mha bool_mask_7x12x4: f32; 7, 7, 12, 4;
    mha fully_masked_row_4x8x2: f32; 4, 4, 8, 2;
    mha cross_4x7x16x4: f32; 4, 7, 16, 4;
    mha cross_memory_3x9x8x2: f32; 3, 9, 8, 2;
    mha f64_5x12x3: f64; 5, 5, 12, 3;
    mha scaled_x30_6x16x4: f32; 6, 6, 16, 4;
    mha prefixed_4x8x2: f32; 4, 4, 8, 2;
    mha separate_proj_5x12x3: f32; 5, 5, 12, 3;
    // SelfAttention (q_proj, k_proj, v_proj nn.Linear + SDPA): T; SQ, SKV, DIM
    head head_self_6x16: f32; 6, 6, 16;
    head head_cross_4x7x8: f32; 4, 7, 8;
    head head_f64_5x12: f64; 5, 5, 12;
    // scaled_dot_product_attention: T; HQ, HKV, L, S, E, EV
    sdpa sdpa_gqa_8q2kv: f32; 8, 2, 6, 6, 8, 8;
    sdpa sdpa_mqa_4q1kv_causal: f32; 4, 1, 5, 5, 8, 8;
    sdpa sdpa_causal_top_left_4x7: f32; 2, 2, 4, 7, 8, 8;
    sdpa sdpa_causal_bottom_right_4x7: f32; 2, 2, 4, 7, 8, 8;
    sdpa sdpa_causal_top_left_7x4: f32; 2, 2, 7, 4, 8, 8;
    sdpa sdpa_causal_bottom_right_7x4: f32; 2, 2, 7, 4, 8, 8;
    sdpa sdpa_gqa_bottom_right_3x9: f32; 6, 3, 3, 9, 4, 5;
    sdpa sdpa_float_mask_scale: f32; 2, 2, 5, 6, 8, 8;
    sdpa sdpa_f64_gqa_causal: f64; 4, 2, 6, 6, 8, 8;
}
