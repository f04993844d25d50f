#!/usr/bin/env python3
"""Writes the Hugging Face decoder-attention reference files in tests/hf/ that
tests/hf_parity.rs compares against: LlamaAttention (grouped-query heads, RoPE),
MistralAttention (sliding window), Qwen2Attention (q/k/v biases, weights under a model prefix),
each built from a small config with random weights (no hub download), run in eager mode
with transformers' DynamicCache: a prompt, then several one-token decode steps.

Each case is one safetensors file holding:
  - the attention module's state_dict with Hugging Face's names (q_proj.weight, k_proj.weight,
    v_proj.weight, o_proj.weight, and .bias where the model has them), under the case's
    prefix;
  - input.prompt [P, DIM] and input.step [N, DIM] (the tokens decoded one by one);
  - output.prompt [P, DIM] and output.step [N, DIM]: the module's outputs;
  - cache.keys [KV_HEADS, LEN, HEAD_DIM] and cache.values: what the cache holds at the end
    (keys after RoPE; for f64, the float64 reference's, with transformers' in hf_cache.*);
  - metadata: model, the shapes, rope_theta, sliding_window (or "none"), prefix, dtype.

transformers computes the rotary tables (in float32) and the eager softmax in float32 even
for a float64 model, so its f64 outputs are good to about 3e-7. For the f64 case this script
therefore computes the reference itself, the same algorithm entirely in float64 (rotary
tables included), checks it against transformers' output (to 1e-6), and stores it as
output.*; transformers' own output is kept as hf_output.*.

Rerun (CI never needs it; the files are committed):

    python3 -m venv target/hf-venv
    target/hf-venv/bin/pip install torch transformers safetensors
    target/hf-venv/bin/python scripts/gen_hf_fixtures.py [case ...]

With case names as arguments it writes only those files.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import DynamicCache, LlamaConfig, MistralConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.mistral.modeling_mistral import MistralAttention, MistralRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RotaryEmbedding

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hf")

MODELS = {
    "llama": (LlamaConfig, LlamaAttention, LlamaRotaryEmbedding),
    "mistral": (MistralConfig, MistralAttention, MistralRotaryEmbedding),
    "qwen2": (Qwen2Config, Qwen2Attention, Qwen2RotaryEmbedding),
}


def additive_mask(first, s, keys, window, dtype):
    """[1, 1, s, keys]: 0 where query first+i may see the key, dtype's min elsewhere. The keys
    are the last `keys` positions up to first+s-1 (what the cache returned)."""
    total = first + s
    m = torch.full((1, 1, s, keys), torch.finfo(dtype).min, dtype=dtype)
    for i in range(s):
        p = first + i
        for j in range(keys):
            kpos = total - keys + j
            if kpos <= p and (window is None or kpos > p - window):
                m[0, 0, i, j] = 0.0
    return m


def reference_f64(attn, heads, kv_heads, head_dim, theta, window, x_all, p):
    """The same layer in float64 throughout (rotary tables included), over the whole
    sequence with the causal (or sliding-window) mask: row t is token t's output."""
    n = x_all.shape[0]
    sd = {k: v.double() for k, v in attn.state_dict().items()}

    def lin(x, name):
        y = x @ sd[f"{name}.weight"].T
        if f"{name}.bias" in sd:
            y = y + sd[f"{name}.bias"]
        return y

    q = lin(x_all, "q_proj").view(n, heads, head_dim).transpose(0, 1)
    k = lin(x_all, "k_proj").view(n, kv_heads, head_dim).transpose(0, 1)
    v = lin(x_all, "v_proj").view(n, kv_heads, head_dim).transpose(0, 1)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rot(t):
        h = head_dim // 2
        rh = torch.cat((-t[..., h:], t[..., :h]), dim=-1)
        return t * cos + rh * sin

    q, k = rot(q), rot(k)
    k_cache, v_cache = k.clone(), v.clone()
    g = heads // kv_heads
    k = k.repeat_interleave(g, dim=0)
    v = v.repeat_interleave(g, dim=0)
    s = (q @ k.transpose(1, 2)) / head_dim**0.5
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    if window is not None:
        allowed &= ~torch.ones(n, n, dtype=torch.bool).tril(-window)
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, dim=-1)
    o = (w @ v).transpose(0, 1).reshape(n, heads * head_dim)
    return lin(o, "o_proj"), k_cache, v_cache


