#!/usr/bin/env bash
# The late session's second GPU command: issue 13's mechanisms together, after 9761a12 (the first
# command's leoam rows overflowed their context). Bundled with
#   bash scripts/gpu-bundle.sh tiered-bench recompute-bench; git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-07-late-gpu-session/run2.sh
# 8B 64K and LongChat-7B 32K at 6 GiB / 8 GiB (leoam, int4 alone, everything together,
# offload-all; disk warm and cold; timelines), then recompute against fetch (issue 13 §5).
set -uo pipefail
res=/tmp/leoam-res
rm -rf "$res" && mkdir -p "$res"
. scripts/gpu-part.sh
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$res/device.txt"
cat .bench-bundle/COMMIT 2>/dev/null | tee -a "$res/device.txt" || true
bash scripts/gpu-unpack.sh
cp "$res/device.txt" "$OUT/"
part together 170 together TOGETHER_POLICIES=leoam,leoam@4,leoam+all,offload-all
part longchat 140 together TOGETHER_POLICIES=leoam,leoam+all,offload-all -- --preset longchat-7b-32k --context 32768
part recompute 60 recompute RECOMPUTE_S=50 RECOMPUTE_E2E=0
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
