#!/usr/bin/env bash
# The late session's second GPU command: issue 13's mechanisms together, after 9761a12 (the first
# command's leoam rows overflowed their context). Bundled with
#   bash scripts/gpu-bundle.sh golden-check tiered-bench recompute-bench leoam-cli; git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-07-late-gpu-session/run2.sh
# The golden check with the new defaults (KDIRECT attention, the staged 42.24.32 GEMM); 8B 64K at
# 6 GiB / 8 GiB (leoam, int4 alone, everything together, offload-all; disk warm and cold;
# timelines); a 64K tiered prefill with the new defaults (issue 12 §4); recompute against fetch
# (issue 13 §5); LongChat-7B 32K together. Parts in that order, each returned as it ends.
set -uo pipefail
. scripts/gpu-part.sh
part_begin
LEOAM_MATRIX_UNITS=auto timeout 45 node .bench-bundle/golden-check.mjs models/tiny-leo-14m > "$res/golden-check-defaults.txt" 2>&1 || echo "golden check (defaults): FAILED or stopped" | tee -a "$res/log.txt"
cp "$res/device.txt" "$res/golden-check-defaults.txt" "$OUT/"; grep -c "^ok" "$res/golden-check-defaults.txt"; grep -v "^ok" "$res/golden-check-defaults.txt" | head -8
part together 170 together TOGETHER_POLICIES=leoam,leoam@4,leoam+all,offload-all
part prefill 150 prefill LEOAM_MATRIX_UNITS=auto PREFILL_LENGTHS=65536 PREFILL_TOKEN_MAJOR_MAX=0 PREFILL_BUDGET_S=146
part recompute 60 recompute RECOMPUTE_S=50 RECOMPUTE_E2E=0
part longchat 140 together TOGETHER_POLICIES=leoam,leoam+all,offload-all -- --preset longchat-7b-32k --context 32768
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
