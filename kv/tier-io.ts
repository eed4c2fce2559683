// TierIo: how the tiered cache reaches its host and disk tiers, chunk by chunk, under one
// session. LocalTierIo implements it over a HostArena and a DiskStore in this process and
// is the only caller that changes them for the cache. Invariants: the arena's operations
// happen in the order of the loads (so its evictions are those of a one-at-a-time loop)
// and no two of them overlap, while disk reads run ahead on libuv's thread pool; a failed
// load leaves no reservation behind; a seal is indexed all or nothing.
//
// A chunk linked from another session (DiskStore.linkChunks: a shared prefix, the same disk
// bytes) is held in the host arena under its owner's key, so the sequences sharing it share
// one host copy; each sequence using another's key is counted (per arena), and the entry
// goes when the owner and the last of them have let go of it. The owner is the session whose
// segment file holds the bytes while it still indexes them there; once it has let go (a
// request ended, a session deleted), the first sequence to read them holds them under its own
// key for the others (found by the bytes' place, file and offset).
//
// Seals stay synchronous: DiskStore.putChunks appends to the session's segment file and
// then indexes in one uninterrupted step. An await between the two would let another seal
// append to the same file, and the first one's rollback (a truncate back to its start)
// would cut the other's bytes; lmdb-js's asynchronous transaction() does not roll back on
// a throw, so the index commit stays a transactionSync (~10 us without fsync).
import type { DiskStore } from "./disk-store.ts"
import { chunkKey, type EvictionPolicy } from "./eviction.ts"
import type { HostArena } from "./host-arena.ts"
import { segmentFileName } from "./segments.ts"
import { bitsOfDtype, chunkBytesAt, dtypeOfBits, type KvBits, type KvShape } from "./quant.ts"
import { traceSpan } from "./step-trace.ts"
import { KvTierError, tierErrorOf } from "./tier-errors.ts"
import { HIDDEN_LAYER_BASE } from "./recompute-cost.ts"

export interface ChunkLoad {
  readonly layer: number
  readonly chunk: number
  /** The chunk's fp16 length (K then V); a stored chunk of another length than its dtype's is corrupt. */
  readonly bytes: number
  /** The chunk's tokens: the length of a quantized copy derives from them (needed to read one). */
  readonly tokens?: number
  /**
   * Copies the bytes into the caller's staging view (converting them from `bits` when the
   * caller's slots hold another format); `src` stays valid until it resolves.
   */
  readonly stage: (src: Uint8Array, bits: KvBits) => Promise<void>
}

/** Where a load's bytes came from. */
export type Tier = "host" | "disk"

export interface SealedChunk {
  readonly layer: number
  readonly chunk: number
  readonly tokens: number
  /** The chunk's bytes at `bits`: (K then V) f16 as the GPU pools hold its blocks, or kv/quant.ts's int8/int4 layout (quantized by the seal, on the GPU). */
  readonly kv: Uint8Array
  /** Bits it is kept at in the host and disk tiers; 16 when left out. */
  readonly bits?: KvBits
  /** The chunk's min then max abstract, (KV, D/2) f16 each. */
  readonly abstract: Uint8Array
}

/** What the disk tier holds of one layer of the session, in chunk order (gaps are the caller's to refuse). */
export interface StoredLayer {
  readonly chunks: ReadonlyArray<{ readonly chunk: number; readonly tokens: number }>
  readonly abstracts: ReadonlyArray<{ readonly chunk: number; readonly bytes: Uint8Array }>
}

