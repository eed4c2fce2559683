// Where recompute crosses over fetch (issue 13 §5, policy `recompute`): per model shape and
// chunk size, the time to bring N chunks of one layer into GPU cache slots
//   fetch:      their K/V records read from disk (5 reads in flight, as kv/tier-io.ts reads
//               ahead) and written into the slots (queue.writeBuffer);
//   recompute:  their hidden-state records read the same way and recomputed on the GPU into
//               the slots (engine/kv/tiered/recompute-pass.ts: widen, RMSNorm, the K/V rows of
//               the QKV GEMM, rope_kv), in batches of RECOMPUTE_ROWS tokens;
//   gpu only:   the recompute with the hidden states already in host memory (its compute);
// each timed until the GPU is done, warm (records in the page cache) and, with --cold-disk,
// cold (the store's files dropped from the page cache before each run, bench/page-cache.ts).
// Weights are random (one layer's, at the model's shapes), records random. The crossover disk
// rate is what the bytes recompute saves per chunk (K/V minus hidden) are worth against its
// GPU time: below that rate recompute pays. Prints a table; --out writes JSON.
// Run: npx tsx bench/recompute-bench.ts [--models longchat-7b-32k,llama-3.1-8b] [--chunk-tokens 16,32,64] [--cold-disk]
import { randomFillSync } from "node:crypto"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { storageBuffer } from "../engine/buffers.ts"
import { defaultGemvTuning, resolveGemvTunings } from "../engine/gemv-tuning.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { RECOMPUTE_ROWS, RecomputePass, hiddenRowsKey } from "../engine/kv/tiered/recompute-pass.ts"
import { modelKeys, subgroupsOf } from "../engine/model-resources.ts"
import { RECOMPUTE_GEMM_TFLOPS } from "../protocol/policy.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HIDDEN_LAYER_BASE, recomputeCost } from "../kv/recompute-cost.ts"
import { dummyPresets } from "../models/config.ts"
import type { ModelConfig } from "../models/types.ts"
import { dropPageCache } from "./page-cache.ts"

const o = new Command()
  .name("recompute-bench")
  .description("Fetch a chunk's K/V from disk against reading its hidden states and recomputing K/V on the GPU.")
  .option("--models <list>", "dummy model presets", "longchat-7b-32k,llama-3.1-8b")
  .option("--chunk-tokens <list>", "chunk sizes (tokens)", "16,32,64,128,256")
  .option("--chunks <n>", "chunks of one layer per run", (v) => parseInt(v, 10), 64)
  .option("--reps <n>", "runs per case (the median is reported)", (v) => parseInt(v, 10), 3)
  .option("--cold-disk", "also time each case with the store's files dropped from the page cache before each run")
  .option("--kv-dir <dir>", "where the records are written (default: a temporary directory)")
  .option("--disk-gb-per-s <n>", "the cost model's disk rate, for its prediction beside the measurement", parseFloat, 3)
  .option("--gemm-tflops <n>", "the cost model's GEMM rate (the policy's default)", parseFloat, RECOMPUTE_GEMM_TFLOPS)
  .option("--out <file>", "write the rows as JSON (after each case, so that a run stopped by time keeps what it measured)")
  .option("--max-seconds <n>", "start no case after this many seconds (the remaining ones are listed as skipped)", parseFloat, Number.POSITIVE_INFINITY)
  .parse()
  .opts()

const BLOCK = 16
const IN_FLIGHT = 5

interface Case {
  readonly model: string
  readonly chunk_tokens: number
  readonly chunks: number
  readonly kv_bytes_per_chunk: number
  readonly hidden_bytes_per_chunk: number
  /** ms per chunk (median of reps). */
  readonly fetch_warm_ms: number
  readonly recompute_warm_ms: number
  readonly gpu_only_ms: number
  readonly fetch_cold_ms?: number
  readonly recompute_cold_ms?: number
  /** The disk rate below which recompute pays, from its measured GPU time. */
  readonly crossover_gb_per_s: number
  readonly model_crossover_gb_per_s: number
  readonly pays_warm: boolean
  readonly pays_cold?: boolean
}

const gpu = await acquireGpu()
const device = gpu.device
const done = () => device.queue.onSubmittedWorkDone()
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const dir = o.kvDir ?? mkdtempSync(join(tmpdir(), "leoam-recompute-bench-"))
mkdirSync(dir, { recursive: true })

/** Random halves of magnitude 2^-7..2^-6 (weights) or 0.5..1 (hidden states), either sign. */
const randomHalves = (n: number, exponent: number): Uint16Array => {
  const h = new Uint16Array(n)
  randomFillSync(h)
  for (let i = 0; i < n; i++) h[i] = (h[i] & 0x83ff) | (exponent << 10)
  return h
}

