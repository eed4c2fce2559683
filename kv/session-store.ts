// Stored sessions: the `sessions` database of the disk store (DiskStore.putSession), with
// what a session needs besides its chunks: its owner, its node, the token ids of its
// document (the tokens past its last sealed chunk are prefilled again from them when it is
// resumed), the chunk size its chunks were cut with, and when it was last used. A record
// is written (durably) only after the session's chunks are flushed, so a record always
// has its chunks: one that crashed before it is reclaimed at the next open (kv/reclaim.ts).
import type { DiskStore } from "./disk-store.ts"
import type { SessionMeta, SessionRecord } from "./records.ts"

/** What the `sessions` database holds for a leoam session (msgpack: the ids as u32 little-endian bytes). */
interface SessionDoc extends SessionMeta {
  readonly owner: string
  readonly node: string
  readonly ids: Uint8Array
  readonly chunk_tokens: number
  readonly last_used_at: string
}

export interface StoredSession {
  readonly id: string
  readonly owner: string
  readonly node: string
  readonly model: string
  /** The document's token ids (its length is the session's). */
  readonly ids: ReadonlyArray<number>
  readonly chunkTokens: number
  readonly policyVersion?: number
  readonly created: string
  readonly lastUsed: string
}

export type SessionWrite = Omit<StoredSession, "created" | "lastUsed">

const encodeIds = (ids: ReadonlyArray<number>): Uint8Array => new Uint8Array(Uint32Array.from(ids).buffer)

const decodeIds = (bytes: Uint8Array): number[] => {
  const copy = new Uint8Array(bytes) // aligned
  return Array.from(new Uint32Array(copy.buffer, 0, copy.byteLength >>> 2))
}

const isDoc = (r: SessionRecord): r is SessionRecord & SessionDoc => typeof (r as Partial<SessionDoc>).owner === "string" && (r as Partial<SessionDoc>).ids instanceof Uint8Array

const storedOf = (r: SessionRecord & SessionDoc): StoredSession => ({
  id: r.id,
  owner: r.owner,
  node: r.node,
  model: r.model,
  ids: decodeIds(r.ids),
  chunkTokens: r.chunk_tokens,
  ...(r.policy_version === undefined ? {} : { policyVersion: r.policy_version }),
  created: r.created_at,
  lastUsed: r.last_used_at ?? r.updated_at,
})

export class SessionStore {
  constructor(
    private readonly store: DiskStore,
    private readonly now: () => Date = () => new Date(),
  ) {}

  get(id: string): StoredSession | undefined {
    const r = this.store.getSession(id)
    return r && isDoc(r) ? storedOf(r) : undefined
  }

  /** Records the session (after its chunks are flushed): created survives, last used is now. */
  put(s: SessionWrite): StoredSession {
    const doc: SessionDoc = {
      model: s.model,
      tokens: s.ids.length,
      ...(s.policyVersion === undefined ? {} : { policy_version: s.policyVersion }),
      owner: s.owner,
      node: s.node,
      ids: encodeIds(s.ids),
      chunk_tokens: s.chunkTokens,
      last_used_at: this.now().toISOString(),
    }
    const r = this.store.putSession(s.id, doc)
    return storedOf({ ...r, ...doc })
  }

  /** Every leoam session on this disk store (records of other writers are skipped). */
  list(): StoredSession[] {
    return this.store.listSessions().filter(isDoc).map(storedOf)
  }

  /** Removes the session's record, chunks, abstracts and segment file. */
  drop(id: string): boolean {
    return this.store.dropSession(id)
  }

  /** Where the session's chunks lie on disk ("file@offset": a chunk linked from another session lies at the other's place) and their lengths. */
  places(id: string): Map<string, number> {
    const places = new Map<string, number>()
    for (let layer = 0; ; layer++) {
      const chunks = this.store.chunksOf(id, layer)
      if (chunks.length === 0) return places
      for (const { entry } of chunks) places.set(`${entry.file}@${entry.offset}`, entry.length)
    }
  }

  /** Chunk bytes the session holds on disk (its live entries, layer by layer until one has none). */
  diskBytes(id: string): number {
    let bytes = 0
    for (let layer = 0; ; layer++) {
      const chunks = this.store.chunksOf(id, layer)
      if (chunks.length === 0) return bytes
      for (const { entry } of chunks) bytes += entry.length
    }
  }
}
