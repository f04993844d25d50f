#!/usr/bin/env bash
# Peer comparison: static-attention's criterion benchmarks against PyTorch and candle on the
# same attention workloads, assembled into one Markdown table. Run by hand, never by CI.
#
# Usage: scripts/bench_peers.sh [--skip-ours] [--skip-torch] [--skip-candle] [--quick]
#                               [CRITERION_FILTER] [-- CRITERION_ARGS...]
#
#   --skip-ours     do not run cargo bench; read the criterion results already on disk
#   --skip-torch    do not run PyTorch (no venv is created or needed)
#   --skip-candle   do not build or run candle
#   --quick         short runs, for testing the script (criterion --quick, fewer peer samples)
#   CRITERION_FILTER (a regex over criterion ids) and anything after -- go to
#                   `cargo bench --bench attention -- --noplot`; the peers always run everything
#
# Environment:
#   PEERS_VENV     Python venv with torch (default target/peers-venv). Reused when torch
#                  imports in it; otherwise created with `pip install torch numpy
#                  transformers` from PyPI (about 5 GiB, slow). Without transformers the
#                  decoding rows have no torch column.
#   CRITERION_DIR  where criterion's results are read (default target/criterion)
#   BENCH_CPU      the core that single-threaded runs are pinned to (default 1)
#
# Workloads (f32, one sequence, inference only) and their criterion ids group/function/param:
#   sdpa/{simd,scalar}/{128,512,1024}x64[_causal]       one head, q k v S x d; 4*S^2*d FLOPs
#   layer/{simd,scalar}/{16x64x4,128x256x8,512x512x8}   nn.MultiheadAttention self-attention
#                                                       (SEQxDIMxHEADS); 8*SEQ*DIM^2 +
#                                                       4*SEQ^2*DIM FLOPs
#   layer/simd_2threads/512x512x8                       the same, `rayon` feature, 2 threads
#   batch/{simd,scalar}/32x16x64x4                      32 sequences through the 16x64x4 layer
#   half/{f32,bf16,bf16_widened,f16,i8,f32_avx2,bf16_avx2,f16_avx2,i8_avx2}/{128x256x8,512x512x8}
#                                                       the layer with f32, bf16 (bf16
#                                                       products where the kernel has them),
#                                                       bf16 widened and f16 weights; torch:
#                                                       its bf16 module (half/<shape>)
#   decode/{mha,gqa}_{step,recompute}/cache_{128,1024}  one decoding step at that cache length
#                                                       (torch: transformers' LlamaAttention
#                                                       with a DynamicCache), and ours
#                                                       recomputing the causal forward
# The peers are scripts/bench_torch.py and bench_peers/candle; each documents its port.
#
# Single-threaded runs (criterion, torch 1T, candle 1T) are pinned with `taskset -c $BENCH_CPU`;
# 2-thread runs are not pinned. The machine may be shared: the script measures how busy it is
# before each timed run, warns above 15%, and says so in the table's header.
#
# Output: the table on stdout (progress on stderr) and in target/bench_peers.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

CRITERION_DIR="${CRITERION_DIR:-$REPO/target/criterion}"
PEERS_VENV="${PEERS_VENV:-$REPO/target/peers-venv}"
BENCH_CPU="${BENCH_CPU:-1}"
CANDLE_DIR="$REPO/bench_peers/candle"
CANDLE_TARGET="$CANDLE_DIR/target"
OUT_MD="$REPO/target/bench_peers.md"
BUSY_WARN=15 # % of all CPUs busy before a timed run above which the numbers are suspect

