// Sealing: once a pass has written the tokens that complete chunks, the GPU computes
// their min/max abstracts, copies them into the GPU chunk cache where admitted, and reads
// them (with their abstracts) back, in staging-sized groups, to be written through to the
// disk and host tiers (TierIo). Under compression the GPU quantizes each group's chunks
// (kernels/quantize.wgsl, kv/quant.ts's layout) into a scratch buffer just before its read-back
// copies, so only compressed bytes cross to the host; under "importance" it produces both
// forms and the choice, which needs the abstract, is made on the host from what came back.
// Owns the abstract and quantize dispatches, the seal jobs, the in-pool copy's scratch, the
// quantized scratch and the read-back ring. A reset bumps the generation: read-backs of an
// earlier sequence still in flight then store nothing.
import { chunkBytesAt, type KvBits, type KvShape } from "../../../kv/quant.ts"
import { type CompressionBits, sealForms } from "../../../kv/quant-policy.ts"
import type { SealedChunk, TierIo } from "../../../kv/tier-io.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import { ReadbackRing } from "../../staging.ts"
import type { ChunkTables, FreshChunk } from "./chunks.ts"
import { quantizeKey, tieredPipelineKeys } from "./select.ts"
import type { TierCounters } from "./stats.ts"

type Copy = { src: GPUBuffer; srcOffset: number; size: number }

/** A seal's read-back group: its chunks, each in `forms` (bits each), then its abstracts. */
interface SealGroup {
  readonly parts: FreshChunk[]
  readonly copies: Copy[]
  /** Per layer, the quantize jobs of this group: (first physical block, tokens, output word, bits). */
  readonly jobs: Map<number, number[]>
  bytes: number
  /** u32 words of the quantized scratch this group uses. */
  words: number
}

