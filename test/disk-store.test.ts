import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import fc from "fast-check"
import { afterEach, describe, expect, it } from "vitest"
import { crc32, crc32Table } from "../kv/crc32.ts"
import { DiskStoreError } from "../kv/disk-errors.ts"
import type { ChunkKey } from "../kv/records.ts"
import { segmentFileName, type FileIo } from "../kv/segments.ts"
import { DiskStore } from "../kv/disk-store.ts"

const temps: string[] = []
const stores: DiskStore[] = []
const tempDir = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-disk-"))
  temps.push(dir)
  return dir
}
const openStore = (options: Partial<Parameters<typeof DiskStore.open>[0]> = {}) => {
  const store = DiskStore.open({ kvDir: path.join(tempDir(), "kv"), ...options })
  stores.push(store)
  return store
}
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close()
  for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

/** The stable code of the DiskStoreError that `f` throws. */
const codeOf = (f: () => unknown): string => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(DiskStoreError)
    return (e as DiskStoreError).code
  }
  throw new Error("expected a DiskStoreError, nothing was thrown")
}
const bytes = (n: number, seed = 1) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7) & 0xff)
const meta = { tokens: 16, dtype: "f16" }

describe("crc32", () => {
  it("matches the standard check value and the table fallback", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926)
    expect(crc32Table(new TextEncoder().encode("123456789"))).toBe(0xcbf43926)
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => crc32(b) === crc32Table(b)))
  })
})

describe("DiskStore chunks", () => {
  it("round-trips chunk bytes, into a caller buffer too, and versions rewrites", () => {
    const store = openStore()
    const key: ChunkKey = ["s", 0, 3]
    const first = store.putChunk(key, bytes(1000), meta)
    expect(first).toMatchObject({ file: "s.seg", offset: 0, length: 1000, tokens: 16, dtype: "f16", version: 1 })
    expect(store.readChunk(key)).toEqual(bytes(1000))

    const staging = new Uint8Array(4096)
    const view = store.readChunk(key, staging)
    expect(view.buffer).toBe(staging.buffer)
    expect(view.length).toBe(1000)
    expect(staging.subarray(0, 1000)).toEqual(bytes(1000))

    const second = store.putChunk(key, bytes(10, 9), { tokens: 2, dtype: "int8" })
    expect(second).toMatchObject({ offset: 1000, length: 10, version: 2, dtype: "int8" })
    expect(store.readChunk(key)).toEqual(bytes(10, 9))
    expect(codeOf(() => store.readChunk(key, new Uint8Array(9)))).toBe("buffer_too_small")
  })

  it("reads a layer's chunks and abstracts in key order", () => {
    const store = openStore()
    for (const c of [10, 2, 1]) {
      store.putChunk(["s", 0, c], bytes(4, c), meta)
      store.putAbstract(["s", 0, c], Uint8Array.of(c, 0, c))
    }
    store.putAbstract(["s", 1, 0], Uint8Array.of(99))
    store.putAbstract(["s2", 0, 0], Uint8Array.of(98))
    store.putAbstract(["r", 0, 5], Uint8Array.of(97))
    store.putChunk(["s", 1, 0], bytes(4), meta)
    expect(store.abstractsOf("s", 0)).toEqual([
      { chunk: 1, bytes: Uint8Array.of(1, 0, 1) },
      { chunk: 2, bytes: Uint8Array.of(2, 0, 2) },
      { chunk: 10, bytes: Uint8Array.of(10, 0, 10) },
    ])
    expect(store.abstractsOf("s", 1).map((a) => a.chunk)).toEqual([0])
    expect(store.abstractsOf("s", 2)).toEqual([])
    expect(store.chunksOf("s", 0).map((c) => c.chunk)).toEqual([1, 2, 10])
    expect(store.getAbstract(["s2", 0, 0])).toEqual(Uint8Array.of(98))
  })

  it("detects a flipped byte, a short file and a lost segment file as chunk_corrupt", () => {
    const store = openStore()
    store.putChunk(["s", 0, 0], bytes(64, 1), meta)
    const entry = store.putChunk(["s", 0, 1], bytes(64, 2), meta)
    const file = path.join(store.kvDir, "chunks", entry.file)
    const fd = fs.openSync(file, "r+")
    const one = Buffer.alloc(1)
    fs.readSync(fd, one, 0, 1, entry.offset + 3)
    one[0] = one[0]! ^ 0x10
    fs.writeSync(fd, one, 0, 1, entry.offset + 3)
    fs.closeSync(fd)
    expect(codeOf(() => store.readChunk(["s", 0, 1]))).toBe("chunk_corrupt")
    expect(store.readChunk(["s", 0, 0])).toEqual(bytes(64, 1))

    fs.truncateSync(file, 100)
    expect(codeOf(() => store.readChunk(["s", 0, 1]))).toBe("chunk_corrupt")
    expect(store.stats().corruptReads).toBe(2)

    const other = store.putChunk(["t", 0, 0], bytes(8), meta)
    fs.unlinkSync(path.join(store.kvDir, "chunks", other.file))
    const reopened = DiskStore.open({ kvDir: store.kvDir }) // a fresh process has no fd open on it
    stores.push(reopened)
    expect(codeOf(() => reopened.readChunk(["t", 0, 0]))).toBe("chunk_corrupt")
  })

  it("names missing chunks, missing abstracts and bad keys with their codes", () => {
    const store = openStore()
    expect(codeOf(() => store.readChunk(["s", 0, 0]))).toBe("chunk_missing")
    expect(codeOf(() => store.getAbstract(["s", 0, 0]))).toBe("abstract_missing")
    expect(store.chunkEntry(["s", 0, 0])).toBeUndefined()
    expect(codeOf(() => store.putChunk(["", 0, 0], bytes(1), meta))).toBe("invalid_key")
    expect(codeOf(() => store.putChunk(["s", -1, 0], bytes(1), meta))).toBe("invalid_key")
    expect(codeOf(() => store.putChunk(["s", 0, 1.5], bytes(1), meta))).toBe("invalid_key")
    expect(codeOf(() => store.putChunk(["s", 0, 0], bytes(1), { tokens: -1, dtype: "f16" }))).toBe("invalid_meta")
    const error = (() => {
      try {
        store.readChunk(["s", 4, 2])
      } catch (e) {
        return e as DiskStoreError
      }
    })()
    expect(error?.message).toContain(path.join(store.kvDir, "index.lmdb"))
    expect(error?.message).toContain("s/4/2")
  })
})

