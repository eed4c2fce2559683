// Sealing: once a pass (or, layer-major, a layer) has written the tokens that complete
// chunks, the GPU computes their min/max abstracts (into the seal's scratch, then into the
// abstract cache: abstract-cache.ts), copies the chunks into the GPU chunk cache where admitted, and reads
// them (with their abstracts) back, in staging-sized groups, to be written through to the
// disk and host tiers (TierIo). Under compression the GPU quantizes each group's chunks
// (kernels/quantize.wgsl, kv/quant.ts's layout) into a scratch buffer just before its read-back
// copies, so only compressed bytes cross to the host; under "importance" it produces both
// forms and the choice, which needs the abstract, is made on the host from what came back.
// The chunks lie in a SealSource: the tail ring, or the prompt KV of a layer-major prefill
// (which seals at 16 bits only). Owns the tail ring's abstract and quantize dispatches, the seal jobs, the in-pool copy's scratch, the
// quantized scratch and the read-back ring. A reset bumps the generation: read-backs of an
// earlier sequence still in flight then store nothing.
import { blockWords, chunkBytesAt, type KvBits, type KvShape } from "../../../kv/quant.ts"
import { type CompressionBits, sealForms } from "../../../kv/quant-policy.ts"
import type { SealedChunk, TierIo } from "../../../kv/tier-io.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import { ReadbackRing } from "../../staging.ts"
import type { AbstractBuffers, AbstractCache, SealJob } from "./abstract-cache.ts"
import type { QuantAdmission } from "./apply.ts"
import type { ChunkTables, FreshChunk } from "./chunks.ts"
import { quantizeKey, tieredPipelineKeys } from "./select.ts"
import type { TierCounters } from "./stats.ts"

type Copy = { src: GPUBuffer; srcOffset: number; size: number }

/** Where a sealed chunk goes in the GPU cache: its first pool block (fp16 slots), or its compressed slot's K and V parts. */
export type Admission = number | QuantAdmission

/** Gives a fresh chunk a GPU cache slot, or not; `bits` is what the seal quantizes it to on the GPU, if it does (one form only). */
export type Admit = (f: FreshChunk, bits?: KvBits) => Admission | undefined

/**
 * Where the chunks being sealed lie: the tail ring of every layer's pool (token-major
 * prefill, decode) or one layer's prompt KV (layer-major prefill, engine/kv/tiered-layer-prefill.ts).
 */
export interface SealSource {
  /** Layer l's K and V buffers, (blocks, KV, BS, D) f16 each. */
  buffers(l: number): { readonly k: GPUBuffer; readonly v: GPUBuffer }
  /** The physical block runs of tokens [start, start + tokens) in them. */
  runs(start: number, tokens: number): Array<{ block: number; blocks: number }>
  /** Encodes the abstracts of layer l's chunks into the pass, each at its place in the seal's scratch (their jobs written first). */
  encodeAbstracts(l: number, jobs: ReadonlyArray<SealJob>, pass: GPUComputePassEncoder): void
}

/** The abstract dispatch of a source: per layer, its K buffer and a jobs list, (chunks) vec4<u32> (first block, tokens, scratch place, 0). */
export class AbstractJobs {
  private readonly uniform: Uniform
  private readonly jobs: GPUBuffer[]
  private readonly dispatches: Dispatch[]

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    keys: ReadonlyArray<GPUBuffer>,
    /** The seal's scratch, where every layer's abstracts go. */
    abstracts: AbstractBuffers,
    maxJobs: number,
    blockTokens: number,
    /** Blocks of the ring a chunk may wrap around (0: none). */
    wrap: number,
  ) {
    const c = config
    this.jobs = keys.map((_, l) => storageBuffer(device, `L${l} seal jobs (chunks) vec4<u32>`, maxJobs * 16))
    this.uniform = new Uniform(device, "tier abstract", "uuuu")
    this.uniform.set(c.numKvHeads, blockTokens, c.headDim, wrap)
    const key = tieredPipelineKeys(c).abstract
    this.dispatches = keys.map((k, l) => ({
      ...dispatchOf(device, pipelines.now(key), [[0, this.uniform.buffer], [1, k], [2, this.jobs[l]], [3, abstracts.amin], [4, abstracts.amax]], 0),
      y: c.numKvHeads,
    }))
  }

  /** Writes layer l's jobs ((first physical block, tokens, scratch place) each) and encodes its dispatch. */
  encode(l: number, jobs: ReadonlyArray<readonly [number, number, number]>, pass: GPUComputePassEncoder): void {
    const data = new Uint32Array(jobs.length * 4)
    jobs.forEach((j, i) => data.set([j[0], j[1], j[2], 0], i * 4))
    this.device.queue.writeBuffer(this.jobs[l], 0, data)
    const d = this.dispatches[l]
    pass.setPipeline(d.pipeline)
    pass.setBindGroup(0, d.bindGroup)
    pass.dispatchWorkgroups(jobs.length, this.config.numKvHeads)
  }

  destroy(): void {
    for (const b of [...this.jobs, this.uniform.buffer]) b.destroy()
  }
}

