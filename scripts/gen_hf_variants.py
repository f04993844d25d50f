#!/usr/bin/env python3
"""Writes the Hugging Face attention-variant reference files in tests/hf/variants/: one decoder
attention module per file, covering the RoPE scalings (llama3, linear, dynamic NTK, YaRN),
per-head and full-width q/k RMSNorm (Qwen3, OLMo2), logit soft-capping and a query scale other
than head_dim (Gemma2), attention sinks with biases everywhere (gpt-oss), sliding-window layers
(Gemma2, gpt-oss) and partial rotary (StableLM).

Each case builds a small config (random weights from a fixed seed, no hub download),
instantiates the attention module directly (e.g. Qwen3Attention(config, layer_idx)) in eager
mode and float32, and gives it the family's own rotary module built from the same config. It
runs a prompt of P tokens, then N one-token decode steps, with transformers' DynamicCache(config=
config), the way the model's forward does: position_ids = arange(first, first + s), the rotary
module called on them (the same instance throughout, so dynamic NTK updates as it does in the
model), the mask made by transformers' own create_causal_mask / create_sliding_window_causal_mask
for the layer before the layer updates the cache (checked equal to a mask built here from
positions: key may be seen if key_pos <= query_pos and, on a sliding layer, key_pos > query_pos -
sliding_window).

Each file holds:
  - the module's state_dict under Hugging Face's names, no prefix: q_proj.weight, k_proj.weight,
    v_proj.weight, o_proj.weight, the .bias of each where the family has it, q_norm.weight and
    k_norm.weight (Qwen3: [HEAD_DIM]; OLMo2: [HEADS*HEAD_DIM] and [KV_HEADS*HEAD_DIM]), sinks
    [HEADS] (gpt-oss);
  - input.prompt [P, DIM] and input.step [N, DIM] (float32);
  - output.prompt [P, DIM] and output.step [N, DIM]: the module's float32 outputs;
  - weights.prompt [HEADS, P, P]: the eager attention weights of the prefill (on a sliding layer
    the keys outside the window are there with weight 0);
  - weights.step.{n} [HEADS, K_n] for n = 0..N-1 and weights.step.{n}.positions [K_n] (int64): the
    weights of decode step n over the keys the module attended to and those keys' absolute
    positions, column by column. On a full layer that is every position 0..P+n. On a sliding
    layer transformers' cache hands the layer the last sliding_window - 1 cached keys plus the
    new one, all inside the window, so K_n = sliding_window (any key the cache returned outside
    the window would be dropped here after checking its weight is 0);
  - cache.keys [KV_HEADS, L, HEAD_DIM] (after RoPE, and after k_norm where there is one) and
    cache.values: what transformers' cache holds for the layer after the last step, and
    cache.positions [L] (int64): the positions of those rows. A full layer holds every position
    0..P+N-1. A sliding layer (DynamicSlidingWindowLayer) holds only the last sliding_window - 1
    positions, P+N-sliding_window+1 .. P+N-1: the key that enters at the next step completes the
    window;
  - ref64.output.prompt [P, DIM], ref64.output.step [N, DIM], ref64.weights.prompt [HEADS, P, P]
    (float64): this script's own re-derivation of the layer, entirely in float64 (weights widened
    from the float32 values in the file; rotary frequencies, scalings and attention factors from
    the same formulas as transformers' modeling_rope_utils.py, in float64; RMSNorm in float64;
    softcap c*tanh(z/c) before the mask; the sink logit in the softmax denominator; sliding window
    key_pos > query_pos - window), over the whole sequence (prompt and steps, row t = token t)
    with the causal or sliding mask. Dynamic NTK rotates row p with the frequencies for seq_len =
    max(p + 1, max_position_embeddings), which is what transformers does when the prompt is no
    longer than max_position_embeddings and later tokens come one at a time. The script checks
    it against transformers' float32 outputs (max abs difference / max |output| < 2e-5), against
    every step's weights and against the cache contents, and stores the differences it measured;
  - metadata (strings): config (config.to_json_string(use_diff=False): the config.json
    transformers 5.25 writes, rope settings under rope_parameters), layer_idx, family, prompt,
    steps, dtype ("f32"), ref64_vs_hf (the measured differences).

Rerun (CI never needs it; the files are committed):

    python3 -m venv target/hf-venv
    target/hf-venv/bin/pip install torch transformers safetensors
    target/hf-venv/bin/python scripts/gen_hf_variants.py [case ...]

Written against transformers 5.25 and torch 2.15. With case names as arguments it writes only
those files.
"""

