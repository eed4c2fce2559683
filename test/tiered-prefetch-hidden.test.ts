// Prefetch's hidden-state forecast (InfiniGen's, issue 13 §1) on the test model (lavapipe):
// layer l + 1's query projected from layer l's input (its attention norm and W_q, on the GPU)
// forecasts layer l + 1's choice far better than layer l's own choice or query do, and, like
// every prefetch, changes only what is resident: the tokens are those without prefetch. One
// prefill; each forecast decodes from the same state after a live policy change. Unpipelined on
// purpose (pipeline enabled false; leoam pipelines by default): every forecast lands in time.
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { useBundledModel } from "./support/bundled-model.ts"
import { openTiered } from "./support/tiered-run.ts"

const bundled = useBundledModel()

const leoam = (from?: string) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  pipeline: { enabled: false },
  ...(from ? { prefetch: { layers: 1, from } } : {}),
})

describe("prefetch from the hidden state", () => {
  it("forecasts the next layer's choice from its projected query, without changing the tokens", async () => {
    const prompt = passKeyPrompt(bundled.tok, 512, passKey(7), 0.5)
    const maxTokens = 6
    // A GPU cache of 0.6 of the KV, a host arena of half: layers choose chunks they do not hold.
    const t = await openTiered(bundled, leoam(), prompt.ids.length + maxTokens + 8, { gpu: 0.6, host: 0.5, name: "h" })
    const model = t.model
    const options = (from?: string) => t.options(leoam(from))
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
      expect(bundled.tok.decode(off.ids)).toContain(prompt.key)
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
      await t.close()
    }
  }, 600_000)
})
