// The tiered manager: the forward pass's view of the tiered KV cache (engine/kv/tiered/).
// A decode step per layer reads select -> plan -> fetch -> attend: score and choose the
// sealed chunks against the query on the GPU and read the choice back (a few bytes), make
// the chosen chunks resident in the GPU cache (the tiers stage misses from the host arena
// or disk), and attend them plus the tail in windows when they do not fit at once; the
// windows' partials sit side by side for the model's combine. Prefill: tiered-prefill.ts.
// Pipelined (policy `pipeline`), a layer's choice is routed on the GPU (resident chunks
// attended at once) and read back up to `depth` layers later: all hits, it stands; a miss
// rewinds the step to that layer, which goes the unpipelined way. A layer expected to miss is
// routed too and completed by a combine (`combine`): its misses are loaded and attended into
// further partials while the hits compute. Prefetch (tiered/prefetch.ts) loads forecast
// chunks ahead. A window's uniforms and lists are written after the submit of the work that
// used their previous values; only this class changes its state.
import { type Dispatch, dispatchOf, Uniform } from "../buffers.ts"
import { ATTN_TILE } from "./pool.ts"
import { KvLayoutChange, TIER_PARTIALS, tieredDecodeKey, TieredKv, type TieredPolicy, type TierStores } from "./tiered/index.ts"
import type { KvApplies, KvContext, KvManager, KvStats, LayerPrefill, Rewind, StepEncoder } from "./manager.ts"
import { type ChoiceRead, readChoice, type RecordedChoice } from "./tiered/route.ts"
import { traceSpan } from "../../kv/step-trace.ts"
import { TieredPrefill } from "./tiered-prefill.ts"
import { AttnTiming } from "./tiered/attn-timing.ts"
import { Prefetcher } from "./tiered/prefetch.ts"

export class TieredManager implements KvManager<TieredPolicy> {
  readonly t: TieredKv // the cache (a lane moved to another budget share reads it: tiered/reshare.ts)
  /** Per layer: attn_decode over the tiers' entries of one window, into partials from its first split. */
  private readonly attnDecode: Dispatch[] = []
  private readonly uAttn: Uniform // attn_decode (H, KV, BS, entries per split, stride, scale, per-head lists, first split; QUANT: qbase, slot blocks, K and V slot words)
  private readonly selRead: GPUBuffer // (chunks) vec2<u32> MAP_READ copy of the selection
  /** Token-major prefill and its attention state (the layer-major prefill borrows it). */
  private readonly prefill: TieredPrefill
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
  /** Per layer: whether its last decode visit missed the GPU cache (then it is not run ahead). */
  private readonly missedLast: boolean[]
  /** Whether an unpipelined layer's last attention window is encoded but not submitted yet. */
  private openWindow = false
  /** The last layer this step routed (pipelined). */
  private routedThrough = 0
  /** A selection encoded (and its copy recorded) by attendRouted that the route could not take: its count, else -1. */
  private pendingSelect = -1
  /** GPU time of decode attention, where the device has timestamp queries. */
  private readonly timing: AttnTiming | undefined
  private pendingTiming: Promise<void> | undefined
  /** Whether this step completes layers expected to miss by a combine, and how many it did since the last reset. */
  private combining = false
  private combined = 0
  private readonly prefetch: Prefetcher

