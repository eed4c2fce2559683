#!/usr/bin/env bash
# The evening's one GPU command (device tool, carry [".gpu", ".bench-bundle"]), bundled with
#   bash scripts/gpu-bundle.sh golden-check attn-bench leoam-cli batch-bench skinny-bench gemm-bench tiered-bench
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-07-evening-gpu-session/run.sh
# One golden check with every matrix path on, then each issue's mode with GOLDEN_CHECK=0, each
# cut at its share of the 10-minute command (the device tool returns at most 8 files, so each
# mode's folder comes back as one tarball).
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 60 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-matrix-on.txt" 2>&1 || echo "golden check (matrix units on): FAILED or stopped" | tee -a "$res/log.txt"
LEOAM_MATRIX_UNITS=0 timeout 40 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-matrix-off.txt" 2>&1 || echo "golden check (matrix units off): FAILED or stopped" | tee -a "$res/log.txt"
head -3 "$res/golden-check-matrix-on.txt"; grep -c "^ok" "$res"/golden-check-*.txt; grep -v "^ok" "$res/golden-check-matrix-on.txt" | tail -5
part attn 100 attn ATTN_BUDGET_S=95 ATTN_E2E_LENGTHS=8192
part mma 70 mma MMA_PROJECTIONS=gemv,mma MMA_FORMS=16x1,16x2 MMA_BATCH_S=40 MMA_SKINNY_S=1 MMA_GEMM_S=20 MMA_GEMM_M=4096
part prefill 120 prefill LEOAM_MATRIX_UNITS=auto PREFILL_LENGTHS="32768 65536" PREFILL_TOKEN_MAJOR_MAX=0 PREFILL_BUDGET_S=115
part pipeline 140 pipeline PIPE_GPU12=0 -- --steps 6 --max-seconds 6
part abstracts 80 abstracts ABSTRACTS_CONTEXTS=65536 -- --policies leoam,leoam+budget --steps 6 --max-seconds 6
echo "total $SECONDS s" | tee -a "$res/log.txt"
for d in attn mma prefill pipeline abstracts; do tar -czf "$OUT/$d.tar.gz" -C "$res" "$d"; done
cp "$res"/log.txt "$res"/device.txt "$OUT/"
tar -czf "$OUT/golden.tar.gz" -C "$res" golden-check-matrix-on.txt golden-check-matrix-off.txt
