// kv/plan.ts and kv/gpu-slots.ts without a GPU: exact eviction orders on tiny caches, and
// fast-check properties (pinned chunks are never evicted, windows fit the slots, every
// chosen chunk is attended once, plans change nothing, applying a plan reproduces the
// one-chunk-at-a-time algorithm the tiered cache used before plans).
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { type EvictionPolicy, importance, lfu, lru } from "../kv/eviction.ts"
import { GpuSlots, pinKey } from "../kv/gpu-slots.ts"
import { applyToSlots, type DecodePlan, planDecode, planDecodeSimulated, planPrefill, type PlanPolicy, scoreWindow } from "../kv/plan.ts"

const policies: Record<string, EvictionPolicy> = { lru, lfu, importance }

/** The cache's state as a policy and a later plan see it (list order aside). */
const snapshot = (c: GpuSlots) => ({
  free: [...c.freeSlots()],
  entries: [...c.entries()].map(({ chunk, slot, lastAccess, accesses, score, scoredAt }) => ({ chunk, slot, lastAccess, accesses, score, scoredAt })).sort((a, b) => a.chunk - b.chunk),
})

/** Applies every window of a decode plan as the tiered cache does (bookkeeping only). */
const applyDecode = (c: GpuSlots, plan: DecodePlan): void => {
  for (const w of plan.windows) {
    applyToSlots(c, w, plan.tick)
    if (plan.score) scoreWindow(c, w, plan.tick)
  }
  if (plan.clearAfter) c.clear()
}

/** The tiered cache's decode loop before plans (engine/tiered.ts attendLayer), bookkeeping only. */
const legacyDecode = (c: GpuSlots, chosen: ReadonlyArray<number>, p: PlanPolicy, tick: number) => {
  const hits: number[] = []
  const misses: number[] = []
  for (const ch of chosen) {
    if (c.get(ch)) {
      c.touch(ch, tick)
      hits.push(ch)
    } else misses.push(ch)
  }
  const pinned = new Set(hits.map(pinKey))
  let window = hits.map((ch) => ({ chunk: ch, slot: c.get(ch)!.slot }))
  const windows: Array<typeof window> = []
  let i = 0
  for (;;) {
    c.reserve(misses.length - i, p.eviction, pinned, [])
    while (i < misses.length) {
      const slot = c.take(misses[i], p.eviction, pinned, tick)
      if (slot === undefined) break
      pinned.add(pinKey(misses[i]))
      window.push({ chunk: misses[i], slot })
      i++
    }
    if (p.mode === "leoam") for (const w of window) c.chosen(w.chunk, tick)
    windows.push(window)
    if (i >= misses.length) break
    for (const w of window) pinned.delete(pinKey(w.chunk))
    window = []
  }
  if (p.mode === "offload-all") c.clear()
  return windows
}

/** The prefill loop before plans (engine/tiered.ts prefillLayer), bookkeeping only. */
const legacyPrefill = (c: GpuSlots, n: number, p: PlanPolicy, tick: number) => {
  const windows: Array<Array<{ chunk: number; slot: number }>> = []
  const pinned = new Set<string>()
  let ch = 0
  while (ch <= n) {
    const window: Array<{ chunk: number; slot: number }> = []
    while (ch < n) {
      let slot = c.get(ch)?.slot
      if (slot !== undefined) c.touch(ch, tick)
      else {
        slot = c.take(ch, p.eviction, pinned, tick)
        if (slot === undefined) break
      }
      pinned.add(pinKey(ch))
      window.push({ chunk: ch, slot })
      ch++
    }
    windows.push(window)
    if (ch === n) break
    pinned.clear()
  }
  if (p.mode === "offload-all") c.clear()
  return windows
}

/** A cache built by a history of seals (takes), layer visits (touch + importance) and truncations (drops). */
const arbCache = fc
  .record({
    slots: fc.integer({ min: 1, max: 6 }),
    ops: fc.array(fc.record({ kind: fc.constantFrom("take", "visit", "drop"), chunk: fc.integer({ min: 0, max: 11 }), policy: fc.constantFrom("lru", "lfu", "importance") }), { maxLength: 40 }),
  })
  .map(({ slots, ops }) => {
    const c = new GpuSlots(slots, 1)
    let tick = 0
    for (const op of ops) {
      tick++
      const e = c.get(op.chunk)
      if (op.kind === "take" && !e) c.take(op.chunk, policies[op.policy], new Set(), tick)
      else if (op.kind === "visit" && e) {
        c.touch(op.chunk, tick)
        c.chosen(op.chunk, tick)
      } else if (op.kind === "drop" && e) c.drop(op.chunk)
    }
    return { cache: c, tick }
  })

