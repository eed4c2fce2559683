// Host sampling (top-k / top-p): exact choices on tiny distributions.
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { argmaxHost, sampleHost, seededUniform } from "../engine/sampling.ts"

describe("sampleHost", () => {
  const logits = Float32Array.from([Math.log(0.1), Math.log(0.6), Math.log(0.3)])
  it("greedy at temperature 0", () => expect(sampleHost(logits, { temperature: 0 }, 0)).toBe(1))
  it("top-k 1 is the argmax at any temperature", () => expect(sampleHost(logits, { temperature: 5, topK: 1, seed: 3 }, 9)).toBe(1))
  it("top-p 0.5 keeps only the 0.6 token", () => {
    for (let s = 0; s < 50; s++) expect(sampleHost(logits, { temperature: 1, topP: 0.5, seed: s }, s)).toBe(1)
  })
  it("top-p 0.8 never picks the 0.1 token", () => {
    for (let s = 0; s < 200; s++) expect(sampleHost(logits, { temperature: 1, topP: 0.8, seed: s }, s)).not.toBe(0)
  })
  it("frequencies follow the probabilities", () => {
    const counts = [0, 0, 0]
    const n = 6000
    for (let s = 0; s < n; s++) counts[sampleHost(logits, { temperature: 1, seed: 1 }, s)]++
    expect(counts[0] / n).toBeCloseTo(0.1, 1)
    expect(counts[1] / n).toBeCloseTo(0.6, 1)
    expect(counts[2] / n).toBeCloseTo(0.3, 1)
  })
  it("is deterministic in (seed, step) and uniform draws lie in [0, 1)", () =>
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.nat(1e6), (seed, step) => {
        const u = seededUniform(seed, step)
        return u >= 0 && u < 1 && u === seededUniform(seed, step)
      }),
    ))
  it("argmax takes the first of equal maxima", () => expect(argmaxHost(Float32Array.from([1, 3, 3]))).toBe(1))
})
