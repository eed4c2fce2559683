// The GPU chunk cache of every layer, as plans change it: owns each layer's GpuSlots, the
// layer-visit clock and the attention entries list. It makes no choice of its own: kv/plan.ts
// plans (purely, over a clone of the slots), this applies window after window: evictions,
// loads fetched through TierIo into the staging ring (flushed per window), importance,
// then the entries list (decode) or block table (prefill). A plan applies only in order,
// to the state it was made from; a failed load frees the window's slots again.
// With quantized slots (layout.ts QuantSlots), prefill and decode use the same pool bytes as
// fp16 slots and as compressed slots: the cache empties at each switch between them, and
// decode's compressed slots are filled at once after the switch (warm, warm.ts's order).
import { GpuSlots, pinKey, type SlotEntry, type SlotObserver } from "../../../kv/gpu-slots.ts"
import { applyToSlots, type DecodePlan, planDecode, planPrefill, type PlanPolicy, type Placed, type PrefillPlan, scoreWindow, type SlotWindow } from "../../../kv/plan.ts"
import { chunkBytesAt, dequantizeInto, type KvBits, type KvShape } from "../../../kv/quant.ts"
import { traceSpan } from "../../../kv/step-trace.ts"
import type { TierIo } from "../../../kv/tier-io.ts"
import { storageBuffer } from "../../buffers.ts"
import type { UploadRing } from "../../staging.ts"
import type { ChunkTables } from "./chunks.ts"
import type { QuantSlots, TieredPolicy } from "./layout.ts"
import { quantLoads } from "./quant-loads.ts"
import type { PeerLink, TierPeers } from "./peers.ts"
import type { Recompute } from "./recompute.ts"
import type { TierCounters } from "./stats.ts"
import { warmOrder } from "./warm.ts"

/**
 * Who is told of a layer's slot changes (the pipelined step's GPU slot map): given the
 * attention entry of a slot's first block, fp16 (its pool block) or compressed (slot *
 * slotBlocks, its bits in the top byte), and told again once a compressed chunk's bits are known.
 */
export type CacheObserver = SlotObserver & { held(chunk: number, slot: number): void }

/** Where a sealed chunk admitted to a compressed slot goes: byte offsets of its K part in the K pool and V part in the V pool. */
export interface QuantAdmission {
  readonly k: number
  readonly v: number
}

export interface CacheGeometry {
  /** Per layer: K and V pools, (blocks, KV, BS, D) f16: the tail ring's blocks, then the slots'. */
  readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>
  readonly cacheSlots: number
  readonly slotBlocks: number
  readonly slotBytes: number
  /** The KV geometry (to dequantize chunks the tiers hold at fewer bits). */
  readonly shape: KvShape
  /** Decode's compressed slots over the same bytes, when the policy compresses. */
  readonly quant?: QuantSlots
  /** The node's tiered lanes: chunks a peer holds with the same stored bytes are copied from its slot, not uploaded (peers.ts). */
  readonly peers?: TierPeers
  /** Recompute of disk chunks from their hidden records (policy `recompute`). */
  readonly recompute?: Recompute
}

export class GpuCache {
  /** (blocks) vec2<u32> (physical block, tokens): the entries of the decode window being applied. */
  readonly entries: GPUBuffer
  /** (1) vec2<u32> (first entry, entry count) of that window. */
  readonly seqs: GPUBuffer
  private slots: GpuSlots[]
  /** Whose slots these are: prefill's fp16 ones or, with quantized slots, decode's. */
  private phase: "prefill" | "decode" = "prefill"
  /** Per layer, in decode's quantized slots: the bits each resident chunk is held at. */
  private readonly heldBits: Array<Map<number, KvBits>>
  private readonly entryHost: Uint32Array
  /** Layer visits: each plan's tick, and each admission's; the recency clock of the slots. */
  private tick = 0
  /** Per layer, the plan being applied and its next window. */
  private readonly progress: Array<{ plan: object; next: number } | undefined>
  /** Per layer: chunks placed whose load is not flushed yet (no peer may copy them). */
  private readonly loading: Array<Set<number>>
  /** Per layer: chunks whose slot holds K/V recomputed from hidden states (recompute.ts), not the stored bytes. */
  private readonly recomputed: Array<Set<number>>
  private readonly peer: PeerLink | undefined
  /** Per layer, the observer of its current slots. */
  private readonly observers: Array<CacheObserver | undefined> = []
  /** Bytes of a compressed chunk by tokens * 32 + bits (heldBytes). */
  private readonly heldSizes = new Map<number, number>()

