// The tiered manager: the forward pass's view of the tiered KV cache (engine/kv/tiered/).
// A decode step per layer reads select -> plan -> fetch -> attend: score and choose the
// sealed chunks against the query on the GPU and read the choice back (a few bytes),
// make the chosen chunks resident in the GPU cache (the tiers stage misses from the host
// arena or disk), and attend them plus the tail in windows when they do not fit at once;
// the windows' partials sit side by side for the model's combine. Prefill attends the
// whole history in windows of resident chunks, its softmax state carried between them;
// a prompt of several passes goes layer-major instead (tiered-layer-prefill.ts).
// Pipelined (policy `pipeline`), a layer's choice is routed on the GPU (resident chunks attended
// at once) and read back up to `depth` layers later: all hits, it stands; a miss rewinds the
// step to that layer, which goes the unpipelined way. A window's uniforms and lists are written
// after the submit of the work that used their previous values; only this class changes its state.
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "../buffers.ts"
import { ATTN_TILE } from "./pool.ts"
import { windowedPrefillKey } from "../model-resources.ts"
import { KvLayoutChange, TIER_PARTIALS, tieredDecodeKey, TieredKv, type TieredPolicy, type TierStores } from "./tiered/index.ts"
import { PREFILL_ROWS } from "./full.ts"
import type { KvApplies, KvContext, KvManager, KvStats, LayerPrefill, Rewind, StepEncoder } from "./manager.ts"
import type { ChoiceRead } from "./tiered/route.ts"
import { traceSpan } from "../../kv/step-trace.ts"
import { PrefillMass } from "./tiered/mass.ts"
import { TieredLayerPrefill } from "./tiered-layer-prefill.ts"

/** Timestamp queries per decode step (two per attention window; later windows go untimed). */
const MAX_QUERIES = 512

/** Window flags of the windowed prefill attention: the first window starts, the last one writes out. */
const FIRST = 1
const LAST = 2

export class TieredManager implements KvManager<TieredPolicy> {
  private readonly t: TieredKv
  /** Per layer: attn_decode over the tiers' entries of one window, into partials from its first split. */
  private readonly attnDecode: Dispatch[] = []
  /** Per layer: [windowed attn_prefill over the block table]. */
  private readonly attnPrefill: Array<Dispatch[]> = []
  private readonly uAttn: Uniform // attn_decode (H, KV, BS, entries per split, stride, scale, per-head lists, first split; QUANT: qbase, slot blocks, K and V slot words)
  private readonly uWindow: Uniform // windowed attn_prefill (M, H, KV, BS, pos0, scale, k0, k1, flags)
  private readonly state: GPUBuffer // (chunk, H, D + 2) f32 prefill softmax state between windows
  private readonly table: GPUBuffer // (blocks) u32 logical -> physical block of the current prefill window
  private readonly selRead: GPUBuffer // (chunks) vec2<u32> MAP_READ copy of the selection
  private readonly slotHost: Uint32Array // (chunk) u32, host copy of act.slot
  private readonly tile: number
  /** Decode steps since the last reset, and since construction those that selected. */
  private steps = 0
  private selectiveSteps = 0
  /** Whether this step scores and chooses (else every sealed chunk is attended). */
  private selecting = false
  /** This step's pipeline depth: layers run ahead of the last checked choice (0: each layer waits for its own). */
  private depth = 0
  /** Pipelined layers encoded and submitted whose choice the host has not checked yet, oldest first. */
  private unchecked: ChoiceRead[] = []
  /** A layer rewound to, and its choice (read back already): it is attended the unpipelined way. */
  private known: { readonly layer: number; readonly chosen: number[]; readonly waitMs: number } | undefined
  /** The current prefill pass: tokens, first position, attention workgroups. */
  private pass = { m: 0, pos0: 0, groups: 0 }
  /** Per layer: whether its last decode visit missed the GPU cache (then it is not run ahead). */
  private readonly missedLast: boolean[]
  /** Whether an unpipelined layer's last attention window is encoded but not submitted yet. */
  private openWindow = false
  /** The last layer this step routed (pipelined). */
  private routedThrough = 0
  /** A selection encoded (and its copy recorded) by attendRouted that the route could not take: its count, else -1. */
  private pendingSelect = -1
  /** GPU time of decode attention, where the device has timestamp queries. */
  private readonly timing: { readonly querySet: GPUQuerySet; readonly resolve: GPUBuffer; readonly read: GPUBuffer } | undefined
  private queries = 0
  private resolved = 0
  /** Benchmarks (a step's timeline): keep the last timed step's (begin, end) stamps of its attention passes. */
  keepStamps = false
  lastStamps: ReadonlyArray<readonly [bigint, bigint]> = []
  private pendingTiming: Promise<void> | undefined
  /** Adaptive chunking: the prefill passes' attention measure, and the last pass's masses on their way back (sealed at settle). */
  private readonly mass: PrefillMass | undefined
  private pendingMass: Promise<Float32Array[]> | undefined

