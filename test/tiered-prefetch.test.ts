// The pipelined step's combine and prefetch (issue 13 §1) on the test model (lavapipe): a layer
// expected to miss attends its resident chunks at once and its misses once loaded, merged by
// the combine, with no rewind; prefetch loads forecast chunks (next layer's from this layer's
// query, the first layer's from the last step's choice) into the GPU cache. Neither changes
// what is attended: greedy tokens are those of the unpipelined step at the same policy, and the
// pass key is still found. Prefetch is switched on live, at the next step.
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import type { GpuModel } from "../engine/model.ts"
import { PrefetchGate } from "../engine/kv/tiered/prefetch-gate.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { useBundledModel } from "./support/bundled-model.ts"
import { runTiered, type TieredOptions } from "./support/tiered-run.ts"

const bundled = useBundledModel()

const leoam = (extra: object = {}) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  ...extra,
})

// A GPU cache that holds a choice (7 chunks a layer) but not every chunk, a host arena of half the KV: layers miss, some reads go to disk.
const run = (policy: unknown, ids: ReadonlyArray<number>, maxTokens: number, beforeStep?: (model: GpuModel, step: number, options: TieredOptions) => void) =>
  runTiered(bundled, policy, ids, maxTokens, { gpu: 1.2, host: 0.5, name: "prefetch" }, beforeStep)

describe("pipelined step: combine and prefetch", () => {
  const p = () => passKeyPrompt(bundled.tok, 512, passKey(3), 0.4)

  it("completes layers that miss by a combine and prefetches forecast chunks, with the tokens of the unpipelined step", async () => {
    const prompt = p()
    const off = await run(leoam({ pipeline: { enabled: false } }), prompt.ids, 10)
    expect(bundled.tok.decode(off.ids)).toContain(prompt.key)
    expect(off.kv.gpu.misses).toBeGreaterThan(0)
    expect(off.kv.prefetch?.forecasts).toBe(0)

    // Combine without run-ahead misses to rewind: depth 1, prefetch off.
    const combined = await run(leoam({ pipeline: { enabled: true, depth: 1 } }), prompt.ids, 10)
    expect(combined.ids).toEqual(off.ids)
    // Prefetch off: the same residency, so the same hits and misses as off.
    expect(combined.kv.gpu.hits).toBe(off.kv.gpu.hits)
    expect(combined.kv.gpu.misses).toBe(off.kv.gpu.misses)
    expect(combined.kv.pipeline.layers_combined).toBeGreaterThan(0)

    // Everything together: pipeline with combine, next-layer (from the layer's choice) and next-step prefetch.
    const all = await run(leoam({ pipeline: { enabled: true, depth: 2 }, prefetch: { layers: 1, steps: true } }), prompt.ids, 10)
    expect(all.ids).toEqual(off.ids)
    const f = all.kv.prefetch!
    expect(f.layers).toBe(1)
    expect(f.from).toBe("choice")
    expect(f.steps).toBe(true)
    expect(f.forecasts).toBeGreaterThan(0)
    expect(f.visits).toBeGreaterThan(0)
    expect(f.chunks).toBeGreaterThan(0)
    expect(f.hits).toBeGreaterThan(0)
    expect(f.failed).toBe(0)
    // Every chunk it loaded was either chosen at its visit or wasted (16-token fp16 chunks, all the same size).
    const chunkBytes = f.bytes / f.chunks
    expect(f.wasted_bytes).toBeLessThanOrEqual(f.bytes - f.hits * chunkBytes + 1e-6)
    // A chunk loaded ahead is a miss less at its visit: fewer misses in all than without prefetch.
    expect(all.kv.gpu.misses).toBeLessThan(off.kv.gpu.misses)
  }, 600_000)

  it("switches prefetch on live, at the next step, without changing the tokens", async () => {
    const prompt = p()
    // Unpipelined on purpose (pipeline enabled false): the forecast's timing below is the unpipelined step's.
    const unpiped = { pipeline: { enabled: false } }
    const off = await run(leoam(unpiped), prompt.ids, 8)
    let before: number | undefined
    const swaps: boolean[] = []
    const on = await run(leoam(unpiped), prompt.ids, 8, (model, step, options) => {
      if (step !== 3) return
      before = model.tierStats()!.prefetch!.forecasts
      swaps.push(model.swapKvPolicy(options(leoam({ ...unpiped, prefetch: { layers: 2, from: "query", adaptive: true, probe_steps: 2 } }))))
    })
    expect(swaps).toEqual([true])
    expect(on.ids).toEqual(off.ids)
    expect(before).toBe(0)
    const f = on.kv.prefetch!
    expect([f.layers, f.from, f.adaptive]).toEqual([2, "query", true])
    // Unpipelined, a query forecast comes back with its layer's choice, in time for the layer two on.
    expect(f.forecasts).toBeGreaterThan(0)
    expect(f.late).toBe(0)
    expect(f.visits).toBeGreaterThan(0)
  }, 600_000)
})