const arbPolicy = fc.record({ eviction: fc.constantFrom(lru, lfu, importance), mode: fc.constantFrom("leoam" as const, "offload-all" as const) })
const arbChosen = fc.uniqueArray(fc.integer({ min: 0, max: 15 }), { maxLength: 14 })

describe("decode plans", () => {
  it("evict exactly as the one-chunk-at-a-time loop did, and applying them leaves the cache where it left it", () => {
    fc.assert(
      fc.property(arbCache, arbChosen, arbPolicy, ({ cache, tick }, chosen, policy) => {
        const before = snapshot(cache)
        const version = cache.version
        const plan = planDecode(cache, chosen, policy, tick + 1)
        expect(snapshot(cache)).toEqual(before) // planning changes nothing
        expect(cache.version).toBe(version)
        const legacy = cache.clone()
        const windows = legacyDecode(legacy, chosen, policy, tick + 1)
        expect(plan.windows.map((w) => w.attend)).toEqual(windows)
        applyDecode(cache, plan)
        expect(snapshot(cache)).toEqual(snapshot(legacy))
      }),
      { numRuns: 400 },
    )
  })

  it("are the simulated plans exactly (evictions in order, slots, versions), planned without simulating where one window holds the misses", () => {
    // Caches larger than arbCache's, so that one-window plans with evictions are common.
    const arbLarge = fc
      .record({ slots: fc.integer({ min: 1, max: 24 }), fill: fc.array(fc.record({ chunk: fc.integer({ min: 0, max: 47 }), visits: fc.integer({ min: 0, max: 3 }) }), { maxLength: 60 }) })
      .map(({ slots, fill }) => {
        const c = new GpuSlots(slots, 1)
        let tick = 0
        for (const f of fill) {
          tick++
          if (!c.get(f.chunk)) c.take(f.chunk, lru, new Set(), tick)
          for (let v = 0; v < f.visits; v++) (c.touch(f.chunk, tick), c.chosen(f.chunk, tick))
        }
        return { cache: c, tick }
      })
    const arbWide = fc.uniqueArray(fc.integer({ min: 0, max: 55 }), { maxLength: 30 })
    for (const [caches, chosens] of [[arbCache, arbChosen], [arbLarge, arbWide]] as const) {
      fc.assert(
        fc.property(caches, chosens, arbPolicy, ({ cache, tick }, chosen, policy) => {
          const before = snapshot(cache)
          expect(planDecode(cache, chosen, policy, tick + 1)).toEqual(planDecodeSimulated(cache, chosen, policy, tick + 1))
          expect(snapshot(cache)).toEqual(before)
        }),
        { numRuns: 400 },
      )
    }
  })

  it("never evict a pinned chunk, fit each window in the slots, and attend every chosen chunk once", () => {
    fc.assert(
      fc.property(arbCache, arbChosen, arbPolicy, ({ cache, tick }, chosen, policy) => {
        const plan = planDecode(cache, chosen, policy, tick + 1)
        const resident = new Set(cache.entries().map((e) => e.chunk))
        expect(plan.hits).toEqual(chosen.filter((c) => resident.has(c)))
        for (const [i, w] of plan.windows.entries()) {
          const pinned = new Set(i === 0 ? plan.hits : [])
          for (const ch of w.evict) expect(pinned.has(ch)).toBe(false)
          for (const l of w.loads) expect(w.evict).not.toContain(l.chunk)
          expect(w.attend.length).toBeLessThanOrEqual(cache.slots)
          expect(new Set(w.attend.map((a) => a.slot)).size).toBe(w.attend.length)
          expect(w.last).toBe(i === plan.windows.length - 1)
        }
        const attended = plan.windows.flatMap((w) => w.attend.map((a) => a.chunk))
        expect([...attended].sort((a, b) => a - b)).toEqual([...chosen].sort((a, b) => a - b))
      }),
      { numRuns: 400 },
    )
  })

  it("a plan applied to a cache that changed since is refused", () => {
    const c = new GpuSlots(2, 1)
    c.take(0, lru, new Set(), 1)
    const plan = planDecode(c, [0, 1], { eviction: lru, mode: "leoam" }, 2)
    c.take(5, lru, new Set(), 2)
    expect(() => applyToSlots(c, plan.windows[0], plan.tick)).toThrow(RangeError)
  })
})