  constructor(
    private readonly device: GPUDevice,
    private readonly g: CacheGeometry,
    private readonly tables: ChunkTables,
    private readonly io: TierIo,
    private readonly upload: UploadRing,
    /** The most entries of a window: every block of the pool. */
    maxEntries: number,
    /** Who is told of each layer's slot changes (the pipelined step's GPU slot map), given a slot's first entry (CacheObserver). */
    private readonly observe?: (l: number, entryOf: (slot: number, chunk: number) => number) => CacheObserver,
  ) {
    this.slots = g.pools.map((_, l) => new GpuSlots(g.cacheSlots, g.slotBytes, this.observerOf(l)))
    this.heldBits = g.pools.map(() => new Map())
    this.progress = g.pools.map(() => undefined)
    this.loading = g.pools.map(() => new Set())
    this.recomputed = g.pools.map(() => new Set())
    this.peer = g.peers?.join({ device, session: () => io.session, blockBytes: tables.blockBytes, pools: g.pools, residentBlock: (l, ch) => this.residentBlock(l, ch) })
    this.entries = storageBuffer(device, "tier attention entries (blocks) vec2<u32>", maxEntries * 8)
    this.seqs = storageBuffer(device, "tier attention seqs (1) vec2<u32>", 16)
    this.entryHost = new Uint32Array(maxEntries * 2)
  }

  private observerOf(l: number): SlotObserver | undefined {
    this.observers[l] = this.observe?.(l, (slot, chunk) => this.entryOf(l, slot, chunk))
    return this.observers[l]
  }

  /** The attention entry of slot `slot`'s first block: its pool block, or in compressed slots slot * slotBlocks with the chunk's bits in the top byte. */
  private entryOf(l: number, slot: number, chunk: number): number {
    const q = this.g.quant
    if (q === undefined || this.phase === "prefill") return this.blockOf(slot)
    return (slot * this.g.slotBlocks) | ((this.heldBits[l].get(chunk) ?? q.bits) << 24)
  }

  /** Records the bits compressed chunk ch of layer l is held at (and tells the slot map). */
  private hold(l: number, ch: number, slot: number, bits: KvBits): void {
    this.heldBits[l].set(ch, bits)
    this.observers[l]?.held(ch, slot)
  }

  /** The first pool block of cache slot `slot`. */
  blockOf(slot: number): number {
    return this.tables.tailBlocks + slot * this.g.slotBlocks
  }

  /** The first pool block of chunk ch of layer l where an fp16 slot holds it and its bytes are in the queue (what a peer may copy). */
  residentBlock(l: number, ch: number): number | undefined {
    const e = this.quantized || this.loading[l].has(ch) || this.recomputed[l].has(ch) ? undefined : this.slots[l].get(ch)
    return e && this.blockOf(e.slot)
  }

  /** Layer l's resident chunks as its eviction policy sees them (what a lane moved to a smaller share keeps: reshare.ts). */
  residents(l: number): ReadonlyArray<Readonly<SlotEntry>> {
    return this.slots[l].entries()
  }

  /** Bytes of the chunks resident over all layers (slot bytes: a compressed slot counts its K and V parts). */
  get residentBytes(): number {
    return this.slots.reduce((s, c) => s + c.resident * c.chunkBytes, 0)
  }

  /** Whether decode's slots are compressed and in use now. */
  private get quantized(): boolean {
    return this.g.quant !== undefined && this.phase === "decode"
  }

  /** Switches the slots to prefill's or decode's (only with quantized slots: the same bytes, so the cache empties). */
  private enter(phase: "prefill" | "decode"): void {
    const q = this.g.quant
    if (q === undefined || this.phase === phase) return
    this.phase = phase
    this.slots = this.g.pools.map((_, l) => (phase === "decode" ? new GpuSlots(q.slots, (q.kSlotWords + q.vSlotWords) * 4, this.observerOf(l)) : new GpuSlots(this.g.cacheSlots, this.g.slotBytes, this.observerOf(l))))
    for (const s of this.slots) s.clear() // empty already: tells the observers
    for (const m of this.heldBits) m.clear()
    for (const m of [...this.loading, ...this.recomputed]) m.clear()
    this.progress.fill(undefined)
  }

