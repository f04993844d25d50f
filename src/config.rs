//! A decoder layer described by a model's `config.json` (the `config` feature): the shape, the
//! attention [`Variant`], the rotary embedding and the biases, as Hugging Face `transformers`
//! reads them for one layer.
//!
//! [`LayerConfig::from_json`] reads the fields each family's attention module reads:
//!
//! | `model_type` | what it sets |
//! |---|---|
//! | `llama`, `mistral`, `qwen2` | rotary (with `rope_scaling` / `rope_parameters`), biases (`attention_bias`; Qwen2 always has q/k/v biases), the sliding window of Mistral and of `layer_types` |
//! | `qwen3` | also [`QkNorm::PerHead`] with `rms_norm_eps` |
//! | `olmo2` | also [`QkNorm::Full`] with `rms_norm_eps` |
//! | `gemma2` | the scale `query_pre_attn_scalar^−½`, the soft-cap `attn_logit_softcapping`, sliding layers from `layer_types` (or every even layer) |
//! | `gpt_oss` | sinks, biases on every projection, sliding layers from `layer_types` |
//! | `stablelm` | partial rotary (`partial_rotary_factor`), `use_qkv_bias` |
//!
//! Other model types are read as Llama is, and fields this crate cannot run (StableLM's
//! `qk_layernorm`, say) are a [`ConfigError::Unsupported`]. A layer checks the shape against
//! its own with [`crate::GroupedQuery::check_config`] (a [`ConfigError::Shape`] names the
//! field) and loads its weights with [`crate::GroupedQuery::load_pretrained`].

// The errors carry their text inline (`Text`, no allocation), like `LoadError`: a few hundred
// bytes on the error path only.
#![allow(clippy::result_large_err)]

use std::string::{String, ToString};

use serde_json::{Map, Value};

use crate::io::Text;
use crate::positions::{RopeConfig, RopeError, RopeScaling, RopeStyle};
use crate::variant::{QkNorm, Variant};

/// Why a `config.json` could not describe the layer. Each names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not JSON, or not a JSON object.
    Json {
        /// The parser's explanation.
        reason: Text,
    },
    /// A field the layer needs is absent.
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A field has a value of the wrong type or out of range.
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: Text,
    },
    /// A field asks for something this crate does not run.
    Unsupported {
        /// The field.
        field: &'static str,
        /// Its value.
        value: Text,
    },
    /// The configuration's shape is not the layer's.
    Shape {
        /// The field (`hidden_size`, `num_attention_heads`, `num_key_value_heads`,
        /// `head_dim`).
        field: &'static str,
        /// Its value in the configuration.
        config: usize,
        /// What the layer's type says.
        layer: usize,
    },
    /// The layer index is not below `num_hidden_layers`.
    Layer {
        /// The index asked for.
        index: usize,
        /// `num_hidden_layers`.
        layers: usize,
    },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Json { reason } => write!(f, "config.json: {reason}"),
            ConfigError::Missing { field } => write!(f, "config.json has no {field}"),
            ConfigError::Invalid { field, reason } => {
                write!(f, "config.json: {field}: {reason}")
            }
            ConfigError::Unsupported { field, value } => {
                write!(f, "config.json: {field} = {value} is not supported")
            }
            ConfigError::Shape {
                field,
                config,
                layer,
            } => write!(
                f,
                "config.json has {field} = {config}, but the layer's type has {layer}"
            ),
            ConfigError::Layer { index, layers } => write!(
                f,
                "layer {index} does not exist: config.json has num_hidden_layers = {layers}"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

/// One decoder layer's attention as a `config.json` describes it.
///
/// ```
/// use static_attention::config::LayerConfig;
/// use static_attention::variant::QkNorm;
///
/// let json = r#"{"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4,
///     "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1000000.0,
///     "rms_norm_eps": 1e-6, "num_hidden_layers": 2}"#;
/// let c = LayerConfig::from_json(json, 0)?;
/// assert_eq!((c.hidden_size, c.heads, c.kv_heads, c.head_dim), (64, 4, 2, 16));
/// assert_eq!(c.variant.qk_norm, QkNorm::PerHead { eps: 1e-6 });
/// # Ok::<(), static_attention::config::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerConfig {
    /// `hidden_size`: the layer's `DIM`.
    pub hidden_size: usize,
    /// `num_attention_heads`: `HEADS`.
    pub heads: usize,
    /// `num_key_value_heads` (`num_attention_heads` when absent): `KV_HEADS`.
    pub kv_heads: usize,
    /// `head_dim` (`hidden_size / num_attention_heads` when absent).
    pub head_dim: usize,
    /// The attention variant of this layer.
    pub variant: Variant,
    /// The rotary embedding, `None` for a model without one.
    pub rope: Option<RopeConfig>,
    /// Whether `q_proj`, `k_proj` and `v_proj` have biases.
    pub qkv_bias: bool,
    /// Whether `o_proj` has a bias.
    pub o_bias: bool,
}

