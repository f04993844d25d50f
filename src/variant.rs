//! How a decoder layer's attention departs from the paper's: the choices today's open models
//! make inside attention, kept by a [`crate::GroupedQuery`] beside its projections.
//!
//! | choice | model families | what it does |
//! |---|---|---|
//! | [`QkNorm::PerHead`] | Qwen3 | RMSNorm over each head's `HEAD_DIM` query and key features, one weight vector shared by the heads, before RoPE |
//! | [`QkNorm::Full`] | OLMo 2 | RMSNorm over the whole projected queries (`Q_DIM`) and keys (`KV_DIM`), before the head split and RoPE |
//! | [`Variant::scale`] | Gemma 2 (`query_pre_attn_scalar^−½`) | the score scale, instead of `1/√HEAD_DIM` |
//! | [`Variant::softcap`] | Gemma 2 (`attn_logit_softcapping`) | each scaled score `z` becomes `c·tanh(z/c)`, before the mask |
//! | [`Variant::sinks`] | gpt-oss | one learned logit per query head joins every softmax denominator and carries no value |
//! | [`Variant::sliding_window`] | Mistral, Gemma 2, gpt-oss sliding layers | each query sees its own position and the `window − 1` before it |
//!
//! RMSNorm is `y = x / √(mean(x²) + ε) · w` (mean over the normalised features, `w` the
//! norm's weights), Hugging Face's `Qwen3RMSNorm` and `Olmo2RMSNorm`.
//!
//! With sinks, row `i`'s attention weights are `exp(z_ij − m) / (exp(s_h − m) + Σ_j
//! exp(z_ij − m))`: they sum to `1 − exp(s_h − m) / (…)`, the share the sink took, and a row
//! with every key masked gives zeros.

use crate::Float;

/// RMSNorm on queries and keys before the rotary embedding.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum QkNorm {
    /// No normalisation (Llama, Mistral, Qwen2, Gemma 2, gpt-oss).
    #[default]
    None,
    /// Each head's `HEAD_DIM` features, with one `HEAD_DIM` weight vector for all query
    /// heads (`q_norm.weight`) and one for all kv heads (`k_norm.weight`): Qwen3.
    PerHead {
        /// The ε added to the mean square (`rms_norm_eps`).
        eps: f64,
    },
    /// All `Q_DIM` query features (`q_norm.weight` of `Q_DIM`) and all `KV_DIM` key features
    /// (`k_norm.weight` of `KV_DIM`) of a token: OLMo 2.
    Full {
        /// The ε added to the mean square (`rms_norm_eps`).
        eps: f64,
    },
}

/// The attention variant a [`crate::GroupedQuery`] runs (see the [module docs](self)). The
/// default, [`Variant::PLAIN`], is the paper's attention: no norm, scale `1/√HEAD_DIM`, no
/// cap, no sinks, no window.
///
/// ```
/// use static_attention::variant::{QkNorm, Variant};
///
/// // Gemma 2's sliding layers.
/// let gemma = Variant::PLAIN
///     .with_scale(1.0 / 16.0)
///     .with_softcap(50.0)
///     .with_sliding_window(4096);
/// assert!(gemma.check().is_ok());
/// assert!(Variant::PLAIN.with_softcap(-1.0).check().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Variant {
    /// RMSNorm on queries and keys.
    pub qk_norm: QkNorm,
    /// The score scale; `None` for `1/√HEAD_DIM`.
    pub scale: Option<f64>,
    /// Soft-capping of the scaled scores, `c·tanh(z/c)`, applied before the mask.
    pub softcap: Option<f64>,
    /// Whether each query head has a sink logit ([`crate::GroupedQuery::sinks`]).
    pub sinks: bool,
    /// A sliding window of this many keys (the query's own included).
    pub sliding_window: Option<usize>,
}

/// A [`Variant`] value no layer can run, naming the field.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum VariantError {
    /// The scale is not finite and positive.
    Scale(f64),
    /// The soft-cap is not finite and positive.
    Softcap(f64),
    /// The norm's ε is not finite and non-negative.
    NormEps(f64),
    /// A sliding window of 0 keys.
    EmptyWindow,
}

