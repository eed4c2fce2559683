import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { HostArena, type StoreTicket } from "../kv/host-arena.ts"
import { planCompaction } from "../kv/arena-compaction.ts"
import { HostCacheError } from "../kv/host-errors.ts"
import { FreeList } from "../kv/free-list.ts"
import {
  chunkKey,
  evictionPolicies,
  importancePolicy,
  isEvictionPolicyName,
  lfu,
  lru,
  type EntryView,
  type EvictionPolicy,
} from "../kv/eviction.ts"

const codeOf = (f: () => unknown): string => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(HostCacheError)
    return (e as HostCacheError).code
  }
  throw new Error("expected a HostCacheError, nothing was thrown")
}
const one = (v: number) => Uint8Array.of(v)
/** Loads and immediately releases a chunk (a hit that touches it). */
const touch = (arena: HostArena, key: string) => {
  expect(arena.prepareLoad(key)).toBeDefined()
  arena.completeLoad(key)
}
const sorted = (keys: Iterable<string>) => [...keys].sort()

describe("FreeList", () => {
  it("allocates first-fit and coalesces on release", () => {
    const free = FreeList.empty(10)
    expect([free.alloc(3), free.alloc(3), free.alloc(3), free.alloc(2)]).toEqual([0, 3, 6, null])
    free.release({ offset: 3, length: 3 })
    expect(free.alloc(4)).toBeNull()
    free.release({ offset: 0, length: 3 })
    expect(free.list()).toEqual([
      { offset: 0, length: 6 },
      { offset: 9, length: 1 },
    ])
    free.release({ offset: 6, length: 3 })
    expect(free.list()).toEqual([{ offset: 0, length: 10 }])
    const slabbed = FreeList.empty(8, 4)
    expect(slabbed.alloc(5)).toBeNull()
    expect([slabbed.alloc(3), slabbed.alloc(3)]).toEqual([0, 4])
    slabbed.release({ offset: 0, length: 3 })
    slabbed.release({ offset: 4, length: 3 })
    expect(slabbed.list()).toEqual([
      { offset: 0, length: 4 },
      { offset: 4, length: 4 },
    ])
    expect(FreeList.around(10, [{ offset: 2, length: 3 }, { offset: 0, length: 1 }]).list()).toEqual([
      { offset: 1, length: 1 },
      { offset: 5, length: 5 },
    ])
  })
})

describe("planCompaction", () => {
  it("slides movable extents down around fixed ones and stops once the hole opens", () => {
    // [a . b . P c .] capacity 8, need 3: a stays, b slides to 1, c to 3.. blocked by P at 4.
    const movable = [
      { key: "a", offset: 0, length: 1 },
      { key: "b", offset: 2, length: 1 },
      { key: "c", offset: 5, length: 1 },
    ]
    const plan = planCompaction(movable, [{ offset: 4, length: 1 }], 8, 2)
    expect(plan).toEqual({ moves: [{ key: "b", from: 2, to: 1, length: 1 }], hole: 2 })
    expect(planCompaction(movable, [{ offset: 4, length: 1 }], 8, 3)).toEqual({
      moves: [
        { key: "b", from: 2, to: 1, length: 1 },
        { key: "c", from: 5, to: 2, length: 1 },
      ],
      hole: 5,
    })
    expect(planCompaction(movable, [{ offset: 4, length: 1 }], 8, 4)).toBeNull()
  })
})

