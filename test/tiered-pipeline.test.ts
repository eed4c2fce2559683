// The pipelined decode step (issue 13 §1) on the test model (lavapipe): with the pipeline on,
// greedy decoding gives the same tokens as with it off at the same policy, and the GPU cache
// sees the same hits and misses (a checked layer that missed is computed again the
// unpipelined way); with a cache that holds every chunk, no layer is rewound; and the
// pipeline is switched on and off live, at the next step.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import type { GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { useBundledModel } from "./support/bundled-model.ts"

const bundled = useBundledModel()

const leoam = (pipeline?: { enabled?: boolean; depth?: number }) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  ...(pipeline ? { pipeline } : {}),
})

type Options = (p: unknown) => ReturnType<typeof kvEngineOptions>

const run = async (policy: unknown, ids: ReadonlyArray<number>, gpuFraction: number, maxTokens: number, beforeStep?: (model: GpuModel, step: number, options: Options) => void) => {
  const c = bundled.config
  const tokens = ids.length + maxTokens + 8
  const kvBytes = tokens * kvBytesPerToken(c)
  const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-pipe-")) })
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * 0.5) })
  const tiers = { gpuBudgetBytes: Math.floor(kvBytes * gpuFraction), arena, store, session: "p" }
  const options: Options = (p) => kvEngineOptions(parsePolicy(p), tiers, c, tokens)
  const model = await bundled.load({ maxContext: tokens, ...options(policy) })
  try {
    let step = 0
    const got = await generate(model, ids, { maxTokens, temperature: 0, beforeStep: () => beforeStep?.(model, step++, options) })
    return { ids: got.ids, kv: model.tierStats()! }
  } finally {
    model.destroy()
    await store.close()
  }
}

describe("pipelined tiered decode step", () => {
  const prompt = () => passKeyPrompt(bundled.tok, 512, passKey(3), 0.4).ids

  it("gives the same tokens and the same GPU cache hits and misses as the unpipelined step, rewinding where a checked layer missed", async () => {
    const ids = prompt()
    // A GPU cache that holds a choice (7 chunks a layer) but not every chunk: layers miss.
    const off = await run(leoam(), ids, 1.2, 12)
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
    const off = await run(leoam(), ids, 3, 16)
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