  constructor(
    private readonly ctx: KvContext,
    policy: TieredPolicy,
    stores: TierStores,
  ) {
    const { device, config: c, act } = ctx
    this.t = new TieredKv(device, ctx.pipelines, c, policy, stores, {
      blockTokens: ctx.blockTokens, maxContext: ctx.maxContext,
      prefillChunk: ctx.prefillChunk,
      q: act.q,
      model: ctx, // recompute's weights and kernel keys (policy `recompute`)
    })
    const t = this.t
    this.missedLast = Array.from({ length: c.numLayers }, () => false)
    this.tile = ATTN_TILE / ctx.blockTokens
    this.uAttn = new Uniform(device, "tier attn decode", "uuuuufuuuuuu")
    this.selRead = device.createBuffer({ label: "selected chunks read-back", size: Math.max(16, t.maxChunks * 8), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    this.prefill = new TieredPrefill(ctx, t)
    this.timing = AttnTiming.of(device)
    this.prefetch = new Prefetcher(device, ctx.pipelines, c, t, act.q, ctx.forecast)
    const key = tieredDecodeKey(ctx.keys.attnDecode, policy, ctx.blockTokens)
    for (const kvl of t.pools) {
      const entries: Array<readonly [number, GPUBuffer]> = [[0, this.uAttn.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, t.entries], [5, t.seqs], [6, act.partO], [7, act.partML]]
      this.attnDecode.push(dispatchOf(device, ctx.pipelines.now(key), entries, 1, c.numKvHeads))
    }
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

  /** Benchmarks (a step's timeline): keep the last timed step's (begin, end) stamps of its attention passes. */
  set keepStamps(keep: boolean) {
    if (this.timing) this.timing.keepStamps = keep
  }

  get lastStamps(): ReadonlyArray<readonly [bigint, bigint]> {
    return this.timing?.lastStamps ?? []
  }
  /** Benchmarks: the upload ring's counters (bytes staged, copies, flushes and their host ms). */
  get uploadRing(): TieredKv["upload"] {
    return this.t.upload
  }

  // --- decode ------------------------------------------------------------------

  async beginDecode(rewindable = false): Promise<void> {
    await this.settle()
    await this.t.warmDecode() // at the switch to compressed slots: filled before any layer routes or plans
    this.prefill.slotHost[0] = this.t.append()
    this.ctx.device.queue.writeBuffer(this.ctx.act.slot, 0, this.prefill.slotHost.buffer, 0, 4)
    this.selecting = this.t.selects()
    this.selectiveSteps += this.selecting ? 1 : 0
    this.depth = this.selecting && rewindable ? this.t.pipelineDepth : 0
    this.combining = this.selecting && this.t.pipelineDepth > 0 && this.t.policy.pipelineCombine !== false
    this.known = undefined
    this.prefetch.beginStep(this.selecting)
  }

  get rewinds(): boolean {
    return this.depth > 0
  }

  attendDecode(l: number, step: StepEncoder): Promise<void | Rewind> | void {
    // A routed layer's prefetch lands before its route reads its slots; an unpipelined layer plans after the loads anyway.
    const own = this.prefetch.enter(l)
    return own && (this.depth > 0 || this.combining) ? own.then(() => this.attendLayer(l, step)) : this.attendLayer(l, step)
  }

  private attendLayer(l: number, step: StepEncoder): Promise<void | Rewind> | void {
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
      return this.checkAll().then((r): Promise<void | Rewind> | Rewind => r ?? this.attendUnrouted(l, step))
    }
    return this.attendUnrouted(l, step)
  }

  /** A layer not run ahead: completed by a combine where it can be routed, else the unpipelined way. */
  private attendUnrouted(l: number, step: StepEncoder): Promise<void> {
    return (this.combining && this.pendingSelect < 0 && this.attendCombined(l, step)) || this.attendWaiting(l, step)
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
    const routed = this.route(l, step)
    if (!routed) return false
    const { count, read } = routed
    const cap = Math.max(1, Math.floor(TIER_PARTIALS / (Math.ceil(count / Math.max(1, t.cacheSlots)) + 1)))
    const s0 = this.attendWindow(l, step, t.router.routedEntries(l, count), cap, 0)
    // The submit carries the previous layer's post, which reads the combine's uniform as that layer set it.
    step.submit()
    this.prefetch.map()
    this.openWindow = false
    this.ctx.combine.set(c.numHeads, s0, c.headDim, TIER_PARTIALS)
    this.unchecked.push(t.router.reads.map(read()))
    this.routedThrough = l
    t.countRouted()
    return true
  }

  /**
   * Encodes layer l's select (and prefetch's forecast) and, where the route can hold the choice,
   * its route and the copies of its choice; else undefined, the selection kept for the unpipelined path.
   */
  private route(l: number, step: StepEncoder): { count: number; read: () => RecordedChoice } | undefined {
    const t = this.t
    // An unpipelined layer's last window is still in the open encoder: it must reach the
    // queue before this layer writes the attention's uniform.
    if (this.openWindow) step.submit()
    let count = 0
    let routed = false
    step.compute((pass) => {
      count = t.encodeSelect(l, pass)
      this.prefetch.encode(l, pass)
      if (count <= 0 || !t.router.canRoute(l, count)) return
      t.router.encode(l, pass, count)
      routed = true
    })
    if (routed) {
      let read: RecordedChoice | undefined
      step.record((encoder) => ((read = t.router.reads.record(encoder, l, count, t.selection, t.router.misses)), this.prefetch.record(encoder)))
      return { count, read: () => read! }
    }
    // The selection encoded is kept: the unpipelined path reads it back.
    step.record((encoder) => (count > 0 && encoder.copyBufferToBuffer(t.selection, 0, this.selRead, 0, count * 8), this.prefetch.record(encoder)))
    this.pendingSelect = count
    return undefined
  }

  /**
   * A layer completed by a combine: routed, its resident chunks attended at once while the host
   * reads its choice back, then its misses loaded and attended into the partials after the
   * hits'; the model's combine merges both (log-sum-exp), so nothing is computed again. Returns
   * undefined, the selection kept, where the route cannot hold the choice.
   */
  private attendCombined(l: number, step: StepEncoder): Promise<void> | undefined {
    const t = this.t
    const routed = this.route(l, step)
    if (!routed) return undefined
    const { count, read } = routed
    // The choice's copy goes alone, so that its read-back does not wait for the hits' attention.
    step.submit()
    const r = t.router.reads.map(read())
    this.prefetch.map()
    const cap = Math.max(1, Math.floor(TIER_PARTIALS / (Math.ceil(count / Math.max(1, t.cacheSlots)) + 1)))
    const s0 = this.attendWindow(l, step, t.router.routedEntries(l, count), cap, 0)
    step.submit()
    this.openWindow = false
    t.countRouted()
    return this.completeCombined(l, step, r, cap, s0)
  }

  private async completeCombined(l: number, step: StepEncoder, r: ChoiceRead, cap: number, s0: number): Promise<void> {
    const t = this.t
    const c = this.ctx.config
    const t0 = performance.now()
    await r.mapped
    traceSpan("choice wait", t0, l)
    const { chosen, misses } = t.router.reads.take(r)
    t.countStep(l, chosen, performance.now() - t0)
    await this.prefetch.idle()
    const plan = t.planDecode(l, chosen)
    if (plan.misses.length !== misses) throw new RangeError(`tiered KV: layer ${l}: the GPU slot map saw ${misses} misses, the cache ${plan.misses.length}`)
    this.missedLast[l] = misses > 0
    this.prefetch.visit(l, chosen, misses)
    const count = await t.applyRouted(l, plan, "loads")
    const s1 = count > 0 ? this.attendWindow(l, step, count, cap, s0) : s0
    if (count > 0) this.combined++
    this.ctx.combine.set(c.numHeads, s1, c.headDim, TIER_PARTIALS)
    this.openWindow = true
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
    await this.prefetch.idle()
    const plan = t.planDecode(r.layer, chosen)
    if (plan.misses.length !== misses) throw new RangeError(`tiered KV: layer ${r.layer}: the GPU slot map saw ${misses} misses, the cache ${plan.misses.length}`)
    this.missedLast[r.layer] = plan.misses.length > 0
    this.prefetch.visit(r.layer, chosen, misses)
    if (plan.misses.length === 0) {
      t.countStep(r.layer, chosen, waitMs)
      await t.applyRouted(r.layer, plan, false)
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
    await this.prefetch.idle()
    const plan = t.planDecode(l, chosen)
    this.missedLast[l] = plan.misses.length > 0
    this.prefetch.visit(l, chosen, plan.misses.length)
    for (let i = 0; i < plan.windows.length; i++) {
      const count = await t.applyDecodeWindow(l, plan, i)
      s0 = this.attendWindow(l, step, count, cap, s0)
      if (!plan.windows[i].last) step.submit()
    }
    // The next layer's pre goes into this step's encoder, submitted before that layer writes its lists and uniforms.
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
      count = await t.encodeChoice(l, step)
      step.compute((pass) => this.prefetch.encode(l, pass))
      step.record((encoder) => (count > 0 && encoder.copyBufferToBuffer(t.selection, 0, this.selRead, 0, count * 8), this.prefetch.record(encoder)))
    }
    step.submit()
    this.prefetch.map()
    this.openWindow = false
    const t0 = performance.now()
    const chosen = count > 0 ? await readChoice(this.selRead, count) : []
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
    const timestampWrites = this.timing?.claim()
    step.record((encoder) => {
      const pass = encoder.beginComputePass(timestampWrites ? { timestampWrites } : {})
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(d.x, d.y, d.z)
      pass.end()
    })
    return s0 + splits
  }

  endDecode(encoder: GPUCommandEncoder): void {
    this.timing?.resolve(encoder)
  }

  afterDecode(): void {
    this.pendingTiming = this.timing?.after()?.then((ms) => this.t.addAttentionMs(ms))
    this.steps++
    this.t.seal()
  }

  // --- prefill -----------------------------------------------------------------

  /** A pass fills what the tail has room for, so passes end on chunk boundaries. */
  prefillRoom(): number {
    return this.t.appendRoom
  }

  beginPrefill(m: number): void {
    this.prefill.begin(m)
  }

  attendPrefill(l: number, step: StepEncoder): Promise<void> {
    return this.prefill.attend(l, step)
  }

  afterPrefill(): void {
    this.prefill.after()
  }

  layerPrefill(n: number): LayerPrefill | undefined {
    return this.prefill.layerMajor(n)
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
    this.prefetch.reset()
    this.combined = 0
    this.prefill.reset()
    this.t.reset()
    this.steps = 0
  }

  /** Waits for everything a step left in flight: sealed chunks reaching host and disk, timings. */
  async settle(): Promise<void> {
    const timing = this.pendingTiming
    this.pendingTiming = undefined
    await timing
    await this.t.router.reads.settle()
    await this.prefetch.settle()
    await this.prefill.settle()
    await this.t.settle()
  }

  resume(): number {
    return this.t.adopt()
  }

  openSession(id: string): number {
    this.steps = 0
    return this.t.openSession(id)
  }

  closeSession(keepTokens: number, stay?: boolean): void {
    this.t.closeSession(keepTokens, stay)
    this.steps = 0
  }

  stats(): KvStats {
    return { selectiveSteps: this.selectiveSteps, tiers: this.prefetch.stats(this.t.stats(this.steps), this.combined) }
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
    this.prefill.destroy()
    for (const b of [this.selRead, this.uAttn.buffer]) b.destroy()
    this.timing?.destroy()
    this.prefetch.destroy()
  }
}