die() {
    printf 'bench_peers.sh: error: %s\n' "$*" >&2
    exit 1
}
step() { printf '\n== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }

# --- options ---------------------------------------------------------------------------------
run_ours=1 run_torch=1 run_candle=1 quick=0
filter=""           # criterion's positional filter, if any
criterion_extra=()  # everything after --
while (($#)); do
    case "$1" in
        --skip-ours) run_ours=0 ;;
        --skip-torch) run_torch=0 ;;
        --skip-candle) run_candle=0 ;;
        --quick) quick=1 ;;
        -h | --help)
            # Print the header comment above `set -euo pipefail`.
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        --)
            shift
            criterion_extra=("$@")
            break
            ;;
        -*) die "unknown option $1 (criterion's own options go after --; see --help)" ;;
        *)
            [[ -z "$filter" ]] || die "one criterion filter only (got '$filter' and '$1')"
            filter="$1"
            ;;
    esac
    shift
done

command -v python3 >/dev/null || die "python3 is needed (it assembles the table)"
command -v taskset >/dev/null || die "taskset (util-linux) is needed to pin single-threaded runs"
taskset -c "$BENCH_CPU" true 2>/dev/null || die "cannot pin to CPU $BENCH_CPU (set BENCH_CPU)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PEERS_JSONL="$WORK/peers.jsonl" # every peer's JSON lines, in the order they ran
: >"$PEERS_JSONL"
peer_flags=()
((quick)) && peer_flags+=(--quick)

# --- background load -------------------------------------------------------------------------
# Percentage of all CPUs busy over half a second, from the first line of /proc/stat
# (user nice system idle iowait irq softirq steal ...): everything but idle and iowait.
busy_pct() {
    local a b i total=0 idle
    read -r -a a </proc/stat
    sleep 0.5
    read -r -a b </proc/stat
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    if ((total > 0)); then echo $((100 * (total - idle) / total)); else echo 0; fi
}

# Called just before each timed run: warns when other processes keep the machine busy (a
# 2-thread run then loses whole scheduler ticks whenever one of its threads is preempted) and
# keeps the worst figure for the table's header.
max_busy=-1 # -1: nothing was timed
check_quiet() {
    local pct
    pct="$(busy_pct)"
    ((pct > max_busy)) && max_busy=$pct
    if ((pct > BUSY_WARN)); then
        note "warning: ${pct}% of the CPUs were busy just before $1:" \
            "its numbers, 2-thread ones especially, will be unreliable"
    fi
    return 0
}

# --- static-attention (criterion) ------------------------------------------------------------
if ((run_ours)); then
    bench_flags=(--noplot)
    ((quick)) && bench_flags+=(--quick)
    # Criterion's report goes to stderr, so that stdout carries only the table.

    step "static-attention: building the benchmark (both cores)"
    cargo bench --bench attention --no-run >&2 || die "building the benchmark failed"

    step "static-attention: cargo bench --bench attention, pinned to CPU $BENCH_CPU"
    check_quiet "criterion"
    taskset -c "$BENCH_CPU" cargo bench --bench attention -- \
        "${bench_flags[@]}" ${filter:+"$filter"} "${criterion_extra[@]}" >&2 ||
        die "cargo bench --bench attention failed"

    # The 2-thread layer needs the `rayon` feature and both cores: a run of its own, unpinned.
    # Skipped (its cell shows "—") when the crate has no such feature or the filter excludes it.
    two_threads_id="layer/simd_2threads/512x512x8"
    has_rayon="$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
packages = json.load(sys.stdin)["packages"]
print(int(any(p["name"] == "static-attention-benches" and "rayon" in p["features"] for p in packages)))')"
    if [[ "$has_rayon" != 1 ]]; then
        note "no 'rayon' feature in Cargo.toml: skipping $two_threads_id"
    elif [[ -n "$filter" ]] && ! grep -qE -- "$filter" <<<"$two_threads_id"; then
        note "filter '$filter' excludes $two_threads_id: skipping it"
    else
        step "static-attention: $two_threads_id (--features rayon, not pinned)"
        cargo bench --bench attention --features rayon --no-run >&2 ||
            die "building the benchmark with --features rayon failed"
        check_quiet "criterion (2 threads)"
        cargo bench --bench attention --features rayon -- \
            "${bench_flags[@]}" layer/simd_2threads "${criterion_extra[@]}" >&2 ||
            die "cargo bench --bench attention --features rayon failed"
    fi
