//! Positions: the paper's sinusoidal encoding, rotary embeddings (RoPE) and ALiBi slopes.
//!
//! - [`sinusoidal`]: `PE(pos, 2i) = sin(pos / 10000^(2i/DIM))`, `PE(pos, 2i+1) = cos(…)`, added
//!   to token embeddings before the first layer (Vaswani et al. 2017).
//! - [`Rope`]: rotary embeddings applied to queries and keys per head,
//!   `θ_i = base^(−2i/d)` for `i < d/2` over the rotary width `d` (`HEAD_DIM`, or fewer
//!   leading features with partial rotary), in both pairings ([`RopeStyle::Interleaved`],
//!   GPT-J; [`RopeStyle::RotateHalf`], GPT-NeoX and Hugging Face Llama). A [`RopeConfig`]
//!   adds Hugging Face's frequency scalings ([`RopeScaling`]: linear, dynamic NTK, Llama 3.1,
//!   YaRN with its attention factor) and the arithmetic of the table ([`RopePrecision`]:
//!   exact `f64`, or transformers' `float32` steps). The cos/sin table is built once, for
//!   `MAX_POS` positions, with no `std` and no heap; a bad configuration is a [`RopeError`].
//! - [`alibi_slope`]: ALiBi's per-head slope `m_h` (Press et al. 2022), for any head count.
//!   The bias `−m_h·(i − j)` itself is a mask part ([`crate::Mask::with_alibi`]) computed
//!   inside the attention kernel, with no `SQ × SKV` buffer.
//!
//! Angles and slopes are computed in `f64` and rounded once to `T` (a [`Rope`] with
//! [`RopePrecision::HuggingFace`] follows transformers' `float32` arithmetic instead).

use nalgebra::SMatrix;

use crate::Float;
use crate::kernels::math;

/// The paper's sinusoidal position encoding for positions `0..SEQ`:
/// `PE(pos, 2i) = sin(pos / 10000^(2i/DIM))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i/DIM))`.
/// Add it to the embeddings of a sequence; for positions further on, see
/// [`sinusoidal_into`].
///
/// ```
/// use static_attention::positions::sinusoidal;
///
/// let pe = sinusoidal::<4, 6, f32>();
/// assert_eq!(pe[(0, 0)], 0.0); // sin 0
/// assert_eq!(pe[(0, 1)], 1.0); // cos 0
/// assert!((pe[(1, 0)] - 1f32.sin()).abs() < 1e-7);
/// ```
#[must_use]
pub fn sinusoidal<const SEQ: usize, const DIM: usize, T: Float>() -> SMatrix<T, SEQ, DIM> {
    let mut pe = crate::zero_matrix();
    sinusoidal_into(0, &mut pe);
    pe
}

/// [`sinusoidal`] for positions `first .. first + SEQ`, written into `pe` (row `t` is position
/// `first + t`).
pub fn sinusoidal_into<const SEQ: usize, const DIM: usize, T: Float>(
    first: usize,
    pe: &mut SMatrix<T, SEQ, DIM>,
) {
    for c in 0..DIM {
        let i2 = (c / 2 * 2) as f64;
        let inv = math::pow(10_000.0, -i2 / DIM as f64);
        for t in 0..SEQ {
            let angle = (first + t) as f64 * inv;
            pe[(t, c)] = T::of(if c % 2 == 0 {
                math::sin(angle)
            } else {
                math::cos(angle)
            });
        }
    }
}

/// ALiBi's slope for head `head` of `heads` (the ALiBi paper's `get_slopes`): for a power-of-two `heads = n`, `m_h = 2^(−8(h+1)/n)`; otherwise, with
/// `p = 2^⌊log2 n⌋`, the `p` slopes for `p` heads followed by every other slope
/// (`2^(−4(2j+1)/p)`, `j = 0, 1, …`) of the sequence for `2p` heads.
///
/// # Panics
/// If `head >= heads`.
///
/// ```
/// use static_attention::positions::alibi_slope;
///
/// assert_eq!(alibi_slope(0, 8), 0.5);
/// assert_eq!(alibi_slope(7, 8), 1.0 / 256.0);
/// // 6 heads: the 4 slopes for 4 heads, then the 1st and 3rd of the 8-head sequence.
/// let six: Vec<f64> = (0..6).map(|h| alibi_slope(h, 6)).collect();
/// assert_eq!(six, [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
/// ```
#[must_use]
pub fn alibi_slope(head: usize, heads: usize) -> f64 {
    assert!(head < heads, "head {head} of {heads}");
    let p = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    if head < p {
        math::pow(2.0, -8.0 * (head + 1) as f64 / p as f64)
    } else {
        let j = head - p;
        math::pow(2.0, -4.0 * (2 * j + 1) as f64 / p as f64)
    }
}

/// The ALiBi part of a [`crate::Mask`] (Press et al. 2022): the bias `−m·(p − j)` added to the scaled
/// score of query `i` at position `p = i + SKV − SQ` (queries aligned with the last keys, as in
/// decoding; `p = i` when `SQ == SKV`) and key `j`. Only differences of positions within one
/// row matter to the softmax, so with a causal pattern this is ALiBi exactly as trained.
///
/// The kernels compute it per score: no `SQ × SKV` matrix is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alibi {
    /// Head `h` of `H` uses the standard slope [`alibi_slope`]`(h, H)`, `H`
    /// being the layer's (or the call's) head count; a single-head call uses `2^−8`.
    PerHead,
    /// Every head uses this slope.
    Slope(f64),
}

impl Alibi {
    /// The slope head `head` of `heads` uses.
    #[must_use]
    pub fn slope(self, head: usize, heads: usize) -> f64 {
        match self {
            Alibi::PerHead => alibi_slope(head, heads),
            Alibi::Slope(m) => m,
        }
    }
}

/// [`alibi_slope`] for every head of `HEADS`.
#[must_use]
pub fn alibi_slopes<const HEADS: usize>() -> [f64; HEADS] {
    core::array::from_fn(|h| alibi_slope(h, HEADS))
}

