#!/usr/bin/env bash
# Runs on the GPU machine after `. .gpu/prelude.sh`: unpacks dawn.node, checks the kernels
# against the golden outputs, then runs the engine, actor and upload (host <-> GPU transfer)
# benchmarks. Results go to $OUT (or bench/results).
set -euo pipefail
out="${OUT:-bench/results}"
mkdir -p .bench-bundle/node_modules/webgpu/dist/linux-x64 "$out"
[ -f .bench-bundle/node_modules/webgpu/dist/linux-x64/dawn.node ] || xz -dc .bench-bundle/dawn.node.xz > .bench-bundle/node_modules/webgpu/dist/linux-x64/dawn.node
for f in .bench-bundle/*.mjs.xz; do [ -f "${f%.xz}" ] || xz -dkc "$f" > "${f%.xz}"; done
[ -d .bench-bundle/node_modules/lmdb ] || tar -xJf .bench-bundle/lmdb.tar.xz -C .bench-bundle
command -v nats-server >/dev/null || { xz -dc .bench-bundle/nats-server.xz > /usr/local/bin/nats-server; chmod +x /usr/local/bin/nats-server; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv || true
node .bench-bundle/golden-check.mjs models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt"
node .bench-bundle/engine-bench.mjs --out "$out/engine-bench.json" "$@" 2>&1 | tee "$out/engine-bench.txt"
node .bench-bundle/actor-overhead.mjs --out "$out/actor-overhead.json" 2>&1 | tee "$out/actor-overhead.txt"
node .bench-bundle/upload-bench.mjs --total-mib 512 --json "$out/upload-bench.json" 2>&1 | tee "$out/upload-bench.txt"
