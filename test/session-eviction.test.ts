// kv/session-eviction.ts: the disk budget counts a chunk several sessions link once, and
// evicts (least recently used first) only sessions whose eviction frees bytes, now or
// together with a later one, never a pinned one.
import { describe, expect, it } from "vitest"
import { evictionPlan, type SessionChunks } from "../kv/session-eviction.ts"

/** A session holding chunks of 100 bytes at these places, last used at minute `t`. */
const session = (id: string, t: number, places: string[]): SessionChunks => ({
  id,
  lastUsed: `2026-12-07T19:${String(t).padStart(2, "0")}:00.000Z`,
  places: new Map(places.map((p) => [p, 100])),
})

describe("session eviction under a disk budget", () => {
  const doc = ["d.seg@0", "d.seg@100", "d.seg@200"]
  it("counts a shared chunk once: a document and one that begins like it fit where twice the document would not", () => {
    const d = session("d", 1, doc)
    const x = session("x", 2, [...doc, "x.seg@0"]) // links d's three chunks, writes one
    expect(evictionPlan([d, x], 400, () => false)).toEqual([])
    // Over by one chunk: x's own chunk is the only one freed alone, so x goes though d is older.
    expect(evictionPlan([d, x], 300, () => false)).toEqual(["x"])
  })

  it("goes least recently used first, passes over what frees nothing, and never evicts a pinned session", () => {
    const d = session("d", 1, doc)
    const x = session("x", 2, [...doc, "x.seg@0"])
    const other = session("o", 3, ["o.seg@0", "o.seg@100"])
    // x frees its own chunk; then d, older than o, frees the document alone.
    expect(evictionPlan([other, x, d], 400, () => false)).toEqual(["x", "d"])
    // Nothing fits: d and x free the document together, after x's own chunk.
    expect(evictionPlan([d, x], 0, () => false)).toEqual(["x", "d"])
    // x pinned: d frees nothing (x holds all of it), so d stays even over the budget.
    expect(evictionPlan([d, x], 0, (id) => id === "x")).toEqual([])
    expect(evictionPlan([d, x, other], 350, (id) => id === "x")).toEqual(["o"])
  })
})
