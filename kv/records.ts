// What the disk store keeps in LMDB, one type per named database, and the key rules.
// Keys are ordered arrays, so a range over [session, layer] reads chunks in chunk order.

import { diskStoreError } from "./disk-errors.ts"

/** (session id, layer, chunk index): the key of a chunk and of its abstract. */
export type ChunkKey = readonly [session: string, layer: number, chunk: number]

/** What the writer of a chunk says about it. */
export interface ChunkMeta {
  /** Tokens the chunk covers (chunks adapt their size per layer). */
  readonly tokens: number
  /**
   * Encoding of the bytes: "f16" (K then V, (blocks, KV, BS, D) f16) or "int8" / "int4"
   * (kv/quant.ts's group-wise layout); a reader refuses a dtype it does not know
   * (chunk_corrupt) rather than guess. The segment's CRC covers the bytes as stored.
   */
  readonly dtype: string
}

/** `chunks` database value: where a chunk's bytes are and how to check them. */
export interface ChunkEntry extends ChunkMeta {
  /** Segment file name under `<kvDir>/chunks/`. */
  readonly file: string
  readonly offset: number
  readonly length: number
  /** CRC-32 of the bytes, unsigned. */
  readonly crc32: number
  /** 1 on the first write of this key, +1 on each rewrite: handles carry it to detect stale copies. */
  readonly version: number
}

/** What the caller says about a session. */
export interface SessionMeta {
  readonly model: string
  /** Tokens of context whose KV the session holds. */
  readonly tokens: number
  /** The policy version the session's chunks were cut with, when known. */
  readonly policy_version?: number
}

/** `sessions` database value (key: the session id). Times are ISO 8601 strings. */
export interface SessionRecord extends SessionMeta {
  readonly id: string
  readonly created_at: string
  readonly updated_at: string
}

/** `policy_history` database value (key: [version]). */
export interface PolicyRecord {
  /** 1, 2, 3, ... in order of change. */
  readonly version: number
  /** The policy as validated by the caller's schema: plain JSON data, never code. */
  readonly policy: unknown
  /** Who made the change (the NATS user of the admin request). */
  readonly user: string
  /** The user's NATS account, where the server shares it. */
  readonly account?: string
  readonly at: string
  /** When it took effect: the next decode step or the next request. */
  readonly applies?: "next_step" | "next_request"
  readonly reason?: string
}

const isIndex = (n: number) => Number.isSafeInteger(n) && n >= 0

/** Throws `invalid_key` unless the key is [non-empty string, integer >= 0, integer >= 0]. */
export const checkChunkKey = (key: ChunkKey): void => {
  const [session, layer, chunk] = key
  if (typeof session !== "string" || session.length === 0 || !isIndex(layer) || !isIndex(chunk)) {
    throw diskStoreError("invalid_key", undefined, `invalid chunk key ${JSON.stringify(key)}: want [session, layer, chunk]`)
  }
}

/** Throws `invalid_key` unless the session id is a non-empty string. */
export const checkSession = (session: string): void => {
  if (typeof session !== "string" || session.length === 0) {
    throw diskStoreError("invalid_key", undefined, `invalid session id ${JSON.stringify(session)}`)
  }
}

/** "session/layer/chunk", for messages. */
export const showKey = (key: ChunkKey): string => `${key[0]}/${key[1]}/${key[2]}`
