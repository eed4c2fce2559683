// H2O decode attention (Heavy-Hitter Oracle, Zhang et al. 2023), all KV on the GPU: owns
// per layer the accumulated attention mass of every KV block and which blocks are evicted.
// Each step, per layer: rebuild the kept list from the masses, evicting the lightest blocks
// for good when it exceeds the budget (h2o_keep.wgsl), attend it (attn_decode; the model's
// attn_combine merges the splits), and add the step's softmax mass of every kept block
// (block_mass.wgsl). No read-back: it all stays on the GPU. Only `prepareStep` and
// `invalidate` change the host-side state; the kernels change the masses. H2oKv is the
// manager: the full manager's pool and prefill, H2O's decode attention.
//
// Differences from the paper: decisions are per 16-token KV block, not per token (a block's
// mass is the sum of its tokens'); a layer keeps one set for all its heads (or one per KV
// head with `perKvHead`), not one per query head; prefill does not score the prompt. Prompt
// blocks start with no mass: at the first step after a prefill that must evict, the step's
// query first attends every live block to seed the masses (`seed`, on by default), so the
// first eviction follows that query's attention instead of arbitrary ties.
import type { ModelConfig } from "../../models/types.ts"
import { bind, type Dispatch, readBack, storageBuffer, Uniform } from "../buffers.ts"
import type { KvPool } from "./pool.ts"
import type { PipelineKey, Pipelines } from "../pipelines.ts"
import { budgetAt } from "../sparse.ts"
import type { KvContext, StepEncoder } from "./manager.ts"
import { OverFullKv } from "./over-full.ts"

export interface H2oPolicy {
  /** Most tokens a layer attends per step (sink and recent included)... */
  readonly budgetTokens?: number
  /** ... or this fraction of the context at each step. */
  readonly budgetFraction?: number
  /** The first tokens of the context, never evicted (plain H2O has none: 0). */
  readonly sinkTokens: number
  /** The last tokens, never evicted (the block of the newest token always is kept). */
  readonly recentTokens: number
  /** Seed prompt masses from the first decode query that must evict (default true). */
  readonly seed?: boolean
  /** One kept set per KV head (mass summed over its query group) instead of per layer. */
  readonly perKvHead?: boolean
}

export interface H2oStats {
  /** Per layer, blocks evicted since the sequence began, summed over its lists. */
  readonly evictedBlocks: ReadonlyArray<number>
  /** Decode steps of this sequence, and those that seeded the masses with a full pass. */
  readonly steps: number
  readonly seededSteps: number
}

export const h2oPipelineKeys = (c: ModelConfig) => ({
  mass: { op: "block_mass", constants: { G: c.numHeads / c.numKvHeads, D: c.headDim } } as PipelineKey,
  keep: { op: "h2o_keep" } as PipelineKey,
})

/** Split of each list over attn_decode workgroups (same rule as the full list). */
const TARGET_WORKGROUPS = 256
/** Largest workgroup count along x. */
const MAX_X = 65535

/** One block_mass workgroup per entry (x, then z past 65535); y is the list. */
const entryGrid = (d: Dispatch, entries: number): void => {
  d.x = Math.min(entries, MAX_X)
  d.z = Math.max(1, Math.ceil(entries / MAX_X))
}

/** The passes of one layer in a step: seeding (full list, then mass) and the kept list. */
interface LayerDispatches {
  readonly seedKeep: Dispatch
  readonly seedAttn: Dispatch
  readonly seedMass: Dispatch
  readonly keep: Dispatch
  readonly attn: Dispatch
  readonly mass: Dispatch
}

