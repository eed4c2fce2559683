// The tiered KV cache (LeoAM): the sequence's KV lives in chunks (chunks.ts), written
// through to the disk tier (segment files + LMDB) and cached in the host arena, both reached
// through TierIo, and, within a byte budget (layout.ts), in a per-layer GPU chunk cache.
// Each chunk has a min/max abstract per KV head, computed on the GPU when it is sealed
// (seal.ts), kept in LMDB under [session, layer, chunk] and, within the budget, on the GPU for
// scoring (abstract-cache.ts, select.ts; with groups, grouped-select.ts).
//
// GPU layout, per layer: one pool of KV blocks (the engine's paged layout) split into the
// tail (a ring of blocks the model writes new tokens into; the same physical blocks in
// every layer, so one slot per token serves all layers) and cache slots of one chunk each.
// Attention over the chosen chunks goes plan, then apply: kv/plan.ts plans the windows of
// chunks that fit in the cache at once (pure, over GpuSlots), and GpuCache (apply.ts)
// applies each window (evictions, fetches through the staging ring, the entries list or
// block table); a plan applies to the state it was made from, window after window, or not
// at all. The caller drives it; only this class's methods change the cache's state.
import type { DecodePlan, PlanPolicy, PrefillPlan } from "../../../kv/plan.ts"
import { checkQuantShape, type KvShape } from "../../../kv/quant.ts"
import { LocalTierIo, type TierIo } from "../../../kv/tier-io.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { storageBuffer } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import { UploadRing } from "../../staging.ts"
import { UploadScatter } from "../../staging-scatter.ts"
import { GpuCache } from "./apply.ts"
import { ChunkTables } from "./chunks.ts"
import { planChunks } from "../../../kv/chunk-plan.ts"
import { adaptiveOf, checkPolicyChange, minChunkTokens, type QuantSlots, quantSlots, tailSlackBlocks, tieredLayout, type TieredPolicy, type TierStores } from "./layout.ts"
import { AbstractCache } from "./abstract-cache.ts"
import { GroupedChoice } from "./grouped-select.ts"
import { Router } from "./route.ts"
import { budgetTokens, Selector, tieredPipelineKeys } from "./select.ts"
import type { StepEncoder } from "../manager.ts"
import { Sealer, type SealSource } from "./seal.ts"
import { SealQueue } from "./seal-queue.ts"
import { emptyCounters, tierStats, type TierStats } from "./stats.ts"
import { Recompute, type RecomputeSource } from "./recompute.ts"