  constructor(
    private readonly ctx: KvContext,
    policy: TieredPolicy,
    stores: TierStores,
  ) {
    const { device, config: c, act } = ctx
    this.t = new TieredKv(device, ctx.pipelines, c, policy, stores, {
      blockTokens: ctx.blockTokens,
      maxContext: ctx.maxContext,
      prefillChunk: ctx.prefillChunk,
      q: act.q,
    })
    const t = this.t
    this.missedLast = Array.from({ length: c.numLayers }, () => false)
    this.tile = ATTN_TILE / ctx.blockTokens
    this.uAttn = new Uniform(device, "tier attn decode", "uuuuufuuuuuu")
    this.uWindow = new Uniform(device, "tier attn prefill window", "uuuuufuuuuuu")
    this.state = storageBuffer(device, "prefill attention state (chunk, H, D + 2) f32", ctx.prefillChunk * c.numHeads * (c.headDim + 2) * 4)
    this.table = storageBuffer(device, "tier prefill block table (blocks) u32", Math.ceil(ctx.maxContext / ctx.blockTokens) * 4)
    this.selRead = device.createBuffer({ label: "selected chunks read-back", size: Math.max(16, t.maxChunks * 8), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    this.slotHost = new Uint32Array(ctx.prefillChunk)
    this.timing = device.features.has("timestamp-query")
      ? {
          querySet: device.createQuerySet({ label: "tier attention timestamps", type: "timestamp", count: MAX_QUERIES }),
          resolve: device.createBuffer({ label: "tier timestamps resolved", size: MAX_QUERIES * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
          read: device.createBuffer({ label: "tier timestamps read-back", size: MAX_QUERIES * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
        }
      : undefined
    this.mass = t.adaptive ? new PrefillMass(device, ctx.pipelines, c, ctx.blockTokens, t.tailBlocks, act.q, t.pools) : undefined
    const windowKey = windowedPrefillKey(ctx.keys.attnPrefill)
    t.pools.forEach((kvl) => {
      const mk = (key: typeof windowKey, entries: Array<readonly [number, GPUBuffer]>): Dispatch => dispatchOf(device, ctx.pipelines.now(key), entries, 1, c.numKvHeads)
      this.attnDecode.push(mk(tieredDecodeKey(ctx.keys.attnDecode, policy), [[0, this.uAttn.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, t.entries], [5, t.seqs], [6, act.partO], [7, act.partML]]))
      this.attnPrefill.push([mk(windowKey, [[0, this.uWindow.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, this.table], [5, act.attn], [6, this.state]])])
    })
  }

  get length(): number {
    return this.t.length
  }

  get pools(): TieredKv["pools"] {
    return this.t.pools
  }

  get gpuBytes(): number {
    return this.t.gpuBytes
  }

  // --- decode ------------------------------------------------------------------

  async beginDecode(rewindable = false): Promise<void> {
    await this.settle()
    this.slotHost[0] = this.t.append()
    this.ctx.device.queue.writeBuffer(this.ctx.act.slot, 0, this.slotHost.buffer, 0, 4)
    this.selecting = this.t.selects()
    this.selectiveSteps += this.selecting ? 1 : 0
    this.depth = this.selecting && rewindable ? this.t.pipelineDepth : 0
    this.known = undefined
  }

  get rewinds(): boolean {
    return this.depth > 0
  }

  attendDecode(l: number, step: StepEncoder): Promise<void | Rewind> | void {
    if (this.known?.layer === l) {
      const { chosen, waitMs } = this.known
      this.known = undefined
      step.submit()
      this.openWindow = false
      this.t.countStep(l, chosen, waitMs)
      return this.attendChosen(l, step, chosen)
    }
    // A layer that missed at its last visit likely misses again: it waits for its own choice.
    if (this.depth > 0 && !this.missedLast[l] && this.attendRouted(l, step)) {
      return this.unchecked.length > this.depth ? this.checkOldest() : undefined
    }
    if (this.unchecked.length > 0) {
      // Layers run ahead must stand before this one changes the cache by its choice.
      step.submit()
      return this.checkAll().then((r): Promise<void | Rewind> | Rewind => r ?? this.attendWaiting(l, step))
    }
    return this.attendWaiting(l, step)
  }

  /** The unpipelined layer: its choice read back (the host waits), then planned, fetched and attended. */
  private attendWaiting(l: number, step: StepEncoder): Promise<void> {
    return this.select(l, step).then((chosen) => this.attendChosen(l, step, chosen))
  }

  /**
   * Pipelined: scores, selects and routes layer l's choice on the GPU and attends the resident
   * chunks at once (as the unpipelined step attends a choice that is all hits: the same
   * entries, splits and partials), copying the choice aside to be checked later. Returns
   * false, encoding nothing, where the route cannot hold the choice.
   */
  private attendRouted(l: number, step: StepEncoder): boolean {
    const t = this.t
    const c = this.ctx.config
    // An unpipelined layer's last window is still in the open encoder: it must reach the
    // queue before this layer writes the attention's uniform.
    if (this.openWindow) step.submit()
    let count = 0
    let routed = false
    step.compute((pass) => {
      count = t.encodeSelect(l, pass)
      if (count === 0 || !t.router.canRoute(l, count)) return
      t.router.encode(l, pass, count)
      routed = true
    })
    if (!routed) {
      // The selection encoded is kept: the unpipelined path reads it back.
      step.record((encoder) => count > 0 && encoder.copyBufferToBuffer(t.selection, 0, this.selRead, 0, count * 8))
      this.pendingSelect = count
      return false
    }
    let read: { layer: number; count: number; buffer: GPUBuffer } | undefined
    step.record((encoder) => (read = t.router.reads.record(encoder, l, count, t.selection, t.router.misses)))
    const cap = Math.max(1, Math.floor(TIER_PARTIALS / (Math.ceil(count / Math.max(1, t.cacheSlots)) + 1)))
    const s0 = this.attendWindow(l, step, t.router.routedEntries(l, count), cap, 0)
    // The submit carries the previous layer's post, which reads the combine's uniform as that layer set it.
    step.submit()
    this.openWindow = false
    this.ctx.combine.set(c.numHeads, s0, c.headDim, TIER_PARTIALS)
    this.unchecked.push(t.router.reads.map(read!))
    this.routedThrough = l
    t.countRouted()
    return true
  }

  /**
   * Checks the oldest unchecked layer's choice against the GPU cache: all hits, and its
   * attention stands (its accesses and importance are applied as the unpipelined step would);
   * a miss, and every layer from it on is computed again (Rewind), it the unpipelined way.
   */
  private async checkOldest(): Promise<void | Rewind> {
    const t = this.t
    const r = this.unchecked.shift()!
    const t0 = performance.now()
    await r.mapped
    const waitMs = performance.now() - t0
    traceSpan("choice wait", t0, r.layer)
    const { chosen, misses } = t.router.reads.take(r)
    const plan = t.planDecode(r.layer, chosen)
    if (plan.misses.length !== misses) {
      throw new RangeError(`tiered KV: layer ${r.layer}: the GPU slot map saw ${misses} misses, the cache ${plan.misses.length}`)
    }
    this.missedLast[r.layer] = plan.misses.length > 0
    if (plan.misses.length === 0) {
      t.countStep(r.layer, chosen, waitMs)
      await t.applyVerified(r.layer, plan)
      return
    }
    for (const later of this.unchecked) t.router.reads.discard(later)
    this.unchecked = []
    this.pendingSelect = -1 // a selection encoded after the rewound layer is stale
    this.known = { layer: r.layer, chosen, waitMs }
    t.countRewind(this.routedThrough - r.layer + 1)
    return { rewind: r.layer }
  }

  endLayers(step: StepEncoder): Promise<void | Rewind> | void {
    if (this.unchecked.length === 0) return
    step.submit()
    return this.checkAll()
  }

  private async checkAll(): Promise<void | Rewind> {
    while (this.unchecked.length > 0) {
      const r = await this.checkOldest()
      if (r) return r
    }
  }

  /** Attends layer l's chosen chunks: plan, then window by window (fetching misses), then the combine's uniform. */
  private async attendChosen(l: number, step: StepEncoder, chosen: ReadonlyArray<number>): Promise<void> {
    const t = this.t
    const c = this.ctx.config
    // Partials are shared out among the windows the chosen chunks can need.
    const windows = Math.ceil(chosen.length / Math.max(1, t.cacheSlots)) + 1
    const cap = Math.max(1, Math.floor(TIER_PARTIALS / windows))
    let s0 = 0
    const plan = t.planDecode(l, chosen)
    this.missedLast[l] = plan.misses.length > 0
    for (let i = 0; i < plan.windows.length; i++) {
      const count = await t.applyDecodeWindow(l, plan, i)
      s0 = this.attendWindow(l, step, count, cap, s0)
      if (!plan.windows[i].last) step.submit()
    }
    // The next layer's pre goes into this step's encoder, which is submitted before that
    // layer writes its own lists and uniforms.
    this.ctx.combine.set(c.numHeads, s0, c.headDim, TIER_PARTIALS)
    this.openWindow = true
  }

  /** Layer l's chosen sealed chunks: scored and selected on the GPU and read back, or all of them. */
  private async select(l: number, step: StepEncoder): Promise<number[]> {
    const t = this.t
    if (!this.selecting) {
      step.submit()
      const chosen = t.allChunks(l)
      t.countStep(l, chosen, 0)
      return chosen
    }
    let count = this.pendingSelect
    this.pendingSelect = -1
    if (count < 0) {
      step.compute((pass) => (count = t.encodeSelect(l, pass)))
      step.record((encoder) => count > 0 && encoder.copyBufferToBuffer(t.selection, 0, this.selRead, 0, count * 8))
    }
    step.submit()
    this.openWindow = false
    const t0 = performance.now()
    const chosen = count > 0 ? await this.readChoice(count) : []
    traceSpan("choice wait", t0, l)
    t.countStep(l, chosen, performance.now() - t0)
    return chosen
  }

  /**
   * Attends one window of `count` entries (the tiers wrote them) into the partials from
   * split s0 on, in a pass of its own, timed on the GPU while query slots last. Returns
   * the next free split.
   */
  private attendWindow(l: number, step: StepEncoder, count: number, cap: number, s0: number): number {
    const c = this.ctx.config
    const { splits, entriesPerSplit } = this.t.splitsOf(count, this.tile, cap)
    if (s0 + splits > TIER_PARTIALS) throw new RangeError(`layer ${l}: attention needs more than ${TIER_PARTIALS} partials`)
    const qs = this.t.quant
    this.uAttn.set(c.numHeads, c.numKvHeads, this.t.blockTokens, entriesPerSplit, TIER_PARTIALS, 1 / Math.sqrt(c.headDim), 0, s0, qs?.qbase ?? 0, this.t.slotBlocks, qs?.kSlotWords ?? 0, qs?.vSlotWords ?? 0)
    const d = this.attnDecode[l]
    d.x = splits
    const timing = this.timing
    const timed = timing !== undefined && this.queries + 2 <= MAX_QUERIES
    const q = this.queries
    if (timed) this.queries += 2
    step.record((encoder) => {
      const pass = encoder.beginComputePass(timed ? { timestampWrites: { querySet: timing.querySet, beginningOfPassWriteIndex: q, endOfPassWriteIndex: q + 1 } } : {})
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(d.x, d.y, d.z)
      pass.end()
    })
    return s0 + splits
  }

  endDecode(encoder: GPUCommandEncoder): void {
    this.resolved = this.queries
    if (this.timing && this.resolved > 0) {
      encoder.resolveQuerySet(this.timing.querySet, 0, this.resolved, this.timing.resolve, 0)
      encoder.copyBufferToBuffer(this.timing.resolve, 0, this.timing.read, 0, this.resolved * 8)
    }
  }

  afterDecode(): void {
    this.queries = 0
    if (this.timing && this.resolved > 0) this.pendingTiming = this.readTiming(this.timing.read, this.resolved)
    this.resolved = 0
    this.steps++
    this.t.seal()
  }

  /** Adds up a step's (begin, end) timestamp pairs into the cache's attention time. */
  private async readTiming(read: GPUBuffer, queries: number): Promise<void> {
    await read.mapAsync(GPUMapMode.READ, 0, queries * 8)
    const stamps = new BigUint64Array(read.getMappedRange(0, queries * 8))
    let ns = 0
    for (let i = 0; i < queries; i += 2) if (stamps[i + 1] > stamps[i]) ns += Number(stamps[i + 1] - stamps[i])
    if (this.keepStamps) this.lastStamps = Array.from({ length: queries / 2 }, (_, i) => [stamps[2 * i], stamps[2 * i + 1]] as const)
    read.unmap()
    this.t.addAttentionMs(ns / 1e6)
  }

  private async readChoice(count: number): Promise<number[]> {
    await this.selRead.mapAsync(GPUMapMode.READ, 0, count * 8)
    const view = new Uint32Array(this.selRead.getMappedRange(0, count * 8))
    const out = new Array<number>(count)
    for (let i = 0; i < count; i++) out[i] = view[i * 2]
    this.selRead.unmap()
    return out
  }

  // --- prefill -----------------------------------------------------------------

  /** A pass fills what the tail has room for, so passes end on chunk boundaries. */
  prefillRoom(): number {
    return this.t.appendRoom
  }

  beginPrefill(m: number): void {
    const c = this.ctx.config
    const pos0 = this.t.length
    for (let i = 0; i < m; i++) this.slotHost[i] = this.t.append()
    this.ctx.device.queue.writeBuffer(this.ctx.act.slot, 0, this.slotHost.buffer, 0, m * 4)
    this.pass = { m, pos0, groups: Math.ceil((m * (c.numHeads / c.numKvHeads)) / PREFILL_ROWS) }
  }

  /** Every sealed chunk, then the tail, in windows of resident chunks (each its own submit). */
  async attendPrefill(l: number, step: StepEncoder): Promise<void> {
    const c = this.ctx.config
    const { m, pos0, groups } = this.pass
    step.submit()
    this.mass?.encode(l, (d) => step.encode(d), this.pass, this.t.sealedOf(l))
    const plan = this.t.planPrefill(l)
    for (let i = 0; i < plan.windows.length; i++) {
      const { k0, k1, first, last } = await this.t.applyPrefillWindow(l, plan, i, this.table)
      this.uWindow.set(m, c.numHeads, c.numKvHeads, this.t.blockTokens, pos0, 1 / Math.sqrt(c.headDim), k0, k1, (first ? FIRST : 0) | (last ? LAST : 0))
      const d = this.attnPrefill[l]
      d[0].x = groups
      step.encode(d)
      step.submit()
    }
  }

  afterPrefill(): void {
    // Adaptive chunks are cut from the pass's measure once it is back (settle, before the next pass).
    if (this.mass) {
      this.pendingMass = this.mass.collect()
      this.pendingMass.catch(() => undefined) // awaited by settle
    } else this.t.seal()
  }

  /**
   * Layer-major where the prompt needs more than one pass (token-major ones re-read what earlier
   * ones sealed). Seals come from its layer buffer at 16 bits in fixed chunks (the GPU quantizer
   * and the adaptive measure read the tail ring), so compression and adaptive chunks go token-major.
   */
  layerPrefill(n: number): LayerPrefill | undefined {
    const layers = this.t.tables.layers
    if ((this.t.policy.compression ?? 16) !== 16 || this.mass) return undefined
    if (n <= this.t.appendRoom || layers.some((L) => L.sealed !== layers[0].sealed)) return undefined
    const shared = { uWindow: this.uWindow, state: this.state, table: this.table, attnPool: this.attnPrefill, slotHost: this.slotHost }
    return new TieredLayerPrefill(this.ctx, this.t, shared, n)
  }

  // --- policy and sequence -------------------------------------------------------

  /** Selection and eviction change at the next step; the mode and the chunk size are the cache's layout. */
  applies(next: TieredPolicy): KvApplies {
    try {
      this.t.checkPolicy(next)
    } catch (e) {
      if (e instanceof KvLayoutChange) return "next_request"
      throw e
    }
    return "next_step"
  }

  swap(next: TieredPolicy): void {
    this.t.setPolicy(next)
  }

  truncate(length: number): void {
    this.t.truncate(length)
  }

  reset(): void {
    // A step that failed midway leaves choices unchecked: their read-backs come back unread.
    for (const r of this.unchecked) this.t.router.reads.discard(r)
    this.unchecked = []
    this.known = undefined
    this.pendingSelect = -1
    this.missedLast.fill(false)
    // A pass's measure still on its way belongs to the old sequence (its buffer unmaps when it lands).
    this.pendingMass = undefined
    this.t.reset()
    this.steps = 0
  }

  /** Waits for everything a step left in flight: sealed chunks reaching host and disk, timings. */
  async settle(): Promise<void> {
    const timing = this.pendingTiming
    this.pendingTiming = undefined
    await timing
    await this.t.router.reads.settle()
    const mass = this.pendingMass
    this.pendingMass = undefined
    if (mass) this.t.sealAdaptive(await mass)
    await this.t.settle()
  }

  resume(): number {
    return this.t.adopt()
  }

  openSession(id: string): number {
    this.steps = 0
    return this.t.openSession(id)
  }

  closeSession(keepTokens: number): void {
    this.t.closeSession(keepTokens)
    this.steps = 0
  }

  stats(): KvStats {
    return { selectiveSteps: this.selectiveSteps, tiers: this.t.stats(this.steps) }
  }

  /** Batches of what the tail holds, each filled, appended and sealed through the real path. */
  async appendSynthetic(tokens: number, fill: (bytes: number, batch: number) => void): Promise<void> {
    const t = this.t
    const tailBytes = t.tailBlocks * (t.slotBytes / 2 / t.slotBlocks)
    for (let done = 0, batch = 0; done < tokens; batch++) {
      const n = Math.min(t.appendRoom, tokens - done)
      fill(tailBytes, batch)
      for (let i = 0; i < n; i++) t.append()
      t.seal()
      await t.settle()
      done += n
    }
  }

  destroy(): void {
    this.t.destroy()
    this.mass?.destroy()
    for (const b of [this.state, this.table, this.selRead, this.uAttn.buffer, this.uWindow.buffer]) b.destroy()
    this.timing?.querySet.destroy()
    this.timing?.resolve.destroy()
    this.timing?.read.destroy()
  }
}
