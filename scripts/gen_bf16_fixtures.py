#!/usr/bin/env python3
"""Writes tests/pytorch_bf16/*.safetensors: nn.MultiheadAttention in bfloat16, for the bf16 tests.

Each file holds:
  - the module's state_dict after mha.to(torch.bfloat16), as PyTorch names it (BF16 weights
    and biases), and "num_heads" in the metadata;
  - input.query [SEQ, DIM]: the input, bf16 values stored as F32;
  - output.attn_bf16 [SEQ, DIM]: the bf16 module's output (every product and intermediate in
    bf16, as PyTorch computes it on this CPU), stored as F32;
  - output.attn_f32 [SEQ, DIM]: an f32 copy of the same module (the same bf16-rounded weights,
    widened) on the same input, in float64 then rounded: the exact answer the bf16 paths are
    judged against.

Rerun (CI never needs torch; the files are committed):

    target/torch-venv/bin/python scripts/gen_bf16_fixtures.py
"""

import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "pytorch_bf16")


def case(name, seq, dim, heads, seed):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        # Non-zero biases, as a trained layer has.
        mha.in_proj_bias.uniform_(-0.2, 0.2)
        mha.out_proj.bias.uniform_(-0.2, 0.2)
    half = mha.to(torch.bfloat16)
    x = torch.randn(1, seq, dim).to(torch.bfloat16)
    with torch.inference_mode():
        y16 = half(x, x, x, need_weights=False)[0]
        exact = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval().double()
        exact.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
        y64 = exact(x.double(), x.double(), x.double(), need_weights=False)[0]
    tensors = {k: v.contiguous() for k, v in half.state_dict().items()}
    tensors["input.query"] = x[0].float().contiguous()
    tensors["output.attn_bf16"] = y16[0].float().contiguous()
    tensors["output.attn_f32"] = y64[0].float().contiguous()
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata={"num_heads": str(heads), "torch": torch.__version__})
    err = (y16[0].double() - y64[0]).abs().max().item()
    print(f"{name}: {os.path.getsize(path)} bytes; |bf16 module - exact| max {err:.3e}, "
          f"max |y| {y64.abs().max().item():.3e}")


if __name__ == "__main__":
    case("bf16_mha_24x64x4", 24, 64, 4, seed=1)
    case("bf16_mha_40x96x8", 40, 96, 8, seed=2)