/** A seal's read-back group: its chunks, each in `forms` (bits each), then its abstracts. */
interface SealGroup {
  readonly parts: FreshChunk[]
  readonly copies: Copy[]
  /** Per layer, the quantize jobs of this group: (first physical block, tokens, output word, bits). */
  readonly jobs: Map<number, number[]>
  bytes: number
  /** u32 words of the quantized scratch this group uses. */
  words: number
  /** Per chunk quantized in one form: its word in the scratch. */
  readonly quantAt: Map<FreshChunk, number>
  /** Chunks admitted to compressed slots: copied there from the scratch right after the quantize pass. */
  readonly admitted: Array<{ readonly layer: number; readonly word: number; readonly kBytes: number; readonly size: number; readonly to: QuantAdmission }>
}

export class Sealer {
  readonly readback: ReadbackRing
  /** (slotBlocks, KV, BS, D) f16: a buffer cannot be both source and destination of one copy. */
  readonly scratch: GPUBuffer
  /** (stagingSlotBytes) u32: a read-back group's chunks quantized (kv/quant.ts layout), when compressing. */
  readonly quantized: GPUBuffer | undefined
  /** The tail ring of every layer's pool, where decode and token-major prefill seal from. */
  readonly ring: SealSource
  private readonly ringJobs: AbstractJobs
  /** Per layer: the quantize jobs of one group, (2 * (tail blocks + 1)) vec4<u32>, and their dispatch. */
  private readonly quantJobs: GPUBuffer[] = []
  private readonly quantDispatches: Dispatch[] = []
  private readonly uQuant: Uniform | undefined
  private pending: Array<Promise<void>> = []
  private generation = 0
  /** Bytes of one chunk's min (or max) abstract: (KV, D/2) f16 pairs as f32 words. */
  private readonly abstractBytes: number
  /** Abstracts one seal may compute (the scratch's places): TieredKv seals more in batches. */
  readonly maxChunks: number
  private readonly shape: KvShape

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>,
    private readonly abstracts: AbstractCache,
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
    this.maxChunks = abstracts.layout.sealSlots
    this.readback = new ReadbackRing(device, { slotBytes: ring.slotBytes, slots: ring.slots, label: "kv seal read-back" })
    this.scratch = storageBuffer(device, "seal scratch (slotBlocks, KV, BS, D) f16", slotBlocks * tables.blockBytes)
    // A seal covers at most what the tail holds: one job per chunk, chunks of >= one block.
    const ringJobs = new AbstractJobs(device, pipelines, c, pools.map((p) => p.k), abstracts.seal, this.maxChunks, tables.blockTokens, tables.tailBlocks)
    this.ringJobs = ringJobs
    const bs = tables.blockTokens
    this.ring = {
      buffers: (l) => pools[l],
      runs: (start, tokens) => tables.tailRuns(start, tokens),
      encodeAbstracts: (l, jobs, pass) => ringJobs.encode(l, jobs.map(({ f, at }) => [tables.tailBlock(Math.floor(f.start / bs)), f.tokens, at] as const), pass),
    }
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
   * Submits the abstracts of the `fresh` chunks (at most maxChunks; into the abstract cache) and, for each that `admit` gives a cache slot
   * (its first block in the pool), its copy there; then starts reading them back, at the
   * bits of `setting` (quantized on the GPU), to store them through `io`. Under "importance"
   * `bitsOf` picks each chunk's bits from its abstract. Call once all layers have written those
   * tokens (layer-major prefill: once their layer has). They are read from `source` (default:
   * the tail ring; another source seals at 16 bits only); the promise resolves once every
   * read-back copy is submitted, after which the source may be overwritten.
   */
  seal(
    fresh: ReadonlyArray<FreshChunk>,
    admit: Admit,
    counters: TierCounters,
    setting: CompressionBits = 16,
    bitsOf: (f: FreshChunk, abstract: Uint8Array) => KvBits = () => 16,
    source: SealSource = this.ring,
  ): Promise<void> {
    const forms = sealForms(setting)
    if (this.quantized === undefined && forms.some((b) => b !== 16)) throw new RangeError(`tiered KV: this cache was built without compression and cannot seal at ${setting} bits`)
    if (source !== this.ring && forms.some((b) => b !== 16)) throw new RangeError(`tiered KV: chunks outside the tail ring seal at 16 bits only, not ${setting}`)
    if (fresh.length > this.maxChunks) throw new RangeError(`tiered KV: a seal of ${fresh.length} chunks; the scratch holds ${this.maxChunks} abstracts`)
    const encoder = this.device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    const jobs = fresh.map((f, at) => ({ f, at }))
    for (let l = 0; l < this.pools.length; l++) {
      const mine = jobs.filter((j) => j.f.layer === l)
      if (mine.length > 0) source.encodeAbstracts(l, mine, pass)
    }
    pass.end()
    this.abstracts.encodeSealed(encoder, jobs)
    const blockBytes = this.tables.blockBytes
    const groups = this.groupsOf(fresh, forms, source)
    // One compressed form: admitted chunks are copied into compressed slots from the quantizer's output.
    const quantBits = forms.length === 1 && forms[0] !== 16 ? forms[0] : undefined
    for (const f of fresh) {
      const block = admit(f, quantBits)
      if (block === undefined) continue
      if (typeof block !== "number") {
        const g = groups.find((x) => x.quantAt.has(f))!
        const size = chunkBytesAt(this.shape, f.tokens, quantBits!)
        const kBytes = Math.ceil(f.tokens / this.shape.blockTokens) * blockWords(this.shape, quantBits as 8 | 4).k * 4
        g.admitted.push({ layer: f.layer, word: g.quantAt.get(f)!, kBytes, size, to: block })
        counters.admittedQuant++
        continue
      }
      const pool = this.pools[f.layer]
      const from = source.buffers(f.layer)
      for (const [src, dst] of [[from.k, pool.k], [from.v, pool.v]] as const) {
        let at = block * blockBytes
        for (const r of source.runs(f.start, f.tokens)) {
          const size = r.blocks * blockBytes
          if (src === dst) {
            encoder.copyBufferToBuffer(src, r.block * blockBytes, this.scratch, 0, size)
            encoder.copyBufferToBuffer(this.scratch, 0, dst, at, size)
          } else encoder.copyBufferToBuffer(src, r.block * blockBytes, dst, at, size)
          at += size
        }
      }
    }
    this.device.queue.submit([encoder.finish()])
    counters.chunksSealed += fresh.length
    const generation = this.generation
    const submitted: Array<Promise<void>> = []
    for (const g of groups) {
      let inQueue = () => {}
      submitted.push(new Promise<void>((resolve) => (inQueue = resolve)))
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
      const read = this.readback.read(g.copies, sink, g.words > 0 ? (e) => this.encodeQuantize(e, g) : undefined, inQueue)
      this.pending.push(read.then(() => stored))
    }
    return Promise.all(submitted).then(() => undefined)
  }

