#!/usr/bin/env python3
"""PyTorch on the attention workloads of benches/attention.rs, for scripts/bench_peers.sh.

Workloads (f32, CPU, inference only; ids are criterion's "group/parameter"):

  sdpa/<S>x<d>[_causal]   F.scaled_dot_product_attention(q, k, v, is_causal=...) with q, k, v
                          of shape [1, 1, S, d]; causal is top-left (is_causal=True).
  layer/<SEQ>x<DIM>x<H>   nn.MultiheadAttention(DIM, H, batch_first=True).eval() called as
                          mha(x, x, x, need_weights=False) with x [1, SEQ, DIM].
  batch/32x16x64x4        the (16, 64, 4) layer on x [32, 16, 64].
  half/<SEQ>x<DIM>x<H>    the layer in bfloat16 (mha.to(torch.bfloat16), x in bfloat16: every
                          product and result in bf16, oneDNN's AVX512-BF16 kernels where the
                          CPU has them), for the (128, 256, 8) and (512, 512, 8) layers.
  half/sdpa_<S>x<d>       F.scaled_dot_product_attention in bfloat16, S x d = 512 x 64.
  decode/{mha,gqa}_step/cache_<L>
                          one decoding step of transformers' LlamaAttention (hidden 512, 8
                          heads of 64, 8 or 2 kv heads, RoPE, the "sdpa" attention) with a
                          DynamicCache holding L - 1 positions: the token's projections, its
                          rotation, the cache update and attention over L keys; the cache is
                          cropped back to L - 1 after each step (inside the timing; a view).
                          Only when transformers imports; otherwise these rows are skipped.

Everything runs inside torch.inference_mode(). Threads: torch.set_num_interop_threads(1) once
at start, torch.set_num_threads(--threads). Pinning the 1-thread run to one core is the
caller's job (taskset -c 1 python scripts/bench_torch.py --threads 1).

Timing: warm up (0.5 s), calibrate the number of back-to-back calls that fill one sample
(>= 10 ms), take 30 samples and report the median time per call. --quick: 0.2 s warm-up,
10 samples of >= 5 ms.

Output: JSON lines on stdout, first a meta line
  {"peer":"torch","meta":true,"version":"2.x","threads":1,...}
then one line per workload
  {"peer":"torch","threads":1,"id":"sdpa/128x64","median_us":...,"min_us":...,"samples":30,"iters":...}
Progress goes to stderr.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

SDPA_SHAPES = [(128, 64), (512, 64), (1024, 64)]
LAYER_SHAPES = [(16, 64, 4), (128, 256, 8), (512, 512, 8)]
HALF_SHAPES = [(128, 256, 8), (512, 512, 8)]
BATCH = 32
BATCH_LAYER = (16, 64, 4)

FULL = dict(warmup_s=0.5, samples=30, min_sample_s=0.010)
QUICK = dict(warmup_s=0.2, samples=10, min_sample_s=0.005)


def measure(fn, warmup_s, samples, min_sample_s):
    """Median and minimum seconds per call of fn(), and the calls per sample."""
    clock = time.perf_counter
    start = clock()
    while clock() - start < warmup_s:
        fn()
    # Double the batch until one batch lasts at least min_sample_s.
    iters = 1
    while True:
        t0 = clock()
        for _ in range(iters):
            fn()
        if clock() - t0 >= min_sample_s:
            break
        iters *= 2
    per_call = []
    for _ in range(samples):
        t0 = clock()
        for _ in range(iters):
            fn()
        per_call.append((clock() - t0) / iters)
    per_call.sort()
    return per_call[len(per_call) // 2], per_call[0], iters


def workloads():
    """(id, zero-argument callable) pairs, in the order of the table."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for s, d in SDPA_SHAPES:
        q, k, v = (torch.randn(1, 1, s, d, generator=gen) for _ in range(3))
        for causal in (False, True):
            wid = f"sdpa/{s}x{d}" + ("_causal" if causal else "")
            # (Default arguments bind this iteration's tensors and flag.)
            out.append((wid, lambda q=q, k=k, v=v, c=causal:
                        F.scaled_dot_product_attention(q, k, v, is_causal=c)))

    def layer(batch, seq, dim, heads):
        torch.manual_seed(0)  # nn.MultiheadAttention draws its init from the global generator
        mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
        x = torch.randn(batch, seq, dim, generator=gen)
        return lambda: mha(x, x, x, need_weights=False)

    for seq, dim, heads in LAYER_SHAPES:
        out.append((f"layer/{seq}x{dim}x{heads}", layer(1, seq, dim, heads)))
    seq, dim, heads = BATCH_LAYER
    out.append((f"batch/{BATCH}x{seq}x{dim}x{heads}", layer(BATCH, seq, dim, heads)))

    def layer_bf16(seq, dim, heads):
        torch.manual_seed(0)
        mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
        mha = mha.to(torch.bfloat16)
        x = torch.randn(1, seq, dim, generator=gen).to(torch.bfloat16)
        return lambda: mha(x, x, x, need_weights=False)

    for seq, dim, heads in HALF_SHAPES:
        out.append((f"half/{seq}x{dim}x{heads}", layer_bf16(seq, dim, heads)))
    q, k, v = (torch.randn(1, 1, 512, 64, generator=gen).to(torch.bfloat16) for _ in range(3))
    out.append(("half/sdpa_512x64", lambda: F.scaled_dot_product_attention(q, k, v)))
    out.extend(decode_workloads(gen))
    return out


