// DiskStore: the disk tier. Owns one LMDB environment at `<kvDir>/index.lmdb` (named
// databases `abstracts`, `chunks`, `sessions`, `policy_history`) and the segment files
// under `<kvDir>/chunks/`. Invariant: a `chunks` entry is committed only after its bytes
// are fully written, and a failed commit truncates them away, so every entry points at
// complete bytes (a crash before flush() can still lose bytes: the CRC then reports it).
// Its owner (the disk-store actor, or the tiered cache through kv/tier-io.ts) calls it;
// every method is synchronous except readChunkAsync, flush and close, and no LMDB read
// snapshot outlives the call that opened it (readChunkAsync reads the index before it awaits).

import * as fs from "node:fs"
import * as path from "node:path"
import { open, TransactionFlags, type Database, type Key, type RootDatabase } from "lmdb"
import { crc32, crc32IsNative } from "./crc32.ts"
import { DiskStoreError, diskStoreError, writeError } from "./disk-errors.ts"
import {
  checkChunkKey,
  checkSession,
  showKey,
  type ChunkEntry,
  type ChunkKey,
  type ChunkMeta,
  type PolicyRecord,
  type SessionMeta,
  type SessionRecord,
} from "./records.ts"
import { checkIndex, freshHint, walkIndex, writeMarker } from "./index-check.ts"
import { keysOf, reclaim, thisWriter, type ReclaimReport, type WriterRecord } from "./reclaim.ts"
import { nodeFileIo, SegmentFiles, segmentFileName, type FileIo } from "./segments.ts"
import { ensureDir, privateFiles } from "./kv-dir.ts"

export interface DiskStoreOptions {
  /** The KV directory; created if its parent exists. */
  readonly kvDir: string
  /** LMDB's initial map size (it grows on demand). */
  readonly mapSizeBytes?: number
  /** File calls to use instead of node:fs (tests inject a full disk here). */
  readonly io?: Partial<FileIo>
  /** The clock of session and policy timestamps. */
  readonly now?: () => Date
  /** Segment files kept open at once (least recently used close first). */
  readonly maxOpenFiles?: number
  /**
   * fsync every chunk and abstract commit (as sessions and policies always are). Off by
   * default: those commits then cost ~10 us instead of an fsync, and an OS crash (not a
   * process crash) before flush() may lose them or, as with LMDB's MDB_NOSYNC, worse.
   */
  readonly durableChunkCommits?: boolean
  /**
   * How far the index is checked before it is mapped: "walk" (default) also reads every
   * entry in a child process (~0.1 s plus the index's size at disk speed), so damage inside
   * its pages is refused instead of crashing this process; "header" checks only the meta
   * pages and the file's size (truncation, zeroing, garbage headers, an empty file).
   */
  readonly verifyIndex?: "walk" | "header"
}

/** One chunk of a putChunks batch. */
export interface ChunkWrite {
  readonly key: ChunkKey
  readonly bytes: Uint8Array
  readonly meta: ChunkMeta
}

export interface DiskStoreStats {
  /** Chunk bytes appended to segment files by this process. */
  readonly bytesWritten: number
  /** Chunk bytes read (and CRC-checked) by this process. */
  readonly bytesRead: number
  readonly chunkWrites: number
  readonly chunkReads: number
  /** Reads that failed their CRC or came back short. */
  readonly corruptReads: number
  /** Entries in the chunk index. */
  readonly chunkCount: number
  readonly abstractCount: number
  readonly sessionCount: number
  /** Bytes of all segment files, dead (overwritten or unindexed) chunks included. */
  readonly fileBytes: number
  readonly crc32Native: boolean
}

type LmdbKey = Key
const k = (key: ChunkKey | readonly [number]): LmdbKey => key as unknown as LmdbKey

/** Chunk and abstract writes commit without an fsync; flush() makes them durable. Sessions and policies commit durably. */
const NO_WAIT_FLUSH = TransactionFlags.ABORTABLE | TransactionFlags.SYNCHRONOUS_COMMIT | TransactionFlags.NO_SYNC_FLUSH

