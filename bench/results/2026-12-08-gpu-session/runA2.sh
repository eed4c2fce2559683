#!/usr/bin/env bash
# This session's second GPU command, on the same warm machine as runA1: what was built but never
# measured on a GPU. Bundled with
#   bash scripts/gpu-bundle.sh golden-check tiered-bench batch-bench; git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-08-gpu-session/runA2.sh
# The golden check with the defaults; issue 13's 8B 128K (6 GiB / 8 GiB): leoam fp16, everything
# together and offload-all, disk warm and cold; issue 14's 32K batch at B 1 and 8 under 6 GiB / 8 GiB
# shared by the batch, leoam against offload-all.
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 40 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-defaults.txt" 2>&1 || echo "golden check (defaults): FAILED or stopped" | tee -a "$res/log.txt"
cp "$res/device.txt" "$res/golden-check-defaults.txt" "$OUT/"; grep -c "^ok" "$res/golden-check-defaults.txt"; grep -v "^ok" "$res/golden-check-defaults.txt" | head -8
part together128k 230 together-128k TOGETHER_POLICIES=leoam+all,leoam,offload-all
part batch32k 290 batch BATCH_1K=0 BATCH_32K_BATCHES=1,8 BATCH_32K_STEPS=2 BATCH_FILL_S=90 BATCH_LEOAM_S=130 BATCH_OFFLOAD_S=150
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
