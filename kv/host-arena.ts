// HostArena: the host tier. Owns `budgetBytes` of host memory, as slabs of one ArrayBuffer
// each (Node 20 caps an ArrayBuffer at 4 GiB), in which every resident chunk's bytes live,
// and the entries that say where. Invariants: entries never overlap nor cross a slab,
// and the budget is a hard cap on bytes held; a pinned entry (being stored or loaded) is
// never evicted or moved, so views handed out stay valid until complete*/unpin; eviction
// is all or nothing, chosen by the swappable policy. Its owner calls it: the host-cache
// actor, or the tiered cache through kv/tier-io.ts.

import { planCompaction } from "./arena-compaction.ts"
import { hostCacheError } from "./host-errors.ts"
import { FreeList, type Extent } from "./free-list.ts"
import { lru, type EntryView, type EvictionPolicy, type Key } from "./eviction.ts"

export interface HostArenaOptions {
  readonly budgetBytes: number
  readonly policy?: EvictionPolicy
  /** Bytes per slab (the largest chunk it can hold). Default: the budget, at most 1 GiB. */
  readonly slabBytes?: number
  /**
   * When a store must evict, first try to evict this many bytes more, so the next stores
   * find room without asking the policy again (each ask scans every entry). Default:
   * budget / 64; 0 evicts exactly what each store needs.
   */
  readonly evictAheadBytes?: number
}

/** A reservation made by prepareStore: write the chunk into `view`, then completeStore. */
export interface StoreTicket {
  readonly key: Key
  /** The reserved bytes in the arena; valid until completeStore or abortStore. */
  readonly view: Uint8Array
  /** Keys evicted to make room (their bytes are gone). */
  readonly evicted: ReadonlyArray<Key>
  readonly id: number
}

export interface HostArenaStats {
  readonly budgetBytes: number
  /** Bytes of resident and reserved entries. */
  readonly residentBytes: number
  readonly entries: number
  readonly pinned: number
  readonly hits: number
  readonly misses: number
  /** Bytes stored into the arena (completed stores). */
  readonly bytesIn: number
  /** Bytes handed out by loads. */
  readonly bytesOut: number
  readonly evictions: number
  readonly evictedBytes: number
  readonly compactions: number
  /** Bytes moved by compactions. */
  readonly movedBytes: number
}

interface Entry extends EntryView {
  /** Position in HostArena.list. */
  index: number
  offset: number
  lastAccess: number
  accesses: number
  score: number
  scoredAt: number
  pins: number
  /** The id of the pending store's ticket; 0 once stored. */
  ticket: number
}

const DEFAULT_SLAB_BYTES = 2 ** 30
const MAX_SLAB_BYTES = 2 ** 32

interface SpacePlan {
  readonly evict: ReadonlyArray<Key>
  readonly compact: boolean
}

export class HostArena {
  readonly budgetBytes: number
  readonly slabBytes: number
  /** (slab, slabBytes) u8, the last slab shorter: every resident chunk's bytes as the disk tier wrote them. */
  private readonly slabs: Uint8Array[]
  private readonly entries = new Map<Key, Entry>()
  /** The same entries as an array: the policy's view, kept without copying. */
  private readonly list: Entry[] = []
  private readonly pinned = new Set<Key>()
  private free: FreeList
  private residentBytes = 0
  private tick = 0
  private nextTicket = 1
  private current: EvictionPolicy
  private readonly evictAhead: number
  private readonly counters = { hits: 0, misses: 0, bytesIn: 0, bytesOut: 0, evictions: 0, evictedBytes: 0, compactions: 0, movedBytes: 0 }

  constructor(options: HostArenaOptions) {
    if (!Number.isSafeInteger(options.budgetBytes) || options.budgetBytes <= 0) {
      throw hostCacheError("invalid_size", undefined, `budget ${options.budgetBytes} is not a positive integer`)
    }
    this.budgetBytes = options.budgetBytes
    this.slabBytes = Math.min(options.budgetBytes, options.slabBytes ?? DEFAULT_SLAB_BYTES)
    if (!Number.isSafeInteger(this.slabBytes) || this.slabBytes <= 0 || this.slabBytes > MAX_SLAB_BYTES) {
      throw hostCacheError("invalid_size", undefined, `slab size ${options.slabBytes} is not an integer in [1, ${MAX_SLAB_BYTES}]`)
    }
    this.slabs = []
    for (let at = 0; at < this.budgetBytes; at += this.slabBytes) {
      this.slabs.push(new Uint8Array(new ArrayBuffer(Math.min(this.slabBytes, this.budgetBytes - at))))
    }
    this.free = FreeList.empty(this.budgetBytes, this.slabBytes)
    this.current = options.policy ?? lru
    this.evictAhead = Math.max(0, Math.floor(options.evictAheadBytes ?? options.budgetBytes / 64))
  }

