// LocalTierIo over a real HostArena and a DiskStore in a temporary directory (real LMDB):
// loads from each tier with the promotion rule, arena operations in load order while disk
// reads overlap, write-through seals all or nothing on a full disk, failures by code.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { chunkKey } from "../kv/eviction.ts"
import { HostArena } from "../kv/host-arena.ts"
import type { FileIo } from "../kv/segments.ts"
import { KvTierError } from "../kv/tier-errors.ts"
import { type ChunkLoad, LocalTierIo, releaseHostEntry, type SealedChunk } from "../kv/tier-io.ts"

const temps: string[] = []
const stores: DiskStore[] = []
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close()
  for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

const CHUNK = 64
const bytesOf = (layer: number, chunk: number) => Uint8Array.from({ length: CHUNK }, (_, i) => (i * 7 + layer * 31 + chunk * 13) & 0xff)
const sealed = (layer: number, chunk: number): SealedChunk => ({ layer, chunk, tokens: 16, kv: bytesOf(layer, chunk), abstract: Uint8Array.of(layer, chunk, 1, 2) })

const setup = (options: { hostChunks: number; io?: Partial<FileIo> }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-tier-io-"))
  temps.push(dir)
  const store = DiskStore.open({ kvDir: path.join(dir, "kv"), ...(options.io ? { io: options.io } : {}) })
  stores.push(store)
  const arena = new HostArena({ budgetBytes: options.hostChunks * CHUNK, evictAheadBytes: 0 })
  return { store, arena, io: new LocalTierIo(arena, store, "doc") }
}

/** Loads that record, in order, which chunk reached staging with which bytes. */
const loadsOf = (chunks: ReadonlyArray<readonly [number, number]>, staged: Array<{ chunk: number; bytes: Uint8Array }>): ChunkLoad[] =>
  chunks.map(([layer, chunk]) => ({
    layer,
    chunk,
    bytes: CHUNK,
    stage: async (src) => {
      staged.push({ chunk, bytes: src.slice() })
    },
  }))

const rejection = async (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  )