/// The families [`LayerConfig::from_json`] knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Olmo2,
    Gemma2,
    GptOss,
    StableLm,
}

impl LayerConfig {
    /// Reads layer `layer` (counting from 0) of the model `config.json` holds.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field: not JSON, a missing or ill-typed field, a value out
    /// of range (a non-positive `rope_theta`, a bad `rope_scaling`), a layer index past
    /// `num_hidden_layers`, or something this crate does not run.
    pub fn from_json(json: &str, layer: usize) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(json).map_err(|e| ConfigError::Json {
            reason: Text::new(&[&e.to_string()]),
        })?;
        let Value::Object(c) = value else {
            return Err(ConfigError::Json {
                reason: Text::new(&["not a JSON object"]),
            });
        };
        Self::from_map(&c, layer)
    }

    fn from_map(c: &Map<String, Value>, layer: usize) -> Result<Self, ConfigError> {
        let model_type = opt_str(c, "model_type")?.unwrap_or("llama");
        let family = match model_type {
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "olmo2" => Family::Olmo2,
            "gemma2" => Family::Gemma2,
            "gpt_oss" => Family::GptOss,
            "stablelm" => Family::StableLm,
            _ => Family::Llama,
        };
        if let Some(layers) = opt_usize(c, "num_hidden_layers")?
            && layer >= layers
        {
            return Err(ConfigError::Layer {
                index: layer,
                layers,
            });
        }
        let hidden_size = usize_field(c, "hidden_size")?;
        let heads = usize_field(c, "num_attention_heads")?;
        if heads == 0 {
            return Err(invalid("num_attention_heads", "must be at least 1"));
        }
        let kv_heads = opt_usize(c, "num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match opt_usize(c, "head_dim")? {
            Some(d) => d,
            None => hidden_size / heads,
        };

        let mut variant = Variant::PLAIN;
        let eps =
            || -> Result<f64, ConfigError> { Ok(opt_f64(c, "rms_norm_eps")?.unwrap_or(1e-6)) };
        match family {
            Family::Qwen3 => variant.qk_norm = QkNorm::PerHead { eps: eps()? },
            Family::Olmo2 => variant.qk_norm = QkNorm::Full { eps: eps()? },
            Family::Gemma2 => {
                if let Some(s) = opt_f64(c, "query_pre_attn_scalar")? {
                    if !(s.is_finite() && s > 0.0) {
                        return Err(invalid("query_pre_attn_scalar", "must be positive"));
                    }
                    variant.scale = Some(1.0 / s.sqrt());
                }
                if let Some(cap) = opt_f64(c, "attn_logit_softcapping")? {
                    if !(cap.is_finite() && cap > 0.0) {
                        return Err(invalid("attn_logit_softcapping", "must be positive"));
                    }
                    variant.softcap = Some(cap);
                }
            }
            Family::GptOss => variant.sinks = true,
            Family::StableLm if opt_bool(c, "qk_layernorm")? == Some(true) => {
                return Err(ConfigError::Unsupported {
                    field: "qk_layernorm",
                    value: Text::new(&["true"]),
                });
            }
            _ => {}
        }
        variant.sliding_window = sliding_window(c, family, layer)?;
        if variant.sliding_window == Some(0) {
            return Err(invalid("sliding_window", "must be at least 1"));
        }

        let bias = opt_bool(c, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::StableLm => (opt_bool(c, "use_qkv_bias")?.unwrap_or(false), false),
            Family::Mistral => (false, false),
            _ => (bias, bias),
        };

        let rope = rope(c, head_dim)?;
        Ok(Self {
            hidden_size,
            heads,
            kv_heads,
            head_dim,
            variant,
            rope,
            qkv_bias,
            o_bias,
        })
    }
}

