// Planning one layer's attention over the GPU chunk cache: pure functions from (the cache's
// contents, the chosen chunks, the eviction policy) to a plan of windows, each saying which
// chunks it touches, evicts and loads into which slot, and what it attends. What does not
// fit in the cache at once is attended in several windows, so a plan simulates the cache
// across them (GpuSlots.simulate, undone before the plan returns; window 2 reuses the slots
// of window 1's misses; window 1's hits stay pinned only in window 1). Planning changes
// nothing; applyToSlots() applies one window's bookkeeping to the real cache, which must
// still be at the version planned for.
import type { EvictionPolicy } from "./eviction.ts"
import { type GpuSlots, pinKey } from "./gpu-slots.ts"
import { KvBudgetError } from "./tier-errors.ts"

/** A chunk in a cache slot. */
export interface Placed {
  readonly chunk: number
  readonly slot: number
}

/** One attention window: its cache changes, in the order they apply, and what it attends. */
export interface SlotWindow {
  /** The cache's version this window applies to (GpuSlots.version after the previous window). */
  readonly version: number
  /** Resident chunks it attends as they are (a hit: its access is counted). */
  readonly touch: ReadonlyArray<number>
  /** Chunks evicted to make room, in the order the policy chose them. */
  readonly evict: ReadonlyArray<number>
  /** Chunks to fetch into the slots the evictions and the free list left. */
  readonly loads: ReadonlyArray<Placed>
  /** What the window attends, in attention order. */
  readonly attend: ReadonlyArray<Placed>
  readonly last: boolean
}

export interface PlanPolicy {
  readonly eviction: EvictionPolicy
  /** leoam counts each attended chunk into its importance; offload-all empties the cache after the layer. */
  readonly mode: "leoam" | "offload-all"
}

/** Decode: the chosen chunks, hits first, then misses in as many windows as the slots need. */
export interface DecodePlan {
  /** The layer visit's tick (every window of the layer shares it). */
  readonly tick: number
  readonly hits: ReadonlyArray<number>
  readonly misses: ReadonlyArray<number>
  /** At least one; the tail is attended with the last. */
  readonly windows: ReadonlyArray<SlotWindow>
  /** Count each attended chunk into its importance (GpuSlots.chosen) after its window's loads. */
  readonly score: boolean
  /** Empty the cache after the last window (offload-all keeps nothing between steps). */
  readonly clearAfter: boolean
}

/** Prefill: every sealed chunk in order, then the tail, in windows of consecutive chunks. */
export interface PrefillWindow extends SlotWindow {
  /** Chunks [from, to) of the layer, attended as tokens [k0, k1) (k1 the sequence's end on the last window). */
  readonly from: number
  readonly to: number
  readonly k0: number
  readonly k1: number
}

export interface PrefillPlan {
  readonly tick: number
  readonly windows: ReadonlyArray<PrefillWindow>
  readonly clearAfter: boolean
}

/** A layer's sealed chunks as prefill reads them: chunk i starts at token starts[i]; tokens [sealed, tokens) are the tail. */
export interface ChunkTable {
  readonly starts: ReadonlyArray<number>
  readonly sealed: number
  readonly tokens: number
}

/**
 * Plans decode attention over `chosen` (distinct sealed chunks): the resident ones are hits
 * and stay pinned through window 1, which also takes as many misses as the other slots give
 * (one eviction pass for all of them, then one at a time where the policy cannot free them
 * all at once); every later window reuses the slots of the previous one's chunks.
 */
export const planDecode = (cache: GpuSlots, chosen: ReadonlyArray<number>, policy: PlanPolicy, tick: number, layer = 0): DecodePlan => {
  const hits: number[] = []
  const misses: number[] = []
  for (const ch of chosen) (cache.get(ch) ? hits : misses).push(ch)
  const score = policy.mode === "leoam"
  const clearAfter = policy.mode === "offload-all"
  if (misses.length === 0) {
    // All hits (a steady leoam step): one window, nothing to evict, no state to simulate.
    const attend = hits.map((ch) => ({ chunk: ch, slot: cache.get(ch)!.slot }))
    return { tick, hits, misses, windows: [{ version: cache.version, touch: hits, evict: [], loads: [], attend, last: true }], score, clearAfter }
  }
  const windows = oneWindow(cache, hits, misses, policy.eviction) ?? cache.simulate((sim) => decodeWindows(sim, hits, misses, policy.eviction, score, tick, layer))
  return { tick, hits, misses, windows, score, clearAfter }
}

/**
 * planDecode's windows where every miss fits in one window, without simulating (what a decode
 * step plans per layer: at 8B 64K a simulation of ~1400 entries cost ~0.7 ms a layer on a
 * loaded 2-core host, mostly bookkeeping it undid). The hits are pinned, so their touches cannot
 * change what the policy evicts among the others: one ask of the policy, then the free list's
 * pops, give decodeWindows' window exactly (test/kv-plan.test.ts checks both agree). Undefined
 * where they might not (more misses than slots, or the policy cannot free enough at once).
 */
const oneWindow = (cache: GpuSlots, hits: number[], misses: number[], eviction: EvictionPolicy): SlotWindow[] | undefined => {
  if (misses.length > cache.slots) return undefined
  const free = cache.freeSlots().slice()
  const evict: number[] = []
  const need = misses.length - free.length
  if (need > 0) {
    // The hits' own keys (made once per entry): no string built per hit and layer.
    const chosen = eviction.select(cache.entries(), need * cache.chunkBytes, new Set(hits.map((ch) => cache.get(ch)!.key)))
    if (chosen === null) return undefined
    for (const key of chosen) {
      const ch = Number(key)
      evict.push(ch)
      free.push(cache.get(ch)!.slot)
    }
  }
  const attend: Placed[] = hits.map((ch) => ({ chunk: ch, slot: cache.get(ch)!.slot }))
  const loads: Placed[] = misses.map((ch) => ({ chunk: ch, slot: free.pop()! }))
  attend.push(...loads)
  return [{ version: cache.version, touch: hits, evict, loads, attend, last: true }]
}

