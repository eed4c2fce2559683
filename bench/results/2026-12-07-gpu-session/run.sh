#!/usr/bin/env bash
# One device command (under 10 minutes) after `. .gpu/prelude.sh`, bundle:
#   bash scripts/gpu-bundle.sh golden-check tiered-bench batch-bench
# Part 1 (PARTS=1): golden check; tiered-bench 8B 64K, 6 GiB GPU / 8 GiB host: full, leoam,
#   leoam+pipe (depth 2), offload-all with SVG timelines; then leoam and leoam+pipe at 12 GiB GPU.
# Part 2 (PARTS=2, same bundle and commit, so no golden check): tiered-bench 8B 64K leoam at
#   compression 16/8/4/importance; batch-bench 1K (batch 1/4/16, three projection kinds);
#   batch-bench 32K leoam and offload-all at batch 1/4/8 (6 GiB GPU / 8 GiB host).
set -uo pipefail
out="${OUT:-bench/results}"
mkdir -p .bench-bundle/node_modules/webgpu/dist/linux-x64 "$out" /tmp/leoam-kv
[ -f .bench-bundle/node_modules/webgpu/dist/linux-x64/dawn.node ] || xz -dc .bench-bundle/dawn.node.xz > .bench-bundle/node_modules/webgpu/dist/linux-x64/dawn.node
for f in .bench-bundle/*.mjs.xz; do [ -f "${f%.xz}" ] || xz -dkc "$f" > "${f%.xz}"; done
[ -d .bench-bundle/node_modules/lmdb ] || tar -xJf .bench-bundle/lmdb.tar.xz -C .bench-bundle
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
[ "${PARTS:-1}" = 1 ] && { timeout 60 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$out/golden-check.txt" 2>&1; echo "golden rc=$?"; tail -4 "$out/golden-check.txt"; }
b=.bench-bundle
if [ "${PARTS:-1}" = 1 ]; then
  timeout 300 node $b/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies full,leoam,leoam+pipe,offload-all --pipeline-depth 2 \
    --steps 8 --max-seconds 15 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --timeline "$out/timeline-8b-64k" \
    --out "$out/tiered-8b-64k-pipeline.json" > "$out/tiered-8b-64k-pipeline.txt" 2>&1; echo "pipeline rc=$?"; tail -25 "$out/tiered-8b-64k-pipeline.txt"
  rm -rf /tmp/leoam-kv/*
  # A GPU budget that holds the whole context: every layer hits, so the per-layer wait is all the pipeline can remove.
  timeout 150 node $b/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies leoam,leoam+pipe --pipeline-depth 2 \
    --steps 8 --max-seconds 15 --gpu-kv-budget 12GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --timeline "$out/timeline-8b-64k-gpu12" \
    --out "$out/tiered-8b-64k-pipeline-gpu12.json" > "$out/tiered-8b-64k-pipeline-gpu12.txt" 2>&1; echo "pipeline 12GiB rc=$?"; tail -12 "$out/tiered-8b-64k-pipeline-gpu12.txt"
else
  timeout 220 node $b/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies leoam --compression 16,8,4,importance \
    --steps 6 --max-seconds 15 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --out "$out/tiered-8b-64k-compress.json" \
    > "$out/tiered-8b-64k-compress.txt" 2>&1; echo "compress rc=$?"; tail -20 "$out/tiered-8b-64k-compress.txt"
  rm -rf /tmp/leoam-kv/*
  timeout 100 node $b/batch-bench.mjs --context 1024 --batches 1,4,16 --policies full --projections gemm,gemv,multi --steps 24 --max-seconds 80 \
    --out "$out/batch-8b-1k.json" > "$out/batch-8b-1k.txt" 2>&1; echo "batch1k rc=$?"; tail -15 "$out/batch-8b-1k.txt"
  for policy in leoam offload-all; do
    timeout 120 node $b/batch-bench.mjs --context 32768 --batches 1,4,8 --policies $policy --projections gemm --gpu-kv-budget 6GiB --host-kv-budget 8GiB \
      --kv-dir /tmp/leoam-kv --steps 4 --fill-seconds 60 --max-seconds 100 --out "$out/batch-8b-32k-$policy.json" > "$out/batch-8b-32k-$policy.txt" 2>&1
    echo "batch32k $policy rc=$?"; tail -10 "$out/batch-8b-32k-$policy.txt"; rm -rf /tmp/leoam-kv/*
  done
fi
