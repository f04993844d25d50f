//! A decoder layer from a model's `config.json`: each family's fields read as Hugging Face
//! reads them, every bad configuration a typed error naming its field, and a whole layer
//! loaded with `GroupedQuery::load_pretrained`, which refuses files that disagree with the
//! configuration (missing biases, norms or sinks; biases the configuration does not have;
//! another shape) and leaves the layer unchanged then.

use static_attention::config::{ConfigError, LayerConfig};
use static_attention::io::LoadError;
use static_attention::positions::{RopeScaling, RopeStyle};
use static_attention::variant::{QkNorm, Variant};
use static_attention::{Bias, GroupedQuery};

/// A small config of `model_type` with `extra` fields added (a JSON object's inside).
fn config(model_type: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"model_type": "{model_type}", "hidden_size": 16, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 4, "num_hidden_layers": 2,
            "max_position_embeddings": 64, "rope_theta": 10000.0{sep} {extra}}}"#
    )
}

#[allow(clippy::result_large_err)] // the crate's error, as it is
fn read(model_type: &str, extra: &str, layer: usize) -> Result<LayerConfig, ConfigError> {
    LayerConfig::from_json(&config(model_type, extra), layer)
}

#[test]
fn each_family_reads_as_transformers_reads_it() {
    // Llama 3.1: llama3 scaling, no biases.
    let c = read(
        "llama",
        r#""rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}"#,
        0,
    );
    // A key given twice: the JSON reader keeps the last one, as Python's does.
    let c = c.expect("reads");
    assert_eq!(c.variant, Variant::PLAIN);
    assert!(!c.qkv_bias && !c.o_bias);
    let rope = c.rope.expect("rotary");
    assert_eq!(rope.base, 500_000.0);
    assert_eq!(rope.style, RopeStyle::RotateHalf);
    assert_eq!(
        rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        }
    );

    // transformers 5's `rope_parameters`, with YaRN defaults filled in.
    let c = read(
        "qwen2",
        r#""rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
            "original_max_position_embeddings": 32}"#,
        1,
    )
    .expect("reads");
    assert!(c.qkv_bias && !c.o_bias, "Qwen2 has q/k/v biases only");
    let rope = c.rope.expect("rotary");
    assert_eq!(rope.base, 1_000_000.0);
    assert_eq!(rope.scaling, RopeScaling::yarn(4.0, 32));

    // Dynamic scaling counts from max_position_embeddings.
    let c = read(
        "llama",
        r#""rope_scaling": {"type": "dynamic", "factor": 2.0}"#,
        0,
    )
    .unwrap();
    assert_eq!(
        c.rope.unwrap().scaling,
        RopeScaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 64
        }
    );

    let c = read(
        "qwen3",
        r#""rms_norm_eps": 1e-6, "attention_bias": false"#,
        0,
    )
    .unwrap();
    assert_eq!(c.variant.qk_norm, QkNorm::PerHead { eps: 1e-6 });
    let c = read(
        "olmo2",
        r#""rms_norm_eps": 1e-5, "attention_bias": true"#,
        0,
    )
    .unwrap();
    assert_eq!(c.variant.qk_norm, QkNorm::Full { eps: 1e-5 });
    assert!(c.qkv_bias && c.o_bias);

    // Gemma 2: layer 0 slides, layer 1 is global; the scale and the cap.
    let gemma = r#""query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
        "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]"#;
    let sliding = read("gemma2", gemma, 0).unwrap();
    let global = read("gemma2", gemma, 1).unwrap();
    assert_eq!(
        sliding.variant,
        Variant::PLAIN
            .with_scale(0.25)
            .with_softcap(50.0)
            .with_sliding_window(4)
    );
    assert_eq!(
        global.variant,
        Variant::PLAIN.with_scale(0.25).with_softcap(50.0)
    );
    // An older Gemma 2 config without layer_types: even layers slide.
    let old = r#""query_pre_attn_scalar": 16, "sliding_window": 4"#;
    assert_eq!(
        read("gemma2", old, 0).unwrap().variant.sliding_window,
        Some(4)
    );
    assert_eq!(read("gemma2", old, 1).unwrap().variant.sliding_window, None);

    // gpt-oss: sinks and biases everywhere.
    let c = read(
        "gpt_oss",
        r#""attention_bias": true, "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"]"#,
        0,
    )
    .unwrap();
    assert_eq!(
        c.variant,
        Variant::PLAIN.with_sinks().with_sliding_window(8)
    );
    assert!(c.qkv_bias && c.o_bias);

    // StableLM: a quarter of each head rotates.
    let c = read(
        "stablelm",
        r#""partial_rotary_factor": 0.5, "use_qkv_bias": true"#,
        0,
    )
    .unwrap();
    assert_eq!(c.rope.unwrap().rotary_dim, Some(2));
    assert!(c.qkv_bias && !c.o_bias);
    // Mistral: the window on every layer.
    let c = read("mistral", r#""sliding_window": 4096"#, 1).unwrap();
    assert_eq!(c.variant.sliding_window, Some(4096));
    // head_dim defaults to hidden_size / num_attention_heads.
    let c = LayerConfig::from_json(r#"{"hidden_size": 64, "num_attention_heads": 8}"#, 0).unwrap();
    assert_eq!((c.head_dim, c.kv_heads), (8, 8));
}

#[test]
fn bad_configurations_name_their_field() {
    let invalid = |r: Result<LayerConfig, ConfigError>| match r {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        LayerConfig::from_json("{not json", 0),
        Err(ConfigError::Json { .. })
    ));
    assert!(matches!(
        LayerConfig::from_json("[1, 2]", 0),
        Err(ConfigError::Json { .. })
    ));
    assert_eq!(
        LayerConfig::from_json(r#"{"num_attention_heads": 4}"#, 0),
        Err(ConfigError::Missing {
            field: "hidden_size"
        })
    );
    assert_eq!(
        invalid(read("llama", r#""hidden_size": "sixteen""#, 0)),
        "hidden_size"
    );
    assert_eq!(
        invalid(read("llama", r#""rope_theta": 0"#, 0)),
        "rope_theta"
    );
    assert_eq!(
        invalid(read("llama", r#""rope_theta": -1"#, 0)),
        "rope_theta"
    );
    assert_eq!(
        invalid(read(
            "llama",
            r#""rope_scaling": {"rope_type": "linear", "factor": 0.0}"#,
            0
        )),
        "factor"
    );
    assert_eq!(
        invalid(read(
            "llama",
            r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}"#,
            0
        )),
        "high_freq_factor"
    );
    assert_eq!(
        read(
            "llama",
            r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
            0
        ),
        Err(ConfigError::Missing {
            field: "low_freq_factor"
        })
    );
    assert!(matches!(
        read(
            "llama",
            r#""rope_scaling": {"rope_type": "longrope", "factor": 8.0}"#,
            0
        ),
        Err(ConfigError::Unsupported {
            field: "rope_scaling.rope_type",
            ..
        })
    ));
    assert_eq!(
        invalid(read("stablelm", r#""partial_rotary_factor": 1.5"#, 0)),
        "partial_rotary_factor"
    );
    assert_eq!(
        invalid(read("gemma2", r#""attn_logit_softcapping": -50.0"#, 0)),
        "attn_logit_softcapping"
    );
    assert!(matches!(
        read("stablelm", r#""qk_layernorm": true"#, 0),
        Err(ConfigError::Unsupported {
            field: "qk_layernorm",
            ..
        })
    ));
    assert_eq!(
        read("llama", "", 2),
        Err(ConfigError::Layer {
            index: 2,
            layers: 2
        })
    );
    assert_eq!(
        invalid(read("gemma2", r#""layer_types": ["sliding_attention"]"#, 1)),
        "layer_types"
    );
    // The messages say what is wrong, in words.
    let e = read("llama", r#""rope_theta": 0"#, 0).unwrap_err();
    assert!(e.to_string().contains("rope_theta"), "{e}");
}

type Layer = GroupedQuery<16, 4, 2, 16, 8>;

#[test]
fn load_pretrained_checks_the_file_against_the_configuration() {
    let rng = &mut <static_attention::init::SeedRng as rand::SeedableRng>::seed_from_u64(3);
    // A Qwen2 file without its biases.
    let plain = Layer::new(rng, Bias::Absent).to_safetensors("").unwrap();
    let qwen2 = read("qwen2", "", 0).unwrap();
    let mut layer = Layer::from_seed(4);
    let before = layer.clone();
    match layer.load_pretrained(&qwen2, &plain, "") {
        Err(LoadError::MissingTensor { name, .. }) => assert_eq!(name.as_str(), "q_proj.bias"),
        other => panic!("{other:?}"),
    }
    assert_eq!(layer, before);

    // A biased file under a configuration without biases.
    let biased = Layer::new(rng, Bias::Present).to_safetensors("").unwrap();
    let llama = read("llama", "", 0).unwrap();
    assert!(matches!(
        layer.load_pretrained(&llama, &biased, ""),
        Err(LoadError::Unsupported { .. })
    ));
    assert_eq!(layer, before);

    // Another shape names the field.
    let eight_heads = LayerConfig::from_json(
        r#"{"hidden_size": 16, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 2}"#,
        0,
    )
    .unwrap();
    assert_eq!(
        layer.load_pretrained(&eight_heads, &plain, ""),
        Err(LoadError::Config(ConfigError::Shape {
            field: "num_attention_heads",
            config: 8,
            layer: 4
        }))
    );

    // Qwen3 needs its norms; gpt-oss its sinks.
    let qwen3 = read("qwen3", r#""rms_norm_eps": 1e-6"#, 0).unwrap();
    match layer.load_pretrained(&qwen3, &plain, "") {
        Err(LoadError::MissingTensor { name, .. }) => assert_eq!(name.as_str(), "q_norm.weight"),
        other => panic!("{other:?}"),
    }
    let oss = read("gpt_oss", r#""attention_bias": false"#, 0).unwrap();
    match layer.load_pretrained(&oss, &plain, "") {
        Err(LoadError::MissingTensor { name, .. }) => assert_eq!(name.as_str(), "sinks"),
        other => panic!("{other:?}"),
    }
    assert_eq!(layer, before);

    // A Qwen3 layer saved and loaded back: the variant and its norms round-trip.
    let mut qwen = Layer::new(rng, Bias::Absent);
    qwen.set_variant(qwen3.variant).unwrap();
    let (qn, kn) = qwen.qk_norm_weights_mut();
    qn.iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = 1.0 + i as f32 * 0.1);
    kn.iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = 2.0 - i as f32 * 0.1);
    let bytes = qwen.to_safetensors("model.layers.0.self_attn.").unwrap();
    let mut back = Layer::zeros();
    back.load_pretrained(&qwen3, &bytes, "model.layers.0.self_attn.")
        .expect("loads");
    assert_eq!(back.variant(), qwen3.variant);
    assert_eq!(back.qk_norm_weights().0[..4], qwen.qk_norm_weights().0[..4]);
    // The plain loader reads norms only for a layer whose variant uses them.
    let mut plain_layer = Layer::zeros();
    assert!(matches!(
        plain_layer.load_safetensors(&bytes, "model.layers.0.self_attn."),
        Err(LoadError::Unsupported { .. })
    ));

    // A file saved with 8 heads, read as a 4-head layer: the file's head count is named.
    let file8 = GroupedQuery::<16, 8, 2, 16, 4>::from_seed(5)
        .to_safetensors("")
        .unwrap();
    let err = Layer::from_safetensors(&file8, "").unwrap_err();
    assert_eq!(
        err,
        LoadError::WrongHeads {
            expected: 4,
            found: 8
        }
    );
}