/** The stable code of the DiskStoreError that `p` rejects with. */
const codeOfAsync = async (p: Promise<unknown>): Promise<string> => {
  const e = await p.then(
    () => undefined,
    (error: unknown) => error,
  )
  expect(e).toBeInstanceOf(DiskStoreError)
  return (e as DiskStoreError).code
}

describe("DiskStore asynchronous reads", () => {
  it("read on the thread pool what readChunk reads, with the same CRC checks and codes", async () => {
    const store = openStore()
    store.putChunk(["s", 0, 0], bytes(64, 1), meta)
    const entry = store.putChunk(["s", 0, 1], bytes(64, 2), meta)
    const staging = new Uint8Array(100)
    const view = await store.readChunkAsync(["s", 0, 0], staging)
    expect(view.buffer).toBe(staging.buffer)
    expect(view).toEqual(bytes(64, 1))
    expect(await codeOfAsync(store.readChunkAsync(["s", 0, 7]))).toBe("chunk_missing")
    expect(await codeOfAsync(store.readChunkAsync(["s", 0, 0], new Uint8Array(10)))).toBe("buffer_too_small")
    const file = path.join(store.kvDir, "chunks", entry.file)
    const fd = fs.openSync(file, "r+")
    fs.writeSync(fd, Uint8Array.of(bytes(64, 2)[5]! ^ 1), 0, 1, entry.offset + 5)
    fs.closeSync(fd)
    expect(await codeOfAsync(store.readChunkAsync(["s", 0, 1]))).toBe("chunk_corrupt")
    fs.truncateSync(file, 70)
    expect(await codeOfAsync(store.readChunkAsync(["s", 0, 1]))).toBe("chunk_corrupt")
    expect(store.stats()).toMatchObject({ corruptReads: 2, chunkReads: 1, bytesRead: 64 })
  })

  it("keep a segment file open while it is read: closing it past the open-file cap or dropping its session waits for the reads", async () => {
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const io: Partial<FileIo> = {
      readAsync: async (fd, buffer, offset, length, position) => {
        await gate
        return fs.readSync(fd, buffer, offset, length, position)
      },
    }
    const store = openStore({ io, maxOpenFiles: 1 })
    store.putChunk(["a", 0, 0], bytes(32, 3), meta)
    store.putChunk(["b", 0, 0], bytes(32, 4), meta) // closes a.seg (one file open at most)
    const fromA = store.readChunkAsync(["a", 0, 0])
    const fromB = store.readChunkAsync(["b", 0, 0]) // opening b.seg closes a.seg, which is being read
    store.dropSession("b") // unlinks b.seg while it is read
    release()
    expect(await fromA).toEqual(bytes(32, 3))
    expect(await fromB).toEqual(bytes(32, 4))
    expect(store.readChunk(["a", 0, 0])).toEqual(bytes(32, 3))
  })
})