  /**
   * A slot for a chunk just sealed (evicting by policy, nothing pinned): its first pool block,
   * or in compressed slots where its seal quantizes it at `bits` the slot can hold, where its
   * K and V parts go (the sealer copies them there from its quantizer's output, on the GPU);
   * undefined where it is not admitted.
   */
  admit(l: number, chunk: number, policy: PlanPolicy, bits?: KvBits): number | QuantAdmission | undefined {
    const q = this.quantized ? this.g.quant! : undefined
    if (q && (bits === undefined || bits === 16 || bits > q.bits)) return undefined
    const slot = this.slots[l].take(chunk, policy.eviction, new Set(), ++this.tick)
    if (slot === undefined) return undefined
    this.recomputed[l].delete(chunk)
    if (!q) return this.blockOf(slot)
    this.hold(l, chunk, slot, bits!)
    return { k: (q.qbase + slot * q.kSlotWords) * 4, v: (q.qbase + slot * q.vSlotWords) * 4 }
  }

  /**
   * At the switch to decode's compressed slots (a no-op otherwise, and after it): empties them
   * and fills each layer's with its chunks in warm.ts's order, as many as fit, each layer's in
   * one prefetch (the stored bytes go up as they are, flushed per layer); counted in `k.warm*`.
   */
  async warm(policy: TieredPolicy, k: TierCounters): Promise<void> {
    if (this.g.quant === undefined || this.phase === "decode") return
    this.enter("decode")
    if (policy.mode !== "leoam") return
    const t0 = performance.now()
    const plan = { eviction: policy.gpuEviction, mode: policy.mode }
    try {
      for (let l = 0; l < this.slots.length; l++) {
        const order = warmOrder(this.tables.layers[l], policy.sinkTokens, (ch) => this.io.scoreOf(l, ch)).slice(0, this.g.quant.slots)
        const r = await this.prefetch(l, order, [], plan, k)
        k.warmChunks += r.chunks.length
        k.warmBytes += r.bytes
      }
    } finally {
      k.warmMs += performance.now() - t0
    }
  }

  /** Forgets chunk ch of layer l (it was unsealed). */
  drop(l: number, ch: number): void {
    if (this.slots[l].get(ch)) this.slots[l].drop(ch)
    this.heldBits[l].delete(ch)
    this.recomputed[l].delete(ch)
  }

  clear(): void {
    for (const s of this.slots) s.clear()
    for (const m of this.heldBits) m.clear()
    for (const m of [...this.loading, ...this.recomputed]) m.clear()
    this.progress.fill(undefined)
  }

  planDecode(l: number, chosen: ReadonlyArray<number>, policy: PlanPolicy): DecodePlan {
    const t0 = performance.now()
    this.enter("decode")
    const plan = planDecode(this.slots[l], chosen, policy, this.tick + 1, l)
    traceSpan("plan", t0, l)
    return plan
  }

  /** Plans layer l's prefill windows over its sealed chunks and then its tail up to `end` (default: the sequence's end). */
  planPrefill(l: number, policy: PlanPolicy, end = this.tables.tokens): PrefillPlan {
    this.enter("prefill")
    const L = this.tables.layers[l]
    return planPrefill(this.slots[l], { starts: L.starts, sealed: L.sealed, tokens: end }, policy, this.tick + 1, l)
  }