describe("LocalTierIo", () => {
  it("writes seals through to disk and host, then loads from the host arena, else from disk", async () => {
    const { io, arena, store } = setup({ hostChunks: 2 })
    expect(await io.storeSealed([sealed(0, 0), sealed(0, 1), sealed(0, 2)])).toBe(3 * CHUNK)
    expect(store.chunksOf("doc", 0).map((c) => c.chunk)).toEqual([0, 1, 2])
    expect(store.abstractsOf("doc", 0)[2]!.bytes).toEqual(Uint8Array.of(0, 2, 1, 2))
    // The arena holds two chunks: storing chunk 2 evicted chunk 0 (lru).
    expect(arena.keys().sort()).toEqual([chunkKey("doc", 0, 1), chunkKey("doc", 0, 2)])
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    expect(await io.load(loadsOf([[0, 2], [0, 0]], staged), false)).toEqual(["host", "disk"])
    expect(staged).toEqual([
      { chunk: 2, bytes: bytesOf(0, 2) },
      { chunk: 0, bytes: bytesOf(0, 0) },
    ])
    expect(arena.has(chunkKey("doc", 0, 0))).toBe(false) // offload-all does not promote
  })

  it("promotes disk reads into the arena in load order, evicting as a one-at-a-time loop would", async () => {
    const { io, arena } = setup({ hostChunks: 2 })
    await io.storeSealed([0, 1, 2, 3].map((c) => sealed(1, c)))
    // Resident: 2 and 3 (0 and 1 were evicted by their stores).
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    const tiers = await io.load(loadsOf([[1, 0], [1, 1], [1, 2]], staged), true)
    expect(staged.map((s) => s.chunk)).toEqual([0, 1, 2])
    for (const s of staged) expect(s.bytes).toEqual(bytesOf(1, s.chunk))
    // Promoting 0 evicts 2 (stored before 3), promoting 1 evicts 3, so 2, resident when
    // the loads began, comes from disk, and its promotion evicts 0.
    expect(tiers).toEqual(["disk", "disk", "disk"])
    expect(arena.keys().sort()).toEqual([chunkKey("doc", 1, 1), chunkKey("doc", 1, 2)])
  })

  it("overlaps disk reads but stages, and touches the arena, in load order", async () => {
    let inFlight = 0
    let most = 0
    const delays = [30, 5, 20, 1, 10, 2]
    let call = 0
    const io: Partial<FileIo> = {
      readAsync: async (fd, buffer, offset, length, position) => {
        inFlight++
        most = Math.max(most, inFlight)
        await new Promise((r) => setTimeout(r, delays[call++ % delays.length]))
        inFlight--
        return fs.readSync(fd, buffer, offset, length, position)
      },
    }
    const t = setup({ hostChunks: 1, io })
    await t.io.storeSealed([0, 1, 2, 3, 4, 5].map((c) => sealed(0, c)))
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    const order = [4, 0, 5, 1, 2, 3]
    const tiers = await t.io.load(loadsOf(order.map((c) => [0, c] as const), staged), false)
    expect(staged.map((s) => s.chunk)).toEqual(order)
    for (const s of staged) expect(s.bytes).toEqual(bytesOf(0, s.chunk))
    expect(tiers).toEqual(["disk", "disk", "host", "disk", "disk", "disk"]) // 5 was the last stored
    expect(most).toBeGreaterThan(1)
  })

  it("fails a corrupt or missing chunk by code, leaving no reservation and no read in flight", async () => {
    const { io, arena, store } = setup({ hostChunks: 4 })
    await io.storeSealed([sealed(0, 0), sealed(0, 1)])
    for (const c of [0, 1]) io.forget(0, c)
    const entry = store.chunkEntry(["doc", 0, 1])!
    const file = path.join(store.kvDir, "chunks", entry.file)
    const fd = fs.openSync(file, "r+")
    fs.writeSync(fd, Uint8Array.of(0xee), 0, 1, entry.offset + 9)
    fs.closeSync(fd)
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    const corrupt = await rejection(io.load(loadsOf([[0, 0], [0, 1], [0, 0]], staged), true))
    expect(corrupt).toBeInstanceOf(KvTierError)
    expect((corrupt as KvTierError).code).toBe("chunk_corrupt")
    expect(staged.map((s) => s.chunk)).toEqual([0])
    expect(arena.stats().pinned).toBe(0)
    expect(arena.keys()).toEqual([chunkKey("doc", 0, 0)])
    const missing = await rejection(io.load(loadsOf([[0, 9]], []), true))
    expect((missing as KvTierError).code).toBe("chunk_missing")
    expect(arena.stats().pinned).toBe(0)
  })

  it("reports disk_full with nothing of the seal indexed, nor put in the arena", async () => {
    let armed = false
    const io: Partial<FileIo> = {
      write: (fd, buffer, offset, length, position) => {
        if (armed) throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" })
        return fs.writeSync(fd, buffer, offset, length, position)
      },
    }
    const t = setup({ hostChunks: 4, io })
    await t.io.storeSealed([sealed(0, 0)])
    armed = true
    const e = await rejection(t.io.storeSealed([sealed(0, 1), sealed(1, 1)]))
    expect(e).toBeInstanceOf(KvTierError)
    expect((e as KvTierError).code).toBe("disk_full")
    expect(t.store.chunksOf("doc", 0).map((c) => c.chunk)).toEqual([0])
    expect(t.store.chunksOf("doc", 1)).toEqual([])
    expect(t.arena.keys()).toEqual([chunkKey("doc", 0, 0)])
  })

  it("adopts a stored session's chunk tables and abstracts per layer, and drops it", async () => {
    const { io, store } = setup({ hostChunks: 4 })
    await io.storeSealed([sealed(0, 0), sealed(0, 1), sealed(1, 0)])
    const reopened = new LocalTierIo(new HostArena({ budgetBytes: CHUNK }), store, "doc")
    expect(reopened.adoptLayer(0)).toEqual({
      chunks: [
        { chunk: 0, tokens: 16 },
        { chunk: 1, tokens: 16 },
      ],
      abstracts: [
        { chunk: 0, bytes: Uint8Array.of(0, 0, 1, 2) },
        { chunk: 1, bytes: Uint8Array.of(0, 1, 1, 2) },
      ],
    })
    expect(reopened.adoptLayer(1).chunks).toEqual([{ chunk: 0, tokens: 16 }])
    expect(reopened.adoptLayer(2)).toEqual({ chunks: [], abstracts: [] })
    reopened.dropSession()
    expect(reopened.adoptLayer(0)).toEqual({ chunks: [], abstracts: [] })
  })

  it("holds a linked chunk once in the host arena, under its owner's key, until the owner and the last user let go", async () => {
    const { io, arena, store } = setup({ hostChunks: 8 })
    await io.storeSealed([sealed(0, 0), sealed(0, 1), sealed(0, 2)])
    // "b" and "c" begin like "doc": its first two chunks linked (the same disk bytes).
    store.linkChunks("doc", "b", [2])
    store.linkChunks("doc", "c", [2])
    const b = new LocalTierIo(arena, store, "b")
    const c = new LocalTierIo(arena, store, "c")
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    expect(await b.load(loadsOf([[0, 0], [0, 1]], staged), true)).toEqual(["host", "host"])
    expect(await c.load(loadsOf([[0, 0]], staged), true)).toEqual(["host"])
    expect(staged.map((x) => x.bytes)).toEqual([bytesOf(0, 0), bytesOf(0, 1), bytesOf(0, 0)])
    // No second copy: the arena holds doc's three chunks only.
    expect(arena.keys().sort()).toEqual([chunkKey("doc", 0, 0), chunkKey("doc", 0, 1), chunkKey("doc", 0, 2)])
    // The owner lets go first: its entries that b and c use stay, the other goes.
    for (const chunk of [0, 1, 2]) io.forget(0, chunk)
    io.dropSession()
    expect(arena.keys().sort()).toEqual([chunkKey("doc", 0, 0), chunkKey("doc", 0, 1)])
    b.forget(0, 0)
    expect(arena.has(chunkKey("doc", 0, 0))).toBe(true) // c still uses it
    b.forget(0, 1)
    expect(arena.has(chunkKey("doc", 0, 1))).toBe(false)
    // The bytes stay on disk for the sessions whose entries point at them.
    c.session = "elsewhere" // leaving a session lets go of what it used
    expect(arena.keys()).toEqual([])
    c.session = "c"
    expect(await c.load(loadsOf([[0, 0]], staged), false)).toEqual(["disk"])
    expect(staged.at(-1)!.bytes).toEqual(bytesOf(0, 0))
  })

  it("a stored session letting go outside a cache (close, delete) keeps the entries a user reads until that user lets go", async () => {
    const { io, arena, store } = setup({ hostChunks: 8 })
    await io.storeSealed([sealed(0, 0), sealed(0, 1), sealed(0, 2)])
    io.session = "scratch" // the run on "doc" ends: its entries stay, held by the stored session
    store.linkChunks("doc", "req", [3]) // a request begins like it
    const req = new LocalTierIo(arena, store, "req")
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    expect(await req.load(loadsOf([[0, 0], [0, 1]], staged), true)).toEqual(["host", "host"])
    // The session is deleted: what the request uses stays, the rest goes.
    for (const chunk of [0, 1, 2]) releaseHostEntry(arena, chunkKey("doc", 0, chunk))
    store.dropSession("doc")
    expect(arena.keys().sort()).toEqual([chunkKey("doc", 0, 0), chunkKey("doc", 0, 1)])
    // Evicted meanwhile and read again from disk: back under the same key, still to go with the user.
    arena.remove(chunkKey("doc", 0, 1))
    expect(await req.load(loadsOf([[0, 1], [0, 2]], staged), true)).toEqual(["disk", "disk"])
    expect(staged.map((x) => x.bytes)).toEqual([bytesOf(0, 0), bytesOf(0, 1), bytesOf(0, 1), bytesOf(0, 2)])
    expect(arena.keys().sort()).toEqual([chunkKey("doc", 0, 0), chunkKey("doc", 0, 1), chunkKey("req", 0, 2)])
    for (const chunk of [0, 1, 2]) req.forget(0, chunk)
    expect(arena.keys()).toEqual([])
  })

  it("an owner reading its entry again holds it: a user letting go after the owner's close leaves it", async () => {
    const { io, arena, store } = setup({ hostChunks: 8 })
    await io.storeSealed([sealed(0, 0)])
    io.session = "scratch"
    store.linkChunks("doc", "req", [1])
    const req = new LocalTierIo(arena, store, "req")
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    await req.load(loadsOf([[0, 0]], staged), true)
    releaseHostEntry(arena, chunkKey("doc", 0, 0)) // closed while the request reads it
    const resumed = new LocalTierIo(arena, store, "doc")
    expect(await resumed.load(loadsOf([[0, 0]], staged), true)).toEqual(["host"])
    req.forget(0, 0)
    expect(arena.keys()).toEqual([chunkKey("doc", 0, 0)])
  })

  it("once the file's owner has let go, the first sequence reading linked bytes holds them for the others", async () => {
    const { io, arena, store } = setup({ hostChunks: 8 })
    await io.storeSealed([sealed(0, 0), sealed(0, 1)])
    store.linkChunks("doc", "a", [2]) // e.g. a session opened on a running request's document
    io.forget(0, 0)
    io.forget(0, 1)
    io.dropSession() // the request ends: its file stays for "a"
    expect(arena.keys()).toEqual([])
    store.linkChunks("a", "b", [2]) // b begins like a: its entries point into doc's file too
    store.linkChunks("a", "c", [1])
    const a = new LocalTierIo(arena, store, "a")
    const b = new LocalTierIo(arena, store, "b")
    const c = new LocalTierIo(arena, store, "c")
    const staged: Array<{ chunk: number; bytes: Uint8Array }> = []
    expect(await a.load(loadsOf([[0, 0]], staged), true)).toEqual(["disk"])
    expect(await b.load(loadsOf([[0, 0], [0, 1]], staged), true)).toEqual(["host", "disk"])
    expect(await c.load(loadsOf([[0, 0]], staged), true)).toEqual(["host"])
    expect(await a.load(loadsOf([[0, 1]], staged), true)).toEqual(["host"]) // b read chunk 1 first and holds it
    expect(staged.map((x) => x.bytes)).toEqual([bytesOf(0, 0), bytesOf(0, 0), bytesOf(0, 1), bytesOf(0, 0), bytesOf(0, 1)])
    // One host copy of each chunk.
    expect(arena.keys().sort()).toEqual([chunkKey("a", 0, 0), chunkKey("b", 0, 1)])
    // a lets go first: b and c still read its entry; it goes with the last of them.
    a.forget(0, 0)
    expect(arena.has(chunkKey("a", 0, 0))).toBe(true)
    b.forget(0, 0)
    c.forget(0, 0)
    expect(arena.has(chunkKey("a", 0, 0))).toBe(false)
    // a no longer holds chunk 0's place: the next reader does.
    const d = new LocalTierIo(arena, store, "b")
    expect(await d.load(loadsOf([[0, 0]], staged), true)).toEqual(["disk"])
    expect(arena.has(chunkKey("b", 0, 0))).toBe(true)
  })
})