  get policy(): EvictionPolicy {
    return this.current
  }

  /** Swaps the eviction policy; the next eviction uses it. */
  setPolicy(policy: EvictionPolicy): void {
    this.current = policy
  }

  // --- store: prepare, write into the view, complete (or abort) -----------------

  /** Reserves `length` bytes for `key`, evicting by policy if needed; the entry is pinned until completeStore. */
  prepareStore(key: Key, length: number): StoreTicket {
    if (!Number.isSafeInteger(length) || length <= 0) throw hostCacheError("invalid_size", key, `size ${length} is not a positive integer`)
    if (length > this.slabBytes) {
      const whole = this.slabBytes === this.budgetBytes ? `the whole budget of ${this.budgetBytes}` : `a slab of ${this.slabBytes}`
      throw hostCacheError("budget_exceeded", key, `${length} bytes exceed ${whole}`)
    }
    const replaced = this.entries.get(key)
    if (replaced !== undefined && replaced.pins > 0) throw hostCacheError("entry_busy", key, "cannot replace a pinned chunk")
    const plan = this.planSpace(key, length, replaced)
    if (replaced !== undefined) this.drop(replaced)
    for (const k of plan.evict) {
      const e = this.entries.get(k)!
      this.counters.evictions++
      this.counters.evictedBytes += e.length
      this.drop(e)
    }
    if (plan.compact) this.compact(length)
    const offset = this.free.alloc(length)
    if (offset === null) throw new Error(`HostArena: planned ${length} bytes for ${key} but found no hole`)
    const id = this.nextTicket++
    const now = ++this.tick
    const entry: Entry = { index: this.list.length, key, length, offset, lastAccess: now, accesses: 1, score: 0, scoredAt: now, pins: 1, ticket: id }
    this.entries.set(key, entry)
    this.list.push(entry)
    this.pinned.add(key)
    this.residentBytes += length
    return { key, view: this.view(offset, length), evicted: plan.evict, id }
  }

  /** Marks the ticket's bytes written: the chunk becomes loadable and unpinned. */
  completeStore(ticket: StoreTicket): void {
    const entry = this.pending(ticket)
    entry.ticket = 0
    this.counters.bytesIn += entry.length
    this.unpinEntry(entry)
  }

  /** Gives back a reservation whose transfer failed. */
  abortStore(ticket: StoreTicket): void {
    this.drop(this.pending(ticket))
  }

  /** Stores a whole chunk now (prepare, copy, complete); returns the keys evicted for it. */
  put(key: Key, bytes: Uint8Array): ReadonlyArray<Key> {
    const ticket = this.prepareStore(key, bytes.length)
    ticket.view.set(bytes)
    this.completeStore(ticket)
    return ticket.evicted
  }

  // --- load: prepare (pins, returns the bytes), complete (unpins) ---------------

  /** The chunk's bytes, pinned until completeLoad; undefined (a miss) when it is not resident. */
  prepareLoad(key: Key): Uint8Array | undefined {
    const entry = this.entries.get(key)
    if (entry === undefined || entry.ticket !== 0) {
      this.counters.misses++
      return undefined
    }
    this.counters.hits++
    this.counters.bytesOut += entry.length
    entry.accesses++
    entry.lastAccess = ++this.tick
    this.pinEntry(entry)
    return this.view(entry.offset, entry.length)
  }

  completeLoad(key: Key): void {
    this.unpin(key)
  }

  pin(key: Key): void {
    const entry = this.entries.get(key)
    if (entry === undefined || entry.ticket !== 0) throw hostCacheError("not_resident", key, "cannot pin a chunk that is not resident")
    this.pinEntry(entry)
  }

  unpin(key: Key): void {
    const entry = this.entries.get(key)
    if (entry === undefined || entry.pins === 0 || (entry.ticket !== 0 && entry.pins === 1)) {
      throw hostCacheError("not_pinned", key, entry === undefined ? "not resident" : "not pinned by a load")
    }
    this.unpinEntry(entry)
  }

