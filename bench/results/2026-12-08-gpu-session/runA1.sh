#!/usr/bin/env bash
# This session's first GPU command: issue 14's session TTFT at 8B 32K (never run on a GPU before).
# Bundled alone (the device tool carries 64 MiB; nats-server leaves no room for more) with
#   bash scripts/gpu-bundle.sh session-ttft; git rev-parse HEAD > .bench-bundle/COMMIT
# and run as
#   . .gpu/prelude.sh && OUT=$OUT bash bench/results/2026-12-08-gpu-session/runA1.sh
# No golden check here (not bundled); the session benchmark checks its own ids.
set -uo pipefail
. scripts/gpu-part.sh
part_begin
part sessions 150 sessions SESSION_S=140
echo "total $SECONDS s" | tee -a "$res/log.txt"
cp "$res"/log.txt "$OUT/"
