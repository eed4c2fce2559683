// Damaged LMDB indexes and what crashes leave behind. The damaged-index opens run in one
// child process: were a check to miss, lmdb-js would fault natively, and that must fail
// this test (a signal, no JSON), not kill the runner.
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { checkHeader, LMDB_MAGIC } from "../kv/index-check.ts"
import { segmentFileName } from "../kv/segments.ts"

const temps: string[] = []
const tempDir = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-faults-"))
  temps.push(dir)
  return dir
}
afterEach(() => {
  for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

const bytes = (n: number, seed = 1) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7) & 0xff)
const meta = { tokens: 16, dtype: "f16" }

/** A store with a policy and 40 chunks of a completed session, closed. */
const filledStore = async (kvDir: string) => {
  const store = DiskStore.open({ kvDir })
  store.appendPolicy({ policy: { name: "leoam" }, user: "startup" })
  store.putSession("done", { model: "m", tokens: 640 })
  for (let c = 0; c < 40; c++) store.putChunk(["done", 0, c], bytes(2048, c), meta)
  await store.flush()
  await store.close()
}

type Damage = "empty" | "missing" | "truncated-header" | "truncated-data" | "zeroed" | "garbage" | "garbage-pages"
const damages: Damage[] = ["empty", "missing", "truncated-header", "truncated-data", "zeroed", "garbage", "garbage-pages"]

const damage = (file: string, how: Damage) => {
  const size = fs.statSync(file).size
  const noise = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 2654435761) >>> 24)
  if (how === "empty") fs.truncateSync(file, 0)
  if (how === "missing") fs.unlinkSync(file)
  if (how === "truncated-header") fs.truncateSync(file, 100)
  if (how === "truncated-data") fs.truncateSync(file, size - 8192)
  if (how === "zeroed") fs.writeFileSync(file, new Uint8Array(size))
  if (how === "garbage") fs.writeFileSync(file, noise(size))
  if (how === "garbage-pages") {
    const fd = fs.openSync(file, "r+")
    fs.writeSync(fd, noise(size - 8192), 0, size - 8192, 8192) // the meta pages intact, every data page garbage
    fs.closeSync(fd)
  }
}

const openScript = `
import { DiskStore } from ${JSON.stringify(path.resolve("kv/disk-store.ts"))}
const out = {}
for (const dir of process.argv.slice(2)) {
  try {
    const s = DiskStore.open({ kvDir: dir })
    out[dir] = { opened: true, policy: s.latestPolicy()?.version ?? null }
    await s.close()
  } catch (e) {
    out[dir] = { code: e.code, message: e.message }
  }
}
process.stdout.write(JSON.stringify(out))
`

describe("a damaged LMDB index", () => {
  it("checkHeader reads both meta pages and the size the newer one needs", () => {
    const page = 4096
    const head = new Uint8Array(2 * page)
    const v = new DataView(head.buffer)
    for (const [at, txnid, lastPage] of [[0, 6, 9], [page, 7, 11]] as const) {
      v.setUint16(at + 18, 0x08, true) // P_META
      v.setUint32(at + 24, LMDB_MAGIC, true)
      v.setUint32(at + 28, 2, true)
      v.setUint32(at + 48, page, true)
      v.setBigUint64(at + 144, BigInt(lastPage), true)
      v.setBigUint64(at + 152, BigInt(txnid), true)
    }
    expect(checkHeader(head, 12 * page)).toMatchObject({ kind: "ok", needBytes: 12 * page, meta: { txnid: 7, lastPage: 11 } })
    expect(checkHeader(head, 11 * page)).toMatchObject({ kind: "damaged", why: expect.stringContaining("truncated") })
    expect(checkHeader(head, 0)).toEqual({ kind: "empty" })
    v.setUint32(page + 24, 0, true)
    expect(checkHeader(head, 12 * page)).toMatchObject({ kind: "damaged", why: "meta page at byte 4096 has no LMDB magic" })
  })

  it("is refused with kv_dir_unavailable, what is wrong and how to recover — empty, missing, truncated, zeroed, garbage — never a native crash", async () => {
    const base = tempDir()
    const dirs = new Map<Damage, string>()
    for (const how of damages) {
      const kvDir = path.join(base, how)
      await filledStore(kvDir)
      damage(path.join(kvDir, "index.lmdb"), how)
      dirs.set(how, kvDir)
    }
    const script = path.join(base, "open.mts")
    fs.writeFileSync(script, openScript)
    const stdout = execFileSync(process.execPath, ["--import", "tsx", script, ...dirs.values()], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60_000 })
    const results = JSON.parse(stdout) as Record<string, { code?: string; message?: string; opened?: boolean }>
    for (const [how, kvDir] of dirs) {
      const r = results[kvDir]!
      expect(r, how).toMatchObject({ code: "kv_dir_unavailable" })
      expect(r.message, how).toContain(path.join(kvDir, "index.lmdb"))
      expect(r.message, how).toContain(`move ${path.join(kvDir, "index.lmdb")} and ${path.join(kvDir, "store.json")} aside`)
      expect(r.message, how).toMatch(how === "empty" ? /is empty, but this directory held a store/ : how === "missing" ? /is missing/ : /is damaged/)
    }
    // Nothing was touched: the segments are all still there for whoever recovers them.
    for (const kvDir of dirs.values()) expect(fs.statSync(path.join(kvDir, "chunks", segmentFileName("done"))).size).toBe(40 * 2048)
    // The recovery the message gives works: a fresh index, the unindexed segments reclaimed.
    const kvDir = dirs.get("garbage")!
    fs.renameSync(path.join(kvDir, "index.lmdb"), path.join(base, "index.lmdb.damaged"))
    fs.renameSync(path.join(kvDir, "store.json"), path.join(base, "store.json.damaged"))
    const fresh = DiskStore.open({ kvDir })
    expect(fresh.reclaimed).toEqual({ sessions: 0, entries: 0, files: 1, bytes: 40 * 2048 })
    expect(fresh.latestPolicy()).toBeUndefined()
    await fresh.close()
  }, 90_000)

  it("a new directory, and an empty index left by a crash inside the very first open, start fresh", async () => {
    const kvDir = path.join(tempDir(), "kv")
    fs.mkdirSync(kvDir)
    fs.writeFileSync(path.join(kvDir, "index.lmdb"), "")
    const store = DiskStore.open({ kvDir })
    expect(store.appendPolicy({ policy: "full", user: "startup" }).version).toBe(1)
    await store.close()
    const again = DiskStore.open({ kvDir })
    expect(again.latestPolicy()?.version).toBe(1)
    await again.close()
  })
})

