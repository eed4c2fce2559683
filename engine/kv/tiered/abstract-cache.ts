// The chunk abstracts' GPU copy (issue 13 §4), laid out by abstract-layout.ts and counted in
// the GPU budget. Seals compute abstracts into a scratch (read back from there for LMDB, their
// source of truth), then copy each into its slot and fold it into its group. `all`: slot =
// chunk; `budgeted`: a slot map per layer (kv/gpu-slots.ts) evicted by the policy's GPU eviction
// like chunks, and a step's candidates are made resident from LMDB (slotsOf). Group abstracts
// are always resident. TieredKv owns this cache; only seals, slotsOf, adopt, drop and clear
// change it. A truncated group keeps its wider min/max: still a bound, only a looser one.
import { GpuSlots, pinKey } from "../../../kv/gpu-slots.ts"
import type { EvictionPolicy } from "../../../kv/eviction.ts"
import type { TierIo } from "../../../kv/tier-io.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { f16ToF32 } from "../../../models/half.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import type { AbstractLayout } from "./abstract-layout.ts"
import type { FreshChunk } from "./chunks.ts"
import { tieredPipelineKeys } from "./select.ts"

/** Min then max abstracts: (slots, KV, D/2) f16 pairs each. */
export interface AbstractBuffers {
  readonly amin: GPUBuffer
  readonly amax: GPUBuffer
}

/** A chunk being sealed and the place of its abstract in the seal's scratch. */
export interface SealJob {
  readonly f: FreshChunk
  readonly at: number
}

