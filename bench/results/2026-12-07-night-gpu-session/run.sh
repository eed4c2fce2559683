#!/usr/bin/env bash
# The night's one GPU command (device tool, carry [".gpu", ".bench-bundle"]), bundled with
#   bash scripts/gpu-bundle.sh golden-check flash-diag attn-bench batch-bench skinny-bench gemm-bench tiered-bench leoam-cli
# plus .bench-bundle/base/tiered-bench.mjs.xz and .bench-bundle/kernels/ from
#   BASE=9fcd7ef bash scripts/gpu-bundle.sh tiered-bench   (in a clone; the step part's base)
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-07-night-gpu-session/run.sh
# One golden check with the matrix units on (the off path was checked in every earlier run),
# then each helper's part, each cut at its share and returned as it ends (scripts/gpu-part.sh):
# the flash attention's diagnosis and timing (issue 12 §3), the batched decode at 1K (issue 14
# §1), the staged matrix GEMM (issue 12 §2), the 64K tiered step against the tree before it
# (issue 13 §1), and a 32K tiered prefill if matrix attention passed its device-open check
# (issue 12 §4). About 400 s; the parts' limits were cut to fit what was left of the budget.
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 45 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-matrix-on.txt" 2>&1 || echo "golden check (matrix units on): FAILED or stopped" | tee -a "$res/log.txt"
cp "$res/golden-check-matrix-on.txt" "$res/device.txt" "$OUT/"; grep -c "^ok" "$res"/golden-check-*.txt; grep -i "matrix\|attention" "$res/golden-check-matrix-on.txt" | head -5
part flash 80 flash-diag
part batch 60 mma MMA_PROJECTIONS=gemv MMA_FORMS=16x2,16x2:rows,8x4s,16x4 MMA_BATCH_S=42 MMA_SKINNY_S=15 MMA_SKINNY_M=16 MMA_SKINNY_FORMS=16x2,8x2s,8x4s,16x4,16x2k,16x2s MMA_GEMM_S=0
part gemm 60 gemm LEOAM_MATRIX_GEMM_TILING=44.22.32 GEMM_GOLDEN=auto GEMM_GOLDEN_S=20 GEMM_PAD0=0 GEMM_BENCH_S=36 -- --tilings global,44.22.32,42.24.32,22.22.64 --m 4096
mkdir -p "$res/step"
echo "== step: night-tiered-step/run.sh (limit 135 s, at $SECONDS s)" | tee -a "$res/log.txt"
OUT="$res/step" timeout 135 bash bench/results/2026-12-07-night-tiered-step/run.sh > "$res/step/console-run.txt" 2>&1 || echo "step: exit $?" | tee -a "$res/log.txt"
tail -n 15 "$res/step/console-run.txt"
tar -czf "$OUT/step.tar.gz" -C "$res" step
# The tiered prefill only where matrix attention passed at device open (else it is the evening's kernel).
if grep -qi "matrix attention at open: \(registers\|oshared\|shared\)" "$res/flash/console.txt" "$res/flash"/*.txt 2>/dev/null; then
  part prefill 70 prefill LEOAM_MATRIX_UNITS=auto PREFILL_LENGTHS=32768 PREFILL_TOKEN_MAJOR_MAX=0 PREFILL_BUDGET_S=66
else
  echo "prefill: skipped (matrix attention refused at open)" | tee -a "$res/log.txt"
fi
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
