#!/usr/bin/env bash
# The test job: installs what is missing, type-checks, and runs the vitest suite
# (WebGPU kernels on lavapipe, the CPU reference, HF golden outputs, the CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
LEOAM_NEED_TEST_TOOLS=1 bash scripts/ensure-deps.sh
echo "[leoam test] type-checking (tsc --noEmit)" >&2
npx tsc -p tsconfig.json || { echo "[leoam test] FAILED: type errors" >&2; exit 1; }
echo "[leoam test] running the test suite (vitest)" >&2
npx vitest run "$@"
