#!/usr/bin/env bash
# This session's GPU command for the helpers' new kernels (runB1.sh found no machine). Bundled with
#   bash scripts/gpu-bundle.sh flash-diag golden-check attn-bench leoam-cli skinny-bench batch-bench tiered-bench attn-decode-quant; git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-08-gpu-session/runB.sh
# Golden checks with the defaults and with LEOAM_MATRIX_ATTENTION=split; attn_prefill_fa against
# KDIRECT (flash-split at 8K and 32K); gemm_stream against gemm_skinny (stream); int4/int8 decode
# attention, old QUANT form against QFOLD, alone and in 8B 64K leoam+all with one step profiled per
# kernel (attn-quant); 8B 128K leoam+all with adaptive prefetch and without prefetch, after the
# one-pass eviction (prefetch-128k). Parts in that order, each returned as it ends.
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 40 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-defaults.txt" 2>&1 || echo "golden check (defaults): FAILED or stopped" | tee -a "$res/log.txt"
LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_ATTENTION=split timeout 40 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-split.txt" 2>&1 || echo "golden check (split): FAILED or stopped" | tee -a "$res/log.txt"
cp "$res/device.txt" "$res/golden-check-defaults.txt" "$res/golden-check-split.txt" "$OUT/"
for f in defaults split; do echo "golden $f: $(grep -c '^ok' "$res/golden-check-$f.txt") ok"; grep -v "^ok" "$res/golden-check-$f.txt" | head -4; done
part split 135 flash-split SPLIT_TOKENS=8192,32768 SPLIT_S=130
part stream 130 stream STREAM_SKINNY_S=60 STREAM_BATCH_S=60
part attnq 165 attn-quant ATTNQ_S=50 ATTNQ_E2E_S=55 ATTNQ_E2E_ARGS=--profile
part pf128 105 prefetch-128k PF128_POLICIES=leoam+all,leoam+all-noprefetch -- --profile
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