fi

# --- candle ----------------------------------------------------------------------------------
candle_version=""
if ((run_candle)); then
    step "candle: building bench_peers/candle (release)"
    cargo build --release --manifest-path "$CANDLE_DIR/Cargo.toml" \
        --target-dir "$CANDLE_TARGET" >&2 || die "building bench_peers/candle failed"
    candle_bin="$CANDLE_TARGET/release/bench-peers-candle"
    [[ -x "$candle_bin" ]] || die "candle binary not found at $candle_bin"
    # The version Cargo resolved, from the peer crate's lock file.
    candle_version="$(awk '/^name = "candle-core"$/ { getline; gsub(/version = |"/, ""); print }' \
        "$CANDLE_DIR/Cargo.lock")"
    [[ -n "$candle_version" ]] || die "candle-core not found in $CANDLE_DIR/Cargo.lock"
    note "candle-core $candle_version"

    # candle's matmuls (gemm) and softmax (rayon) take their thread count from
    # RAYON_NUM_THREADS; the binary checks that it agrees with --threads.
    step "candle: 1 thread, pinned to CPU $BENCH_CPU"
    check_quiet "candle 1 thread"
    RAYON_NUM_THREADS=1 taskset -c "$BENCH_CPU" \
        "$candle_bin" --threads 1 "${peer_flags[@]}" >>"$PEERS_JSONL" ||
        die "candle 1-thread run failed"
    step "candle: 2 threads"
    check_quiet "candle 2 threads"
    RAYON_NUM_THREADS=2 "$candle_bin" --threads 2 "${peer_flags[@]}" >>"$PEERS_JSONL" ||
        die "candle 2-thread run failed"
fi

# --- PyTorch ---------------------------------------------------------------------------------
if ((run_torch)); then
    py="$PEERS_VENV/bin/python"
    if [[ -x "$py" ]] && "$py" -c 'import torch' 2>/dev/null; then
        note "reusing the venv at $PEERS_VENV"
    else
        step "PyTorch: installing torch into $PEERS_VENV (from PyPI, about 5 GiB: slow)"
        if [[ ! -x "$py" ]]; then
            python3 -m venv "$PEERS_VENV" ||
                die "python3 -m venv $PEERS_VENV failed (on Debian: apt-get install python3-venv)"
        fi
        "$py" -m pip install --upgrade pip >&2 || die "upgrading pip in $PEERS_VENV failed"
        "$py" -m pip install torch numpy transformers >&2 ||
            die "pip install torch numpy transformers failed"
        "$py" -c 'import torch' || die "torch does not import in $PEERS_VENV"
    fi

    step "PyTorch: 1 thread, pinned to CPU $BENCH_CPU"
    check_quiet "PyTorch 1 thread"
    taskset -c "$BENCH_CPU" \
        "$py" scripts/bench_torch.py --threads 1 "${peer_flags[@]}" >>"$PEERS_JSONL" ||
        die "torch 1-thread run failed"
    step "PyTorch: 2 threads"
    check_quiet "PyTorch 2 threads"
    "$py" scripts/bench_torch.py --threads 2 "${peer_flags[@]}" >>"$PEERS_JSONL" ||
        die "torch 2-thread run failed"
fi

# --- the table -------------------------------------------------------------------------------
step "table"
lscpu_field() { lscpu | sed -n "s/^$1:[[:space:]]*//p" | head -n1; }
simd_flags="$(grep -m1 -o -w -E 'avx2|fma|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ' || true)"
BP_MACHINE="$(lscpu_field 'Model name') (CPU family $(lscpu_field 'CPU family'),"
BP_MACHINE+=" model $(lscpu_field 'Model')), $(nproc) CPUs, ${simd_flags% }"
BP_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
BP_GIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD 2>/dev/null || BP_GIT+=" with uncommitted changes"
BP_CANDLE_VERSION="$candle_version"
BP_QUICK="$quick"
BP_RAN_OURS="$run_ours"
BP_FILTER="$filter"
BP_CRITERION_DIR="$CRITERION_DIR"
BP_PEERS_JSONL="$PEERS_JSONL"
BP_MAX_BUSY="$max_busy"
BP_BUSY_WARN="$BUSY_WARN"
export BP_MACHINE BP_DATE BP_GIT BP_CANDLE_VERSION BP_QUICK BP_RAN_OURS BP_FILTER \
    BP_CRITERION_DIR BP_PEERS_JSONL BP_MAX_BUSY BP_BUSY_WARN

