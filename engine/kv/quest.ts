// The Quest manager (all KV on the GPU, the full manager's pool): per layer it owns the
// chunk abstracts (min/max of the keys of every full KV block), computed in the pass that
// fills a block, and the per-step plan: score every full block from its abstracts
// (score.wgsl), select per KV head the sink, the recent and the best-scoring blocks within
// a token budget (select.wgsl), and attend over exactly those (attn_decode with per-head
// lists). Below the budget a step attends fully ("sparse pays" only past it). No read-back:
// it all stays on the GPU. Only QuestKv's methods change its state.
import type { ModelConfig } from "../../models/types.ts"
import { bind, type Dispatch, encodeAll, storageBuffer, Uniform } from "../buffers.ts"
import type { KvPool } from "./pool.ts"
import type { PipelineKey, Pipelines } from "../pipelines.ts"
import { budgetAt, type SparsePolicy } from "../sparse.ts"
import type { KvContext, StepEncoder } from "./manager.ts"
import { OverFullKv } from "./over-full.ts"

export const sparsePipelineKeys = (c: ModelConfig) => ({
  abstract: { op: "abstract" } as PipelineKey,
  score: { op: "score", constants: { G: c.numHeads / c.numKvHeads, HALF_D: c.headDim / 2 } } as PipelineKey,
  select: { op: "select" } as PipelineKey,
})

/** Split of each head's list over attn_decode workgroups (same rule as the full list). */
const TARGET_WORKGROUPS = 256