  /**
   * Applies decode window i (see TieredKv.applyDecodeWindow); returns its entry count. With
   * `list` false the entries are not written (the GPU's route pass wrote them: a verified
   * pipelined layer), and 0 is returned; with "loads", only the window's loads are.
   */
  async applyDecode(l: number, plan: DecodePlan, i: number, promote: boolean, k: TierCounters, list: boolean | "loads" = true): Promise<number> {
    const w = this.begin(l, plan, i)
    if (i === 0) {
      k.gpuHits += plan.hits.length
      k.gpuMisses += plan.misses.length
      for (const ch of plan.hits) k.gpuBytesRead += this.heldBytes(l, ch)
    }
    await this.applyWindow(l, w, plan.tick, promote, k)
    if (plan.score) {
      const scores = scoreWindow(this.slots[l], w, plan.tick)
      w.attend.forEach((a, j) => this.io.setScore(l, a.chunk, scores[j]))
    }
    // "loads": the route pass attended the hits and the tail; the combine's second part is the misses.
    const count = list === "loads" ? (w.loads.length > 0 ? this.writeEntries(l, w.loads, false) : 0) : list ? this.writeEntries(l, w.attend, w.last) : 0
    k.windows++
    if (w.last && plan.clearAfter) this.slots[l].clear()
    return count
  }

  /**
   * Prefetch: loads the chunks of `chunks` layer l does not hold into slots taken by policy
   * (evicting none of `chunks` nor of `keep`: a wrong forecast must not push out what the
   * layer chose last), at the current tick, between plans (layer l must have none in
   * progress). Resolves to the chunks loaded and their bytes; a failed load frees its slots.
   */
  async prefetch(l: number, chunks: ReadonlyArray<number>, keep: ReadonlyArray<number>, policy: PlanPolicy, k: TierCounters): Promise<{ chunks: number[]; bytes: number }> {
    const s = this.slots[l]
    if (this.progress[l] !== undefined) return { chunks: [], bytes: 0 }
    const wanted = chunks.filter((ch) => s.get(ch) === undefined)
    if (wanted.length === 0) return { chunks: [], bytes: 0 }
    const pinned = new Set([...chunks, ...keep].map(pinKey))
    // One eviction pass for all of them, as a decode window's misses (plan.ts oneWindow): one
    // ask of the policy per chunk built its heap over every entry each time, ~0.5 ms a chunk
    // at 3506 slots a layer (8B 128K int4), 10x a miss. The chunks placed are pinned, so the
    // policy evicts the same chunks either way.
    s.reserve(wanted.length, policy.eviction, pinned, [])
    const loads: Placed[] = []
    for (const chunk of wanted) {
      const slot = s.take(chunk, policy.eviction, pinned, this.tick)
      if (slot === undefined) break
      loads.push({ chunk, slot })
    }
    try {
      await this.load(l, loads, true, k)
    } catch (e) {
      for (const p of loads) s.drop(p.chunk)
      throw e
    } finally {
      this.upload.flush()
      this.landed(l, loads)
    }
    return { chunks: loads.map((p) => p.chunk), bytes: loads.reduce((n, p) => n + this.heldBytes(l, p.chunk), 0) }
  }

  /** Bytes of resident chunk ch of layer l as its slot holds it. */
  private heldBytes(l: number, ch: number): number {
    const bits = this.quantized ? this.heldBits[l].get(ch) : undefined
    if (bits === undefined) return this.tables.chunkBytes(l, ch)
    // Counted for every hit of every layer (~410 a layer at 8B 128K): sized once per (tokens, bits).
    const tokens = this.tables.layers[l].sizes[ch]
    const key = tokens * 32 + bits
    let bytes = this.heldSizes.get(key)
    if (bytes === undefined) this.heldSizes.set(key, (bytes = chunkBytesAt(this.g.shape, tokens, bits)))
    return bytes
  }

  /** Applies prefill window i (see TieredKv.applyPrefillWindow), writing its part of `table`. */
  async applyPrefill(l: number, plan: PrefillPlan, i: number, table: GPUBuffer, promote: boolean, k: TierCounters): Promise<{ k0: number; k1: number; first: boolean; last: boolean }> {
    const w = this.begin(l, plan, i)
    k.gpuPrefillHits += w.touch.length
    k.gpuPrefillMisses += w.loads.length
    for (const ch of w.touch) k.gpuBytesRead += this.tables.chunkBytes(l, ch)
    await this.applyWindow(l, w, plan.tick, promote, k)
    const bs = this.tables.blockTokens
    const L = this.tables.layers[l]
    const b0 = w.k0 / bs
    const blocks = new Uint32Array(Math.ceil(w.k1 / bs) - b0) // (logical blocks [b0, b1)) u32 -> physical block
    for (const a of w.attend) {
      const at = L.starts[a.chunk] / bs - b0
      for (let b = 0; b < Math.ceil(L.sizes[a.chunk] / bs); b++) blocks[at + b] = this.blockOf(a.slot) + b
    }
    // Tail blocks never move during the layer.
    if (w.last) for (let b = Math.floor(L.sealed / bs); b < b0 + blocks.length; b++) blocks[b - b0] = this.tables.tailBlock(b)
    this.device.queue.writeBuffer(table, b0 * 4, blocks)
    k.windows++
    if (w.last && plan.clearAfter) this.slots[l].clear()
    return { k0: w.k0, k1: w.k1, first: i === 0, last: w.last }
  }