/// How RoPE pairs the features of a head (of its first `rotary_dim` features, with partial
/// rotary: see [`RopeConfig::with_rotary_dim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pairs `(x_2i, x_2i+1)`: GPT-J, the original Llama and `torchtune`'s `RotaryPositionalEmbeddings`.
    Interleaved,
    /// Pairs `(x_i, x_i+rotary_dim/2)`, `x·cos + rotate_half(x)·sin`: GPT-NeoX and Hugging
    /// Face's Llama, Mistral, Qwen2 and StableLM.
    RotateHalf,
}

/// A position past the end of a [`Rope`] table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PositionError {
    /// The first position of the tokens to rotate.
    pub first: usize,
    /// How many tokens.
    pub count: usize,
    /// The table's length, `MAX_POS`: positions `0 .. MAX_POS` are available.
    pub table: usize,
}

impl core::fmt::Display for PositionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "positions {}..{} are past the rotary table of {} positions",
            self.first,
            self.first + self.count,
            self.table
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PositionError {}

/// How a [`Rope`] rescales its frequencies for contexts longer than a model was trained on, as
/// Hugging Face transformers' `rope_parameters` (`rope_type`) do.
///
/// Notation: `d` is the rotary width (`rotary_dim`, the head width unless partial rotary),
/// `θ_i = base^(−2i/d)` for `i < d/2` the unscaled frequencies, `L` the
/// `original_max_position_embeddings` field. Each variant gives the frequencies `θ'_i` a row
/// of the table uses and the *attention factor* `a` that multiplies the stored cos and sin
/// (`cos(p·θ'_i)·a`, `sin(p·θ'_i)·a`; `a = 1` except with YaRN). [`Rope`] checks every field
/// when it is built ([`RopeError::Scaling`] names the first bad one).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling {
    /// No scaling (HF's `"default"`): `θ'_i = θ_i`.
    None,
    /// Position interpolation (HF's `"linear"`): `θ'_i = θ_i / factor`. `factor` must be
    /// finite and positive.
    Linear {
        /// The context extension: positions are divided by it.
        factor: f64,
    },
    /// Dynamic NTK scaling (HF's `"dynamic"`). Row `p` of the table uses the frequencies for a
    /// sequence of `n = max(p + 1, L)` tokens:
    /// `θ'_i = base'^(−2i/d)`, `base' = base · ((factor·n/L) − (factor − 1))^(d/(d − 2))`,
    /// so positions below `L` are unscaled. This is what HF computes when it decodes one token
    /// at a time; HF rotates a whole prompt longer than `L` with the prompt's length `n`
    /// instead (every position of that prompt with the same frequencies), which no fixed
    /// table can follow. `factor` must be finite and positive, `L ≥ 1`, and `d ≥ 4`.
    Dynamic {
        /// The scaling factor.
        factor: f64,
        /// `L`: the context length trained on (HF reads the config's
        /// `max_position_embeddings` for this rope type).
        original_max_position_embeddings: usize,
    },
    /// Llama 3.1's frequency-dependent scaling (HF's `"llama3"`). With the wavelength
    /// `λ_i = 2π/θ_i`, `λ_low = L/low_freq_factor` and `λ_high = L/high_freq_factor`:
    /// `θ'_i = θ_i` if `λ_i < λ_high`; `θ_i/factor` if `λ_i > λ_low`; otherwise
    /// `θ'_i = (1 − s)·θ_i/factor + s·θ_i` with `s = (L/λ_i − low_freq_factor) /
    /// (high_freq_factor − low_freq_factor)`. `factor` and `low_freq_factor` must be finite
    /// and positive, `high_freq_factor` finite and greater than `low_freq_factor`, `L ≥ 1`.
    /// Llama 3.1 uses `llama3(8.0, 1.0, 4.0, 8192)` with base 500 000.
    Llama3 {
        /// The scaling of the low frequencies.
        factor: f64,
        /// Wavelengths above `L/low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `L/high_freq_factor` are kept.
        high_freq_factor: f64,
        /// `L`: the context length trained on.
        original_max_position_embeddings: usize,
    },
    /// YaRN (Peng et al. 2023; HF's `"yarn"`). With
    /// `c(β) = d·ln(L/(2π·β)) / (2·ln base)`, `lo = c(beta_fast)`, `hi = c(beta_slow)`
    /// (rounded down and up if `truncate`), then `lo = max(lo, 0)`, `hi = min(hi, d − 1)`,
    /// `hi += 0.001` if `lo == hi`, and the ramp `r_i = clamp((i − lo)/(hi − lo), 0, 1)`:
    /// `θ'_i = (θ_i/factor)·r_i + θ_i·(1 − r_i)`. The attention factor `a` is
    /// `attention_factor` if given; otherwise, with `m(s, k) = 0.1·k·ln s + 1` for `s > 1`
    /// and `1` for `s ≤ 1`, `a = m(factor, mscale) / m(factor, mscale_all_dim)` if both
    /// `mscale` and `mscale_all_dim` are non-zero, else `a = m(factor, 1)`.
    /// [`RopeScaling::yarn`] fills HF's defaults. Rules: `factor` finite and positive,
    /// `L ≥ 1`, `beta_slow` finite and positive, `beta_fast` finite and greater than
    /// `beta_slow`, `mscale` and `mscale_all_dim` finite and non-negative, `attention_factor`
    /// (if any) finite and positive, and the base not 1.
    Yarn {
        /// The context extension.
        factor: f64,
        /// `L`: the context length trained on.
        original_max_position_embeddings: usize,
        /// Rotations above which a frequency is kept (HF's default 32).
        beta_fast: f64,
        /// Rotations below which a frequency is interpolated (HF's default 1).
        beta_slow: f64,
        /// The numerator's `k` in the attention factor; 0 for "not set" (HF's `None`, the default).
        mscale: f64,
        /// The denominator's `k` in the attention factor; 0 for "not set" (the default).
        mscale_all_dim: f64,
        /// The attention factor itself, overriding the `mscale` rule (default `None`).
        attention_factor: Option<f64>,
        /// Round the correction range outwards to whole dimensions (HF's default `true`).
        truncate: bool,
    },
}

/// `m(s, k)` of YaRN's attention factor: `0.1·k·ln s + 1`, or 1 if `s ≤ 1`.
fn yarn_mscale(scale: f64, k: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * k * math::ln(scale) + 1.0
    }
}