export class DiskStore {
  private readonly chunks: Database<ChunkEntry, LmdbKey>
  private readonly abstracts: Database<Uint8Array, LmdbKey>
  private readonly sessions: Database<SessionRecord, LmdbKey>
  private readonly policies: Database<PolicyRecord, LmdbKey>
  private readonly writers: Database<WriterRecord, LmdbKey>
  /** Sessions this process has registered as their writer. */
  private readonly writing = new Set<string>()
  private readonly counters = { bytesWritten: 0, bytesRead: 0, chunkWrites: 0, chunkReads: 0, corruptReads: 0 }
  private closed = false

  private constructor(
    readonly kvDir: string,
    private readonly root: RootDatabase,
    private readonly segments: SegmentFiles,
    private readonly now: () => Date,
    private readonly chunkCommitFlags: number | undefined,
  ) {
    this.chunks = root.openDB<ChunkEntry, LmdbKey>("chunks", { encoding: "msgpack" })
    this.abstracts = root.openDB<Uint8Array, LmdbKey>("abstracts", { encoding: "binary" })
    this.sessions = root.openDB<SessionRecord, LmdbKey>("sessions", { encoding: "msgpack" })
    this.policies = root.openDB<PolicyRecord, LmdbKey>("policy_history", { encoding: "msgpack" })
    this.writers = root.openDB<WriterRecord, LmdbKey>("writers", { encoding: "msgpack" })
  }

  private dbs() {
    return { chunks: this.chunks, abstracts: this.abstracts, sessions: this.sessions, writers: this.writers }
  }

  /** Registers this process as the writer of each new session, before any of its bytes land. */
  private claimSessions(sessions: Iterable<string>): void {
    const fresh = [...new Set(sessions)].filter((s) => !this.writing.has(s))
    if (fresh.length === 0) return
    const me = thisWriter()
    this.commit(() => {
      for (const s of fresh) this.writers.putSync(s, me)
    }, this.chunkCommitFlags)
    for (const s of fresh) this.writing.add(s)
  }

  static open(options: DiskStoreOptions): DiskStore {
    const kvDir = path.resolve(options.kvDir)
    ensureDir(kvDir)
    const chunkDir = path.join(kvDir, "chunks")
    ensureDir(chunkDir)
    const indexPath = path.join(kvDir, "index.lmdb")
    checkIndex(kvDir, indexPath, chunkDir)
    if (options.verifyIndex !== "header" && fs.existsSync(indexPath)) {
      const wrong = walkIndex(indexPath)
      if (wrong !== undefined) throw diskStoreError("kv_dir_unavailable", indexPath, `the LMDB index is damaged (${wrong}); ${freshHint(kvDir, indexPath)}`)
    }
    let root: RootDatabase
    try {
      // overlappingSync (lmdb-js's Linux default) ignores NO_SYNC_FLUSH and fsyncs every
      // synchronous commit (~0.3-6 ms here); without it chunk commits cost ~10 us.
      root = open({
        path: indexPath,
        maxDbs: 8,
        overlappingSync: false,
        ...(options.mapSizeBytes === undefined ? {} : { mapSize: options.mapSizeBytes }),
      })
    } catch (e) {
      throw diskStoreError("kv_dir_unavailable", indexPath, `cannot open the LMDB index: ${(e as Error).message}`)
    }
    const now = options.now ?? (() => new Date())
    const io: FileIo = { ...nodeFileIo, ...options.io }
    const segments = new SegmentFiles(chunkDir, io, options.maxOpenFiles ?? 64)
    let store: DiskStore
    try {
      store = new DiskStore(kvDir, root, segments, now, options.durableChunkCommits === true ? undefined : NO_WAIT_FLUSH)
      privateFiles(chunkDir, indexPath, `${indexPath}-lock`)
      writeMarker(kvDir, now())
      store.reclaimed = store.commit(() => reclaim(store.dbs(), chunkDir))
    } catch (e) {
      void root.close()
      const damaged = /MDB_CORRUPTED|MDB_INVALID|MDB_PAGE_NOTFOUND|MDB_BAD/.test((e as Error).message)
      if (!damaged) throw e
      throw diskStoreError(
        "kv_dir_unavailable",
        indexPath,
        `the LMDB index is damaged (${(e as Error).message}); ${freshHint(kvDir, indexPath)}`,
      )
    }
    return store
  }

  /** What this open took back from crashed writers (see kv/reclaim.ts). */
  reclaimed: ReclaimReport = { sessions: 0, entries: 0, files: 0, bytes: 0 }

  get indexPath(): string {
    return path.join(this.kvDir, "index.lmdb")
  }