describe("eviction order, one-byte chunks, budget 3", () => {
  it("lru evicts the least recently used", () => {
    const arena = new HostArena({ budgetBytes: 3, policy: lru })
    for (const [i, k] of ["a", "b", "c"].entries()) expect(arena.put(k, one(i))).toEqual([])
    touch(arena, "a")
    expect(arena.put("d", one(3))).toEqual(["b"])
    expect(arena.put("e", one(4))).toEqual(["c"])
    touch(arena, "d")
    expect(arena.put("f", one(5))).toEqual(["a"])
    expect(sorted(arena.keys())).toEqual(["d", "e", "f"])
    expect(arena.stats()).toMatchObject({ evictions: 3, evictedBytes: 3, residentBytes: 3, hits: 2 })
  })

  it("lfu evicts the least often used, oldest first among equals", () => {
    const arena = new HostArena({ budgetBytes: 3, policy: lfu })
    for (const k of ["a", "b", "c"]) arena.put(k, one(0))
    touch(arena, "a")
    touch(arena, "a")
    touch(arena, "b")
    expect(arena.put("d", one(0))).toEqual(["c"])
    expect(arena.put("e", one(0))).toEqual(["d"])
    touch(arena, "e")
    touch(arena, "e")
    expect(arena.put("f", one(0))).toEqual(["b"])
    expect(sorted(arena.keys())).toEqual(["a", "e", "f"])
  })

  it("importance evicts the lowest score, with scores decaying over ticks", () => {
    const arena = new HostArena({ budgetBytes: 3, policy: evictionPolicies.importance })
    for (const k of ["a", "b", "c"]) arena.put(k, one(0))
    arena.setScore("a", 0.9)
    arena.setScore("b", 0.1)
    arena.setScore("c", 0.5)
    expect(arena.put("d", one(0))).toEqual(["b"])
    expect(arena.put("e", one(0))).toEqual(["d"]) // unscored: 0
    arena.setScore("e", 0.6)
    expect(arena.put("f", one(0))).toEqual(["c"])

    // Half-life of one tick: a score of 0.9 set 3 ticks ago (0.1125 now) loses to 0.2 set now.
    const decaying = new HostArena({ budgetBytes: 2, policy: importancePolicy({ halfLifeTicks: 1 }) })
    decaying.put("old", one(0))
    decaying.put("new", one(0))
    decaying.setScore("old", 0.9)
    decaying.setScore("new", 0.2)
    expect(decaying.evict(1)).toEqual(["new"]) // 1 tick apart: 0.45 vs 0.2
    decaying.put("new", one(0))
    decaying.setScore("new", 0.1)
    touch(decaying, "old")
    decaying.setScore("new", 0.2) // now 3 ticks after old's score
    expect(decaying.evict(1)).toEqual(["old"])
  })

  it("never evicts pinned chunks and reports budget_exceeded when all are pinned", () => {
    const arena = new HostArena({ budgetBytes: 3 })
    for (const k of ["a", "b", "c"]) arena.put(k, one(0))
    arena.prepareLoad("a")
    arena.pin("b")
    expect(arena.put("d", one(0))).toEqual(["c"])
    arena.pin("d")
    expect(codeOf(() => arena.put("e", one(0)))).toBe("budget_exceeded")
    expect(arena.evict(1)).toBeNull()
    expect(codeOf(() => arena.put("big", new Uint8Array(4)))).toBe("budget_exceeded")
    expect(codeOf(() => arena.put("a", one(1)))).toBe("entry_busy")
    arena.completeLoad("a")
    expect(codeOf(() => arena.completeLoad("a"))).toBe("not_pinned")
    expect(arena.put("e", one(0))).toEqual(["a"])
  })
})

describe("HostArena evict-ahead", () => {
  it("evicts extra bytes once so the next stores need no eviction, and falls back to the exact need", () => {
    const arena = new HostArena({ budgetBytes: 4, evictAheadBytes: 2 })
    for (const k of ["a", "b", "c", "d"]) arena.put(k, one(0))
    expect(arena.put("e", one(0))).toEqual(["a", "b", "c"])
    expect(arena.put("f", one(0))).toEqual([])
    expect(arena.put("g", one(0))).toEqual([])
    arena.pin("d")
    arena.pin("e")
    arena.pin("f")
    expect(arena.put("h", one(0))).toEqual(["g"]) // only one byte is evictable
    expect(arena.stats()).toMatchObject({ evictions: 4, residentBytes: 4 })
  })
})