describe("what crashes leave behind is reclaimed at the next open", () => {
  /** Writes chunks as a process that then died: its writer record names a pid that is not running. */
  const childWriter = (kvDir: string, session: string, chunks: number, how: "crash" | "complete") => {
    const script = `import { DiskStore } from ${JSON.stringify(path.resolve("kv/disk-store.ts"))}
const s = DiskStore.open({ kvDir: process.argv[2], verifyIndex: "header" })
for (let c = 0; c < ${chunks}; c++) { s.putChunk([process.argv[3], 0, c], new Uint8Array(1000).fill(c), { tokens: 16, dtype: "f16" }); s.putAbstract([process.argv[3], 0, c], new Uint8Array(8)) }
${how === "complete" ? `s.putSession(process.argv[3], { model: "m", tokens: 16 * ${chunks} })` : ""}
await s.flush()
${how === "crash" ? `process.kill(process.pid, "SIGKILL")` : "await s.close()"}`
    const file = path.join(path.dirname(kvDir), `${session}.mts`)
    fs.writeFileSync(file, script)
    try {
      execFileSync(process.execPath, ["--import", "tsx", file, kvDir, session], { stdio: "ignore" })
      expect(how).toBe("complete")
    } catch (e) {
      expect((e as { signal?: string }).signal).toBe("SIGKILL")
    }
  }

  it("chunks of sessions whose writer died, entries whose bytes are gone, orphaned segments and unindexed tails", async () => {
    const kvDir = path.join(tempDir(), "kv")
    await filledStore(kvDir)
    childWriter(kvDir, "finished", 3, "complete")
    childWriter(kvDir, "executor-crashed", 12, "crash") // (an open reclaims what earlier crashes left)
    const chunkDir = path.join(kvDir, "chunks")
    fs.writeFileSync(path.join(chunkDir, "orphan.seg"), new Uint8Array(5000)) // no entry refers to it
    fs.appendFileSync(path.join(chunkDir, segmentFileName("finished")), new Uint8Array(300)) // appended, never indexed
    const s = DiskStore.open({ kvDir })
    expect(s.reclaimed).toEqual({ sessions: 1, entries: 12 + 12, files: 2, bytes: 12 * 1000 + 5000 + 300 })
    expect(s.stats()).toMatchObject({ chunkCount: 43, abstractCount: 3, sessionCount: 2 })
    expect(s.chunksOf("executor-crashed", 0)).toEqual([])
    expect(fs.statSync(path.join(chunkDir, segmentFileName("finished"))).size).toBe(3 * 1000)
    expect(s.readChunk(["finished", 0, 2])).toEqual(new Uint8Array(1000).fill(2))

    // A completed session whose segment file was lost, and one this process is writing.
    childWriter(kvDir, "lost", 2, "complete")
    s.putChunk(["mine", 0, 0], bytes(100), meta)
    await s.flush()
    fs.rmSync(path.join(chunkDir, segmentFileName("lost")))
    const other = DiskStore.open({ kvDir })
    expect(other.reclaimed).toEqual({ sessions: 0, entries: 2 + 2, files: 0, bytes: 0 })
    expect(other.stats()).toMatchObject({ chunkCount: 44, sessionCount: 3 })
    expect(other.chunksOf("lost", 0)).toEqual([])
    expect(other.readChunk(["done", 0, 39])).toEqual(bytes(2048, 39))
    expect(other.readChunk(["mine", 0, 0])).toEqual(bytes(100)) // its writer (this process) lives
    expect(fs.readdirSync(chunkDir).sort()).toEqual(["done", "finished", "mine"].map(segmentFileName).sort())
    expect(other.latestPolicy()?.version).toBe(1)
    await other.close()
    await s.close()
  }, 60_000)

  it("keeps the kv-dir private: 0700 directories, 0600 files", async () => {
    const kvDir = path.join(tempDir(), "kv")
    await filledStore(kvDir)
    const mode = (p: string) => fs.statSync(p).mode & 0o777
    expect(mode(kvDir)).toBe(0o700)
    expect(mode(path.join(kvDir, "chunks"))).toBe(0o700)
    for (const f of ["index.lmdb", "index.lmdb-lock", "store.json", `chunks/${segmentFileName("done")}`]) expect(mode(path.join(kvDir, f)), f).toBe(0o600)
    // A store made before this (0755 chunk directory, 0644 index) is made private at its next open.
    fs.chmodSync(path.join(kvDir, "chunks"), 0o755)
    fs.chmodSync(path.join(kvDir, "index.lmdb"), 0o644)
    await DiskStore.open({ kvDir }).close()
    expect(mode(path.join(kvDir, "chunks"))).toBe(0o700)
    expect(mode(path.join(kvDir, "index.lmdb"))).toBe(0o600)
  })
})
