// Prefill and decode over the tiered KV cache. The model's prepared dispatches are replayed
// layer by layer, because between a layer's query and its attention the host takes part:
// in decode it reads the chosen chunks back (leoam) and makes them resident; in both it
// stages misses through the upload ring and runs attention in windows when the chosen
// chunks do not fit in the GPU cache at once. Every uniform or list written for a window
// is written after the submit of the work that used the previous value (queue order).
import type { ModelConfig } from "../models/types.ts"
import { dispatchOf, type Dispatch, encodeAll, storageBuffer, Uniform } from "./buffers.ts"
import type { KvPool } from "./kv-pool.ts"
import type { allocateActivations, createUniforms, pipelineKeys } from "./model-resources.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"
import { windowedPrefillKey } from "./model-resources.ts"
import { TIER_PARTIALS, type TieredKv, type TierStats } from "./tiered.ts"

export interface TieredParts {
  readonly decode: {
    readonly embed: Dispatch
    readonly layers: ReadonlyArray<{ readonly pre: ReadonlyArray<Dispatch>; readonly combine: Dispatch; readonly post: ReadonlyArray<Dispatch> }>
    readonly head: Dispatch
  }
  readonly prefill: {
    readonly embed: Dispatch
    readonly layers: ReadonlyArray<{ readonly pre: ReadonlyArray<Dispatch>; readonly post: ReadonlyArray<Dispatch> }>
    readonly headLast: Dispatch
  }
  /** Prefill dispatches with one workgroup row per token (y = m), and the GEMMs (y = m / 64). */
  readonly rowDispatches: ReadonlyArray<Dispatch>
  readonly gemms: ReadonlyArray<{ readonly d: Dispatch }>
}

/** Timestamp queries per decode step (two per attention window; later windows go untimed). */
const MAX_QUERIES = 512

/** Rows of prefill attention per workgroup (both kernels). */
const PREFILL_ROWS = 32
const FIRST = 1
const LAST = 2