export class Sealer {
  readonly readback: ReadbackRing
  /** (slotBlocks, KV, BS, D) f16: a buffer cannot be both source and destination of one copy. */
  readonly scratch: GPUBuffer
  /** (stagingSlotBytes) u32: a read-back group's chunks quantized (kv/quant.ts layout), when compressing. */
  readonly quantized: GPUBuffer | undefined
  /** Per layer: the seal jobs of its abstract dispatch, (chunks) vec4<u32> (tail block, tokens, chunk, 0). */
  private readonly jobs: GPUBuffer[]
  private readonly uAbstract: Uniform
  private readonly dispatches: Dispatch[]
  /** Per layer: the quantize jobs of one group, (2 * (tail blocks + 1)) vec4<u32>, and their dispatch. */
  private readonly quantJobs: GPUBuffer[] = []
  private readonly quantDispatches: Dispatch[] = []
  private readonly uQuant: Uniform | undefined
  private pending: Array<Promise<void>> = []
  private generation = 0
  /** Bytes of one chunk's min (or max) abstract: (KV, D/2) f16 pairs as f32 words. */
  private readonly abstractBytes: number
  private readonly shape: KvShape

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
    /** Whether seals may be compressed (the cache's slots are): then the quantized scratch and dispatches exist. */
    compress: boolean,
  ) {
    const c = config
    this.shape = { kvHeads: c.numKvHeads, blockTokens: tables.blockTokens, headDim: c.headDim }
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
    if (!compress) return
    this.quantized = storageBuffer(device, "seal quantized (staging slot) u32", ring.slotBytes)
    this.uQuant = new Uniform(device, "tier quantize", "uuuu")
    this.uQuant.set(c.numKvHeads, tables.tailBlocks, 0, 0)
    const qkey = quantizeKey(c, tables.blockTokens)
    pools.forEach((pool, l) => {
      this.quantJobs.push(storageBuffer(device, `L${l} quantize jobs (jobs) vec4<u32>`, 2 * (tables.tailBlocks + 1) * 16))
      this.quantDispatches.push({ ...dispatchOf(device, pipelines.now(qkey), [[0, this.uQuant!.buffer], [1, pool.k], [2, pool.v], [3, this.quantJobs[l]], [4, this.quantized!]], 0), y: c.numKvHeads })
    })
  }

  /**
   * Submits the abstracts of the `fresh` chunks and, for each that `admit` gives a cache slot
   * (its first block in the pool), its copy there; then starts reading them back, at the
   * bits of `setting` (quantized on the GPU), to store them through `io`. Under "importance"
   * `bitsOf` picks each chunk's bits from its abstract. Call once all layers have written those tokens.
   */
  seal(
    fresh: ReadonlyArray<FreshChunk>,
    admit: (f: FreshChunk) => number | undefined,
    counters: TierCounters,
    setting: CompressionBits = 16,
    bitsOf: (f: FreshChunk, abstract: Uint8Array) => KvBits = () => 16,
  ): void {
    const forms = sealForms(setting)
    if (this.quantized === undefined && forms.some((b) => b !== 16)) throw new RangeError(`tiered KV: this cache was built without compression and cannot seal at ${setting} bits`)
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
    const blockBytes = this.tables.blockBytes
    const groups = this.groupsOf(fresh, forms)
    for (const f of fresh) {
      const block = admit(f)
      if (block === undefined) continue
      const pool = this.pools[f.layer]
      for (const buf of [pool.k, pool.v]) {
        let at = block * blockBytes
        for (const r of this.tables.tailRuns(f.start, f.tokens)) {
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
      const sink = (view: Uint8Array) => {
        // A reset (a new request) since this seal makes its bytes stale: drop them.
        if (generation !== this.generation) return
        stored = this.io.storeSealed(this.sealedOf(g.parts, view, forms, bitsOf)).then((bytes) => {
          counters.diskWritten += bytes
          counters.hostWritten += bytes
        })
        stored.catch(() => undefined) // reported through `pending` once the read-back is done
      }
      const read = this.readback.read(g.copies, sink, g.words > 0 ? (e) => this.encodeQuantize(e, g) : undefined)
      this.pending.push(read.then(() => stored))
    }
  }

  /** The read-back groups of a seal: chunks in order, as many as fit one staging buffer each. */
  private groupsOf(fresh: ReadonlyArray<FreshChunk>, forms: ReadonlyArray<KvBits>): SealGroup[] {
    const ab = this.abstractBytes
    const blockBytes = this.tables.blockBytes
    const groups: SealGroup[] = []
    for (const f of fresh) {
      const pool = this.pools[f.layer]
      const bytes = forms.reduce((a, bits) => a + chunkBytesAt(this.shape, f.tokens, bits), 0) + 2 * ab
      // Each read fits one staging buffer, so its sink sees all of it at once.
      let g = groups[groups.length - 1]
      if (!g || g.bytes + bytes > this.readback.slotBytes) {
        g = { parts: [], copies: [], jobs: new Map(), bytes: 0, words: 0 }
        groups.push(g)
      }
      for (const bits of forms) {
        if (bits === 16) {
          for (const buf of [pool.k, pool.v]) for (const r of this.tables.tailRuns(f.start, f.tokens)) g.copies.push({ src: buf, srcOffset: r.block * blockBytes, size: r.blocks * blockBytes })
          continue
        }
        const size = chunkBytesAt(this.shape, f.tokens, bits)
        const jobs = g.jobs.get(f.layer) ?? []
        jobs.push(this.tables.tailBlock(Math.floor(f.start / this.tables.blockTokens)), f.tokens, g.words, bits)
        g.jobs.set(f.layer, jobs)
        g.copies.push({ src: this.quantized!, srcOffset: g.words * 4, size })
        g.words += size / 4
      }
      g.copies.push({ src: this.abstracts[f.layer].amin, srcOffset: f.chunk * ab, size: ab }, { src: this.abstracts[f.layer].amax, srcOffset: f.chunk * ab, size: ab })
      g.parts.push(f)
      g.bytes += bytes
    }
    return groups
  }

  /** Quantizes a group's chunks into the scratch, in the encoder of its read-back copies (queue order keeps groups apart). */
  private encodeQuantize(encoder: GPUCommandEncoder, g: SealGroup): void {
    const pass = encoder.beginComputePass()
    for (const [l, jobs] of g.jobs) {
      this.device.queue.writeBuffer(this.quantJobs[l], 0, Uint32Array.from(jobs))
      const d = this.quantDispatches[l]
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(jobs.length / 4, this.config.numKvHeads)
    }
    pass.end()
  }

  /** The chunks of one read-back: each one's forms, then its abstracts, back to back; each stored at its chosen bits. */
  private sealedOf(parts: ReadonlyArray<FreshChunk>, view: Uint8Array, forms: ReadonlyArray<KvBits>, bitsOf: (f: FreshChunk, abstract: Uint8Array) => KvBits): SealedChunk[] {
    const ab = this.abstractBytes
    let at = 0
    return parts.map((f) => {
      const { layer, chunk, tokens } = f
      const at0 = at
      const formAt = forms.map((bits) => {
        const size = chunkBytesAt(this.shape, tokens, bits)
        const form = { bits, at, size }
        at += size
        return form
      })
      const abstract = view.slice(at, at + 2 * ab)
      at += 2 * ab
      const bits = bitsOf(f, abstract)
      const form = formAt.find((x) => x.bits === bits)
      if (form === undefined) throw new RangeError(`tiered KV: chunk ${layer}/${chunk} was sealed as ${forms.join("/")} bits, not ${bits} (read-back at ${at0})`)
      return { layer, chunk, tokens, kv: view.subarray(form.at, form.at + form.size), abstract, bits }
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
    for (const b of [...this.jobs, ...this.quantJobs, this.scratch]) b.destroy()
    this.quantized?.destroy()
    this.uQuant?.buffer.destroy()
    this.readback.destroy()
  }
}