/** planDecode by simulation alone (tests: oneWindow must agree with it). */
export const planDecodeSimulated = (cache: GpuSlots, chosen: ReadonlyArray<number>, policy: PlanPolicy, tick: number, layer = 0): DecodePlan => {
  const hits = chosen.filter((ch) => cache.get(ch) !== undefined)
  const misses = chosen.filter((ch) => cache.get(ch) === undefined)
  const score = policy.mode === "leoam"
  const windows = cache.simulate((sim) => decodeWindows(sim, hits, misses, policy.eviction, score, tick, layer))
  return { tick, hits, misses, windows, score, clearAfter: policy.mode === "offload-all" }
}

/** planDecode's windows when some chunks miss, simulated on `sim` (left changed: the caller undoes it). */
const decodeWindows = (sim: GpuSlots, hits: number[], misses: number[], eviction: EvictionPolicy, score: boolean, tick: number, layer: number): SlotWindow[] => {
  const version = sim.version
  for (const ch of hits) sim.touch(ch, tick)
  const pinned = new Set<string>(hits.map(pinKey))
  const windows: SlotWindow[] = []
  let attend: Placed[] = hits.map((ch) => ({ chunk: ch, slot: sim.get(ch)!.slot }))
  let touch: ReadonlyArray<number> = hits
  let windowVersion = version
  for (let i = 0; ; ) {
    const evict: number[] = []
    const loads: Placed[] = []
    sim.reserve(misses.length - i, eviction, pinned, evict)
    for (; i < misses.length; i++) {
      const ch = misses[i]
      const slot = sim.take(ch, eviction, pinned, tick, evict)
      if (slot === undefined) break
      pinned.add(pinKey(ch))
      loads.push({ chunk: ch, slot })
      attend.push({ chunk: ch, slot })
    }
    const last = i >= misses.length
    if (attend.length === 0 && !last) throw new KvBudgetError(`layer ${layer}: no GPU cache slot is free for chunk ${misses[i]}`)
    windows.push({ version: windowVersion, touch, evict, loads, attend, last })
    if (last) break
    // Importance ranks the next window's evictions (the last window's scores change no choice).
    if (score) for (const a of attend) sim.chosen(a.chunk, tick)
    for (const a of attend) pinned.delete(pinKey(a.chunk))
    attend = []
    touch = []
    windowVersion = sim.version
  }
  return windows
}

/**
 * Plans prefill attention over every sealed chunk of a layer, then its tail: each window
 * extends while its next chunk is resident or can be made so without evicting one of the
 * window's own chunks; the next window starts where it stopped.
 */
export const planPrefill = (cache: GpuSlots, table: ChunkTable, policy: PlanPolicy, tick: number, layer = 0): PrefillPlan =>
  cache.simulate((sim) => prefillWindows(sim, table, policy, tick, layer))

/** planPrefill's windows, simulated on `sim` (left changed: the caller undoes it). */
const prefillWindows = (sim: GpuSlots, table: ChunkTable, policy: PlanPolicy, tick: number, layer: number): PrefillPlan => {
  const n = table.starts.length
  const windows: PrefillWindow[] = []
  const pinned = new Set<string>()
  for (let ch = 0; ch <= n; ) {
    const version = sim.version
    const from = ch
    const touch: number[] = []
    const evict: number[] = []
    const loads: Placed[] = []
    const attend: Placed[] = []
    for (; ch < n; ch++) {
      let slot = sim.get(ch)?.slot
      if (slot !== undefined) {
        sim.touch(ch, tick)
        touch.push(ch)
      } else {
        slot = sim.take(ch, policy.eviction, pinned, tick, evict)
        if (slot === undefined) break
        loads.push({ chunk: ch, slot })
      }
      pinned.add(pinKey(ch))
      attend.push({ chunk: ch, slot })
    }
    const last = ch === n
    if (from === ch && !last) throw new KvBudgetError(`layer ${layer}: no GPU cache slot is free for chunk ${ch}`)
    const k0 = from < n ? table.starts[from] : table.sealed
    const k1 = last ? table.tokens : table.starts[ch]
    windows.push({ version, touch, evict, loads, attend, last, from, to: ch, k0, k1 })
    if (last) break
    pinned.clear()
  }
  return { tick, windows, clearAfter: policy.mode === "offload-all" }
}

/**
 * Applies window `w`'s bookkeeping to the cache it was planned on: counts the hits' accesses,
 * evicts, and places the loads in their slots (their bytes are the caller's to fetch).
 * Throws RangeError if the cache is no longer at the version planned for.
 */
export const applyToSlots = (cache: GpuSlots, w: SlotWindow, tick: number): void => {
  if (cache.version !== w.version) throw new RangeError(`GPU cache: a plan for version ${w.version} applied at version ${cache.version}`)
  for (const ch of w.touch) cache.touch(ch, tick)
  for (const ch of w.evict) cache.drop(ch)
  for (const p of w.loads) cache.place(p.chunk, p.slot, tick)
}

/** After the window's loads: each attended chunk's importance, in attend order (what the host arena is told). */
export const scoreWindow = (cache: GpuSlots, w: SlotWindow, tick: number): number[] => w.attend.map((a) => cache.chosen(a.chunk, tick))