  /** Window i of `plan` if it is the one layer l applies next (else the plan is stale: RangeError). */
  private begin<W extends SlotWindow>(l: number, plan: { readonly tick: number; readonly windows: ReadonlyArray<W> }, i: number): W {
    const p = this.progress[l]
    const next = i === 0 ? plan.tick === this.tick + 1 : p?.plan === plan && p.next === i
    if (!next || i >= plan.windows.length) throw new RangeError(`tiered KV: layer ${l}: window ${i} of a plan applied out of order or after the cache changed`)
    this.tick = plan.tick
    this.progress[l] = i + 1 < plan.windows.length ? { plan, next: i + 1 } : undefined
    return plan.windows[i]
  }

  /** The window's slot changes, then its loads staged and flushed. */
  private async applyWindow(l: number, w: SlotWindow, tick: number, promote: boolean, k: TierCounters): Promise<void> {
    const t0 = performance.now()
    applyToSlots(this.slots[l], w, tick)
    try {
      await this.load(l, w.loads, promote, k)
    } catch (e) {
      // A slot must hold its chunk's bytes to count as resident.
      for (const p of w.loads) this.slots[l].drop(p.chunk)
      this.progress[l] = undefined
      throw e
    } finally {
      const f0 = performance.now()
      this.upload.flush()
      this.landed(l, w.loads)
      k.transferMs += performance.now() - t0
      if (w.loads.length > 0) traceSpan("flush", f0, l)
      if (w.loads.length > 0) traceSpan("host->GPU", t0, l)
    }
  }

  /** Loads of layer l flushed (or failed): their slots are a peer's to copy from once resident. */
  private landed(l: number, loads: ReadonlyArray<Placed>): void {
    for (const p of loads) this.loading[l].delete(p.chunk)
  }

  /**
   * Copies on the device the loads a peer lane holds with the same stored bytes (peers.ts),
   * submitted at once; returns the others.
   */
  private copyFromPeers(l: number, loads: ReadonlyArray<Placed>, k: TierCounters): ReadonlyArray<Placed> {
    if (this.peer === undefined || this.quantized) return loads
    const pool = this.g.pools[l]
    const rest: Placed[] = []
    let encoder: GPUCommandEncoder | undefined
    for (const p of loads) {
      const src = this.peer.source(l, p.chunk)
      if (src === undefined) {
        rest.push(p)
        continue
      }
      const bytes = this.tables.chunkBytes(l, p.chunk)
      const dst = this.blockOf(p.slot) * this.tables.blockBytes
      encoder ??= this.device.createCommandEncoder({ label: "kv chunks from a peer lane" })
      encoder.copyBufferToBuffer(src.k, src.offset, pool.k, dst, bytes / 2)
      encoder.copyBufferToBuffer(src.v, src.offset, pool.v, dst, bytes / 2)
      k.peerCopies++
      k.peerCopyBytes += bytes
      this.peer.copied(bytes)
    }
    if (encoder) this.device.queue.submit([encoder.finish()])
    return rest
  }