export interface TierIo {
  /** The session the chunks are read and written under (the tiered cache switches it for stored sessions). */
  session: string
  /**
   * Stages each chunk, in order: from the host arena when resident, else from disk (then
   * copied into the arena when `promote`). Resolves to each one's tier; rejects with a
   * KvTierError (chunk_corrupt, chunk_missing, io_failed) once no read is left in flight.
   */
  load(loads: ReadonlyArray<ChunkLoad>, promote: boolean): Promise<Tier[]>
  /**
   * Writes sealed chunks through to disk (chunks and abstracts indexed) and the host arena.
   * Their bytes are read before this returns; resolves to the chunk bytes written, rejects
   * with a KvTierError (disk_full: nothing of the batch indexed).
   */
  storeSealed(chunks: ReadonlyArray<SealedChunk>): Promise<number>
  /** The session's chunk table and abstracts of one layer, as stored (to resume the sequence). */
  adoptLayer(layer: number): StoredLayer
  /** A chunk's min then max abstract from LMDB (their source of truth; the GPU may hold a copy under budget). */
  abstractOf(layer: number, chunk: number): Uint8Array
  /** The importance of a chunk the host arena holds (ignored when it does not). */
  setScore(layer: number, chunk: number, score: number): void
  /** That importance, as last set (0 when unknown: never set, or the chunk is not in the host arena). */
  scoreOf(layer: number, chunk: number): number
  /** Drops a chunk from the host arena (the sequence no longer reaches it). */
  forget(layer: number, chunk: number): void
  /** Drops the session's chunks from the disk tier. */
  dropSession(): void
  /** Drops the session's chunks of layer l from index keep[l] on from the disk tier. */
  truncateSession(keep: ReadonlyArray<number>): void
  setHostEviction(policy: EvictionPolicy): void
  hostBytes(): { readonly budgetBytes: number; readonly residentBytes: number }
  /** Bytes of the session's chunks on disk, over `layers` layers (an index scan: for replies, not per token). */
  storedBytes(layers: number): number
  /** Whether the host arena holds a chunk now (a load of it would not read the disk). */
  hostHolds(layer: number, chunk: number): boolean
}

/** Disk reads started ahead of the load whose turn it is. */
const READ_AHEAD = 4

/** Host entries read under another session's key, per arena: their users besides the owner, and those whose owner let go. */
interface SharedHost {
  readonly users: Map<string, number>
  readonly ownerGone: Set<string>
  /** Bytes linked from a file whose session let go of them, by place ("file@offset"): the session holding them under its own key. */
  readonly places: Map<string, string>
}
const sharedHost = new WeakMap<HostArena, SharedHost>()

/**
 * The owner of a host entry lets go of it outside any cache (a stored session closed or
 * deleted): it stays while other sequences use it (the last of them removes it) and goes now
 * otherwise. A cache using it has counted itself before it loads it, so no load pins it here.
 */
export const releaseHostEntry = (arena: HostArena, key: string): void => {
  const shared = sharedHost.get(arena)
  if ((shared?.users.get(key) ?? 0) > 0) shared!.ownerGone.add(key)
  else arena.remove(key)
}

/** A session is gone (deleted or evicted): the places it held for others are free for the next reader. */
export const releaseHostPlaces = (arena: HostArena, session: string): void => {
  const places = sharedHost.get(arena)?.places
  if (places) for (const [place, holder] of places) if (holder === session) places.delete(place)
}

/** The session whose segment file this is, when the name says it (a plain name; hashed names cannot be read back). */
const sessionOfFile = (file: string): string | undefined => /^([A-Za-z0-9_-]{1,100})\.seg$/.exec(file)?.[1]

export class LocalTierIo implements TierIo {
  /** Host buffers of disk reads (the CRC reads them; mapped staging memory is slow to read). */
  private readonly spare: Uint8Array[] = []

  /** Bits of the chunks this cache put into the host arena (else their LMDB entry says). */
  private readonly held = new Map<string, KvBits>()
  /** Host keys of this session's chunks by layer, then chunk: its own, or a linked chunk's owner's (looked up once). */
  private readonly hostKeys = new Map<number, string[]>()
  /** Other sessions' host keys this cache counts itself a user of. */
  private readonly using = new Set<string>()
  /** This session's host keys of linked bytes it holds for others (their places), whose file's session let go. */
  private readonly placed = new Map<string, string>()
  private readonly shared: SharedHost
  private current: string

  constructor(
    private readonly arena: HostArena,
    private readonly store: DiskStore,
    session: string,
    /** The KV geometry, needed to quantize seals and to size quantized chunks. */
    private readonly shape?: KvShape,
  ) {
    this.current = session
    let shared = sharedHost.get(arena)
    if (!shared) sharedHost.set(arena, (shared = { users: new Map(), ownerGone: new Set(), places: new Map() }))
    this.shared = shared
  }

  get session(): string {
    return this.current
  }