  // --- policy inputs and explicit eviction ---------------------------------------

  /** Sets the caller's importance of a chunk (the importance policy evicts the lowest, decayed); false if not resident. */
  setScore(key: Key, score: number): boolean {
    const entry = this.entries.get(key)
    if (entry === undefined) return false
    entry.score = score
    entry.scoredAt = ++this.tick
    return true
  }

  /** The caller's last importance of a chunk (0 when never set or not resident). */
  scoreOf(key: Key): number {
    return this.entries.get(key)?.score ?? 0
  }

  /** Evicts unpinned chunks holding at least `needBytes`, chosen by the policy; null (nothing evicted) if it cannot. */
  evict(needBytes: number): ReadonlyArray<Key> | null {
    if (needBytes <= 0) return []
    const chosen = this.select(needBytes, undefined)
    if (chosen === null) return null
    for (const k of chosen) {
      const e = this.entries.get(k)!
      this.counters.evictions++
      this.counters.evictedBytes += e.length
      this.drop(e)
    }
    return chosen
  }

  /** Removes a chunk (its session was dropped); false if it was not there. */
  remove(key: Key): boolean {
    const entry = this.entries.get(key)
    if (entry === undefined) return false
    if (entry.pins > 0) throw hostCacheError("entry_busy", key, "cannot remove a pinned chunk")
    this.drop(entry)
    return true
  }

  /** Whether the chunk is resident and fully stored. */
  has(key: Key): boolean {
    const entry = this.entries.get(key)
    return entry !== undefined && entry.ticket === 0
  }

  keys(): Key[] {
    return [...this.entries.keys()]
  }

  /** Where each entry lies (for tests and stats pages). */
  layout(): Array<{ readonly key: Key; readonly offset: number; readonly length: number; readonly pins: number }> {
    return [...this.entries.values()].map((e) => ({ key: e.key, offset: e.offset, length: e.length, pins: e.pins }))
  }

  stats(): HostArenaStats {
    return { budgetBytes: this.budgetBytes, residentBytes: this.residentBytes, entries: this.entries.size, pinned: this.pinned.size, ...this.counters }
  }

  // --- internals -----------------------------------------------------------------

  /**
   * Decides, without changing anything, what to evict and whether to compact so `length`
   * bytes fit. Enough free bytes may still not make a hole (pinned chunks and slab edges
   * cut it up), so the ask to the policy grows until the bytes fit or it can give no more.
   * Each ask scans every entry; growing asks are the rare path (pins or slab edges).
   */
  private planSpace(key: Key, length: number, replaced: Entry | undefined): SpacePlan {
    const freeBytes = this.budgetBytes - this.residentBytes + (replaced?.length ?? 0)
    let ask = Math.max(0, length - freeBytes)
    let evict = ask === 0 ? [] : ((this.evictAhead > 0 ? this.select(ask + this.evictAhead, replaced?.key) : null) ?? this.select(ask, replaced?.key))
    let evictable = Infinity
    for (let round = 0; ; round++) {
      if (evict === null) {
        throw hostCacheError(
          "budget_exceeded",
          key,
          `${length} bytes do not fit: ${freeBytes} free of ${this.budgetBytes}, ${this.pinned.size} chunks pinned, ` +
            `policy ${this.current.name} cannot evict enough around them`,
        )
      }
      const fit = this.fits(length, evict, replaced)
      if (fit !== null) return { evict, compact: fit === "compact" }
      if (evictable === Infinity) evictable = this.unpinnedBytes(replaced?.key)
      if (ask >= evictable) evict = null
      else {
        // One more chunk than this choice (for policies that take a prefix of their order);
        // after a few rounds, double, to bound the number of scans.
        const freed = evict.reduce((sum, k) => sum + this.entries.get(k)!.length, 0)
        ask = Math.min(evictable, round < 8 ? freed + 1 : Math.max(2 * ask, freed + 1))
        evict = this.select(ask, replaced?.key)
      }
    }
  }

  /** Whether `length` bytes fit once `evict` and `replaced` are gone: directly, after a compaction, or not at all. */
  private fits(length: number, evict: ReadonlyArray<Key>, replaced: Entry | undefined): "direct" | "compact" | null {
    const released: Entry[] = evict.map((k) => this.entries.get(k)!)
    if (replaced !== undefined) released.push(replaced)
    let sim = this.free
    if (released.length > 0) {
      sim = sim.clone()
      for (const e of released) sim.release(e)
    }
    if (sim.fits(length)) return "direct"
    const { movable, fixed } = this.split(new Set(released.map((e) => e.key)))
    return planCompaction(movable, fixed, this.budgetBytes, length) === null ? null : "compact"
  }

