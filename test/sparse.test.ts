// Sparse decode attention (Quest-style, all KV on the GPU): below its budget it is exactly
// full attention; past it, a pass key hidden in ~2K tokens is still found while each KV
// head attends 256 tokens (12.5%) per step.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import { modelDir } from "./support/server.ts"

let sparse: GpuModel
let tok: Tokenizer

beforeAll(async () => {
  tok = loadTokenizer(modelDir)
  sparse = await GpuModel.load(await acquireGpu(), openHfModel(modelDir), {
    maxContext: 2200,
    prefillChunk: 512,
    kv: { kind: "quest", policy: { budgetTokens: 256, sinkTokens: 16, recentTokens: 64 } },
  })
})
afterAll(async () => {
  sparse?.destroy()
  await releaseGpu()
})

describe("sparse decode attention", () => {
  it("is full attention while the context fits the budget (golden greedy ids)", async () => {
    const before = sparse.kvStats().selectiveSteps
    const r = await generate(sparse, [3622, 347, 1407, 261, 577], { maxTokens: 32, temperature: 0 })
    expect(r.ids).toEqual([1936, 223, 20, 22, 16, 2357, 1878, 1082, 1532, 1119, 770, 386, 311, 263, 1543, 446, 3670, 1108, 85, 16, 1010, 3864, 279, 282, 263, 1169, 290, 2388, 396, 263, 678, 259])
    expect(sparse.kvStats().selectiveSteps).toBe(before)
  })

  it("finds a pass key in ~2K tokens attending 256 tokens per KV head per step", async () => {
    const p = passKeyPrompt(tok, 2048, passKey(11), 0.3)
    const before = sparse.kvStats().selectiveSteps
    const r = await generate(sparse, p.ids, { maxTokens: 6, temperature: 0 })
    expect(sparse.kvStats().selectiveSteps - before).toBe(5)
    expect(tok.decode(r.ids).trim().startsWith(p.key)).toBe(true)
  })
})
