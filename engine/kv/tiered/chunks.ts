// The sequence as chunks: per layer, its chunk table (start and size of every sealed chunk;
// chunk size is a property of each chunk of each layer, cut by the chunking policy, fixed
// for now), and the tail ring of blocks that holds the tokens not yet sealed. Numbers
// only, no GPU. Invariant: every layer's sealed tokens [0, sealed) are its chunks, in
// order and without gaps, and [tailFloor, length) fit in the tail. TieredKv owns it.
import { KvBudgetError, KvTierError } from "../../../kv/tier-errors.ts"
import type { StoredLayer } from "../../../kv/tier-io.ts"

/** A layer's sealed chunks: chunk i covers tokens [starts[i], starts[i] + sizes[i]). */
export interface LayerChunks {
  readonly starts: number[]
  readonly sizes: number[]
  /** Tokens [0, sealed) are in sealed chunks; the tail holds [sealed, length). */
  sealed: number
}

/** A chunk just cut from the tail, to seal. */
export interface FreshChunk {
  readonly layer: number
  readonly chunk: number
  readonly start: number
  readonly tokens: number
}

export class ChunkTables {
  readonly layers: LayerChunks[]
  /** Tokens in the sequence. */
  tokens = 0

  constructor(
    numLayers: number,
    readonly blockTokens: number,
    /** Tail ring blocks (whole chunks and the slack). */
    readonly tailBlocks: number,
    /** Bytes of one block of one of K or V: (KV, BS, D) f16. */
    readonly blockBytes: number,
  ) {
    this.layers = Array.from({ length: numLayers }, () => ({ starts: [], sizes: [], sealed: 0 }))
  }

  /** The oldest token still only in the tail, over all layers. */
  tailFloor(): number {
    let floor = this.tokens
    for (const ch of this.layers) floor = Math.min(floor, ch.sealed)
    return floor
  }

  /** Tokens that can be appended before the next seal: what of the tail the unsealed tokens leave. */
  get appendRoom(): number {
    return this.tailBlocks * this.blockTokens - (this.tokens - this.tailFloor())
  }

  /** The physical slot (block * BS + offset) of the next token; it goes to the tail. */
  append(): number {
    const t = this.tokens++
    if (t - this.tailFloor() >= this.tailBlocks * this.blockTokens) throw new RangeError("tiered KV: the tail is full (seal before appending more)")
    return this.tailSlot(t)
  }

  tailBlock(logicalBlock: number): number {
    return logicalBlock % this.tailBlocks
  }

  tailSlot(t: number): number {
    return this.tailBlock(Math.floor(t / this.blockTokens)) * this.blockTokens + (t % this.blockTokens)
  }

  /** The tail's physical block runs holding tokens [start, start + tokens) (two when the ring wraps). */
  tailRuns(start: number, tokens: number): Array<{ block: number; blocks: number }> {
    const b0 = Math.floor(start / this.blockTokens)
    const n = Math.ceil(tokens / this.blockTokens)
    const p0 = this.tailBlock(b0)
    const first = Math.min(n, this.tailBlocks - p0)
    return first === n ? [{ block: p0, blocks: n }] : [{ block: p0, blocks: first }, { block: 0, blocks: n - first }]
  }

  /** Bytes of chunk ch of layer l: K then V, its blocks each. */
  chunkBytes(l: number, ch: number): number {
    return 2 * Math.ceil(this.layers[l].sizes[ch] / this.blockTokens) * this.blockBytes
  }

  /** Cuts every chunk the tail now completes, in every layer by its own chunking (`sizeAt`). */
  cut(sizeAt: (layer: number, start: number) => number): FreshChunk[] {
    return this.layers.flatMap((_, l) => this.cutLayer(l, sizeAt))
  }

  /** Cuts every chunk of layer l that tokens [sealed, tokens) complete. */
  cutLayer(l: number, sizeAt: (layer: number, start: number) => number): FreshChunk[] {
    const L = this.layers[l]
    const fresh: FreshChunk[] = []
    for (;;) {
      const size = sizeAt(l, L.sealed)
      if (L.sealed + size > this.tokens) break
      fresh.push({ layer: l, chunk: L.starts.length, start: L.sealed, tokens: size })
      L.starts.push(L.sealed)
      L.sizes.push(size)
      L.sealed += size
    }
    return fresh
  }