  /** Stages each load's chunk (host arena, else disk; or a peer lane's slot; or recomputed from its hidden record) into its cache slot's K and V blocks. */
  private async load(l: number, all: ReadonlyArray<Placed>, promote: boolean, k: TierCounters): Promise<void> {
    for (const p of all) this.loading[l].add(p.chunk)
    const rest = this.copyFromPeers(l, all, k)
    // Chunks the recompute claims are read as hidden states and recomputed on the GPU, beside the tiers' loads.
    const own = this.quantized ? [] : (this.g.recompute?.claims(l, rest) ?? [])
    const loads = own.length > 0 ? rest.filter((p) => !own.includes(p)) : rest
    // A recomputed slot differs from the stored bytes by rounding: never a peer's source.
    for (const p of all) this.recomputed[l].delete(p.chunk)
    for (const p of own) this.recomputed[l].add(p.chunk)
    const recomputing = this.g.recompute?.run(l, own, (slot) => this.blockOf(slot))
    try {
      await this.loadTiers(l, loads, promote, k)
    } finally {
      // No recompute is left writing into slots that a failed window gives back.
      await recomputing?.catch(() => undefined)
    }
    await recomputing
  }

  private async loadTiers(l: number, loads: ReadonlyArray<Placed>, promote: boolean, k: TierCounters): Promise<void> {
    if (loads.length === 0) return
    const pool = this.g.pools[l]
    const blockBytes = this.tables.blockBytes
    const read = new Array<number>(loads.length).fill(0) // bytes each load read from its tier
    const requests = this.quantized ? quantLoads({ quant: this.g.quant!, pool, shape: this.g.shape, tables: this.tables, upload: this.upload, hold: (ch, slot, bits) => this.hold(l, ch, slot, bits) }, l, loads, read, k) : loads.map(({ chunk, slot }, i) => {
      const bytes = this.tables.chunkBytes(l, chunk)
      const tokens = this.tables.layers[l].sizes[chunk]
      const dst = this.blockOf(slot) * blockBytes
      const half = bytes / 2
      const copies = [
        { from: 0, dst: pool.k, dstOffset: dst, size: half },
        { from: half, dst: pool.v, dstOffset: dst, size: half },
      ]
      const stage = (src: Uint8Array, bits: KvBits) => {
        read[i] = src.length
        // The slots hold fp16: a quantized chunk is dequantized on the CPU into the staging view.
        k.uploadBytes += bytes
        return this.upload.stage(bytes, (view) => dequantizeInto(src, this.g.shape, tokens, bits, view), copies)
      }
      return { layer: l, chunk, bytes, tokens, stage }
    })
    const tiers = await this.io.load(requests, promote)
    tiers.forEach((tier, i) => {
      const bytes = read[i]
      if (tier === "host") {
        k.hostHits++
        k.hostBytesRead += bytes
      } else {
        k.hostMisses++
        k.diskHits++
        k.diskBytesRead += bytes
      }
    })
  }

  /** Writes the window's entries (its chunks' blocks, then on the last window the layer's tail). */
  private writeEntries(l: number, window: ReadonlyArray<Placed>, withTail: boolean): number {
    const e = this.entryHost
    const bs = this.tables.blockTokens
    const L = this.tables.layers[l]
    let n = 0
    const q = this.quantized ? this.g.quant! : undefined
    for (const w of window) {
      const tokens = L.sizes[w.chunk]
      if (q) {
        // Quantized: (slot * slotBlocks + block, tokens | bits << 16), as attn_decode's QUANT reads them.
        const tag = this.heldBits[l].get(w.chunk)! << 16
        for (let t = 0; t < tokens; t += bs) {
          e[n * 2] = w.slot * this.g.slotBlocks + t / bs
          e[n * 2 + 1] = Math.min(bs, tokens - t) | tag
          n++
        }
        continue
      }
      const b0 = this.blockOf(w.slot)
      for (let t = 0; t < tokens; t += bs) {
        e[n * 2] = b0 + t / bs
        e[n * 2 + 1] = Math.min(bs, tokens - t)
        n++
      }
    }
    if (withTail) {
      const end = this.tables.tokens
      for (let t = L.sealed; t < end; t += bs) {
        e[n * 2] = this.tables.tailBlock(Math.floor(t / bs))
        e[n * 2 + 1] = Math.min(bs, end - t)
        n++
      }
    }
    this.device.queue.writeBuffer(this.entries, 0, e.buffer, 0, n * 8)
    this.device.queue.writeBuffer(this.seqs, 0, Uint32Array.of(0, n))
    return n
  }

  destroy(): void {
    this.peer?.leave()
    this.entries.destroy()
    this.seqs.destroy()
  }
}
