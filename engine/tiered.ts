// The tiered KV cache (LeoAM): the sequence's KV lives in chunks, written through to the
// disk tier (segment files + LMDB, DiskStore), cached in the host arena (HostArena) and,
// within a byte budget, in a per-layer GPU chunk cache. Each chunk has a min/max abstract
// per KV head, computed on the GPU when the chunk is sealed, kept on the GPU for scoring
// and in LMDB under [session, layer, chunk].
//
// Each layer has its own chunk table (start and size of every chunk): chunk size is a
// property of each chunk of each layer, cut by the chunking policy (fixed for now), and a
// layer's chunks are sealed when its own next chunk is complete.
//
// GPU layout, per layer: one pool of KV blocks (the engine's paged layout) split into the
// tail (a ring of blocks the model writes new tokens into; the same physical blocks in
// every layer, so one slot per token serves all layers) and cache slots of one chunk each.
// A decode step per layer: score every sealed chunk from its abstracts against the current
// query, select the sink, the recent and the best chunks under the token budget, read the
// choice back (a few bytes), make the chosen chunks resident (hits stay, misses come from
// the host arena or disk through the staging ring, evicting by policy), and attend them
// plus the tail. What does not fit in the cache at once is attended in windows whose
// partial softmax states one combine merges, so attention is exact over what was chosen.
import type { DiskStore } from "../kv/disk-store.ts"
import type { HostArena } from "../kv/host-arena.ts"
import { chunkKey, type EntryView, type EvictionPolicy } from "../kv/eviction.ts"
import type { ModelConfig } from "../models/types.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "./buffers.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"
import { ReadbackRing, type StagedCopy, UploadRing } from "./staging.ts"
import { budgetAt } from "./sparse.ts"

/** How the tiered cache chooses what to attend. */
export interface TieredPolicy {
  /** `leoam`: abstracts + selection + GPU cache; `offload-all`: every step attends all chunks, fetched from host/disk (exact). */
  readonly mode: "leoam" | "offload-all"
  /** Tokens per chunk (`fixed` chunking; a multiple of the block size). */
  readonly chunkTokens: number
  /** Most tokens attended per step (sink, recent and tail included); or a fraction of the context. */
  readonly budgetTokens?: number
  readonly budgetFraction?: number
  readonly sinkTokens: number
  readonly recentTokens: number
  /** Eviction of the GPU chunk cache. */
  readonly gpuEviction: EvictionPolicy
  /** Eviction of the host arena (set on the arena when the cache is built and at each policy change). */
  readonly hostEviction: EvictionPolicy
}

export interface TierStores {
  readonly gpuBudgetBytes: number
  readonly arena: HostArena
  readonly store: DiskStore
  /** The session id the chunks are kept under (LMDB keys, host keys). */
  readonly session: string
}

export class KvBudgetError extends Error {
  readonly code = "kv_budget_too_small"
}

export class KvTierError extends Error {
  constructor(
    readonly code: "chunk_corrupt" | "chunk_missing" | "disk_full" | "kv_dir_unavailable" | "io_failed",
    message: string,
  ) {
    super(message)
  }
}

/** Per-request counters of the tiered cache (the `kv` object of replies). */
export interface TierStats {
  readonly policy: string
  readonly gpu: { budget_bytes: number; resident_bytes: number; hits: number; misses: number; bytes_read: number }
  readonly host: { budget_bytes: number; resident_bytes: number; hits: number; misses: number; bytes_read: number; bytes_written: number }
  readonly disk: { hits: number; bytes_read: number; bytes_written: number }
  readonly chunk_tokens: number
  readonly chunks_sealed: number
  readonly steps: number
  readonly windows: number
  readonly chunks_selected_per_step: number
  readonly tokens_selected_per_step: number
  /**
   * Host wall time waiting for the selection read-back (includes the layer's QKV GEMV and
   * scoring), staging transfers and sealing; GPU time of decode attention (0 without
   * timestamp queries).
   */
  readonly time_ms: { select: number; transfer: number; seal: number; attention: number }
  /** Stages that waited for a staging buffer to come back from the GPU. */
  readonly staging_waits: number
}

export const tieredPipelineKeys = (c: ModelConfig) => ({
  abstract: { op: "abstract" } as PipelineKey,
  score: { op: "score", flags: { ALL_HEADS: true }, constants: { G: c.numHeads / c.numKvHeads, HALF_D: c.headDim / 2 } } as PipelineKey,
  select: { op: "select" } as PipelineKey,
})

/** Staging buffers: upload slots and read-back slots, each budget / 64 (a seal at least, 16 MiB at most). */
const STAGING_MAX_BYTES = 16 * 2 ** 20
const READBACK_SLOTS = 2
/**
 * Upload slots by GPU budget: decode flushes the ring once per layer, and a slot comes back
 * only when its mapAsync resolves, so a large budget affords enough slots that a step seldom
 * waits; a small one keeps two (one fills while the other copies).
 */
const uploadSlotsFor = (budgetBytes: number): number => (budgetBytes >= 2 * 2 ** 30 ? 16 : budgetBytes >= 16 * 2 ** 20 ? 4 : 2)

/**
 * Tokens a generation may append past the point where it stops (decode steps already in
 * flight; generate.ts keeps at most this many ahead). The tail ring holds them beyond its
 * whole chunks, so truncating back to the stop never needs bytes they overwrote.
 */
export const TAIL_SLACK_TOKENS = 8

export interface TierLayoutInput {
  readonly layers: number
  /** The tail's slack (TAIL_SLACK_TOKENS rounded up to blocks) in one layer, K and V. */
  readonly tailSlackBytes: number
  /** One chunk of one layer (K and V). */
  readonly slotBytes: number
  /** A seal's read-back: a chunk and its abstracts. */
  readonly sealBytes: number
  /** The in-pool copy's scratch buffer. */
  readonly scratchBytes: number
  /** Cache slots that must fit at once (sink, recent, one chosen). */
  readonly minimumSlots: number
  readonly wantedPrefillChunks: number
  readonly maxChunks: number
  readonly budgetBytes: number
}

export interface TierLayout {
  readonly stagingSlotBytes: number
  readonly uploadSlots: number
  readonly readbackSlots: number
  /** Tail ring chunks per layer (one at least), besides the slack: prefill passes fill what the unsealed tokens leave. */
  readonly tailChunks: number
  readonly cacheSlots: number
  /** Everything counted against the budget. */
  readonly bytes: number
}