impl RopeScaling {
    /// [`RopeScaling::Linear`].
    #[must_use]
    pub const fn linear(factor: f64) -> Self {
        RopeScaling::Linear { factor }
    }

    /// [`RopeScaling::Dynamic`].
    #[must_use]
    pub const fn dynamic(factor: f64, original_max_position_embeddings: usize) -> Self {
        RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings,
        }
    }

    /// [`RopeScaling::Llama3`].
    #[must_use]
    pub const fn llama3(
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    ) -> Self {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }
    }

    /// [`RopeScaling::Yarn`] with HF's defaults: `beta_fast = 32`, `beta_slow = 1`, `mscale`
    /// and `mscale_all_dim` not set (0), no `attention_factor` (so `a = 0.1·ln factor + 1`),
    /// `truncate = true`. Change a field with struct-update syntax or a `match`.
    ///
    /// ```
    /// use static_attention::positions::RopeScaling;
    ///
    /// let yarn = RopeScaling::yarn(4.0, 32_768);
    /// assert!((yarn.attention_factor() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    /// ```
    #[must_use]
    pub const fn yarn(factor: f64, original_max_position_embeddings: usize) -> Self {
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 0.0,
            mscale_all_dim: 0.0,
            attention_factor: None,
            truncate: true,
        }
    }

    /// The attention factor `a` that multiplies the table's cos and sin: 1 except with
    /// [`RopeScaling::Yarn`] (see there).
    #[must_use]
    pub fn attention_factor(&self) -> f64 {
        match *self {
            RopeScaling::Yarn {
                factor,
                mscale,
                mscale_all_dim,
                attention_factor,
                ..
            } => attention_factor.unwrap_or_else(|| {
                if mscale != 0.0 && mscale_all_dim != 0.0 {
                    yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
                } else {
                    yarn_mscale(factor, 1.0)
                }
            }),
            _ => 1.0,
        }
    }
}

/// The arithmetic a [`Rope`] table is computed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RopePrecision {
    /// Every frequency, angle, cos and sin in `f64`, rounded once to `T` (the default): the
    /// closest table to the formulas.
    #[default]
    Exact,
    /// The `float32` arithmetic of Hugging Face transformers' rotary embeddings, step by step:
    /// the frequencies in `f32` as HF's code computes them (`1/base^(2i/d)` with `base` and
    /// `2i/d` in `f32`, then each scaling's own `f32` operations; the few scalars HF computes
    /// in Python, such as YaRN's correction range, in `f64`); the angle `f32(p)·θ'_i` rounded
    /// to `f32`; its cos and sin (computed in `f64`, rounded to `f32`); times `f32(a)`; then
    /// converted to `T`. Use it to reproduce a transformers model's numbers (its tables agree
    /// to an `f32` ulp or two, transformers' own `f32` `pow`, `cos` and `sin` not being
    /// correctly rounded).
    HuggingFace,
}

/// Everything a [`Rope`] table is built from: the base, the pairing, the scaling, the rotary
/// width and the precision.
///
/// ```
/// use static_attention::positions::{Rope, RopeConfig, RopePrecision, RopeScaling, RopeStyle};
///
/// // Llama 3.1's rotary embedding, with transformers' float32 tables.
/// const LLAMA_3_1: RopeConfig = RopeConfig::new(500_000.0, RopeStyle::RotateHalf)
///     .with_scaling(RopeScaling::llama3(8.0, 1.0, 4.0, 8192))
///     .with_precision(RopePrecision::HuggingFace);
/// let rope = Rope::<16, 64>::from_config(&LLAMA_3_1)?;
/// assert_eq!(rope.config(), LLAMA_3_1);
/// # Ok::<(), static_attention::positions::RopeError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RopeConfig {
    /// The base of the frequencies (`rope_theta`: 10 000 for Llama 2, 500 000 for Llama 3,
    /// 1 000 000 for Qwen2): finite and positive.
    pub base: f64,
    /// The pairing of the features.
    pub style: RopeStyle,
    /// The frequency scaling ([`RopeScaling::None`] by default).
    pub scaling: RopeScaling,
    /// How many leading features of each head rotate (`None`: all, `HEAD_DIM`).
    pub rotary_dim: Option<usize>,
    /// The table's arithmetic ([`RopePrecision::Exact`] by default).
    pub precision: RopePrecision,
}

impl RopeConfig {
    /// `base` and `style`, no scaling, every feature rotating, [`RopePrecision::Exact`].
    #[must_use]
    pub const fn new(base: f64, style: RopeStyle) -> Self {
        Self {
            base,
            style,
            scaling: RopeScaling::None,
            rotary_dim: None,
            precision: RopePrecision::Exact,
        }
    }

    /// With `scaling`.
    #[must_use]
    pub const fn with_scaling(self, scaling: RopeScaling) -> Self {
        Self { scaling, ..self }
    }

    /// Partial rotary: only the first `rotary_dim` features of each head rotate (even,
    /// `2 ..= HEAD_DIM`; HF's `int(head_dim · partial_rotary_factor)`), with frequencies
    /// `base^(−2i/rotary_dim)` for `i < rotary_dim/2`, pairs `(i, i + rotary_dim/2)`
    /// ([`RopeStyle::RotateHalf`]) or `(2i, 2i + 1)` ([`RopeStyle::Interleaved`]); features
    /// `rotary_dim ..` pass through unchanged.
    #[must_use]
    pub const fn with_rotary_dim(self, rotary_dim: usize) -> Self {
        Self {
            rotary_dim: Some(rotary_dim),
            ..self
        }
    }

    /// With `precision`.
    #[must_use]
    pub const fn with_precision(self, precision: RopePrecision) -> Self {
        Self { precision, ..self }
    }

    /// Checks that a [`Rope`] with heads of `head_dim` features can be built from this
    /// configuration (what [`Rope::from_config`] checks first).
    ///
    /// # Errors
    /// The [`RopeError`] [`Rope::from_config`] would give.
    pub fn check(&self, head_dim: usize) -> Result<(), RopeError> {
        validate(self, head_dim).map(|_| ())
    }
}