describe("GpuSlots.simulate", () => {
  it("undoes every change, the entries' order and the version included, also when the simulation throws", () => {
    const arbOps = fc.array(fc.record({ kind: fc.constantFrom("take", "touch", "chosen", "drop", "reserve"), chunk: fc.integer({ min: 0, max: 15 }), n: fc.integer({ min: 0, max: 4 }) }), { maxLength: 30 })
    fc.assert(
      fc.property(arbCache, arbOps, fc.boolean(), ({ cache, tick }, ops, fail) => {
        const exact = (c: GpuSlots) => ({ version: c.version, free: [...c.freeSlots()], entries: c.entries().map((e) => ({ ...e })) })
        const before = exact(cache)
        const run = () =>
          cache.simulate((sim) => {
            for (const op of ops) {
              const e = sim.get(op.chunk)
              if (op.kind === "take" && !e) sim.take(op.chunk, lru, new Set(), tick + 1)
              else if (op.kind === "touch" && e) sim.touch(op.chunk, tick + 1)
              else if (op.kind === "chosen" && e) sim.chosen(op.chunk, tick + 1)
              else if (op.kind === "drop" && e) sim.drop(op.chunk)
              else if (op.kind === "reserve") sim.reserve(op.n, lfu, new Set(), [])
            }
            if (fail) throw new Error("planning failed")
          })
        if (fail) expect(run).toThrow("planning failed")
        else run()
        expect(exact(cache)).toEqual(before)
        expect(cache.entries().every((e, i) => e.index === i && cache.get(e.chunk) === e)).toBe(true)
      }),
      { numRuns: 400 },
    )
  })
})

describe("prefill plans", () => {
  it("window consecutive chunks exactly as the one-chunk-at-a-time loop did, token ranges covering [0, tokens)", () => {
    fc.assert(
      fc.property(arbCache, fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 7 }), arbPolicy, ({ cache, tick }, n, tail, policy) => {
        const table = { starts: Array.from({ length: n }, (_, i) => i * 8), sealed: n * 8, tokens: n * 8 + tail }
        const before = snapshot(cache)
        const plan = planPrefill(cache, table, policy, tick + 1)
        expect(snapshot(cache)).toEqual(before)
        const legacy = cache.clone()
        expect(plan.windows.map((w) => w.attend)).toEqual(legacyPrefill(legacy, n, policy, tick + 1))
        for (const w of plan.windows) applyToSlots(cache, w, plan.tick)
        if (plan.clearAfter) cache.clear()
        expect(snapshot(cache)).toEqual(snapshot(legacy))
        let k = 0
        for (const [i, w] of plan.windows.entries()) {
          expect(w.k0).toBe(k)
          expect(w.attend.map((a) => a.chunk)).toEqual(Array.from({ length: w.to - w.from }, (_, j) => w.from + j))
          expect(w.attend.length).toBeLessThanOrEqual(cache.slots)
          for (const ch of w.touch) expect(w.evict).not.toContain(ch)
          expect(w.last).toBe(i === plan.windows.length - 1)
          k = w.k1
        }
        expect(k).toBe(table.tokens)
      }),
      { numRuns: 400 },
    )
  })
})

describe("eviction policies: evict n or nothing", () => {
  it("return unpinned keys freeing the bytes asked for with none to spare, or null when the unpinned cannot", () => {
    const arbView = fc.uniqueArray(
      fc.record({ key: fc.integer({ min: 0, max: 30 }).map(String), lastAccess: fc.integer({ min: 0, max: 50 }), accesses: fc.integer({ min: 1, max: 5 }), score: fc.double({ min: 0, max: 8, noNaN: true }), scoredAt: fc.integer({ min: 0, max: 50 }) }),
      { selector: (e) => e.key, maxLength: 12 },
    )
    fc.assert(
      fc.property(arbView, fc.integer({ min: 0, max: 14 }), fc.array(fc.integer({ min: 0, max: 30 }).map(String)), fc.constantFrom(lru, lfu, importance), (raw, need, pins, policy) => {
        const view = raw.map((e) => ({ ...e, length: 1 }))
        const pinned = new Set(pins)
        const unpinned = view.filter((e) => !pinned.has(e.key)).length
        const out = policy.select(view, need, pinned)
        if (unpinned < need) expect(out).toBeNull()
        else {
          expect(out).not.toBeNull()
          expect(out!.length).toBe(need)
          expect(new Set(out).size).toBe(need)
          for (const k of out!) expect(pinned.has(k)).toBe(false)
        }
      }),
      { numRuns: 300 },
    )
  })

  it("take entries in the order of a full sort (primary, then recency, then key), few of many or most of them", () => {
    const primaries = { lru: (e: { lastAccess: number }) => e.lastAccess, lfu: (e: { accesses: number }) => e.accesses, importance: (e: { score: number; scoredAt: number }) => (e.score > 0 ? Math.log2(e.score) : -Infinity) + e.scoredAt / 1024 }
    const arbView = fc.uniqueArray(
      fc.record({ key: fc.integer({ min: 0, max: 400 }).map(String), length: fc.integer({ min: 1, max: 9 }), lastAccess: fc.integer({ min: 0, max: 6 }), accesses: fc.integer({ min: 1, max: 3 }), score: fc.integer({ min: 0, max: 3 }), scoredAt: fc.integer({ min: 0, max: 6 }) }),
      { selector: (e) => e.key, maxLength: 200 },
    )
    fc.assert(
      fc.property(arbView, fc.integer({ min: 0, max: 300 }), fc.array(fc.integer({ min: 0, max: 400 }).map(String), { maxLength: 60 }), fc.constantFrom("lru", "lfu", "importance") as fc.Arbitrary<keyof typeof primaries>, (view, need, pins, name) => {
        const pinned = new Set(pins)
        const primary = primaries[name] as (e: (typeof view)[number]) => number
        const sorted = view.filter((e) => !pinned.has(e.key)).sort((a, b) => primary(a) - primary(b) || a.lastAccess - b.lastAccess || (a.key < b.key ? -1 : 1))
        const want: string[] = []
        let freed = 0
        for (const e of sorted) if (freed < need) (want.push(e.key), (freed += e.length))
        expect(policies[name].select(view, need, pinned)).toEqual(freed < need ? null : want)
      }),
      { numRuns: 400 },
    )
  })
})

