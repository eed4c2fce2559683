// How the tiered cache spends a GPU budget (tierLayout, pure): for any shape and budget,
// an accepted layout fits the budget and holds the sink, recent and one chosen chunk
// besides a tail of at least one chunk; a refused budget names the least one, which is
// accepted while one byte less is not.
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { type TierLayoutInput, tierLayout } from "../engine/kv/tiered/index.ts"

const input = fc
  .record({
    layers: fc.integer({ min: 1, max: 80 }),
    slotKiB: fc.integer({ min: 1, max: 4096 }),
    slackBlocks: fc.integer({ min: 0, max: 4 }),
    minimumSlots: fc.integer({ min: 1, max: 40 }),
    wantedPrefillChunks: fc.integer({ min: 1, max: 64 }),
    maxChunks: fc.integer({ min: 1, max: 1 << 16 }),
    // Small, medium and large budgets, so that refusals and every staging size come up.
    budgetBytes: fc.oneof(fc.integer({ min: 0, max: 2 ** 24 }), fc.integer({ min: 0, max: 2 ** 32 }), fc.integer({ min: 0, max: 2 ** 40 })),
  })
  .map(
    (r): TierLayoutInput => ({
      layers: r.layers,
      slotBytes: r.slotKiB * 1024,
      tailSlackBytes: (r.slackBlocks * r.slotKiB * 1024) / 2,
      sealBytes: r.slotKiB * 1024 + 512,
      scratchBytes: (r.slotKiB * 1024) / 2,
      minimumSlots: r.minimumSlots,
      wantedPrefillChunks: r.wantedPrefillChunks,
      maxChunks: Math.max(r.maxChunks, r.minimumSlots),
      budgetBytes: r.budgetBytes,
    }),
  )

describe("tierLayout", () => {
  it("an accepted layout fits the budget and holds tail, sink, recent and one chosen chunk per layer", () => {
    fc.assert(
      fc.property(input, (i) => {
        const layout = tierLayout(i)
        if (typeof layout === "number") return
        expect(layout.bytes).toBeLessThanOrEqual(i.budgetBytes)
        expect(layout.tailChunks).toBeGreaterThanOrEqual(1)
        expect(layout.tailChunks).toBeLessThanOrEqual(Math.max(1, i.wantedPrefillChunks))
        expect(layout.cacheSlots).toBeGreaterThanOrEqual(i.minimumSlots)
        expect(layout.cacheSlots).toBeLessThanOrEqual(i.maxChunks)
        expect(layout.stagingSlotBytes).toBeGreaterThanOrEqual(i.sealBytes)
      }),
      { numRuns: 2000 },
    )
  })

  it("a refused budget names the least budget: accepted, and one byte less refused", () => {
    fc.assert(
      fc.property(input, (i) => {
        const least = tierLayout(i)
        if (typeof least !== "number") return
        expect(least).toBeGreaterThan(i.budgetBytes)
        expect(typeof tierLayout({ ...i, budgetBytes: least })).toBe("object")
        expect(typeof tierLayout({ ...i, budgetBytes: least - 1 })).toBe("number")
      }),
      { numRuns: 2000 },
    )
  })

  it("a budget past the least one is accepted even where its own staging would not fit (found by the property above)", () => {
    const i = { layers: 68, slotBytes: 3873792, tailSlackBytes: 3873792, sealBytes: 3874304, scratchBytes: 1936896, minimumSlots: 5, wantedPrefillChunks: 1, maxChunks: 5, budgetBytes: 2 ** 31 }
    const layout = tierLayout(i)
    expect(typeof layout).toBe("object")
    expect((layout as Exclude<typeof layout, number>).bytes).toBeLessThanOrEqual(i.budgetBytes)
  })

  it("the bundled model's 2K request: the least budget with the leoam defaults is 778 KiB", () => {
    const blockBytes = 2 * 16 * 64 * 2 // KV heads x block tokens x head dim x f16
    const slot = 2 * 2 * blockBytes // K and V of a 32-token chunk
    const least = tierLayout({ layers: 8, slotBytes: slot, tailSlackBytes: 2 * blockBytes, sealBytes: slot + 2 * 2 * 32 * 4, scratchBytes: 2 * blockBytes, minimumSlots: 4, wantedPrefillChunks: 16, maxChunks: 67, budgetBytes: 0 })
    expect(least).toBe(796_672)
  })
})
