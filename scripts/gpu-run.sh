#!/usr/bin/env bash
# Runs on the GPU machine after `. .gpu/prelude.sh`: unpacks dawn.node, checks the kernels
# against the golden outputs, then runs a suite of benchmarks. Results go to $OUT (or
# bench/results).
#   bash scripts/gpu-run.sh [all|engine|tiered] [engine-bench flags...]
#   engine: engine, actor and upload (host <-> GPU transfer) benchmarks (issue 2, 3)
#   tiered: the tiered-KV decode benchmark at 7B 32K and 8B 64K (issue 4)
#   tiered-128k: only the tiered-KV decode benchmark at 8B 128K (no golden check)
#   check: the golden check, then full and leoam at 8B 64K (a short run after a change)
#   quality: check, then the KV quality program on the bundled model (pass keys at 2K, 6K
#            and 11K, five depths; KL over 4096 held-out positions), stopped at QUALITY_S;
#            extra arguments go to kv-quality (e.g. --policies quest,h2o); QUALITY_CHECK=0
#            skips the check (then only kv-quality needs to be bundled)
#   lab: the golden check, then bench/decode-lab.ts (dispatch cost, GEMV tuning inside the
#        decode step, setups side by side, per-kernel times); extra arguments go to decode-lab
#   decode: the golden check, engine-bench without the long-context part (extra arguments go
#        to it), actor-overhead (when bundled) and decode-lab, with the GPU's clocks logged
#        every second
#   compare: the golden check, then side by side with the tree of BASE (bundled by
#        `BASE=<commit> bash scripts/gpu-bundle.sh`), alternating base and this tree twice:
#        tiered-bench at 8B 64K (full, leoam) and, where bundled, decode-compare
#        (full at 1K, quest at 8K)
#   gemm: prefill's GEMM on the matrix units (issue 12): the golden check with them off
#        (LEOAM_MATRIX_UNITS=0) and on (=auto, the default on NVIDIA), then bench/gemm-bench.ts
#        (sgmat and today's gemm at 8192^3 and the 8B layer shapes; matrix attention off, so its
#        device-open check does not run, nor in the golden checks: GEMM_GOLDEN, default "0 auto",
#        the LEOAM_MATRIX_UNITS values to check with, each within GEMM_GOLDEN_S, default 90);
#        extra arguments go to it (e.g. --tilings
#        44.22.32,42.24.32 --m 512,4096); GEMM_BENCH_S (default 200) limits it; GEMM_PAD0=0 skips
#        the unpadded run; GEMM_TOGGLES (e.g. disable_robustness) runs gemm-bench once more with
#        those Dawn toggles and GEMM_TOGGLES_ARGS (default: the same arguments) within
#        GEMM_TOGGLES_S (default 60); GEMM_E2E=1 adds engine-bench (8K prefill, decode) with the
#        matrix units off, then on
#   compress: KV compression (issue 13 §2): the golden check, then tiered-bench at 8B 64K
#        (GPU 6 GiB, host 8 GiB) with full and leoam at compression 16, 8, 4 and importance side
#        by side in one process (seals quantize on the GPU); fits one 10-minute command
#        (bundle: `bash scripts/gpu-bundle.sh golden-check tiered-bench`); extra arguments go to
#        tiered-bench
#   pipeline: the pipelined step (issue 13 §1): the golden check, then tiered-bench at 8B 64K
#        (GPU 6 GiB, host 8 GiB) with full, leoam, leoam+pipe (pipeline on, depth PIPE_DEPTH,
#        default 2, every miss rewound), leoam+pipe+combine (a layer expected to miss completed
#        by a combine), leoam+prefetch (that and prefetch: PREFETCH_LAYERS, default 1, from
#        PREFETCH_FROM, default choice, and the last step's choice) and offload-all side by
#        side, then (PIPE_GPU12=0 skips it) leoam, leoam+pipe and leoam+prefetch with a GPU budget
#        that holds the whole context (12 GiB: every layer hits, so the per-layer wait is all
#        the pipeline can remove); each writes JSON and one step of each policy as an SVG
#        timeline, all in $OUT/timelines.tar.gz (the device tool returns few files) and the
#        6 GiB leoam and leoam+prefetch ones loose; fits one 10-minute command (bundle: `bash
#        scripts/gpu-bundle.sh golden-check tiered-bench`); extra arguments go to tiered-bench
#   pipeline-128k: the same 6 GiB / 8 GiB side by side at 8B 128K (16 GiB of KV: disk reads
#        every step): leoam, leoam+pipe+combine, leoam+prefetch, offload-all; one command
#   disk-128k: disk reads cold and warm side by side (issue 13): tiered-bench at 8B 128K (GPU 6
#        GiB, host 8 GiB: half the KV only on disk) with DISK_POLICIES (default leoam) and
#        --cold-disk: each policy's warm timed steps, then as many with the disk tier's files
#        dropped from the page cache before each (bench/page-cache.ts); ms/token and disk MiB
#        per step of both, one timeline; fits one 10-minute command (bundle: `bash
#        scripts/gpu-bundle.sh tiered-bench`); extra arguments go to tiered-bench
#   together / together-128k: everything together (issue 13's done-when): tiered-bench at 8B 64K
#        (together) or 128K (together-128k), GPU 6 GiB, host 8 GiB, with leoam (fp16), each
#        mechanism alone (leoam@4: int4 compressed GPU slots, filled at the switch; leoam+pipe+
#        combine; leoam+prefetch) and leoam+all (int4, TOGETHER_BITS to change it, with the
#        pipeline, the combine and prefetch) beside offload-all; --cold-disk: each policy's warm
#        timed steps, then as many with the disk tier's files dropped from the page cache; one
#        step of each as an SVG timeline (the leoam+all one loose, all in timelines.tar.gz);
#        GPU misses per timed step and the fill at the switch in the text; each fits one
#        10-minute command (bundle: `bash scripts/gpu-bundle.sh tiered-bench`); TOGETHER_POLICIES
#        replaces the list; extra arguments go to tiered-bench
#   prefetch-128k: prefetch at 8B 128K (issue 13: leoam+all at 1051 ms/token, ~800 of them
#        prefetch), GPU 6 GiB, host 8 GiB, int4 GPU slots, pipeline depth 2 with the combine:
#        tiered-bench with leoam+all (prefetch adaptive: it sits out steps where its loads cost
#        more host time than the misses they saved, probing every PREFETCH_PROBE_STEPS, default
#        4 here), leoam+all-fixed (prefetch always on, as before, with its one eviction pass a
#        layer) and leoam+all-noprefetch side by side (8 steps, no cold disk: the host arena
#        holds all of int4 128K), one step of each as an SVG timeline and the host's CPU profile
#        of each one's timed steps, all in $OUT/prefetch-128k.tar.gz (the leoam+all timeline
#        loose); then offload-all alone, 2 steps (~6 s a token), within its own limit; fits one
#        10-minute command (bundle: `bash scripts/gpu-bundle.sh tiered-bench`); PF128_POLICIES
#        replaces the first list; extra arguments go to the first tiered-bench
#   batch: continuous batching (issue 14): the golden check, then bench/batch-bench.ts at 8B
#        shapes (dummy weights, random KV): full at 1K context, batch 1 (alone) against 4
#        and 16 with the GEMM and the GEMV projections; then 32K context per sequence, leoam,
#        then offload-all, at batch 1/4/8/16 under a 6 GiB GPU / 8 GiB host budget shared by
#        the batch (BATCH_1K=0 / BATCH_32K=0 skip a part; BATCH_32K_BATCHES, BATCH_32K_STEPS,
#        BATCH_32K_POLICIES, BATCH_FILL_S, BATCH_MAX_S, BATCH_LEOAM_S and BATCH_OFFLOAD_S, the
#        limits of the 32K policies other than offload-all and of offload-all, change it); fits
#        one 10-minute command. leoam is unpipelined by default; BATCH_1K=0
#        BATCH_32K_POLICIES="leoam leoam+pipe" sets the pipelined step (the combine alone in a
#        batch) beside it
#        (bundle: `bash scripts/gpu-bundle.sh golden-check batch-bench`)
#   mma: the matrix units (issue 12 §2, issue 14 §1) in one 150-second command, with them on
#        (LEOAM_MATRIX_UNITS=auto): the golden check, then bench/batch-bench.ts at 8B shapes,
#        full, 1K context, batch 1 alone against 4 and 16 with MMA_PROJECTIONS (default the
#        GEMV, gemv_multi and matrix-unit projections) and the matrix-unit forms MMA_FORMS
#        (e.g. 8x1,16x2k; a trailing :rows attends per row instead of all rows together),
#        bench/skinny-bench.ts (the projections alone, M = MMA_SKINNY_M, forms MMA_SKINNY_FORMS),
#        and bench/gemm-bench.ts (gemm_sgmat against gemm at 8192^3 and M = MMA_GEMM_M, default
#        512,4096); bundle: `bash scripts/gpu-bundle.sh golden-check batch-bench skinny-bench
#        gemm-bench`; MMA_BATCH_S, MMA_SKINNY_S, MMA_GEMM_S change the parts' limits
#        (MMA_GEMM_S=0 skips gemm-bench); MMA_PROFILE=1: batch-bench times one more step per
#        setup with every dispatch timed (GPU time per kernel)
#   rows: the per-row work of a batched step (issue 14 §1) in one ~250-second command, matrix
#        units on (LEOAM_MATRIX_UNITS=auto): the golden check, then bench/batch-bench.ts at 8B
#        shapes, full, 1K context, batch 1 alone against 1, 4, 8 and 16 with ROWS_PROJECTIONS
#        (default mma,mma:rowsample: every row's token chosen in one pass and read back once,
#        against the per-row sampling before it), --profile (dispatches, copies, queue writes and
#        read-backs of one step, GPU time per kernel), first with steps back to back, then
#        with --read-back (each step's tokens read before the next, as the serving loop) and
#        ROWS_READ_PROJECTIONS (default those and mma:overlap: each step encoded before the
#        one before it is read, as the loop runs ahead);
#        bundle: `bash scripts/gpu-bundle.sh golden-check batch-bench`; ROWS_S (default 110)
#        limits each batch-bench run; extra arguments go to both
#   stream: the streamed skinny GEMM (kernels/gemm_stream.wgsl, issue 14 §1) against the matrix
#        units' gemm_skinny in one ~200-second command, matrix units on (LEOAM_MATRIX_UNITS=auto):
#        the golden check, then bench/skinny-bench.ts at 8B shapes (qkv, o, gate/up, down,
#        lm_head; M = STREAM_M, default 1,2,4,8,16; gemm_stream's forms STREAM_FORMS, default
#        4x2 (the default), 4x2f (x as f32: no conversions), 2x2, 4x1 and 4x2h (f16 pieces: too
#        inexact to use, timed to tell whether the ALUs bound the kernel; others: 4x4, 8x1,
#        4x2/256); gemm_skinny's STREAM_MMA_FORMS, default 16x2 (today's) and 8x2s (W staged;
#        never timed on a GPU); gemv_multi and the decode GEMVs): ms and GB/s of weights per
#        projection, each form checked against the CPU reference first; then
#        bench/batch-bench.ts, full attention, 1K context, batch 1 alone against B =
#        STREAM_BATCHES (default 16) with STREAM_PROJECTIONS (default mma,stream,stream/4x2f:
#        old against new, and the new with f32 rows of x, in one process), --profile (GPU time
#        per kernel); STREAM_SKINNY_S (default 100) and STREAM_BATCH_S (default 90) limit the
#        parts; LEOAM_STREAM_FORM picks the batch's default form (e.g. 4x2f);
#        bundle: `bash scripts/gpu-bundle.sh golden-check skinny-bench batch-bench`; extra
#        arguments go to batch-bench
#   prefill: time to first token of `leoam generate --model dummy:llama-3.1-8b --ids-file F
#        --kv-policy leoam --gpu-kv-budget 6GiB --host-kv-budget 8GiB --json` (issue 12 §4;
#        bundle: `bash scripts/gpu-bundle.sh golden-check leoam-cli`): for each length of
#        PREFILL_LENGTHS (default 8192 32768 65536 131072), layer-major (the default) and then,
#        where PREFILL_TOKEN_MAJOR_MAX (default 32768) allows, token-major
#        (LEOAM_PREFILL=token-major) side by side; 16 tokens decoded after each (ms/token on
#        the cache that prefill really wrote). Each run is cut at its share of the command's
#        time (PREFILL_BUDGET_S, default 560 s); JSON per run in $OUT/prefill-<order>-<n>.json
#   attn: flash-attention prefill on the matrix units (issue 12 §3; bundle: `bash
#        scripts/gpu-bundle.sh golden-check attn-bench leoam-cli`): bench/attn-bench.ts
#        (attn_prefill_mx with 4 and 2 subgroups, O in registers and OSHARED, against today's attn_prefill_sg at 8K, 32K and
#        128K tokens of 8B heads; extra arguments go to it), the golden check with matrix
#        attention on, then for each length of ATTN_E2E_LENGTHS (default 8192) the prefill
#        mode's `leoam generate` with matrix attention on and, unless ATTN_E2E_OFF=0, off. The
#        toggles are on throughout (LEOAM_MATRIX_UNITS=auto) and the matrix GEMM off
#        (LEOAM_MATRIX_GEMM=0), so only attention differs; the steps share ATTN_BUDGET_S
#        (default 140 s)
#   flash-diag: where attn_prefill_mx goes wrong on this device (issue 12 §3; bundle: `bash
#        scripts/gpu-bundle.sh flash-diag golden-check attn-bench`): bench/flash-diag.ts (micro
#        products through each load/store form, the kernel at small shapes, one half emulated,
#        variants, a chunk's time with parts of the kernel taken out), the golden check with
#        matrix attention on (where bundled), then attn-bench at FLASH_TOKENS (default 8192,32768,131072) with FLASH_NSG subgroups (default 4) and
#        FLASH_KERNELS (default mx,mxd,base: O in registers, the same with K and V loaded
#        straight from the pool, attn_prefill_sg); FLASH_BENCH=0 skips the bench; one
#        110-second command
#   flash-split: attn_prefill_fa, the keys split among a workgroup's subgroups
#        (LEOAM_MATRIX_ATTENTION=split; issue 12 §3; bundle: `bash scripts/gpu-bundle.sh
#        flash-diag golden-check attn-bench leoam-cli`): flash-diag --split (the kernel
#        against the CPU reference: 4, 2 and 1 splits, 1, 2 and 4 row tiles, 64- and 32-key
#        tiles, D 64 and 128, GQA, WINDOW, rescales; then a chunk's time with parts taken out,
#        beside KDIRECT; 2/7 of SPLIT_S), the golden check with LEOAM_MATRIX_ATTENTION=split, then
#        attn-bench at SPLIT_TOKENS (default 8192,32768,131072) with SPLIT_KERNELS (default
#        mxd,fa: KDIRECT with 4 and 2 subgroups against SPLIT_FORMS, NSGxRT[xBK], default
#        4x1,4x2,4x4,2x1,8x1x32: fa4r1 is the engine's choice, fa4r4 has no split so only its
#        softmax differs from KDIRECT's, fa8r1k32 is 8 splits of 32-key tiles; add base for
#        attn_prefill_sg), then for each length of SPLIT_E2E_LENGTHS (default 8192) the
#        prefill mode's `leoam generate` with =split and =direct; matrix GEMM off throughout;
#        stopped at SPLIT_S (default 420 s)
#   abstracts: abstracts under budget (issue 13 §4): the golden check, then tiered-bench at 8B
#        64K and 128K (GPU 6 GiB, host 8 GiB) with leoam (every abstract on the GPU, counted in
#        the budget), leoam+groups (group abstracts of GROUP_CHUNKS chunks, default 16, scored
#        first) and leoam+budget (the same with the fine abstracts in a budgeted GPU cache filled
#        from LMDB) side by side: abstract bytes on the GPU, chunk slots left, groups and chunks
#        scored and the choice wait per step, ms/token, and one layer's scoring alone on the GPU
#        (every chunk; groups, then the kept groups' chunks; a read-back round trip: --score-time);
#        fits one 10-minute command (bundle:
#        `bash scripts/gpu-bundle.sh golden-check tiered-bench`); extra arguments go to tiered-bench
#   prefetch-forecast: prefetch's forecasts (issue 13 §1; bundle: `bash scripts/gpu-bundle.sh
#        golden-check prefetch-forecast pipeline-testmodel tiered-bench`): the golden check, then
#        bench/prefetch-forecast.ts on the bundled model (pass keys of 2K, 6K and 11K tokens,
#        forecasts choice, query and hidden at N 1 and 2: precision and recall, which should
#        match lavapipe's), then bench/pipeline-testmodel.ts at 11K (GPU 25 % of the KV; off,
#        combine, prefetch from choice and from hidden: ms/token on real attention), then
#        tiered-bench at 8B 64K (6 GiB / 8 GiB) with leoam, leoam+pipe+combine and
#        leoam+prefetch from hidden (the forecast's cost at 8B shapes; random KV, so its
#        precision there means nothing); stopped at PREFETCH_S (default 540 s) in all
#   sessions: sessions and prefix sharing (issue 14 §2; bundle: `bash scripts/gpu-bundle.sh
#        golden-check session-ttft`): the golden check, then bench/session-ttft.ts at 8B shapes
#        (dummy weights), a SESSION_TOKENS-token document (default 32768), GPU 6 GiB, host 8 GiB,
#        --max-batch 4, one round, no fresh generate (the open's prefill is the document's
#        cost): the open, the question to the session twice (in the open's lane, parked on the
#        session), a plain generate of document + question that shares the stored session's
#        chunks, and the question once more (cold: resumed from the tiers); TTFT of each, each
#        request's phases (lane, resume, first token, host->GPU, GPU slot hits and misses),
#        same ids (LEOAM_SESSION_PARK=0 before it: no parked lane, to compare); stopped at
#        SESSION_S (default 400 s); extra arguments go to session-ttft
#   peer-share: prefix sharing on the GPU between running lanes (issue 14 §2; bundle: `bash
#        scripts/gpu-bundle.sh golden-check peer-share`): the golden check, then bench/peer-share.ts
#        at 8B shapes (dummy weights), a PEER_TOKENS-token document (default 8192), host 8 GiB,
#        no GPU budget (each lane's cache sized for its context: under a budget a lone lane
#        holds all of it and B would wait for A to end): request B joins A, which decodes the
#        same document, with peer copies on and then off (LEOAM_PEER_COPIES=0): B's TTFT, bytes
#        copied from A's slots, read from the host and uploaded, same ids; stopped at PEER_S
#        (default 400 s); extra arguments go to peer-share
#   reshare: live re-sharing of the GPU budget (issue 14 §1; bundle: `bash scripts/gpu-bundle.sh
#        golden-check reshare-bench`): the golden check, then bench/reshare-bench.ts at 8B shapes
#        (dummy weights), GPU 6 GiB / host 8 GiB, A a RESHARE_TOKENS-token prompt (default 8192)
#        decoding 128 tokens, B (1024 tokens, 4) arriving while A decodes, re-sharing on and off
#        (LEOAM_RESHARE=0: B waits for A): B's wall time and first token, A's ms/token against
#        alone, the moves and their ms, same ids; stopped at RESHARE_S (default 400 s); extra
#        arguments go to reshare-bench
#   recompute: recompute against fetch (issue 13 §5, policy `recompute`; bundle: `bash
#        scripts/gpu-bundle.sh recompute-bench tiered-bench`): bench/recompute-bench.ts at LongChat-7B (MHA)
#        and Llama-3.1-8B (GQA) shapes, chunks of RECOMPUTE_TOKENS (default 16,32,64,128,256)
#        tokens, RECOMPUTE_CHUNKS (default 128) chunks of one layer per run: their K/V read from
#        disk and written into GPU slots, against their hidden states read and K/V recomputed
#        on the GPU (and the recompute alone), warm and cold (--cold-disk), with the disk rate
#        below which recompute pays; records under /tmp/leoam-kv; stopped at RECOMPUTE_S
#        (default 200 s); extra arguments go to recompute-bench. Then (RECOMPUTE_E2E=0 skips it)
#        tiered-bench at LongChat-7B 32K, GPU 6 GiB, host 8 GiB, leoam against leoam+recompute
#        (recompute always; random hidden records beside every chunk), warm and cold disk,
#        stopped at RECOMPUTE_E2E_S (default 330 s)
#   attn-quant: decode attention over compressed slots (issue 13 §2; bundle: `bash
#        scripts/gpu-bundle.sh golden-check attn-decode-quant tiered-bench`): the golden check,
#        then bench/attn-decode-quant.ts (attn_decode alone, fp16 against int8 and int4 in QUANT's
#        first form and its fold form, LEOAM_QUANT_ATTN=fold, at 8B and LongChat-7B heads over 4K,
#        16K and 64K tokens, 32 layers a submit; first its check of both forms against the CPU
#        reference on small mixed lists), stopped at ATTNQ_S (default 200 s); extra arguments go
#        to it. Then (ATTNQ_E2E=0 skips it) tiered-bench at 8B 64K, GPU 6 GiB, host 8 GiB,
#        leoam+all (int4, pipeline, prefetch) with the first form and then the fold form, each
#        stopped at ATTNQ_E2E_S (default 140 s); ATTNQ_E2E_ARGS (e.g. --profile) go to those tiered-bench runs
set -euo pipefail
suite="${1:-all}"
case "$suite" in all|engine|tiered|tiered-128k|check|quality|lab|decode|compare|gemm|compress|pipeline|pipeline-128k|disk-128k|together|together-128k|prefetch-128k|batch|mma|rows|stream|prefill|attn|flash-diag|flash-split|abstracts|sessions|prefetch-forecast|peer-share|reshare|recompute|attn-quant) shift || true ;; *) suite=all ;; esac
out="${OUT:-bench/results}"
# GOLDEN_CHECK=0: every mode skips its golden check (a combined run checks once, up front).
# ABSTRACTS_CONTEXTS (default "65536 131072"): the contexts of the abstracts mode.
golden=.bench-bundle/golden-check.mjs
if [ "${GOLDEN_CHECK:-1}" = 0 ]; then golden=/tmp/golden-check-skipped.mjs; echo 'console.log("golden check skipped (GOLDEN_CHECK=0)")' > "$golden"; fi
mkdir -p "$out"
bash scripts/gpu-unpack.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv || true
if [ "$suite" = compare ]; then
  echo "base: $(cat .bench-bundle/base/COMMIT)" | tee "$out/compare.txt"
  node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt"
  mkdir -p /tmp/leoam-kv
  # Per round: tiered-bench for both trees first (the comparison), then decode-compare.
  for round in 1 2; do
    # A second round only where the device tool's 10-minute command limit leaves room for it.
    [ "$round" = 1 ] || [ "$SECONDS" -lt "${COMPARE_ROUND2_BEFORE_S:-300}" ] || { echo "round 2 skipped (time)" | tee -a "$out/compare.txt"; break; }
    for tree in base new; do
      dir=.bench-bundle; [ "$tree" = base ] && dir=.bench-bundle/base
      echo "== round $round, $tree: tiered-bench" | tee -a "$out/compare.txt"
      rm -rf /tmp/leoam-kv/*
      timeout 150 node "$dir/tiered-bench.mjs" --preset llama-3.1-8b --context 65536 --policies full,leoam --steps 6 --max-seconds 15 \
        --kv-dir /tmp/leoam-kv --out "$out/tiered-8b-64k-$tree-$round.json" 2>&1 | tee -a "$out/compare.txt" || echo "tiered-bench $tree: failed or stopped" | tee -a "$out/compare.txt"
    done
    for tree in base new; do
      dir=.bench-bundle; [ "$tree" = base ] && dir=.bench-bundle/base
      [ -f "$dir/decode-compare.mjs" ] || continue
      echo "== round $round, $tree: decode-compare" | tee -a "$out/compare.txt"
      timeout 120 node "$dir/decode-compare.mjs" llama-3.1-8b 1024 8192 128 2>&1 | tee -a "$out/compare.txt" || true
    done
  done
  exit 0
fi
if [ "$suite" = attn-quant ]; then
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED"
  timeout "${ATTNQ_S:-200}" node .bench-bundle/attn-decode-quant.mjs --out "$out/attn-decode-quant.json" "$@" 2>&1 \
    | tee "$out/attn-decode-quant.txt" || echo "attn-decode-quant: failed or stopped" | tee -a "$out/attn-decode-quant.txt"
  if [ "${ATTNQ_E2E:-1}" != 0 ]; then
    mkdir -p /tmp/leoam-kv
    for form in first fold; do
      rm -rf /tmp/leoam-kv/*
      LEOAM_QUANT_ATTN=$form timeout "${ATTNQ_E2E_S:-140}" node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies leoam+all \
        --all-compression 4 --pipeline-depth 2 --prefetch-layers 1 --steps 6 --max-seconds 10 --gpu-kv-budget 6GiB --host-kv-budget 8GiB \
        --kv-dir /tmp/leoam-kv --out "$out/tiered-8b-64k-all-$form.json" ${ATTNQ_E2E_ARGS:-} 2>&1 | tee "$out/tiered-8b-64k-all-$form.txt" \
        || echo "tiered-bench (64K leoam+all, $form): failed or stopped (time)" | tee -a "$out/tiered-8b-64k-all-$form.txt"
    done
    rm -rf /tmp/leoam-kv/*
  fi
  exit 0
fi
if [ "$suite" = sessions ]; then
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED"
  timeout "${SESSION_S:-400}" node .bench-bundle/session-ttft.mjs --model dummy:llama-3.1-8b --tokens "${SESSION_TOKENS:-32768}" --device gpu \
    --gpu-kv-budget 6GiB --host-kv-budget 8GiB --max-batch 4 --rounds 1 --no-fresh --out "$out/session-ttft.json" "$@" 2>&1 \
    | tee "$out/session-ttft.txt" || echo "session-ttft: failed or stopped" | tee -a "$out/session-ttft.txt"
  exit 0
fi
if [ "$suite" = peer-share ]; then
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED"
  timeout "${PEER_S:-400}" node .bench-bundle/peer-share.mjs --model dummy:llama-3.1-8b --tokens "${PEER_TOKENS:-8192}" --device gpu \
    --host-kv-budget 8GiB --out "$out/peer-share.json" "$@" 2>&1 \
    | tee "$out/peer-share.txt" || echo "peer-share: failed or stopped" | tee -a "$out/peer-share.txt"
  exit 0
fi
if [ "$suite" = reshare ]; then
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED"
  timeout "${RESHARE_S:-400}" node .bench-bundle/reshare-bench.mjs --model dummy:llama-3.1-8b --tokens "${RESHARE_TOKENS:-8192}" \
    --a-tokens 128 --b-tokens 1024 --max-tokens 4 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --device gpu \
    --out "$out/reshare.json" "$@" 2>&1 \
    | tee "$out/reshare.txt" || echo "reshare: failed or stopped" | tee -a "$out/reshare.txt"
  exit 0
fi
if [ "$suite" = prefill ]; then
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED"
  budget="${PREFILL_BUDGET_S:-560}"
  for n in ${PREFILL_LENGTHS:-8192 32768 65536 131072}; do
    awk -v n="$n" 'BEGIN { srand(12); for (i = 0; i < n; i++) printf "%d ", 1000 + int(rand() * 100000) }' > "/tmp/prefill-ids-$n.txt"
    orders=layer-major
    [ "$n" -le "${PREFILL_TOKEN_MAJOR_MAX:-32768}" ] && orders="layer-major token-major"
    for order in $orders; do
      left=$((budget - SECONDS))
      [ "$left" -gt 30 ] || { echo "prefill $order $n: skipped (time)" | tee -a "$out/prefill.txt"; continue; }
      rm -rf /tmp/leoam-kv && mkdir -p /tmp/leoam-kv
      echo "== $order, $n tokens (limit ${left} s)" | tee -a "$out/prefill.txt"
      t0=$SECONDS
      LEOAM_PREFILL=$order timeout "$left" node .bench-bundle/leoam-cli.mjs generate --model dummy:llama-3.1-8b --ids-file "/tmp/prefill-ids-$n.txt" \
        --max-tokens 16 --kv-policy leoam --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --json > "$out/prefill-$order-$n.json" 2>> "$out/prefill.txt" \
        && node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); const k = r.kv; console.log(`prefill_ms ${r.timings.prefill_ms}, decode ${r.timings.decode_ms_per_token} ms/token, load ${r.timings.load_ms} ms; disk read ${k.disk.bytes_read} written ${k.disk.bytes_written}; host read ${k.host.bytes_read}; chunks sealed ${k.chunks_sealed}; time_ms ${JSON.stringify(k.time_ms)}`)' "$out/prefill-$order-$n.json" | tee -a "$out/prefill.txt" \
        || echo "prefill $order $n: failed or stopped after $((SECONDS - t0)) s" | tee -a "$out/prefill.txt"
    done
  done
  exit 0
fi
if [ "$suite" = flash-diag ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/device.txt" || true
  export LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_GEMM=0
  timeout 45 node .bench-bundle/flash-diag.mjs "$@" 2>&1 | tee "$out/flash-diag.txt" || echo "flash-diag: failed or stopped" | tee -a "$out/flash-diag.txt"
  if [ -f .bench-bundle/golden-check.mjs ]; then
    LEOAM_MATRIX_ATTENTION=1 timeout 40 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-matrix-attention.txt" || echo "golden check, matrix attention: FAILED or stopped"
  fi
  if [ "${FLASH_BENCH:-1}" = 1 ] && [ -f .bench-bundle/attn-bench.mjs ] && [ "$SECONDS" -lt 60 ]; then
    timeout $((95 - SECONDS)) node .bench-bundle/attn-bench.mjs --tokens "${FLASH_TOKENS:-8192,32768,131072}" --nsg "${FLASH_NSG:-4}" --kernels "${FLASH_KERNELS:-mx,mxd,base}" --max-seconds 30 --out "$out/attn-bench.json" 2>&1 | tee "$out/attn-bench.txt" || echo "attn-bench: failed or stopped" | tee -a "$out/attn-bench.txt"
  fi
  exit 0
fi
if [ "$suite" = flash-split ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/device.txt" || true
  budget="${SPLIT_S:-420}"
  export LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_GEMM=0
  if [ -f .bench-bundle/flash-diag.mjs ]; then
    LEOAM_MATRIX_ATTENTION=split timeout $((budget * 2 / 7)) node .bench-bundle/flash-diag.mjs --split 2>&1 | tee "$out/flash-diag-split.txt" || echo "flash-diag --split: failed or stopped" | tee -a "$out/flash-diag-split.txt"
  fi
  LEOAM_MATRIX_ATTENTION=split timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-split.txt" || echo "golden check, LEOAM_MATRIX_ATTENTION=split: FAILED or stopped" | tee -a "$out/golden-check-split.txt"
  left=$((budget - SECONDS - 60))
  [ "$left" -gt 30 ] || left=30
  timeout "$left" node .bench-bundle/attn-bench.mjs --tokens "${SPLIT_TOKENS:-8192,32768,131072}" --nsg 4,2 --fa "${SPLIT_FORMS:-4x1,4x2,4x4,2x1,8x1x32}" --kernels "${SPLIT_KERNELS:-mxd,fa}" \
    --max-seconds $((left * 2 / 3)) --out "$out/attn-bench-split.json" 2>&1 | tee "$out/attn-bench-split.txt" || echo "attn-bench: failed or stopped" | tee -a "$out/attn-bench-split.txt"
  if [ -f .bench-bundle/leoam-cli.mjs ]; then
    for n in ${SPLIT_E2E_LENGTHS:-8192}; do
      awk -v n="$n" 'BEGIN { srand(12); for (i = 0; i < n; i++) printf "%d ", 1000 + int(rand() * 100000) }' > "/tmp/prefill-ids-$n.txt"
      for form in split direct; do
        left=$((budget - SECONDS))
        [ "$left" -gt 20 ] || { echo "prefill $n, $form: skipped (time)" | tee -a "$out/prefill-split.txt"; continue; }
        rm -rf /tmp/leoam-kv && mkdir -p /tmp/leoam-kv
        echo "== $n tokens, LEOAM_MATRIX_ATTENTION=$form (limit ${left} s)" | tee -a "$out/prefill-split.txt"
        LEOAM_MATRIX_ATTENTION=$form timeout "$left" node .bench-bundle/leoam-cli.mjs generate --model dummy:llama-3.1-8b --ids-file "/tmp/prefill-ids-$n.txt" \
          --max-tokens 16 --kv-policy leoam --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --json > "$out/prefill-$form-$n.json" 2>> "$out/prefill-split.txt" \
          && node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`prefill_ms ${r.timings.prefill_ms}, decode ${r.timings.decode_ms_per_token} ms/token; ids ${JSON.stringify(r.ids).slice(0, 100)}`)' "$out/prefill-$form-$n.json" | tee -a "$out/prefill-split.txt" \
          || echo "prefill $n, $form: failed or stopped" | tee -a "$out/prefill-split.txt"
      done
    done
  fi
  exit 0
fi
if [ "$suite" = attn ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/device.txt" || true
  budget="${ATTN_BUDGET_S:-140}"
  export LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_GEMM=0
  timeout $((budget / 2)) node .bench-bundle/attn-bench.mjs --max-seconds $((budget / 3)) --out "$out/attn-bench.json" "$@" 2>&1 | tee "$out/attn-bench.txt" || echo "attn-bench: failed or stopped" | tee -a "$out/attn-bench.txt"
  if [ $((budget - SECONDS)) -gt 20 ]; then
    LEOAM_MATRIX_ATTENTION=1 timeout 40 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-matrix-attention.txt" || echo "golden check, matrix attention: FAILED or stopped"
  fi
  for n in ${ATTN_E2E_LENGTHS:-8192}; do
    awk -v n="$n" 'BEGIN { srand(12); for (i = 0; i < n; i++) printf "%d ", 1000 + int(rand() * 100000) }' > "/tmp/prefill-ids-$n.txt"
    modes=1; [ "${ATTN_E2E_OFF:-1}" = 0 ] || modes="1 0"
    for ma in $modes; do
      left=$((budget - SECONDS))
      [ "$left" -gt 20 ] || { echo "prefill $n, matrix attention $ma: skipped (time)" | tee -a "$out/prefill.txt"; continue; }
      rm -rf /tmp/leoam-kv && mkdir -p /tmp/leoam-kv
      echo "== $n tokens, matrix attention $ma (limit ${left} s)" | tee -a "$out/prefill.txt"
      LEOAM_MATRIX_ATTENTION=$ma timeout "$left" node .bench-bundle/leoam-cli.mjs generate --model dummy:llama-3.1-8b --ids-file "/tmp/prefill-ids-$n.txt" \
        --max-tokens 16 --kv-policy leoam --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --json > "$out/prefill-attn$ma-$n.json" 2>> "$out/prefill.txt" \
        && node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`prefill_ms ${r.timings.prefill_ms}, decode ${r.timings.decode_ms_per_token} ms/token, load ${r.timings.load_ms} ms; ids ${JSON.stringify(r.ids).slice(0, 100)}`)' "$out/prefill-attn$ma-$n.json" | tee -a "$out/prefill.txt" \
        || echo "prefill $n, matrix attention $ma: failed or stopped" | tee -a "$out/prefill.txt"
    done
  done
  exit 0
fi
if [ "$suite" = gemm ]; then
  for mu in ${GEMM_GOLDEN:-0 auto}; do
    name=on; [ "$mu" = 0 ] && name=off
    LEOAM_MATRIX_UNITS=$mu LEOAM_MATRIX_ATTENTION=0 timeout "${GEMM_GOLDEN_S:-90}" node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-matrix-$name.txt" || echo "golden check, matrix units $name: FAILED"
  done
  gs="${GEMM_BENCH_S:-200}"
  LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_ATTENTION=0 timeout "$gs" node .bench-bundle/gemm-bench.mjs --max-seconds "$(( gs * 3 / 4 ))" --out "$out/gemm-bench.json" "$@" 2>&1 | tee "$out/gemm-bench.txt" || echo "gemm-bench: failed, stopped or a check missed"
  if [ -n "${GEMM_TOGGLES:-}" ]; then
    ts="${GEMM_TOGGLES_S:-60}"
    # shellcheck disable=SC2086
    LEOAM_DAWN_TOGGLES="$GEMM_TOGGLES" LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_ATTENTION=0 timeout "$ts" node .bench-bundle/gemm-bench.mjs --max-seconds "$(( ts * 3 / 4 ))" \
      --out "$out/gemm-bench-toggles.json" ${GEMM_TOGGLES_ARGS:-"$@"} 2>&1 | tee "$out/gemm-bench-toggles.txt" || echo "gemm-bench ($GEMM_TOGGLES): failed, stopped or a check missed"
  fi
  # The matrix kernel without row padding (less workgroup memory, more bank conflicts), at one M.
  if [ "${GEMM_PAD0:-1}" = 1 ]; then
    LEOAM_MATRIX_UNITS=auto LEOAM_MATRIX_ATTENTION=0 timeout 60 node .bench-bundle/gemm-bench.mjs --kernels sgmat --pad 0 --m 2048 --max-seconds 40 --out "$out/gemm-bench-pad0.json" 2>&1 | tee "$out/gemm-bench-pad0.txt" || echo "gemm-bench --pad 0: failed or stopped"
  fi
  # GEMM_E2E=1 (engine-bench bundled too): 8K prefill and decode at 8B shapes with the matrix
  # units off, then on (the toggles they need also apply to every other kernel).
  if [ "${GEMM_E2E:-0}" = 1 ] && [ -f .bench-bundle/engine-bench.mjs ]; then
    for mu in 0 auto; do
      LEOAM_MATRIX_UNITS=$mu timeout 240 node .bench-bundle/engine-bench.mjs --long-context 0 --prefill 8192 --out "$out/engine-bench-matrix-$mu.json" 2>&1 | tee "$out/engine-bench-matrix-$mu.txt" || echo "engine-bench (matrix units $mu): failed or stopped"
    done
  fi
  exit 0
fi
if [ "$suite" = compress ]; then
  timeout 90 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED or stopped"
  mkdir -p /tmp/leoam-kv && rm -rf /tmp/leoam-kv/*
  # Each variant loads the model, fills 64K tokens through the seal path and times up to 6 steps.
  timeout 480 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies full,leoam --compression 16,8,4,importance \
    --steps 6 --max-seconds 15 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --out "$out/tiered-8b-64k-compress.json" "$@" 2>&1 \
    | tee "$out/tiered-8b-64k-compress.txt" || echo "tiered-bench: failed or stopped (time)"
  exit 0
fi
if [ "$suite" = prefetch-forecast ]; then
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED or stopped"
  end=$((SECONDS + ${PREFETCH_S:-540}))
  timeout $((end - SECONDS)) node .bench-bundle/prefetch-forecast.mjs --contexts 2048,6144,11264 --layers 1,2 --tokens 16 \
    --out "$out/prefetch-forecast.json" 2>&1 | tee "$out/prefetch-forecast.txt" || echo "prefetch-forecast: failed or stopped (time)"
  timeout $((end - SECONDS)) node .bench-bundle/pipeline-testmodel.mjs --context 11264 --tokens 32 --gpu-fractions 0.25 --variants off,combine,prefetch,prefetch-hidden \
    --out "$out/pipeline-testmodel-11k.json" 2>&1 | tee "$out/pipeline-testmodel-11k.txt" || echo "pipeline-testmodel: failed or stopped (time)"
  mkdir -p /tmp/leoam-kv && rm -rf /tmp/leoam-kv/*
  timeout $((end - SECONDS)) node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies leoam,leoam+pipe+combine,leoam+prefetch \
    --prefetch-layers 1 --prefetch-from hidden --steps 6 --max-seconds 15 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv \
    --out "$out/tiered-8b-64k-prefetch-hidden.json" "$@" 2>&1 | tee "$out/tiered-8b-64k-prefetch-hidden.txt" || echo "tiered-bench: failed or stopped (time)"
  exit 0
fi
if [ "$suite" = abstracts ]; then
  timeout 90 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED or stopped"
  mkdir -p /tmp/leoam-kv
  for ctx in ${ABSTRACTS_CONTEXTS:-65536 131072}; do
    rm -rf /tmp/leoam-kv/*
    # 64K: about 40 s a policy (load, a 12-15 s fill, 8 steps); 128K: fills twice as long, steps ~1 s.
    limit=180; [ "$ctx" = 131072 ] && limit=300
    timeout "$limit" node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context "$ctx" --policies leoam,leoam+groups,leoam+budget --group-chunks "${GROUP_CHUNKS:-16}" --score-time \
      --steps 8 --max-seconds 12 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv \
      --out "$out/tiered-8b-$((ctx / 1024))k-abstracts.json" "$@" 2>&1 | tee "$out/tiered-8b-$((ctx / 1024))k-abstracts.txt" || echo "tiered-bench ($ctx): failed or stopped (time)"
  done
  exit 0
fi
if [ "$suite" = pipeline ] || [ "$suite" = pipeline-128k ]; then
  mkdir -p /tmp/leoam-kv /tmp/leoam-timelines && rm -rf /tmp/leoam-kv/* /tmp/leoam-timelines/*
  pipe=(--pipeline-depth "${PIPE_DEPTH:-2}" --prefetch-layers "${PREFETCH_LAYERS:-1}" --prefetch-from "${PREFETCH_FROM:-choice}" --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv)
  if [ "$suite" = pipeline-128k ]; then
    timeout 570 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 131072 --policies leoam,leoam+pipe+combine,leoam+prefetch,offload-all "${pipe[@]}" \
      --steps 6 --max-seconds 12 --gpu-kv-budget 6GiB --timeline /tmp/leoam-timelines/timeline-8b-128k \
      --out "$out/tiered-8b-128k-pipeline.json" "$@" 2>&1 | tee "$out/tiered-8b-128k-pipeline.txt" || echo "tiered-bench (128K): failed or stopped (time)"
  else
    timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED or stopped"
    timeout 360 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies full,leoam,leoam+pipe,leoam+pipe+combine,leoam+prefetch,offload-all "${pipe[@]}" \
      --steps 8 --max-seconds 12 --gpu-kv-budget 6GiB --timeline /tmp/leoam-timelines/timeline-8b-64k \
      --out "$out/tiered-8b-64k-pipeline.json" "$@" 2>&1 | tee "$out/tiered-8b-64k-pipeline.txt" || echo "tiered-bench (6 GiB): failed or stopped (time)"
    cp /tmp/leoam-timelines/timeline-8b-64k-leoam-16.svg /tmp/leoam-timelines/timeline-8b-64k-leoam_prefetch-16.svg "$out/" 2>/dev/null || true
    rm -rf /tmp/leoam-kv/*
    [ "${PIPE_GPU12:-1}" = 0 ] || timeout 160 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies leoam,leoam+pipe,leoam+prefetch "${pipe[@]}" \
      --steps 8 --max-seconds 10 --gpu-kv-budget 12GiB --timeline /tmp/leoam-timelines/timeline-8b-64k-gpu12 \
      --out "$out/tiered-8b-64k-pipeline-gpu12.json" "$@" 2>&1 | tee "$out/tiered-8b-64k-pipeline-gpu12.txt" || echo "tiered-bench (12 GiB): failed or stopped (time)"
  fi
  tar -czf "$out/timelines.tar.gz" -C /tmp/leoam-timelines . || true
  exit 0
fi
if [ "$suite" = recompute ]; then
  mkdir -p /tmp/leoam-kv && rm -rf /tmp/leoam-kv/*
  df -T /tmp/leoam-kv | tee "$out/recompute-fs.txt"
  timeout "${RECOMPUTE_S:-200}" node .bench-bundle/recompute-bench.mjs --models longchat-7b-32k,llama-3.1-8b --chunk-tokens "${RECOMPUTE_TOKENS:-16,32,64,128,256}" \
    --chunks "${RECOMPUTE_CHUNKS:-128}" --reps 3 --cold-disk --kv-dir /tmp/leoam-kv --max-seconds "$(( ${RECOMPUTE_S:-200} * 3 / 4 ))" --out "$out/recompute.json" "$@" 2>&1 | tee "$out/recompute.txt" \
    || echo "recompute-bench: failed or stopped (time)" | tee -a "$out/recompute.txt"
  rm -rf /tmp/leoam-kv/*
  [ "${RECOMPUTE_E2E:-1}" = 0 ] || timeout "${RECOMPUTE_E2E_S:-330}" node .bench-bundle/tiered-bench.mjs --preset longchat-7b-32k --context 32768 --policies leoam,leoam+recompute \
    --cold-disk --steps 6 --max-seconds 10 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --out "$out/tiered-7b-32k-recompute.json" 2>&1 \
    | tee "$out/tiered-7b-32k-recompute.txt" || echo "tiered-bench (7B 32K, recompute): failed or stopped (time)" | tee -a "$out/tiered-7b-32k-recompute.txt"
  rm -rf /tmp/leoam-kv/*
  exit 0
fi
if [ "$suite" = disk-128k ]; then
  mkdir -p /tmp/leoam-kv /tmp/leoam-timelines && rm -rf /tmp/leoam-kv/* /tmp/leoam-timelines/*
  df -T /tmp/leoam-kv | tee "$out/disk-128k-fs.txt"
  timeout 570 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 131072 --policies "${DISK_POLICIES:-leoam}" --cold-disk \
    --steps 6 --max-seconds 12 --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --timeline /tmp/leoam-timelines/timeline-8b-128k \
    --out "$out/tiered-8b-128k-disk.json" "$@" 2>&1 | tee "$out/tiered-8b-128k-disk.txt" || echo "tiered-bench (128K, cold and warm disk): failed or stopped (time)"
  tar -czf "$out/timelines.tar.gz" -C /tmp/leoam-timelines . || true
  rm -rf /tmp/leoam-kv/*
  exit 0
fi
if [ "$suite" = together ] || [ "$suite" = together-128k ]; then
  mkdir -p /tmp/leoam-kv /tmp/leoam-timelines && rm -rf /tmp/leoam-kv/* /tmp/leoam-timelines/*
  ctx=65536; policies="leoam,leoam@4,leoam+pipe+combine,leoam+prefetch,leoam+all,offload-all"
  # 128K: fills take twice as long; the pipeline alone is left out to fit the command.
  [ "$suite" = together-128k ] && ctx=131072 && policies="leoam,leoam@4,leoam+prefetch,leoam+all,offload-all"
  name="tiered-8b-$((ctx / 1024))k-together"
  timeout 570 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context "$ctx" --policies "${TOGETHER_POLICIES:-$policies}" --all-compression "${TOGETHER_BITS:-4}" \
    --pipeline-depth "${PIPE_DEPTH:-2}" --prefetch-layers "${PREFETCH_LAYERS:-1}" --cold-disk --steps 6 --max-seconds 10 \
    --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --timeline "/tmp/leoam-timelines/timeline-8b-$((ctx / 1024))k" \
    --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name.txt" || echo "tiered-bench ($ctx, together): failed or stopped (time)"
  cp /tmp/leoam-timelines/timeline-8b-*-leoam_all-*.svg "$out/" 2>/dev/null || true
  tar -czf "$out/timelines.tar.gz" -C /tmp/leoam-timelines . || true
  rm -rf /tmp/leoam-kv/*
  exit 0
fi
if [ "$suite" = prefetch-128k ]; then
  mkdir -p /tmp/leoam-kv /tmp/leoam-pf128 && rm -rf /tmp/leoam-kv/* /tmp/leoam-pf128/*
  # Three fills of ~30-50 s, the int4 switch and 8 steps each: within 400 s; offload-all then has 150.
  timeout 400 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 131072 --policies "${PF128_POLICIES:-leoam+all,leoam+all-fixed,leoam+all-noprefetch}" \
    --all-compression 4 --pipeline-depth 2 --prefetch-layers 1 --prefetch-probe-steps "${PREFETCH_PROBE_STEPS:-4}" --steps 8 --max-seconds 10 \
    --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --timeline /tmp/leoam-pf128/timeline-8b-128k --cpu-profile /tmp/leoam-pf128/cpu-8b-128k \
    --out "$out/tiered-8b-128k-prefetch.json" "$@" 2>&1 | tee "$out/tiered-8b-128k-prefetch.txt" || echo "tiered-bench (128K, prefetch): failed or stopped (time)"
  cp /tmp/leoam-pf128/timeline-8b-128k-leoam_all-4.svg "$out/" 2>/dev/null || true
  tar -czf "$out/prefetch-128k.tar.gz" -C /tmp/leoam-pf128 . || true
  rm -rf /tmp/leoam-kv/*
  timeout 150 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 131072 --policies offload-all --steps 2 --max-seconds 10 \
    --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --out "$out/tiered-8b-128k-offload.json" 2>&1 | tee "$out/tiered-8b-128k-offload.txt" || echo "tiered-bench (128K, offload-all): failed or stopped (time)"
  rm -rf /tmp/leoam-kv/*
  exit 0
fi
if [ "$suite" = mma ]; then
  export LEOAM_MATRIX_UNITS=auto
  timeout 25 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-matrix-on.txt" || echo "golden check: FAILED or stopped"
  timeout "${MMA_BATCH_S:-55}" node .bench-bundle/batch-bench.mjs --context 1024 --batches 1,4,16 --policies full --projections "${MMA_PROJECTIONS:-gemv,multi,mma}" \
    --mma-forms "${MMA_FORMS:-}" ${MMA_PROFILE:+--profile} --steps 16 --max-seconds "$(( ${MMA_BATCH_S:-55} - 12 ))" --out "$out/batch-8b-1k.json" 2>&1 | tee "$out/batch-8b-1k.txt" || echo "batch-bench 1K: failed or stopped"
  timeout "${MMA_SKINNY_S:-25}" node .bench-bundle/skinny-bench.mjs --m "${MMA_SKINNY_M:-1,4,16}" --forms "${MMA_SKINNY_FORMS:-8x1,16x1,8x2,16x2}" \
    --out "$out/skinny-bench.json" 2>&1 | tee "$out/skinny-bench.txt" || echo "skinny-bench: failed or stopped"
  [ "${MMA_GEMM_S:-40}" = 0 ] || timeout "${MMA_GEMM_S:-40}" node .bench-bundle/gemm-bench.mjs --m "${MMA_GEMM_M:-512,4096}" --max-seconds "$(( ${MMA_GEMM_S:-40} - 8 ))" \
    --out "$out/gemm-bench.json" "$@" 2>&1 | tee "$out/gemm-bench.txt" || echo "gemm-bench: failed, stopped or a check missed"
  exit 0
fi
if [ "$suite" = rows ]; then
  export LEOAM_MATRIX_UNITS=auto
  timeout 25 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-matrix-on.txt" || echo "golden check: FAILED or stopped"
  for how in back-to-back read-back; do
    flag=""; projections="${ROWS_PROJECTIONS:-mma,mma:rowsample}"
    [ "$how" = read-back ] && flag="--read-back" && projections="${ROWS_READ_PROJECTIONS:-$projections,mma:overlap}"
    timeout "${ROWS_S:-110}" node .bench-bundle/batch-bench.mjs --context 1024 --batches 1,4,8,16 --policies full --projections "$projections" \
      --profile $flag --steps 16 --max-seconds "$(( ${ROWS_S:-110} - 15 ))" --out "$out/rows-8b-1k-$how.json" "$@" 2>&1 | tee "$out/rows-8b-1k-$how.txt" || echo "batch-bench 1K ($how): failed or stopped"
  done
  exit 0
fi
if [ "$suite" = stream ]; then
  export LEOAM_MATRIX_UNITS=auto
  timeout 30 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check-matrix-on.txt" || echo "golden check: FAILED or stopped"
  timeout "${STREAM_SKINNY_S:-100}" node .bench-bundle/skinny-bench.mjs --m "${STREAM_M:-1,2,4,8,16}" --forms "${STREAM_MMA_FORMS:-16x2,8x2s}" \
    --stream-forms "${STREAM_FORMS:-4x2,4x2f,2x2,4x1,4x2h}" --out "$out/skinny-bench.json" 2>&1 | tee "$out/skinny-bench.txt" || echo "skinny-bench: failed, stopped or a check missed"
  timeout "${STREAM_BATCH_S:-90}" node .bench-bundle/batch-bench.mjs --context 1024 --batches "1,${STREAM_BATCHES:-16}" --policies full \
    --projections "${STREAM_PROJECTIONS:-mma,stream,stream/4x2f}" --profile --steps 16 --max-seconds "$(( ${STREAM_BATCH_S:-90} - 15 ))" \
    --out "$out/batch-8b-1k.json" "$@" 2>&1 | tee "$out/batch-8b-1k.txt" || echo "batch-bench 1K: failed or stopped"
  exit 0
fi
if [ "$suite" = batch ]; then
  # Timeouts sum to 580 s: one 10-minute command. BATCH_1K=0 or BATCH_32K=0 skips a part (to
  # run them as two commands with more room: BATCH_FILL_S, BATCH_MAX_S per 32K policy).
  timeout 60 node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" || echo "golden check: FAILED or stopped"
  if [ "${BATCH_1K:-1}" = 1 ]; then
    timeout 110 node .bench-bundle/batch-bench.mjs --context 1024 --batches 1,4,16 --policies full --projections gemm,gemv,multi --steps 24 --max-seconds 90 \
      --out "$out/batch-8b-1k.json" "$@" 2>&1 | tee "$out/batch-8b-1k.txt" || echo "batch-bench 1K: failed or stopped"
  fi
  if [ "${BATCH_32K:-1}" = 1 ]; then
    mkdir -p /tmp/leoam-kv && rm -rf /tmp/leoam-kv/*
    # Per policy: sequences are filled (random KV through the seal path) for up to
    # BATCH_FILL_S (the largest batches are skipped if that is not enough) and no setup
    # starts past BATCH_MAX_S, so what was measured is kept.
    for policy in ${BATCH_32K_POLICIES:-leoam offload-all}; do
      limit=${BATCH_LEOAM_S:-190}; [ "$policy" = offload-all ] && limit=${BATCH_OFFLOAD_S:-220}
      timeout "$limit" node .bench-bundle/batch-bench.mjs --context 32768 --batches "${BATCH_32K_BATCHES:-1,4,8,16}" --policies "$policy" \
        --projections "${BATCH_32K_PROJECTIONS:-gemm}" --gpu-kv-budget 6GiB --host-kv-budget 8GiB --kv-dir /tmp/leoam-kv --steps "${BATCH_32K_STEPS:-4}" \
        --fill-seconds "${BATCH_FILL_S:-120}" --max-seconds "${BATCH_MAX_S:-$((limit - 25))}" \
        --out "$out/batch-8b-32k-$policy.json" 2>&1 | tee "$out/batch-8b-32k-$policy.txt" || echo "batch-bench 32K $policy: failed or stopped"
      rm -rf /tmp/leoam-kv/*
    done
  fi
  exit 0
fi
if [ "$suite" = tiered-128k ]; then
  mkdir -p /tmp/leoam-kv
  timeout 280 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 131072 --steps 6 --max-seconds 25 --kv-dir /tmp/leoam-kv \
    --out "$out/tiered-8b-128k.json" 2>&1 | tee "$out/tiered-8b-128k.txt" || echo "8B 128K: stopped (time)"
  exit 0
fi
if [ "$suite" = quality ] && [ "${QUALITY_CHECK:-1}" = 0 ]; then
  timeout "${QUALITY_S:-420}" node .bench-bundle/kv-quality.mjs --kl-positions 4096 --json "$out/kv-quality.json" "$@" 2>&1 | tee "$out/kv-quality.txt" \
    || echo "kv-quality: stopped (time); kv-quality.json has the variants that finished"
  exit 0
fi
if [ "$suite" = decode ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu --format=csv -l 1 > "$out/clocks.csv" 2>&1 &
  clocks=$!
  node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt"
  node .bench-bundle/engine-bench.mjs --long-context 0 --out "$out/engine-bench.json" "$@" 2>&1 | tee "$out/engine-bench.txt"
  # UNCHECKED=1: the same again without Dawn's bounds checks and workgroup-memory zeroing.
  [ "${UNCHECKED:-0}" = 0 ] || LEOAM_DAWN_TOGGLES=disable_robustness,disable_workgroup_init node .bench-bundle/engine-bench.mjs \
    --long-context 0 --prefill 0 --out "$out/engine-bench-unchecked.json" "$@" 2>&1 | tee "$out/engine-bench-unchecked.txt"
  [ ! -f .bench-bundle/actor-overhead.mjs ] || node .bench-bundle/actor-overhead.mjs --out "$out/actor-overhead.json" 2>&1 | tee "$out/actor-overhead.txt"
  node .bench-bundle/decode-lab.mjs --out "$out/decode-lab.json" 2>&1 | tee "$out/decode-lab.txt"
  kill "$clocks" 2>/dev/null || true
  exit 0
fi
node "$golden" models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt"
if [ "$suite" = lab ]; then
  node .bench-bundle/decode-lab.mjs --out "$out/decode-lab.json" "$@" 2>&1 | tee "$out/decode-lab.txt"
  exit 0
fi
if [ "$suite" = check ] || [ "$suite" = quality ]; then
  mkdir -p /tmp/leoam-kv
  node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies full,leoam --steps 6 --kv-dir /tmp/leoam-kv \
    --out "$out/tiered-8b-64k.json" 2>&1 | tee "$out/tiered-8b-64k.txt"
  if [ "$suite" = quality ]; then
    rm -rf /tmp/leoam-kv
    timeout "${QUALITY_S:-420}" node .bench-bundle/kv-quality.mjs --policies leoam,quest,h2o --kl-positions 4096 --json "$out/kv-quality.json" "$@" 2>&1 | tee "$out/kv-quality.txt" \
      || echo "kv-quality: stopped (time); kv-quality.json has the variants that finished"
  fi
  exit 0
fi
if [ "$suite" != tiered ]; then
  node .bench-bundle/engine-bench.mjs --out "$out/engine-bench.json" "$@" 2>&1 | tee "$out/engine-bench.txt"
  node .bench-bundle/actor-overhead.mjs --out "$out/actor-overhead.json" 2>&1 | tee "$out/actor-overhead.txt"
fi
if [ "$suite" != tiered ]; then
  node .bench-bundle/upload-bench.mjs --total-mib 512 --json "$out/upload-bench.json" 2>&1 | tee "$out/upload-bench.txt"
fi
if [ "$suite" != engine ]; then
  # (a) the paper's model: Llama-2-7B / LongChat-7B shapes (MHA, 0.5 MiB of KV a token) at 32K;
  # (b) Llama-3.1-8B shapes (GQA) at 64K, then 128K. GPU budget: what a 24 GB card leaves.
  mkdir -p /tmp/leoam-kv
  t="--steps 6 --max-seconds 25 --kv-dir /tmp/leoam-kv"
  timeout 200 node .bench-bundle/tiered-bench.mjs --preset longchat-7b-32k --context 32768 $t --out "$out/tiered-7b-32k.json" 2>&1 | tee "$out/tiered-7b-32k.txt" || echo "7B 32K: stopped (time)"
  timeout 150 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 $t --out "$out/tiered-8b-64k.json" 2>&1 | tee "$out/tiered-8b-64k.txt" || echo "8B 64K: stopped (time)"
  if [ "${TIERED_128K:-0}" = 1 ]; then
    timeout 200 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 131072 $t --out "$out/tiered-8b-128k.json" 2>&1 | tee "$out/tiered-8b-128k.txt" || echo "8B 128K: stopped (time)"
  fi
fi
