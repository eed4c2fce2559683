// kv/prefix-holds.ts over a real DiskStore: a sequence that ends while a pending run begins
// like it leaves its sealed prompt chunks under a hold, which the run links at its first
// prefill turn; the hold goes once every run it was kept for has settled, and the bytes with
// the last entry pointing at them.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { PrefixHolds } from "../kv/prefix-holds.ts"
import { linkSharedPrefix, PrefixIndex, prefixChunkKeys } from "../kv/prefix-index.ts"

const temps: string[] = []
const stores: DiskStore[] = []
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close()
  for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

const setup = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-holds-"))
  temps.push(dir)
  const store = DiskStore.open({ kvDir: path.join(dir, "kv") })
  stores.push(store)
  const index = new PrefixIndex()
  return { dir, store, index, holds: new PrefixHolds(index, store) }
}

/** Seals `chunks` chunks of each of 2 layers for `session` (what a lane's prefill writes). */
const seal = (store: DiskStore, session: string, chunks: number) => {
  for (const layer of [0, 1]) {
    store.putChunks(Array.from({ length: chunks }, (_, chunk) => ({ key: [session, layer, chunk] as const, bytes: Uint8Array.of(layer, chunk, 7), meta: { tokens: 2, dtype: "f16" } })))
    store.putAbstracts(Array.from({ length: chunks }, (_, chunk) => ({ key: [session, layer, chunk] as const, bytes: Uint8Array.of(chunk) })))
  }
}

const segments = (dir: string) => fs.readdirSync(path.join(dir, "kv", "chunks")).sort()

describe("prefix holds", () => {
  const prompt = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7, 8], 2, "u")

  it("keep an ended lane's prompt chunks for the run waiting with the same prefix, until it has linked them", () => {
    const { dir, store, index, holds } = setup()
    index.add("lane-0", prompt)
    seal(store, "lane-0", 4)
    holds.wait("run-b", prompt.slice(0, 3)) // b arrives while lane-0 runs, and waits for KV room
    const hold = holds.holdFor("lane-0", 2, "run-a")
    expect(hold).toBe("lane-0-held")
    // lane-0 ends: its entries go, its bytes stay for the hold.
    index.remove("lane-0")
    store.dropSession("lane-0")
    expect(segments(dir)).toEqual(["lane-0.seg"])
    // b's first prefill turn: it links from the hold, then settles it.
    expect(linkSharedPrefix(index, store, "lane-1", prompt.slice(0, 3), 2)).toEqual({ from: hold, chunks: 3 })
    holds.settle("run-b")
    expect(holds.size).toBe(0)
    expect(store.chunksOf(hold!, 0)).toEqual([])
    expect(index.runs(prompt)).toEqual([])
    expect(segments(dir)).toEqual(["lane-0.seg"]) // b's entries still point into it
    store.dropSession("lane-1")
    expect(segments(dir)).toEqual([])
  })

  it("keep nothing when no pending run begins alike, and let a hold go when its runs end without linking", () => {
    const { dir, store, index, holds } = setup()
    index.add("lane-0", prompt)
    seal(store, "lane-0", 4)
    holds.wait("run-a", prompt) // the lane's own run: never a reason to hold
    holds.wait("run-c", prefixChunkKeys([9, 9, 9, 9], 2, "u"))
    expect(holds.holdFor("lane-0", 2, "run-a")).toBeUndefined()
    holds.wait("run-b", prompt.slice(0, 2))
    holds.wait("run-d", prompt.slice(0, 1))
    expect(holds.holdFor("lane-0", 2, "run-a")).toBe("lane-0-held")
    index.remove("lane-0")
    store.dropSession("lane-0")
    holds.settle("run-b") // cancelled while waiting
    expect(holds.size).toBe(1) // still kept for d
    holds.settle("run-d")
    expect(holds.size).toBe(0)
    expect(segments(dir)).toEqual([])
  })
})