def decode_workloads(gen):
    """transformers' decoding step at cache lengths 128 and 1024 (see the module docs)."""
    try:
        from transformers import DynamicCache, LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
    except ImportError:
        print("bench_torch.py: transformers is not installed: no decode rows", file=sys.stderr)
        return []
    out = []
    for kv_heads, name in ((8, "mha_step"), (2, "gqa_step")):
        for length in (128, 1024):
            torch.manual_seed(0)
            config = LlamaConfig(hidden_size=512, num_attention_heads=8,
                                 num_key_value_heads=kv_heads, head_dim=64,
                                 max_position_embeddings=2048, attn_implementation="sdpa")
            attn = LlamaAttention(config, layer_idx=0).eval()
            rope = LlamaRotaryEmbedding(config)
            cache = DynamicCache(config=config)
            x = torch.randn(1, length, 512, generator=gen)
            with torch.inference_mode():
                prefix = x[:, : length - 1]
                attn(prefix, position_embeddings=rope(prefix, torch.arange(length - 1)[None]),
                     attention_mask=None, cache=cache)
                token = x[:, length - 1:]
                cos_sin = rope(token, torch.tensor([[length - 1]]))

            def step(attn=attn, token=token, cos_sin=cos_sin, cache=cache):
                attn(token, position_embeddings=cos_sin, attention_mask=None, cache=cache)
                cache.crop(-1)  # drop the token just added

            out.append((f"decode/{name}/cache_{length}", step))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads(N)")
    ap.add_argument("--quick", action="store_true", help="shorter warm-up, fewer samples")
    ap.add_argument("--only", default="", metavar="PREFIX",
                    help="run only the workloads whose id starts with PREFIX (e.g. half/)")
    args = ap.parse_args()

    # Inter-op parallelism must be fixed before any parallel work starts; intra-op is ours.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    if torch.get_num_threads() != args.threads:
        sys.exit(f"bench_torch.py: asked for {args.threads} threads, "
                 f"torch uses {torch.get_num_threads()}")
    plan = QUICK if args.quick else FULL

    meta = {
        "peer": "torch",
        "meta": True,
        "version": torch.__version__,
        "threads": args.threads,
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(json.dumps(meta), flush=True)

    with torch.inference_mode():
        for wid, fn in workloads():
            if not wid.startswith(args.only):
                continue
            median, minimum, iters = measure(fn, **plan)
            print(f"torch {args.threads}T {wid:<22} {median * 1e6:>12.2f} µs",
                  file=sys.stderr, flush=True)
            row = {
                "peer": "torch",
                "threads": args.threads,
                "id": wid,
                "median_us": round(median * 1e6, 3),
                "min_us": round(minimum * 1e6, 3),
                "samples": plan["samples"],
                "iters": iters,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