  /** The read-back groups of a seal: chunks in order, as many as fit one staging buffer each. */
  private groupsOf(fresh: ReadonlyArray<FreshChunk>, forms: ReadonlyArray<KvBits>, source: SealSource): SealGroup[] {
    const ab = this.abstractBytes
    const blockBytes = this.tables.blockBytes
    const groups: SealGroup[] = []
    fresh.forEach((f, at) => {
      const from = source.buffers(f.layer)
      const bytes = forms.reduce((a, bits) => a + chunkBytesAt(this.shape, f.tokens, bits), 0) + 2 * ab
      // Each read fits one staging buffer, so its sink sees all of it at once.
      let g = groups[groups.length - 1]
      if (!g || g.bytes + bytes > this.readback.slotBytes) {
        g = { parts: [], copies: [], jobs: new Map(), bytes: 0, words: 0, quantAt: new Map(), admitted: [] }
        groups.push(g)
      }
      for (const bits of forms) {
        if (bits === 16) {
          for (const buf of [from.k, from.v]) for (const r of source.runs(f.start, f.tokens)) g.copies.push({ src: buf, srcOffset: r.block * blockBytes, size: r.blocks * blockBytes })
          continue
        }
        const size = chunkBytesAt(this.shape, f.tokens, bits)
        const jobs = g.jobs.get(f.layer) ?? []
        jobs.push(this.tables.tailBlock(Math.floor(f.start / this.tables.blockTokens)), f.tokens, g.words, bits)
        g.jobs.set(f.layer, jobs)
        g.copies.push({ src: this.quantized!, srcOffset: g.words * 4, size })
        if (forms.length === 1) g.quantAt.set(f, g.words)
        g.words += size / 4
      }
      g.copies.push({ src: this.abstracts.seal.amin, srcOffset: at * ab, size: ab }, { src: this.abstracts.seal.amax, srcOffset: at * ab, size: ab })
      g.parts.push(f)
      g.bytes += bytes
    })
    return groups
  }

  /**
   * Quantizes a group's chunks into the scratch, in the encoder of its read-back copies (queue
   * order keeps groups apart), then copies those admitted into their compressed slots.
   */
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
    for (const a of g.admitted) {
      const pool = this.pools[a.layer]
      encoder.copyBufferToBuffer(this.quantized!, a.word * 4, pool.k, a.to.k, a.kBytes)
      encoder.copyBufferToBuffer(this.quantized!, a.word * 4 + a.kBytes, pool.v, a.to.v, a.size - a.kBytes)
    }
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
    this.ringJobs.destroy()
    for (const b of [...this.quantJobs, this.scratch]) b.destroy()
    this.quantized?.destroy()
    this.uQuant?.buffer.destroy()
    this.readback.destroy()
  }
}
