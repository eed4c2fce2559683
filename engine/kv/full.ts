// The full KV manager: every token's KV in the paged KvPool on the GPU, decode attention
// over the whole block list split across workgroups, prefill attention over the block
// table. Quest and H2O keep their KV the same way and build on this one (they only attend
// differently). Only the manager's methods change the pool; no read-back, no await.
import { type Dispatch, dispatchOf, Uniform } from "../buffers.ts"
import { prefillRowsPerGroup } from "../model-resources.ts"
import { KvPool } from "./pool.ts"
import { type BatchedKv, type KvApplies, type KvContext, type KvManager, type KvStats, type StepEncoder, cannotResume } from "./manager.ts"

export class FullKv implements KvManager<unknown> {
  readonly pool: KvPool
  private readonly uDecode: Uniform // attn_decode (H, KV, BS, entries per split, splits, scale, per-head lists, first split)
  private readonly uPrefill: Uniform // attn_prefill (M, H, KV, BS, pos0, scale)
  /** Per layer: [attn_decode over the pool's decode list]. */
  private readonly decode: ReadonlyArray<Dispatch[]>
  /** Per layer: [attn_prefill over the block table]. */
  private readonly prefill: ReadonlyArray<Dispatch[]>
  private readonly slotHost: Uint32Array // (chunk) u32, host copy of act.slot

  constructor(private readonly ctx: KvContext) {
    const { device, config: c, act } = ctx
    this.pool = new KvPool(device, c, ctx.blockTokens, ctx.maxContext, ctx.blockStore)
    this.uDecode = new Uniform(device, "attn decode", "uuuuufuu")
    this.uPrefill = new Uniform(device, "attn prefill", "uuuuufuu")
    this.slotHost = new Uint32Array(ctx.prefillChunk)
    const P = (key: typeof ctx.keys.attnDecode) => ctx.pipelines.now(key)
    this.decode = this.pool.layers.map((kvl) => [
      dispatchOf(device, P(ctx.keys.attnDecode), [[0, this.uDecode.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, this.pool.entries], [5, this.pool.seqs], [6, act.partO], [7, act.partML]], 1, c.numKvHeads, 1),
    ])
    this.prefill = this.pool.layers.map((kvl) => [
      dispatchOf(device, P(ctx.keys.attnPrefill), [[0, this.uPrefill.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, this.pool.table], [5, act.attn]], 1, c.numKvHeads),
    ])
  }

  get length(): number {
    return this.pool.length
  }

  get pools(): KvPool["layers"] {
    return this.pool.layers
  }

  get gpuBytes(): number {
    return this.pool.maxBlocks * this.pool.bytesPerToken * this.pool.blockTokens
  }

  /** Where the blocks live in a store shared with other sequences: a batch attends them for the manager (engine/batch-attention.ts). */
  get batched(): BatchedKv | undefined {
    return this.pool.store.shared ? this : undefined
  }

  /** The batch's step: the next token's slot, without the manager's own decode lists. */
  reserveBatched(): number {
    return this.pool.append()
  }

  /**
   * Reserves m slots and writes them to act.slot; returns the blocks the appends filled
   * when `filled` asks for them (Quest's abstracts), else an empty list.
   */
  reserve(m: number, filled = false): ReadonlyArray<number> {
    const pool = this.pool
    let full: number[] | undefined
    for (let t = 0; t < m; t++) {
      this.slotHost[t] = pool.append()
      if (filled && pool.length % pool.blockTokens === 0) (full ??= []).push(pool.blockList[pool.blockList.length - 1])
    }
    this.ctx.device.queue.writeBuffer(this.ctx.act.slot, 0, this.slotHost.buffer, 0, m * 4)
    return full ?? noBlocks
  }

  /** Writes the step's decode list and uniforms (after its token was reserved). */
  prepareDecode(): void {
    const c = this.ctx.config
    const { splits, entriesPerSplit } = this.pool.syncDecodeList()
    this.uDecode.set(c.numHeads, c.numKvHeads, this.pool.blockTokens, entriesPerSplit, splits, 1 / Math.sqrt(c.headDim), 0)
    this.ctx.combine.set(c.numHeads, splits, c.headDim)
    for (const d of this.decode) d[0].x = splits
  }

  /** Layer l's attention over the whole decode list. */
  decodeOf(l: number): Dispatch[] {
    return this.decode[l]
  }

  /** Layer l's prefill attention over the block table. */
  prefillOf(l: number): Dispatch[] {
    return this.prefill[l]
  }

  /** Writes the pass's table and uniforms for m tokens whose slots were just reserved. */
  preparePrefill(m: number): void {
    const c = this.ctx.config
    const pos0 = this.pool.length - m
    this.pool.syncTable()
    this.uPrefill.set(m, c.numHeads, c.numKvHeads, this.pool.blockTokens, pos0, 1 / Math.sqrt(c.headDim))
    const groups = Math.ceil((m * (c.numHeads / c.numKvHeads)) / prefillRowsPerGroup(this.ctx.keys.attnPrefill))
    for (const d of this.prefill) d[0].x = groups
  }

  beginDecode(): void {
    this.reserve(1)
    this.prepareDecode()
  }

  attendDecode(l: number, step: StepEncoder): void {
    step.encode(this.decode[l])
  }

  endDecode(): void {}

  afterDecode(): void {}

  prefillRoom(): number {
    return Number.POSITIVE_INFINITY
  }

  beginPrefill(m: number): void {
    this.reserve(m)
    this.preparePrefill(m)
  }

  attendPrefill(l: number, step: StepEncoder): void {
    step.encode(this.prefill[l])
  }

  afterPrefill(): void {}

  applies(): KvApplies {
    return "next_step"
  }

  swap(): void {}

  truncate(length: number): void {
    this.pool.truncate(length)
  }

  reset(): void {
    this.pool.reset()
  }

  settle(): Promise<void> {
    return settled
  }

  resume(): number {
    return cannotResume()
  }

  stats(): KvStats {
    return { selectiveSteps: 0 }
  }

  /**
   * Appends, then fills the blocks taken once: from the first to the last of them (a store of
   * its own: blocks 0, 1, ... in order; a shared one: in order too while nobody gave blocks
   * back, else blocks between them, other sequences', are refilled with random data as well).
   */
  async appendSynthetic(tokens: number, fill: (bytes: number, batch: number, from?: number) => void): Promise<void> {
    for (let i = 0; i < tokens; i++) this.pool.append()
    const blocks = this.pool.blockList
    if (blocks.length === 0) return
    const bytes = this.pool.store.blockBytes
    const first = Math.min(...blocks)
    fill((Math.max(...blocks) + 1) * bytes, 0, first * bytes)
  }

  destroy(): void {
    this.pool.destroy()
    this.uDecode.buffer.destroy()
    this.uPrefill.buffer.destroy()
  }
}

const noBlocks: ReadonlyArray<number> = []
const settled = Promise.resolve()

