#!/usr/bin/env bash
# This session's third GPU command: the new kernels' first GPU run, and where leoam's 64K step goes.
# Bundled with
#   bash scripts/gpu-bundle.sh flash-diag golden-check attn-bench leoam-cli skinny-bench batch-bench tiered-bench; git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-08-gpu-session/runB1.sh
# The golden check with the defaults; attn_prefill_fa (LEOAM_MATRIX_ATTENTION=split) against KDIRECT
# (flash-split: checks, then attention alone at 8K and 32K); gemm_stream against the matrix units'
# gemm_skinny (stream: the projections alone, then batched decode at 1K); 8B 64K at 6 GiB / 8 GiB
# with full and leoam+all, one step of each profiled per kernel (tiered-bench --profile).
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 40 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-defaults.txt" 2>&1 || echo "golden check (defaults): FAILED or stopped" | tee -a "$res/log.txt"
cp "$res/device.txt" "$res/golden-check-defaults.txt" "$OUT/"; grep -c "^ok" "$res/golden-check-defaults.txt"; grep -v "^ok" "$res/golden-check-defaults.txt" | head -8
part profile64k 110 together TOGETHER_POLICIES=full,leoam+all -- --profile
part split 220 flash-split SPLIT_TOKENS=8192,32768 SPLIT_S=215
part stream 170 stream STREAM_SKINNY_S=80 STREAM_BATCH_S=75
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
