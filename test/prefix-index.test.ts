// kv/prefix-index.ts: chunk keys chain over every token before (same prefix, same keys; one
// token changed, every later key changes), and the longest held run with its holders counted.
import { describe, expect, it } from "vitest"
import { PrefixIndex, prefixChunkKeys } from "../kv/prefix-index.ts"

describe("prefix chunk keys", () => {
  it("key whole chunks by every token up to their end", () => {
    const a = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7], 2)
    expect(a).toHaveLength(3) // the 7th token is no whole chunk
    expect(prefixChunkKeys([1, 2, 3, 4, 9, 9], 2).slice(0, 2)).toEqual(a.slice(0, 2))
    const changed = prefixChunkKeys([1, 9, 3, 4, 5, 6], 2)
    expect(changed.every((k, i) => k !== a[i])).toBe(true)
    // The same tokens at another position, or cut in other chunks, are other keys.
    expect(prefixChunkKeys([3, 4], 2)[0]).not.toBe(a[1])
    expect(prefixChunkKeys([1, 2, 3, 4], 4)[0]).not.toBe(a[1])
  })

  it("finds each holder's run from the first chunk, and counts holders", () => {
    const idx = new PrefixIndex()
    const doc = prefixChunkKeys([1, 2, 3, 4, 5, 6, 7, 8], 2)
    const other = prefixChunkKeys([1, 2, 3, 4, 0, 0], 2)
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
})
