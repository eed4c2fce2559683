// Dropping the disk tier's files from the page cache, so that a benchmark's disk reads are cold
// (issue 13: disk reads reported cold and warm side by side). Per file: fsync (dirty pages are
// never dropped), then GNU dd's iflag=nocache with count=0, which is posix_fadvise(DONTNEED)
// over the whole file; no root needed. /proc/meminfo's Cached says whether it worked (tmpfs,
// for one, never drops: its pages are the files).
import { spawnSync } from "node:child_process"
import { closeSync, fsyncSync, openSync, readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"

const cachedBytes = (): number | undefined => {
  const m = /^Cached:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"))
  return m ? Number(m[1]) * 1024 : undefined
}

const filesUnder = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : []))

/** What one drop did: the files and their bytes, and how much the page cache fell (undefined: /proc/meminfo unread). */
export interface Dropped {
  readonly files: number
  readonly bytes: number
  readonly cachedFellBytes: number | undefined
  /** dd failed on some file (not GNU dd, or none): those pages stayed. */
  readonly failed: number
}

/** Drops every file under `dir` from the page cache (see the header). */
export const dropPageCache = (dir: string): Dropped => {
  const before = cachedBytes()
  const files = filesUnder(dir)
  let bytes = 0
  let failed = 0
  for (const f of files) {
    bytes += statSync(f).size
    const fd = openSync(f, "r")
    try {
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    if (spawnSync("dd", [`if=${f}`, "iflag=nocache", "count=0"], { stdio: "ignore" }).status !== 0) failed++
  }
  const after = cachedBytes()
  return { files: files.length, bytes, cachedFellBytes: before !== undefined && after !== undefined ? before - after : undefined, failed }
}
