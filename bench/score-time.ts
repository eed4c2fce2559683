// GPU time of one layer's scoring and selection (tiered-bench --score-time), apart from the
// rest of a step: the plain pass over every chunk's abstract against the grouped choice (the
// groups' pass, then the kept groups' chunks listed with their slots), on random abstracts at
// the model's shapes, and the host round trip of a small read-back, which the grouped choice
// pays once more per layer. Each figure is the mean of `reps` submits, each waited for.
import { tieredPipelineKeys } from "../engine/kv/tiered/select.ts"
import { groupsKept } from "../engine/kv/tiered/abstract-layout.ts"
import { Selector } from "../engine/kv/tiered/select.ts"
import type { TieredPolicy } from "../engine/kv/tiered/index.ts"
import { storageBuffer } from "../engine/buffers.ts"
import { gpuFiller } from "../engine/gpu-fill.ts"
import type { Gpu } from "../engine/gpu.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { lru } from "../kv/eviction.ts"
import type { ModelConfig } from "../models/types.ts"

export interface ScoreTimes {
  readonly chunks: number
  readonly groups: number
  readonly kept: number
  /** ms per layer on the GPU: the plain pass; the grouped choice's groups pass and its candidates pass. */
  readonly plain_ms: number
  readonly groups_ms: number
  readonly candidates_ms: number
  /** ms of a host round trip (submit, map 8 bytes back). */
  readonly round_trip_ms: number
}

export const scoreTimes = async (gpu: Gpu, c: ModelConfig, o: { context: number; chunkTokens: number; budgetFraction: number; groupChunks: number; reps: number }): Promise<ScoreTimes> => {
  const device = gpu.device
  const pipelines = new Pipelines(gpu)
  for (const key of Object.values(tieredPipelineKeys(c))) await pipelines.get(key)
  const n = Math.floor(o.context / o.chunkTokens)
  const size = o.groupChunks
  const groups = Math.ceil(n / size)
  const ab = c.numKvHeads * (c.headDim / 2) * 4
  const fill = await gpuFiller(gpu, pipelines)
  const random = (label: string, bytes: number, seed: number) => {
    const b = storageBuffer(device, label, bytes)
    fill(b, 0, bytes / 2, { kind: "random", seed, amplitude: 1 })
    return b
  }
  const fine = [{ amin: random("score-time min", n * ab, 1), amax: random("score-time max", n * ab, 2) }]
  const grouped = [{ amin: random("score-time group min", groups * ab, 3), amax: random("score-time group max", groups * ab, 4) }]
  const q = storageBuffer(device, "score-time q (H, D) f32", c.numHeads * c.headDim * 4)
  device.queue.writeBuffer(q, 0, Float32Array.from({ length: c.numHeads * c.headDim }, (_, i) => Math.sin(i * 12.9898) % 1))
  const layout = { resident: "all" as const, abstractBytes: ab, slots: n, groupChunks: size, groups, sealSlots: 1, bytes: 0 }
  const selector = new Selector(device, pipelines, c, { fine, groups: grouped, layout }, q, n, 16)
  const policy: TieredPolicy = { mode: "leoam", chunkTokens: o.chunkTokens, budgetFraction: o.budgetFraction, sinkTokens: 32, recentTokens: 64, gpuEviction: lru, hostEviction: lru }
  const L = { starts: Array.from({ length: n }, (_, i) => i * o.chunkTokens), sizes: Array.from({ length: n }, () => o.chunkTokens), sealed: n * o.chunkTokens }
  const plan = selector.plan(L, L.sealed, policy, o.chunkTokens)
  const kept = groupsKept(plan.K, size)
  const mids = Array.from({ length: kept * size }, (_, i) => plan.S + i).filter((ch) => ch < n - plan.R)
  const slots = Uint32Array.from(mids)
  const time = async (encode: (pass: GPUComputePassEncoder) => void): Promise<number> => {
    const run = async () => {
      const encoder = device.createCommandEncoder()
      const pass = encoder.beginComputePass()
      encode(pass)
      pass.end()
      device.queue.submit([encoder.finish()])
      await device.queue.onSubmittedWorkDone()
    }
    await run()
    const t0 = performance.now()
    for (let i = 0; i < o.reps; i++) await run()
    return (performance.now() - t0) / o.reps
  }
  const plain_ms = await time((pass) => selector.encode(0, pass, L, L.sealed, policy, o.chunkTokens))
  const groups_ms = await time((pass) => selector.encodeGroups(0, pass, Math.floor(plan.S / size), Math.ceil((n - plan.R) / size), kept))
  const candidates_ms = await time((pass) => selector.encodeCandidates(0, pass, plan, mids, slots))
  const read = device.createBuffer({ label: "score-time read-back", size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  const t0 = performance.now()
  for (let i = 0; i < o.reps; i++) {
    const encoder = device.createCommandEncoder()
    encoder.copyBufferToBuffer(selector.selection, 0, read, 0, 8)
    device.queue.submit([encoder.finish()])
    await read.mapAsync(GPUMapMode.READ, 0, 8)
    read.unmap()
  }
  const round_trip_ms = (performance.now() - t0) / o.reps
  selector.destroy()
  for (const b of [...fine, ...grouped]) (b.amin.destroy(), b.amax.destroy())
  for (const b of [q, read]) b.destroy()
  return { chunks: n, groups, kept, plain_ms, groups_ms, candidates_ms, round_trip_ms }
}