python3 - >"$WORK/table.md" <<'PY' || die "assembling the table failed"
"""Joins criterion's medians with the peers' JSON lines into one Markdown table."""
import json
import os
from datetime import datetime, timezone

env = os.environ
DASH = "—"
CRITERION_DIR = env["BP_CRITERION_DIR"]
TWO_THREADS = "layer/512x512x8"  # the one workload the crate also benchmarks on 2 threads


def sdpa_flops(s, d):
    return 4 * s * s * d


def layer_flops(seq, dim):
    return 8 * seq * dim * dim + 4 * seq * seq * dim


# (row label, criterion group, criterion parameter, FLOPs per call); the peers' ids are
# "group/parameter".
ROWS = []
for s, d in [(128, 64), (512, 64), (1024, 64)]:
    ROWS.append((f"SDPA {s}x{d}", "sdpa", f"{s}x{d}", sdpa_flops(s, d)))
    ROWS.append((f"SDPA {s}x{d} causal", "sdpa", f"{s}x{d}_causal", sdpa_flops(s, d)))
for seq, dim, heads in [(16, 64, 4), (128, 256, 8), (512, 512, 8)]:
    ROWS.append((f"MHA layer {seq}x{dim}x{heads}", "layer", f"{seq}x{dim}x{heads}",
                 layer_flops(seq, dim)))
ROWS.append(("MHA batch 32 x (16x64x4)", "batch", "32x16x64x4", 32 * layer_flops(16, 64)))

criterion_mtimes = []


def ours(group, function, param):
    """Criterion's median in µs, or None when its file is missing or unreadable."""
    path = os.path.join(CRITERION_DIR, group, function, param, "new", "estimates.json")
    try:
        with open(path) as f:
            ns = json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    criterion_mtimes.append(os.path.getmtime(path))
    return ns / 1e3