  /** Another session: the chunks of the last one are no longer used from here. */
  set session(session: string) {
    if (session === this.current) return
    this.releaseShared()
    this.current = session
  }

  /** The bits a chunk is stored at: as this cache stored it, else as its LMDB entry says. */
  private bitsOf(load: ChunkLoad): KvBits {
    const key = this.keyOf(load)
    const known = this.held.get(key)
    if (known !== undefined) return known
    let entry
    try {
      entry = this.store.chunkEntry([this.session, load.layer, load.chunk])
    } catch (e) {
      throw tierErrorOf(e)
    }
    if (entry === undefined) return 16
    const bits = bitsOfDtype(entry.dtype)
    if (bits === undefined) throw new KvTierError("chunk_corrupt", `chunk ${key} has dtype ${JSON.stringify(entry.dtype)}, which this build cannot read`)
    return bits
  }

  /** Bytes of a load's chunk at `bits`. */
  private lengthOf(load: ChunkLoad, bits: KvBits): number {
    if (bits === 16) return load.bytes
    if (this.shape === undefined || load.tokens === undefined) throw new KvTierError("chunk_corrupt", `chunk ${this.keyOf(load)} is stored at ${bits} bits; this cache cannot size it`)
    return chunkBytesAt(this.shape, load.tokens, bits)
  }

  async load(loads: ReadonlyArray<ChunkLoad>, promote: boolean): Promise<Tier[]> {
    const tiers: Tier[] = []
    const ahead = new Map<number, Promise<Uint8Array>>()
    let next = 0
    try {
      for (let i = 0; i < loads.length; i++) {
        // Only this loop adds to the arena, and only the chunk whose turn it is: a chunk
        // missing now is still missing at its turn (one present now may be evicted by then).
        for (; next < loads.length && next <= i + READ_AHEAD; next++) {
          if (next === i || this.arena.has(this.keyOf(loads[next]))) continue
          const read = this.readDisk(loads[next])
          read.catch(() => undefined) // its failure is reported at its turn, not while another chunk is awaited
          ahead.set(next, read)
        }
        const readAhead = ahead.get(i)
        ahead.delete(i)
        tiers.push(await this.loadOne(loads[i], promote, readAhead))
      }
    } finally {
      // A failed load leaves reads in flight: their buffers come back once they finish.
      for (const [, read] of ahead) await read.then((b) => this.spare.push(b), () => undefined)
    }
    return tiers
  }

  private async loadOne(load: ChunkLoad, promote: boolean, readAhead: Promise<Uint8Array> | undefined): Promise<Tier> {
    const key = this.keyOf(load)
    const held = this.arena.prepareLoad(key)
    if (held !== undefined) {
      // Its owner reading it holds it again (a stored session resumed after it let go).
      if (!this.using.has(key)) this.shared.ownerGone.delete(key)
      try {
        const bits = this.bitsOf(load)
        const want = this.lengthOf(load, bits)
        if (held.length !== want) throw new KvTierError("chunk_corrupt", `chunk ${key} in the host arena is ${held.length} bytes, want ${want} (${dtypeOfBits(bits)})`)
        await load.stage(held, bits)
      } finally {
        this.arena.completeLoad(key)
        if (readAhead) await readAhead.then((b) => this.spare.push(b), () => undefined)
      }
      return "host"
    }
    const buffer = await (readAhead ?? this.readDisk(load))
    try {
      const bits = this.bitsOf(load)
      const length = this.lengthOf(load, bits)
      // leoam promotes disk reads (selection has locality); offload-all scans every chunk
      // each step, where promotion would only make the arena thrash.
      const ticket = promote ? this.arena.prepareStore(key, length) : undefined
      try {
        ticket?.view.set(buffer.subarray(0, length))
        await load.stage(buffer.subarray(0, length), bits)
      } catch (e) {
        if (ticket) this.arena.abortStore(ticket)
        throw e
      }
      if (ticket) {
        this.arena.completeStore(ticket)
        if (!this.using.has(key)) this.shared.ownerGone.delete(key) // its owner holds it again
        this.held.set(key, bits)
      }
    } finally {
      this.spare.push(buffer)
    }
    return "disk"
  }