  // --- chunks -------------------------------------------------------------------

  putChunk(key: ChunkKey, bytes: Uint8Array, meta: ChunkMeta): ChunkEntry {
    return this.putChunks([{ key, bytes, meta }])[0]!
  }

  /** Appends every chunk's bytes, then indexes them all in one commit: all or nothing. */
  putChunks(writes: ReadonlyArray<ChunkWrite>): ChunkEntry[] {
    this.checkOpen()
    for (const w of writes) {
      checkChunkKey(w.key)
      checkMeta(w.key, w.meta)
    }
    this.claimSessions(writes.map((w) => w.key[0]))
    const files = writes.map((w) => segmentFileName(w.key[0]))
    const crcs = writes.map((w) => crc32(w.bytes))
    const tails = this.segments.tails(new Set(files))
    const offsets = this.segments.appendAll(writes.map((w, i) => ({ file: files[i]!, bytes: w.bytes })))
    let entries: ChunkEntry[]
    try {
      entries = this.commit(() =>
        writes.map((w, i) => {
          const previous = this.chunks.get(k(w.key))
          const entry: ChunkEntry = {
            file: files[i]!,
            offset: offsets[i]!,
            length: w.bytes.length,
            crc32: crcs[i]!,
            tokens: w.meta.tokens,
            dtype: w.meta.dtype,
            version: (previous?.version ?? 0) + 1,
          }
          this.chunks.putSync(k(w.key), entry)
          return entry
        }),
        this.chunkCommitFlags,
      )
    } catch (e) {
      this.segments.rollback(tails)
      throw e
    }
    for (const w of writes) this.counters.bytesWritten += w.bytes.length
    this.counters.chunkWrites += writes.length
    return entries
  }

  /** The index entry of a chunk (its handle), or undefined. */
  chunkEntry(key: ChunkKey): ChunkEntry | undefined {
    this.checkOpen()
    checkChunkKey(key)
    return this.chunks.get(k(key))
  }

  /** Index entries of one layer of a session, in chunk order. */
  chunksOf(session: string, layer: number): Array<{ readonly chunk: number; readonly entry: ChunkEntry }> {
    this.checkOpen()
    checkChunkKey([session, layer, 0])
    const out: Array<{ chunk: number; entry: ChunkEntry }> = []
    for (const { key, value } of this.chunks.getRange({ start: [session, layer], end: [session, layer + 1] })) {
      out.push({ chunk: (key as unknown as ChunkKey)[2], entry: value })
    }
    return out
  }

  /**
   * Reads a chunk's bytes and checks their CRC. With `into`, the bytes land in its first
   * `length` bytes (e.g. a mapped GPU staging buffer) and that view is returned.
   */
  readChunk(key: ChunkKey, into?: Uint8Array): Uint8Array {
    const { entry, target } = this.readTarget(key, into)
    return this.checked(key, entry, target, this.segments.read(entry.file, entry.offset, target))
  }

  /** readChunk with the bytes read on libuv's thread pool: the event loop is not blocked by the disk. */
  async readChunkAsync(key: ChunkKey, into?: Uint8Array): Promise<Uint8Array> {
    const { entry, target } = this.readTarget(key, into)
    const got = await this.segments.readAsync(entry.file, entry.offset, target)
    return this.checked(key, entry, target, got)
  }

  /** The chunk's index entry and the view its bytes go to. */
  private readTarget(key: ChunkKey, into: Uint8Array | undefined): { entry: ChunkEntry; target: Uint8Array } {
    const entry = this.chunkEntry(key)
    if (entry === undefined) throw diskStoreError("chunk_missing", this.indexPath, `no chunk ${showKey(key)}`)
    if (into !== undefined && into.length < entry.length) {
      throw diskStoreError("buffer_too_small", this.segments.pathOf(entry.file), `chunk ${showKey(key)} is ${entry.length} bytes, buffer ${into.length}`)
    }
    return { entry, target: into === undefined ? new Uint8Array(entry.length) : into.subarray(0, entry.length) }
  }