describe("DiskStore kv directory", () => {
  it("creates the directory when its parent exists", () => {
    const parent = tempDir()
    const store = DiskStore.open({ kvDir: path.join(parent, "kv") })
    stores.push(store)
    expect(fs.statSync(path.join(parent, "kv", "chunks")).isDirectory()).toBe(true)
    expect(fs.existsSync(path.join(parent, "kv", "index.lmdb"))).toBe(true)
  })

  it("refuses a path under a regular file, a missing parent and a file as kv_dir_unavailable", () => {
    const parent = tempDir()
    const file = path.join(parent, "plain-file")
    fs.writeFileSync(file, "x")
    const cases = [path.join(file, "kv"), path.join(parent, "no", "such", "deep", "kv"), file]
    for (const kvDir of cases) {
      let error: DiskStoreError | undefined
      try {
        DiskStore.open({ kvDir })
      } catch (e) {
        error = e as DiskStoreError
      }
      expect(error).toBeInstanceOf(DiskStoreError)
      expect(error!.code).toBe("kv_dir_unavailable")
      expect(error!.message).toContain(kvDir)
    }
    expect(fs.existsSync(path.join(parent, "no"))).toBe(false)
  })
})

describe("DiskStore on a full disk", () => {
  /** A write that, once armed, writes `partial` bytes of the next call and then fails with `errno`. */
  const faultyIo = () => {
    const state = { armed: false, partial: 0, errno: "ENOSPC", calls: 0 }
    const write: FileIo["write"] = (fd, buffer, offset, length, position) => {
      state.calls++
      if (state.armed) {
        if (state.partial > 0) {
          const n = Math.min(state.partial, length)
          state.partial = 0
          return fs.writeSync(fd, buffer, offset, n, position)
        }
        throw Object.assign(new Error(`${state.errno}: simulated`), { code: state.errno })
      }
      return fs.writeSync(fd, buffer, offset, length, position)
    }
    return { state, write }
  }

  it("reports disk_full, indexes nothing partial and leaves no partial bytes", () => {
    const { state, write } = faultyIo()
    const store = openStore({ io: { write } })
    store.putChunk(["s", 0, 0], bytes(100, 1), meta)
    const segment = path.join(store.kvDir, "chunks", "s.seg")

    state.armed = true
    state.partial = 30
    expect(codeOf(() => store.putChunk(["s", 0, 1], bytes(100, 2), meta))).toBe("disk_full")
    expect(store.chunkEntry(["s", 0, 1])).toBeUndefined()
    expect(fs.statSync(segment).size).toBe(100)

    // A batch fails as a whole, even when its first chunk was written completely.
    state.partial = 0
    state.calls = 0
    state.armed = false
    const armAfterFirst: FileIo["write"] = (...args) => {
      if (state.calls >= 1) state.armed = true
      return write(...args)
    }
    const store2 = openStore({ io: { write: armAfterFirst } })
    expect(
      codeOf(() =>
        store2.putChunks([
          { key: ["b", 0, 0], bytes: bytes(50, 3), meta },
          { key: ["b", 0, 1], bytes: bytes(50, 4), meta },
        ]),
      ),
    ).toBe("disk_full")
    expect(store2.stats()).toMatchObject({ chunkCount: 0, bytesWritten: 0, fileBytes: 0 })

    state.armed = false
    expect(store.stats()).toMatchObject({ chunkCount: 1, bytesWritten: 100 })
    const retried = store.putChunk(["s", 0, 1], bytes(100, 2), meta)
    expect(retried.offset).toBe(100)
    expect(store.readChunk(["s", 0, 0])).toEqual(bytes(100, 1))
    expect(store.readChunk(["s", 0, 1])).toEqual(bytes(100, 2))
  })

  it("maps EDQUOT to disk_full and other write errors to io_failed", () => {
    const { state, write } = faultyIo()
    const store = openStore({ io: { write } })
    state.armed = true
    state.errno = "EDQUOT"
    expect(codeOf(() => store.putChunk(["s", 0, 0], bytes(8), meta))).toBe("disk_full")
    state.errno = "EIO"
    expect(codeOf(() => store.putChunk(["s", 0, 0], bytes(8), meta))).toBe("io_failed")
    expect(store.stats().chunkCount).toBe(0)
  })
})