  private unpinnedBytes(exclude: Key | undefined): number {
    let total = 0
    for (const e of this.list) if (e.pins === 0 && e.key !== exclude) total += e.length
    return total
  }

  /** The policy's choice, checked: unpinned, distinct, resident keys adding up to `needBytes`, or null. */
  private select(needBytes: number, exclude: Key | undefined): ReadonlyArray<Key> | null {
    // The chunk being replaced is freed anyway: the policy sees it as pinned, so it cannot pick it.
    const protect = exclude !== undefined && !this.pinned.has(exclude)
    if (protect) this.pinned.add(exclude)
    let chosen: ReadonlyArray<Key> | null
    try {
      chosen = this.current.select(this.list, needBytes, this.pinned)
    } finally {
      if (protect) this.pinned.delete(exclude)
    }
    if (chosen === null) return null
    const seen = new Set<Key>()
    let freed = 0
    for (const k of chosen) {
      const e = this.entries.get(k)
      if (e === undefined || e.pins > 0 || k === exclude || seen.has(k)) return null
      seen.add(k)
      freed += e.length
    }
    return freed >= needBytes ? chosen : null
  }

  /** Entries split into those compaction may move and those it must not (pinned, and slab edges), minus `gone`. */
  private split(gone: ReadonlySet<Key>) {
    const movable: Array<Extent & { key: Key }> = []
    const fixed: Extent[] = []
    // Empty fixed extents at slab boundaries keep moved chunks from straddling two slabs.
    for (let at = this.slabBytes; at < this.budgetBytes; at += this.slabBytes) fixed.push({ offset: at, length: 0 })
    for (const e of this.entries.values()) {
      if (gone.has(e.key)) continue
      if (e.pins > 0) fixed.push(e)
      else movable.push({ key: e.key, offset: e.offset, length: e.length })
    }
    return { movable, fixed }
  }

  /** Slides unpinned chunks down until a hole of `need` bytes opens, then rebuilds the free list. */
  private compact(need: number): void {
    const { movable, fixed } = this.split(new Set())
    const plan = planCompaction(movable, fixed, this.budgetBytes, need)
    if (plan === null) throw new Error(`HostArena: compaction planned for ${need} bytes found no hole`)
    for (const m of plan.moves) {
      const to = this.locate(m.to)
      const from = this.locate(m.from)
      const target = this.slabs[to.slab]!
      if (to.slab === from.slab) target.copyWithin(to.at, from.at, from.at + m.length)
      else target.set(this.slabs[from.slab]!.subarray(from.at, from.at + m.length), to.at)
      this.entries.get(m.key)!.offset = m.to
      this.counters.movedBytes += m.length
    }
    this.counters.compactions++
    this.free = FreeList.around(this.budgetBytes, this.list, this.slabBytes)
  }

  /** Slab and offset in it of an arena offset. */
  private locate(offset: number): { readonly slab: number; readonly at: number } {
    const slab = Math.floor(offset / this.slabBytes)
    return { slab, at: offset - slab * this.slabBytes }
  }

  private view(offset: number, length: number): Uint8Array {
    const { slab, at } = this.locate(offset)
    return this.slabs[slab]!.subarray(at, at + length)
  }

  private pending(ticket: StoreTicket): Entry {
    const entry = this.entries.get(ticket.key)
    if (entry === undefined || entry.ticket !== ticket.id) throw hostCacheError("ticket_stale", ticket.key, `store ticket ${ticket.id} is not pending`)
    return entry
  }

  private pinEntry(entry: Entry): void {
    entry.pins++
    this.pinned.add(entry.key)
  }

  private unpinEntry(entry: Entry): void {
    entry.pins--
    if (entry.pins === 0) this.pinned.delete(entry.key)
  }

  private drop(entry: Entry): void {
    const moved = this.list.pop()!
    if (moved !== entry) {
      this.list[entry.index] = moved
      moved.index = entry.index
    }
    this.entries.delete(entry.key)
    this.pinned.delete(entry.key)
    this.free.release(entry)
    this.residentBytes -= entry.length
  }
}
