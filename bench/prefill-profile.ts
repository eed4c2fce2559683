// Where a prefill's time goes: runs one prompt's prefill through the engine under a KV
// policy and budgets (the demo's by default: leoam, 3 MiB GPU, 3 MiB host), with every
// dispatch in a compute pass of its own, timed on the device (timestamp queries), and
// splits the wall time into kernels by name, the tier counters (history loads, sealing)
// and what is left (host work and waits). Timing each dispatch apart serializes the
// device, so the wall time here is above an untimed run's; it prints both.
//   node --import tsx bench/prefill-profile.ts [--tokens 3000] [--policy leoam] [--out f.json]
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { parseSize } from "../cli/sizes.ts"
import { bundledModelDir } from "../cli/generate.ts"
import { type Dispatch, encodeAll } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import type { StepEncoder } from "../engine/kv/manager.ts"
import { isTiered, kvEngineOptions } from "../engine/kv/registry.ts"
import { type EngineOptions, GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer } from "../models/tokenizer.ts"
import type { WeightSource } from "../models/types.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { passKey, passKeyText } from "./passkey.ts"

const program = new Command()
  .option("--model <dir>", "model directory or dummy:PRESET", bundledModelDir)
  .option("--tokens <n>", "prompt tokens (a pass-key prompt with the bundled model, random ids with a dummy one)", (v) => Number(v), 3000)
  .option("--policy <name>", "KV policy", "leoam")
  .option("--gpu-kv-budget <size>", "GPU KV budget (tiered policies)", "3MiB")
  .option("--host-kv-budget <size>", "host arena (tiered policies)", "3MiB")
  .option("--max-context <n>", "context allocated (leoam serve: the model's max)", (v) => Number(v))
  .option("--untimed", "also run the prefill once without per-dispatch timing (its wall time)")
  .option("--out <file>", "write the results as JSON")
  .parse()
const o = program.opts()

/**
 * The engine's step stream with every dispatch in a timed pass of its own; each submit
 * resolves its queries and reads them back (asynchronously) into per-kernel totals.
 */
class ProfiledStep implements StepEncoder {
  readonly totals = new Map<string, { ms: number; count: number }>()
  private readonly reads: Array<Promise<void>> = []
  private encoder: GPUCommandEncoder | undefined
  private labels: string[] = []
  private readonly querySet: GPUQuerySet

  constructor(
    private readonly device: GPUDevice,
    private readonly maxQueries = 4096,
  ) {
    this.querySet = device.createQuerySet({ type: "timestamp", count: maxQueries })
  }

  open(): this {
    this.encoder = this.device.createCommandEncoder()
    return this
  }

  encode(dispatches: ReadonlyArray<Dispatch>): void {
    for (const d of dispatches) {
      if (d.x === 0 || d.y === 0 || d.z === 0) continue
      if (2 * this.labels.length + 2 > this.maxQueries) this.submit()
      const i = this.labels.length
      this.labels.push(d.pipeline.label)
      const pass = this.encoder!.beginComputePass({ timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } })
      encodeAll(pass, [d])
      pass.end()
    }
  }

  compute(use: (pass: GPUComputePassEncoder) => void): void {
    const pass = this.encoder!.beginComputePass()
    use(pass)
    pass.end()
  }

  record(use: (encoder: GPUCommandEncoder) => void): void {
    use(this.encoder!)
  }

  submit(): void {
    const read = this.resolveInto(this.encoder!)
    this.device.queue.submit([this.encoder!.finish()])
    read?.()
    this.encoder = this.device.createCommandEncoder()
  }

  finish(last?: (encoder: GPUCommandEncoder) => void): void {
    last?.(this.encoder!)
    const read = this.resolveInto(this.encoder!)
    this.device.queue.submit([this.encoder!.finish()])
    read?.()
    this.encoder = undefined
  }

  /** Resolves the queries of the commands so far; the returned read-back starts once they are submitted. */
  private resolveInto(encoder: GPUCommandEncoder): (() => void) | undefined {
    const labels = this.labels
    this.labels = []
    if (labels.length === 0) return undefined
    const bytes = labels.length * 16
    const resolve = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC })
    const read = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    encoder.resolveQuerySet(this.querySet, 0, 2 * labels.length, resolve, 0)
    encoder.copyBufferToBuffer(resolve, 0, read, 0, bytes)
    return () => this.reads.push(
      (async () => {
        await read.mapAsync(GPUMapMode.READ)
        const t = new BigUint64Array(read.getMappedRange())
        labels.forEach((label, i) => {
          const ms = t[2 * i + 1] > t[2 * i] ? Number(t[2 * i + 1] - t[2 * i]) / 1e6 : 0
          const e = this.totals.get(label) ?? { ms: 0, count: 0 }
          e.ms += ms
          e.count++
          this.totals.set(label, e)
        })
        read.unmap()
        read.destroy()
        resolve.destroy()
      })(),
    )
  }

  async done(): Promise<void> {
    await Promise.all(this.reads)
  }
}