/// A [`RopeConfig`] a [`Rope`] cannot be built from.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum RopeError {
    /// The base is not finite, not positive, or 1 with YaRN (whose correction range divides
    /// by `ln base`).
    Base {
        /// The base given.
        base: f64,
    },
    /// A field of the [`RopeScaling`] breaks its rule.
    Scaling {
        /// The field's name, as in [`RopeScaling`] (and HF's `rope_parameters`).
        field: &'static str,
        /// Its value (a count as `f64`).
        value: f64,
        /// What it must be.
        rule: &'static str,
    },
    /// The rotary width is odd, 0 or more than `HEAD_DIM` (or below 4 with
    /// [`RopeScaling::Dynamic`], whose exponent `d/(d − 2)` needs `d > 2`).
    RotaryDim {
        /// The width given.
        rotary_dim: usize,
        /// The head width, `HEAD_DIM`.
        head_dim: usize,
    },
}

impl core::fmt::Display for RopeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RopeError::Base { base } => write!(
                f,
                "rotary base {base} must be finite and positive (and not 1 with YaRN)"
            ),
            RopeError::Scaling { field, value, rule } => {
                write!(f, "rope scaling field {field} = {value} must be {rule}")
            }
            RopeError::RotaryDim {
                rotary_dim,
                head_dim,
            } => write!(
                f,
                "rotary width {rotary_dim} for heads of {head_dim} features must be even, \
                 at least 2 (4 with dynamic NTK scaling) and at most {head_dim}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RopeError {}

const POSITIVE: &str = "finite and greater than 0";

fn positive(field: &'static str, value: f64) -> Result<(), RopeError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(RopeError::Scaling {
            field,
            value,
            rule: POSITIVE,
        })
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<(), RopeError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(RopeError::Scaling {
            field,
            value,
            rule: "finite and at least 0 (0: not set)",
        })
    }
}

fn greater(
    field: &'static str,
    value: f64,
    than: f64,
    rule: &'static str,
) -> Result<(), RopeError> {
    if value.is_finite() && value > than {
        Ok(())
    } else {
        Err(RopeError::Scaling { field, value, rule })
    }
}

fn context(length: usize) -> Result<(), RopeError> {
    if length >= 1 {
        Ok(())
    } else {
        Err(RopeError::Scaling {
            field: "original_max_position_embeddings",
            value: length as f64,
            rule: "at least 1",
        })
    }
}

/// Checks `config` for heads of `head_dim` features; the rotary width.
fn validate(config: &RopeConfig, head_dim: usize) -> Result<usize, RopeError> {
    let width = config.rotary_dim.unwrap_or(head_dim);
    let dynamic = matches!(config.scaling, RopeScaling::Dynamic { .. });
    if width < 2 || !width.is_multiple_of(2) || width > head_dim || (dynamic && width < 4) {
        return Err(RopeError::RotaryDim {
            rotary_dim: width,
            head_dim,
        });
    }
    let yarn = matches!(config.scaling, RopeScaling::Yarn { .. });
    if !(config.base.is_finite() && config.base > 0.0) || (yarn && config.base == 1.0) {
        return Err(RopeError::Base { base: config.base });
    }
    match config.scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } => positive("factor", factor),
        RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings,
        } => {
            positive("factor", factor)?;
            context(original_max_position_embeddings)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            positive("factor", factor)?;
            positive("low_freq_factor", low_freq_factor)?;
            greater(
                "high_freq_factor",
                high_freq_factor,
                low_freq_factor,
                "finite and greater than low_freq_factor",
            )?;
            context(original_max_position_embeddings)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate: _,
        } => {
            positive("factor", factor)?;
            context(original_max_position_embeddings)?;
            positive("beta_slow", beta_slow)?;
            greater(
                "beta_fast",
                beta_fast,
                beta_slow,
                "finite and greater than beta_slow",
            )?;
            non_negative("mscale", mscale)?;
            non_negative("mscale_all_dim", mscale_all_dim)?;
            match attention_factor {
                Some(a) => positive("attention_factor", a),
                None => Ok(()),
            }
        }
    }?;
    Ok(width)
}

/// YaRN's correction range `(lo, hi)` (computed in `f64`, as HF does in Python).
fn yarn_range(
    base: f64,
    width: usize,
    original: usize,
    beta_fast: f64,
    beta_slow: f64,
    truncate: bool,
) -> (f64, f64) {
    let d = width as f64;
    let dim = |rotations: f64| {
        d * math::ln(original as f64 / (rotations * 2.0 * core::f64::consts::PI))
            / (2.0 * math::ln(base))
    };
    let (mut lo, mut hi) = (dim(beta_fast), dim(beta_slow));
    if truncate {
        lo = math::floor(lo);
        hi = math::ceil(hi);
    }
    // Python's max(lo, 0) and min(hi, d - 1).
    lo = if lo < 0.0 { 0.0 } else { lo };
    hi = if d - 1.0 < hi { d - 1.0 } else { hi };
    if lo == hi {
        hi += 0.001;
    }
    (lo, hi)
}

/// The frequencies of a validated configuration.
struct Frequencies {
    config: RopeConfig,
    width: usize,
    /// YaRN's correction range.
    range: (f64, f64),
}

