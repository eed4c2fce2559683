// Sealing: once a pass has written the tokens that complete chunks, the GPU computes
// their min/max abstracts, copies them into the GPU chunk cache where admitted, and reads
// them (with their abstracts) back, in staging-sized groups, to be written through to the
// disk and host tiers (TierIo). Owns the abstract dispatches, the seal jobs, the in-pool
// copy's scratch and the read-back ring. A reset bumps the generation: read-backs of an
// earlier sequence still in flight then store nothing.
import type { KvBits } from "../../../kv/quant.ts"
import type { SealedChunk, TierIo } from "../../../kv/tier-io.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import { ReadbackRing } from "../../staging.ts"
import type { ChunkTables, FreshChunk } from "./chunks.ts"
import { tieredPipelineKeys } from "./select.ts"
import type { TierCounters } from "./stats.ts"

type Copy = { src: GPUBuffer; srcOffset: number; size: number }

export class Sealer {
  readonly readback: ReadbackRing
  /** (slotBlocks, KV, BS, D) f16: a buffer cannot be both source and destination of one copy. */
  readonly scratch: GPUBuffer
  /** Per layer: the seal jobs of its abstract dispatch, (chunks) vec4<u32> (tail block, tokens, chunk, 0). */
  private readonly jobs: GPUBuffer[]
  private readonly uAbstract: Uniform
  private readonly dispatches: Dispatch[]
  private pending: Array<Promise<void>> = []
  private generation = 0
  /** Bytes of one chunk's min (or max) abstract: (KV, D/2) f16 pairs as f32 words. */
  private readonly abstractBytes: number

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>,
    private readonly abstracts: ReadonlyArray<{ readonly amin: GPUBuffer; readonly amax: GPUBuffer }>,
    private readonly tables: ChunkTables,
    private readonly io: TierIo,
    ring: { readonly slotBytes: number; readonly slots: number },
    slotBlocks: number,
  ) {
    const c = config
    this.abstractBytes = c.numKvHeads * (c.headDim / 2) * 4
    this.readback = new ReadbackRing(device, { slotBytes: ring.slotBytes, slots: ring.slots, label: "kv seal read-back" })
    this.scratch = storageBuffer(device, "seal scratch (slotBlocks, KV, BS, D) f16", slotBlocks * tables.blockBytes)
    // A seal covers at most what the tail holds: one job per chunk, chunks of >= one block.
    this.jobs = pools.map((_, l) => storageBuffer(device, `L${l} seal jobs (chunks) vec4<u32>`, (tables.tailBlocks + 1) * 16))
    this.uAbstract = new Uniform(device, "tier abstract", "uuuu")
    this.uAbstract.set(c.numKvHeads, tables.blockTokens, c.headDim, tables.tailBlocks)
    const key = tieredPipelineKeys(c).abstract
    this.dispatches = pools.map((pool, l) => ({
      ...dispatchOf(device, pipelines.now(key), [[0, this.uAbstract.buffer], [1, pool.k], [2, this.jobs[l]], [3, abstracts[l].amin], [4, abstracts[l].amax]], 0),
      y: c.numKvHeads,
    }))
  }

  /**
   * Submits the abstracts of the `fresh` chunks and, for each that `admit` gives a cache slot
   * (its first block in the pool), its copy there; then starts reading them back to store
   * them through `io`. Call once all layers have written those tokens.
   */
  seal(fresh: ReadonlyArray<FreshChunk>, admit: (f: FreshChunk) => number | undefined, counters: TierCounters, bitsOf: (f: FreshChunk, abstract: Uint8Array) => KvBits = () => 16): void {
    const encoder = this.device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    for (let l = 0; l < this.pools.length; l++) {
      const mine = fresh.filter((f) => f.layer === l)
      if (mine.length === 0) continue
      const jobs = new Uint32Array(mine.length * 4)
      mine.forEach((f, i) => jobs.set([this.tables.tailBlock(Math.floor(f.start / this.tables.blockTokens)), f.tokens, f.chunk, 0], i * 4))
      this.device.queue.writeBuffer(this.jobs[l], 0, jobs)
      const d = this.dispatches[l]
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(mine.length, this.config.numKvHeads)
    }
    pass.end()
    const ab = this.abstractBytes
    const blockBytes = this.tables.blockBytes
    const groups: Array<{ parts: FreshChunk[]; copies: Copy[]; bytes: number }> = []
    for (const f of fresh) {
      const pool = this.pools[f.layer]
      const runs = this.tables.tailRuns(f.start, f.tokens)
      const copies: Copy[] = []
      for (const buf of [pool.k, pool.v]) for (const r of runs) copies.push({ src: buf, srcOffset: r.block * blockBytes, size: r.blocks * blockBytes })
      copies.push(
        { src: this.abstracts[f.layer].amin, srcOffset: f.chunk * ab, size: ab },
        { src: this.abstracts[f.layer].amax, srcOffset: f.chunk * ab, size: ab },
      )
      const bytes = this.tables.chunkBytes(f.layer, f.chunk) + 2 * ab
      // Each read fits one staging buffer, so its sink sees all of it at once.
      const g = groups[groups.length - 1]
      if (g && g.bytes + bytes <= this.readback.slotBytes) {
        g.parts.push(f)
        g.copies.push(...copies)
        g.bytes += bytes
      } else groups.push({ parts: [f], copies, bytes })
      const block = admit(f)
      if (block === undefined) continue
      for (const buf of [pool.k, pool.v]) {
        let at = block * blockBytes
        for (const r of runs) {
          const size = r.blocks * blockBytes
          encoder.copyBufferToBuffer(buf, r.block * blockBytes, this.scratch, 0, size)
          encoder.copyBufferToBuffer(this.scratch, 0, buf, at, size)
          at += size
        }
      }
    }
    this.device.queue.submit([encoder.finish()])
    counters.chunksSealed += fresh.length
    const generation = this.generation
    for (const g of groups) {
      let stored: Promise<void> = Promise.resolve()
      const read = this.readback.read(g.copies, (view) => {
        // A reset (a new request) since this seal makes its bytes stale: drop them.
        if (generation !== this.generation) return
        stored = this.io.storeSealed(this.sealedOf(g.parts, view, bitsOf)).then((bytes) => {
          counters.diskWritten += bytes
          counters.hostWritten += bytes
        })
        stored.catch(() => undefined) // reported through `pending` once the read-back is done
      })
      this.pending.push(read.then(() => stored))
    }
  }

  /** The chunks of one read-back: each one's K and V, then its abstracts, back to back. */
  private sealedOf(parts: ReadonlyArray<FreshChunk>, view: Uint8Array, bitsOf: (f: FreshChunk, abstract: Uint8Array) => KvBits): SealedChunk[] {
    const ab = this.abstractBytes
    let at = 0
    return parts.map((f) => {
      const { layer, chunk, tokens } = f
      const kv = this.tables.chunkBytes(layer, chunk)
      const abstract = view.slice(at + kv, at + kv + 2 * ab)
      const sealed = { layer, chunk, tokens, kv: view.subarray(at, at + kv), abstract, bits: bitsOf(f, abstract) }
      at += kv + 2 * ab
      return sealed
    })
  }

  /** Waits for the host and disk copies of sealed chunks; adds the wait to `counters.sealMs`. */
  async settle(counters: TierCounters): Promise<void> {
    if (this.pending.length === 0) return
    const pending = this.pending
    this.pending = []
    const t0 = performance.now()
    try {
      await Promise.all(pending)
    } finally {
      counters.sealMs += performance.now() - t0
    }
  }

  /** Forgets seals in flight (a new sequence): their read-backs store nothing. */
  reset(): void {
    this.generation++
    for (const p of this.pending) p.catch(() => undefined) // a failed request's seals: already reported or stale
    this.pending = []
  }

  destroy(): void {
    for (const b of [...this.jobs, this.scratch]) b.destroy()
    this.readback.destroy()
  }
}