describe("prefetch and combine in the policy document", () => {
  it("resolves defaults, takes leoam only, and bounds the layer distance", () => {
    // leoam's defaults: unpipelined, fp16, no prefetch; enabled (or a depth) turns the pipeline on; the other policies have none.
    expect(parsePolicy("leoam")).toMatchObject({ pipelineDepth: 0, pipelineCombine: true, compression: 16, prefetchLayers: 0, prefetchFrom: "choice", prefetchSteps: false })
    expect(parsePolicy({ name: "leoam", pipeline: { enabled: true } })).toMatchObject({ pipelineDepth: 2, pipelineCombine: true })
    expect(parsePolicy({ name: "leoam", pipeline: { enabled: false } })).toMatchObject({ pipelineDepth: 0 })
    expect(parsePolicy({ name: "leoam", pipeline: { depth: 3 } })).toMatchObject({ pipelineDepth: 3 })
    expect(parsePolicy({ name: "leoam", pipeline: { enabled: true, combine: false } })).toMatchObject({ pipelineDepth: 2, pipelineCombine: false })
    for (const name of ["full", "offload-all", "h2o", "quest"]) expect(parsePolicy(name).pipelineDepth).toBe(0)
    expect(() => parsePolicy({ name: "leoam", pipeline: { enabled: false, depth: 2 } })).toThrow(/pipeline.depth with pipeline.enabled false/)
    expect(parsePolicy({ name: "leoam", pipeline: { enabled: true, combine: false }, prefetch: { layers: 1, steps: true } })).toMatchObject({
      pipelineDepth: 2,
      pipelineCombine: false,
      prefetchLayers: 1,
      prefetchFrom: "choice",
      prefetchSteps: true,
    })
    expect(() => parsePolicy({ name: "quest", prefetch: { layers: 1 } })).toThrow(/prefetch needs leoam/)
    expect(() => parsePolicy({ name: "leoam", prefetch: { layers: 5 } })).toThrow(/invalid KV policy/)
    expect(() => parsePolicy({ name: "leoam", prefetch: { from: "keys" } })).toThrow(/invalid KV policy/)
    expect(parsePolicy("leoam")).toMatchObject({ prefetchAdaptive: false, prefetchProbeSteps: 16 })
    expect(parsePolicy({ name: "leoam", prefetch: { layers: 1, adaptive: true, probe_steps: 3 } })).toMatchObject({ prefetchAdaptive: true, prefetchProbeSteps: 3 })
    expect(() => parsePolicy({ name: "leoam", prefetch: { probe_steps: 0 } })).toThrow(/invalid KV policy/)
  })
})

describe("adaptive prefetch's gate", () => {
  // 100 chunks loaded a step at 0.05 ms each (5 ms); the miss path 50 misses in 2.5 ms (0.05 ms a chunk).
  const step = (hits: number) => ({ chunks: 100, hits, ms: 5, misses: 50, missMs: 2.5 })

  it("goes on while the misses saved pay for the loads, sits out probe_steps steps when not, then probes", () => {
    const g = new PrefetchGate()
    expect(g.next(undefined, 3)).toBe(true) // nothing judged yet
    expect(g.next(step(100), 3)).toBe(true) // every load chosen: 5 ms saved for 5 spent
    // 8 chosen in 100 (random KV at 8B 128K): 108 hits * 0.05 ms < 10 ms spent over the window: pause.
    expect(g.next(step(8), 3)).toBe(false)
    expect(g.last?.precision).toBeCloseTo(108 / 200)
    expect([g.pauses, g.pausedSteps, g.probes]).toEqual([1, 1, 0])
    expect(g.next(undefined, 3)).toBe(false)
    expect(g.next(undefined, 3)).toBe(false)
    expect(g.next(undefined, 3)).toBe(true) // the probe, after 3 steps sat out
    expect([g.pauses, g.pausedSteps, g.probes]).toEqual([1, 3, 1])
    // The probe alone decides: it paid, so prefetch goes on.
    expect(g.next(step(100), 3)).toBe(true)
    expect(g.next(step(100), 3)).toBe(true)
    // Where a miss costs 10x a load, 13 chosen in 100 pay.
    const dear = new PrefetchGate()
    expect(dear.next({ chunks: 100, hits: 13, ms: 5, misses: 50, missMs: 25 }, 3)).toBe(true)
    expect(dear.next({ chunks: 100, hits: 5, ms: 5, misses: 50, missMs: 25 }, 3)).toBe(false)
  })

  it("decides nothing on too few loads, and judges a miss at a load's cost where none was left", () => {
    const g = new PrefetchGate()
    expect(g.next({ chunks: 3, hits: 0, ms: 1, misses: 9, missMs: 1 }, 2)).toBe(true)
    expect(g.last).toBeUndefined()
    const h = new PrefetchGate()
    expect(h.next({ chunks: 40, hits: 10, ms: 4, misses: 0, missMs: 0 }, 2)).toBe(false)
    expect(h.last).toEqual({ precision: 0.25, loadMs: 0.1, missMs: 0.1 })
  })
})
