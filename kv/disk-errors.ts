// The one error type of the disk store. Store methods are synchronous and throw
// DiskStoreError (an Error); the actor wrapper turns it into a failed Effect and an
// error reply. `code` is stable and meant for replies; `message` names the path or key.

import { Schema } from "effect"

export const DiskStoreErrorCode = Schema.Literal(
  /** kvDir (or its parent) is missing, not a directory, or not writable. */
  "kv_dir_unavailable",
  /** ENOSPC / EDQUOT (or LMDB's map full) on a write; the store stays consistent. */
  "disk_full",
  /** Any other I/O failure on a write or read. */
  "io_failed",
  /** A chunk's bytes fail their CRC32, are short, or its segment file is gone. */
  "chunk_corrupt",
  "chunk_missing",
  "abstract_missing",
  /** A key that is not [non-empty session, layer >= 0, chunk >= 0] (integers). */
  "invalid_key",
  /** Chunk metadata that is not { tokens: integer >= 0, dtype: non-empty string }. */
  "invalid_meta",
  /** The caller's buffer is smaller than the chunk it asked to read into it. */
  "buffer_too_small",
  /** The store was used after close(). */
  "store_closed",
)
export type DiskStoreErrorCode = typeof DiskStoreErrorCode.Type

export class DiskStoreError extends Schema.TaggedError<DiskStoreError>()("DiskStoreError", {
  code: DiskStoreErrorCode,
  /** The file or directory at fault, when there is one. */
  path: Schema.optional(Schema.String),
  message: Schema.String,
}) {}

/** Builds a DiskStoreError whose message starts with the path: `<path>: <detail>`. */
export const diskStoreError = (code: DiskStoreErrorCode, path: string | undefined, detail: string) =>
  new DiskStoreError({ code, path, message: path === undefined ? detail : `${path}: ${detail}` })

/** The errno code of a Node system error (`ENOSPC`, `ENOTDIR`, ...), if it is one. */
export const errnoCode = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && typeof (e as { code?: unknown }).code === "string"
    ? (e as { code: string }).code
    : undefined

/** True for the errors that mean "no room left": the store maps them to `disk_full`. */
export const isNoSpace = (e: unknown): boolean => {
  const code = errnoCode(e)
  if (code === "ENOSPC" || code === "EDQUOT") return true
  const message = e instanceof Error ? e.message : ""
  return /MDB_MAP_FULL|No space left|Disk quota exceeded/i.test(message)
}

/** Maps a failed write to `disk_full` or `io_failed`, keeping the cause's text. */
export const writeError = (path: string, e: unknown): DiskStoreError =>
  diskStoreError(isNoSpace(e) ? "disk_full" : "io_failed", path, `write failed: ${e instanceof Error ? e.message : String(e)}`)