export class TieredSteps {
  private readonly attnDecode: Dispatch[] = []
  private readonly attnPrefill: Dispatch[] = []
  private readonly uAttn: Uniform
  private readonly uWindow: Uniform
  private readonly state: GPUBuffer
  private readonly selRead: GPUBuffer
  private readonly slotHost: Uint32Array
  private steps = 0
  /** GPU time of decode attention, where the device has timestamp queries. */
  private readonly timing: { readonly querySet: GPUQuerySet; readonly resolve: GPUBuffer; readonly read: GPUBuffer } | undefined
  private queries = 0
  private pendingTiming: Promise<void> | undefined

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly tiered: TieredKv,
    private readonly kv: KvPool,
    private readonly act: ReturnType<typeof allocateActivations>,
    private readonly u: ReturnType<typeof createUniforms>,
    keys: ReturnType<typeof pipelineKeys>,
    private readonly parts: TieredParts,
    private readonly prefillChunk: number,
  ) {
    const c = config
    this.uAttn = new Uniform(device, "tier attn decode", "uuuuufuu")
    this.uWindow = new Uniform(device, "tier attn prefill window", "uuuuufuuuuuu")
    this.state = storageBuffer(device, "prefill attention state (chunk, H, D + 2) f32", prefillChunk * c.numHeads * (c.headDim + 2) * 4)
    this.selRead = device.createBuffer({ label: "selected chunks read-back", size: Math.max(16, tiered.maxChunks * 8), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    this.slotHost = new Uint32Array(prefillChunk)
    this.timing = device.features.has("timestamp-query")
      ? {
          querySet: device.createQuerySet({ label: "tier attention timestamps", type: "timestamp", count: MAX_QUERIES }),
          resolve: device.createBuffer({ label: "tier timestamps resolved", size: MAX_QUERIES * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
          read: device.createBuffer({ label: "tier timestamps read-back", size: MAX_QUERIES * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
        }
      : undefined
    const a = act
    const windowKey = windowedPrefillKey(keys.attnPrefill)
    kv.layers.forEach((kvl, l) => {
      const mk = (key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>, y: number): Dispatch => dispatchOf(device, pipelines.now(key), entries, 1, y)
      this.attnDecode.push(
        mk(keys.attnDecode, [[0, this.uAttn.buffer], [1, a.q], [2, kvl.k], [3, kvl.v], [4, tiered.entries], [5, tiered.seqs], [6, a.partO], [7, a.partML]], c.numKvHeads),
      )
      this.attnPrefill.push(mk(windowKey, [[0, this.uWindow.buffer], [1, a.q], [2, kvl.k], [3, kvl.v], [4, kv.table], [5, a.attn], [6, this.state]], c.numKvHeads))
    })
  }

  /** Runs the prompt through the model chunk by chunk, attending the tiered history in windows. */
  async prefill(ids: ReadonlyArray<number>, writeRope: (pos0: number, m: number) => void, onProgress?: (done: number, total: number) => void): Promise<void> {
    const c = this.config
    const t = this.tiered
    const u = this.u
    const G = c.numHeads / c.numKvHeads
    for (let start = 0, m = 0; start < ids.length; start += m) {
      await t.settle()
      // A pass fills what the tail has room for, so passes end on chunk boundaries.
      m = Math.min(t.appendRoom, this.prefillChunk, ids.length - start)
      const pos0 = t.length
      this.device.queue.writeBuffer(this.act.promptIds, 0, Uint32Array.from(ids.slice(start, start + m)))
      writeRope(pos0, m)
      for (let i = 0; i < m; i++) this.slotHost[i] = t.append()
      this.device.queue.writeBuffer(this.act.slot, 0, this.slotHost.buffer, 0, m * 4)
      u.embedPrefill.set(c.hiddenSize, 0, c.vocabSize, m, 0)
      u.ropePrefill.set(m, c.numHeads, c.numKvHeads, c.headDim, t.blockTokens)
      u.setGemmRows(m)
      for (const r of this.parts.rowDispatches) r.y = m
      for (const g of this.parts.gemms) g.d.y = Math.ceil(m / 64)
      const groups = Math.ceil((m * G) / PREFILL_ROWS)
      let encoder = this.device.createCommandEncoder()
      let pass = encoder.beginComputePass()
      encodeAll(pass, [this.parts.prefill.embed])
      for (let l = 0; l < c.numLayers; l++) {
        encodeAll(pass, this.parts.prefill.layers[l].pre)
        pass.end()
        this.device.queue.submit([encoder.finish()])
        await t.prefillLayer(l, this.kv.table, (k0, k1, first, last) => {
          this.uWindow.set(m, c.numHeads, c.numKvHeads, t.blockTokens, pos0, 1 / Math.sqrt(c.headDim), k0, k1, (first ? FIRST : 0) | (last ? LAST : 0))
          const d = this.attnPrefill[l]
          d.x = groups
          const e = this.device.createCommandEncoder()
          const p = e.beginComputePass()
          encodeAll(p, [d])
          p.end()
          this.device.queue.submit([e.finish()])
        })
        encoder = this.device.createCommandEncoder()
        pass = encoder.beginComputePass()
        encodeAll(pass, this.parts.prefill.layers[l].post)
      }
      pass.end()
      const rowBytes = c.hiddenSize * 4
      encoder.copyBufferToBuffer(this.act.x, (m - 1) * rowBytes, this.act.xlast, 0, rowBytes)
      const head = encoder.beginComputePass()
      encodeAll(head, [this.parts.prefill.headLast])
      head.end()
      this.device.queue.submit([encoder.finish()])
      t.seal()
      if (onProgress) {
        await this.device.queue.onSubmittedWorkDone()
        onProgress(start + m, ids.length)
      }
    }
    await t.settle()
  }

  /**
   * One decode step (the rope row of its position is written): input token tokenIds[inSlot],
   * its KV appended to the tail, attention per layer over the chosen chunks and the tail.
   */
  async decode(inSlot: number, encodeSample: (pass: GPUComputePassEncoder) => void, copyOut?: { src: GPUBuffer; offset: number; dst: GPUBuffer }): Promise<void> {
    const c = this.config
    const t = this.tiered
    const u = this.u
    await this.settle()
    this.slotHost[0] = t.append()
    this.device.queue.writeBuffer(this.act.slot, 0, this.slotHost.buffer, 0, 4)
    u.embedDecode.set(c.hiddenSize, 0, c.vocabSize, 1, inSlot)
    const selecting = t.selects()
    let encoder = this.device.createCommandEncoder()
    let pass = encoder.beginComputePass()
    encodeAll(pass, [this.parts.decode.embed])
    const tile = this.kv.tileEntries
    for (let l = 0; l < c.numLayers; l++) {
      const layer = this.parts.decode.layers[l]
      encodeAll(pass, layer.pre)
      let chosen: number[]
      if (selecting) {
        const count = t.encodeSelect(l, pass)
        pass.end()
        if (count > 0) encoder.copyBufferToBuffer(t.selection, 0, this.selRead, 0, count * 8)
        this.device.queue.submit([encoder.finish()])
        const t0 = performance.now()
        chosen = count > 0 ? await this.readChoice(count) : []
        t.countStep(l, chosen, performance.now() - t0)
      } else {
        pass.end()
        this.device.queue.submit([encoder.finish()])
        chosen = t.allChunks(l)
        t.countStep(l, chosen, 0)
      }
      encoder = this.device.createCommandEncoder()
      pass = encoder.beginComputePass()
      let s0 = 0
      const windows = Math.ceil(chosen.length / Math.max(1, t.cacheSlots)) + 1
      const cap = Math.max(1, Math.floor(TIER_PARTIALS / windows))
      await t.attendLayer(l, chosen, (count, last) => {
        const { splits, entriesPerSplit } = t.splitsOf(count, tile, cap)
        if (s0 + splits > TIER_PARTIALS) throw new RangeError(`layer ${l}: attention needs more than ${TIER_PARTIALS} partials`)
        this.uAttn.set(c.numHeads, c.numKvHeads, t.blockTokens, entriesPerSplit, TIER_PARTIALS, 1 / Math.sqrt(c.headDim), 0, s0)
        const d = this.attnDecode[l]
        d.x = splits
        // Attention in a pass of its own, timed on the GPU while query slots last.
        pass.end()
        const timed = this.timing !== undefined && this.queries + 2 <= MAX_QUERIES
        const attn = encoder.beginComputePass(
          timed ? { timestampWrites: { querySet: this.timing!.querySet, beginningOfPassWriteIndex: this.queries, endOfPassWriteIndex: this.queries + 1 } } : {},
        )
        if (timed) this.queries += 2
        encodeAll(attn, [d])
        attn.end()
        s0 += splits
        if (!last) {
          this.device.queue.submit([encoder.finish()])
          encoder = this.device.createCommandEncoder()
        }
        pass = encoder.beginComputePass()
      })
      u.combine.set(c.numHeads, s0, c.headDim, TIER_PARTIALS)
      // The next layer's pre goes into this encoder, which is submitted before that layer
      // writes its own lists and uniforms.
      encodeAll(pass, [layer.combine, ...layer.post])
    }
    encodeAll(pass, [this.parts.decode.head])
    encodeSample(pass)
    pass.end()
    if (copyOut) encoder.copyBufferToBuffer(copyOut.src, copyOut.offset, copyOut.dst, 0, 4)
    const queries = this.queries
    if (this.timing && queries > 0) {
      encoder.resolveQuerySet(this.timing.querySet, 0, queries, this.timing.resolve, 0)
      encoder.copyBufferToBuffer(this.timing.resolve, 0, this.timing.read, 0, queries * 8)
    }
    this.device.queue.submit([encoder.finish()])
    this.queries = 0
    if (this.timing && queries > 0) this.pendingTiming = this.readTiming(this.timing.read, queries)
    this.steps++
    t.seal()
  }

  /** Adds up a step's (begin, end) timestamp pairs into the cache's attention time. */
  private async readTiming(read: GPUBuffer, queries: number): Promise<void> {
    await read.mapAsync(GPUMapMode.READ, 0, queries * 8)
    const stamps = new BigUint64Array(read.getMappedRange(0, queries * 8))
    let ns = 0
    for (let i = 0; i < queries; i += 2) if (stamps[i + 1] > stamps[i]) ns += Number(stamps[i + 1] - stamps[i])
    read.unmap()
    this.tiered.addAttentionMs(ns / 1e6)
  }

  /** Waits for everything a step left in flight: sealed chunks reaching host and disk, timings. */
  async settle(): Promise<void> {
    const timing = this.pendingTiming
    this.pendingTiming = undefined
    await timing
    await this.tiered.settle()
  }

  private async readChoice(count: number): Promise<number[]> {
    await this.selRead.mapAsync(GPUMapMode.READ, 0, count * 8)
    const view = new Uint32Array(this.selRead.getMappedRange(0, count * 8))
    const out = new Array<number>(count)
    for (let i = 0; i < count; i++) out[i] = view[i * 2]
    this.selRead.unmap()
    return out
  }

  stats(): TierStats {
    return this.tiered.stats(this.steps)
  }

  resetStats(): void {
    this.steps = 0
  }

  destroy(): void {
    this.state.destroy()
    this.selRead.destroy()
    this.timing?.querySet.destroy()
    this.timing?.resolve.destroy()
    this.timing?.read.destroy()
  }
}