/** Staging bytes at a budget: both rings and the scratch buffer. */
const stagingAt = (i: TierLayoutInput, budgetBytes: number) => {
  const stagingSlotBytes = Math.ceil(Math.max(i.sealBytes, Math.min(STAGING_MAX_BYTES, budgetBytes / 64)) / 4) * 4
  const uploadSlots = uploadSlotsFor(budgetBytes)
  return { stagingSlotBytes, uploadSlots, readbackSlots: READBACK_SLOTS, bytes: stagingSlotBytes * (uploadSlots + READBACK_SLOTS) + i.scratchBytes }
}

/**
 * How a GPU KV budget is spent: staging first, then per layer the sink, recent and one chosen
 * chunk's slots and a one-chunk tail; what is left grows the tail (prefill passes, up to half
 * of a layer's share) and then the cache. Returns the least budget that would do when this
 * one cannot (staging grows with the budget, so that least budget is solved for, not guessed).
 */
export const tierLayout = (i: TierLayoutInput): TierLayout | number => {
  const layout = layoutWith(i, stagingAt(i, i.budgetBytes))
  if (layout) return layout
  const fixed = i.layers * ((1 + i.minimumSlots) * i.slotBytes + i.tailSlackBytes)
  let least = fixed + stagingAt(i, fixed).bytes
  for (let b = fixed + stagingAt(i, least).bytes; b !== least; b = fixed + stagingAt(i, least).bytes) least = b
  // Staging grows with the budget in steps, so a budget past the least one can still be
  // refused with its own staging: it then gets the least budget's staging.
  return least <= i.budgetBytes ? layoutWith(i, stagingAt(i, least))! : least
}

/** The layout of the budget with this staging, or undefined when the minimum slots do not fit. */
const layoutWith = (i: TierLayoutInput, staging: ReturnType<typeof stagingAt>): TierLayout | undefined => {
  const perLayer = Math.floor((i.budgetBytes - staging.bytes) / i.layers) - i.tailSlackBytes
  const slots = Math.floor(perLayer / i.slotBytes)
  if (!(slots >= 1 + i.minimumSlots)) return undefined
  const tailChunks = Math.max(1, Math.min(i.wantedPrefillChunks, Math.floor(slots / 2), slots - i.minimumSlots))
  const cacheSlots = Math.min(i.maxChunks, slots - tailChunks)
  return { ...staging, tailChunks, cacheSlots, bytes: staging.bytes + i.layers * ((tailChunks + cacheSlots) * i.slotBytes + i.tailSlackBytes) }
}

/** Aim for this many decode-attention workgroups per window. */
const TARGET_WORKGROUPS = 256
/** Attention partials (splits) one step may produce over all its windows. */
export const TIER_PARTIALS = 512

/** A layer's sealed chunks: chunk i covers tokens [starts[i], starts[i] + sizes[i]). */
interface LayerChunks {
  readonly starts: number[]
  readonly sizes: number[]
  /** Tokens [0, sealed) are in sealed chunks; the tail holds [sealed, length). */
  sealed: number
}

interface CacheEntry extends EntryView {
  lastAccess: number
  accesses: number
  score: number
  scoredAt: number
  readonly chunk: number
  readonly slot: number
}

/** One layer's GPU chunk cache: which chunk each slot holds, chosen for eviction by policy. */
class LayerCache {
  readonly byChunk = new Map<number, CacheEntry>()
  private readonly free: number[] = []
  /** The entries as the policy sees them; `index` is each one's place (swap-remove). */
  private readonly list: Array<CacheEntry & { index: number }> = []

  constructor(readonly slots: number, private readonly chunkBytes: number) {
    for (let s = slots - 1; s >= 0; s--) this.free.push(s)
  }

  get resident(): number {
    return this.byChunk.size
  }

  touch(e: CacheEntry, tick: number): void {
    e.lastAccess = tick
    e.accesses++
  }

  /**
   * Counts a selection of the chunk into its importance: the score decays by half every
   * IMPORTANCE_HALF_LIFE ticks (as the `importance` policy ranks it) and each choice adds 1.
   */
  chosen(e: CacheEntry, tick: number): number {
    e.score = e.score * 2 ** (-(tick - e.scoredAt) / IMPORTANCE_HALF_LIFE) + 1
    e.scoredAt = tick
    return e.score
  }

  /**
   * Makes `count` slots free if it can, evicting by policy among chunks not in `pinned` in
   * one pass (one scan of the entries for all of a step's misses, not one per miss).
   */
  reserve(count: number, policy: EvictionPolicy, pinned: ReadonlySet<string>): void {
    const need = Math.min(count, this.slots) - this.free.length
    if (need <= 0) return
    const chosen = policy.select(this.list, need * this.chunkBytes, pinned)
    if (chosen === null) {
      // Not enough unpinned chunks for all: evict what can be, one at a time.
      for (let i = 0; i < need && this.evictOne(policy, pinned); i++);
      return
    }
    for (const key of chosen) this.drop(this.byChunk.get(Number(key))!)
  }

  /** A slot for `chunk`, evicting by policy among chunks not in `pinned`; undefined if all are pinned. */
  take(chunk: number, policy: EvictionPolicy, pinned: ReadonlySet<string>, tick: number): number | undefined {
    if (this.free.length === 0 && !this.evictOne(policy, pinned)) return undefined
    const slot = this.free.pop()!
    const e = { key: String(chunk), length: this.chunkBytes, lastAccess: tick, accesses: 1, score: 0, scoredAt: tick, chunk, slot, index: this.list.length }
    this.byChunk.set(chunk, e)
    this.list.push(e)
    return slot
  }

  private evictOne(policy: EvictionPolicy, pinned: ReadonlySet<string>): boolean {
    const chosen = policy.select(this.list, this.chunkBytes, pinned)
    if (chosen === null || chosen.length === 0) return false
    this.drop(this.byChunk.get(Number(chosen[0]))!)
    return true
  }

  drop(e: CacheEntry): void {
    const entry = e as CacheEntry & { index: number }
    this.byChunk.delete(e.chunk)
    const last = this.list.pop()!
    if (last !== entry) {
      this.list[entry.index] = last
      last.index = entry.index
    }
    this.free.push(e.slot)
  }

  clear(): void {
    this.byChunk.clear()
    this.list.length = 0
    this.free.length = 0
    for (let s = this.slots - 1; s >= 0; s--) this.free.push(s)
  }
}

