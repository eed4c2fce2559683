// The LMDB index's health, checked before lmdb-js maps it. lmdb-js trusts the data file: a
// file shorter than its meta pages say, or with garbage meta pages, makes it read past the
// end of the map (SIGBUS) or follow wild pointers (SIGSEGV), killing the process with no
// message; an empty file silently becomes a fresh store. So the store opens the index only
// after these checks pass, and refuses with `kv_dir_unavailable` (what is wrong, how to
// recover) otherwise. The marker file (`store.json`) records that this directory once held
// an index, so a missing or empty index is refused rather than started afresh.

import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { diskStoreError, errnoCode } from "./disk-errors.ts"

/** LMDB's MDB_MAGIC, the first field of each of the two meta pages. */
export const LMDB_MAGIC = 0xbeefc0de
/** P_META in a page header's flags. */
const P_META = 0x08
/**
 * The page header of lmdb-js's LMDB (the mdb.master3 line): page number, a txnid, pad, flags,
 * lower/upper. MDB_meta follows it: magic, version, address, map size, the two MDB_db records
 * (48 bytes each; the free DB's md_pad holds the page size), last page, txnid.
 */
const PAGE_HEADER = 24
const META = { magic: 0, version: 4, pageSize: 24, lastPage: 120, txnid: 128, end: 136 } as const

export interface MetaPage {
  readonly version: number
  readonly pageSize: number
  /** The last page the environment uses: the file must hold pages 0..lastPage. */
  readonly lastPage: number
  readonly txnid: number
}

/** What a data file's first bytes say about it; pure, so tests can feed it bytes. */
export type IndexHeader =
  | { readonly kind: "empty" }
  | { readonly kind: "damaged"; readonly why: string }
  | { readonly kind: "ok"; readonly meta: MetaPage; readonly needBytes: number }

/** Reads meta page `at` (byte offset) of a data file's first bytes, or says why it is not one. */
export const readMeta = (head: Uint8Array, at: number): MetaPage | string => {
  if (head.length < at + PAGE_HEADER + META.end) return `meta page at byte ${at} is cut short`
  const v = new DataView(head.buffer, head.byteOffset + at, PAGE_HEADER + META.end)
  if ((v.getUint16(18, true) & P_META) === 0) return `page at byte ${at} is not a meta page`
  const m = PAGE_HEADER
  if (v.getUint32(m + META.magic, true) !== LMDB_MAGIC) return `meta page at byte ${at} has no LMDB magic`
  return {
    version: v.getUint32(m + META.version, true),
    pageSize: v.getUint32(m + META.pageSize, true),
    lastPage: Number(v.getBigUint64(m + META.lastPage, true)),
    txnid: Number(v.getBigUint64(m + META.txnid, true)),
  }
}

const POWER_OF_TWO_PAGE = (n: number) => n >= 512 && n <= 65536 && (n & (n - 1)) === 0

/** Checks both meta pages (LMDB needs both) and that the file holds every page the newer one uses. */
export const checkHeader = (head: Uint8Array, fileBytes: number): IndexHeader => {
  if (fileBytes === 0) return { kind: "empty" }
  const first = readMeta(head, 0)
  if (typeof first === "string") return { kind: "damaged", why: first }
  if (!POWER_OF_TWO_PAGE(first.pageSize)) return { kind: "damaged", why: `meta page 0 gives an impossible page size ${first.pageSize}` }
  const second = readMeta(head, first.pageSize)
  if (typeof second === "string") return { kind: "damaged", why: second }
  if (second.pageSize !== first.pageSize || second.version !== first.version) {
    return { kind: "damaged", why: "the two meta pages disagree on page size or version" }
  }
  const meta = second.txnid > first.txnid ? second : first
  const needBytes = (meta.lastPage + 1) * meta.pageSize
  if (meta.lastPage < 1 || fileBytes < needBytes) {
    return { kind: "damaged", why: `${fileBytes} bytes, but its meta page (txn ${meta.txnid}) uses ${needBytes} (truncated)` }
  }
  return { kind: "ok", meta, needBytes }
}

/** Bytes of the header read from disk: two meta pages of the largest page size LMDB allows. */
const HEAD_BYTES = 2 * 65536

/** The marker file: its presence says an index was created here. */
export const MARKER = "store.json"

