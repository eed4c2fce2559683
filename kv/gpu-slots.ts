// GpuSlots: the bookkeeping of one layer's GPU chunk cache (which chunk each cache slot
// holds, and each entry as an eviction policy sees it); no GPU memory, only numbers.
// Invariants: a chunk holds at most one slot, a slot at most one chunk, and every slot is
// either held or on the free list. kv/plan.ts simulates it on clones; the tiered cache
// (engine/kv/tiered) changes the real one, applying plans and admitting sealed chunks.
import type { EntryView, EvictionPolicy } from "./eviction.ts"

/** Ticks (layer visits) for a chunk's importance to halve; the `importance` policy's default. */
export const IMPORTANCE_HALF_LIFE = 1024

/** One cached chunk; `key` is String(chunk), the key a pinned set names it by. */
export interface SlotEntry extends EntryView {
  lastAccess: number
  accesses: number
  score: number
  scoredAt: number
  readonly chunk: number
  readonly slot: number
  /** Place in the policy's view (swap-remove). */
  index: number
}

/** The key of chunk c in a pinned set. */
export const pinKey = (c: number): string => String(c)

export class GpuSlots {
  private readonly byChunk = new Map<number, SlotEntry>()
  /** Free slots; the next taken is the last (a stack, lowest slot first when empty of use). */
  private readonly free: number[] = []
  /** The entries as the policy sees them. */
  private readonly list: SlotEntry[] = []
  /** Bumped by every change: a plan made at one version applies only to that version. */
  version = 0

  constructor(
    readonly slots: number,
    readonly chunkBytes: number,
  ) {
    for (let s = slots - 1; s >= 0; s--) this.free.push(s)
  }

  /** A copy whose changes do not reach this one (what a plan simulates on). */
  clone(): GpuSlots {
    const c = new GpuSlots(this.slots, this.chunkBytes)
    c.version = this.version
    c.free.length = 0
    c.free.push(...this.free)
    for (const e of this.list) {
      const copy = { ...e }
      c.list.push(copy)
      c.byChunk.set(copy.chunk, copy)
    }
    return c
  }

  get resident(): number {
    return this.byChunk.size
  }

  get(chunk: number): SlotEntry | undefined {
    return this.byChunk.get(chunk)
  }

  /** Free slots, in the order take() would not use them (the last is taken first). */
  freeSlots(): ReadonlyArray<number> {
    return this.free
  }

  /** The entries, in no particular order. */
  entries(): ReadonlyArray<Readonly<SlotEntry>> {
    return this.list
  }

  touch(chunk: number, tick: number): void {
    const e = this.byChunk.get(chunk)!
    e.lastAccess = tick
    e.accesses++
    this.version++
  }

  /**
   * Counts a selection of the chunk into its importance: the score decays by half every
   * IMPORTANCE_HALF_LIFE ticks (as the `importance` policy ranks it) and each choice adds 1.
   */
  chosen(chunk: number, tick: number): number {
    const e = this.byChunk.get(chunk)!
    e.score = e.score * 2 ** (-(tick - e.scoredAt) / IMPORTANCE_HALF_LIFE) + 1
    e.scoredAt = tick
    this.version++
    return e.score
  }

  /**
   * Makes `count` slots free if it can, evicting by policy among chunks not in `pinned` in
   * one pass (one scan of the entries for all of a window's misses, not one per miss).
   * Pushes the evicted chunks, in order, onto `evicted`.
   */
  reserve(count: number, policy: EvictionPolicy, pinned: ReadonlySet<string>, evicted: number[]): void {
    const need = Math.min(count, this.slots) - this.free.length
    if (need <= 0) return
    const chosen = policy.select(this.list, need * this.chunkBytes, pinned)
    if (chosen === null) {
      // Not enough unpinned chunks for all: evict what can be, one at a time.
      for (let i = 0; i < need && this.evictOne(policy, pinned, evicted); i++);
      return
    }
    for (const key of chosen) {
      const chunk = Number(key)
      this.drop(chunk)
      evicted.push(chunk)
    }
  }

  /** A slot for `chunk`, evicting by policy among chunks not in `pinned` (onto `evicted`); undefined if all are pinned. */
  take(chunk: number, policy: EvictionPolicy, pinned: ReadonlySet<string>, tick: number, evicted?: number[]): number | undefined {
    if (this.free.length === 0 && !this.evictOne(policy, pinned, evicted)) return undefined
    const slot = this.free.pop()!
    this.add(chunk, slot, tick)
    return slot
  }

  /** Puts `chunk` into the free slot `slot` (what a plan chose); throws if the slot is not free. */
  place(chunk: number, slot: number, tick: number): void {
    const at = this.free.lastIndexOf(slot)
    if (at < 0 || this.byChunk.has(chunk)) throw new RangeError(`GPU cache: slot ${slot} is not free for chunk ${chunk} (a stale plan?)`)
    this.free.splice(at, 1)
    this.add(chunk, slot, tick)
  }

  drop(chunk: number): void {
    const e = this.byChunk.get(chunk)
    if (e === undefined) throw new RangeError(`GPU cache: chunk ${chunk} is not resident (a stale plan?)`)
    this.byChunk.delete(chunk)
    const last = this.list.pop()!
    if (last !== e) {
      this.list[e.index] = last
      last.index = e.index
    }
    this.free.push(e.slot)
    this.version++
  }

  clear(): void {
    this.version++
    this.byChunk.clear()
    this.list.length = 0
    this.free.length = 0
    for (let s = this.slots - 1; s >= 0; s--) this.free.push(s)
  }

  private add(chunk: number, slot: number, tick: number): void {
    const e: SlotEntry = { key: pinKey(chunk), length: this.chunkBytes, lastAccess: tick, accesses: 1, score: 0, scoredAt: tick, chunk, slot, index: this.list.length }
    this.byChunk.set(chunk, e)
    this.list.push(e)
    this.version++
  }

  private evictOne(policy: EvictionPolicy, pinned: ReadonlySet<string>, evicted: number[] | undefined): boolean {
    const chosen = policy.select(this.list, this.chunkBytes, pinned)
    if (chosen === null || chosen.length === 0) return false
    const chunk = Number(chosen[0])
    this.drop(chunk)
    evicted?.push(chunk)
    return true
  }
}