export class SparseAttention {
  readonly abstracts: ReadonlyArray<{ readonly amin: GPUBuffer; readonly amax: GPUBuffer }>
  private readonly jobs: GPUBuffer // (maxBlocks) vec4<u32> (block, tokens, slot, 0)
  private readonly chunkBlocks: GPUBuffer // (maxBlocks + 1) u32: full blocks in order, then the partial one
  private readonly scores: GPUBuffer // (maxBlocks, KV) f32
  private readonly entries: GPUBuffer // (KV, maxBlocks + 1) vec2<u32>
  private readonly seqs: GPUBuffer // (KV) vec2<u32>
  private readonly u: { abstract: Uniform; score: Uniform; select: Uniform; attn: Uniform }
  private readonly abstractDispatches: Dispatch[] = []
  private readonly scoreDispatches: Dispatch[] = []
  private readonly selectDispatches: Dispatch[] = []
  private readonly attnDispatches: Dispatch[] = []
  private blocksSynced = 0
  private readonly one = new Uint32Array(1)
  private readonly stride: number

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly kv: KvPool,
    act: { readonly q: GPUBuffer; readonly partO: GPUBuffer; readonly partML: GPUBuffer },
    attnDecodeKey: PipelineKey,
    public policy: SparsePolicy,
  ) {
    const c = config
    const half = c.headDim / 2
    const blocks = kv.maxBlocks
    this.stride = blocks + 1
    this.abstracts = Array.from({ length: c.numLayers }, (_, l) => ({
      amin: storageBuffer(device, `L${l} abstract min (blocks, KV, D/2) f16`, blocks * c.numKvHeads * half * 4),
      amax: storageBuffer(device, `L${l} abstract max (blocks, KV, D/2) f16`, blocks * c.numKvHeads * half * 4),
    }))
    this.jobs = storageBuffer(device, "abstract jobs (blocks) vec4<u32>", blocks * 16)
    this.chunkBlocks = storageBuffer(device, "sparse chunk blocks (blocks + 1) u32", this.stride * 4)
    this.scores = storageBuffer(device, "chunk scores (blocks, KV) f32", blocks * c.numKvHeads * 4)
    this.entries = storageBuffer(device, "sparse entries (KV, blocks + 1) vec2<u32>", c.numKvHeads * this.stride * 8)
    this.seqs = storageBuffer(device, "sparse seqs (KV) vec2<u32>", c.numKvHeads * 8)
    this.u = {
      abstract: new Uniform(device, "abstract", "uuuu"),
      score: new Uniform(device, "score", "uuuf"),
      select: new Uniform(device, "select", "uuuuuuuu"),
      attn: new Uniform(device, "attn decode sparse", "uuuuufuu"),
    }
    const keys = sparsePipelineKeys(c)
    const P = (key: PipelineKey) => pipelines.now(key)
    kv.layers.forEach((kvl, l) => {
      const ab = this.abstracts[l]
      const mk = (pipeline: GPUComputePipeline, entries: Array<readonly [number, GPUBuffer]>, x: number, y = 1): Dispatch => ({
        pipeline,
        bindGroup: bind(device, pipeline, entries),
        x,
        y,
        z: 1,
      })
      this.abstractDispatches.push(mk(P(keys.abstract), [[0, this.u.abstract.buffer], [1, kvl.k], [2, this.jobs], [3, ab.amin], [4, ab.amax]], 0, c.numKvHeads))
      const score = mk(P(keys.score), [[0, this.u.score.buffer], [1, act.q], [2, ab.amin], [3, ab.amax], [4, this.chunkBlocks], [5, this.scores]], 0)
      score.z = c.numKvHeads
      this.scoreDispatches.push(score)
      this.selectDispatches.push(mk(P(keys.select), [[0, this.u.select.buffer], [1, this.scores], [2, this.chunkBlocks], [3, this.entries], [4, this.seqs]], c.numKvHeads))
      this.attnDispatches.push(
        mk(P(attnDecodeKey), [[0, this.u.attn.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, this.entries], [5, this.seqs], [6, act.partO], [7, act.partML]], 1, c.numKvHeads),
      )
    })
    this.u.abstract.set(c.numKvHeads, kv.blockTokens, c.headDim, 0)
  }

  /** Dispatch of layer l that refreshes the abstracts of the blocks queued by `queueAbstracts`. */
  abstractOf(l: number): Dispatch {
    return this.abstractDispatches[l]
  }

  /** Layer l's sparse attention: score, select, attend (replaces the full attn_decode). */
  attentionOf(l: number): Dispatch[] {
    return [this.scoreDispatches[l], this.selectDispatches[l], this.attnDispatches[l]]
  }

  /** Abstracts to compute in the next submitted pass: the blocks just filled. */
  queueAbstracts(blocks: ReadonlyArray<number>): void {
    for (const d of this.abstractDispatches) d.x = blocks.length
    if (blocks.length === 0) return
    const jobs = new Uint32Array(blocks.length * 4)
    blocks.forEach((b, i) => jobs.set([b, this.kv.blockTokens, b, 0], i * 4))
    this.device.queue.writeBuffer(this.jobs, 0, jobs)
  }

  /** Full blocks of the sequence (those with abstracts), and the partial one. */
  private split(): { full: number; partial: number } {
    const bs = this.kv.blockTokens
    return { full: Math.floor(this.kv.length / bs), partial: this.kv.length % bs }
  }

  /** Whether this step's sparse plan attends fewer tokens than the whole context. */
  pays(): boolean {
    return this.split().full * this.kv.blockTokens > this.budget()
  }

  /** Tokens attended per step at the current length. */
  budget(): number {
    return budgetAt(this.policy, this.kv.length, this.kv.blockTokens)
  }

  /**
   * Writes this step's plan; returns the combine split count. Call after the step's token
   * was appended (its block may be the partial one).
   */
  prepareStep(): number {
    const c = this.config
    const bs = this.kv.blockTokens
    const { full, partial } = this.split()
    const list = this.kv.blockList
    // The block list only grows (or is reset): write what is new, and the partial slot.
    if (this.blocksSynced > full) this.blocksSynced = 0
    if (this.blocksSynced < full) {
      this.device.queue.writeBuffer(this.chunkBlocks, this.blocksSynced * 4, Uint32Array.from(list.slice(this.blocksSynced, full)))
      this.blocksSynced = full
    }
    if (partial > 0) {
      this.one[0] = list[full]
      this.device.queue.writeBuffer(this.chunkBlocks, full * 4, this.one)
    }
    const sink = Math.ceil(this.policy.sinkTokens / bs)
    const recent = Math.ceil(Math.max(0, this.policy.recentTokens - partial) / bs)
    const k = Math.max(0, Math.floor(this.budget() / bs) - sink - recent - (partial > 0 ? 1 : 0))
    this.u.score.set(full, c.numKvHeads, c.headDim, 1 / Math.sqrt(c.headDim))
    this.u.select.set(full, c.numKvHeads, sink, recent, k, bs, this.stride, partial)
    for (const d of this.scoreDispatches) {
      d.x = Math.min(full, 65535)
      d.y = Math.max(1, Math.ceil(full / 65535))
    }
    // Every head's list has the same length.
    const count = Math.min(full, sink + recent + k) + (partial > 0 ? 1 : 0)
    const tile = this.kv.tileEntries
    const targetSplits = Math.max(1, Math.floor(TARGET_WORKGROUPS / c.numKvHeads))
    const eps = Math.max(tile, Math.ceil(Math.ceil(count / targetSplits) / tile) * tile)
    const splits = Math.max(1, Math.ceil(count / eps))
    this.u.attn.set(c.numHeads, c.numKvHeads, bs, eps, splits, 1 / Math.sqrt(c.headDim), 1)
    for (const d of this.attnDispatches) d.x = splits
    return splits
  }

  /** After a reset or truncation: the chunk list is rewritten at the next step. */
  invalidate(): void {
    this.blocksSynced = 0
  }

  destroy(): void {
    for (const a of this.abstracts) {
      a.amin.destroy()
      a.amax.destroy()
    }
    for (const b of [this.jobs, this.chunkBlocks, this.scores, this.entries, this.seqs]) b.destroy()
  }
}