export class H2oAttention {
  readonly lists: number
  private readonly blocks: GPUBuffer // (maxBlocks) u32 physical block of each logical block
  private readonly mass: ReadonlyArray<GPUBuffer> // per layer (lists, maxBlocks) f32 by physical block; -1: evicted
  private readonly evicted: ReadonlyArray<GPUBuffer> // per layer (lists) u32
  private readonly entries: GPUBuffer // (lists, maxBlocks) vec2<u32> (block, tokens): the layer's list, rebuilt per layer
  private readonly seqs: GPUBuffer // (lists) vec2<u32> (first, count)
  private readonly u: Record<"seedKeep" | "seedAttn" | "seedMass" | "keep" | "attn" | "mass", Uniform>
  private readonly layers: LayerDispatches[] = []
  /** Logical blocks whose physical id the GPU state knows (blocks past it are fresh). */
  private synced = 0
  /** Context length at the last step (a jump of more than one token is a prefill). */
  private lastLength = 0
  private steps = 0
  private seededSteps = 0

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly kv: KvPool,
    act: { readonly q: GPUBuffer; readonly partO: GPUBuffer; readonly partML: GPUBuffer },
    attnDecodeKey: PipelineKey,
    public policy: H2oPolicy,
  ) {
    const c = config
    const mb = kv.maxBlocks
    if (mb >= 1 << 24) throw new RangeError(`h2o: ${mb} blocks exceed the 2^24 the eviction kernel indexes`)
    this.lists = policy.perKvHead ? c.numKvHeads : 1
    this.blocks = storageBuffer(device, "h2o blocks (blocks) u32", mb * 4)
    this.mass = Array.from({ length: c.numLayers }, (_, l) => storageBuffer(device, `L${l} h2o mass (lists, blocks) f32`, this.lists * mb * 4))
    this.evicted = Array.from({ length: c.numLayers }, (_, l) => storageBuffer(device, `L${l} h2o evicted (lists) u32`, this.lists * 4))
    this.entries = storageBuffer(device, "h2o entries (lists, blocks) vec2<u32>", this.lists * mb * 8)
    this.seqs = storageBuffer(device, "h2o seqs (lists) vec2<u32>", this.lists * 8)
    const uniform = (label: string, layout: string) => new Uniform(device, `h2o ${label}`, layout)
    this.u = {
      seedKeep: uniform("seed keep", "uuuuuuuuuuuu"),
      seedAttn: uniform("seed attn", "uuuuufuu"),
      seedMass: uniform("seed mass", "uuuuuufu"),
      keep: uniform("keep", "uuuuuuuuuuuu"),
      attn: uniform("attn", "uuuuufuu"),
      mass: uniform("mass", "uuuuuufu"),
    }
    const keys = h2oPipelineKeys(c)
    const mk = (key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>, y = 1): Dispatch => {
      const pipeline = pipelines.now(key)
      return { pipeline, bindGroup: bind(device, pipeline, entries), x: 0, y, z: 1 }
    }
    kv.layers.forEach((kvl, l) => {
      const keep = (u: Uniform) => mk(keys.keep, [[0, u.buffer], [1, this.blocks], [2, this.mass[l]], [3, this.entries], [4, this.seqs], [5, this.evicted[l]]])
      const attn = (u: Uniform) =>
        mk(attnDecodeKey, [[0, u.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, this.entries], [5, this.seqs], [6, act.partO], [7, act.partML]], c.numKvHeads)
      const mass = (u: Uniform) => mk(keys.mass, [[0, u.buffer], [1, act.q], [2, kvl.k], [3, this.entries], [4, this.seqs], [5, act.partML], [6, this.mass[l]]], this.lists)
      this.layers.push({
        seedKeep: keep(this.u.seedKeep),
        seedAttn: attn(this.u.seedAttn),
        seedMass: mass(this.u.seedMass),
        keep: keep(this.u.keep),
        attn: attn(this.u.attn),
        mass: mass(this.u.mass),
      })
    })
  }

  /**
   * Layer l's H2O attention (replaces the full attn_decode; the model's attn_combine follows):
   * [seed: list all, attend, mass], list the kept blocks (evicting), attend, mass. Passes
   * a step does not need have no workgroups.
   */
  attentionOf(l: number): Dispatch[] {
    const d = this.layers[l]
    return [d.seedKeep, d.seedAttn, d.seedMass, d.keep, d.attn, d.mass]
  }

  /** Tokens attended per step at the current length. */
  budget(): number {
    return budgetAt(this.policy, this.kv.length, this.kv.blockTokens)
  }

  /** Whether this step's kept set is smaller than the context (some block is or was evicted). */
  evicting(): boolean {
    return Math.floor(this.kv.length / this.kv.blockTokens) * this.kv.blockTokens > this.budget()
  }

  /**
   * Writes this step's plan; returns the combine split count. Call once per decode step,
   * after the step's token was appended (its block may be the partial one). Every decode
   * step must run `attentionOf`, also below the budget: that is when masses accumulate.
   */
  prepareStep(): number {
    const c = this.config
    const bs = this.kv.blockTokens
    const n = this.kv.length
    const full = Math.floor(n / bs)
    const partial = n % bs
    const list = this.kv.blockList
    const fresh0 = this.synced
    if (fresh0 < list.length) this.device.queue.writeBuffer(this.blocks, fresh0 * 4, Uint32Array.from(list.slice(fresh0)))
    this.synced = list.length
    const budget = this.budget()
    const seed = this.policy.seed !== false && n - this.lastLength > 1 && full * bs > budget
    this.lastLength = n
    this.steps++
    this.seededSteps += seed ? 1 : 0

    const sink = Math.ceil(this.policy.sinkTokens / bs)
    // The block of the newest token is always kept (with recentTokens 0 too).
    const recent = Math.max(partial > 0 ? 0 : 1, Math.ceil(Math.max(0, this.policy.recentTokens - partial) / bs))
    const k = Math.max(0, Math.floor(budget / bs) - sink - recent - (partial > 0 ? 1 : 0))
    const scale = 1 / Math.sqrt(c.headDim)
    const mb = this.kv.maxBlocks
    const perHead = this.lists > 1 ? 1 : 0
    const tail = partial > 0 ? 1 : 0
    // Upper bounds of the lists' lengths (a list is shorter when earlier evictions left fewer
    // candidates than K: surplus workgroups find no entries and write empty partials).
    const seedCount = full + tail
    const count = Math.min(full, sink + recent + k) + tail
    const seedSplits = seed ? this.splitsOf(seedCount) : { splits: 0, eps: 1 }
    const { splits, eps } = this.splitsOf(count)
    if (seed) {
      this.u.seedKeep.set(full, this.lists, sink, recent, full, bs, mb, partial, fresh0, mb)
      this.u.seedAttn.set(c.numHeads, c.numKvHeads, bs, seedSplits.eps, seedSplits.splits, scale, perHead, 0)
      this.u.seedMass.set(c.numHeads, c.numKvHeads, bs, seedSplits.splits, this.lists, mb, scale)
    }
    // After a seed pass the fresh blocks are already zeroed (and seeded): no second reset.
    this.u.keep.set(full, this.lists, sink, recent, k, bs, mb, partial, seed ? full + tail : fresh0, mb)
    this.u.attn.set(c.numHeads, c.numKvHeads, bs, eps, splits, scale, perHead, 0)
    this.u.mass.set(c.numHeads, c.numKvHeads, bs, splits, this.lists, mb, scale)
    for (const d of this.layers) {
      d.seedKeep.x = seed ? this.lists : 0
      d.seedAttn.x = seedSplits.splits
      entryGrid(d.seedMass, seed ? seedCount : 0)
      d.keep.x = this.lists
      d.attn.x = splits
      // On a seed step this step's query is already counted.
      entryGrid(d.mass, seed ? 0 : count)
    }
    return splits
  }

  private splitsOf(count: number): { splits: number; eps: number } {
    const tile = this.kv.tileEntries
    const targetSplits = Math.max(1, Math.floor(TARGET_WORKGROUPS / this.config.numKvHeads))
    const eps = Math.max(tile, Math.ceil(Math.ceil(count / targetSplits) / tile) * tile)
    return { splits: Math.max(1, Math.ceil(count / eps)), eps }
  }

  /**
   * After the pool's reset or truncation: the blocks from the one holding the cut on are
   * fresh at the next step (no mass, not evicted), since new tokens go there. A reset thus
   * forgets every mass and eviction; a truncation keeps those of the whole blocks before it.
   */
  invalidate(): void {
    this.synced = Math.min(this.synced, Math.floor(this.kv.length / this.kv.blockTokens))
    this.lastLength = Math.min(this.lastLength, this.kv.length)
    if (this.kv.length === 0) this.steps = this.seededSteps = 0
  }

  /** Evictions per layer of this sequence (a small read-back per layer: not per token). */
  async stats(): Promise<H2oStats> {
    // Right after a reset the counters still hold the last sequence's (the next step's kernel zeroes them).
    const read = async (b: GPUBuffer) => new Uint32Array(await readBack(this.device, b, 0, this.lists * 4)).reduce((a, x) => a + x, 0)
    const evictedBlocks = await Promise.all(this.evicted.map((b) => (this.synced === 0 ? 0 : read(b))))
    return { evictedBlocks, steps: this.steps, seededSteps: this.seededSteps }
  }

  /**
   * Layer l's masses of the sequence's blocks as (lists, blocks) in logical order, -1 for
   * evicted blocks (tests and debugging: a read-back).
   */
  async readMass(l: number): Promise<Float32Array> {
    const mb = this.kv.maxBlocks
    const all = new Float32Array(await readBack(this.device, this.mass[l], 0, this.lists * mb * 4))
    const list = this.kv.blockList
    const out = new Float32Array(this.lists * list.length)
    for (let j = 0; j < this.lists; j++) list.forEach((b, i) => (out[j * list.length + i] = all[j * mb + b]))
    return out
  }

  destroy(): void {
    for (const b of [this.blocks, ...this.mass, ...this.evicted, this.entries, this.seqs]) b.destroy()
    for (const u of Object.values(this.u)) u.buffer.destroy()
  }
}

export class H2oKv extends OverFullKv<H2oPolicy> {
  /** The attention over the kept blocks (tests read its masses). */
  readonly h2o: H2oAttention
  private readonly decode: ReadonlyArray<Dispatch[]>

  constructor(ctx: KvContext, policy: H2oPolicy) {
    super(ctx)
    this.h2o = new H2oAttention(ctx.device, ctx.pipelines, ctx.config, this.full.pool, ctx.act, ctx.keys.attnDecode, policy)
    this.decode = this.full.pools.map((_, l) => this.h2o.attentionOf(l))
  }

  /** H2O runs on every step: block masses accumulate below the budget too. */
  beginDecode(): void {
    const c = this.ctx.config
    this.full.reserve(1)
    this.ctx.combine.set(c.numHeads, this.h2o.prepareStep(), c.headDim)
    this.selectiveSteps += this.h2o.evicting() ? 1 : 0
  }

  attendDecode(l: number, step: StepEncoder): void {
    step.encode(this.decode[l])
  }

  swap(next: H2oPolicy): void {
    this.h2o.policy = next
  }

  protected invalidate(): void {
    this.h2o.invalidate()
  }

  protected destroyOwn(): void {
    this.h2o.destroy()
  }
}