  /** The chunk's bytes from disk, CRC-checked, in a buffer of at least their stored length (give it back to `spare`). */
  private async readDisk(load: ChunkLoad): Promise<Uint8Array> {
    const bits = this.bitsOf(load)
    const want = this.lengthOf(load, bits)
    const at = this.spare.findIndex((b) => b.length >= want)
    const buffer = at >= 0 ? this.spare.splice(at, 1)[0] : new Uint8Array(want)
    let read: Uint8Array
    const t0 = performance.now()
    try {
      read = await this.store.readChunkAsync([this.session, load.layer, load.chunk], buffer.subarray(0, want))
      traceSpan("disk read", t0, load.layer, load.chunk)
    } catch (e) {
      this.spare.push(buffer)
      throw tierErrorOf(e)
    }
    if (read.length !== want) {
      this.spare.push(buffer)
      throw new KvTierError("chunk_corrupt", `chunk ${this.keyOf(load)} is ${read.length} bytes, want ${want} (${dtypeOfBits(bits)})`)
    }
    return buffer
  }

  async storeSealed(chunks: ReadonlyArray<SealedChunk>): Promise<number> {
    const key = (c: SealedChunk) => [this.session, c.layer, c.chunk] as const
    const encoded = chunks.map((c) => ({ c, bits: c.bits ?? 16, bytes: this.encode(c) }))
    try {
      this.store.putChunks(encoded.map(({ c, bits, bytes }) => ({ key: key(c), bytes, meta: { tokens: c.tokens, dtype: dtypeOfBits(bits) } })))
      this.store.putAbstracts(chunks.map((c) => ({ key: key(c), bytes: c.abstract })))
    } catch (e) {
      throw tierErrorOf(e)
    }
    let bytes = 0
    for (const { c, bits, bytes: b } of encoded) {
      const k = chunkKey(this.session, c.layer, c.chunk)
      this.arena.put(k, b)
      this.shared.ownerGone.delete(k) // its owner holds it again
      this.held.set(k, bits)
      bytes += b.length
    }
    return bytes
  }

  /** A seal's bytes, checked against its bits' length where the shape is known (a wrong length is a bug upstream, never stored). */
  private encode(c: SealedChunk): Uint8Array {
    const bits = c.bits ?? 16
    if (bits !== 16 && this.shape === undefined) throw new KvTierError("io_failed", `chunk ${this.keyOf(c)}: storing ${bits}-bit chunks needs the KV shape`)
    if (this.shape !== undefined && c.kv.length !== chunkBytesAt(this.shape, c.tokens, bits)) {
      throw new KvTierError("io_failed", `chunk ${this.keyOf(c)}: ${c.kv.length} bytes sealed at ${bits} bits, want ${chunkBytesAt(this.shape, c.tokens, bits)}`)
    }
    return c.kv
  }

  adoptLayer(layer: number): StoredLayer {
    // A resume reads the session's entries afresh (chunks may have been linked into it since).
    if (layer === 0) this.releaseShared()
    try {
      return {
        chunks: this.store.chunksOf(this.session, layer).map(({ chunk, entry }) => ({ chunk, tokens: entry.tokens })),
        abstracts: this.store.abstractsOf(this.session, layer),
      }
    } catch (e) {
      throw tierErrorOf(e)
    }
  }

  abstractOf(layer: number, chunk: number): Uint8Array {
    try {
      return this.store.getAbstract([this.session, layer, chunk])
    } catch (e) {
      throw tierErrorOf(e)
    }
  }

  setScore(layer: number, chunk: number, score: number): void {
    this.arena.setScore(this.keyOf({ layer, chunk }), score)
  }

  scoreOf(layer: number, chunk: number): number {
    return this.arena.scoreOf(this.keyOf({ layer, chunk }))
  }

  forget(layer: number, chunk: number): void {
    const key = this.keyOf({ layer, chunk })
    const keys = this.hostKeys.get(layer)
    if (keys) delete keys[chunk]
    this.held.delete(key)
    if (this.using.delete(key)) return this.letGo(key)
    const place = this.placed.get(key)
    if (place !== undefined && this.shared.places.get(place) === this.session) this.shared.places.delete(place)
    this.placed.delete(key)
    // The owner lets go: the entry stays while other sessions use it.
    if ((this.shared.users.get(key) ?? 0) > 0) this.shared.ownerGone.add(key)
    else this.arena.remove(key)
  }