/** Aim for this many decode-attention workgroups per window. */
const TARGET_WORKGROUPS = 256

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
  /** Decode's compressed cache slots over the same pool bytes (compression below 16 bits), else undefined. */
  readonly quant: QuantSlots | undefined
  readonly upload: UploadRing
  /** The ring's flushes as one copy and a scatter pass (its landing buffer is one upload slot's bytes), where the layout has room. */
  private readonly scatter: UploadScatter | undefined
  /** The chunk abstracts' GPU copy: all, or a budgeted cache, and the group abstracts. */
  readonly abstracts: AbstractCache
  /** Per layer: K and V pools of `physicalBlocks` blocks, (blocks, KV, BS, D) f16 (the engine's KvPool uses them). */
  readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>

  /** The chunk tables (tail geometry, per-layer chunks): read by the manager's layer-major prefill, which also extends them. */
  readonly tables: ChunkTables
  readonly cache: GpuCache // read by a lane moved to another budget share (reshare.ts), as io
  readonly io: TierIo
  private readonly sealer: Sealer
  private readonly selector: Selector
  private readonly grouped: GroupedChoice | undefined
  /** The pipelined step's GPU side: the slot map, the route pass, the choices on their way back. */
  readonly router: Router
  private readonly blockBytes: number
  counters = emptyCounters() // the request's (prefetch's gate reads the miss path's transfer ms per miss)
  private current: TieredPolicy
  private readonly shape: KvShape
  private readonly seals: SealQueue
  /** The manager's own session (requests without one): its chunks are dropped at reset. */
  private readonly scratch: string
  /** Recompute of disk chunks from hidden records (policy `recompute`): the layer-major prefill records them. */
  readonly recompute: Recompute

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    policy: TieredPolicy,
    private readonly stores: TierStores,
    options: { readonly blockTokens: number; readonly maxContext: number; readonly prefillChunk: number; readonly q: GPUBuffer; readonly model?: RecomputeSource },
  ) {
    const c = config
    const bs = options.blockTokens
    const layout = tieredLayout(config, policy, stores, options)
    this.current = policy
    this.shape = { kvHeads: c.numKvHeads, blockTokens: bs, headDim: c.headDim }
    if ((policy.compression ?? 16) !== 16) checkQuantShape(this.shape)
    this.io = stores.io ?? new LocalTierIo(stores.arena, stores.store, stores.session, this.shape)
    this.scratch = stores.session
    this.io.setHostEviction(policy.hostEviction)
    this.blockTokens = bs
    this.slotTokens = policy.chunkTokens
    this.slotBlocks = policy.chunkTokens / bs
    this.blockBytes = c.numKvHeads * bs * c.headDim * 2
    this.slotBytes = 2 * this.slotBlocks * this.blockBytes
    this.maxChunks = Math.ceil(options.maxContext / minChunkTokens(policy))
    this.tailBlocks = layout.tailChunks * this.slotBlocks + tailSlackBlocks(bs)
    this.cacheSlots = layout.cacheSlots
    this.physicalBlocks = this.tailBlocks + this.cacheSlots * this.slotBlocks
    this.tables = new ChunkTables(c.numLayers, bs, this.tailBlocks, this.blockBytes)
    const pool = (l: number, kv: string) => storageBuffer(device, `L${l} tiered ${kv} pool (tail + cache blocks, KV, BS, D) f16`, this.physicalBlocks * this.blockBytes)
    this.pools = Array.from({ length: c.numLayers }, (_, l) => ({ k: pool(l, "k"), v: pool(l, "v") }))
    this.scatter = layout.scatter ? new UploadScatter(device, pipelines.now(tieredPipelineKeys(c).scatter), layout.stagingSlotBytes) : undefined
    this.upload = new UploadRing(device, { slotBytes: layout.stagingSlotBytes, slots: layout.uploadSlots, label: "kv upload ring" }, this.scatter)
    this.abstracts = new AbstractCache(device, pipelines, c, layout.abstracts, this.io, policy.gpuEviction)
    this.sealer = new Sealer(device, pipelines, c, this.pools, this.abstracts, this.tables, this.io, { slotBytes: layout.stagingSlotBytes, slots: layout.readbackSlots }, this.slotBlocks, (policy.compression ?? 16) !== 16)
    this.seals = new SealQueue(this.sealer)
    this.selector = new Selector(device, pipelines, c, this.abstracts, options.q, this.maxChunks, bs)
    this.grouped = layout.abstracts.groupChunks > 0 ? new GroupedChoice(device, this.selector, this.abstracts) : undefined
    this.quant = quantSlots(policy, this.shape, this)
    this.recompute = new Recompute(device, pipelines, c, this.tables, this.pools, this.io, stores.store, options.model, policy, () => this.counters)
    const geometry = { pools: this.pools, cacheSlots: this.cacheSlots, slotBlocks: this.slotBlocks, slotBytes: this.slotBytes, shape: this.shape, quant: this.quant, peers: stores.peers, recompute: this.recompute }
    const maxEntries = this.tailBlocks + Math.max(this.cacheSlots, this.quant?.slots ?? 0) * this.slotBlocks
    const router = new Router(device, pipelines, c, this.maxChunks, { tables: this.tables, slotTokens: this.slotTokens, slotBlocks: this.slotBlocks, tailBlocks: this.tailBlocks, cacheSlots: this.quant?.slots ?? this.cacheSlots, scored: (n) => (this.counters.chunksScored += n) })
    this.cache = new GpuCache(device, geometry, this.tables, this.io, this.upload, maxEntries, (l, blockOf) => router.observe(l, blockOf))
    router.bind({ selection: this.selector.selection, chosen: this.selector.selectSeqs, entries: this.cache.entries, seqs: this.cache.seqs })
    this.router = router
  }

  // --- policy ----------------------------------------------------------------------

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
    this.io.setHostEviction(next.hostEviction)
    this.abstracts.eviction = next.gpuEviction
    this.recompute.setPolicy(next)
  }

  /** Throws what setPolicy would. */
  checkPolicy(next: TieredPolicy): void {
    checkPolicyChange(this.current, next, this.cacheSlots)
    if ((next.compression ?? 16) !== 16) checkQuantShape(this.shape)
  }

  private get planPolicy(): PlanPolicy {
    return { eviction: this.current.gpuEviction, mode: this.current.mode }
  }

  // --- sequence ----------------------------------------------------------------------

  get length(): number {
    return this.tables.tokens
  }

  /** Sealed chunks of layer l. */
  chunkCount(l: number): number {
    return this.tables.layers[l].starts.length
  }

  /** GPU memory this cache holds for KV: pools, staging and read-back rings, abstracts. */
  get gpuBytes(): number {
    return this.config.numLayers * this.physicalBlocks * 2 * this.blockBytes + this.recompute.gpuBytes + this.upload.bytes + (this.scatter?.bytes ?? 0) + this.sealer.readback.bytes + this.sealer.scratch.size + (this.sealer.quantized?.size ?? 0) + this.abstracts.gpuBytes
  }

  /** Tokens that can be appended before the next seal: what of the tail the unsealed tokens leave. */
  get appendRoom(): number {
    return this.tables.appendRoom
  }

  /** The physical slot (block * BS + offset) of the next token; it goes to the tail. */
  append(): number {
    return this.tables.append()
  }

  /** (blocks) vec2<u32> (physical block, tokens): the attention entries of the decode window just applied. */
  get entries(): GPUBuffer {
    return this.cache.entries
  }

  /** (1) vec2<u32> (first entry, entry count) of that window. */
  get seqs(): GPUBuffer {
    return this.cache.seqs
  }

  /**
   * Seals the chunks the tokens written complete, in every layer once all have written them (or,
   * `from`, in one layer, read from `source`: layer-major prefill): abstracts, GPU cache admission
   * by policy (leoam), write-through to host and disk. Resolves once the read-backs are queued.
   */
  seal(sizes?: ReadonlyArray<ReadonlyArray<number>>, from?: { readonly layer: number; readonly source: SealSource }): Promise<void> {
    // Planned sizes (adaptive chunking) cut only what they cover; without them, chunks of the slot size.
    const next = this.tables.layers.map(() => 0)
    // Adaptive caches seal decode's tokens in minimum chunks: they are the recent window, attended each step.
    const unplanned = minChunkTokens(this.current)
    const size = (l: number) => (sizes ? (sizes[l][next[l]++] ?? Number.POSITIVE_INFINITY) : unplanned)
    const fresh = from ? this.tables.cutLayer(from.layer, size) : this.tables.cut(size)
    if (fresh.length === 0) return Promise.resolve()
    const admit = this.current.mode === "leoam"
    const policy = this.planPolicy
    return this.seals.seal(fresh, this.current, this.counters, (f, bits) => (admit ? this.cache.admit(f.layer, f.chunk, policy, bits) : undefined), from?.source)
  }

  /** Adaptive chunking's bounds, or undefined for fixed chunks. */
  get adaptive() {
    return adaptiveOf(this.current)
  }

  /** Sealed tokens of layer l: the adaptive measure covers the tokens past them. */
  sealedOf(l: number): number {
    return this.tables.layers[l].sealed
  }

  /**
   * Seals under adaptive chunking: per layer, chunks planned from the attention mass of each
   * whole block past its sealed tokens (kv/chunk-plan.ts); blocks no chunk covers stay in the
   * tail. Blocks in the sink or the recent window (every step attends them whole) stay in
   * minimum chunks, so that they take no more of the budget than they must.
   */
  sealAdaptive(masses: ReadonlyArray<ArrayLike<number>>): void {
    const bounds = this.adaptive
    if (bounds === undefined) throw new RangeError("tiered KV: sealAdaptive without adaptive chunks")
    const bs = this.blockTokens
    const { sinkTokens, recentTokens } = this.current
    const tokens = this.tables.tokens
    this.seal(
      masses.map((m, l) => {
        const b0 = this.tables.layers[l].sealed / bs
        return planChunks(m, bs, bounds, (j) => (b0 + j) * bs < sinkTokens || (b0 + j + 1) * bs > tokens - recentTokens)
      }),
    )
  }

  /** Chunk abstracts the sequence holds (over all layers). */
  get abstractCount(): number {
    return this.tables.layers.reduce((n, L) => n + L.starts.length, 0)
  }

  /** Waits for the host and disk copies of sealed chunks (call before reading any tier). */
  settle(): Promise<void> {
    return this.recompute.ready().then(() => this.seals.settle(this.counters))
  }

  // --- selection ----------------------------------------------------------------------

  /** Tokens attended per step by the policy at the current length. */
  budgetTokens(): number {
    return budgetTokens(this.current, this.tables.tokens, this.slotTokens)
  }

  /** Whether this step must score and choose (else every sealed chunk is attended). */
  selects(): boolean {
    return this.current.mode === "leoam" && this.tables.tokens > this.budgetTokens()
  }

  /** Encodes layer l's choice into `selection` on the GPU alone (with groups: grouped-select.ts); returns how many chunks it chooses (grouped: at most), or -1 where only the host can choose. */
  encodeSelect(l: number, pass: GPUComputePassEncoder): number {
    const plan = this.selector.plan(this.tables.layers[l], this.tables.tokens, this.current, this.slotTokens)
    if (this.grouped?.needed(plan)) return this.grouped.encodeOnGpu(l, pass, plan, this.router, this.counters)
    this.counters.chunksScored += this.chunkCount(l)
    return this.selector.encode(l, pass, this.tables.layers[l], this.tables.tokens, this.current, this.slotTokens)
  }

  /**
   * Encodes layer l's choice into `selection`: the plain pass, or with groups or budgeted
   * abstracts the grouped choice (which may submit and wait for the groups kept). Returns how many chunks it chooses.
   */
  encodeChoice(l: number, step: StepEncoder): number | Promise<number> {
    const plan = this.selector.plan(this.tables.layers[l], this.tables.tokens, this.current, this.slotTokens)
    if (this.grouped?.needed(plan)) return this.grouped.encode(l, step, plan, this.counters)
    let count = 0
    step.compute((pass) => (count = this.encodeSelect(l, pass)))
    return count
  }

  /** The selection buffer (vec2<u32> (chunk, tokens) per chosen chunk) for read-back. */
  get selection(): GPUBuffer {
    return this.selector.selection
  }

  /** Every sealed chunk of layer l, in order (what offload-all and a budget larger than the context attend). */
  allChunks(l: number): number[] {
    return Array.from({ length: this.chunkCount(l) }, (_, i) => i)
  }

  /** Counts a decode step's selection (prefill windows are not steps). */
  countStep(l: number, chosen: ReadonlyArray<number>, selectMs: number): void {
    this.counters.selectedDecode += chosen.length
    const sizes = this.tables.layers[l].sizes
    for (const ch of chosen) this.counters.selectedTokens += sizes[ch]
    this.counters.selectMs += selectMs
  }

  // --- decode, pipelined: route on the GPU, read the choice back later ------------------------

  /** Layers a pipelined step may run ahead of the last one whose choice the host has checked (0: not pipelined). */
  get pipelineDepth(): number {
    // Budgeted abstracts come from LMDB through the host: no choice can be routed on the GPU alone.
    return this.current.mode === "leoam" && this.abstracts.layout.resident === "all" ? (this.current.pipelineDepth ?? 0) : 0
  }

  /** Counts a pipelined layer routed on the GPU. */
  countRouted(): void {
    this.counters.routedLayers++
  }

  /** Counts a rewind: a checked layer missed, and `layers` layers were computed in vain (it and those run ahead). */
  countRewind(layers: number): void {
    this.counters.rewinds++
    this.counters.rewoundLayers += layers
  }

  /** A routed layer's plan (one window) applied as by applyDecodeWindow; the route wrote the hits' entries, so `false` writes none, "loads" the misses'. */
  applyRouted(l: number, plan: DecodePlan, list: false | "loads"): Promise<number> {
    return this.cache.applyDecode(l, plan, 0, true, this.counters, list)
  }

  /** At a decode step's start: the switch to compressed slots, if due, fills them at once (GpuCache.warm). */
  warmDecode(): Promise<void> {
    return this.cache.warm(this.current, this.counters)
  }

  /** Prefetch: loads what of `chunks` layer l does not hold, evicting none of `keep` (GpuCache.prefetch). */
  prefetch(l: number, chunks: ReadonlyArray<number>, keep: ReadonlyArray<number>): Promise<{ chunks: number[]; bytes: number }> {
    return this.cache.prefetch(l, chunks, keep, this.planPolicy, this.counters)
  }

  // --- decode: plan, then apply window by window -----------------------------------------

  /** Plans layer l's decode attention over `chosen` sealed chunks plus the tail (changes nothing). */
  planDecode(l: number, chosen: ReadonlyArray<number>): DecodePlan {
    return this.cache.planDecode(l, chosen, this.planPolicy)
  }

  /**
   * Applies window i of layer l's plan (windows in order, right after planning): its
   * evictions, its loads (from the host arena or disk, through the staging ring, flushed),
   * importance, and the entries list (with the tail on the last window). Returns the entry
   * count to attend; after the last window an offload-all cache is empty again.
   */
  applyDecodeWindow(l: number, plan: DecodePlan, i: number): Promise<number> {
    return this.cache.applyDecode(l, plan, i, this.current.mode === "leoam", this.counters)
  }

  /** Splits of a window of `count` entries over decode-attention workgroups. */
  splitsOf(count: number, tileEntries: number, cap: number): { splits: number; entriesPerSplit: number } {
    const target = Math.max(1, Math.min(cap, Math.floor(TARGET_WORKGROUPS / this.config.numKvHeads)))
    const eps = Math.max(tileEntries, Math.ceil(Math.ceil(count / target) / tileEntries) * tileEntries)
    return { splits: Math.max(1, Math.ceil(count / eps)), entriesPerSplit: eps }
  }

  // --- prefill: plan, then apply window by window ------------------------------------------

  /** Plans layer l's prefill attention: every sealed chunk, then the tail up to `end` (default: all of it), in windows of consecutive chunks. */
  planPrefill(l: number, end?: number): PrefillPlan {
    return this.cache.planPrefill(l, this.planPolicy, end)
  }

  // --- layer-major prefill (engine/kv/tiered-layer-prefill.ts) ----------------------------

  /** Undoes a failed layer-major prefill: back to `length` tokens, the chunks sealed past it dropped from every tier. */
  rollBack(length: number): void {
    this.tables.rollBack(length, (l, ch) => this.unseal(l, ch))
  }

  /**
   * Applies window i of layer l's prefill plan: makes its chunks resident and writes their
   * part of the block table `table` ((logical blocks) u32 -> physical block; the tail's on
   * the last window). Returns the token range [k0, k1) the window attends.
   */
  applyPrefillWindow(l: number, plan: PrefillPlan, i: number, table: GPUBuffer): Promise<{ k0: number; k1: number; first: boolean; last: boolean }> {
    return this.cache.applyPrefill(l, plan, i, table, this.current.mode === "leoam", this.counters)
  }

  // --- lifecycle ----------------------------------------------------------------------

  /** Keeps the first `length` tokens; unseals chunks past them (their bytes are still in the tail). */
  truncate(length: number): void {
    this.tables.truncate(length, (l, ch) => this.unseal(l, ch))
  }

  /** Chunk ch of layer l leaves the sequence: out of the GPU cache, its abstract slot and the host arena. */
  private unseal(l: number, ch: number): void {
    this.cache.drop(l, ch)
    this.abstracts.drop(l, ch)
    this.io.forget(l, ch)
    this.recompute.unsealed(l, ch)
  }

  /**
   * Resumes the sequence whose chunks the disk store holds under this cache's session (one
   * written by an earlier request or process): the chunk tables from the LMDB chunk index
   * and the GPU abstracts rebuilt from the LMDB abstracts. Tokens after the last sealed
   * chunk were never written to disk, so the sequence resumes there. Returns its length.
   */
  adopt(): number {
    if (this.tables.tokens > 0) throw new RangeError("tiered KV: adopt wants an empty cache")
    const c = this.config
    const limits = { maxChunks: this.maxChunks, slotTokens: this.slotTokens, abstractBytes: c.numKvHeads * (c.headDim / 2) * 4 }
    return this.tables.adopt((l) => this.io.adoptLayer(l), `session ${this.io.session}`, limits, (l, amin, amax) => this.abstracts.adopt(l, amin, amax))
  }

  /**
   * Works on the stored session `id` from now on (a persistent session, not the scratch one):
   * forgets the current sequence and resumes what the tiers hold of `id`; returns its length.
   */
  openSession(id: string): number {
    this.reset()
    this.io.session = id
    try {
      return this.adopt()
    } catch (e) {
      this.tables.reset()
      this.io.session = this.scratch
      throw e
    }
  }

  /**
   * Leaves the stored session (after settle): sealed chunks past `keepTokens` (a question's) are dropped from host and disk, the rest stay there; back on the scratch session, empty.
   * `stay`: on the session still, its first `keepTokens` tokens where they are, GPU slots too (truncate's RangeError where the tail lost some).
   */
  closeSession(keepTokens: number, stay = false): void {
    if (this.io.session === this.scratch) return
    if (stay) this.truncate(Math.min(keepTokens, this.tables.tokens))
    const keep = this.tables.layers.map((L, l) => {
      let n = 0
      while (n < L.starts.length && L.starts[n] + L.sizes[n] <= keepTokens) n++
      for (let ch = n; ch < L.starts.length; ch++) this.io.forget(l, ch)
      return n
    })
    try {
      this.io.truncateSession(keep)
    } finally {
      if (!stay) this.reset()
      else this.counters = { ...emptyCounters(), stallsAtReset: this.upload.stalls }
    }
  }

  /**
   * Forgets the sequence: GPU cache, host entries and the scratch session's disk chunks. A
   * stored session's chunks stay in host and disk (closeSession trims them), and the cache
   * goes back to the scratch session.
   */
  reset(): void {
    this.cache.clear()
    this.abstracts.clear()
    const stored = this.io.session !== this.scratch
    if (!stored) this.tables.layers.forEach((L, l) => L.starts.forEach((_, ch) => this.io.forget(l, ch)))
    if (this.tables.reset() && !stored) this.io.dropSession()
    this.io.session = this.scratch
    this.seals.reset()
    this.counters = { ...emptyCounters(), stallsAtReset: this.upload.stalls }
  }

  /** Counters since the last reset. */
  stats(steps: number): TierStats {
    return this.recompute.stats(this.counters, tierStats(this.counters, {
      policy: this.current.mode,
      gpuBudgetBytes: this.stores.gpuBudgetBytes,
      gpuResidentBytes: this.cache.residentBytes,
      host: this.io.hostBytes(),
      chunkTokens: this.slotTokens,
      abstracts: this.abstractCount,
      diskStoredBytes: this.io.storedBytes(this.config.numLayers),
      layers: this.config.numLayers,
      steps,
      stalls: this.upload.stalls,
      compression: { bits: this.current.compression ?? 16, slotBits: this.quant?.bits ?? 16, gpuSlots: this.quant?.slots ?? this.cacheSlots },
      pipelineDepth: this.pipelineDepth,
      abstractCopy: { layout: this.abstracts.layout, gpuResident: this.abstracts.resident(this.abstractCount) },
    }))
  }

  /** Adds GPU time of decode attention passes (timestamp queries). */
  addAttentionMs(ms: number): void {
    this.counters.attentionMs += ms
  }

  destroy(): void {
    this.abstracts.destroy()
    this.grouped?.destroy()
    for (const p of this.pools) for (const b of [p.k, p.v]) b.destroy()
    this.cache.destroy()
    this.recompute.destroy()
    this.router.destroy()
    this.selector.destroy()
    this.sealer.destroy()
    this.upload.destroy()
    this.scatter?.destroy()
  }
}
