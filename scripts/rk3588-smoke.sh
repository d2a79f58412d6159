#!/usr/bin/env bash
# A smoke test of the NPU backend on an RK3588 board: checks the runtime and the NPU device,
# loads (or builds) the RKNN models, runs the executor conformance suite on the NPU, profiles a
# small grid, and prints a summary to paste into an issue.
#
#   bash scripts/rk3588-smoke.sh [MODEL_DIR]        # default: /var/lib/adaptive-sched/rknn
#
# MODEL_DIR must hold the conformance and smoke models. Build them on an x86 host (see
# docs/rknn.md) and copy the directory over:
#   bash scripts/rknn-toolkit-env.sh
#   M=models-smoke; B=".rknn-venv/bin/python scripts/build_rknn_models.py $M"
#   $B --conformance --check && $B --stage qkv attn --d 64 128 --kv-buckets 64 --n-buckets 16 --check \
#     && $B --stage qkv --n 1 --d 64 128 --check
#   rsync -a $M/ board:/var/lib/adaptive-sched/rknn/
# or set RKNN_TOOLKIT_PYTHON to an rknn-toolkit2 interpreter on the board and the script builds
# them itself (without the simulator check: the conformance suite checks them on the NPU).
#
# Environment: PYTHON (default python3) must import adaptive_sched and rknnlite
# (pip install "adaptive-sched[rknn]"); CORE_MASK (default "auto"); REPETITIONS (default 5).
# RK3588_SMOKE_SYSROOT and RK3588_SMOKE_MACHINE stand in for / and `uname -m` (the test suite runs
# the script against a fake board: a directory tree and the fake rknnlite of tests/fake_rknnlite).
# Exit status: 0 all passed, 1 a check failed, 2 not an RK3588 or nothing to test with.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

MODEL_DIR="${1:-/var/lib/adaptive-sched/rknn}"
PYTHON="${PYTHON:-python3}"
CORE_MASK="${CORE_MASK:-auto}"
REPETITIONS="${REPETITIONS:-5}"
ROOT="${RK3588_SMOKE_SYSROOT:-}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rk3588-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$WORK/summary.md"
status=0

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
fail() { say "- FAIL: $*"; status=1; }
refuse() { echo "rk3588-smoke: $*" >&2; exit 2; }

# -- 1. is this an RK3588? -----------------------------------------------------------------------
machine="${RK3588_SMOKE_MACHINE:-$(uname -m)}"
compatible="$({ tr '\0' ' ' < "$ROOT/proc/device-tree/compatible"; } 2>/dev/null | sed 's/ *$//' || true)"
if [ "$machine" != "aarch64" ] || ! grep -q "rockchip,rk3588" <<<"$compatible"; then
    refuse "this host is not an RK3588 board (machine $machine, device tree: ${compatible:-none});" \
           "run it on the board. To build or check models on an x86 host, use scripts/rknn-toolkit-env.sh" \
           "and scripts/build_rknn_models.py --check (see docs/rknn.md)."
fi
board="$({ tr -d '\0' < "$ROOT/proc/device-tree/model"; } 2>/dev/null || echo unknown)"

: > "$SUMMARY"
say "### adaptive-sched NPU smoke test"
say ""
say "- board: $board ($compatible)"
say "- kernel: $(uname -r)"

# -- 2. the NPU device and its driver ------------------------------------------------------------
npu_node=""
for node in "$ROOT"/sys/class/drm/renderD*; do
    [ -e "$node/device/driver" ] || continue
    if [ "$(basename "$(readlink -f "$node/device/driver")")" = "RKNPU" ] \
        || readlink -f "$node/device/driver" | grep -qi rknpu; then
        npu_node="/dev/dri/$(basename "$node")"
    fi
done
[ -z "$npu_node" ] && [ -e "$ROOT/dev/rknpu" ] && npu_node=/dev/rknpu
if [ -n "$npu_node" ]; then
    say "- NPU device: $npu_node"
else
    fail "no NPU device node (no /dev/dri/renderD* bound to the rknpu driver, no /dev/rknpu): is the rknpu driver loaded?"
fi
driver="$(cat "$ROOT/sys/kernel/debug/rknpu/version" 2>/dev/null || true)"
[ -z "$driver" ] && [ -z "$ROOT" ] && driver="$(dmesg 2>/dev/null | grep -io 'rknpu.*driver.*version[^,]*' | tail -1)"
say "- rknpu driver: ${driver:-unknown (read /sys/kernel/debug/rknpu/version as root)}"
freq="$(cat "$ROOT/sys/class/devfreq/fdab0000.npu/cur_freq" 2>/dev/null || true)"
[ -n "$freq" ] && say "- NPU clock: $((freq / 1000000)) MHz"

# -- 3. the runtime ------------------------------------------------------------------------------
librknnrt=""
[ -z "$ROOT" ] && librknnrt="$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*librknnrt.so[^ ]*' | head -1)"
if [ -z "$librknnrt" ]; then
    for f in /usr/lib/librknnrt.so /usr/lib64/librknnrt.so /usr/local/lib/librknnrt.so; do
        if [ -e "$ROOT$f" ]; then librknnrt="$ROOT$f"; fi
    done
fi
if [ -n "$librknnrt" ]; then
    version="$(strings "$librknnrt" 2>/dev/null | grep -m1 -i 'librknnrt version' || true)"
    say "- librknnrt: $librknnrt ${version:+($version)}"
else
    fail "librknnrt.so not found: install Rockchip's runtime (rknpu2) matching rknn-toolkit-lite2"
