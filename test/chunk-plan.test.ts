// The adaptive chunk planner (kv/chunk-plan.ts): exact cases and fast-check properties of its
// invariants (sizes in bounds and whole blocks, a prefix covered with less than a minimum chunk
// left, hot blocks in minimum chunks, chunks cut short only by a hot block or the end).
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { hotBound, planChunks } from "../kv/chunk-plan.ts"
import { PolicyError, parsePolicy, policyView, ResolvedPolicyFromWire } from "../protocol/policy.ts"
import { Schema } from "effect"

const BS = 16

describe("planChunks", () => {
  it("a desert and uniform attention give maximum chunks; a hot spot a minimum one, the chunk before it cut short", () => {
    const bounds = { minTokens: 16, maxTokens: 128 }
    // 40 blocks: one hot block (index 20) in a desert of near-zero mass.
    const desert = Array.from({ length: 40 }, (_, i) => (i === 20 ? 100 : 0.001))
    expect(planChunks(desert, BS, bounds)).toEqual([128, 128, 64, 16, 128, 128, 48])
    expect(planChunks(Array.from({ length: 10 }, () => 1), BS, bounds)).toEqual([128, 32])
    // Minimum chunks of two blocks: one holding a hot block stays at two.
    expect(planChunks([1, 1, 1, 50, 1, 1, 1, 1], BS, { minTokens: 32, maxTokens: 256 })).toEqual([48, 32, 48])
    // Fewer blocks than a minimum chunk: nothing to cut.
    expect(planChunks([1, 1, 1], BS, { minTokens: 64, maxTokens: 256 })).toEqual([])
  })

  it("refuses bounds that are not block multiples with min <= max", () => {
    expect(() => planChunks([1], BS, { minTokens: 24, maxTokens: 64 })).toThrow(RangeError)
    expect(() => planChunks([1], BS, { minTokens: 64, maxTokens: 32 })).toThrow(RangeError)
  })

  const massArb = fc.array(fc.oneof(fc.constant(0), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1000, noNaN: true })), { maxLength: 300 })
  const boundsArb = fc.tuple(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 0, max: 16 })).map(([a, b]) => ({ minTokens: a * BS, maxTokens: (a + b) * BS }))

  it("sizes are whole blocks within the bounds; they cover a prefix, leaving less than a minimum chunk", () => {
    fc.assert(
      fc.property(massArb, boundsArb, (mass, bounds) => {
        const sizes = planChunks(mass, BS, bounds)
        for (const s of sizes) {
          expect(s % BS).toBe(0)
          expect(s).toBeGreaterThanOrEqual(bounds.minTokens)
          expect(s).toBeLessThanOrEqual(bounds.maxTokens)
        }
        const covered = sizes.reduce((a, s) => a + s, 0) / BS
        expect(covered).toBeLessThanOrEqual(mass.length)
        expect(mass.length - covered).toBeLessThan(bounds.minTokens / BS)
      }),
    )
  })

  it("a chunk holding a hot block is a minimum chunk; a chunk stops growing only at the maximum, the end or a hot block", () => {
    fc.assert(
      fc.property(massArb, boundsArb, (mass, bounds) => {
        const sizes = planChunks(mass, BS, bounds)
        const bound = hotBound(mass)
        let at = 0
        for (const s of sizes) {
          const end = at + s / BS
          const hot = mass.slice(at, end).some((m) => m > bound)
          if (hot) expect(s).toBe(bounds.minTokens)
          else if (s < bounds.maxTokens && end < mass.length) expect(mass[end]).toBeGreaterThan(bound)
          at = end
        }
      }),
    )
  })

  it("blocks marked small (sink, recent window) are in minimum chunks", () => {
    fc.assert(
      fc.property(massArb, boundsArb, fc.integer({ min: 0, max: 10 }), (mass, bounds, edge) => {
        const small = (i: number) => i < edge || i >= mass.length - edge
        const sizes = planChunks(mass, BS, bounds, small)
        let at = 0
        for (const s of sizes) {
          const end = at + s / BS
          for (let i = at; i < end; i++) if (small(i)) expect(s).toBe(bounds.minTokens)
          at = end
        }
      }),
    )
  })
})

describe("chunking.adaptive in the policy document", () => {
  it("takes either bound or none (16..256), is tiered-only, and travels on the wire", () => {
    const p = parsePolicy({ name: "leoam", chunking: { adaptive: {} } })
    expect([p.chunkMinTokens, p.chunkTokens]).toEqual([16, 256])
    expect(parsePolicy({ name: "offload-all", chunking: { adaptive: { max_tokens: 128 } } })).toMatchObject({ chunkMinTokens: 16, chunkTokens: 128 })
    expect(parsePolicy({ name: "leoam", chunking: { adaptive: { min_tokens: 32 } } })).toMatchObject({ chunkMinTokens: 32, chunkTokens: 256 })
    expect(parsePolicy({ name: "leoam", chunking: { fixed: { tokens: 64 } } }).chunkMinTokens).toBeUndefined()
    for (const bad of [
      { name: "leoam", chunking: { adaptive: { min_tokens: 64, max_tokens: 32 } } },
      { name: "leoam", chunking: { adaptive: { min_tokens: 24 } } },
      { name: "quest", chunking: { adaptive: {} } },
      { name: "leoam", chunking: { adaptive: {}, fixed: { tokens: 16 } } },
      { name: "leoam", chunking: { adaptive: { min: 16 } } },
    ]) {
      expect(() => parsePolicy(bad), JSON.stringify(bad)).toThrow(PolicyError)
    }
    const wire = policyView(p)
    expect(wire.chunk_min_tokens).toBe(16)
    expect(Schema.decodeUnknownSync(ResolvedPolicyFromWire)(wire)).toMatchObject({ chunkMinTokens: 16, chunkTokens: 256 })
  })
})
