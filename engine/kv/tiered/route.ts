// The pipelined step's GPU side (issue 13 §1): a GPU copy of every layer's slot map (chunk ->
// the attention entry of its cache slot's first block: its pool block, or in decode's
// compressed slots slot * slotBlocks with the chunk's bits in the top byte, as attn_decode's
// QUANT variant reads them), kept in step with the host's GpuSlots through their observer, and the route pass (kernels/route.wgsl) that turns a layer's choice into the
// attention entries of its resident chunks plus a miss count, with no host in between.
// The host reads the choice back later, off the layer's critical path (ChoiceReads).
// Only the cache's slot changes (through `observe`) and `sync` write the map.
import type { CacheObserver } from "./apply.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import { tieredPipelineKeys } from "./select.ts"
import type { ModelConfig } from "../../../models/types.ts"
import type { ChunkTables } from "./chunks.ts"

const NONE = 0xffffffff

export class Router {
  /** (layers, maxChunks) u32: the entry of the chunk's cache slot's first block (bits << 24 | block), NONE when not resident. */
  private readonly slotMap: GPUBuffer
  /** (4) u32: [0] the misses of the last routed choice, [1] its length (route.wgsl), [2] chunks it scored (ChoiceReads.scored). */
  readonly misses: GPUBuffer
  private readonly mirror: Uint32Array
  /** Per layer, the range [lo, hi) of the mirror not yet written to the GPU (lo >= hi: none). */
  private readonly dirty: Array<{ lo: number; hi: number }>
  private readonly u: Uniform
  private dispatch: Dispatch | undefined
  /** The choices of pipelined layers on their way back (record after the route, map after the submit). */
  readonly reads: ChoiceReads
  /** Per layer: how many of its first chunks are known to be whole slots (what the route pass assumes). */
  private readonly wholeChunks: number[]

  constructor(
    private readonly device: GPUDevice,
    private readonly pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly maxChunks: number,
    /** The cache's chunk tables and geometry. */
    private readonly g: { readonly tables: ChunkTables; readonly slotTokens: number; readonly slotBlocks: number; readonly tailBlocks: number; readonly cacheSlots: number; readonly scored: (chunks: number) => void },
  ) {
    const layers = config.numLayers
    // An entry's block takes the low 24 bits of a map word, the bits of a compressed slot the top 8.
    if (g.tailBlocks + g.cacheSlots * g.slotBlocks >= 2 ** 24) throw new RangeError(`tiered KV: ${g.cacheSlots} slots of ${g.slotBlocks} blocks exceed the route's 24-bit blocks`)
    this.slotMap = storageBuffer(device, "tier slot map (layers, chunks) u32", layers * maxChunks * 4)
    this.misses = storageBuffer(device, "tier route misses (4) u32", 16)
    this.mirror = new Uint32Array(layers * maxChunks).fill(NONE)
    this.dirty = Array.from({ length: layers }, () => ({ lo: 0, hi: maxChunks }))
    this.u = new Uniform(device, "tier route", "uuuuuuuu")
    this.reads = new ChoiceReads(device, maxChunks, g.scored)
    this.wholeChunks = Array.from({ length: layers }, () => 0)
  }

  /**
   * Whether layer l's choice of `count` chunks can be routed: every sealed chunk is a whole
   * slot (the route pass gives each hit slotBlocks full blocks; adaptive chunks are not) and
   * all of them could be resident at once (else misses are certain).
   */
  canRoute(l: number, count: number): boolean {
    const L = this.g.tables.layers[l]
    let n = this.wholeChunks[l]
    if (n > L.sizes.length) n = 0 // truncated or reset since
    while (n < L.sizes.length && L.sizes[n] === this.g.slotTokens) n++
    this.wholeChunks[l] = n
    return n === L.sizes.length && count <= this.g.cacheSlots
  }