impl Frequencies {
    fn new(config: RopeConfig, width: usize) -> Self {
        let range = match config.scaling {
            RopeScaling::Yarn {
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => yarn_range(
                config.base,
                width,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
            ),
            _ => (0.0, 0.0),
        };
        Self {
            config,
            width,
            range,
        }
    }

    /// The dynamic-NTK context length `L` past which rows need their own frequencies.
    fn dynamic_from(&self) -> Option<usize> {
        match self.config.scaling {
            RopeScaling::Dynamic {
                original_max_position_embeddings,
                ..
            } => Some(original_max_position_embeddings),
            _ => None,
        }
    }

    /// `θ'_i` for a sequence of `tokens` tokens (only dynamic NTK looks at it).
    fn inv_freq(&self, i: usize, tokens: usize) -> f64 {
        match self.config.precision {
            RopePrecision::HuggingFace => f64::from(self.inv_freq_f32(i, tokens)),
            RopePrecision::Exact => self.inv_freq_f64(i, tokens),
        }
    }

    fn inv_freq_f64(&self, i: usize, tokens: usize) -> f64 {
        let d = self.width as f64;
        let exponent = (2 * i) as f64 / d;
        let base = self.config.base;
        let theta = math::pow(base, -exponent);
        match self.config.scaling {
            RopeScaling::Linear { factor } => theta / factor,
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: l,
            } => {
                if tokens <= l {
                    theta
                } else {
                    let grow = factor * tokens as f64 / l as f64 - (factor - 1.0);
                    let scaled = base * math::pow(grow, d / (d - 2.0));
                    math::pow(scaled, -exponent)
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: l,
            } => {
                let l = l as f64;
                let wavelength = 2.0 * core::f64::consts::PI / theta;
                if wavelength < l / high {
                    theta
                } else if wavelength > l / low {
                    theta / factor
                } else {
                    let s = (l / wavelength - low) / (high - low);
                    (1.0 - s) * theta / factor + s * theta
                }
            }
            RopeScaling::Yarn { factor, .. } => {
                let (lo, hi) = self.range;
                let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                (theta / factor) * ramp + theta * (1.0 - ramp)
            }
            RopeScaling::None => theta,
        }
    }

    /// HF's float32 steps.
    fn inv_freq_f32(&self, i: usize, tokens: usize) -> f32 {
        // `base ** (arange(0, d, 2) / d)` and its reciprocal, in f32.
        let exponent = (2 * i) as f32 / self.width as f32;
        let default = |base: f32| 1.0 / powf(base, exponent);
        let base = self.config.base;
        match self.config.scaling {
            RopeScaling::Linear { factor } => default(base as f32) / factor as f32,
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: l,
            } => {
                let d = self.width as f64;
                let scaled = if tokens <= l {
                    // At construction HF computes `base'` in Python (f64) with `n = L`.
                    (base * math::pow(factor * l as f64 / l as f64 - (factor - 1.0), d / (d - 2.0)))
                        as f32
                } else {
                    // While decoding, `n` is a tensor: every step in f32 (the power of a
                    // float32 tensor by a Python float takes the exponent in f64).
                    let grow = factor as f32 * tokens as f32 / l as f32 - (factor - 1.0) as f32;
                    base as f32 * math::pow(f64::from(grow), d / (d - 2.0)) as f32
                };
                default(scaled)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: l,
            } => {
                let theta = default(base as f32);
                let wavelength = (1.0 / theta) * (2.0 * core::f64::consts::PI) as f32;
                let low_wavelength = (l as f64 / low) as f32;
                let high_wavelength = (l as f64 / high) as f32;
                let kept = if wavelength > low_wavelength {
                    theta / factor as f32
                } else {
                    theta
                };
                if wavelength >= high_wavelength && wavelength <= low_wavelength {
                    let s = ((1.0 / wavelength) * l as f32 - low as f32) / (high - low) as f32;
                    (1.0 - s) * kept / factor as f32 + s * kept
                } else {
                    kept
                }
            }
            RopeScaling::Yarn { factor, .. } => {
                let freq = powf(base as f32, exponent);
                let extrapolation = 1.0 / freq;
                let interpolation = 1.0 / (factor as f32 * freq);
                let (lo, hi) = self.range;
                let ramp = ((i as f32 - lo as f32) / (hi - lo) as f32).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                interpolation * (1.0 - keep) + extrapolation * keep
            }
            RopeScaling::None => default(base as f32),
        }
    }
}

/// `x^y` in `f32` (computed in `f64`, rounded once).
fn powf(x: f32, y: f32) -> f32 {
    math::pow(f64::from(x), f64::from(y)) as f32
}

/// Rotary position embeddings (RoPE) for heads of `HEAD_DIM` features at positions
/// `0 .. MAX_POS`: each rotating pair of features `(a, b)` of a query or key at position `p`
/// becomes `a' = a·cos − b·sin`, `b' = b·cos + a·sin` with `cos = cos(p·θ'_i)·a_f` and
/// `sin = sin(p·θ'_i)·a_f`, as Hugging Face's `apply_rotary_pos_emb` computes.
///
/// - The pairs: the first `rotary_dim` features of each head (all `HEAD_DIM` unless partial
///   rotary, [`RopeConfig::with_rotary_dim`]) in `rotary_dim/2` pairs chosen by
///   [`RopeStyle`]; the features from `rotary_dim` on are left unchanged.
/// - The frequencies: `θ_i = base^(−2i/rotary_dim)` for `i < rotary_dim/2`, rescaled to `θ'_i`
///   by the [`RopeScaling`], which also sets the attention factor `a_f` (1 except for YaRN).
/// - The arithmetic: [`RopePrecision::Exact`] (`f64`, rounded once) or
///   [`RopePrecision::HuggingFace`] (transformers' `float32` steps).
///
/// The table holds the cos and sin of every position (`MAX_POS · HEAD_DIM` scalars, about
/// [`Rope::BYTES`]), computed when the `Rope` is built, with no `std` and no heap; build it
/// once and share it between layers. For long tables build one in place with
/// [`Rope::rebuild`]. A zeroed `Rope` (`bytemuck::Zeroable`, [`crate::heap::zeroed`]) is a
/// valid value: base 0, [`RopeStyle::Interleaved`], every pair with `cos = sin = 0` (it zeroes
/// what it rotates) until it is rebuilt.
///
/// Build errors: an odd or zero `HEAD_DIM`, or `MAX_POS = 0`, fail to compile; a bad
/// [`RopeConfig`] is a [`RopeError`].
///
/// ```
/// use static_attention::positions::{Rope, RopeStyle};
/// use static_attention::SMatrix;
///
/// let rope = Rope::<4, 16>::new(10_000.0, RopeStyle::RotateHalf)?;
/// let mut x = SMatrix::<f32, 2, 4>::repeat(1.0);
/// rope.rotate(&mut x, 3)?; // tokens at positions 3 and 4
/// // A rotation keeps each pair's length.
/// assert!((x[(0, 0)].powi(2) + x[(0, 2)].powi(2) - 2.0).abs() < 1e-6);
/// assert!(rope.rotate(&mut x, 15).is_err()); // position 16 is past the table
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub struct Rope<const HEAD_DIM: usize, const MAX_POS: usize, T = f32> {
    /// Row `p`: `cos(p·θ'_i)·a_f` for `i < rotary_dim/2`, then zeros up to `HEAD_DIM/2`,
    /// then `sin(p·θ'_i)·a_f` from column `HEAD_DIM/2` on, then zeros.
    table: [[T; HEAD_DIM]; MAX_POS],
    base: f64,
    /// The scaling's `f64` fields: `factor`, then the others in declaration order
    /// (YaRN's `attention_factor` last).
    scaling_values: [f64; 6],
    /// `original_max_position_embeddings`.
    original: usize,
    /// The configured rotary width; 0 for `None` (the head width).
    rotary_dim: usize,
    /// 0 none, 1 linear, 2 dynamic, 3 llama3, 4 yarn.
    scaling_kind: u8,
    /// [`RopeStyle::RotateHalf`] (the fields are plain numbers and flags so that the all-zero
    /// value is valid).
    rotate_half: bool,
    /// [`RopePrecision::HuggingFace`].
    hugging_face: bool,
    /// YaRN's `truncate`.
    truncate: bool,
    /// YaRN's `attention_factor` is set.
    attention_factor_set: bool,
}

