// What a crash leaves behind in the disk tier, and taking it back at the next open. A session's
// chunks are kept while its writer process lives (the `writers` database names it: pid, boot
// and start time, registered before the session's first bytes are appended) or once the
// session is recorded complete (`sessions`); any other session's chunks and abstracts are
// reclaimed, as are entries whose bytes are gone, segment files no entry refers to, and
// bytes appended after a file's last indexed chunk. The caller runs reclaim() inside one
// LMDB write transaction: writers register in write transactions too, so a writer starting
// meanwhile is either seen or has not appended yet.

import * as fs from "node:fs"
import * as path from "node:path"
import type { Database, Key } from "lmdb"
import type { ChunkEntry, SessionRecord } from "./records.ts"
import { segmentFileName } from "./segments.ts"

/** `writers` database value (key: the session id): the process appending its chunks. */
export interface WriterRecord {
  readonly pid: number
  /** /proc/sys/kernel/random/boot_id, so a pid from before a reboot is not taken as alive. */
  readonly boot: string
  /** The process's start time in clock ticks since boot (/proc/PID/stat), against pid reuse. */
  readonly start: number
}

const readOr = (file: string, fallback: string): string => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch {
    return fallback
  }
}

const bootId = (): string => readOr("/proc/sys/kernel/random/boot_id", "").trim()

/** Field 22 of /proc/PID/stat (after the parenthesised command name), or -1 where /proc has none. */
const startTicks = (pid: number): number => {
  const stat = readOr(`/proc/${pid}/stat`, "")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  const n = Number(fields[19])
  return stat === "" || !Number.isFinite(n) ? -1 : n
}

export const thisWriter = (): WriterRecord => ({ pid: process.pid, boot: bootId(), start: startTicks(process.pid) })

/** True while the writer's process runs (the same boot, pid and start time). */
export const writerAlive = (w: WriterRecord): boolean => {
  if (w.boot !== bootId()) return false
  try {
    process.kill(w.pid, 0)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") return false
  }
  const start = startTicks(w.pid)
  return start === -1 || start === w.start
}

/** What one open took back. */
export interface ReclaimReport {
  /** Sessions whose writer died before the session was recorded complete. */
  readonly sessions: number
  /** Chunk and abstract entries removed (of those sessions, or whose bytes are gone). */
  readonly entries: number
  /** Segment files deleted (no entry referred to them). */
  readonly files: number
  /** Bytes freed: deleted files and tails cut after the last indexed chunk. */
  readonly bytes: number
}

export interface ReclaimDbs {
  readonly chunks: Database<ChunkEntry, Key>
  readonly abstracts: Database<Uint8Array, Key>
  readonly sessions: Database<SessionRecord, Key>
  readonly writers: Database<WriterRecord, Key>
}

const sizeOf = (file: string): number | undefined => {
  try {
    return fs.statSync(file).size
  } catch {
    return undefined
  }
}

/** Reclaims what no live writer or completed session holds; call inside a write transaction. */
export const reclaim = (db: ReclaimDbs, chunkDir: string): ReclaimReport => {
  const live = new Set<string>()
  let sessions = 0
  for (const { key, value } of Array.from(db.writers.getRange({}))) {
    const session = key as string
    if (writerAlive(value)) live.add(session)
    else db.writers.removeSync(key)
  }
  const keep = (session: string) => live.has(session) || db.sessions.get(session) !== undefined
  const dead = new Set<string>()
  const gone: Key[] = []
  /** Per segment file of a kept session: the end of its last indexed chunk. */
  const ends = new Map<string, number>()
  const sizes = new Map<string, number | undefined>()
  for (const { key, value } of db.chunks.getRange({})) {
    const session = (key as unknown as [string])[0]
    if (!keep(session)) {
      dead.add(session)
      continue
    }
    if (live.has(session)) {
      ends.set(value.file, Infinity)
      continue
    }
    if (!sizes.has(value.file)) sizes.set(value.file, sizeOf(path.join(chunkDir, value.file)))
    const size = sizes.get(value.file)
    const end = value.offset + value.length
    if (size === undefined || end > size) gone.push(key)
    else ends.set(value.file, Math.max(ends.get(value.file) ?? 0, end))
  }
  for (const { key } of db.abstracts.getRange({})) {
    const session = (key as unknown as [string])[0]
    if (!keep(session)) dead.add(session)
  }
  let entries = 0
  for (const key of gone) {
    entries += db.chunks.removeSync(key) ? 1 : 0
    entries += db.abstracts.removeSync(key) ? 1 : 0
  }
  for (const session of dead) {
    sessions++
    for (const d of [db.chunks, db.abstracts] as const) {
      for (const key of keysOf(d, session)) entries += d.removeSync(key) ? 1 : 0
    }
  }
  for (const session of live) ends.set(segmentFileName(session), Infinity)
  let files = 0
  let bytes = 0
  for (const name of listSegments(chunkDir)) {
    const file = path.join(chunkDir, name)
    const end = ends.get(name)
    const size = sizeOf(file) ?? 0
    if (end === undefined) {
      fs.rmSync(file, { force: true })
      files++
      bytes += size
    } else if (end < size) {
      fs.truncateSync(file, end)
      bytes += size - end
    }
  }
  return { sessions, entries, files, bytes }
}

const listSegments = (chunkDir: string): string[] => fs.readdirSync(chunkDir).filter((name) => name.endsWith(".seg"))

/** Keys of one session in a [session, layer, chunk]-keyed database. */
export const keysOf = (db: Database<unknown, Key>, session: string): Key[] => {
  const out: Key[] = []
  for (const key of db.getKeys({ start: [session] })) {
    if (!Array.isArray(key) || key[0] !== session) break
    out.push(key)
  }
  return out
}