describe("DiskStore sessions and policies", () => {
  it("keeps session records, created_at across updates", () => {
    let t = Date.parse("2026-01-01T00:00:00Z")
    const store = openStore({ now: () => new Date(t) })
    store.putSession("doc", { model: "tiny-leo-14m", tokens: 10 })
    t += 60_000
    const updated = store.putSession("doc", { model: "tiny-leo-14m", tokens: 20 })
    expect(updated).toEqual({
      id: "doc",
      model: "tiny-leo-14m",
      tokens: 20,
      created_at: "2026-01-01T00:00:00.000Z",
      updated_at: "2026-01-01T00:01:00.000Z",
    })
    store.putSession("a/b c", { model: "m", tokens: 1 })
    expect(store.listSessions().map((s) => s.id)).toEqual(["a/b c", "doc"])
    expect(store.getSession("nope")).toBeUndefined()
  })

  it("drops a session's record, chunks, abstracts and segment file, and only those", () => {
    const store = openStore()
    for (const id of ["s", "s2", "odd/../id"]) {
      store.putSession(id, { model: "m", tokens: 8 })
      store.putChunks([0, 1].map((l) => ({ key: [id, l, 0] as ChunkKey, bytes: bytes(32, l), meta })))
      store.putAbstract([id, 0, 0], Uint8Array.of(1))
      store.putAbstract([id, 1, 0], Uint8Array.of(2))
    }
    const chunkDir = path.join(store.kvDir, "chunks")
    expect(segmentFileName("odd/../id")).toMatch(/^~[0-9a-f]{40}\.seg$/)
    expect(fs.readdirSync(chunkDir).length).toBe(3)

    expect(store.dropSession("s")).toBe(true)
    expect(store.getSession("s")).toBeUndefined()
    expect(store.chunkEntry(["s", 0, 0])).toBeUndefined()
    expect(store.abstractsOf("s", 1)).toEqual([])
    expect(fs.existsSync(path.join(chunkDir, "s.seg"))).toBe(false)
    expect(store.readChunk(["s2", 1, 0])).toEqual(bytes(32, 1))
    expect(store.abstractsOf("s2", 0)).toEqual([{ chunk: 0, bytes: Uint8Array.of(1) }])

    expect(store.dropSession("odd/../id")).toBe(true)
    expect(fs.readdirSync(chunkDir)).toEqual(["s2.seg"])
    expect(store.stats()).toMatchObject({ chunkCount: 2, abstractCount: 2, sessionCount: 1 })
    expect(store.dropSession("never")).toBe(false)
  })

  it("versions policy changes in order", () => {
    const store = openStore()
    expect(store.latestPolicy()).toBeUndefined()
    store.appendPolicy({ policy: { eviction: "lru" }, user: "admin", at: "2026-01-01T00:00:00.000Z" })
    store.appendPolicy({ policy: { eviction: "importance", half_life: 64 }, user: "ops" })
    expect(store.policyHistory().map((p) => [p.version, p.user])).toEqual([
      [1, "admin"],
      [2, "ops"],
    ])
    expect(store.latestPolicy()).toMatchObject({ version: 2, policy: { eviction: "importance", half_life: 64 } })
  })
})

describe("DiskStore persistence", () => {
  it("keeps everything across close and reopen, and appends after the old tail", async () => {
    const kvDir = path.join(tempDir(), "kv")
    const first = DiskStore.open({ kvDir })
    first.putChunk(["s", 2, 7], bytes(300, 5), meta)
    first.putAbstract(["s", 2, 7], Uint8Array.of(4, 5, 6))
    first.putSession("s", { model: "m", tokens: 300 })
    first.appendPolicy({ policy: { eviction: "lfu" }, user: "admin" })
    await first.flush()
    await first.close()
    expect(codeOf(() => first.readChunk(["s", 2, 7]))).toBe("store_closed")

    const second = DiskStore.open({ kvDir, durableChunkCommits: true })
    stores.push(second)
    expect(second.readChunk(["s", 2, 7])).toEqual(bytes(300, 5))
    expect(second.getAbstract(["s", 2, 7])).toEqual(Uint8Array.of(4, 5, 6))
    expect(second.getSession("s")).toMatchObject({ model: "m", tokens: 300 })
    expect(second.latestPolicy()).toMatchObject({ version: 1, policy: { eviction: "lfu" } })
    const next = second.putChunk(["s", 2, 8], bytes(10), meta)
    expect(next.offset).toBe(300)
    expect(second.appendPolicy({ policy: {}, user: "x" }).version).toBe(2)
    expect(second.stats()).toMatchObject({ chunkCount: 2, fileBytes: 310, bytesWritten: 10, bytesRead: 300, chunkReads: 1 })
  })
})