/** Cache slots that must fit at once: the sink and recent chunks plus one. */
const minimumSlots = (p: TieredPolicy): number =>
  p.mode === "offload-all" ? 1 : Math.ceil(p.sinkTokens / p.chunkTokens) + Math.ceil(p.recentTokens / p.chunkTokens) + 1

/**
 * The GPU layout of a tiered cache for this model, policy and budget; throws KvBudgetError
 * (with the least budget that would do) where the constructor would refuse it.
 */
export const tieredLayout = (
  c: ModelConfig,
  policy: TieredPolicy,
  stores: Pick<TierStores, "gpuBudgetBytes" | "arena">,
  options: { readonly blockTokens: number; readonly maxContext: number; readonly prefillChunk: number },
): TierLayout => {
  const bs = options.blockTokens
  if (!Number.isInteger(policy.chunkTokens) || policy.chunkTokens <= 0 || policy.chunkTokens % bs !== 0) {
    throw new KvBudgetError(`chunk size ${policy.chunkTokens} must be a positive multiple of the block size ${bs}`)
  }
  const blockBytes = c.numKvHeads * bs * c.headDim * 2
  const slotBlocks = policy.chunkTokens / bs
  const slotBytes = 2 * slotBlocks * blockBytes
  if (slotBytes > stores.arena.slabBytes) {
    throw new KvBudgetError(`a chunk of ${slotBytes} bytes exceeds the host arena's slab of ${stores.arena.slabBytes}`)
  }
  const layout = tierLayout({
    layers: c.numLayers,
    tailSlackBytes: tailSlackBlocks(bs) * 2 * blockBytes,
    slotBytes,
    sealBytes: slotBytes + 2 * c.numKvHeads * (c.headDim / 2) * 4,
    scratchBytes: slotBlocks * blockBytes,
    minimumSlots: minimumSlots(policy),
    wantedPrefillChunks: Math.ceil(options.prefillChunk / policy.chunkTokens),
    maxChunks: Math.ceil(options.maxContext / policy.chunkTokens),
    budgetBytes: stores.gpuBudgetBytes,
  })
  if (typeof layout === "number") {
    throw new KvBudgetError(
      `a GPU KV budget of ${stores.gpuBudgetBytes} bytes cannot hold the tail and the sink and recent chunks: ` +
        `at least ${layout} bytes (${(layout / 2 ** 20).toFixed(2)} MiB) are needed with ${policy.chunkTokens}-token chunks`,
    )
  }
  return layout
}

const tailSlackBlocks = (blockTokens: number) => Math.ceil(TAIL_SLACK_TOKENS / blockTokens)

/** A policy change that needs a new KV cache (another manager or chunk size): it applies at the next request. */
export class KvLayoutChange extends Error {
  readonly code = "kv_layout_change"
}

/** Ticks (layer visits) for a chunk's importance to halve; the `importance` policy's default. */
const IMPORTANCE_HALF_LIFE = 1024

/** The key of chunk c in a layer cache's pinned set. */
const pinKey = (c: number) => String(c)

export class TieredKv {
  readonly blockTokens: number
  /** The largest chunk: a GPU cache slot holds one chunk of at most this many tokens. */
  readonly slotTokens: number
  readonly slotBlocks: number
  /** Bytes of a slot in one layer: K then V, (slotBlocks, KV, BS, D) f16 each. */
  readonly slotBytes: number
  /** Tail ring blocks (whole chunks and the slack), then cache slots of slotBlocks blocks. */
  readonly tailBlocks: number
  readonly cacheSlots: number
  readonly physicalBlocks: number
  readonly maxChunks: number
  readonly upload: UploadRing
  readonly readback: ReadbackRing
  readonly abstracts: ReadonlyArray<{ readonly amin: GPUBuffer; readonly amax: GPUBuffer }>