describe("HostArena two-phase moves", () => {
  it("stores through a ticket, hides the chunk until complete, and aborts cleanly", () => {
    const arena = new HostArena({ budgetBytes: 8 })
    const ticket = arena.prepareStore(chunkKey("doc", 1, 2), 4)
    expect(ticket.key).toBe("doc/1/2")
    expect(arena.prepareLoad("doc/1/2")).toBeUndefined()
    expect(codeOf(() => arena.unpin("doc/1/2"))).toBe("not_pinned")
    expect(codeOf(() => arena.pin("doc/1/2"))).toBe("not_resident")
    ticket.view.set([1, 2, 3, 4])
    arena.completeStore(ticket)
    expect(codeOf(() => arena.completeStore(ticket))).toBe("ticket_stale")
    expect(arena.prepareLoad("doc/1/2")).toEqual(Uint8Array.of(1, 2, 3, 4))
    arena.completeLoad("doc/1/2")

    const aborted = arena.prepareStore("x", 4)
    arena.abortStore(aborted)
    expect(arena.has("x")).toBe(false)
    expect(arena.stats()).toMatchObject({ residentBytes: 4, entries: 1, pinned: 0, hits: 1, misses: 1, bytesIn: 4, bytesOut: 4 })
    expect(codeOf(() => arena.prepareStore("y", 0))).toBe("invalid_size")
  })

  it("spreads the budget over slabs and compacts across them", () => {
    const arena = new HostArena({ budgetBytes: 6, slabBytes: 3, evictAheadBytes: 0 })
    expect(codeOf(() => arena.prepareStore("big", 4))).toBe("budget_exceeded")
    for (const k of ["a", "b", "c", "d", "e", "f"]) arena.put(k, one(k.charCodeAt(0)))
    arena.remove("b")
    arena.remove("d")
    expect(arena.put("g", Uint8Array.of(7, 7))).toEqual([])
    const at = Object.fromEntries(arena.layout().map((e) => [e.key, e.offset]))
    expect(at).toEqual({ a: 0, c: 1, e: 2, f: 5, g: 3 }) // e moved from slab 1 into slab 0
    for (const k of ["a", "c", "e", "f"]) expect(arena.prepareLoad(k)).toEqual(one(k.charCodeAt(0)))
    expect(arena.prepareLoad("g")).toEqual(Uint8Array.of(7, 7))
  })

  it("evicts past the shortfall when slab edges cut the free space", () => {
    const arena = new HostArena({ budgetBytes: 5, slabBytes: 4, evictAheadBytes: 0 })
    arena.put("a", one(1))
    arena.put("b", Uint8Array.of(2, 2))
    // 2 bytes free, but one at the end of each slab: a must go and b slide down.
    expect(arena.put("c", Uint8Array.of(3, 3))).toEqual(["a"])
    expect(Object.fromEntries(arena.layout().map((e) => [e.key, e.offset]))).toEqual({ b: 0, c: 2 })
    expect(arena.prepareLoad("b")).toEqual(Uint8Array.of(2, 2))
    expect(codeOf(() => arena.put("d", Uint8Array.of(4, 4, 4)))).toBe("budget_exceeded") // b is pinned
  })

  it("compacts around pinned chunks when the free space is fragmented", () => {
    const arena = new HostArena({ budgetBytes: 6 })
    for (const k of ["a", "b", "c", "d", "e", "f"]) arena.put(k, one(k.charCodeAt(0)))
    arena.remove("b")
    arena.remove("d")
    arena.pin("e")
    // Holes at 1 and 3: two bytes free but not together; c slides down to 1.
    expect(arena.put("g", Uint8Array.of(7, 7))).toEqual([])
    expect(arena.stats()).toMatchObject({ compactions: 1, movedBytes: 1, residentBytes: 6 })
    for (const k of ["a", "c", "e", "f"]) expect(arena.prepareLoad(k)).toEqual(one(k.charCodeAt(0)))
    expect(arena.prepareLoad("g")).toEqual(Uint8Array.of(7, 7))
  })
})

describe("policy registry", () => {
  it("resolves names", () => {
    expect(Object.keys(evictionPolicies)).toEqual(["lru", "lfu", "importance"])
    expect(isEvictionPolicyName("lfu")).toBe(true)
    expect(isEvictionPolicyName("toString")).toBe(false)
    for (const [name, p] of Object.entries(evictionPolicies)) expect(p.name).toBe(name)
  })
})

// --- properties ---------------------------------------------------------------------

type Op =
  | { readonly t: "put"; readonly key: number; readonly len: number }
  | { readonly t: "prepare"; readonly key: number; readonly len: number }
  | { readonly t: "complete" }
  | { readonly t: "abort" }
  | { readonly t: "load"; readonly key: number; readonly hold: boolean }
  | { readonly t: "release" }
  | { readonly t: "evict"; readonly n: number }
  | { readonly t: "score"; readonly key: number; readonly s: number }
  | { readonly t: "remove"; readonly key: number }

const opArb = (budget: number): fc.Arbitrary<Op> => {
  const key = fc.integer({ min: 0, max: 15 })
  // Mostly small chunks, so the arena fragments and compacts; sometimes one too big to fit.
  const len = fc.oneof(
    { arbitrary: fc.integer({ min: 1, max: Math.max(1, Math.ceil(budget / 3)) }), weight: 5 },
    { arbitrary: fc.integer({ min: 1, max: budget + 1 }), weight: 1 },
  )
  return fc.oneof(
    { arbitrary: fc.record({ t: fc.constant("put" as const), key, len }), weight: 3 },
    fc.record({ t: fc.constant("prepare" as const), key, len }),
    fc.constant({ t: "complete" as const }),
    fc.constant({ t: "abort" as const }),
    fc.record({ t: fc.constant("load" as const), key, hold: fc.boolean() }),
    fc.constant({ t: "release" as const }),
    fc.record({ t: fc.constant("evict" as const), n: fc.integer({ min: 0, max: budget + 1 }) }),
    fc.record({ t: fc.constant("score" as const), key, s: fc.double({ min: 0, max: 1, noNaN: true }) }),
    { arbitrary: fc.record({ t: fc.constant("remove" as const), key }), weight: 2 },
  )
}

