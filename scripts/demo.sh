#!/usr/bin/env bash
# The main job: installs what is missing, then runs a long-context request (a pass key
# hidden in ~2K tokens of text) on the bundled test model and prints the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
echo "[leoam demo] a pass-key request through NATS; WebGPU on $( [ -e /dev/nvidia0 ] && echo 'the GPU' || echo 'lavapipe (CPU): the prefill of ~3000 tokens takes about half a minute on two idle cores')" >&2
exec node --import tsx scripts/demo.ts "$@"
