// Prefetch's hidden-state forecast (InfiniGen's, issue 13 §1) on the test model (lavapipe):
// layer l + 1's query projected from layer l's input (its attention norm and W_q, on the GPU)
// forecasts layer l + 1's choice far better than layer l's own choice or query do, and, like
// every prefetch, changes only what is resident: the tokens are those without prefetch. One
// prefill; each forecast decodes from the same state after a live policy change.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import { parsePolicy } from "../protocol/policy.ts"

const modelDir = new URL("../models/tiny-leo-14m", import.meta.url).pathname

let gpu: Gpu
let tok: Tokenizer

beforeAll(async () => {
  gpu = await acquireGpu()
  tok = loadTokenizer(modelDir)
})

afterAll(async () => {
  await releaseGpu()
})

const leoam = (from?: string) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  ...(from ? { prefetch: { layers: 1, from } } : {}),
})

describe("prefetch from the hidden state", () => {
  it("forecasts the next layer's choice from its projected query, without changing the tokens", async () => {
    const prompt = passKeyPrompt(tok, 512, passKey(7), 0.5)
    const weights = openHfModel(modelDir)
    const c = weights.config
    const maxTokens = 6
    const tokens = prompt.ids.length + maxTokens + 8
    const kvBytes = tokens * kvBytesPerToken(c)
    const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-prefetch-hidden-")) })
    const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * 0.5) })
    const tiers = { gpuBudgetBytes: Math.floor(kvBytes * 0.6), arena, store, session: "h" }
    const options = (from?: string) => kvEngineOptions(parsePolicy(leoam(from)), tiers, c, tokens)
    const model = await GpuModel.load(gpu, weights, { maxContext: tokens, ...options() })
    try {
      await model.prefill(prompt.ids.slice(0, -1))
      const decode = async (from?: string) => {
        model.truncate(prompt.ids.length - 1)
        expect(model.swapKvPolicy(options(from))).toBe(true)
        const before = model.tierStats()!.prefetch!
        const got = await generate(model, prompt.ids.slice(-1), { maxTokens, temperature: 0, continue: true })
        await model.settle()
        const f = model.tierStats()!.prefetch!
        const d = (k: "forecasts" | "late" | "forecast_chunks" | "chosen_chunks" | "forecast_chosen") => f[k] - before[k]
        return { ids: got.ids, from: f.from, forecasts: d("forecasts"), late: d("late"), precision: d("forecast_chosen") / d("forecast_chunks"), recall: d("forecast_chosen") / d("chosen_chunks") }
      }
      const off = await decode()
      expect(tok.decode(off.ids)).toContain(prompt.key)
      const choice = await decode("choice")
      const hidden = await decode("hidden")
      for (const r of [choice, hidden]) {
        expect(r.ids).toEqual(off.ids)
        expect(r.forecasts).toBeGreaterThan(0)
        expect(r.late).toBe(0) // unpipelined, a forecast lands with its layer's choice
      }
      expect(hidden.from).toBe("hidden")
      // Measured here: choice 0.36, hidden 0.71 (each forecast names as many chunks as its layer chooses).
      expect(hidden.precision).toBeGreaterThan(choice.precision + 0.2)
      expect(hidden.recall).toBeGreaterThan(choice.recall + 0.2)
    } finally {
      model.destroy()
      await store.close()
    }
  }, 600_000)
})