impl<const HEAD_DIM: usize, const MAX_POS: usize, T: Float> Rope<HEAD_DIM, MAX_POS, T> {
    const SHAPE_OK: () = {
        assert!(
            HEAD_DIM > 0 && HEAD_DIM.is_multiple_of(2),
            "HEAD_DIM must be even and at least 2: RoPE rotates pairs of features"
        );
        assert!(
            MAX_POS > 0,
            "MAX_POS must be at least 1: the rotary table needs a position"
        );
    };

    /// Bytes of a `Rope` (its table and its configuration).
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// The table for `base` (10 000 for Llama 2, 500 000 for Llama 3, 1 000 000 for Qwen2)
    /// and `style`, unscaled, every feature rotating, [`RopePrecision::Exact`], by value:
    /// `MAX_POS · HEAD_DIM` scalars on the stack. [`Rope::from_config`] with
    /// [`RopeConfig::new`]`(base, style)`.
    ///
    /// # Errors
    /// [`RopeError::Base`] unless `base` is finite and positive.
    pub fn new(base: f64, style: RopeStyle) -> Result<Self, RopeError> {
        let () = Self::SHAPE_OK;
        Self::build(&RopeConfig::new(base, style))
    }

    /// The table `config` describes, by value (`MAX_POS · HEAD_DIM` scalars on the stack; for
    /// long tables use [`Rope::rebuild`] on a heap or `static` one).
    ///
    /// # Errors
    /// [`RopeError`] if `config` breaks a rule: the base ([`RopeError::Base`]), a scaling
    /// field ([`RopeError::Scaling`]), the rotary width ([`RopeError::RotaryDim`]).
    ///
    /// ```
    /// use static_attention::positions::{Rope, RopeConfig, RopeError, RopeScaling, RopeStyle};
    ///
    /// // StableLM-style partial rotary: 8 of 32 features rotate.
    /// let config = RopeConfig::new(10_000.0, RopeStyle::RotateHalf).with_rotary_dim(8);
    /// let rope = Rope::<32, 64>::from_config(&config)?;
    /// assert_eq!(rope.rotary_dim(), 8);
    /// assert_eq!(rope.cos_sin(5, 4), None); // only 4 pairs rotate
    ///
    /// let bad = config.with_scaling(RopeScaling::linear(0.0));
    /// assert!(matches!(
    ///     Rope::<32, 64>::from_config(&bad),
    ///     Err(RopeError::Scaling { field: "factor", .. })
    /// ));
    /// # Ok::<(), RopeError>(())
    /// ```
    pub fn from_config(config: &RopeConfig) -> Result<Self, RopeError> {
        let () = Self::SHAPE_OK;
        Self::build(config)
    }

    /// [`Rope::from_config`] (the shape already checked).
    fn build(config: &RopeConfig) -> Result<Self, RopeError> {
        validate(config, HEAD_DIM)?;
        let mut rope = <Self as bytemuck::Zeroable>::zeroed();
        rope.set(config)?;
        Ok(rope)
    }

    /// Recomputes the table in place for `config`: the in-place form of
    /// [`Rope::from_config`], for a table on the heap ([`crate::heap::zeroed`] allocates a
    /// zeroed one) or in a `static`.
    ///
    /// # Errors
    /// [`RopeError`] as [`Rope::from_config`]; the `Rope` is unchanged then.
    ///
    /// ```
    /// use static_attention::heap;
    /// use static_attention::positions::{Rope, RopeConfig, RopeStyle};
    ///
    /// let mut rope: Box<Rope<128, 32_768>> = heap::zeroed(); // 16 MiB, never on the stack
    /// rope.rebuild(&RopeConfig::new(500_000.0, RopeStyle::RotateHalf))?;
    /// assert_eq!(rope.cos_sin(0, 0), Some((1.0, 0.0)));
    /// # Ok::<(), static_attention::positions::RopeError>(())
    /// ```
    pub fn rebuild(&mut self, config: &RopeConfig) -> Result<(), RopeError> {
        let () = Self::SHAPE_OK;
        self.set(config)
    }

    /// [`Rope::rebuild`] (the shape already checked).
    fn set(&mut self, config: &RopeConfig) -> Result<(), RopeError> {
        let width = validate(config, HEAD_DIM)?;
        self.store(config);
        self.fill(Frequencies::new(*config, width));
        Ok(())
    }