const openSource = (spec: string): { source: WeightSource; ids: (n: number) => number[] } => {
  if (spec.startsWith("dummy:")) {
    const source = new DummyWeightSource(resolveDummyConfig(spec.slice(6)))
    return { source, ids: (n) => Array.from({ length: n }, (_, i) => (i * 7919 + 13) % source.config.vocabSize) }
  }
  const tok = loadTokenizer(spec)
  return { source: openHfModel(spec), ids: (n) => tok.encode(passKeyText(n, passKey(1), 0.5)) }
}

const main = async () => {
  const { source, ids: idsOf } = openSource(o.model)
  const config = source.config
  const ids = idsOf(o.tokens)
  const maxContext = Math.max(ids.length + 16, o.maxContext ?? config.maxPositionEmbeddings)
  const policy = parsePolicy(o.policy)
  const tiered = isTiered(policy)
  const kvDir = mkdtempSync(join(tmpdir(), "leoam-prefill-profile-"))
  const store = tiered ? DiskStore.open({ kvDir }) : undefined
  const arena = tiered ? new HostArena({ budgetBytes: parseSize(o.hostKvBudget) }) : undefined
  const gpu = await acquireGpu({ prefer: "auto" })
  try {
    const kv = kvEngineOptions(policy, { gpuBudgetBytes: tiered ? parseSize(o.gpuKvBudget) : undefined, arena, store, session: "profile" }, config, maxContext)
    const options: EngineOptions = { maxContext, ...kv }
    const model = await GpuModel.load(gpu, source, options)
    const runs: Record<string, unknown> = {}
    if (o.untimed) {
      model.reset()
      const cpu0 = process.cpuUsage()
      const t0 = performance.now()
      await model.prefill(ids)
      await gpu.device.queue.onSubmittedWorkDone()
      const wall = performance.now() - t0
      const cpu = process.cpuUsage(cpu0)
      runs.untimed = { wall_ms: wall, cpu_ms: (cpu.user + cpu.system) / 1000, kv: model.tierStats() }
      console.log(`untimed prefill of ${ids.length} tokens: wall ${wall.toFixed(0)} ms, process CPU ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms`)
    }
    model.reset()
    const profiler = new ProfiledStep(gpu.device)
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    await model.prefill(ids, false, undefined, () => profiler.open())
    await gpu.device.queue.onSubmittedWorkDone()
    const wall = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    const cpuMs = (cpu.user + cpu.system) / 1000
    await profiler.done()
    const tiers = model.tierStats()
    const kernels = [...profiler.totals.entries()].map(([kernel, v]) => ({ kernel, ms: v.ms, count: v.count })).sort((a, b) => b.ms - a.ms)
    const kernelMs = kernels.reduce((s, k) => s + k.ms, 0)
    console.log(`${config.name}, ${ids.length} prompt tokens, ${o.policy} (GPU ${o.gpuKvBudget}, host ${o.hostKvBudget}), ${gpu.adapterName}`)
    console.log(`timed prefill wall ${wall.toFixed(0)} ms, process CPU ${cpuMs.toFixed(0)} ms (all threads; on lavapipe the device's too); device time of its dispatches ${kernelMs.toFixed(0)} ms`)
    console.log("kernel                                   ms    share  dispatches")
    for (const k of kernels) console.log(`${k.kernel.padEnd(36)} ${k.ms.toFixed(0).padStart(8)} ${((100 * k.ms) / wall).toFixed(1).padStart(6)} % ${String(k.count).padStart(8)}`)
    if (tiers) {
      const t = tiers.time_ms
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`
      console.log(`tiers: transfer ${t.transfer.toFixed(0)} ms (history loads, including waits for staging slots), seal ${t.seal.toFixed(0)} ms, ` +
        `${tiers.windows} windows, host ${mib(tiers.host.bytes_read)} read, disk ${mib(tiers.disk.bytes_read)} read, ${tiers.chunks_sealed} chunks sealed`)
    }
    if (o.out) writeFileSync(o.out, JSON.stringify({ model: config.name, device: gpu.adapterName, tokens: ids.length, policy: o.policy, gpu_kv_budget: o.gpuKvBudget, host_kv_budget: o.hostKvBudget, wall_ms: wall, cpu_ms: cpuMs, kernel_ms: kernelMs, kernels, tiers, runs }, null, 2))
    model.destroy()
  } finally {
    source.close()
    await releaseGpu()
    await store?.close()
    rmSync(kvDir, { recursive: true, force: true })
  }
}

await main()