  /** Entries the route pass writes for `count` chunks when all of them are resident (chunks, then the tail). */
  routedEntries(l: number, count: number): number {
    const t = this.g.tables
    return count * this.g.slotBlocks + Math.ceil((t.tokens - t.layers[l].sealed) / t.blockTokens)
  }

  /** Binds the buffers the route pass reads and writes (the cache's, built after the map it observes); `chosen`: the selection's length. */
  bind(buffers: { readonly selection: GPUBuffer; readonly chosen: GPUBuffer; readonly entries: GPUBuffer; readonly seqs: GPUBuffer }): void {
    const key = tieredPipelineKeys(this.config).route
    this.dispatch = dispatchOf(this.device, this.pipelines.now(key), [
      [0, this.u.buffer],
      [1, buffers.selection],
      [2, this.slotMap],
      [3, buffers.entries],
      [4, buffers.seqs],
      [5, this.misses],
      [6, buffers.chosen],
    ])
  }

  /** The observer of layer l's slots, given the entry of a slot's first block (for the chunk it holds). */
  observe(l: number, entryOf: (slot: number, chunk: number) => number): CacheObserver {
    const base = l * this.maxChunks
    const d = this.dirty[l]
    const mark = (chunk: number) => {
      d.lo = Math.min(d.lo, chunk)
      d.hi = Math.max(d.hi, chunk + 1)
    }
    return {
      placed: (chunk, slot) => {
        this.mirror[base + chunk] = entryOf(slot, chunk)
        mark(chunk)
      },
      held: (chunk, slot) => {
        this.mirror[base + chunk] = entryOf(slot, chunk)
        mark(chunk)
      },
      dropped: (chunk) => {
        this.mirror[base + chunk] = NONE
        mark(chunk)
      },
      cleared: () => {
        this.mirror.fill(NONE, base, base + this.maxChunks)
        d.lo = 0
        d.hi = this.maxChunks
      },
    }
  }

  /** Writes layer l's map changes (queue order: before the next submit, which routes with them). */
  sync(l: number): void {
    const d = this.dirty[l]
    if (d.lo >= d.hi) return
    const base = l * this.maxChunks
    this.device.queue.writeBuffer(this.slotMap, (base + d.lo) * 4, this.mirror.buffer, (base + d.lo) * 4, (d.hi - d.lo) * 4)
    d.lo = this.maxChunks
    d.hi = 0
  }

  /**
   * Encodes layer l's route of its `count` chosen chunks (in `selection`, after the select
   * pass; at most `count`, see route.wgsl) into the entries list: resident chunks of
   * slotBlocks full blocks each, then the tail.
   */
  encode(l: number, pass: GPUComputePassEncoder, count: number): void {
    this.sync(l)
    const t = this.g.tables
    this.u.set(count, this.g.slotBlocks, t.blockTokens, l * this.maxChunks, t.layers[l].sealed, t.tokens, this.g.tailBlocks, 0)
    const d = this.dispatch!
    pass.setPipeline(d.pipeline)
    pass.setBindGroup(0, d.bindGroup)
    pass.dispatchWorkgroups(1)
  }

  destroy(): void {
    this.slotMap.destroy()
    this.misses.destroy()
    this.reads.destroy()
    this.u.buffer.destroy()
  }
}

/** The chunks of a choice of `count` copied into `buffer` (vec2<u32> (chunk, _) each), once mapped: the unpipelined layer's wait. */
export const readChoice = async (buffer: GPUBuffer, count: number): Promise<number[]> => {
  await buffer.mapAsync(GPUMapMode.READ, 0, count * 8)
  const view = new Uint32Array(buffer.getMappedRange(0, count * 8))
  const out = Array.from({ length: count }, (_, i) => view[i * 2])
  buffer.unmap()
  return out
}

/** A layer's choice recorded for read-back (its copies encoded; map it after their submit). */
export interface RecordedChoice {
  readonly layer: number
  readonly count: number
  readonly buffer: GPUBuffer
  /** Whether the words after the miss count hold the chunks its grouped choice scored on the GPU. */
  readonly scored: boolean
}