  private readonly caches: LayerCache[]
  /** Per layer, its chunks: the chunk size is a property of each chunk of each layer. */
  private readonly chunks: LayerChunks[]
  private tokens = 0
  private tick = 0
  private readonly blockBytes: number
  /** Per layer: the seal jobs of its abstract dispatch. */
  private readonly jobs: GPUBuffer[]
  private readonly chunkIds: GPUBuffer
  private readonly scores: GPUBuffer
  readonly entries: GPUBuffer
  readonly seqs: GPUBuffer
  private readonly selectOut: GPUBuffer
  private readonly u: { abstract: Uniform; score: Uniform; select: Uniform }
  private readonly abstractDispatches: Dispatch[] = []
  private readonly scoreDispatches: Dispatch[] = []
  private readonly selectDispatches: Dispatch[] = []
  private readonly entryHost: Uint32Array
  private pendingSeals: Array<Promise<void>> = []
  /** Host buffer for a disk read that is not promoted into the arena. */
  private diskScratch: Uint8Array | undefined
  /** Bumped by reset: seals of an earlier sequence still in flight must not store. */
  private generation = 0
  private counters = emptyCounters()

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    policy: TieredPolicy,
    private readonly stores: TierStores,
    options: { readonly blockTokens: number; readonly maxContext: number; readonly prefillChunk: number; readonly q: GPUBuffer },
  ) {
    const c = config
    const bs = options.blockTokens
    this.blockTokens = bs
    const layout = tieredLayout(config, policy, stores, options)
    this.current = policy
    stores.arena.setPolicy(policy.hostEviction)
    this.slotTokens = policy.chunkTokens
    this.slotBlocks = policy.chunkTokens / bs
    this.blockBytes = c.numKvHeads * bs * c.headDim * 2
    this.slotBytes = 2 * this.slotBlocks * this.blockBytes
    this.maxChunks = Math.ceil(options.maxContext / policy.chunkTokens)
    this.chunks = Array.from({ length: c.numLayers }, () => ({ starts: [], sizes: [], sealed: 0 }))
    const half = c.headDim / 2
    const { stagingSlotBytes: slotBytes, uploadSlots, readbackSlots } = layout
    this.tailBlocks = layout.tailChunks * this.slotBlocks + tailSlackBlocks(bs)
    this.cacheSlots = layout.cacheSlots
    this.physicalBlocks = this.tailBlocks + this.cacheSlots * this.slotBlocks
    this.pools = Array.from({ length: c.numLayers }, (_, l) => ({
      k: storageBuffer(device, `L${l} tiered k pool (tail + cache blocks, KV, BS, D) f16`, this.physicalBlocks * this.blockBytes),
      v: storageBuffer(device, `L${l} tiered v pool (tail + cache blocks, KV, BS, D) f16`, this.physicalBlocks * this.blockBytes),
    }))
    this.caches = Array.from({ length: c.numLayers }, () => new LayerCache(this.cacheSlots, this.slotBytes))
    this.upload = new UploadRing(device, { slotBytes, slots: uploadSlots, label: "kv upload ring" })
    this.readback = new ReadbackRing(device, { slotBytes, slots: readbackSlots, label: "kv seal read-back" })

    const abstractBytes = this.maxChunks * c.numKvHeads * half * 4
    this.abstracts = Array.from({ length: c.numLayers }, (_, l) => ({
      amin: storageBuffer(device, `L${l} chunk abstract min (chunks, KV, D/2) f16`, abstractBytes),
      amax: storageBuffer(device, `L${l} chunk abstract max (chunks, KV, D/2) f16`, abstractBytes),
    }))
    this.sealScratch = storageBuffer(device, "seal scratch (slotBlocks, KV, BS, D) f16", this.slotBlocks * this.blockBytes)
    // A seal covers at most what the tail holds: one job per chunk, chunks of >= one block.
    this.jobs = Array.from({ length: c.numLayers }, (_, l) => storageBuffer(device, `L${l} seal jobs (chunks) vec4<u32>`, (this.tailBlocks + 1) * 16))
    this.chunkIds = storageBuffer(device, "chunk ids (chunks) u32", this.maxChunks * 4)
    device.queue.writeBuffer(this.chunkIds, 0, Uint32Array.from({ length: this.maxChunks }, (_, i) => i))
    this.scores = storageBuffer(device, "chunk scores (chunks) f32", this.maxChunks * 4)
    this.selectOut = storageBuffer(device, "selected chunks (chunks) vec2<u32>", this.maxChunks * 8)
    const listMax = this.physicalBlocks
    this.entries = storageBuffer(device, "tier attention entries (blocks) vec2<u32>", listMax * 8)
    this.seqs = storageBuffer(device, "tier attention seqs (1) vec2<u32>", 16)
    this.entryHost = new Uint32Array(listMax * 2)
    this.u = {
      abstract: new Uniform(device, "tier abstract", "uuuu"),
      score: new Uniform(device, "tier score", "uuuf"),
      select: new Uniform(device, "tier select", "uuuuuuuu"),
    }
    this.u.abstract.set(c.numKvHeads, bs, c.headDim, this.tailBlocks)
    const keys = tieredPipelineKeys(c)
    const P = (key: PipelineKey) => pipelines.now(key)
    const selectSeqs = storageBuffer(device, "tier select seqs (1) vec2<u32>", 16)
    this.selectSeqs = selectSeqs
    for (let l = 0; l < c.numLayers; l++) {
      const ab = this.abstracts[l]
      const mk = (key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>, x: number): Dispatch => dispatchOf(device, P(key), entries, x)
      this.abstractDispatches.push({ ...mk(keys.abstract, [[0, this.u.abstract.buffer], [1, this.pools[l].k], [2, this.jobs[l]], [3, ab.amin], [4, ab.amax]], 0), y: c.numKvHeads })
      this.scoreDispatches.push(mk(keys.score, [[0, this.u.score.buffer], [1, options.q], [2, ab.amin], [3, ab.amax], [4, this.chunkIds], [5, this.scores]], 0))
      this.selectDispatches.push(mk(keys.select, [[0, this.u.select.buffer], [1, this.scores], [2, this.chunkIds], [3, this.selectOut], [4, selectSeqs]], 1))
    }
  }

  private readonly selectSeqs: GPUBuffer
  private readonly sealScratch: GPUBuffer
  /** Per layer: K and V pools of `physicalBlocks` blocks (the engine's KvPool uses them). */
  readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>

  private current: TieredPolicy

  get policy(): TieredPolicy {
    return this.current
  }

  /**
   * Replaces the selection and eviction between steps (a live policy change). The mode and
   * the chunk size are the cache's layout: changing them needs a new cache (KvLayoutChange);
   * sink and recent chunks that no longer fit the GPU cache are refused (KvBudgetError).
   */
  setPolicy(next: TieredPolicy): void {
    this.checkPolicy(next)
    this.current = next
    this.stores.arena.setPolicy(next.hostEviction)
  }

  /** Throws what setPolicy would. */
  checkPolicy(next: TieredPolicy): void {
    if (next.mode !== this.current.mode || next.chunkTokens !== this.current.chunkTokens) {
      throw new KvLayoutChange(`${this.current.mode} with ${this.current.chunkTokens}-token chunks -> ${next.mode} with ${next.chunkTokens}-token chunks`)
    }
    const need = minimumSlots(next)
    if (need > this.cacheSlots) {
      throw new KvBudgetError(`sink_tokens ${next.sinkTokens} and recent_tokens ${next.recentTokens} need ${need} chunk slots per layer; the GPU budget gives ${this.cacheSlots}`)
    }
  }

  private minimumSlots(): number {
    return minimumSlots(this.current)
  }

  get length(): number {
    return this.tokens
  }

  /** Sealed chunks of layer l. */
  chunkCount(l: number): number {
    return this.chunks[l].starts.length
  }

  /** Tokens of chunk ch of layer l (fixed chunking: the policy's size for every chunk). */
  chunkTokensOf(l: number, ch: number): number {
    return this.chunks[l].sizes[ch]
  }

  /** The size of the next chunk of layer l, starting at token `start` (the chunking policy). */
  private nextChunkTokens(_l: number, _start: number): number {
    return this.policy.chunkTokens
  }

  /** The oldest token still only in the tail, over all layers. */
  private tailFloor(): number {
    let floor = this.tokens
    for (const ch of this.chunks) floor = Math.min(floor, ch.sealed)
    return floor
  }

  /** GPU memory this cache holds for KV: pools, staging and read-back rings. */
  get gpuBytes(): number {
    return this.config.numLayers * this.physicalBlocks * 2 * this.blockBytes + this.upload.bytes + this.readback.bytes + this.sealScratch.size
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

  private tailBlock(logicalBlock: number): number {
    return logicalBlock % this.tailBlocks
  }

  private tailSlot(t: number): number {
    return this.tailBlock(Math.floor(t / this.blockTokens)) * this.blockTokens + (t % this.blockTokens)
  }

  private cacheBlock(slot: number): number {
    return this.tailBlocks + slot * this.slotBlocks
  }

  /** Bytes of chunk ch of layer l: K then V, its blocks each. */
  private chunkBytesOf(l: number, ch: number): number {
    return 2 * Math.ceil(this.chunks[l].sizes[ch] / this.blockTokens) * this.blockBytes
  }

  /** The tail's physical block runs holding tokens [start, start + tokens) (two when the ring wraps). */
  private tailRuns(start: number, tokens: number): Array<{ block: number; blocks: number }> {
    const b0 = Math.floor(start / this.blockTokens)
    const n = Math.ceil(tokens / this.blockTokens)
    const p0 = this.tailBlock(b0)
    const first = Math.min(n, this.tailBlocks - p0)
    return first === n ? [{ block: p0, blocks: n }] : [{ block: p0, blocks: first }, { block: 0, blocks: n - first }]
  }

  // --- sealing: abstracts, write-through to host and disk, GPU cache admission ---

  /**
   * Submits, after the pass that wrote them, the abstracts of the chunks just completed
   * (in every layer, each by its own chunking) and their copies into the GPU cache, then
   * reads them (and their abstracts) back into the host arena and the disk store. Call once
   * all layers have written those tokens.
   */
  seal(): void {
    const c = this.config
    const fresh: Array<{ layer: number; chunk: number; start: number; tokens: number }> = []
    this.chunks.forEach((L, l) => {
      for (;;) {
        const size = this.nextChunkTokens(l, L.sealed)
        if (L.sealed + size > this.tokens) break
        fresh.push({ layer: l, chunk: L.starts.length, start: L.sealed, tokens: size })
        L.starts.push(L.sealed)
        L.sizes.push(size)
        L.sealed += size
      }
    })
    if (fresh.length === 0) return
    const encoder = this.device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    for (let l = 0; l < c.numLayers; l++) {
      const mine = fresh.filter((f) => f.layer === l)
      if (mine.length === 0) continue
      const jobs = new Uint32Array(mine.length * 4)
      mine.forEach((f, i) => jobs.set([this.tailBlock(Math.floor(f.start / this.blockTokens)), f.tokens, f.chunk, 0], i * 4))
      this.device.queue.writeBuffer(this.jobs[l], 0, jobs)
      const d = this.abstractDispatches[l]
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(mine.length, c.numKvHeads)
    }
    pass.end()
    const abstractBytes = c.numKvHeads * (c.headDim / 2) * 4
    const admit = this.policy.mode === "leoam"
    const groups: Array<{ parts: typeof fresh; copies: Array<{ src: GPUBuffer; srcOffset: number; size: number }>; bytes: number }> = []
    for (const f of fresh) {
      const pool = this.pools[f.layer]
      const runs = this.tailRuns(f.start, f.tokens)
      const copies: Array<{ src: GPUBuffer; srcOffset: number; size: number }> = []
      for (const buf of [pool.k, pool.v]) for (const r of runs) copies.push({ src: buf, srcOffset: r.block * this.blockBytes, size: r.blocks * this.blockBytes })
      copies.push(
        { src: this.abstracts[f.layer].amin, srcOffset: f.chunk * abstractBytes, size: abstractBytes },
        { src: this.abstracts[f.layer].amax, srcOffset: f.chunk * abstractBytes, size: abstractBytes },
      )
      const bytes = this.chunkBytesOf(f.layer, f.chunk) + 2 * abstractBytes
      // Each read fits one staging buffer, so its sink sees all of it at once.
      const g = groups[groups.length - 1]
      if (g && g.bytes + bytes <= this.readback.slotBytes) {
        g.parts.push(f)
        g.copies.push(...copies)
        g.bytes += bytes
      } else groups.push({ parts: [f], copies, bytes })
      if (admit) {
        const slot = this.caches[f.layer].take(f.chunk, this.policy.gpuEviction, noPins, ++this.tick)
        if (slot !== undefined) {
          // A buffer cannot be both source and destination of one copy: go through scratch.
          for (const buf of [pool.k, pool.v]) {
            let at = this.cacheBlock(slot) * this.blockBytes
            for (const r of runs) {
              const size = r.blocks * this.blockBytes
              encoder.copyBufferToBuffer(buf, r.block * this.blockBytes, this.sealScratch, 0, size)
              encoder.copyBufferToBuffer(this.sealScratch, 0, buf, at, size)
              at += size
            }
          }
        }
      }
    }
    this.device.queue.submit([encoder.finish()])
    this.counters.chunksSealed += fresh.length
    const generation = this.generation
    for (const g of groups) {
      this.pendingSeals.push(
        this.readback.read(g.copies, (view) => {
          // A reset (a new request) since this seal makes its bytes stale: drop them.
          if (generation === this.generation) this.storeSealed(g.parts, view, abstractBytes)
        }),
      )
    }
  }

  private storeSealed(parts: ReadonlyArray<{ layer: number; chunk: number; tokens: number }>, view: Uint8Array, abstractBytes: number) {
    const { arena, store, session } = this.stores
    const writes = []
    const abstracts = []
    let at = 0
    for (const { layer, chunk, tokens } of parts) {
      const kv = this.chunkBytesOf(layer, chunk)
      writes.push({ key: [session, layer, chunk] as const, bytes: view.subarray(at, at + kv), meta: { tokens, dtype: "f16" } })
      abstracts.push({ key: [session, layer, chunk] as const, bytes: view.slice(at + kv, at + kv + 2 * abstractBytes) })
      at += kv + 2 * abstractBytes
    }
    try {
      store.putChunks(writes)
      store.putAbstracts(abstracts)
    } catch (e) {
      throw tierErrorOf(e)
    }
    for (const w of writes) {
      this.counters.diskWritten += w.bytes.length
      arena.put(chunkKey(session, w.key[1], w.key[2]), w.bytes)
      this.counters.hostWritten += w.bytes.length
    }
  }

  /** Waits for the host and disk copies of sealed chunks (call before reading any tier). */
  async settle(): Promise<void> {
    if (this.pendingSeals.length === 0) return
    const pending = this.pendingSeals
    this.pendingSeals = []
    const t0 = performance.now()
    try {
      await Promise.all(pending)
    } finally {
      this.counters.sealMs += performance.now() - t0
    }
  }

  // --- selection and residency ---------------------------------------------------

  /** Tokens attended per step by the policy at the current length. */
  budgetTokens(): number {
    const p = this.policy
    return p.mode === "offload-all" ? Number.POSITIVE_INFINITY : budgetAt(p, this.tokens, this.slotTokens)
  }

  /** Whether this step must score and choose (else every sealed chunk is attended). */
  selects(): boolean {
    return this.policy.mode === "leoam" && this.tokens > this.budgetTokens()
  }

  /**
   * Encodes layer l's scoring and selection of sealed chunks against the current query,
   * and the copy of the choice into `readbackDst` (count * 8 bytes). Returns the count.
   */
  encodeSelect(l: number, pass: GPUComputePassEncoder): number {
    const c = this.config
    const p = this.policy
    const L = this.chunks[l]
    const n = L.starts.length
    const tail = this.tokens - L.sealed
    // Sink: the chunks starting within the first sink tokens; recent: those ending within
    // the last recent tokens; K more of at most slotTokens each fill the budget.
    let S = 0
    while (S < n && L.starts[S] < p.sinkTokens) S++
    const need = Math.max(0, p.recentTokens - tail)
    let R = 0
    while (R < n - S && L.starts[n - 1 - R] + L.sizes[n - 1 - R] > L.sealed - need) R++
    const kept = (S > 0 ? L.starts[S - 1] + L.sizes[S - 1] : 0) + (R > 0 ? L.sealed - L.starts[n - R] : 0)
    // At least one scored chunk: a budget that sink, recent and tail use up entirely would
    // otherwise attend nothing chosen by the query (it then exceeds the budget by a chunk).
    const K = Math.max(n - S - R > 0 ? 1 : 0, Math.floor((this.budgetTokens() - tail - kept) / this.slotTokens))
    this.u.score.set(n, c.numKvHeads, c.headDim, 1 / Math.sqrt(c.headDim))
    this.u.select.set(n, 1, S, R, K, this.blockTokens, this.maxChunks, 0)
    const score = this.scoreDispatches[l]
    pass.setPipeline(score.pipeline)
    pass.setBindGroup(0, score.bindGroup)
    pass.dispatchWorkgroups(Math.min(n, 65535), Math.max(1, Math.ceil(n / 65535)))
    const sel = this.selectDispatches[l]
    pass.setPipeline(sel.pipeline)
    pass.setBindGroup(0, sel.bindGroup)
    pass.dispatchWorkgroups(1)
    return Math.min(n, S + R + K)
  }

  /** The selection buffer (vec2<u32> (chunk, tokens) per chosen chunk) for read-back. */
  get selection(): GPUBuffer {
    return this.selectOut
  }

  /** Every sealed chunk of layer l, in order (what offload-all and a budget larger than the context attend). */
  allChunks(l: number): number[] {
    return Array.from({ length: this.chunkCount(l) }, (_, i) => i)
  }

  /**
   * Plans layer l's attention over `chosen` sealed chunks plus the tail: windows of chunks
   * that fit in the cache at once. For each window, stages the missing chunks' uploads
   * (flushed before the window runs) and calls `run` with its entry count, after writing
   * the entries list. Hits stay resident; misses come from the host arena or disk.
   */
  async attendLayer(l: number, chosen: ReadonlyArray<number>, run: (entryCount: number, last: boolean) => void): Promise<void> {
    const cache = this.caches[l]
    const tick = ++this.tick
    const hits: number[] = []
    const misses: number[] = []
    for (const ch of chosen) {
      const e = cache.byChunk.get(ch)
      if (e) {
        cache.touch(e, tick)
        hits.push(ch)
      } else misses.push(ch)
    }
    this.counters.gpuHits += hits.length
    this.counters.gpuMisses += misses.length
    for (const ch of hits) this.counters.gpuBytesRead += this.chunkBytesOf(l, ch)
    this.counters.selected += chosen.length
    // Window 1: the hits (pinned) and as many misses as the other slots take.
    const pinned = new Set<string>(hits.map(pinKey))
    let window: Array<{ chunk: number; slot: number }> = hits.map((ch) => ({ chunk: ch, slot: cache.byChunk.get(ch)!.slot }))
    let i = 0
    const policy = this.policy.gpuEviction
    for (;;) {
      const t0 = performance.now()
      cache.reserve(misses.length - i, policy, pinned)
      while (i < misses.length) {
        const ch = misses[i]
        const slot = cache.take(ch, policy, pinned, tick)
        if (slot === undefined) break
        pinned.add(pinKey(ch))
        await this.fetchInto(l, ch, slot)
        window.push({ chunk: ch, slot })
        i++
      }
      this.upload.flush()
      this.counters.transferMs += performance.now() - t0
      const last = i >= misses.length
      if (window.length === 0 && !last) throw new KvBudgetError(`layer ${l}: no GPU cache slot is free for chunk ${misses[i]}`)
      // Importance: each chosen chunk's decayed count of choices, in the GPU cache and the host arena.
      if (this.policy.mode === "leoam") {
        for (const w of window) {
          const e = cache.byChunk.get(w.chunk)
          if (e) this.stores.arena.setScore(chunkKey(this.stores.session, l, w.chunk), cache.chosen(e, tick))
        }
      }
      const count = this.writeEntries(l, window, last)
      this.counters.windows++
      run(count, last)
      if (last) break
      // The next window reuses the slots of this one's misses; its hits stay cached.
      for (const w of window) pinned.delete(pinKey(w.chunk))
      window = []
    }
    if (this.policy.mode === "offload-all") cache.clear()
  }

  /** Stages chunk `ch` of layer l from the host arena (or disk) into cache slot `slot`. */
  private async fetchInto(l: number, ch: number, slot: number): Promise<void> {
    const { arena, store, session } = this.stores
    const key = chunkKey(session, l, ch)
    const pool = this.pools[l]
    const dst = this.cacheBlock(slot) * this.blockBytes
    const bytes = this.chunkBytesOf(l, ch)
    const half = bytes / 2
    const copies: StagedCopy[] = [
      { from: 0, dst: pool.k, dstOffset: dst, size: half },
      { from: half, dst: pool.v, dstOffset: dst, size: half },
    ]
    const held = arena.prepareLoad(key)
    if (held !== undefined) {
      try {
        if (held.length !== bytes) throw new KvTierError("chunk_corrupt", `chunk ${key} in the host arena is ${held.length} bytes, want ${bytes}`)
        await this.upload.stage(bytes, (view) => view.set(held), copies)
      } finally {
        arena.completeLoad(key)
      }
      this.counters.hostHits++
      this.counters.hostBytesRead += bytes
      return
    }
    this.counters.hostMisses++
    // Disk bytes land in host memory first (the CRC check reads them; mapped staging memory
    // is write-combined and slow to read), then go to staging with one write. leoam promotes
    // them into the host arena (selection has locality); offload-all scans every chunk each
    // step, where promotion would only make the arena thrash.
    const promote = this.policy.mode === "leoam"
    const ticket = promote ? arena.prepareStore(key, bytes) : undefined
    const host = ticket?.view ?? (this.diskScratch ??= new Uint8Array(this.slotBytes)).subarray(0, bytes)
    try {
      let read: Uint8Array
      try {
        read = store.readChunk([session, l, ch], host)
      } catch (e) {
        throw tierErrorOf(e)
      }
      if (read.length !== bytes) throw new KvTierError("chunk_corrupt", `chunk ${key} is ${read.length} bytes, want ${bytes}`)
      await this.upload.stage(bytes, (view) => view.set(host), copies)
    } catch (e) {
      if (ticket) arena.abortStore(ticket)
      throw e
    }
    if (ticket) arena.completeStore(ticket)
    this.counters.diskHits++
    this.counters.diskBytesRead += bytes
  }

  /** Writes the window's entries (its chunks' blocks, then on the last window the layer's tail). */
  private writeEntries(l: number, window: ReadonlyArray<{ chunk: number; slot: number }>, withTail: boolean): number {
    const e = this.entryHost
    const bs = this.blockTokens
    let n = 0
    for (const w of window) {
      const b0 = this.cacheBlock(w.slot)
      const tokens = this.chunks[l].sizes[w.chunk]
      for (let t = 0; t < tokens; t += bs) {
        e[n * 2] = b0 + t / bs
        e[n * 2 + 1] = Math.min(bs, tokens - t)
        n++
      }
    }
    if (withTail) {
      for (let t = this.chunks[l].sealed; t < this.tokens; t += bs) {
        e[n * 2] = this.tailBlock(Math.floor(t / bs))
        e[n * 2 + 1] = Math.min(bs, this.tokens - t)
        n++
      }
    }
    this.device.queue.writeBuffer(this.entries, 0, e.buffer, 0, n * 8)
    this.device.queue.writeBuffer(this.seqs, 0, Uint32Array.of(0, n))
    return n
  }

  /** Splits of a window of `count` entries over decode-attention workgroups. */
  splitsOf(count: number, tileEntries: number, cap: number): { splits: number; entriesPerSplit: number } {
    const target = Math.max(1, Math.min(cap, Math.floor(TARGET_WORKGROUPS / this.config.numKvHeads)))
    const eps = Math.max(tileEntries, Math.ceil(Math.ceil(count / target) / tileEntries) * tileEntries)
    return { splits: Math.max(1, Math.ceil(count / eps)), entriesPerSplit: eps }
  }

  // --- prefill windows -----------------------------------------------------------

  /**
   * Plans layer l's prefill attention for tokens [pos0, end): every sealed chunk, then the
   * tail, in windows of consecutive chunks that fit in the cache. For each window, writes
   * the block table (logical block -> physical) and calls `run(k0, k1, first, last)`.
   */
  async prefillLayer(l: number, table: GPUBuffer, run: (k0: number, k1: number, first: boolean, last: boolean) => void): Promise<void> {
    const cache = this.caches[l]
    const L = this.chunks[l]
    const n = L.starts.length
    const bs = this.blockTokens
    const tick = ++this.tick
    const tableHost = new Uint32Array(Math.ceil(this.tokens / bs))
    // Tail blocks never move during the layer.
    for (let b = Math.floor(L.sealed / bs); b < tableHost.length; b++) tableHost[b] = this.tailBlock(b)
    let ch = 0
    let first = true
    const pinned = new Set<string>()
    while (ch <= n) {
      const t0 = performance.now()
      const start = ch
      // Extend the window while its chunks are (or can be made) resident.
      while (ch < n) {
        let e = cache.byChunk.get(ch)
        if (e) {
          cache.touch(e, tick)
          this.counters.gpuHits++
          this.counters.gpuBytesRead += this.chunkBytesOf(l, ch)
        } else {
          const slot = cache.take(ch, this.policy.gpuEviction, pinned, tick)
          if (slot === undefined) break
          this.counters.gpuMisses++
          await this.fetchInto(l, ch, slot)
          e = cache.byChunk.get(ch)!
        }
        pinned.add(pinKey(ch))
        const b0 = L.starts[ch] / bs
        for (let b = 0; b < Math.ceil(L.sizes[ch] / bs); b++) tableHost[b0 + b] = this.cacheBlock(e.slot) + b
        ch++
      }
      this.upload.flush()
      this.counters.transferMs += performance.now() - t0
      const last = ch === n
      if (start === ch && !last) throw new KvBudgetError(`layer ${l}: no GPU cache slot is free for chunk ${ch}`)
      const k0 = start < n ? L.starts[start] : L.sealed
      const k1 = last ? this.tokens : L.starts[ch]
      const b0 = k0 / bs
      const b1 = Math.ceil(k1 / bs)
      this.device.queue.writeBuffer(table, b0 * 4, tableHost.buffer, b0 * 4, (b1 - b0) * 4)
      this.counters.windows++
      run(k0, k1, first, last)
      first = false
      if (last) break
      pinned.clear()
    }
    if (this.policy.mode === "offload-all") cache.clear()
  }

  // --- sequence ------------------------------------------------------------------

  /** Keeps the first `length` tokens; unseals chunks past them (their bytes are still in the tail). */
  truncate(length: number): void {
    if (length >= this.tokens) return
    const { arena, session } = this.stores
    this.chunks.forEach((L, l) => {
      while (L.starts.length > 0 && L.sealed > length) {
        const ch = L.starts.length - 1
        const e = this.caches[l].byChunk.get(ch)
        if (e) this.caches[l].drop(e)
        arena.remove(chunkKey(session, l, ch))
        L.sealed = L.starts.pop()!
        L.sizes.pop()
      }
    })
    if (this.tokens - this.tailFloor() > this.tailBlocks * this.blockTokens) throw new RangeError("tiered KV: cannot truncate past the tail")
    this.tokens = length
  }

  /**
   * Resumes the sequence whose chunks the disk store holds under this cache's session (one
   * written by an earlier request or process): the chunk tables from the LMDB chunk index
   * and the GPU abstracts rebuilt from the LMDB abstracts. Tokens after the last sealed
   * chunk were never written to disk, so the sequence resumes there. Returns its length.
   */
  adopt(): number {
    const c = this.config
    const { store, session } = this.stores
    if (this.tokens > 0) throw new RangeError("tiered KV: adopt wants an empty cache")
    const abstractBytes = c.numKvHeads * (c.headDim / 2) * 4
    let length: number | undefined
    this.chunks.forEach((L, l) => {
      let entries
      let abstracts
      try {
        entries = store.chunksOf(session, l)
        abstracts = store.abstractsOf(session, l)
      } catch (e) {
        throw tierErrorOf(e)
      }
      if (entries.length > this.maxChunks) throw new KvBudgetError(`session ${session} has ${entries.length} chunks in layer ${l}; this model holds ${this.maxChunks}`)
      const amin = new Uint8Array(entries.length * abstractBytes)
      const amax = new Uint8Array(entries.length * abstractBytes)
      let at = 0
      entries.forEach(({ chunk, entry }, i) => {
        const a = abstracts[i]
        if (chunk !== i || a?.chunk !== i) throw new KvTierError("chunk_missing", `session ${session}, layer ${l}: chunk ${i} or its abstract is missing`)
        if (a.bytes.length !== 2 * abstractBytes) throw new KvTierError("chunk_corrupt", `session ${session}, layer ${l}: abstract ${i} is ${a.bytes.length} bytes`)
        if (entry.tokens % this.blockTokens !== 0 || entry.tokens > this.slotTokens) throw new KvTierError("chunk_corrupt", `session ${session}, layer ${l}: chunk ${i} has ${entry.tokens} tokens`)
        amin.set(a.bytes.subarray(0, abstractBytes), i * abstractBytes)
        amax.set(a.bytes.subarray(abstractBytes), i * abstractBytes)
        L.starts.push(at)
        L.sizes.push(entry.tokens)
        at += entry.tokens
      })
      L.sealed = at
      if (length !== undefined && length !== at) throw new KvTierError("chunk_missing", `session ${session}: layer ${l} holds ${at} tokens, layer 0 ${length}`)
      length = at
      if (amin.length > 0) {
        this.device.queue.writeBuffer(this.abstracts[l].amin, 0, amin)
        this.device.queue.writeBuffer(this.abstracts[l].amax, 0, amax)
      }
    })
    this.tokens = length ?? 0
    return this.tokens
  }

  /** Forgets the sequence: GPU cache, host entries and the session's disk chunks. */
  reset(): void {
    for (const cache of this.caches) cache.clear()
    const { arena, store, session } = this.stores
    let sealed = false
    this.chunks.forEach((L, l) => {
      for (let ch = 0; ch < L.starts.length; ch++) arena.remove(chunkKey(session, l, ch))
      sealed ||= L.starts.length > 0
      L.starts.length = 0
      L.sizes.length = 0
      L.sealed = 0
    })
    if (sealed) store.dropSession(session)
    this.generation++
    for (const p of this.pendingSeals) p.catch(() => undefined) // a failed request's seals: already reported or stale
    this.pendingSeals = []
    this.tokens = 0
    this.counters = { ...emptyCounters(), stallsAtReset: this.upload.stalls }
  }

  /** Counters since the last reset. */
  stats(steps: number): TierStats {
    const k = this.counters
    const a = this.stores.arena.stats()
    const resident = this.caches.reduce((s, c) => s + c.resident, 0) * this.slotBytes
    return {
      policy: this.policy.mode,
      gpu: { budget_bytes: this.stores.gpuBudgetBytes, resident_bytes: resident, hits: k.gpuHits, misses: k.gpuMisses, bytes_read: k.gpuBytesRead },
      host: { budget_bytes: a.budgetBytes, resident_bytes: a.residentBytes, hits: k.hostHits, misses: k.hostMisses, bytes_read: k.hostBytesRead, bytes_written: k.hostWritten },
      disk: { hits: k.diskHits, bytes_read: k.diskBytesRead, bytes_written: k.diskWritten },
      chunk_tokens: this.slotTokens,
      chunks_sealed: k.chunksSealed,
      steps,
      windows: k.windows,
      chunks_selected_per_step: steps > 0 ? k.selectedDecode / steps / this.config.numLayers : 0,
      tokens_selected_per_step: steps > 0 ? k.selectedTokens / this.config.numLayers / steps : 0,
      time_ms: { select: k.selectMs, transfer: k.transferMs, seal: k.sealMs, attention: k.attentionMs },
      staging_waits: this.upload.stalls - k.stallsAtReset,
    }
  }

  /** Adds GPU time of decode attention passes (timestamp queries). */
  addAttentionMs(ms: number): void {
    this.counters.attentionMs += ms
  }

  /** Counts a decode step's selection (prefill windows are not steps). */
  countStep(l: number, chosen: ReadonlyArray<number>, selectMs: number): void {
    this.counters.selectedDecode += chosen.length
    const sizes = this.chunks[l].sizes
    for (const ch of chosen) this.counters.selectedTokens += sizes[ch]
    this.counters.selectMs += selectMs
  }

  destroy(): void {
    for (const a of this.abstracts) {
      a.amin.destroy()
      a.amax.destroy()
    }
    for (const p of this.pools) {
      p.k.destroy()
      p.v.destroy()
    }
    for (const b of [...this.jobs, this.sealScratch, this.chunkIds, this.scores, this.selectOut, this.entries, this.seqs, this.selectSeqs]) b.destroy()
    this.upload.destroy()
    this.readback.destroy()
  }
}

const emptyCounters = () => ({
  gpuHits: 0,
  gpuMisses: 0,
  gpuBytesRead: 0,
  hostHits: 0,
  hostMisses: 0,
  hostBytesRead: 0,
  hostWritten: 0,
  diskHits: 0,
  diskBytesRead: 0,
  diskWritten: 0,
  chunksSealed: 0,
  windows: 0,
  selected: 0,
  selectedDecode: 0,
  selectedTokens: 0,
  selectMs: 0,
  transferMs: 0,
  sealMs: 0,
  attentionMs: 0,
  stallsAtReset: 0,
})

const noPins: ReadonlySet<string> = new Set()

/** Disk-store failures as tier errors with stable codes. */
const tierErrorOf = (e: unknown): Error => {
  const code = (e as { code?: string }).code
  const message = (e as Error).message ?? String(e)
  switch (code) {
    case "chunk_corrupt":
    case "disk_full":
    case "kv_dir_unavailable":
    case "io_failed":
      return new KvTierError(code, message)
    case "chunk_missing":
    case "abstract_missing":
      return new KvTierError("chunk_missing", message)
    default:
      return e instanceof Error ? e : new Error(message)
  }
}