const scenario = fc
  .record({
    budget: fc.integer({ min: 1, max: 48 }),
    ahead: fc.integer({ min: 0, max: 4 }),
    slabs: fc.integer({ min: 1, max: 3 }),
    policy: fc.constantFrom(...Object.keys(evictionPolicies)),
  })
  .chain((s) => fc.record({ ops: fc.array(opArb(s.budget), { maxLength: 80 }) }).map(({ ops }) => ({ ...s, ops })))

let seed = 0
const pattern = (length: number) => {
  const s = ++seed
  return Uint8Array.from({ length }, (_, i) => (s * 131 + i * 7) & 0xff)
}

/** Runs ops against an arena and a model of what it must hold, checking the invariants after each. */
const run = (budget: number, slabBytes: number, evictAheadBytes: number, policy: EvictionPolicy, ops: ReadonlyArray<Op>) => {
  const arena = new HostArena({ budgetBytes: budget, slabBytes, policy, evictAheadBytes })
  const stored = new Map<string, Uint8Array>()
  const pending: Array<{ ticket: StoreTicket; bytes: Uint8Array }> = []
  const held: string[] = []
  const forget = (evicted: ReadonlyArray<string>) => {
    for (const k of evicted) {
      expect(held).not.toContain(k)
      expect(pending.map((p) => p.ticket.key)).not.toContain(k)
      stored.delete(k)
    }
  }
  const snapshot = () => JSON.stringify(arena.layout().sort((a, b) => a.offset - b.offset))
  const allowed = (f: () => void, ...codes: string[]) => {
    const before = snapshot()
    try {
      f()
    } catch (e) {
      if (!(e instanceof HostCacheError) || !codes.includes(e.code)) throw e
      expect(snapshot()).toBe(before) // a refused store changes nothing
    }
  }
  for (const op of ops) {
    const key = "key" in op ? `k${op.key}` : ""
    switch (op.t) {
      case "put":
        allowed(() => {
          const bytes = pattern(op.len)
          forget(arena.put(key, bytes))
          stored.set(key, bytes)
        }, "budget_exceeded", "entry_busy")
        break
      case "prepare":
        allowed(() => {
          const ticket = arena.prepareStore(key, op.len)
          stored.delete(key)
          forget(ticket.evicted)
          const bytes = pattern(op.len)
          ticket.view.set(bytes)
          pending.push({ ticket, bytes })
        }, "budget_exceeded", "entry_busy")
        break
      case "complete":
      case "abort": {
        const p = pending.shift()
        if (p === undefined) break
        if (op.t === "abort") arena.abortStore(p.ticket)
        else {
          arena.completeStore(p.ticket)
          stored.set(p.ticket.key, p.bytes)
        }
        break
      }
      case "load": {
        const view = arena.prepareLoad(key)
        expect(view === undefined).toBe(!stored.has(key))
        if (view === undefined) break
        expect(view).toEqual(stored.get(key))
        if (op.hold) held.push(key)
        else arena.completeLoad(key)
        break
      }
      case "release": {
        const k = held.shift()
        if (k !== undefined) arena.completeLoad(k)
        break
      }
      case "evict": {
        const before = arena.stats().residentBytes
        const keys = sorted(arena.keys())
        const evicted = arena.evict(op.n)
        if (evicted === null) {
          expect(sorted(arena.keys())).toEqual(keys)
        } else {
          expect(before - arena.stats().residentBytes).toBeGreaterThanOrEqual(op.n)
          forget(evicted)
        }
        break
      }
      case "score":
        arena.setScore(key, op.s)
        break
      case "remove":
        allowed(() => {
          arena.remove(key)
          stored.delete(key)
        }, "entry_busy")
        break
    }
    const layout = arena.layout().sort((a, b) => a.offset - b.offset)
    const resident = layout.reduce((s, e) => s + e.length, 0)
    expect(arena.stats().residentBytes).toBe(resident)
    expect(resident).toBeLessThanOrEqual(budget)
    for (let i = 0; i < layout.length; i++) {
      const { offset, length } = layout[i]!
      expect(offset + length).toBeLessThanOrEqual(i + 1 < layout.length ? layout[i + 1]!.offset : budget)
      expect(Math.floor(offset / slabBytes)).toBe(Math.floor((offset + length - 1) / slabBytes))
    }
    expect(sorted(arena.keys())).toEqual(sorted([...stored.keys(), ...pending.map((p) => p.ticket.key)]))
  }
  for (const p of pending) expect(p.ticket.view).toEqual(p.bytes) // pinned: never moved by a compaction
  for (const [k, bytes] of stored) expect(arena.prepareLoad(k)).toEqual(bytes)
}

