#!/usr/bin/env bash
# The night's tiered-step command (issue 13, helper "step"): the 8B 64K tiered decode step,
# GPU 6 GiB / host 8 GiB, random KV, side by side with the tree before it (BASE), each in its
# own process under a V8 CPU profile (so the host's share of the step is seen per function).
# Bundled with `BASE=<commit> bash scripts/gpu-bundle.sh tiered-bench` and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-07-night-tiered-step/run.sh
# STEP_POLICIES (default leoam) are what this tree runs; the base runs leoam.
set -uo pipefail
res=/tmp/leoam-step
rm -rf "$res" && mkdir -p "$res"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$res/device.txt"
cat .bench-bundle/COMMIT .bench-bundle/base/COMMIT 2>/dev/null | tee -a "$res/device.txt" || true
bash scripts/gpu-unpack.sh
common=(--preset llama-3.1-8b --context 65536 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --steps 6 --max-seconds 6)
run() { # run NAME LIMIT MJS ARGS...: one tiered-bench process under a CPU profile
  local name=$1 limit=$2 mjs=$3
  shift 3
  echo "== $name (limit $limit s, at $SECONDS s)" | tee -a "$res/log.txt"
  timeout "$limit" node --cpu-prof --cpu-prof-dir="$res/prof-$name" --cpu-prof-interval 500 "$mjs" "${common[@]}" \
    --kv-dir "/tmp/leoam-kv-$name" --timeline "$res/timeline-$name" --out "$res/$name.json" "$@" 2>&1 | tee -a "$res/console.txt" \
    || echo "$name: exit $?" | tee -a "$res/log.txt"
  rm -rf "/tmp/leoam-kv-$name"
}
run base 62 .bench-bundle/base/tiered-bench.mjs --policies leoam
run step 70 .bench-bundle/tiered-bench.mjs --policies "${STEP_POLICIES:-leoam}"
echo "total $SECONDS s" | tee -a "$res/log.txt"
tar -czf "$OUT/step.tar.gz" -C "$res" .
cp "$res/console.txt" "$res/log.txt" "$OUT/" 2>/dev/null || true
