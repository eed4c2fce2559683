// kv/prefix-index.ts: chunk keys chain over every token before (same prefix, same keys; one
// token changed, every later key changes), and the longest held run with its holders counted.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { linkSharedPrefix, PrefixIndex, prefixChunkKeys } from "../kv/prefix-index.ts"

const temps: string[] = []
const stores: DiskStore[] = []
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close()
  for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

describe("prefix chunk keys", () => {
  it("key whole chunks by every token up to their end", () => {
    const a = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7], 2, "u")
    expect(a).toHaveLength(3) // the 7th token is no whole chunk
    expect(prefixChunkKeys([1, 2, 3, 4, 9, 9], 2, "u").slice(0, 2)).toEqual(a.slice(0, 2))
    const changed = prefixChunkKeys([1, 9, 3, 4, 5, 6], 2, "u")
    expect(changed.every((k, i) => k !== a[i])).toBe(true)
    // The same tokens at another position, or cut in other chunks, are other keys.
    expect(prefixChunkKeys([3, 4], 2, "u")[0]).not.toBe(a[1])
    expect(prefixChunkKeys([1, 2, 3, 4], 4, "u")[0]).not.toBe(a[1])
    // Another user's same tokens share nothing: a faster first token would tell them apart.
    const other = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7], 2, "v")
    expect(other.every((k) => !a.includes(k))).toBe(true)
  })

  it("finds each holder's run from the first chunk, and counts holders", () => {
    const idx = new PrefixIndex()
    const doc = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7, 8], 2, "u")
    const other = prefixChunkKeys([1, 2, 3, 4, 0, 0], 2, "u")
    expect(idx.runs(doc)).toEqual([])
    idx.add("a", other)
    idx.add("b", doc.slice(0, 3))
    expect(idx.runs(doc)).toEqual([
      { sequence: "a", chunks: 2 },
      { sequence: "b", chunks: 3 },
    ])
    expect(idx.runs(other)).toEqual([
      { sequence: "a", chunks: 3 },
      { sequence: "b", chunks: 2 },
    ])
    expect(idx.refs(doc[0])).toBe(2)
    expect(idx.refs(doc[2])).toBe(1)
    idx.remove("b")
    expect(idx.runs(doc)).toEqual([{ sequence: "a", chunks: 2 }])
    idx.remove("a")
    expect(idx.refs(doc[0])).toBe(0)
    expect(idx.runs(doc)).toEqual([])
  })

  it("links the most chunks a holder has sealed in every layer, not the longest run registered", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-prefix-"))
    temps.push(dir)
    const store = DiskStore.open({ kvDir: path.join(dir, "kv") })
    stores.push(store)
    const seal = (session: string, layer: number, chunks: number) =>
      store.putChunks(Array.from({ length: chunks }, (_, chunk) => ({ key: [session, layer, chunk] as const, bytes: Uint8Array.of(layer, chunk), meta: { tokens: 2, dtype: "f16" } })))
    const idx = new PrefixIndex()
    const doc = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7, 8], 2, "u")
    idx.add("running", doc) // registered its whole prompt; its prefill has sealed 1 chunk of layer 1
    seal("running", 0, 4)
    seal("running", 1, 1)
    idx.add("stored", doc.slice(0, 3)) // a shorter document, all sealed
    for (const layer of [0, 1]) {
      seal("stored", layer, 3)
      store.putAbstracts(Array.from({ length: 3 }, (_, chunk) => ({ key: ["stored", layer, chunk] as const, bytes: Uint8Array.of(chunk) })))
    }
    expect(linkSharedPrefix(idx, store, "new", doc, 2)).toEqual({ from: "stored", chunks: 3 })
    expect(store.chunksOf("new", 1).map((c) => c.entry.file)).toEqual(Array(3).fill(store.chunksOf("stored", 1)[0].entry.file))
    // Nobody holds a first chunk like this one: nothing linked.
    expect(linkSharedPrefix(idx, store, "other", prefixChunkKeys([9, 9], 2, "u"), 2)).toBeUndefined()
    expect(store.chunksOf("other", 0)).toEqual([])
  })
})