export class QuestKv extends OverFullKv<SparsePolicy> {
  private readonly sparse: SparseAttention
  /** Per layer, a step below the budget: abstracts of filled blocks, attention over all. */
  private readonly fullLists: ReadonlyArray<Dispatch[]>
  /** Per layer, a step past it: abstracts, score, select, attention over the selection. */
  private readonly sparseLists: ReadonlyArray<Dispatch[]>
  /** Per layer, a prefill pass: abstracts of the blocks it filled, attention. */
  private readonly prefillLists: ReadonlyArray<Dispatch[]>
  private sparseStep = false

  constructor(ctx: KvContext, policy: SparsePolicy) {
    super(ctx)
    this.sparse = new SparseAttention(ctx.device, ctx.pipelines, ctx.config, this.full.pool, ctx.act, ctx.keys.attnDecode, policy)
    const layers = this.full.pools.map((_, l) => l)
    this.fullLists = layers.map((l) => [this.sparse.abstractOf(l), ...this.full.decodeOf(l)])
    this.sparseLists = layers.map((l) => [this.sparse.abstractOf(l), ...this.sparse.attentionOf(l)])
    this.prefillLists = layers.map((l) => [this.sparse.abstractOf(l), ...this.full.prefillOf(l)])
  }

  beginDecode(): void {
    const c = this.ctx.config
    this.sparse.queueAbstracts(this.full.reserve(1, true))
    this.sparseStep = this.sparse.pays()
    if (this.sparseStep) this.ctx.combine.set(c.numHeads, this.sparse.prepareStep(), c.headDim)
    else this.full.prepareDecode()
    this.selectiveSteps += this.sparseStep ? 1 : 0
  }

  attendDecode(l: number, step: StepEncoder): void {
    step.encode(this.sparseStep ? this.sparseLists[l] : this.fullLists[l])
  }

  override beginPrefill(m: number): void {
    this.sparse.queueAbstracts(this.full.reserve(m, true))
    this.full.preparePrefill(m)
  }

  override attendPrefill(l: number, step: StepEncoder): void {
    step.encode(this.prefillLists[l])
  }

  swap(next: SparsePolicy): void {
    this.sparse.policy = next
  }

  protected invalidate(): void {
    this.sparse.invalidate()
  }

  /** As the full manager, then the abstracts of every full block, as a prefill computes them. */
  override async appendSynthetic(tokens: number, fill: (bytes: number, batch: number, from?: number) => void): Promise<void> {
    await this.full.appendSynthetic(tokens, fill)
    const pool = this.full.pool
    this.sparse.queueAbstracts(pool.blockList.slice(0, Math.floor(tokens / pool.blockTokens)))
    const device = this.ctx.device
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    encodeAll(pass, this.full.pools.map((_, l) => this.sparse.abstractOf(l)))
    pass.end()
    device.queue.submit([encoder.finish()])
    this.sparse.queueAbstracts([])
    this.sparse.invalidate()
  }

  protected destroyOwn(): void {
    this.sparse.destroy()
  }
}
