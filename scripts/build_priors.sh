#!/usr/bin/env bash
# Regenerate the shipped default priors for the simulated RK3588 profile:
#   1. profile the paper grid on the simulated device (latency noise on, thermal drift and
#      contention off, so the priors describe the device's steady state), then
#   2. train one classifier per stage (Random Forest for qkv, K-Neighbors for attn) and
#      export the prior to adaptive_sched/data/priors-rk3588.json.
# The comparison table of the training step is printed and saved next to the database.
#
# Usage: scripts/build_priors.sh [WORKDIR]   (default: a fresh temporary directory)
# Deterministic: the same simulator, grid and seeds give the same file (up to created_at).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
db="$work/profiles-rk3588.db"
out="$here/adaptive_sched/data/priors-rk3588.json"
py="${PYTHON:-python3}"

# The shipped rk3588-sim config with the drift processes turned off (noise stays on).
cat > "$work/rk3588-sim-steady.yaml" <<'YAML'
device: rk3588
backends:
  gpu: {executor: sim}
  npu: {executor: sim}
  cpu: {executor: sim, role: fallback}
simulator: {profile: rk3588, seed: 0, noise: true, thermal: false, contention: false}
priors: none
YAML

rm -f "$db"
cd "$here"
"$py" -m adaptive_sched profile --config "$work/rk3588-sim-steady.yaml" --grid paper --db "$db" \
    --warmup 2 --repetitions 10
"$py" -m adaptive_sched train --db "$db" --device rk3588 --qkv-model rf --attn-model knn --seed 0 \
    --export "$out" | tee "$work/training-table.txt"
echo "wrote $out (work files in $work)" >&2