  /** One user of another session's entry lets go of it: the last one removes it once its owner has. */
  private letGo(key: string): void {
    const users = (this.shared.users.get(key) ?? 1) - 1
    if (users > 0) return void this.shared.users.set(key, users)
    this.shared.users.delete(key)
    if (this.shared.ownerGone.delete(key)) this.arena.remove(key)
  }

  /** Lets go of every other session's entry this cache used, and forgets which keys its chunks have. */
  private releaseShared(): void {
    for (const key of this.using) this.letGo(key)
    this.using.clear()
    this.hostKeys.clear()
  }

  dropSession(): void {
    this.releaseShared()
    this.store.dropSession(this.session)
    this.held.clear()
  }

  truncateSession(keep: ReadonlyArray<number>): void {
    this.releaseShared()
    // Recompute's hidden records (layer HIDDEN_LAYER_BASE + l) are kept and dropped with their chunks.
    const withHidden = [...keep]
    keep.forEach((n, l) => (withHidden[HIDDEN_LAYER_BASE + l] = n))
    try {
      this.store.truncateSession(this.session, withHidden)
    } catch (e) {
      throw tierErrorOf(e)
    }
  }

  setHostEviction(policy: EvictionPolicy): void {
    this.arena.setPolicy(policy)
  }

  hostHolds(layer: number, chunk: number): boolean {
    return this.arena.has(this.keyOf({ layer, chunk }))
  }

  hostBytes() {
    const a = this.arena.stats()
    return { budgetBytes: a.budgetBytes, residentBytes: a.residentBytes }
  }

  storedBytes(layers: number): number {
    let bytes = 0
    try {
      for (let l = 0; l < layers; l++) for (const { entry } of this.store.chunksOf(this.session, l)) bytes += entry.length
    } catch (e) {
      throw tierErrorOf(e)
    }
    return bytes
  }

  /**
   * The host key of a chunk of this session: its own, or for a chunk linked from another
   * session that still indexes the same bytes at the same place, that session's (this cache
   * then counts as a user of it).
   */
  private keyOf(load: { readonly layer: number; readonly chunk: number }): string {
    // By layer, then chunk: no string built per lookup (several per chunk a decode step chooses).
    let keys = this.hostKeys.get(load.layer)
    const known = keys?.[load.chunk]
    if (known !== undefined) return known
    const own = chunkKey(this.session, load.layer, load.chunk)
    let key = own
    let entry
    try {
      entry = this.store.chunkEntry([this.session, load.layer, load.chunk])
    } catch (e) {
      throw tierErrorOf(e)
    }
    const owner = entry && entry.file !== segmentFileName(this.session) ? sessionOfFile(entry.file) : undefined
    if (owner !== undefined && owner !== this.session) {
      const holder = this.holderOf(owner, entry!, load)
      if (holder !== undefined) {
        key = chunkKey(holder, load.layer, load.chunk)
        this.using.add(key)
        this.shared.users.set(key, (this.shared.users.get(key) ?? 0) + 1)
      } else this.placed.set(own, `${entry!.file}@${entry!.offset}`)
    }
    // Only keys of chunks indexed on disk are kept (a chunk not stored yet may be linked or sealed later).
    if (entry) {
      if (keys === undefined) this.hostKeys.set(load.layer, (keys = []))
      keys[load.chunk] = key
    }
    return key
  }

  /**
   * The session holding a linked chunk's bytes in the host arena for this one: the owner of
   * their file while it indexes them at the same place, else the sequence that first read them
   * after it let go (it still indexes them there); undefined when this one is to hold them.
   */
  private holderOf(owner: string, entry: { readonly file: string; readonly offset: number }, load: { readonly layer: number; readonly chunk: number }): string | undefined {
    const holds = (session: string) => {
      const theirs = this.store.chunkEntry([session, load.layer, load.chunk])
      return theirs !== undefined && theirs.file === entry.file && theirs.offset === entry.offset
    }
    if (holds(owner)) return owner
    const place = `${entry.file}@${entry.offset}`
    const holder = this.shared.places.get(place)
    if (holder !== undefined && holder !== this.session && holds(holder)) return holder
    this.shared.places.set(place, this.session)
    return undefined
  }
}