import json
import math
import os
import struct
import sys

import torch
from safetensors.torch import save_file
from transformers import (
    DynamicCache,
    Gemma2Config,
    GptOssConfig,
    LlamaConfig,
    Olmo2Config,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
)
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2RotaryEmbedding
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.olmo2.modeling_olmo2 import Olmo2Attention, Olmo2RotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding
from transformers.models.stablelm.modeling_stablelm import StableLmAttention, StableLmRotaryEmbedding

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hf", "variants")

FAMILIES = {
    "llama": (LlamaConfig, LlamaAttention, LlamaRotaryEmbedding),
    "qwen2": (Qwen2Config, Qwen2Attention, Qwen2RotaryEmbedding),
    "qwen3": (Qwen3Config, Qwen3Attention, Qwen3RotaryEmbedding),
    "olmo2": (Olmo2Config, Olmo2Attention, Olmo2RotaryEmbedding),
    "gemma2": (Gemma2Config, Gemma2Attention, Gemma2RotaryEmbedding),
    "gpt_oss": (GptOssConfig, GptOssAttention, GptOssRotaryEmbedding),
    "stablelm": (StableLmConfig, StableLmAttention, StableLmRotaryEmbedding),
}

# The case table. kwargs go to the config class as given; qk_scale multiplies the random q/k
# projection weights (Gemma2: large enough that the soft-cap bites).
CASES = {
    # Llama 3.1 RoPE. The high-frequency band (wavelength < original_max / high_freq_factor)
    # needs original_max > 4 * 2*pi (the shortest wavelength is 2*pi), so original_max is 64,
    # not 8: with head_dim 16 and theta 5e5 the wavelengths are 6.3 (kept), 32.4 (smoothed,
    # smooth factor 0.33) and 167.. (divided by 8). llama3 frequencies do not depend on the
    # position, so positions beyond original_max change nothing in transformers.
    "llama31": dict(family="llama", seed=11, kwargs=dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "llama_linear": dict(family="llama", seed=12, kwargs=dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    # Dynamic NTK: transformers takes the original length from max_position_embeddings (an
    # original_max_position_embeddings inside rope_parameters is an unrecognised key for
    # "dynamic" and is ignored), so max_position_embeddings is 8.
    "llama_dynamic": dict(family="llama", seed=13, steps=8, kwargs=dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=8,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    # YaRN with transformers' defaults (beta_fast 32, beta_slow 1, truncate, attention factor
    # 0.1 ln(factor) + 1). With original_max 8 the correction range is [0, ceil(16 ln(8/2pi) /
    # (2 ln theta))]: theta 2 makes it [0, 3], so dim 0 is extrapolated, dims 1-2 blended (1/3,
    # 2/3) and dims 3-7 interpolated; any theta above ~7 would leave no blended dim.
    "yarn": dict(family="qwen2", seed=14, kwargs=dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32,
        rope_parameters={"rope_type": "yarn", "rope_theta": 2.0, "factor": 4.0,
                         "original_max_position_embeddings": 8})),
    "qwen3": dict(family="qwen3", seed=15, kwargs=dict(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "olmo2": dict(family="olmo2", seed=16, kwargs=dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "gemma2_sliding": dict(family="gemma2", seed=17, layer_idx=0, qk_scale=1.5, kwargs=dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_hidden_layers=2, sliding_window=4, attn_logit_softcapping=2.0,
        query_pre_attn_scalar=24, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "gemma2_global": dict(family="gemma2", seed=18, layer_idx=1, qk_scale=1.5, kwargs=dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_hidden_layers=2, sliding_window=4, attn_logit_softcapping=2.0,
        query_pre_attn_scalar=24, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # gpt-oss's own rope settings (theta 150000, yarn factor 32, beta 32/1, no truncation) with
    # original_max 64 instead of 4096: the correction range is [0, 1.56], so dim 0 is
    # extrapolated, dim 1 blended (0.64) and dims 2-7 interpolated.
    "gpt_oss_sliding": dict(family="gpt_oss", seed=19, layer_idx=0, kwargs=dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_hidden_layers=2, sliding_window=4, max_position_embeddings=2048,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 64})),
    "gpt_oss_full": dict(family="gpt_oss", seed=20, layer_idx=1, kwargs=dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_hidden_layers=2, sliding_window=4, max_position_embeddings=2048,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 64})),
    "stablelm_partial": dict(family="stablelm", seed=21, kwargs=dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        partial_rotary_factor=0.25, use_qkv_bias=True, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
}


def build(spec):
    config_cls, attn_cls, rope_cls = FAMILIES[spec["family"]]
    kwargs = dict(num_hidden_layers=1)
    kwargs.update(spec["kwargs"])
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    layer_idx = spec.get("layer_idx", 0)
    attn = attn_cls(config, layer_idx=layer_idx).eval()
    # Random weights of a chosen scale (nn.Linear's default init gives near-uniform attention):
    # x ~ N(0, 1) and W ~ N(0, 1/in) give q, k, v entries ~ N(0, 1).
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.endswith("proj.weight"):
                scale = spec.get("qk_scale", 1.0) if name[0] in "qk" else 1.0
                p.copy_(torch.randn(p.shape) * scale / math.sqrt(p.shape[1]))
            elif name.endswith("proj.bias"):
                p.copy_(torch.randn(p.shape) * 0.3)
            elif name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape))
            elif name == "sinks":
                p.copy_(torch.randn(p.shape) * 1.5 + 0.5)
            else:
                raise ValueError(f"unexpected parameter {name}")
    return config, attn, rope_cls(config), layer_idx


def is_sliding(config, layer_idx):
    types = getattr(config, "layer_types", None)
    return types is not None and types[layer_idx] == "sliding_attention"


def own_mask(q_pos, k_pos, window):
    """[1, 1, s, K] additive mask from positions, as eager attention wants it."""
    q = torch.tensor(q_pos)[:, None]
    k = torch.tensor(k_pos)[None, :]
    ok = k <= q
    if window is not None:
        ok &= k > q - window
    m = torch.where(ok, 0.0, torch.finfo(torch.float32).min)
    return m[None, None]


def run_hf(config, attn, rope, layer_idx, x_all, prompt, steps):
    """The prompt, then the steps one token at a time, as the model's forward runs the layer."""
    cache = DynamicCache(config=config)
    sliding = is_sliding(config, layer_idx)
    window = config.sliding_window if sliding else None
    make_mask = create_sliding_window_causal_mask if sliding else create_causal_mask
    outs, weights, key_positions = [], [], []
    first = 0
    for x in [x_all[:prompt]] + [x_all[prompt + n: prompt + n + 1] for n in range(steps)]:
        s = x.shape[0]
        pos = torch.arange(first, first + s)[None, :]
        with torch.inference_mode():
            mask = make_mask(config=config, inputs_embeds=x[None], attention_mask=None,
                             cache=cache, position_ids=pos, layer_idx=layer_idx)
            kv_len, kv_offset = cache.get_mask_sizes(s, layer_idx)
            k_pos = list(range(kv_offset, kv_offset + kv_len))
            mine = own_mask(list(range(first, first + s)), k_pos, window)
            assert mask.shape == mine.shape and torch.equal(mask, mine), "mask differs"
            cos, sin = rope(x[None], pos)
            out, w = attn(x[None], position_embeddings=(cos, sin), attention_mask=mask,
                          cache=cache, position_ids=pos)
        assert w.shape[-1] == len(k_pos), "cache returned an unexpected number of keys"
        outs.append(out[0])
        weights.append(w[0])
        key_positions.append(k_pos)
        first += s
    layer = cache.layers[layer_idx]
    held = layer.keys.shape[-2]
    cache_positions = list(range(first - held, first))
    return (torch.cat(outs, dim=0), weights, key_positions,
            layer.keys[0].clone(), layer.values[0].clone(), cache_positions)


# ---- the float64 re-derivation -------------------------------------------------------------

def rope_dims(config):
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    prf = config.rope_parameters.get("partial_rotary_factor", 1.0)
    return head_dim, int(head_dim * prf)


def inv_freq64(config, seq_len):
    """(inverse frequencies [rot/2], attention factor) in float64, after modeling_rope_utils."""
    rp = config.rope_parameters
    _, dim = rope_dims(config)
    base = float(rp["rope_theta"])
    kind = rp["rope_type"]
    idx = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv = 1.0 / base**idx
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / rp["factor"], 1.0
    if kind == "dynamic":
        factor, mpe = rp["factor"], config.max_position_embeddings
        seq_len = max(seq_len, mpe)
        b = base * ((factor * seq_len / mpe) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / b**idx, 1.0
    if kind == "llama3":
        factor, low, high = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        low_wl, high_wl = old / low, old / high
        wl = 2 * math.pi / inv
        out = torch.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return torch.where(medium, smoothed, out), 1.0
    if kind == "yarn":
        factor = rp["factor"]
        att = rp.get("attention_factor")
        if att is None:
            att = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
        beta_fast, beta_slow = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1
        old = rp["original_max_position_embeddings"]

        def corr(rot):
            return dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(base))

        lo, hi = corr(beta_fast), corr(beta_slow)
        if rp.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
        extra = 1 - ramp
        pos_freqs = base**idx
        inv = (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra
        return inv, att
    raise ValueError(kind)


def rms64(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def ref64(config, family, sd32, layer_idx, x_all):
    """The layer over the whole sequence in float64: (output [T, DIM], weights [H, T, T],
    keys [KV_HEADS, T, HEAD_DIM] after RoPE, values, largest |scaled score| the mask allows,
    taken before any soft-cap)."""
    sd = {k: v.double() for k, v in sd32.items()}
    x = x_all.double()
    t = x.shape[0]
    h, kvh = config.num_attention_heads, config.num_key_value_heads
    head_dim, rot = rope_dims(config)

    def lin(v, name):
        y = v @ sd[f"{name}.weight"].T
        return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y

    q, k, v = lin(x, "q_proj"), lin(x, "k_proj"), lin(x, "v_proj")
    if family == "olmo2":  # over the whole projection width
        q = rms64(q, sd["q_norm.weight"], config.rms_norm_eps)
        k = rms64(k, sd["k_norm.weight"], config.rms_norm_eps)
    q = q.view(t, h, head_dim).transpose(0, 1)
    k = k.view(t, kvh, head_dim).transpose(0, 1)
    v = v.view(t, kvh, head_dim).transpose(0, 1)
    if family == "qwen3":  # per head, width head_dim
        q = rms64(q, sd["q_norm.weight"], config.rms_norm_eps)
        k = rms64(k, sd["k_norm.weight"], config.rms_norm_eps)

    # Row p's angles; only dynamic NTK makes the frequencies depend on p.
    cos = torch.empty(t, rot // 2, dtype=torch.float64)
    sin = torch.empty(t, rot // 2, dtype=torch.float64)
    for p in range(t):
        inv, att = inv_freq64(config, p + 1)
        cos[p] = torch.cos(p * inv) * att
        sin[p] = torch.sin(p * inv) * att

    def rope(z):  # halves (non-interleaved) on the first `rot` dims, the rest passes through
        a, b, rest = z[..., : rot // 2], z[..., rot // 2: rot], z[..., rot:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin, rest), dim=-1)

    q, k = rope(q), rope(k)
    g = h // kvh
    kk, vv = k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)
    scaling = (config.query_pre_attn_scalar if family == "gemma2" else head_dim) ** -0.5
    s = (q @ kk.transpose(1, 2)) * scaling
    pos = torch.arange(t)
    ok = pos[None, :] <= pos[:, None]
    if is_sliding(config, layer_idx):
        ok &= pos[None, :] > pos[:, None] - config.sliding_window
    top = s.masked_fill(~ok, 0.0).abs().max().item()
    cap = getattr(config, "attn_logit_softcapping", None) if family == "gemma2" else None
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    s = s.masked_fill(~ok, float("-inf"))
    if family == "gpt_oss":
        sink = sd["sinks"].view(h, 1, 1).expand(h, t, 1)
        w = torch.softmax(torch.cat((s, sink), dim=-1), dim=-1)[..., :-1]
    else:
        w = torch.softmax(s, dim=-1)
    o = (w @ vv).transpose(0, 1).reshape(t, h * head_dim)
    return lin(o, "o_proj"), w, k, v, top


# ---- one case ------------------------------------------------------------------------------

def case(name):
    spec = CASES[name]
    torch.manual_seed(spec["seed"])
    family = spec["family"]
    prompt, steps = spec.get("prompt", 6), spec.get("steps", 6)
    config, attn, rope, layer_idx = build(spec)
    dim = config.hidden_size
    x_all = torch.randn(prompt + steps, dim)

    out, weights, key_pos, keys, values, cache_pos = run_hf(config, attn, rope, layer_idx, x_all,
                                                            prompt, steps)
    sd32 = {k: v.detach().clone().contiguous() for k, v in attn.state_dict().items()}
    r_out, r_w, r_k, r_v, top = ref64(config, family, sd32, layer_idx, x_all)

    # The re-derivation against transformers: outputs, every weight row, the cache contents.
    scale = r_out.abs().max().item()
    d_out = (r_out - out.double()).abs().max().item()
    d_w = 0.0
    tensors = {}
    for n, (w, kp) in enumerate(zip(weights, key_pos)):
        w = w.double()
        rows = range(prompt) if n == 0 else [prompt + n - 1]
        ref_rows = r_w[:, list(rows)][:, :, kp]
        d_w = max(d_w, (ref_rows - w).abs().max().item())
        if n == 0:
            tensors["weights.prompt"] = weights[0].contiguous()
            continue
        row = weights[n][:, 0]
        q = prompt + n - 1
        inside = [j for j, p in enumerate(kp) if p <= q and (
            not is_sliding(config, layer_idx) or p > q - config.sliding_window)]
        outside = [j for j in range(len(kp)) if j not in inside]
        assert all(row[:, j].abs().max().item() == 0.0 for j in outside), "weight outside window"
        tensors[f"weights.step.{n - 1}"] = row[:, inside].contiguous()
        tensors[f"weights.step.{n - 1}.positions"] = torch.tensor([kp[j] for j in inside],
                                                                  dtype=torch.int64)
    d_cache = max((r_k[:, cache_pos] - keys.double()).abs().max().item(),
                  (r_v[:, cache_pos] - values.double()).abs().max().item())
    rel = d_out / scale
    assert rel < 2e-5, f"{name}: ref64 vs transformers output {d_out:e} (scale {scale:.3g})"
    assert d_w < 2e-5, f"{name}: ref64 vs transformers weights {d_w:e}"
    assert d_cache < 2e-5 * max(1.0, r_k.abs().max().item()), f"{name}: cache {d_cache:e}"

    tensors.update(sd32)
    tensors["input.prompt"] = x_all[:prompt].contiguous()
    tensors["input.step"] = x_all[prompt:].contiguous()
    tensors["output.prompt"] = out[:prompt].contiguous()
    tensors["output.step"] = out[prompt:].contiguous()
    tensors["cache.keys"] = keys.contiguous()
    tensors["cache.values"] = values.contiguous()
    tensors["cache.positions"] = torch.tensor(cache_pos, dtype=torch.int64)
    tensors["ref64.output.prompt"] = r_out[:prompt].contiguous()
    tensors["ref64.output.step"] = r_out[prompt:].contiguous()
    tensors["ref64.weights.prompt"] = r_w[:, :prompt, :prompt].contiguous()

    measured = (f"output max abs {d_out:.2e} (max |output| {scale:.3g}, relative {rel:.2e}); "
                f"weights max abs {d_w:.2e}; cache max abs {d_cache:.2e}")
    meta = {
        "config": config.to_json_string(use_diff=False),
        "layer_idx": str(layer_idx),
        "family": family,
        "prompt": str(prompt),
        "steps": str(steps),
        "dtype": "f32",
        "ref64_vs_hf": measured,
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.safetensors")
    save_sorted({k: v.detach().contiguous() for k, v in tensors.items()}, path, meta)
    extra = ""
    if family == "gemma2":
        extra = f", |scaled scores| up to {top:.2f} before the cap of {config.attn_logit_softcapping}"
    if family == "gpt_oss":
        sink_mass = 1 - r_w.sum(-1)
        extra = f", sink mass per row {sink_mass.min().item():.2f}..{sink_mass.max().item():.2f}"
    print(f"{name}: {os.path.getsize(path)} bytes, {family} layer {layer_idx}, P={prompt} N={steps}, "
          f"cache positions {cache_pos[0]}..{cache_pos[-1]}, ref64 vs hf {measured}{extra}")


def save_sorted(tensors, path, meta):
    """save_file, then the header's metadata put in key order: safetensors writes it from a hash
    map, in a different order each run, and a rerun should reproduce the files byte for byte.
    The header keeps its length (same JSON, reordered), so the data offsets stand."""
    save_file(tensors, path, metadata=meta)
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        assert len(text) <= n, "header grew"
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    for n in names:
        case(n)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)
                if f.endswith(".safetensors"))
    print(f"total {total} bytes in {OUT}")