fi
if ! versions="$("$PYTHON" - <<'EOF' 2>&1
import importlib.metadata as m
import adaptive_sched  # noqa: F401
import rknnlite.api  # noqa: F401
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "(not installed as a package)"
print(f"adaptive-sched {version('adaptive-sched')}, rknn-toolkit-lite2 {version('rknn-toolkit-lite2')}")
EOF
)"; then
    say "- python: $PYTHON cannot import adaptive_sched and rknnlite:"
    say "  $(tail -1 <<<"$versions")"
    say "  install them with: pip install 'adaptive-sched[rknn]'"
    cat "$SUMMARY"
    exit 2
fi
say "- python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'), $versions"

# -- 4. the models -------------------------------------------------------------------------------
if [ ! -f "$MODEL_DIR/manifest.json" ]; then
    if [ -n "${RKNN_TOOLKIT_PYTHON:-}" ]; then
        echo "rk3588-smoke: building the smoke models into $MODEL_DIR with $RKNN_TOOLKIT_PYTHON" >&2
        B=("$RKNN_TOOLKIT_PYTHON" scripts/build_rknn_models.py "$MODEL_DIR")
        if ! { "${B[@]}" --conformance && "${B[@]}" --stage qkv attn --d 64 128 --kv-buckets 64 --n-buckets 16 \
                && "${B[@]}" --stage qkv --n 1 --d 64 128; } >&2; then
            fail "building the models failed (see above)"
        fi
    else
        say "- models: $MODEL_DIR has no manifest.json; build them on an x86 host (see the top of $0)"
        cat "$SUMMARY"
        exit 2
    fi
fi
models="$("$PYTHON" -c "
from adaptive_sched.executors.rknn_models import read_manifest
m = read_manifest('$MODEL_DIR')
b = sum(e.bucket for e in m.entries)
print(f'{len(m.entries)} in the manifest ({b} buckets)')" 2>&1)" || fail "manifest: $models"
say "- models: $MODEL_DIR, $models"

# -- 5. a config with the NPU (and the Mali GPU if OpenCL runs on it) ----------------------------
gpu=""
if "$PYTHON" -c "
import sys
from adaptive_sched.executors import create_executor
sys.exit(0 if create_executor('gpu_opencl', device='Mali').is_available() else 1)" 2>/dev/null; then
    gpu=$'  gpu:\n    executor: gpu_opencl\n    options: {device: "Mali"}\n'
fi
cat > "$WORK/smoke.yaml" <<EOF
device: rk3588
backends:
${gpu}  npu:
    executor: npu_rknn
    options: {model_dir: "$MODEL_DIR", core_mask: "$CORE_MASK"}
  cpu:
    executor: cpu_numpy
    role: fallback
EOF
AS=("$PYTHON" -m adaptive_sched)

say ""
say "#### executors"
say '```'
"${AS[@]}" executors --config "$WORK/smoke.yaml" 2>&1 | tee -a "$SUMMARY"
say '```'

# -- 6. the conformance suite on the NPU ---------------------------------------------------------
say ""
say "#### conformance (adaptive-sched check)"
say '```'
"${AS[@]}" check --config "$WORK/smoke.yaml" --output json > "$WORK/check.json" 2> "$WORK/check.err"
check_rc=$?
"$PYTHON" - "$WORK/check.json" <<'EOF' | tee -a "$SUMMARY"
import collections, json, sys
rows = json.load(open(sys.argv[1]))
count = collections.Counter((r["backend"], r["status"]) for r in rows)
for backend in sorted({r["backend"] for r in rows}):
    print(f"{backend}: " + ", ".join(f"{count[(backend, s)]} {s}" for s in ("passed", "failed", "skipped")))
for r in rows:
    if r["status"] != "passed":
        print(f"  {r['backend']} {r['check']}: {r['status']}: {r['message'][:300]}")
EOF
say '```'
[ "$check_rc" -eq 0 ] || fail "the conformance suite failed (exit $check_rc): $(tail -1 "$WORK/check.err")"

# -- 7. a small profile --------------------------------------------------------------------------
say ""
say "#### profile (grid smoke, $REPETITIONS repetitions, median ms)"
say '```'
if "${AS[@]}" profile --config "$WORK/smoke.yaml" --grid smoke --db "$WORK/profile.db" \
        --repetitions "$REPETITIONS" --output json > "$WORK/profile.json" 2> "$WORK/profile.err"; then
    "$PYTHON" - "$WORK/profile.db" <<'EOF' | tee -a "$SUMMARY"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
rows = con.execute("SELECT stage, n, d, kv_len, precision, backend, median_s, ok, error FROM profiles "
                   "ORDER BY stage, precision, n, d, kv_len, backend").fetchall()
table = {}
for stage, n, d, kv, p, backend, median, ok, error in rows:
    table.setdefault((stage, p, n, d, kv), {})[backend] = f"{median * 1e3:.3f}" if ok else "error"
backends = sorted({r[5] for r in rows})
print(f"{'stage':5} {'prec':4} {'n':>4} {'d':>5} {'kv':>5} " + " ".join(f"{b:>9}" for b in backends))
for (stage, p, n, d, kv), cells in table.items():
    print(f"{stage:5} {p:4} {n:>4} {d:>5} {kv:>5} " + " ".join(f"{cells.get(b, '-'):>9}" for b in backends))
errors = [r for r in rows if not r[7]]
for r in errors[:5]:
    print(f"error: {r[0]} n={r[1]} d={r[2]} kv={r[3]} {r[4]} on {r[5]}: {r[8]}")
EOF
else
    fail "profiling failed: $(tail -1 "$WORK/profile.err")"
fi
say '```'

say ""
if [ "$status" -eq 0 ]; then say "result: PASS"; else say "result: FAIL"; fi
echo >&2
echo "rk3588-smoke: paste everything from '### adaptive-sched NPU smoke test' into an issue." >&2
exit "$status"