  /**
   * Layer-major prefill: n tokens join the sequence at once, past what the tail holds; until
   * every layer has cut its chunks (cutLayer) the tail invariant is suspended, so nothing may
   * append or attend the tail in between.
   */
  extend(n: number): void {
    this.tokens += n
  }

  /** Undoes a layer-major prefill that failed: back to `length` tokens, chunks cut past it forgotten (told to `unsealed`). */
  rollBack(length: number, unsealed: (layer: number, chunk: number) => void): void {
    this.layers.forEach((L, l) => {
      while (L.starts.length > 0 && L.sealed > length) {
        unsealed(l, L.starts.length - 1)
        L.sealed = L.starts.pop()!
        L.sizes.pop()
      }
    })
    this.tokens = length
  }

  /** Keeps the first `length` tokens; unseals chunks past them (their bytes are still in the tail), telling `unsealed`. */
  truncate(length: number, unsealed: (layer: number, chunk: number) => void): void {
    if (length >= this.tokens) return
    this.layers.forEach((L, l) => {
      while (L.starts.length > 0 && L.sealed > length) {
        unsealed(l, L.starts.length - 1)
        L.sealed = L.starts.pop()!
        L.sizes.pop()
      }
    })
    if (this.tokens - this.tailFloor() > this.tailBlocks * this.blockTokens) throw new RangeError("tiered KV: cannot truncate past the tail")
    this.tokens = length
  }

  /**
   * Takes layer l's chunk table from what the disk tier holds, checking it is whole and fits
   * (at most `maxChunks` chunks of whole blocks up to `slotTokens`, abstracts of
   * `abstractBytes` each); returns the abstracts, (chunks, KV, D/2) min then max.
   */
  adoptLayer(l: number, stored: StoredLayer, where: string, limits: { maxChunks: number; slotTokens: number; abstractBytes: number }): { amin: Uint8Array; amax: Uint8Array } {
    const L = this.layers[l]
    const { chunks, abstracts } = stored
    const ab = limits.abstractBytes
    if (chunks.length > limits.maxChunks) throw new KvBudgetError(`${where} has ${chunks.length} chunks in layer ${l}; this model holds ${limits.maxChunks}`)
    const amin = new Uint8Array(chunks.length * ab)
    const amax = new Uint8Array(chunks.length * ab)
    let at = 0
    chunks.forEach(({ chunk, tokens }, i) => {
      const a = abstracts[i]
      if (chunk !== i || a?.chunk !== i) throw new KvTierError("chunk_missing", `${where}, layer ${l}: chunk ${i} or its abstract is missing`)
      if (a.bytes.length !== 2 * ab) throw new KvTierError("chunk_corrupt", `${where}, layer ${l}: abstract ${i} is ${a.bytes.length} bytes`)
      if (tokens % this.blockTokens !== 0 || tokens > limits.slotTokens) throw new KvTierError("chunk_corrupt", `${where}, layer ${l}: chunk ${i} has ${tokens} tokens`)
      amin.set(a.bytes.subarray(0, ab), i * ab)
      amax.set(a.bytes.subarray(ab), i * ab)
      L.starts.push(at)
      L.sizes.push(tokens)
      at += tokens
    })
    L.sealed = at
    return { amin, amax }
  }

  /**
   * Takes every layer's chunk table from what the disk tier holds (`stored`), handing each
   * layer's abstracts to `abstracts`; every layer must hold the same tokens. Returns the length.
   */
  adopt(
    stored: (l: number) => StoredLayer,
    where: string,
    limits: { maxChunks: number; slotTokens: number; abstractBytes: number },
    abstracts: (l: number, amin: Uint8Array, amax: Uint8Array) => void,
  ): number {
    let length: number | undefined
    for (let l = 0; l < this.layers.length; l++) {
      const { amin, amax } = this.adoptLayer(l, stored(l), where, limits)
      const at = this.layers[l].sealed
      if (length !== undefined && length !== at) throw new KvTierError("chunk_missing", `${where}: layer ${l} holds ${at} tokens, layer 0 ${length}`)
      length = at
      abstracts(l, amin, amax)
    }
    this.tokens = length ?? 0
    return this.tokens
  }

  /** Forgets every chunk and token; returns whether any chunk was sealed. */
  reset(): boolean {
    let sealed = false
    for (const L of this.layers) {
      sealed ||= L.starts.length > 0
      L.starts.length = 0
      L.sizes.length = 0
      L.sealed = 0
    }
    this.tokens = 0
    return sealed
  }
}