/** A layer's choice on its way back to the host: (count) vec2<u32> (chunk, _), then the route's miss count and the choice's length (at most count). */
export interface ChoiceRead extends RecordedChoice {
  /** Resolves once mapped (rejects only if the device is lost). */
  readonly mapped: Promise<void>
  /** When its copy was submitted (performance.now()), for the wait's share of the timeline. */
  readonly at: number
}

/**
 * MAP_READ buffers for the choices of the layers in flight: one per unverified layer. A
 * buffer comes back after its read (or, for a discarded read, once its map settles).
 */
export class ChoiceReads {
  private readonly free: GPUBuffer[] = []
  private readonly all: GPUBuffer[] = []
  private readonly bytes: number
  private draining: Array<Promise<void>> = []
  /**
   * Set by a grouped choice listed on the GPU at its encode: (1) u32 the chunks it scored,
   * copied with the layer's choice by the next record and counted when read (by `count`).
   */
  scored: GPUBuffer | undefined

  constructor(
    private readonly device: GPUDevice,
    maxChunks: number,
    private readonly count: (chunksScored: number) => void,
  ) {
    this.bytes = maxChunks * 8 + 16
  }

  /** Records the copies of layer l's choice and miss count into a free buffer; map it after the submit. */
  record(encoder: GPUCommandEncoder, l: number, count: number, selection: GPUBuffer, misses: GPUBuffer): RecordedChoice {
    const buffer =
      this.free.pop() ??
      this.device.createBuffer({ label: "tier choice read-back", size: this.bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    if (!this.all.includes(buffer)) this.all.push(buffer)
    if (count > 0) encoder.copyBufferToBuffer(selection, 0, buffer, 0, count * 8)
    encoder.copyBufferToBuffer(misses, 0, buffer, count * 8, 8)
    const scored = this.scored
    this.scored = undefined
    if (scored) encoder.copyBufferToBuffer(scored, 0, buffer, count * 8 + 8, 4)
    return { layer: l, count, buffer, scored: scored !== undefined }
  }

  /** Starts mapping a recorded read (after its submit). */
  map(r: RecordedChoice): ChoiceRead {
    const mapped = r.buffer.mapAsync(GPUMapMode.READ, 0, r.count * 8 + 12)
    mapped.catch(() => undefined)
    return { ...r, mapped, at: performance.now() }
  }

  /** The chosen chunks and the GPU's miss count of a mapped read; gives its buffer back. */
  take(r: ChoiceRead): { chosen: number[]; misses: number } {
    const view = this.view(r)
    const chosen = new Array<number>(Math.min(r.count, view[r.count * 2 + 1]))
    for (let i = 0; i < chosen.length; i++) chosen[i] = view[i * 2]
    const misses = view[r.count * 2]
    r.buffer.unmap()
    this.free.push(r.buffer)
    return { chosen, misses }
  }

  /** Gives back a read that will not be looked at (a discarded speculation) once its map settles. */
  discard(r: ChoiceRead): void {
    this.draining.push(
      r.mapped.then(
        () => {
          this.view(r) // its scoring was done all the same
          r.buffer.unmap()
          this.free.push(r.buffer)
        },
        () => undefined,
      ),
    )
  }

  /** A mapped read's words; counts the chunks its grouped choice scored. */
  private view(r: ChoiceRead): Uint32Array {
    const view = new Uint32Array(r.buffer.getMappedRange(0, r.count * 8 + 12))
    if (r.scored) this.count(view[r.count * 2 + 2])
    return view
  }

  /** Waits for discarded reads to come back. */
  async settle(): Promise<void> {
    const d = this.draining
    this.draining = []
    await Promise.all(d)
  }

  destroy(): void {
    for (const b of this.all) b.destroy()
  }
}