/// Whether layer `layer` is a sliding-window layer, and its window.
fn sliding_window(
    c: &Map<String, Value>,
    family: Family,
    layer: usize,
) -> Result<Option<usize>, ConfigError> {
    let window = opt_usize(c, "sliding_window")?;
    let sliding = match c.get("layer_types") {
        Some(Value::Array(types)) => {
            let Some(t) = types.get(layer) else {
                return Err(invalid("layer_types", "shorter than the layer index"));
            };
            match t.as_str() {
                Some("sliding_attention") => true,
                Some("full_attention") => false,
                _ => {
                    return Err(ConfigError::Unsupported {
                        field: "layer_types",
                        value: Text::new(&[&t.to_string()]),
                    });
                }
            }
        }
        Some(Value::Null) | None => match family {
            // Gemma 2 configs written before `layer_types` alternate, sliding first.
            Family::Gemma2 => layer.is_multiple_of(2),
            Family::Mistral => true,
            Family::Qwen2 | Family::Qwen3 => {
                opt_bool(c, "use_sliding_window")?.unwrap_or(false)
                    && layer >= opt_usize(c, "max_window_layers")?.unwrap_or(0)
            }
            _ => false,
        },
        Some(_) => return Err(invalid("layer_types", "must be a list")),
    };
    Ok(if sliding { window } else { None })
}

/// The rotary embedding: `rope_parameters` (transformers 5; per layer type for models that
/// give each its own) or `rope_theta` with `rope_scaling`, `partial_rotary_factor` for the
/// width.
fn rope(c: &Map<String, Value>, head_dim: usize) -> Result<Option<RopeConfig>, ConfigError> {
    // The parameters' object: `rope_parameters` (possibly per layer type), else the legacy
    // top-level fields.
    let params: Option<&Map<String, Value>> = match c.get("rope_parameters") {
        Some(Value::Object(p)) if p.contains_key("rope_type") || p.contains_key("rope_theta") => {
            Some(p)
        }
        Some(Value::Object(_)) => {
            return Err(ConfigError::Unsupported {
                field: "rope_parameters",
                value: Text::new(&["per layer type"]),
            });
        }
        Some(Value::Null) | None => None,
        Some(_) => return Err(invalid("rope_parameters", "must be an object")),
    };
    let scaling: Option<&Map<String, Value>> = match params {
        Some(p) => Some(p),
        None => match c.get("rope_scaling") {
            Some(Value::Object(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(_) => return Err(invalid("rope_scaling", "must be an object or null")),
        },
    };
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) => Some(as_f64(v, "rope_parameters.rope_theta")?),
        None => opt_f64(c, "rope_theta")?,
    };
    // Every family's default base.
    let theta = theta.unwrap_or(10_000.0);
    let partial = match params.and_then(|p| p.get("partial_rotary_factor")) {
        Some(v) => Some(as_f64(v, "rope_parameters.partial_rotary_factor")?),
        None => opt_f64(c, "partial_rotary_factor")?,
    };
    let mut rope = RopeConfig::new(theta, RopeStyle::RotateHalf);
    if let Some(f) = partial {
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(invalid("partial_rotary_factor", "must be in (0, 1]"));
        }
        let width = (head_dim as f64 * f) as usize;
        rope = rope.with_rotary_dim(width);
    }
    if let Some(s) = scaling {
        rope = rope.with_scaling(scaling_of(s, c)?);
    }
    rope.check(head_dim).map_err(|e| {
        let field = match e {
            RopeError::Base { .. } => "rope_theta",
            RopeError::Scaling { field, .. } => field,
            RopeError::RotaryDim { .. } => "partial_rotary_factor",
        };
        ConfigError::Invalid {
            field,
            reason: Text::new(&[&e.to_string()]),
        }
    })?;
    Ok(Some(rope))
}