  /** The bytes read, once their length and CRC match the index. */
  private checked(key: ChunkKey, entry: ChunkEntry, target: Uint8Array, got: number): Uint8Array {
    const file = this.segments.pathOf(entry.file)
    if (got < entry.length) {
      this.counters.corruptReads++
      throw diskStoreError("chunk_corrupt", file, `chunk ${showKey(key)}: short read, ${got} of ${entry.length} bytes at ${entry.offset}`)
    }
    const crc = crc32(target)
    if (crc !== entry.crc32) {
      this.counters.corruptReads++
      throw diskStoreError("chunk_corrupt", file, `chunk ${showKey(key)} at ${entry.offset}: crc32 ${hex(crc)}, index says ${hex(entry.crc32)}`)
    }
    this.counters.bytesRead += entry.length
    this.counters.chunkReads++
    return target
  }

  // --- abstracts ----------------------------------------------------------------

  putAbstract(key: ChunkKey, bytes: Uint8Array): void {
    this.putAbstracts([{ key, bytes }])
  }

  /** Stores abstracts in one commit. */
  putAbstracts(writes: ReadonlyArray<{ readonly key: ChunkKey; readonly bytes: Uint8Array }>): void {
    this.checkOpen()
    for (const w of writes) checkChunkKey(w.key)
    this.claimSessions(writes.map((w) => w.key[0]))
    this.commit(() => {
      for (const w of writes) this.abstracts.putSync(k(w.key), w.bytes)
    }, this.chunkCommitFlags)
  }

  getAbstract(key: ChunkKey): Uint8Array {
    this.checkOpen()
    checkChunkKey(key)
    const bytes = this.abstracts.get(k(key))
    if (bytes === undefined) throw diskStoreError("abstract_missing", this.indexPath, `no abstract for chunk ${showKey(key)}`)
    return plain(bytes)
  }

  /** Abstracts of one layer of a session, in chunk order (one range read). */
  abstractsOf(session: string, layer: number): Array<{ readonly chunk: number; readonly bytes: Uint8Array }> {
    this.checkOpen()
    checkChunkKey([session, layer, 0])
    const out: Array<{ chunk: number; bytes: Uint8Array }> = []
    for (const { key, value } of this.abstracts.getRange({ start: [session, layer], end: [session, layer + 1] })) {
      out.push({ chunk: (key as unknown as ChunkKey)[2], bytes: plain(value) })
    }
    return out
  }

  // --- sessions -----------------------------------------------------------------

  /** Creates or updates a session record; created_at survives updates. */
  putSession(id: string, meta: SessionMeta): SessionRecord {
    this.checkOpen()
    checkSession(id)
    const at = this.now().toISOString()
    return this.commit(() => {
      const previous = this.sessions.get(id)
      const record: SessionRecord = { ...meta, id, created_at: previous?.created_at ?? at, updated_at: at }
      this.sessions.putSync(id, record)
      return record
    })
  }

  getSession(id: string): SessionRecord | undefined {
    this.checkOpen()
    checkSession(id)
    return this.sessions.get(id)
  }

  listSessions(): SessionRecord[] {
    this.checkOpen()
    return Array.from(this.sessions.getRange({}), ({ value }) => value)
  }

  /** Removes a session's record, chunks, abstracts and segment file; false if there was none of them. */
  dropSession(id: string): boolean {
    this.checkOpen()
    checkSession(id)
    // Its own file and those its shared chunks (linkChunks) point into: each goes once no entry refers to it.
    const files = new Set([segmentFileName(id)])
    const removed = this.commit(() => {
      let n = this.sessions.removeSync(id) ? 1 : 0
      for (const key of keysOf(this.chunks, id)) files.add(this.chunks.get(key)?.file ?? "")
      for (const db of [this.chunks, this.abstracts] as const) {
        for (const key of keysOf(db, id)) n += db.removeSync(key) ? 1 : 0
      }
      this.writers.removeSync(id)
      return n
    })
    this.writing.delete(id)
    const hadFile = fs.existsSync(this.segments.pathOf(segmentFileName(id)))
    for (const { value } of this.chunks.getRange({})) files.delete(value.file)
    for (const file of files) if (file) this.segments.remove(file)
    return removed > 0 || hadFile
  }

  /** Points session `to`'s first keep[l] chunks of layer l at `from`'s bytes (a shared prefix, written once), abstracts copied. */
  linkChunks(from: string, to: string, keep: ReadonlyArray<number>): void {
    this.checkOpen()
    checkSession(from)
    this.claimSessions([to])
    this.commit(() => {
      for (const key of keysOf(this.chunks, from)) {
        const [, layer, chunk] = key as unknown as ChunkKey
        if (chunk >= (keep[layer] ?? 0)) continue
        this.chunks.putSync(k([to, layer, chunk]), { ...this.chunks.get(key)!, version: 1 })
        this.abstracts.putSync(k([to, layer, chunk]), this.abstracts.get(key)!)
      }
    }, this.chunkCommitFlags)
  }

