#!/usr/bin/env bash
# Executed instructions per forward pass of the Cortex-M4F firmware's MultiHead (its shape read
# from embedded/cortex-m4f/src/model.rs) with
# f32, f16 and i8 weights, under QEMU (mps2-an386): a deterministic cost figure. These are
# instruction counts, not cycles (QEMU is not cycle-accurate; on a real Cortex-M4 a load, a
# multiply-accumulate or a branch take different numbers of cycles).
#
# How: QEMU's `insn` TCG plugin (tests/plugin/insn.c of QEMU's source), built against the
# source package of the installed qemu-system-arm so the plugin API matches, counts every
# executed instruction and, with `match=sev`, reports the count between consecutive `SEV`
# instructions. The firmware (embedded/cortex-m4f/src/main.rs) executes `SEV` only as marks:
# two back to back (the marks' own cost), then one before and one after each forward pass.
# A pass is the count between its two marks less the marks' cost.
#
# Needs Debian or Ubuntu with apt (it installs qemu-system-arm, gcc, pkg-config and
# libglib2.0-dev if missing, and adds a deb-src entry for the source package if there is
# none) and the Rust target thumbv7em-none-eabihf. Usage: scripts/insn_counts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FW_DIR=$ROOT/embedded/cortex-m4f
CACHE=$FW_DIR/target/insn-plugin
mkdir -p "$CACHE"

export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists glib-2.0 2>/dev/null || need+=(libglib2.0-dev)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 || true

# The plugin, from the source package of the installed QEMU (its Debian source version).
SRC_VERSION=$(dpkg-query -W -f='${source:Version}' qemu-system-arm)
PLUGIN=$CACHE/libinsn-$SRC_VERSION.so
if [ ! -f "$PLUGIN" ]; then
    (
        cd "$CACHE"
        if ! ls qemu_*.orig.tar.* >/dev/null 2>&1; then
            if ! apt-get source --download-only "qemu=$SRC_VERSION" >/dev/null 2>&1; then
                # No deb-src entry yet: add one for each deb entry of the system's sources.
                for f in /etc/apt/sources.list.d/*.sources; do
                    [ -f "$f" ] && grep -q '^Types: deb$' "$f" || continue
                    sed 's/^Types: deb$/Types: deb-src/' "$f" >"/etc/apt/sources.list.d/insn-counts-src-$(basename "$f")"
                done
                if [ -f /etc/apt/sources.list ]; then
                    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/insn-counts-src.list
                fi
                apt-get update -qq
                apt-get source --download-only "qemu=$SRC_VERSION" >/dev/null
            fi
        fi
        orig=$(ls qemu_*.orig.tar.*)
        tar -xf "$orig" --wildcards '*/include/qemu/qemu-plugin.h' '*/tests/plugin/insn.c'
        top=$(dirname "$(dirname "$(dirname "$(ls ./*/include/qemu/qemu-plugin.h)")")")
        # shellcheck disable=SC2046
        gcc -O2 -shared -fPIC -I "$top/include/qemu" $(pkg-config --cflags glib-2.0) \
            "$top/tests/plugin/insn.c" -o "$PLUGIN" $(pkg-config --libs glib-2.0)
    )
fi

(cd "$FW_DIR" && cargo build --release -q)
ELF=$FW_DIR/target/thumbv7em-none-eabihf/release/attention-cortex-m4f
LOG=$CACHE/plugin.log
rm -f "$LOG"
timeout 300 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
    -semihosting-config enable=on,target=native \
    -plugin "$PLUGIN",match=sev -d plugin -D "$LOG" -kernel "$ELF" >"$CACHE/firmware.log"
grep -q "firmware: ok" "$CACHE/firmware.log"

# The counts between consecutive marks, in order: [0] reset to the first mark, [1] the marks'
# cost, [2] nothing, then per layer the pass [3], [5], [7] and the printing after it.
mapfile -t deltas < <(sed -n 's/.*Δ+\([0-9]*\) since last match.*/\1/p' "$LOG")
if [ "${#deltas[@]}" -ne 8 ]; then
    echo "expected 8 marks in the plugin's log, found ${#deltas[@]}" >&2
    exit 1
fi
marks=${deltas[1]}
f32=$((deltas[3] - marks))
f16=$((deltas[5] - marks))
i8=$((deltas[7] - marks))

# The layer's shape, as the firmware's model declares it.
model_const() {
    local v
    v=$(sed -n "s/^pub const $1: usize = \([0-9]*\);/\1/p" "$FW_DIR/src/model.rs")
    [[ $v =~ ^[0-9]+$ ]] || { echo "model.rs: no literal pub const $1" >&2; exit 1; }
    echo "$v"
}
shape="$(model_const SEQ), $(model_const DIM), $(model_const HEADS)"

echo "Executed instructions per causal forward pass of MultiHead<$shape> on the Cortex-M4F"
echo "firmware (QEMU $(qemu-system-arm --version | sed -n '1s/.*version \([^ ]*\).*/\1/p'), insn plugin of"
echo "QEMU source $SRC_VERSION, kernel $(sed -n 's/^kernel //p' "$CACHE/firmware.log")): instruction counts, not cycles."
echo
echo "| weights | layer | instructions | vs f32 |"
echo "|---|---|---:|---:|"
# `n` with a space every three digits, and its ratio to the f32 pass (rounded to hundredths).
row() {
    local w=$1 layer=$2 n=$3
    local r=$(((n * 200 / f32 + 1) / 2))
    printf '| `%s` | `%s` | %s | %d.%02d× |\n' "$w" "$layer" \
        "$(printf '%d' "$n" | sed ':a;s/\B[0-9]\{3\}\>/ &/;ta')" $((r / 100)) $((r % 100))
}
row f32 "MultiHead<$shape>" "$f32"
row f16 "MultiHead<$shape, f32, f16>" "$f16"
row i8 "MultiHead<$shape, f32, i8>" "$i8"
