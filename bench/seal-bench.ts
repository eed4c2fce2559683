// What sealing costs per chunk under each compression setting: a tiered cache at a model's
// KV shapes (few layers, small dummy weights: only the KV geometry matters) has its pools
// filled once with random KV (untimed), then appends tokens through the real seal path
// (abstracts, quantization, read-back, host arena, disk), each batch sealing what the tail
// holds; the wall time of those appends is divided by the chunks sealed. The same program run
// on an older tree (which quantized on the CPU as read-backs landed) gives the "before".
// Besides the wall time (noisy on a shared CPU, and on lavapipe it includes the GPU's work),
// the host time spent inside TierIo.storeSealed (where the older tree quantized) per chunk.
// Prints a table, writes JSON (--json).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { gpuFiller } from "../engine/gpu-fill.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { LocalTierIo } from "../kv/tier-io.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { parsePolicy } from "../protocol/policy.ts"

const o = new Command()
  .option("--preset <name>", "KV shapes of this dummy preset", "llama-3.1-8b")
  .option("--layers <n>", "layers (the seal cost per chunk does not depend on them)", (v) => parseInt(v, 10), 2)
  .option("--tokens <n>", "tokens filled per setting", (v) => parseInt(v, 10), 4096)
  .option("--compression <list>", "settings, comma-separated", "16,8,4,importance")
  .option("--rounds <n>", "fills per setting (the median is reported)", (v) => parseInt(v, 10), 3)
  .option("--json <file>", "write the results as JSON")
  .parse()
  .opts()

const base = resolveDummyConfig(o.preset)
// Small weights (vocabulary, MLP): the fill never runs the model.
const config = { ...base, numLayers: o.layers, vocabSize: 1024, intermediateSize: 256, tieWordEmbeddings: true }
// Host time inside storeSealed: its synchronous part is the seal's CPU work on the main thread.
let storeMs = 0
const store0 = LocalTierIo.prototype.storeSealed
LocalTierIo.prototype.storeSealed = function (this: LocalTierIo, ...args: Parameters<typeof store0>) {
  const t0 = performance.now()
  try {
    return store0.apply(this, args)
  } finally {
    storeMs += performance.now() - t0
  }
}
const gpu = await acquireGpu()
const rows: Array<Record<string, string | number>> = []
console.log(`seal cost: ${o.preset} KV shapes (${config.numKvHeads} KV heads, head dim ${config.headDim}), ${o.layers} layers, ${o.tokens} tokens per fill, on ${gpu.adapterName}, ${cpus().length} cores`)
for (const setting of String(o.compression).split(",")) {
  const bits = setting === "importance" ? "importance" : Number(setting)
  const policy = parsePolicy({ name: "leoam", ...(bits !== 16 ? { compression: { bits } } : {}) })
  const ms: number[] = []
  const hostMs: number[] = []
  let chunks = 0
  let written = 0
  for (let round = 0; round < o.rounds; round++) {
    const dir = mkdtempSync(join(tmpdir(), "leoam-seal-bench-"))
    const store = DiskStore.open({ kvDir: dir })
    const arena = new HostArena({ budgetBytes: 2 ** 30 })
    const options = kvEngineOptions(policy, { gpuBudgetBytes: 256 * 2 ** 20, arena, store, session: "seal-bench" }, config, o.tokens + 16)
    const model = await GpuModel.load(gpu, new DummyWeightSource(config), { maxContext: o.tokens + 16, ...options })
    try {
      const fill = await gpuFiller(model.gpu, model.pipelines)
      model.kv.pools.forEach((p, l) => {
        for (const [i, b] of [p.k, p.v].entries()) if (!fill(b, 0, b.size / 2, { kind: "random", seed: 1 + 2 * l + i, amplitude: 1 })) throw new Error("unaligned fill")
      })
      await gpu.device.queue.onSubmittedWorkDone()
      storeMs = 0
      const t0 = performance.now()
      await model.kv.appendSynthetic(o.tokens, () => {})
      ms.push(performance.now() - t0)
      hostMs.push(storeMs)
      const s = model.tierStats()!
      chunks = s.chunks_sealed
      written = s.disk.bytes_written
    } finally {
      model.destroy()
      await store.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  const median = med(ms)
  const host = med(hostMs)
  rows.push({ compression: setting, chunks, fill_ms: +median.toFixed(1), ms_per_chunk: +(median / chunks).toFixed(3), store_host_ms_per_chunk: +(host / chunks).toFixed(4), disk_bytes_per_chunk: Math.round(written / chunks) })
  console.log(
    `  ${setting.padEnd(10)} ${chunks} chunks, appends ${median.toFixed(0)} ms (median of ${o.rounds}): ${(median / chunks).toFixed(3)} ms per chunk wall, ` +
      `${(host / chunks).toFixed(4)} ms per chunk in storeSealed (host), ${Math.round(written / chunks)} bytes per chunk stored`,
  )
}
if (o.json) writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), argv: process.argv.slice(2), device: gpu.adapterName, cores: cpus().length, rows }, null, 2))
await releaseGpu()