impl core::fmt::Display for VariantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VariantError::Scale(x) => write!(f, "scale {x} is not a finite positive number"),
            VariantError::Softcap(x) => {
                write!(f, "softcap {x} is not a finite positive number")
            }
            VariantError::NormEps(x) => {
                write!(f, "rms_norm_eps {x} is not a finite non-negative number")
            }
            VariantError::EmptyWindow => write!(f, "a sliding window of 0 keys sees nothing"),
        }
    }
}

impl core::error::Error for VariantError {}

impl Variant {
    /// The paper's attention.
    pub const PLAIN: Self = Self {
        qk_norm: QkNorm::None,
        scale: None,
        softcap: None,
        sinks: false,
        sliding_window: None,
    };

    /// With RMSNorm on queries and keys.
    #[must_use]
    pub const fn with_qk_norm(mut self, norm: QkNorm) -> Self {
        self.qk_norm = norm;
        self
    }

    /// With the score scale `scale` instead of `1/√HEAD_DIM`.
    #[must_use]
    pub const fn with_scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// With soft-capping at `cap`.
    #[must_use]
    pub const fn with_softcap(mut self, cap: f64) -> Self {
        self.softcap = Some(cap);
        self
    }

    /// With a sink logit per query head.
    #[must_use]
    pub const fn with_sinks(mut self) -> Self {
        self.sinks = true;
        self
    }

    /// With a sliding window of `window` keys.
    #[must_use]
    pub const fn with_sliding_window(mut self, window: usize) -> Self {
        self.sliding_window = Some(window);
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first [`VariantError`]: a scale or cap not finite and positive, an ε not finite
    /// and non-negative, a window of 0.
    pub fn check(&self) -> Result<(), VariantError> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if let Some(s) = self.scale
            && !positive(s)
        {
            return Err(VariantError::Scale(s));
        }
        if let Some(c) = self.softcap
            && !positive(c)
        {
            return Err(VariantError::Softcap(c));
        }
        if let QkNorm::PerHead { eps } | QkNorm::Full { eps } = self.qk_norm
            && !(eps.is_finite() && eps >= 0.0)
        {
            return Err(VariantError::NormEps(eps));
        }
        if self.sliding_window == Some(0) {
            return Err(VariantError::EmptyWindow);
        }
        Ok(())
    }
}

/// What a [`crate::GroupedQuery`] stores of its variant: the norms' and sinks' parameters and
/// the choices, encoded so that all zeros is [`Variant::PLAIN`] (a zeroed layer is a plain
/// one).
#[derive(Clone, Debug, PartialEq, bytemuck::Zeroable)]
#[repr(C)]
#[zeroable(bound = "T: crate::Float")]
pub(crate) struct Extras<const HEADS: usize, const Q_DIM: usize, const KV_DIM: usize, T> {
    /// `q_norm.weight`: the first `HEAD_DIM` for [`QkNorm::PerHead`], all for [`QkNorm::Full`].
    pub q_norm: [T; Q_DIM],
    /// `k_norm.weight`, likewise.
    pub k_norm: [T; KV_DIM],
    /// The sink logit of each query head.
    pub sinks: [T; HEADS],
    /// 0: no norm, 1: per head, 2: full width.
    norm: u8,
    has_sinks: bool,
    eps: f64,
    /// 0 for the default.
    scale: f64,
    /// 0 for none.
    softcap: f64,
    /// 0 for none.
    window: usize,
}

