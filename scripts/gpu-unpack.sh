#!/usr/bin/env bash
# On the GPU machine, from the repository root: unpacks what scripts/gpu-bundle.sh packed into
# .bench-bundle/ (dawn.node, the bundled programs and their BASE builds, lmdb, nats-server),
# skipping what is already unpacked. Run by scripts/gpu-run.sh and the combined commands in
# bench/results/*/run.sh.
set -euo pipefail
b=.bench-bundle
mkdir -p "$b/node_modules/webgpu/dist/linux-x64"
[ -f "$b/node_modules/webgpu/dist/linux-x64/dawn.node" ] || xz -dc "$b/dawn.node.xz" > "$b/node_modules/webgpu/dist/linux-x64/dawn.node"
for f in "$b"/*.mjs.xz "$b"/base/*.mjs.xz; do [ ! -f "$f" ] || [ -f "${f%.xz}" ] || xz -dkc "$f" > "${f%.xz}"; done
[ -d "$b/node_modules/lmdb" ] || [ ! -f "$b/lmdb.tar.xz" ] || tar -xJf "$b/lmdb.tar.xz" -C "$b"
command -v nats-server >/dev/null || [ ! -f "$b/nats-server.xz" ] || { xz -dc "$b/nats-server.xz" > /usr/local/bin/nats-server; chmod +x /usr/local/bin/nats-server; }