    /// Records `config` in the plain fields.
    fn store(&mut self, config: &RopeConfig) {
        self.base = config.base;
        self.rotate_half = config.style == RopeStyle::RotateHalf;
        self.hugging_face = config.precision == RopePrecision::HuggingFace;
        self.rotary_dim = config.rotary_dim.unwrap_or(0);
        self.truncate = false;
        self.attention_factor_set = false;
        self.original = 0;
        self.scaling_values = [0.0; 6];
        self.scaling_kind = match config.scaling {
            RopeScaling::None => 0,
            RopeScaling::Linear { factor } => {
                self.scaling_values[0] = factor;
                1
            }
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                self.scaling_values[0] = factor;
                self.original = original_max_position_embeddings;
                2
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                self.scaling_values[..3].copy_from_slice(&[
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                ]);
                self.original = original_max_position_embeddings;
                3
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                self.scaling_values = [
                    factor,
                    beta_fast,
                    beta_slow,
                    mscale,
                    mscale_all_dim,
                    attention_factor.unwrap_or(0.0),
                ];
                self.attention_factor_set = attention_factor.is_some();
                self.truncate = truncate;
                self.original = original_max_position_embeddings;
                4
            }
        };
    }

    /// Computes every row.
    fn fill(&mut self, freqs: Frequencies) {
        let half = HEAD_DIM / 2;
        let pairs = freqs.width / 2;
        let attention = freqs.config.scaling.attention_factor();
        let hugging_face = freqs.config.precision == RopePrecision::HuggingFace;
        let dynamic_from = freqs.dynamic_from();
        for row in &mut self.table {
            *row = [T::ZERO; HEAD_DIM];
        }
        for i in 0..pairs {
            let fixed = freqs.inv_freq(i, 0);
            for (p, row) in self.table.iter_mut().enumerate() {
                let theta = match dynamic_from {
                    Some(l) if p >= l => freqs.inv_freq(i, p + 1),
                    _ => fixed,
                };
                let (c, s) = if hugging_face {
                    let angle = f64::from(p as f32 * theta as f32);
                    let a = attention as f32;
                    (
                        f64::from(math::cos(angle) as f32 * a),
                        f64::from(math::sin(angle) as f32 * a),
                    )
                } else {
                    let angle = p as f64 * theta;
                    (math::cos(angle) * attention, math::sin(angle) * attention)
                };
                row[i] = T::of(c);
                row[half + i] = T::of(s);
            }
        }
    }

    /// The configuration the table was built from (a zeroed `Rope`'s: base 0,
    /// [`RopeStyle::Interleaved`], no scaling, `rotary_dim: None`, [`RopePrecision::Exact`]).
    #[must_use]
    pub fn config(&self) -> RopeConfig {
        let [a, b, c, d, e, f] = self.scaling_values;
        let original_max_position_embeddings = self.original;
        let scaling = match self.scaling_kind {
            1 => RopeScaling::Linear { factor: a },
            2 => RopeScaling::Dynamic {
                factor: a,
                original_max_position_embeddings,
            },
            3 => RopeScaling::Llama3 {
                factor: a,
                low_freq_factor: b,
                high_freq_factor: c,
                original_max_position_embeddings,
            },
            4 => RopeScaling::Yarn {
                factor: a,
                original_max_position_embeddings,
                beta_fast: b,
                beta_slow: c,
                mscale: d,
                mscale_all_dim: e,
                attention_factor: if self.attention_factor_set {
                    Some(f)
                } else {
                    None
                },
                truncate: self.truncate,
            },
            _ => RopeScaling::None,
        };
        RopeConfig {
            base: self.base,
            style: self.style(),
            scaling,
            rotary_dim: if self.rotary_dim == 0 {
                None
            } else {
                Some(self.rotary_dim)
            },
            precision: if self.hugging_face {
                RopePrecision::HuggingFace
            } else {
                RopePrecision::Exact
            },
        }
    }

    /// The base of the frequencies.
    #[must_use]
    pub const fn base(&self) -> f64 {
        self.base
    }

    /// The pairing.
    #[must_use]
    pub const fn style(&self) -> RopeStyle {
        if self.rotate_half {
            RopeStyle::RotateHalf
        } else {
            RopeStyle::Interleaved
        }
    }

    /// How many leading features of each head rotate (`HEAD_DIM` unless partial rotary).
    #[must_use]
    pub const fn rotary_dim(&self) -> usize {
        if self.rotary_dim == 0 {
            HEAD_DIM
        } else {
            self.rotary_dim
        }
    }

    /// The table's `cos(p·θ'_i)·a_f` and `sin(p·θ'_i)·a_f` for position `p` and pair `i`, or
    /// `None` past the table (`p ≥ MAX_POS`) or past the rotating pairs
    /// (`i ≥ rotary_dim/2`).
    #[must_use]
    pub fn cos_sin(&self, p: usize, i: usize) -> Option<(T, T)> {
        let row = self.table.get(p)?;
        (i < self.rotary_dim() / 2).then(|| (row[i], row[HEAD_DIM / 2 + i]))
    }

    /// Checks that positions `first .. first + count` are in the table.
    pub(crate) fn check(&self, first: usize, count: usize) -> Result<(), PositionError> {
        match first.checked_add(count) {
            Some(end) if end <= MAX_POS => Ok(()),
            _ => Err(PositionError {
                first,
                count,
                table: MAX_POS,
            }),
        }
    }

    /// Rotates `S` tokens (rows of `x`, one head of `HEAD_DIM` features) at positions
    /// `first .. first + S`.
    ///
    /// # Errors
    /// [`PositionError`] if a position is past the table; `x` is unchanged then.
    pub fn rotate<const S: usize>(
        &self,
        x: &mut SMatrix<T, S, HEAD_DIM>,
        first: usize,
    ) -> Result<(), PositionError> {
        self.check(first, S)?;
        self.rotate_heads(x.as_mut_slice(), S, 1, first);
        Ok(())
    }

    /// Rotates every head of a column-major `s × (heads·HEAD_DIM)` buffer (head `h` in columns
    /// `h·HEAD_DIM ..`), token `t` at position `first + t`. The positions must be in the table.
    pub(crate) fn rotate_heads(&self, buf: &mut [T], s: usize, heads: usize, first: usize) {
        debug_assert!(buf.len() >= s * heads * HEAD_DIM && first + s <= MAX_POS);
        let half = HEAD_DIM / 2;
        let pairs = self.rotary_dim() / 2;
        for h in 0..heads {
            let head = &mut buf[h * HEAD_DIM * s..(h + 1) * HEAD_DIM * s];
            for i in 0..pairs {
                // The pair's two feature columns.
                let (ca, cb) = if self.rotate_half {
                    (i, pairs + i)
                } else {
                    (2 * i, 2 * i + 1)
                };
                for t in 0..s {
                    let row = &self.table[first + t];
                    let (c, sn) = (row[i], row[half + i]);
                    let (a, b) = (head[t + ca * s], head[t + cb * s]);
                    head[t + ca * s] = a * c - b * sn;
                    head[t + cb * s] = b * c + a * sn;
                }
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How a decoder layer encodes positions (the `positions` argument of
/// [`crate::GroupedQuery`] and of the decoding entry points): [`NoPositions`], a [`Rope`]
/// table (rotating queries and keys, HEAD_DIM checked at build time), or an
/// [`Alibi`] (a bias in the kernel). Sealed.
pub trait PositionEncoding<T: Float>: sealed::Sealed {
    /// The head width it needs, 0 for any: a decoder layer whose heads have another width
    /// fails to build.
    const HEAD_DIM: usize;

    /// Whether tokens `first .. first + count` can be encoded: always, unless a table ends.
    ///
    /// # Errors
    /// [`PositionError`] past the end of a [`Rope`] table.
    fn check(&self, first: usize, count: usize) -> Result<(), PositionError> {
        let _ = (first, count);
        Ok(())
    }

    /// Rotates queries or keys in place: a column-major `s × (heads · HEAD_DIM)` buffer,
    /// token `t` at position `first + t` (checked). Nothing, unless it rotates.
    #[doc(hidden)]
    fn rotate(&self, buf: &mut [T], s: usize, heads: usize, first: usize) {
        let _ = (buf, s, heads, first);
    }

    /// The ALiBi part it adds to the scores, if any (none unless it is ALiBi).
    fn alibi(&self) -> Option<Alibi> {
        None
    }
}

/// No position information in the attention layer (the paper's layer: positions, if any, were
/// added to the embeddings, as [`sinusoidal`] does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoPositions;

impl sealed::Sealed for NoPositions {}
impl<T: Float> PositionEncoding<T> for NoPositions {
    const HEAD_DIM: usize = 0;
}

impl<const HEAD_DIM: usize, const MAX_POS: usize, T> sealed::Sealed for Rope<HEAD_DIM, MAX_POS, T> {}
impl<const HD: usize, const MAX_POS: usize, T: Float> PositionEncoding<T> for Rope<HD, MAX_POS, T> {
    const HEAD_DIM: usize = HD;
    fn check(&self, first: usize, count: usize) -> Result<(), PositionError> {
        Rope::check(self, first, count)
    }
    fn rotate(&self, buf: &mut [T], s: usize, heads: usize, first: usize) {
        self.rotate_heads(buf, s, heads, first);
    }
}

impl sealed::Sealed for Alibi {}
impl<T: Float> PositionEncoding<T> for Alibi {
    const HEAD_DIM: usize = 0;
    fn alibi(&self) -> Option<Alibi> {
        Some(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yarn_correction_range_follows_hf() {
        // d = 32, base 10 000, L = 32, β = 32 and 1: c(β) = 32·ln(32/(2πβ)) / (2·ln 10 000).
        let c = |beta: f64| {
            32.0 * (32.0 / (beta * 2.0 * core::f64::consts::PI)).ln() / (2.0 * 10_000f64.ln())
        };
        assert_eq!(
            yarn_range(10_000.0, 32, 32, 32.0, 1.0, true),
            (0.0, c(1.0).ceil())
        );
        assert_eq!(
            yarn_range(10_000.0, 32, 32, 32.0, 1.0, false),
            (0.0, c(1.0))
        );
        // A long context: both ends inside, truncated outwards.
        let (lo, hi) = yarn_range(10_000.0, 64, 4096, 32.0, 1.0, true);
        let c = |beta: f64| {
            64.0 * (4096.0 / (beta * 2.0 * core::f64::consts::PI)).ln() / (2.0 * 10_000f64.ln())
        };
        assert_eq!((lo, hi), (c(32.0).floor(), c(1.0).ceil()));
        // Clamped to d − 1, and an empty range widened by 0.001.
        assert_eq!(yarn_range(10.0, 8, 1 << 20, 2.0, 1.0, true).1, 7.0);
        let (lo, hi) = yarn_range(10_000.0, 8, 1, 32.0, 1.0, true);
        assert_eq!((lo, hi), (0.0, 0.001));
    }

    #[test]
    fn yarn_attention_factor_follows_hf() {
        assert_eq!(yarn_mscale(1.0, 5.0), 1.0);
        assert_eq!(yarn_mscale(0.5, 5.0), 1.0);
        assert!((yarn_mscale(8.0, 1.0) - (0.1 * 8f64.ln() + 1.0)).abs() < 1e-15);
        let deepseek = RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
            attention_factor: None,
            truncate: true,
        };
        assert_eq!(deepseek.attention_factor(), 1.0);
        assert_eq!(RopeScaling::linear(4.0).attention_factor(), 1.0);
    }

    #[test]
    fn hugging_face_frequencies_are_f32_steps() {
        let config = RopeConfig::new(10_000.0, RopeStyle::RotateHalf)
            .with_precision(RopePrecision::HuggingFace);
        let freqs = Frequencies::new(config, 8);
        for i in 0..4 {
            let e = (2 * i) as f32 / 8.0;
            let want = 1.0 / (pow_f32(10_000.0, e));
            assert_eq!(freqs.inv_freq(i, 0), f64::from(want));
        }
        // The float32 values differ from the exact ones by rounding only.
        let exact = Frequencies::new(config.with_precision(RopePrecision::Exact), 8);
        for i in 0..4 {
            let (a, b) = (freqs.inv_freq(i, 0), exact.inv_freq(i, 0));
            assert!((a - b).abs() <= b * 1e-7, "{i}: {a} {b}");
        }
    }

    /// `x^y` rounded to `f32`, through `f64` like [`powf`].
    fn pow_f32(x: f32, y: f32) -> f32 {
        math::pow(f64::from(x), f64::from(y)) as f32
    }

    #[test]
    fn validation_reports_the_width_first() {
        let bad = RopeConfig::new(f64::NAN, RopeStyle::RotateHalf).with_rotary_dim(3);
        assert_eq!(
            validate(&bad, 8),
            Err(RopeError::RotaryDim {
                rotary_dim: 3,
                head_dim: 8
            })
        );
        assert_eq!(
            validate(&bad.with_rotary_dim(6), 8).map_err(|_| ()),
            Err(())
        );
        let ok = RopeConfig::new(10.0, RopeStyle::Interleaved);
        assert_eq!(validate(&ok, 8), Ok(8));
        assert_eq!(validate(&ok.with_rotary_dim(4), 8), Ok(4));
    }
}