  /**
   * Drops a session's chunks and abstracts of layer l from chunk keep[l] on (a stored
   * session's question, past its document), then cuts its segment file after the last chunk
   * left (the dropped ones were appended after the document's).
   */
  truncateSession(id: string, keep: ReadonlyArray<number>): void {
    this.checkOpen()
    checkSession(id)
    const file = segmentFileName(id)
    const end = this.commit(() => {
      let end = 0
      for (const key of keysOf(this.chunks, id)) {
        const [, layer, chunk] = key as unknown as ChunkKey
        if (chunk >= (keep[layer] ?? 0)) {
          this.chunks.removeSync(key)
          this.abstracts.removeSync(key)
        } else {
          const e = this.chunks.get(key)
          if (e && e.file === file) end = Math.max(end, e.offset + e.length)
        }
      }
      return end
    })
    if (fs.existsSync(this.segments.pathOf(file))) this.segments.rollback(new Map([[file, end]]))
  }

  // --- policy history -----------------------------------------------------------

  /** Appends a policy change as the next version. */
  appendPolicy(change: Omit<PolicyRecord, "version" | "at"> & { readonly at?: string }): PolicyRecord {
    this.checkOpen()
    return this.commit(() => {
      const version = (this.latestPolicy()?.version ?? 0) + 1
      const given = Object.fromEntries(Object.entries(change).filter(([, v]) => v !== undefined)) as typeof change
      const record: PolicyRecord = { ...given, version, at: change.at ?? this.now().toISOString() }
      this.policies.putSync(k([version]), record)
      return record
    })
  }

  /** Every policy change, oldest first. */
  policyHistory(): PolicyRecord[] {
    this.checkOpen()
    return Array.from(this.policies.getRange({}), ({ value }) => value)
  }

  latestPolicy(): PolicyRecord | undefined {
    this.checkOpen()
    for (const { value } of this.policies.getRange({ reverse: true, limit: 1 })) return value
    return undefined
  }

  // --- lifecycle ----------------------------------------------------------------

  stats(): DiskStoreStats {
    this.checkOpen()
    return {
      ...this.counters,
      chunkCount: this.chunks.getCount(),
      abstractCount: this.abstracts.getCount(),
      sessionCount: this.sessions.getCount(),
      fileBytes: this.segments.fileBytes(),
      crc32Native: crc32IsNative,
    }
  }

  /** Makes everything written so far durable: fsyncs segment files, then syncs the LMDB environment. */
  async flush(): Promise<void> {
    this.checkOpen()
    this.segments.sync()
    const root = this.root as unknown as { sync(callback: (error: unknown) => void): void }
    await new Promise<void>((resolve, reject) =>
      root.sync((error) => (error ? reject(writeError(this.indexPath, error)) : resolve())),
    )
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.segments.closeAll()
    await this.root.close()
  }

  private checkOpen(): void {
    if (this.closed) throw diskStoreError("store_closed", this.kvDir, "the disk store is closed")
  }

  /** Runs `body` in one synchronous LMDB write transaction; a throw aborts it. */
  private commit<T>(body: () => T, flags?: number): T {
    try {
      return flags === undefined ? this.root.transactionSync(body) : this.root.transactionSync(body, flags as TransactionFlags)
    } catch (e) {
      if (e instanceof DiskStoreError) throw e
      throw writeError(this.indexPath, e)
    }
  }
}

const checkMeta = (key: ChunkKey, meta: ChunkMeta): void => {
  if (!Number.isSafeInteger(meta.tokens) || meta.tokens < 0 || typeof meta.dtype !== "string" || meta.dtype.length === 0) {
    throw diskStoreError("invalid_meta", undefined, `chunk ${showKey(key)}: invalid meta ${JSON.stringify(meta)}`)
  }
}

/** LMDB hands back a Buffer (a copy it owns no longer); callers get a plain Uint8Array view of it. */
const plain = (b: Uint8Array): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

const hex = (n: number) => `0x${n.toString(16).padStart(8, "0")}`
