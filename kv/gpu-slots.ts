// GpuSlots: the bookkeeping of one layer's GPU chunk cache (which chunk each cache slot
// holds, and each entry as an eviction policy sees it); no GPU memory, only numbers.
// Invariants: a chunk holds at most one slot, a slot at most one chunk, and every slot is
// either held or on the free list. kv/plan.ts simulates on it through simulate(), which
// undoes every change before it returns; the tiered cache (engine/kv/tiered) changes it
// for real, applying plans and admitting sealed chunks.
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

/** What simulate() restores: the entry's fields a simulation may change, as they were before. */
interface Saved {
  readonly e: SlotEntry
  readonly lastAccess: number
  readonly accesses: number
  readonly score: number
  readonly scoredAt: number
}

/** The changes of a simulation in progress, to undo. */
interface Journal {
  readonly saved: Saved[]
  /** Entries that held a slot when the simulation began and were dropped in it. */
  readonly dropped: SlotEntry[]
  /** Entries the simulation added (thrown away on undo). */
  readonly added: Set<SlotEntry>
}

/** Told of every real change of a cache's contents (not of a simulation's): what keeps a GPU copy of the slot map. */
export interface SlotObserver {
  placed(chunk: number, slot: number): void
  dropped(chunk: number): void
  cleared(): void
}

export class GpuSlots {
  private readonly byChunk = new Map<number, SlotEntry>()
  /** Free slots; the next taken is the last (a stack, lowest slot first when empty of use). */
  private readonly free: number[] = []
  /** The entries as the policy sees them. */
  private readonly list: SlotEntry[] = []
  /** Bumped by every change: a plan made at one version applies only to that version. */
  version = 0
  private journal: Journal | undefined

  constructor(
    readonly slots: number,
    readonly chunkBytes: number,
    private readonly observer?: SlotObserver,
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

  /**
   * Runs `f` on this cache, then undoes every change it made (entries, slots, the version),
   * so that afterwards nothing differs, not even the order of entries(). What a plan
   * simulates on: the cost is the changes plus one copy of the entry and free lists, where
   * clone() copies every entry (a decode step plans each layer: 1536 entries at 8B 64K).
   */
  simulate<T>(f: (sim: GpuSlots) => T): T {
    if (this.journal) throw new RangeError("GPU cache: simulations do not nest")
    const version = this.version
    const list = this.list.slice()
    const free = this.free.slice()
    const journal: Journal = { saved: [], dropped: [], added: new Set() }
    this.journal = journal
    try {
      return f(this)
    } finally {
      this.journal = undefined
      for (let i = journal.saved.length - 1; i >= 0; i--) {
        const s = journal.saved[i]
        s.e.lastAccess = s.lastAccess
        s.e.accesses = s.accesses
        s.e.score = s.score
        s.e.scoredAt = s.scoredAt
      }
      for (const e of journal.added) if (this.byChunk.get(e.chunk) === e) this.byChunk.delete(e.chunk)
      for (const e of journal.dropped) this.byChunk.set(e.chunk, e)
      for (let i = 0; i < list.length; i++) {
        list[i].index = i
        this.list[i] = list[i]
      }
      this.list.length = list.length
      for (let i = 0; i < free.length; i++) this.free[i] = free[i]
      this.free.length = free.length
      this.version = version
    }
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
    if (this.journal) this.save(e)
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
    if (this.journal) this.save(e)
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
    if (this.journal && !this.journal.added.has(e)) this.journal.dropped.push(e)
    if (!this.journal) this.observer?.dropped(chunk)
  }

  clear(): void {
    if (this.journal) throw new RangeError("GPU cache: clear() inside a simulation")
    this.version++
    this.byChunk.clear()
    this.list.length = 0
    this.free.length = 0
    for (let s = this.slots - 1; s >= 0; s--) this.free.push(s)
    this.observer?.cleared()
  }

  private add(chunk: number, slot: number, tick: number): void {
    const e: SlotEntry = { key: pinKey(chunk), length: this.chunkBytes, lastAccess: tick, accesses: 1, score: 0, scoredAt: tick, chunk, slot, index: this.list.length }
    this.byChunk.set(chunk, e)
    this.list.push(e)
    this.version++
    this.journal?.added.add(e)
    if (!this.journal) this.observer?.placed(chunk, slot)
  }

  /** Keeps the entry's fields for undo, unless the simulation made the entry. */
  private save(e: SlotEntry): void {
    if (this.journal!.added.has(e)) return
    this.journal!.saved.push({ e, lastAccess: e.lastAccess, accesses: e.accesses, score: e.score, scoredAt: e.scoredAt })
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