/** Reads `count` records through `read(i)` with IN_FLIGHT in flight, handing each to `use` in order. */
const readAll = async (count: number, read: (i: number) => Promise<Uint8Array>, use: (i: number, bytes: Uint8Array) => void): Promise<void> => {
  const pending = new Map<number, Promise<Uint8Array>>()
  for (let i = 0, next = 0; i < count; i++) {
    for (; next < count && next <= i + IN_FLIGHT - 1; next++) pending.set(next, read(next))
    use(i, await pending.get(i)!)
    pending.delete(i)
  }
}

const rows: Case[] = []
const skipped: string[] = []
const started = performance.now()
const save = () => {
  if (o.out) writeFileSync(o.out, JSON.stringify({ device: `${gpu.adapterName} (${gpu.kind})`, chunks: o.chunks, reps: o.reps, rows, skipped }, null, 2))
}
for (const name of String(o.models).split(",")) {
  const c: ModelConfig | undefined = dummyPresets[name]
  if (!c) throw new Error(`unknown preset ${name}`)
  const hidden = c.hiddenSize
  const qRows = c.numHeads * c.headDim
  const kvRows = 2 * c.numKvHeads * c.headDim
  const pipelines = new Pipelines(gpu)
  const keys = modelKeys(gpu, c, resolveGemvTunings(c, defaultGemvTuning(gpu), subgroupsOf(gpu)))
  await pipelines.prewarm([keys.gemm, keys.gemmBias, keys.rmsnorm, keys.rope, hiddenRowsKey(false)])
  const wqkv = storageBuffer(device, `${name} wqkv (q+k+v rows, hidden) f16 random`, (qRows + kvRows) * hidden * 2)
  for (let r = 0; r < qRows + kvRows; r += 1024) {
    const n = Math.min(1024, qRows + kvRows - r) * hidden
    device.queue.writeBuffer(wqkv, r * hidden * 2, randomHalves(n, 8))
  }
  const attnNorm = storageBuffer(device, `${name} attn norm (hidden) f16`, hidden * 2)
  device.queue.writeBuffer(attnNorm, 0, new Uint16Array(hidden).fill(0x3c00))
  const maxTokens = Math.max(...String(o.chunkTokens).split(",").map(Number))
  const kvBlockBytes = c.numKvHeads * BLOCK * c.headDim * 2
  const poolBytes = o.chunks * Math.ceil(maxTokens / BLOCK) * kvBlockBytes
  const pool = { k: storageBuffer(device, `${name} bench k pool`, poolBytes), v: storageBuffer(device, `${name} bench v pool`, poolBytes) }
  const pass = new RecomputePass(device, pipelines, c, { weights: [{ wqkv, attnNorm, bqkv: undefined }], keys: { gemm: keys.gemm, gemmBias: keys.gemmBias, rmsnorm: keys.rmsnorm, rope: keys.rope } }, [pool], BLOCK)
  for (const tokens of String(o.chunkTokens).split(",").map(Number)) {
    if (tokens % BLOCK !== 0 || tokens > RECOMPUTE_ROWS) throw new Error(`chunk size ${tokens}: a multiple of ${BLOCK} up to ${RECOMPUTE_ROWS}`)
    if (performance.now() - started > o.maxSeconds * 1000) {
      skipped.push(`${name} ${tokens}`)
      console.log(`${name.padEnd(16)} ${String(tokens).padStart(4)} tok  skipped (--max-seconds ${o.maxSeconds})`)
      continue
    }
    const store = DiskStore.open({ kvDir: join(dir, `${name}-${tokens}`) })
    const session = "bench"
    const kvBytes = tokens * kvRows * 2
    const hiddenBytes = tokens * hidden * 2
    const kvRecord = new Uint8Array(kvBytes)
    for (let i = 0; i < o.chunks; i++) {
      randomFillSync(kvRecord)
      const h = randomHalves(tokens * hidden, 14)
      store.putChunks([
        { key: [session, 0, i], bytes: kvRecord, meta: { tokens, dtype: "f16" } },
        { key: [session, HIDDEN_LAYER_BASE, i], bytes: new Uint8Array(h.buffer), meta: { tokens, dtype: "f16" } },
      ])
    }
    await store.flush()
    const slotBlocks = Math.ceil(maxTokens / BLOCK)
    const blockOf = (i: number) => i * slotBlocks
    const buffers = Array.from({ length: IN_FLIGHT + 1 }, () => new Uint8Array(Math.max(kvBytes, hiddenBytes)))
    const hiddenHost = Array.from({ length: o.chunks }, () => new Uint8Array(hiddenBytes))
    const perBatch = Math.floor(RECOMPUTE_ROWS / tokens)
    // A ring of batch buffers: reads run up to IN_FLIGHT chunks ahead of the batch being submitted.
    const batches = Array.from({ length: Math.ceil(IN_FLIGHT / perBatch) + 2 }, () => new Uint8Array(RECOMPUTE_ROWS * hidden * 2))
    const batchOf = (i: number) => batches[Math.floor(i / perBatch) % batches.length]
    const batch = batches[0]
    const jobsOf = (first: number, n: number) => Array.from({ length: n }, (_, j) => ({ start: (first + j) * tokens, tokens, block: blockOf(first + j) }))

    const fetch = async () => {
      await readAll(o.chunks, (i) => store.readChunkAsync([session, 0, i], buffers[i % buffers.length]), (i, b) => {
        device.queue.writeBuffer(pool.k, blockOf(i) * kvBlockBytes, b, 0, kvBytes / 2)
        device.queue.writeBuffer(pool.v, blockOf(i) * kvBlockBytes, b, kvBytes / 2, kvBytes / 2)
      })
      await done()
    }
    const recompute = async () => {
      let inBatch = 0
      await readAll(o.chunks, (i) => store.readChunkAsync([session, HIDDEN_LAYER_BASE, i], batchOf(i).subarray((i % perBatch) * hiddenBytes, (i % perBatch + 1) * hiddenBytes)), (i) => {
        inBatch++
        if (inBatch === perBatch || i === o.chunks - 1) {
          pass.submit(0, jobsOf(i + 1 - inBatch, inBatch), batchOf(i).subarray(0, inBatch * hiddenBytes))
          inBatch = 0
        }
      })
      await done()
    }
    const gpuOnly = async () => {
      for (let i = 0; i < o.chunks; i += perBatch) {
        const n = Math.min(perBatch, o.chunks - i)
        for (let j = 0; j < n; j++) batch.set(hiddenHost[i + j], j * hiddenBytes)
        pass.submit(0, jobsOf(i, n), batch.subarray(0, n * hiddenBytes))
      }
      await done()
    }
    for (let i = 0; i < o.chunks; i++) hiddenHost[i].set(store.readChunk([session, HIDDEN_LAYER_BASE, i]))
    const time = async (run: () => Promise<void>, cold: boolean) => {
      const ms: number[] = []
      for (let r = 0; r < o.reps; r++) {
        if (cold) dropPageCache(join(dir, `${name}-${tokens}`))
        else await run() // warms the page cache and the pipelines
        const t0 = performance.now()
        await run()
        ms.push((performance.now() - t0) / o.chunks)
      }
      return median(ms)
    }
    const fetchWarm = await time(fetch, false)
    const recomputeWarm = await time(recompute, false)
    const gpuMs = await time(gpuOnly, false)
    const fetchCold = o.coldDisk ? await time(fetch, true) : undefined
    const recomputeCold = o.coldDisk ? await time(recompute, true) : undefined
    const cost = recomputeCost(c, o.diskGbPerS, o.gemmTflops)
    const row: Case = {
      model: name,
      chunk_tokens: tokens,
      chunks: o.chunks,
      kv_bytes_per_chunk: kvBytes,
      hidden_bytes_per_chunk: hiddenBytes,
      fetch_warm_ms: fetchWarm,
      recompute_warm_ms: recomputeWarm,
      gpu_only_ms: gpuMs,
      ...(fetchCold !== undefined ? { fetch_cold_ms: fetchCold, recompute_cold_ms: recomputeCold } : {}),
      crossover_gb_per_s: kvBytes > hiddenBytes ? (kvBytes - hiddenBytes) / (gpuMs * 1e6) : 0,
      model_crossover_gb_per_s: cost.crossoverGBps,
      pays_warm: recomputeWarm < fetchWarm,
      ...(fetchCold !== undefined ? { pays_cold: recomputeCold! < fetchCold } : {}),
    }
    rows.push(row)
    save()
    const f = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(3))
    console.log(
      `${name.padEnd(16)} ${String(tokens).padStart(4)} tok  K/V ${(kvBytes / 1024).toFixed(0).padStart(5)} KiB, hidden ${(hiddenBytes / 1024).toFixed(0).padStart(5)} KiB  ms/chunk: fetch warm ${f(fetchWarm)} cold ${f(fetchCold)} | recompute warm ${f(recomputeWarm)} cold ${f(recomputeCold)} (GPU alone ${f(gpuMs)})  ` +
        `recompute pays below ${row.crossover_gb_per_s.toPrecision(3)} GB/s (cost model at ${o.gemmTflops} TFLOPS: ${cost.crossoverGBps.toPrecision(3)})`,
    )
    await store.close()
  }
  pass.destroy()
  for (const b of [wqkv, attnNorm, pool.k, pool.v]) b.destroy()
}
save()
if (!o.kvDir) rmSync(dir, { recursive: true, force: true })
await releaseGpu()