def case(name, model, dim, heads, kv_heads, head_dim, *, theta=10000.0, window=None,
         bias=False, prompt=5, steps=4, prefix="", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config_cls, attn_cls, rope_cls = MODELS[model]
    kwargs = dict(
        hidden_size=dim,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        attn_implementation="eager",
    )
    if model == "llama":
        kwargs["attention_bias"] = bias
    if model == "mistral":
        kwargs["sliding_window"] = window
    config = config_cls(**kwargs)
    attn = attn_cls(config, layer_idx=0).eval().to(dtype)
    if model == "qwen2":
        assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    rope = rope_cls(config)
    x_all = torch.randn(prompt + steps, dim, dtype=dtype)
    cache = DynamicCache(config=config)

    def run(x, first):
        s = x.shape[0]
        layer = cache.layers[0] if len(cache.layers) else None
        held = 0 if layer is None or getattr(layer, "keys", None) is None or layer.keys.numel() == 0 \
            else layer.keys.shape[-2]
        keys = held + s
        pos = torch.arange(first, first + s)[None, :]
        cos, sin = rope(x[None], pos)
        mask = additive_mask(first, s, keys, window, dtype)
        with torch.inference_mode():
            out, _ = attn(x[None], position_embeddings=(cos, sin), attention_mask=mask,
                          cache=cache)
        return out[0]

    out_prompt = run(x_all[:prompt], 0)
    out_steps = [run(x_all[prompt + t: prompt + t + 1], prompt + t) for t in range(steps)]
    out_steps = torch.cat(out_steps, dim=0)
    keys = cache.layers[0].keys[0].contiguous()
    values = cache.layers[0].values[0].contiguous()

    tensors = {f"{prefix}{k}": v.contiguous() for k, v in attn.state_dict().items()}
    tensors["input.prompt"] = x_all[:prompt].contiguous()
    tensors["input.step"] = x_all[prompt:].contiguous()
    tensors["cache.keys"] = keys
    tensors["cache.values"] = values
    if dtype == torch.float64:
        ref, k_ref, v_ref = reference_f64(attn, heads, kv_heads, head_dim, theta, window, x_all,
                                          prompt)
        hf = torch.cat((out_prompt, out_steps), dim=0)
        held = keys.shape[-2]
        tensors["hf_cache.keys"] = keys
        tensors["hf_cache.values"] = values
        tensors["cache.keys"] = k_ref[:, -held:].contiguous()
        tensors["cache.values"] = v_ref[:, -held:].contiguous()
        diff = (ref - hf).abs().max().item()
        assert diff < 1e-6, f"{name}: f64 reference vs transformers {diff:e}"
        print(f"  {name}: f64 reference vs transformers' float32-internals output: {diff:.1e}")
        tensors["output.prompt"] = ref[:prompt].contiguous()
        tensors["output.step"] = ref[prompt:].contiguous()
        tensors["hf_output.prompt"] = out_prompt.contiguous()
        tensors["hf_output.step"] = out_steps.contiguous()
    else:
        # Sanity: the float64 algorithm agrees with transformers in f32 too.
        ref, _, _ = reference_f64(attn, heads, kv_heads, head_dim, theta, window,
                                  x_all.double(), prompt)
        hf = torch.cat((out_prompt, out_steps), dim=0).double()
        diff = (ref - hf).abs().max().item()
        assert diff < 1e-5, f"{name}: reference vs transformers {diff:e}"
        tensors["output.prompt"] = out_prompt.contiguous()
        tensors["output.step"] = out_steps.contiguous()
    meta = {
        "model": model,
        "dim": str(dim),
        "heads": str(heads),
        "kv_heads": str(kv_heads),
        "head_dim": str(head_dim),
        "rope_theta": repr(theta),
        "sliding_window": "none" if window is None else str(window),
        "prompt": str(prompt),
        "steps": str(steps),
        "prefix": prefix,
        "dtype": "f64" if dtype == torch.float64 else "f32",
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file({k: v.detach() for k, v in tensors.items()}, path, metadata=meta)
    print(f"{name}: {os.path.getsize(path)} bytes, cache holds {keys.shape[-2]} positions")


CASES = {
    "llama_gqa_8q2kv": lambda: case("llama_gqa_8q2kv", "llama", 64, 8, 2, 8, prompt=5, steps=4),
    "llama_mqa_theta500k": lambda: case("llama_mqa_theta500k", "llama", 32, 4, 1, 8,
                                        theta=500000.0, prompt=3, steps=5, seed=1),
    "mistral_window4": lambda: case("mistral_window4", "mistral", 32, 4, 2, 8, window=4,
                                    theta=1000000.0, prompt=6, steps=5, seed=2),
    "qwen2_bias_prefixed": lambda: case("qwen2_bias_prefixed", "qwen2", 48, 6, 2, 8, bias=True,
                                        theta=1000000.0, prompt=4, steps=3,
                                        prefix="model.layers.0.self_attn.", seed=3),
    "llama_f64": lambda: case("llama_f64", "llama", 32, 4, 2, 8, prompt=4, steps=3,
                              dtype=torch.float64, seed=4),
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    for n in names:
        CASES[n]()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"total {total} bytes in {OUT}")