export class AbstractCache {
  /** Per layer: the fine abstracts, (slots, KV, D/2); slot = chunk when all are resident. */
  readonly fine: ReadonlyArray<AbstractBuffers>
  /** Per layer: the group abstracts, (groups, KV, D/2); none without groups. */
  readonly groups: ReadonlyArray<AbstractBuffers> | undefined
  /** A seal's abstracts, (sealSlots, KV, D/2): what the abstract kernel writes and the read-back reads. */
  readonly seal: AbstractBuffers
  /** Budgeted: per layer, which chunk's abstract each slot holds. */
  private readonly maps: GpuSlots[] | undefined
  private readonly fold: { readonly uniform: Uniform; readonly jobs: GPUBuffer[]; readonly dispatches: Dispatch[] } | undefined
  private tick = 0
  /** Abstracts uploaded from LMDB into the GPU (a counter for the stats). */
  fetched = 0
  /** Budgeted slots are evicted as the GPU chunk cache is (set at each policy change). */
  eviction: EvictionPolicy

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    readonly layout: AbstractLayout,
    private readonly io: TierIo,
    eviction: EvictionPolicy,
  ) {
    const c = config
    this.eviction = eviction
    const ab = layout.abstractBytes
    const pair = (label: string, n: number): AbstractBuffers => ({
      amin: storageBuffer(device, `${label} abstract min (${n}, KV, D/2) f16`, Math.max(4, n * ab)),
      amax: storageBuffer(device, `${label} abstract max (${n}, KV, D/2) f16`, Math.max(4, n * ab)),
    })
    this.fine = Array.from({ length: c.numLayers }, (_, l) => pair(`L${l} chunk`, layout.slots))
    this.seal = pair("seal", layout.sealSlots)
    this.maps = layout.resident === "budgeted" ? Array.from({ length: c.numLayers }, () => new GpuSlots(layout.slots, 2 * ab)) : undefined
    if (layout.groupChunks === 0) return
    const groups = Array.from({ length: c.numLayers }, (_, l) => pair(`L${l} group`, layout.groups))
    this.groups = groups
    const uniform = new Uniform(device, "abstract fold", "uu")
    uniform.set(c.numKvHeads, c.headDim)
    const jobs = groups.map((_, l) => storageBuffer(device, `L${l} abstract fold jobs (jobs) vec4<u32>`, layout.sealSlots * 16))
    const pipeline = pipelines.now(tieredPipelineKeys(c).abstractFold)
    const dispatches = groups.map((g, l) => ({
      ...dispatchOf(device, pipeline, [[0, uniform.buffer], [1, this.seal.amin], [2, this.seal.amax], [3, jobs[l]], [4, g.amin], [5, g.amax]], 0),
      y: c.numKvHeads,
    }))
    this.fold = { uniform, jobs, dispatches }
  }

  /** GPU bytes of the abstracts (what the layout counted in the budget). */
  get gpuBytes(): number {
    return this.layout.bytes
  }

  /** Fine abstracts on the GPU now (all layers): every sealed one, or what the budgeted slots hold. */
  resident(sealed: number): number {
    return this.maps ? this.maps.reduce((n, m) => n + m.resident, 0) : sealed
  }

  /**
   * After a seal's abstract pass (in the same encoder): copies each job's abstract from the
   * scratch into its slot (budgeted: admitted, evicting by the eviction policy) and folds it into its group.
   */
  encodeSealed(encoder: GPUCommandEncoder, jobs: ReadonlyArray<SealJob>): void {
    const ab = this.layout.abstractBytes
    const none = new Set<string>()
    // Runs of consecutive scratch places going to consecutive slots of one layer: one copy each.
    let run: { l: number; at: number; slot: number; n: number } | undefined
    const flush = () => {
      if (!run) return
      for (const k of ["amin", "amax"] as const) encoder.copyBufferToBuffer(this.seal[k], run.at * ab, this.fine[run.l][k], run.slot * ab, run.n * ab)
      run = undefined
    }
    for (const { f, at } of jobs) {
      const slot = this.maps ? this.maps[f.layer].take(f.chunk, this.eviction, none, ++this.tick) : f.chunk
      if (slot === undefined) continue
      if (run && run.l === f.layer && run.at + run.n === at && run.slot + run.n === slot) run.n++
      else (flush(), (run = { l: f.layer, at, slot, n: 1 }))
    }
    flush()
    if (this.fold) this.encodeFold(encoder, jobs)
  }

  /** One fold job per group a seal touches: its chunks lie at consecutive scratch places. */
  private encodeFold(encoder: GPUCommandEncoder, jobs: ReadonlyArray<SealJob>): void {
    const fold = this.fold!
    const n = this.layout.groupChunks
    const byLayer = new Map<number, number[]>()
    for (const { f, at } of jobs) {
      const list = byLayer.get(f.layer) ?? []
      const g = Math.floor(f.chunk / n)
      const last = list.length - 4
      if (last >= 0 && list[last] === g && list[last + 1] + list[last + 2] === at) list[last + 2]++
      else list.push(g, at, 1, f.chunk % n === 0 ? 1 : 0)
      byLayer.set(f.layer, list)
    }
    const pass = encoder.beginComputePass()
    for (const [l, list] of byLayer) {
      this.device.queue.writeBuffer(fold.jobs[l], 0, Uint32Array.from(list))
      const d = fold.dispatches[l]
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(list.length / 4, d.y)
    }
    pass.end()
  }

  /**
   * The abstract slots of layer l's `chunks`, all resident together once this returns:
   * budgeted, misses take slots (evicting others by the eviction policy) and are uploaded
   * from LMDB. At most `layout.slots` chunks (the caller keeps to it).
   */
  slotsOf(l: number, chunks: ReadonlyArray<number>): Uint32Array {
    const out = new Uint32Array(chunks.length)
    const map = this.maps?.[l]
    if (!map) {
      out.set(chunks)
      return out
    }
    if (chunks.length > map.slots) throw new RangeError(`tiered KV: ${chunks.length} abstracts wanted at once; the GPU holds ${map.slots} per layer`)
    const pinned = new Set(chunks.map(pinKey))
    const ab = this.layout.abstractBytes
    const tick = ++this.tick
    chunks.forEach((ch, i) => {
      const e = map.get(ch)
      if (e) {
        map.touch(ch, tick)
        out[i] = e.slot
        return
      }
      const slot = map.take(ch, this.eviction, pinned, tick)!
      const bytes = this.io.abstractOf(l, ch)
      this.device.queue.writeBuffer(this.fine[l].amin, slot * ab, bytes, 0, ab)
      this.device.queue.writeBuffer(this.fine[l].amax, slot * ab, bytes, ab, ab)
      this.fetched++
      out[i] = slot
    })
    return out
  }

  /**
   * Resumes layer l from its stored abstracts ((chunks, KV, D/2) min, then max): all of them
   * onto the GPU when all are resident (budgeted: none, fetched when scored), and the groups
   * folded on the host.
   */
  adopt(l: number, amin: Uint8Array, amax: Uint8Array): void {
    if (amin.length === 0) return
    if (!this.maps) {
      this.device.queue.writeBuffer(this.fine[l].amin, 0, amin)
      this.device.queue.writeBuffer(this.fine[l].amax, 0, amax)
    }
    if (!this.groups) return
    const n = this.layout.groupChunks
    const words = this.layout.abstractBytes / 2
    const chunks = amin.length / this.layout.abstractBytes
    const [lo, hi] = [new Uint16Array(amin.buffer, amin.byteOffset, amin.length / 2), new Uint16Array(amax.buffer, amax.byteOffset, amax.length / 2)]
    const glo = new Uint16Array(Math.ceil(chunks / n) * words)
    const ghi = new Uint16Array(glo.length)
    for (let ch = 0; ch < chunks; ch++) {
      const g = Math.floor(ch / n) * words
      for (let i = 0; i < words; i++) {
        const [a, b] = [lo[ch * words + i], hi[ch * words + i]]
        if (ch % n === 0 || f16ToF32(a) < f16ToF32(glo[g + i])) glo[g + i] = a
        if (ch % n === 0 || f16ToF32(b) > f16ToF32(ghi[g + i])) ghi[g + i] = b
      }
    }
    this.device.queue.writeBuffer(this.groups[l].amin, 0, glo)
    this.device.queue.writeBuffer(this.groups[l].amax, 0, ghi)
  }

  /** Chunk ch of layer l left the sequence (truncate, roll-back): its slot is free. */
  drop(l: number, ch: number): void {
    const map = this.maps?.[l]
    if (map?.get(ch)) map.drop(ch)
  }

  clear(): void {
    for (const m of this.maps ?? []) m.clear()
  }

  destroy(): void {
    for (const b of [...this.fine, ...(this.groups ?? []), this.seal]) (b.amin.destroy(), b.amax.destroy())
    for (const j of this.fold?.jobs ?? []) j.destroy()
    this.fold?.uniform.buffer.destroy()
  }
}