describe("exact eviction orders (one chunk of one byte per slot)", () => {
  /** Three slots holding chunks 0, 1, 2: sealed at ticks 1-3, then visits that set recency, frequency and importance apart. */
  const cache = () => {
    const c = new GpuSlots(3, 1)
    for (const ch of [0, 1, 2]) c.take(ch, lru, new Set(), ch + 1)
    // Tick 4 visits chunk 0 (recent, 2 accesses, importance 1); tick 5 visits chunk 1 twice
    // over (3 accesses, importance ~2); chunk 2 keeps 1 access and no importance.
    c.touch(0, 4)
    c.chosen(0, 4)
    c.touch(1, 5)
    c.chosen(1, 5)
    c.touch(1, 5)
    c.chosen(1, 5)
    return c
  }

  const evictions = (eviction: EvictionPolicy, chosen: number[]) =>
    planDecode(cache(), chosen, { eviction, mode: "leoam" }, 6).windows.map((w) => ({ evict: w.evict, loads: w.loads }))

  it("lru evicts the least recently accessed first", () => {
    // Recency: 2 (tick 3), 0 (tick 4), 1 (tick 5).
    // Chunks 0, 1, 2 hold slots 0, 1, 2; evicted slots are taken last-freed first.
    expect(evictions(lru, [7, 8])).toEqual([{ evict: [2, 0], loads: [{ chunk: 7, slot: 0 }, { chunk: 8, slot: 2 }] }])
  })

  it("lfu evicts the least often accessed first", () => {
    // Accesses: 2 once, 0 twice, 1 three times.
    expect(evictions(lfu, [7, 8])).toEqual([{ evict: [2, 0], loads: [{ chunk: 7, slot: 0 }, { chunk: 8, slot: 2 }] }])
    // Chunk 2 a hit: pinned for the window, so 0 and then 1 go.
    expect(evictions(lfu, [2, 7, 8])).toEqual([{ evict: [0, 1], loads: [{ chunk: 7, slot: 1 }, { chunk: 8, slot: 0 }] }])
  })

  it("importance evicts the lowest decayed score first, and a second window reuses the first one's slots", () => {
    // Scores: 2 none, 0 one choice at tick 4, 1 two choices at tick 5.
    expect(evictions(importance, [7])).toEqual([{ evict: [2], loads: [{ chunk: 7, slot: 2 }] }])
    // Chunk 1 a hit: window 1 holds it and 7, 8 in slots 0 and 2. Window 2 evicts among
    // them by the importance window 1 counted (1 at ~3; 7 and 8 at 1 with equal recency,
    // so by key): 7 goes and 9 takes its slot.
    expect(evictions(importance, [1, 7, 8, 9])).toEqual([
      { evict: [2, 0], loads: [{ chunk: 7, slot: 0 }, { chunk: 8, slot: 2 }] },
      { evict: [7], loads: [{ chunk: 9, slot: 0 }] },
    ])
  })

  it("offload-all plans clear the cache after the layer, and prefill windows stop where the slots run out", () => {
    const c = new GpuSlots(2, 1)
    const plan = planPrefill(c, { starts: [0, 4, 8, 12, 16], sealed: 20, tokens: 22 }, { eviction: lru, mode: "offload-all" }, 1)
    expect(plan.windows.map((w) => [w.from, w.to, w.k0, w.k1, w.evict, w.loads.map((l) => l.slot)])).toEqual([
      [0, 2, 0, 8, [], [0, 1]],
      [2, 4, 8, 16, [0, 1], [0, 1]],
      [4, 5, 16, 22, [2], [0]],
    ])
    expect(plan.clearAfter).toBe(true)
  })
})