describe("HostArena properties", () => {
  it("never evicts a pinned chunk, evicts n or nothing, stays within budget, and returns the bytes stored", () => {
    fc.assert(
      fc.property(scenario, ({ budget, slabs, ahead, policy, ops }) => {
        run(budget, Math.ceil(budget / slabs), ahead, evictionPolicies[policy as keyof typeof evictionPolicies], ops)
      }),
      { numRuns: 400 },
    )
  })

  it("compaction keeps every chunk's bytes and moves no pinned chunk", () => {
    const arb = fc.record({
      sizes: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 24 }),
      removed: fc.func(fc.boolean()),
      pinnedKeys: fc.func(fc.integer({ min: 0, max: 5 })),
      want: fc.integer({ min: 1, max: 16 }),
      slabs: fc.integer({ min: 1, max: 3 }),
    })
    let compactions = 0
    fc.assert(
      fc.property(arb, ({ sizes, removed, pinnedKeys, want, slabs }) => {
        const budget = sizes.reduce((a, b) => a + b, 0)
        const slabBytes = Math.max(4, Math.ceil(budget / slabs))
        const arena = new HostArena({ budgetBytes: budget, slabBytes })
        const stored = new Map<string, Uint8Array>()
        sizes.forEach((n, i) => {
          const bytes = pattern(n)
          for (const k of arena.put(`c${i}`, bytes)) stored.delete(k) // slab edges waste a few bytes
          stored.set(`c${i}`, bytes)
        })
        for (const k of [...stored.keys()]) {
          if (removed(k)) {
            arena.remove(k)
            stored.delete(k)
          } else if (pinnedKeys(k) === 0) arena.pin(k)
        }
        const pinnedBefore = arena.layout().filter((e) => e.pins > 0)
        const free = budget - arena.stats().residentBytes
        const size = Math.min(want, Math.max(1, free))
        const before = JSON.stringify(arena.layout())
        try {
          const evicted = arena.put("new", pattern(size))
          for (const k of evicted) stored.delete(k)
        } catch (e) {
          expect((e as HostCacheError).code).toBe("budget_exceeded")
          expect(JSON.stringify(arena.layout())).toBe(before)
        }
        compactions += arena.stats().compactions
        for (const p of pinnedBefore) expect(arena.layout().find((e) => e.key === p.key)).toEqual(p)
        for (const [k, bytes] of stored) {
          expect(arena.prepareLoad(k)).toEqual(bytes)
          arena.completeLoad(k)
        }
      }),
      { numRuns: 400 },
    )
    expect(compactions).toBeGreaterThan(20)
  })

  it("a policy's selection never includes a pinned key and frees enough or is null", () => {
    const viewArb = fc.uniqueArray(
      fc.record({
        key: fc.string({ minLength: 1, maxLength: 3 }),
        length: fc.integer({ min: 1, max: 8 }),
        lastAccess: fc.nat(100),
        accesses: fc.integer({ min: 1, max: 10 }),
        score: fc.double({ min: 0, max: 1, noNaN: true }),
        scoredAt: fc.nat(100),
      }),
      { selector: (e) => e.key, maxLength: 12 },
    )
    fc.assert(
      fc.property(viewArb, fc.integer({ min: 1, max: 40 }), fc.func(fc.boolean()), (view: EntryView[], need, isPinned) => {
        const pinned = new Set(view.filter((e) => isPinned(e.key)).map((e) => e.key))
        const unpinnedBytes = view.filter((e) => !pinned.has(e.key)).reduce((s, e) => s + e.length, 0)
        for (const policy of Object.values(evictionPolicies)) {
          const chosen = policy.select(view, need, pinned)
          if (chosen === null) {
            expect(unpinnedBytes).toBeLessThan(need)
            continue
          }
          expect(chosen.some((k) => pinned.has(k))).toBe(false)
          expect(new Set(chosen).size).toBe(chosen.length)
          const freed = chosen.reduce((s, k) => s + view.find((e) => e.key === k)!.length, 0)
          expect(freed).toBeGreaterThanOrEqual(need)
          // Minimal in its own order: dropping the last key would not free enough.
          expect(freed - view.find((e) => e.key === chosen[chosen.length - 1])!.length).toBeLessThan(need)
        }
      }),
      { numRuns: 300 },
    )
  })
})
