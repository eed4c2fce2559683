// The pipelined decode step (issue 13 §1) on the test model (lavapipe): with the pipeline on,
// greedy decoding gives the same tokens as with it off at the same policy, and the GPU cache
// sees the same hits and misses (a checked layer that missed is computed again the
// unpipelined way); with a cache that holds every chunk, no layer is rewound; and the
// pipeline is switched on and off live, at the next step.
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import type { GpuModel } from "../engine/model.ts"
import { useBundledModel } from "./support/bundled-model.ts"
import { runTiered, type TieredOptions } from "./support/tiered-run.ts"

const bundled = useBundledModel()

const leoam = (pipeline?: { enabled?: boolean; depth?: number }) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  ...(pipeline ? { pipeline } : {}),
})

const run = (policy: unknown, ids: ReadonlyArray<number>, gpuFraction: number, maxTokens: number, beforeStep?: (model: GpuModel, step: number, options: TieredOptions) => void) =>
  runTiered(bundled, policy, ids, maxTokens, { gpu: gpuFraction, host: 0.5, name: "pipe" }, beforeStep)

describe("pipelined tiered decode step", () => {
  const prompt = () => passKeyPrompt(bundled.tok, 512, passKey(3), 0.4).ids

  it("gives the same tokens and the same GPU cache hits and misses as the unpipelined step, rewinding where a checked layer missed", async () => {
    const ids = prompt()
    // A GPU cache that holds a choice (7 chunks a layer) but not every chunk: layers miss.
    const off = await run(leoam({ enabled: false }), ids, 1.2, 12)
    expect(off.kv.gpu.misses).toBeGreaterThan(0)
    for (const depth of [1, 3]) {
      const on = await run(leoam({ enabled: true, depth }), ids, 1.2, 12)
      expect(on.ids).toEqual(off.ids)
      expect(on.kv.gpu.hits).toBe(off.kv.gpu.hits)
      expect(on.kv.gpu.misses).toBe(off.kv.gpu.misses)
      expect(on.kv.pipeline.depth).toBe(depth)
      expect(on.kv.pipeline.layers_routed).toBeGreaterThan(0)
      // Some checked layers missed and were computed again.
      expect(on.kv.pipeline.rewinds).toBeGreaterThan(0)
      expect(on.kv.pipeline.layers_rewound).toBeGreaterThanOrEqual(on.kv.pipeline.rewinds)
    }
    expect(off.kv.pipeline.layers_routed).toBe(0)
  }, 600_000)

  it("rewinds nothing when the GPU cache holds every chunk, and switches on and off live", async () => {
    const ids = prompt()
    const off = await run(leoam({ enabled: false }), ids, 3, 16)
    const swaps: boolean[] = []
    let routedWhileOff = -1
    const on = await run(leoam({ enabled: true }), ids, 3, 16, (model, step, options) => {
      if (step === 6) swaps.push(model.swapKvPolicy(options(leoam({ enabled: false }))))
      if (step === 8) routedWhileOff = model.tierStats()!.pipeline.layers_routed
      if (step === 10) {
        expect(model.tierStats()!.pipeline.layers_routed).toBe(routedWhileOff)
        swaps.push(model.swapKvPolicy(options(leoam({ enabled: true, depth: 4 }))))
      }
    })
    expect(swaps).toEqual([true, true])
    expect(on.ids).toEqual(off.ids)
    expect(off.kv.gpu.misses).toBe(0)
    expect(on.kv.pipeline.rewinds).toBe(0)
    expect(on.kv.pipeline.depth).toBe(4)
    expect(on.kv.pipeline.layers_routed).toBeGreaterThan(routedWhileOff)
    expect(routedWhileOff).toBeGreaterThan(0)
  }, 600_000)
})