/** Writes the marker (0600) once the index exists; an existing one is kept. */
export const writeMarker = (kvDir: string, now: Date): void => {
  const file = path.join(kvDir, MARKER)
  if (fs.existsSync(file)) return
  fs.writeFileSync(file, `${JSON.stringify({ format: 1, created_at: now.toISOString(), index: "index.lmdb" })}\n`, { mode: 0o600 })
}

/** How to recover from a damaged or lost index. */
export const freshHint = (kvDir: string, indexPath: string): string =>
  `move ${indexPath} and ${path.join(kvDir, MARKER)} aside to start a fresh index (its policy history is lost; segment files no index refers to are reclaimed at that start)`

/**
 * Refuses (kv_dir_unavailable) an index lmdb-js must not map: damaged meta pages, a file
 * shorter than they say, a missing index where the marker says a store existed, or an
 * empty one where the marker or segment files do (moving both index and marker aside is
 * how an operator asks for a fresh index). Deletes a leftover empty index of a store that
 * never got further (a crash inside its first open), so lmdb-js creates it afresh.
 */
export const checkIndex = (kvDir: string, indexPath: string, chunkDir: string): void => {
  const marked = fs.existsSync(path.join(kvDir, MARKER))
  const hadStore = marked || hasSegments(chunkDir)
  const fresh = freshHint(kvDir, indexPath)
  let fd: number
  try {
    fd = fs.openSync(indexPath, "r")
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw diskStoreError("kv_dir_unavailable", indexPath, `cannot read the LMDB index: ${(e as Error).message}`)
    if (marked) throw diskStoreError("kv_dir_unavailable", indexPath, `the LMDB index is missing, but this directory held a store; ${fresh}`)
    return
  }
  let header: IndexHeader
  try {
    const size = fs.fstatSync(fd).size
    const head = new Uint8Array(Math.min(size, HEAD_BYTES))
    fs.readSync(fd, head, 0, head.length, 0)
    header = checkHeader(head, size)
  } finally {
    fs.closeSync(fd)
  }
  if (header.kind === "damaged") {
    throw diskStoreError("kv_dir_unavailable", indexPath, `the LMDB index is damaged (${header.why}); ${fresh}`)
  }
  if (header.kind === "empty") {
    if (hadStore) throw diskStoreError("kv_dir_unavailable", indexPath, `the LMDB index is empty, but this directory held a store; ${fresh}`)
    fs.unlinkSync(indexPath)
  }
}

/**
 * Reads every entry of every named database in a child process: garbage inside data pages
 * (intact meta pages) makes lmdb-js abort or fault, and that must kill the child, not us.
 * Returns undefined when the walk completes (or is still going after `timeoutMs`, or could
 * not be started: neither proves damage), else what went wrong.
 */
export const walkIndex = (indexPath: string, timeoutMs = 120_000): string | undefined => {
  const lmdb = createRequire(import.meta.url).resolve("lmdb")
  const script = `const { open } = require(process.argv[1]);
const root = open({ path: process.argv[2], readOnly: true, maxDbs: 16, overlappingSync: false });
const names = Array.from(root.getKeys({})).filter((name) => typeof name === "string");
for (const name of names) {
  const db = root.openDB(name, { encoding: "binary" });
  for (const { key, value } of db.getRange({})) if (value === undefined || key === undefined) throw new Error("entry without a value");
}`
  const child = spawnSync(process.execPath, ["-e", script, lmdb, indexPath], { encoding: "utf8", timeout: timeoutMs, stdio: ["ignore", "ignore", "pipe"] })
  if (child.status === 0) return undefined
  const lines = (child.stderr ?? "").split("\n").map((l) => l.trim())
  const said = lines.find((l) => /MDB_[A-Z]|Assertion/.test(l)) ?? lines.find((l) => /^[A-Za-z]*Error:/.test(l))
  // A walk that outlasts the timeout found nothing wrong so far (a huge index on a slow disk is
  // not refused for it), and one that could not start proves nothing: the meta pages were sound.
  if (child.error !== undefined) return undefined
  if (child.signal !== null) return `reading it crashed a reader with ${child.signal}${said ? `: ${said}` : ""}`
  return said ?? `a reader exited with status ${child.status}`
}

const hasSegments = (chunkDir: string): boolean => {
  try {
    return fs.readdirSync(chunkDir).some((name) => name.endsWith(".seg"))
  } catch {
    return false
  }
}