/// A `rope_scaling` (or `rope_parameters`) object.
fn scaling_of(s: &Map<String, Value>, c: &Map<String, Value>) -> Result<RopeScaling, ConfigError> {
    let kind = match s.get("rope_type").or_else(|| s.get("type")) {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(invalid("rope_scaling.rope_type", "must be a string")),
        None => "default",
    };
    let f = |name: &'static str| -> Result<Option<f64>, ConfigError> {
        match s.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => as_f64(v, name).map(Some),
        }
    };
    let need = |name: &'static str| -> Result<f64, ConfigError> {
        f(name)?.ok_or(ConfigError::Missing { field: name })
    };
    // Hugging Face's fallbacks: `original_max_position_embeddings` in the scaling object, else
    // at the top level, else `max_position_embeddings`.
    let original = || -> Result<usize, ConfigError> {
        match s.get("original_max_position_embeddings") {
            Some(v) => as_usize(v, "rope_scaling.original_max_position_embeddings"),
            None => match opt_usize(c, "original_max_position_embeddings")? {
                Some(o) => Ok(o),
                None => usize_field(c, "max_position_embeddings"),
            },
        }
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        // Hugging Face's dynamic scaling always counts from `max_position_embeddings`.
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
            original_max_position_embeddings: usize_field(c, "max_position_embeddings")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: original()?,
        },
        "yarn" => {
            let original = original()?;
            // Without a factor (DeepSeek-V3), the ratio of the two context lengths.
            let factor = match f("factor")? {
                Some(x) => x,
                None => usize_field(c, "max_position_embeddings")? as f64 / original as f64,
            };
            let mut y = RopeScaling::yarn(factor, original);
            if let RopeScaling::Yarn {
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
                ..
            } = &mut y
            {
                if let Some(x) = f("beta_fast")? {
                    *beta_fast = x;
                }
                if let Some(x) = f("beta_slow")? {
                    *beta_slow = x;
                }
                if let Some(x) = f("mscale")? {
                    *mscale = x;
                }
                if let Some(x) = f("mscale_all_dim")? {
                    *mscale_all_dim = x;
                }
                *attention_factor = f("attention_factor")?;
                if let Some(Value::Bool(t)) = s.get("truncate") {
                    *truncate = *t;
                }
            }
            y
        }
        other => {
            return Err(ConfigError::Unsupported {
                field: "rope_scaling.rope_type",
                value: Text::new(&[other]),
            });
        }
    })
}

fn invalid(field: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: Text::new(&[reason]),
    }
}

fn as_f64(v: &Value, field: &'static str) -> Result<f64, ConfigError> {
    v.as_f64().ok_or_else(|| invalid(field, "must be a number"))
}

fn as_usize(v: &Value, field: &'static str) -> Result<usize, ConfigError> {
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| invalid(field, "must be a non-negative integer"))
}

fn usize_field(c: &Map<String, Value>, field: &'static str) -> Result<usize, ConfigError> {
    opt_usize(c, field)?.ok_or(ConfigError::Missing { field })
}

fn opt_usize(c: &Map<String, Value>, field: &'static str) -> Result<Option<usize>, ConfigError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_usize(v, field).map(Some),
    }
}

fn opt_f64(c: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, ConfigError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_f64(v, field).map(Some),
    }
}

fn opt_bool(c: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(field, "must be true or false")),
    }
}

fn opt_str<'c>(
    c: &'c Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'c str>, ConfigError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}