impl<const HEADS: usize, const Q_DIM: usize, const KV_DIM: usize, T: Float>
    Extras<HEADS, Q_DIM, KV_DIM, T>
{
    /// A plain layer's: no variant, unit norm weights, zero sinks.
    pub(crate) const fn plain() -> Self {
        Self {
            q_norm: [T::ONE; Q_DIM],
            k_norm: [T::ONE; KV_DIM],
            sinks: [T::ZERO; HEADS],
            norm: 0,
            has_sinks: false,
            eps: 0.0,
            scale: 0.0,
            softcap: 0.0,
            window: 0,
        }
    }

    /// The variant.
    pub(crate) fn variant(&self) -> Variant {
        Variant {
            qk_norm: match self.norm {
                1 => QkNorm::PerHead { eps: self.eps },
                2 => QkNorm::Full { eps: self.eps },
                _ => QkNorm::None,
            },
            scale: (self.scale != 0.0).then_some(self.scale),
            softcap: (self.softcap != 0.0).then_some(self.softcap),
            sinks: self.has_sinks,
            sliding_window: (self.window != 0).then_some(self.window),
        }
    }

    /// Sets the variant (checked by the caller), keeping the parameters.
    pub(crate) fn set(&mut self, v: &Variant) {
        (self.norm, self.eps) = match v.qk_norm {
            QkNorm::None => (0, 0.0),
            QkNorm::PerHead { eps } => (1, eps),
            QkNorm::Full { eps } => (2, eps),
        };
        self.has_sinks = v.sinks;
        self.scale = v.scale.unwrap_or(0.0);
        self.softcap = v.softcap.unwrap_or(0.0);
        self.window = v.sliding_window.unwrap_or(0);
    }

    /// The variant as the core runs it, for heads of `head_dim` features.
    pub(crate) fn tweaks<'a>(&'a self, head_dim: usize) -> Tweaks<'a, T> {
        let eps = T::of(self.eps);
        let norm = |w: &'a [T], full: usize| match self.norm {
            1 => Some(Norm {
                weight: &w[..head_dim],
                width: head_dim,
                eps,
            }),
            2 => Some(Norm {
                weight: w,
                width: full,
                eps,
            }),
            _ => None,
        };
        Tweaks {
            q_norm: norm(&self.q_norm, Q_DIM),
            k_norm: norm(&self.k_norm, KV_DIM),
            scale: (self.scale != 0.0).then(|| T::of(self.scale)),
            softcap: (self.softcap != 0.0).then(|| T::of(self.softcap)),
            sinks: self.has_sinks.then_some(&self.sinks[..]),
            window: (self.window != 0).then_some(self.window),
        }
    }
}

/// An RMSNorm as the core applies it: over groups of `width` features of each token, each
/// group scaled by `weight` (`width` values).
#[derive(Clone, Copy)]
pub(crate) struct Norm<'a, T> {
    pub weight: &'a [T],
    pub width: usize,
    pub eps: T,
}

impl<T: Float> Norm<'_, T> {
    /// Normalises a column-major `s × cols` buffer in place: each token's features in groups
    /// of `width` columns (`cols` a multiple of it).
    ///
    /// Tokens go in blocks of [`NORM_BLOCK`], each column of a block read contiguously (a
    /// column-major buffer puts a token's features `s` apart); every token's sum of squares
    /// still adds its features in order, so the result does not depend on the blocking.
    pub(crate) fn apply(&self, buf: &mut [T], s: usize, cols: usize) {
        let w = self.width;
        let weight = &self.weight[..w];
        let width = T::of(w as f64);
        let mut acc = [T::ZERO; NORM_BLOCK];
        for g in 0..cols / w {
            let group = &mut buf[g * w * s..(g + 1) * w * s];
            let mut t0 = 0;
            while t0 < s {
                let n = NORM_BLOCK.min(s - t0);
                let acc = &mut acc[..n];
                acc.fill(T::ZERO);
                for c in 0..w {
                    let col = &group[c * s + t0..c * s + t0 + n];
                    for (a, &x) in acc.iter_mut().zip(col) {
                        *a += x * x;
                    }
                }
                // Each token's `1 / √(mean square + eps)`, in place of its sum.
                for a in acc.iter_mut() {
                    *a = T::ONE / (*a / width + self.eps).sqrt_();
                }
                for (c, &wc) in weight.iter().enumerate() {
                    let col = &mut group[c * s + t0..c * s + t0 + n];
                    for (x, &inv) in col.iter_mut().zip(acc.iter()) {
                        *x = *x * inv * wc;
                    }
                }
                t0 += n;
            }
        }
    }
}

/// Tokens per block of [`Norm::apply`].
const NORM_BLOCK: usize = 32;

/// A layer's variant, borrowed for one call: what the core does besides the paper's
/// attention. [`Tweaks::PLAIN`] does nothing.
#[derive(Clone, Copy)]
pub(crate) struct Tweaks<'a, T> {
    pub q_norm: Option<Norm<'a, T>>,
    pub k_norm: Option<Norm<'a, T>>,
    pub scale: Option<T>,
    pub softcap: Option<T>,
    pub sinks: Option<&'a [T]>,
    pub window: Option<usize>,
}

impl<T> Tweaks<'_, T> {
    /// The paper's attention.
    pub(crate) const PLAIN: Self = Self {
        q_norm: None,
        k_norm: None,
        scale: None,
        softcap: None,
        sinks: None,
        window: None,
    };
}