def rate(group, function, param):
    """Criterion's throughput over its median, in giga-elements per second, or None."""
    median = ours(group, function, param)
    path = os.path.join(CRITERION_DIR, group, function, param, "new", "benchmark.json")
    try:
        with open(path) as f:
            elements = json.load(f)["throughput"]["Elements"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return elements / (median * 1e3) if median else None


# The peers' results, {(peer, threads, id): median µs}, and their meta lines (versions).
peers, meta = {}, {}
with open(env["BP_PEERS_JSONL"]) as f:
    for line in filter(None, map(str.strip, f)):
        rec = json.loads(line)
        if rec.get("meta"):
            meta[rec["peer"]] = rec
        else:
            peers[(rec["peer"], rec["threads"], rec["id"])] = rec["median_us"]


def us(x):
    if x is None:
        return DASH
    return f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 10_000 else f"{x:.0f}"


def ratio(peer, mine):
    return DASH if peer is None or mine is None else f"{peer / mine:.2f}"


header = ["workload", "static-attention simd (µs)", "scalar (µs)", "simd 2T (µs)",
          "torch 1T (µs)", "torch 2T (µs)", "candle 1T (µs)", "candle 2T (µs)",
          "torch 1T / ours", "candle 1T / ours", "ours GFLOP/s"]
table = ["| " + " | ".join(header) + " |",
         "|---|" + "---:|" * (len(header) - 1)]
footnotes = []
for label, group, param, flops in ROWS:
    wid = f"{group}/{param}"
    simd, scalar = ours(group, "simd", param), ours(group, "scalar", param)
    simd_2t = ours(group, "simd_2threads", param) if wid == TWO_THREADS else None
    t1, t2 = peers.get(("torch", 1, wid)), peers.get(("torch", 2, wid))
    c1, c2 = peers.get(("candle", 1, wid)), peers.get(("candle", 2, wid))
    gflops = DASH if simd is None else f"{flops / (simd * 1e3):.1f}"
    cells = [label, us(simd), us(scalar), us(simd_2t), us(t1), us(t2), us(c1), us(c2),
             ratio(t1, simd), ratio(c1, simd), gflops]
    table.append("| " + " | ".join(cells) + " |")
    if wid == TWO_THREADS:
        footnotes.append(f"2 threads, {label}: torch 2T / ours 2T = {ratio(t2, simd_2t)}, "
                         f"candle 2T / ours 2T = {ratio(c2, simd_2t)}.")

# Header lines.
if env["BP_RAN_OURS"] == "1":
    ours_note = "criterion medians from this run"
    if env["BP_FILTER"]:
        ours_note += f" (filter `{env['BP_FILTER']}`; other cells are earlier results)"
elif criterion_mtimes:
    newest = datetime.fromtimestamp(max(criterion_mtimes), timezone.utc)
    ours_note = ("criterion medians already on disk (--skip-ours; newest written "
                 f"{newest:%Y-%m-%d %H:%M UTC})")
else:
    ours_note = "no criterion results found"

busy, busy_warn = int(env["BP_MAX_BUSY"]), int(env["BP_BUSY_WARN"])
if busy < 0:
    load = "not measured (nothing was timed in this run)"
else:
    load = f"at most {busy}% of the CPUs busy just before a timed run"
    if busy > busy_warn:
        load += f" — **above {busy_warn}%: rerun on a quiet machine**"

torch = meta.get("torch")
torch_note = (f"{torch['version']} (CPU capability {torch.get('cpu_capability', '?')})"
              if torch else "not run")
candle_note = f"candle-core {env['BP_CANDLE_VERSION']}" if env["BP_CANDLE_VERSION"] else "not run"
quick_note = " — **quick mode** (short runs, for testing only)" if env["BP_QUICK"] == "1" else ""

# Decoding: one step at a cache length, ours against transformers' (1 thread) and against
# recomputing the whole causal forward.
decode = ["| decoding step | ours (µs) | recompute the causal forward (µs) | transformers 1T (µs) "
          "| transformers / ours | recompute / step |",
          "|---|---:|---:|---:|---:|---:|"]
for layer, label in (("mha", "MHA 512x8"), ("gqa", "GQA 8q/2kv, d 64")):
    for length in (128, 1024):
        param = f"cache_{length}"
        step = ours("decode", f"{layer}_step", param)
        full = ours("decode", f"{layer}_recompute", param)
        hf = peers.get(("torch", 1, f"decode/{layer}_step/{param}"))
        decode.append(f"| {label}, cache {length} | {us(step)} | {us(full)} | {us(hf)} "
                      f"| {ratio(hf, step)} | {ratio(full, step)} |")

# bf16 weights: our `half` group against PyTorch's bfloat16 module (1 thread), with our own f32
# layer and PyTorch's f32 module beside them.
half = ["| bf16 and i8 weights | ours f32 (µs) | ours bf16 (µs) | ours bf16 widened (µs) "
        "| ours i8 (µs) | torch bf16 1T (µs) | torch f32 1T (µs) | ours f32 / ours bf16 "
        "| torch bf16 / ours bf16 | ours f32 / ours i8 | torch bf16 / ours i8 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for param in ("128x256x8", "512x512x8"):
    f32_, b16 = ours("half", "f32", param), ours("half", "bf16", param)
    wide, q8 = ours("half", "bf16_widened", param), ours("half", "i8", param)
    tb, tf = peers.get(("torch", 1, f"half/{param}")), peers.get(("torch", 1, f"layer/{param}"))
    half.append(f"| MHA layer {param} | {us(f32_)} | {us(b16)} | {us(wide)} | {us(q8)} | {us(tb)} "
                f"| {us(tf)} | {ratio(f32_, b16)} | {ratio(tb, b16)} | {ratio(f32_, q8)} "
                f"| {ratio(tb, q8)} |")
# Half-precision weights widened to f32 (no bf16 products): each time beside the f32 layer on
# the same kernel (AVX2 rows only where the selected kernel is AVX-512).
widened = ["| widened weights | ours f32 (µs) | bf16 widened (µs) | f16 (µs) | AVX2 f32 (µs) "
           "| AVX2 bf16 (µs) | AVX2 f16 (µs) | AVX2 i8 (µs) | bf16 / f32 | f16 / f32 "
           "| AVX2 bf16 / f32 | AVX2 f16 / f32 | AVX2 f32 / i8 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for param in ("128x256x8", "512x512x8"):
    f32_, wide, h16 = (ours("half", f, param) for f in ("f32", "bf16_widened", "f16"))
    a32, a16b, a16h, a8 = (ours("half", f, param)
                           for f in ("f32_avx2", "bf16_avx2", "f16_avx2", "i8_avx2"))
    widened.append(f"| MHA layer {param} | {us(f32_)} | {us(wide)} | {us(h16)} | {us(a32)} "
                   f"| {us(a16b)} | {us(a16h)} | {us(a8)} | {ratio(wide, f32_)} "
                   f"| {ratio(h16, f32_)} | {ratio(a16b, a32)} | {ratio(a16h, a32)} "
                   f"| {ratio(a32, a8)} |")
# The bf16 peak from its bench's throughput too: `vdpbf16ps` on whole vectors, or AMX's
# `tdpbf16ps` where the bf16 projections run on the tiles.
bf16_rate, fma_peak = rate("peak", "simd", "bf16_dot"), ours("peak", "simd", "fma")
peaks = []
if bf16_rate and fma_peak:
    # 100 000 rounds of 12 FMAs of 16 lanes × 2 FLOPs.
    peaks.append(f"Peaks in this run: f32 FMA {1.2e6 * 32 / (fma_peak * 1e3):.1f} GFLOP/s, "
                 f"bf16 dot product {bf16_rate:.1f} GFLOP/s.")
# The i8 products' peaks from their benches' throughputs (the operations differ per kernel).
for name in ("simd", "avx2"):
    i8_rate = rate("peak", name, "i8_dot")
    if i8_rate:
        peaks.append(f"i8 products ({name}) {i8_rate:.1f} GOP/s.")
avx2_fma = rate("peak", "avx2", "fma")
if avx2_fma:
    peaks.append(f"AVX2 FMA {avx2_fma:.1f} GFLOP/s.")

print("\n".join([
    "# static-attention vs PyTorch and candle",
    "",
    f"- date: {env['BP_DATE']}{quick_note}",
    f"- machine: {env['BP_MACHINE']}",
    f"- static-attention: git {env['BP_GIT']}; {ours_note} in `{CRITERION_DIR}`",
    f"- background load: {load}",
    f"- torch: {torch_note}",
    f"- candle: {candle_note}",
    "",
    "Median time per call in µs (f32, inference only). 1T runs are pinned to one core with "
    "taskset; 2T runs use both cores. Ratios are peer / static-attention simd: above 1 means "
    "static-attention is faster. GFLOP/s counts dense FLOPs (causal too) over the simd time. "
    f"{DASH} marks a result that does not exist or was not run.",
    "",
    *table,
    "",
    *footnotes,
    "",
    *decode,
    "",
    *half,
    "",
    *widened,
    "",
    *peaks,
]))
PY

mkdir -p "$(dirname "$OUT_MD")"
cp "$WORK/table.md" "$OUT_MD"
cat "$OUT_MD"
note "written to ${OUT_MD#"$REPO"/}"
