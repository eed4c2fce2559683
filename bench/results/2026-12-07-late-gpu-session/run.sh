#!/usr/bin/env bash
# The late session's one GPU command (device tool, carry [".gpu", ".bench-bundle"]), bundled with
#   bash scripts/gpu-bundle.sh golden-check flash-diag attn-bench batch-bench gemm-bench tiered-bench leoam-cli
#   git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-07-late-gpu-session/run.sh
# The golden check with the matrix units on, then each part cut at its share and returned as it
# ends (scripts/gpu-part.sh): the flash attention's diagnosis and timing (issue 12 §3); issue 13's
# mechanisms together at 8B 64K, 6 GiB / 8 GiB, against leoam, int4 alone and offload-all, disk
# cold and warm (`gpu-run.sh together`); the batched decode at 1K with the one-pass sampling
# (`gpu-run.sh rows`, issue 14 §1); the staged matrix GEMM (issue 12 §2); a 32K tiered prefill
# where matrix attention passed its device-open check (issue 12 §4). About 520 s.
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 45 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-matrix-on.txt" 2>&1 || echo "golden check (matrix units on): FAILED or stopped" | tee -a "$res/log.txt"
cp "$res/golden-check-matrix-on.txt" "$res/device.txt" "$OUT/"; grep -c "^ok" "$res"/golden-check-*.txt; grep -i "matrix\|attention" "$res/golden-check-matrix-on.txt" | head -5
part flash 75 flash-diag
part together 170 together TOGETHER_POLICIES=leoam,leoam@4,leoam+all,offload-all
part rows 70 rows ROWS_S=30
part gemm 55 gemm LEOAM_MATRIX_GEMM_TILING=44.22.32 GEMM_GOLDEN=auto GEMM_GOLDEN_S=20 GEMM_PAD0=0 GEMM_BENCH_S=32 -- --tilings global,44.22.32,42.24.32,22.22.64 --m 4096
# The tiered prefill only where matrix attention passed at device open (else it is the evening's kernel).
if grep -qi "matrix attention at open: \(registers\|oshared\|shared\|kdirect\)" "$res/flash/console.txt" "$res/flash"/*.txt 2>/dev/null; then
  part prefill 70 prefill LEOAM_MATRIX_UNITS=auto PREFILL_LENGTHS=32768 PREFILL_TOKEN_MAJOR_MAX=0 PREFILL_BUDGET_S=66
else
  echo "prefill: skipped (matrix attention refused at open)" | tee -a "$res/log.txt"
fi
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
