#!/usr/bin/env python3
"""Writes the PyTorch reference files in tests/pytorch/ that the parity tests compare against.

Each case is one safetensors file holding:
  - the module's state_dict, exactly as PyTorch names it (optionally under a prefix), and
    "num_heads" in the file metadata;
  - the inputs:  input.query [SQ, DIM], input.key [SKV, DIM], input.value [SKV, DIM];
  - the masks, when the case has them: mask.attn_bool [SQ, SKV] (nn.MultiheadAttention
    convention: True = masked out), mask.attn_float [SQ, SKV] (additive),
    mask.key_padding [SKV] (True = padding);
  - PyTorch's outputs: output.attn [SQ, DIM] (need_weights=False, the SDPA path),
    output.weights_avg [SQ, SKV] and output.weights [HEADS, SQ, SKV]
    (need_weights=True with average_attn_weights=True / False).
  - metadata: kind ("mha" or "sdpa"), the shapes, dtype, and the case's options.

Single-head cases ("head_*", for static_attention::SelfAttention) hold a module with three
nn.Linear(DIM, DIM) named q_proj, k_proj, v_proj (biases per the case), input.query [SQ, DIM],
input.memory [SKV, DIM] (cross-attention; absent for self-attention), an optional
mask.attend_bool [SQ, SKV], output.attn [SQ, DIM] (F.scaled_dot_product_attention) and
output.weights [SQ, SKV] (softmax of the scaled scores).

scaled_dot_product_attention cases ("sdpa_*") hold q [HQ, L, E], k [HKV, S, E], v [HKV, S, EV],
an optional mask.attend_bool [L, S] (SDPA convention: True = may attend) or mask.attn_float,
and output.attn [HQ, L, EV].

Rerun (CI never needs torch; the files are committed):

    python3 -m venv target/torch-venv
    target/torch-venv/bin/pip install torch safetensors numpy
    target/torch-venv/bin/python scripts/gen_pytorch_fixtures.py

The script prints each case's file size and the total, and checks that PyTorch's two paths
(need_weights=False / True) agree before writing anything. With case names as arguments it
writes only those cases and leaves the other files alone (PyTorch's CPU kernels may round the
last bit differently on another machine, so regenerating everything rewrites files that were
fine):

    target/torch-venv/bin/python scripts/gen_pytorch_fixtures.py head_self_6x16
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "pytorch")


def mha_case(name, seq_q, dim, heads, *, seq_kv=None, dtype=torch.float32, bias=True,
             scale_inputs=1.0, causal=False, key_padding=False, attn_bool=False,
             attn_float=False, distinct_kv=False, prefix="", separate=False,
             fully_masked_row=False, seed=0):
    """One nn.MultiheadAttention case."""
    torch.manual_seed(seed)
    seq_kv = seq_q if seq_kv is None else seq_kv
    self_attention = seq_kv == seq_q and not distinct_kv
    mha = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True, dtype=dtype).eval()
    if bias:
        # PyTorch initialises biases to zero; random biases make the test see them.
        with torch.no_grad():
            mha.in_proj_bias.normal_(0.0, 0.1)
            mha.out_proj.bias.normal_(0.0, 0.1)
    query = torch.randn(1, seq_q, dim, dtype=dtype) * scale_inputs
    if self_attention:
        key = value = query
    elif distinct_kv:
        key = torch.randn(1, seq_kv, dim, dtype=dtype) * scale_inputs
        value = torch.randn(1, seq_kv, dim, dtype=dtype) * scale_inputs
    else:
        key = value = torch.randn(1, seq_kv, dim, dtype=dtype) * scale_inputs

    tensors, meta = {}, {}
    attn_mask, kpm = None, None
    if causal:
        # nn.MultiheadAttention boolean convention: True = masked out (top-left causal).
        attn_mask = torch.ones(seq_q, seq_kv, dtype=torch.bool).triu(1)
        tensors["mask.attn_bool"] = attn_mask
        meta["causal"] = "top_left"
    if attn_bool:
        g = torch.Generator().manual_seed(seed + 1)
        attn_mask = torch.rand(seq_q, seq_kv, generator=g) < 0.3
        if not fully_masked_row:
            attn_mask[:, 0] = False  # keep every row alive unless the case wants a dead one
        tensors["mask.attn_bool"] = attn_mask
    if fully_masked_row:
        attn_mask = torch.zeros(seq_q, seq_kv, dtype=torch.bool) if attn_mask is None else attn_mask
        attn_mask[1, :] = True
        tensors["mask.attn_bool"] = attn_mask
    if attn_float:
        g = torch.Generator().manual_seed(seed + 2)
        attn_mask = torch.randn(seq_q, seq_kv, generator=g, dtype=dtype)
        attn_mask[torch.rand(seq_q, seq_kv, generator=g) < 0.2] = float("-inf")
        attn_mask[:, -1] = 0.5  # no row is fully masked
        tensors["mask.attn_float"] = attn_mask
    if key_padding:
        kpm = torch.zeros(seq_kv, dtype=torch.bool)
        kpm[seq_kv - 2:] = True
        tensors["mask.key_padding"] = kpm
        kpm = kpm.unsqueeze(0)

    with torch.no_grad():
        kwargs = dict(key_padding_mask=kpm, attn_mask=attn_mask)
        if separate:
            # The separate-projection form: PyTorch builds it itself only when kdim/vdim differ
            # from embed_dim; here the packed weights are split into q/k/v_proj_weight and
            # PyTorch's functional forward runs with use_separate_proj_weight=True.
            w = mha.in_proj_weight
            qw, kw, vw = w[:dim].clone(), w[dim:2 * dim].clone(), w[2 * dim:].clone()
            def run(need_weights, average):
                return F.multi_head_attention_forward(
                    query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), dim, heads,
                    None, mha.in_proj_bias, None, None, False, 0.0, mha.out_proj.weight,
                    mha.out_proj.bias, training=False, need_weights=need_weights,
                    average_attn_weights=average, use_separate_proj_weight=True,
                    q_proj_weight=qw, k_proj_weight=kw, v_proj_weight=vw, **kwargs)
            out, _ = run(False, True)
            out = out.transpose(0, 1)
            out_w, w_avg = run(True, True)
            _, w_heads = run(True, False)
            out_w = out_w.transpose(0, 1)
            state = {"q_proj_weight": qw, "k_proj_weight": kw, "v_proj_weight": vw,
                     "out_proj.weight": mha.out_proj.weight}
            if bias:
                state["in_proj_bias"] = mha.in_proj_bias
                state["out_proj.bias"] = mha.out_proj.bias
        elif fully_masked_row:
            # The module's native fast path (eval, query is key is value, need_weights=False)
            # returns NaN for a fully masked row (torch 2.15); its SDPA-based path returns
            # out_proj.bias there, which is docs/SEMANTICS.md rule 7. Record the SDPA path.
            q_, k_, v_ = (t.transpose(0, 1) for t in (query, key, value))
            out, _ = F.multi_head_attention_forward(
                q_, k_, v_, dim, heads, mha.in_proj_weight, mha.in_proj_bias, None, None, False,
                0.0, mha.out_proj.weight, mha.out_proj.bias, training=False, need_weights=False,
                **kwargs)
            out = out.transpose(0, 1)
            fast, _ = mha(query, key, value, need_weights=False, **kwargs)
            meta["module_fast_path"] = (
                "NaN in the fully masked row" if torch.isnan(fast[0, 1]).all() else "finite")
            out_w, w_avg = mha(query, key, value, need_weights=True, average_attn_weights=True, **kwargs)
            _, w_heads = mha(query, key, value, need_weights=True, average_attn_weights=False, **kwargs)
            state = dict(mha.state_dict())
        else:
            out, _ = mha(query, key, value, need_weights=False, **kwargs)
            out_w, w_avg = mha(query, key, value, need_weights=True, average_attn_weights=True, **kwargs)
            _, w_heads = mha(query, key, value, need_weights=True, average_attn_weights=False, **kwargs)
            state = dict(mha.state_dict())
        # PyTorch's two paths must agree where both are defined, or the reference is unclear.
        finite = torch.isfinite(out_w)
        assert torch.allclose(out[finite], out_w[finite], atol=1e-5), name

    for k, v in state.items():
        tensors[prefix + k] = v.detach().contiguous()
    tensors["input.query"] = query[0]
    tensors["input.key"] = key[0]
    tensors["input.value"] = value[0]
    tensors["output.attn"] = out[0]
    # For a fully masked row, PyTorch's need_weights path returns NaN weights (softmax over an
    # all −∞ row); docs/SEMANTICS.md rule 7 asks for zeros there, and the tests check exactly that.
    tensors["output.weights_avg"] = w_avg[0]
    tensors["output.weights"] = w_heads[0]
    meta.update(kind="mha", seq_q=seq_q, seq_kv=seq_kv, dim=dim, heads=heads,
                dtype=str(dtype).replace("torch.", ""), bias=bias, prefix=prefix,
                form="separate" if separate else "packed", scale_inputs=scale_inputs,
                self_attention=self_attention, num_heads=heads, torch=torch.__version__)
    write(name, tensors, meta)


def sdpa_case(name, hq, hkv, L, S, E, EV=None, *, causal=None, float_mask=False, scale=None,
              dtype=torch.float32, seed=0):
    """One scaled_dot_product_attention case; causal is None, "top_left" or "bottom_right"."""
    torch.manual_seed(seed)
    EV = E if EV is None else EV
    q = torch.randn(hq, L, E, dtype=dtype)
    k = torch.randn(hkv, S, E, dtype=dtype)
    v = torch.randn(hkv, S, EV, dtype=dtype)
    tensors, meta = {"q": q, "k": k, "v": v}, {}
    kwargs = dict(scale=scale, enable_gqa=hq != hkv)
    if causal == "top_left":
        kwargs["is_causal"] = True  # PyTorch's is_causal is top-left aligned
    elif causal == "bottom_right":
        # Passed explicitly: query i sees keys j <= i + S - L.
        allowed = torch.ones(L, S, dtype=torch.bool).tril(diagonal=S - L)
        kwargs["attn_mask"] = allowed
        tensors["mask.attend_bool"] = allowed
    if float_mask:
        g = torch.Generator().manual_seed(seed + 1)
        m = torch.randn(L, S, generator=g, dtype=dtype)
        m[torch.rand(L, S, generator=g) < 0.25] = float("-inf")
        m[:, 0] = 0.0
        kwargs["attn_mask"] = m
        tensors["mask.attn_float"] = m
    with torch.no_grad():
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    tensors["output.attn"] = out
    meta.update(kind="sdpa", hq=hq, hkv=hkv, L=L, S=S, E=E, EV=EV, causal=causal or "none",
                scale="default" if scale is None else repr(scale),
                dtype=str(dtype).replace("torch.", ""), torch=torch.__version__)
    write(name, tensors, meta)


class Head(nn.Module):
    """One attention head as people write it in PyTorch: q/k/v nn.Linear and SDPA."""

    def __init__(self, dim, q_bias, kv_bias, dtype):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=q_bias, dtype=dtype)
        self.k_proj = nn.Linear(dim, dim, bias=kv_bias, dtype=dtype)
        self.v_proj = nn.Linear(dim, dim, bias=kv_bias, dtype=dtype)

    def forward(self, x, memory, attn_mask=None):
        q, k, v = self.q_proj(x), self.k_proj(memory), self.v_proj(memory)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return out, torch.softmax(scores, dim=-1)


def head_case(name, seq_q, dim, *, seq_kv=None, q_bias=True, kv_bias=True, causal=False,
              dtype=torch.float32, prefix="", seed=0):
    """One single-head case (SelfAttention): self-attention, or cross-attention to a memory."""
    torch.manual_seed(seed)
    head = Head(dim, q_bias, kv_bias, dtype).eval()
    with torch.no_grad():
        for lin in (head.q_proj, head.k_proj, head.v_proj):
            if lin.bias is not None:
                lin.bias.normal_(0.0, 0.1)
    x = torch.randn(seq_q, dim, dtype=dtype)
    tensors = {"input.query": x}
    memory = x
    if seq_kv is not None:
        memory = torch.randn(seq_kv, dim, dtype=dtype)
        tensors["input.memory"] = memory
    mask = None
    if causal:
        mask = torch.ones(seq_q, memory.shape[0], dtype=torch.bool).tril()
        tensors["mask.attend_bool"] = mask
    with torch.no_grad():
        out, weights = head(x, memory, mask)
    for k, v in head.state_dict().items():
        tensors[prefix + k] = v
    tensors["output.attn"] = out
    tensors["output.weights"] = weights
    write(name, tensors, dict(kind="head", seq_q=seq_q, seq_kv=memory.shape[0], dim=dim,
                              q_bias=q_bias, kv_bias=kv_bias, causal=causal, prefix=prefix,
                              dtype=str(dtype).replace("torch.", ""), torch=torch.__version__))


ONLY = set(sys.argv[1:])


def write(name, tensors, meta):
    if ONLY and name not in ONLY:
        return
    path = os.path.join(OUT, name + ".safetensors")
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={k: str(v) if not isinstance(v, bool) else json.dumps(v)
                                       for k, v in meta.items()})
    print(f"{name:32s} {os.path.getsize(path):8d} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    if not ONLY:
        for f in os.listdir(OUT):
            if f.endswith(".safetensors"):
                os.remove(os.path.join(OUT, f))
    mha_case("seed_3x4x2", 3, 4, 2, seed=1)
    mha_case("odd_5x12x3", 5, 12, 3, seed=2)
    mha_case("single_token_1x8x2", 1, 8, 2, seed=3)
    mha_case("large_64x64x8", 64, 64, 8, seed=4)
    mha_case("no_bias_6x16x4", 6, 16, 4, bias=False, seed=5)
    mha_case("causal_7x12x3", 7, 12, 3, causal=True, seed=6)
    mha_case("key_padding_6x8x2", 6, 8, 2, key_padding=True, seed=7)
    mha_case("float_mask_5x8x2", 5, 8, 2, attn_float=True, seed=8)
    mha_case("bool_mask_7x12x4", 7, 12, 4, attn_bool=True, seed=9)
    mha_case("fully_masked_row_4x8x2", 4, 8, 2, fully_masked_row=True, seed=10)
    mha_case("cross_4x7x16x4", 4, 16, 4, seq_kv=7, distinct_kv=True, seed=11)
    mha_case("cross_memory_3x9x8x2", 3, 8, 2, seq_kv=9, key_padding=True, seed=12)
    mha_case("f64_5x12x3", 5, 12, 3, dtype=torch.float64, causal=True, seed=13)
    mha_case("scaled_x30_6x16x4", 6, 16, 4, scale_inputs=30.0, seed=14)
    mha_case("prefixed_4x8x2", 4, 8, 2, prefix="encoder.layers.0.self_attn.", seed=15)
    mha_case("separate_proj_5x12x3", 5, 12, 3, separate=True, key_padding=True, seed=16)
    head_case("head_self_6x16", 6, 16, causal=True, seed=17)
    head_case("head_cross_4x7x8", 4, 8, seq_kv=7, kv_bias=False, prefix="encoder.attn.", seed=18)
    head_case("head_f64_5x12", 5, 12, q_bias=False, kv_bias=False, dtype=torch.float64, seed=19)
    sdpa_case("sdpa_gqa_8q2kv", 8, 2, 6, 6, 8, seed=20)
    sdpa_case("sdpa_mqa_4q1kv_causal", 4, 1, 5, 5, 8, causal="top_left", seed=21)
    sdpa_case("sdpa_causal_top_left_4x7", 2, 2, 4, 7, 8, causal="top_left", seed=22)
    sdpa_case("sdpa_causal_bottom_right_4x7", 2, 2, 4, 7, 8, causal="bottom_right", seed=23)
    sdpa_case("sdpa_causal_top_left_7x4", 2, 2, 7, 4, 8, causal="top_left", seed=24)
    sdpa_case("sdpa_causal_bottom_right_7x4", 2, 2, 7, 4, 8, causal="bottom_right", seed=25)
    sdpa_case("sdpa_gqa_bottom_right_3x9", 6, 3, 3, 9, 4, 5, causal="bottom_right", seed=26)
    sdpa_case("sdpa_float_mask_scale", 2, 2, 5, 6, 8, float_mask=True, scale=0.3, seed=27)
    sdpa_case("sdpa_f64_gqa_causal", 4, 2, 6, 6, 8, causal="top_left", dtype=torch.float64, seed=28)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"total {total} bytes")
    assert total < 2_000_000


if __name__ == "__main__":
    sys.exit(main())
