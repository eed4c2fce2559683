// selectTopK: exact choices on small cases, and its invariants for any input (fast-check).
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { type ChunkView, selectTopK } from "../engine/selection.ts"

const fixed = (scores: number[], size = 16): ChunkView[] => scores.map((score, i) => ({ start: i * size, tokens: size, score }))

describe("selectTopK", () => {
  it("keeps sink and recent chunks, then the best scores within the budget", () => {
    const chunks = fixed([0, 5, 1, 9, 2, 0])
    const s = selectTopK(chunks, { budgetTokens: 64, sinkTokens: 16, recentTokens: 16 })
    expect(s.chunks).toEqual([0, 1, 3, 5])
    expect(s.tokens).toBe(64)
    expect(s.overBudget).toBe(false)
  })
  it("a fraction of the context as the budget", () => {
    const s = selectTopK(fixed([0, 5, 1, 9, 2, 0, 7, 3]), { budgetFraction: 0.5, sinkTokens: 0, recentTokens: 0 })
    expect(s.chunks).toEqual([1, 3, 6, 7]) // scores 5, 9, 7, 3: the four best of eight
  })
  it("keeps sink and recent even past the budget, and says so", () => {
    const s = selectTopK(fixed([1, 2, 3, 4]), { budgetTokens: 16, sinkTokens: 32, recentTokens: 16 })
    expect(s.chunks).toEqual([0, 1, 3])
    expect(s.overBudget).toBe(true)
  })
  it("invariants: sink/recent always in, budget kept unless forced over, nothing left out that still fits", () =>
    fc.assert(
      fc.property(
        fc.array(fc.record({ tokens: fc.integer({ min: 1, max: 64 }), score: fc.double({ min: -100, max: 100, noNaN: true }) }), { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 0, max: 2000 }),
        fc.integer({ min: 0, max: 128 }),
        fc.integer({ min: 0, max: 128 }),
        (raw, budget, sinkTokens, recentTokens) => {
          let start = 0
          const chunks = raw.map((c) => {
            const v = { start, tokens: c.tokens, score: c.score }
            start += c.tokens
            return v
          })
          const s = selectTopK(chunks, { budgetTokens: budget, sinkTokens, recentTokens })
          const picked = new Set(s.chunks)
          const forced = chunks.map((c, i) => c.start < sinkTokens || c.start + c.tokens > start - recentTokens ? i : -1).filter((i) => i >= 0)
          for (const i of forced) if (!picked.has(i)) return false
          const forcedTokens = forced.reduce((n, i) => n + chunks[i].tokens, 0)
          if (forcedTokens <= budget && s.tokens > budget) return false
          if (s.tokens !== s.chunks.reduce((n, i) => n + chunks[i].tokens, 0)) return false
          // The budget is filled: no chunk left out would still fit.
          for (let i = 0; i < chunks.length; i++) {
            if (picked.has(i) || s.tokens + chunks[i].tokens > budget) continue
            return false
          }
          return [...s.chunks].every((v, k, a) => k === 0 || a[k - 1] < v)
        },
      ),
    ))
})
