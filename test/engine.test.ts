// End to end on WebGPU (lavapipe in CI): the bundled test model against the Hugging Face
// golden outputs (input ids, 32 greedy ids, top-5 logits), a ~2K-token pass key, and the
// sampling contract (a seed reproduces a run; different seeds differ).
import { readFileSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { CpuModel } from "../engine/cpu-reference.ts"
import { dummyPresets } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import type { ModelConfig, WeightSource } from "../models/types.ts"
import { sampleCandidates, sampleHost } from "../engine/sampling.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"

interface Golden {
  prompt: string
  input_ids: number[]
  greedy_ids: number[]
  greedy_text: string
  last_logits_top5: { ids: number[]; values: number[] }
  last_logits_first16: number[]
  logits_l2_per_pos: number[]
}

const modelDir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const golden: Golden[] = JSON.parse(
  // The repository's copy of ../shared/models/tiny-leo-14m/golden (byte-identical).
  readFileSync(new URL("../models/tiny-leo-14m/golden/hf-transformers-5.17-fp32.json", import.meta.url), "utf8"),
)

let model: GpuModel
let tok: Tokenizer

beforeAll(async () => {
  const gpu = await acquireGpu()
  tok = loadTokenizer(modelDir)
  model = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 2304, prefillChunk: 256 })
})

afterAll(async () => {
  model?.destroy()
  await releaseGpu()
})

describe("tiny-leo-14m on WebGPU vs Hugging Face transformers (fp32)", () => {
  for (const g of golden) {
    it(`reproduces ${JSON.stringify(g.prompt)}`, async () => {
      const ids = tok.encode(g.prompt)
      expect(ids).toEqual(g.input_ids)
      model.reset()
      const all = (await model.prefill(ids, true))!
      const V = model.config.vocabSize
      const last = all.subarray((ids.length - 1) * V)
      const top5 = Array.from(last.keys()).sort((a, b) => last[b] - last[a] || a - b).slice(0, 5)
      expect(top5).toEqual(g.last_logits_top5.ids)
      g.last_logits_top5.ids.forEach((id, k) => {
        const want = g.last_logits_top5.values[k]
        expect(Math.abs(last[id] - want) / Math.abs(want)).toBeLessThanOrEqual(1e-2)
      })
      g.last_logits_first16.forEach((want, i) => expect(Math.abs(last[i] - want)).toBeLessThan(0.05))
      g.logits_l2_per_pos.forEach((want, p) => {
        let ss = 0
        for (let i = 0; i < V; i++) ss += all[p * V + i] ** 2
        expect(Math.abs(Math.sqrt(ss) - want) / want).toBeLessThan(1e-2)
      })
      const r = await generate(model, ids, { maxTokens: 32, temperature: 0 })
      expect(r.ids).toEqual(g.greedy_ids)
      expect(tok.decode(r.ids)).toBe(g.greedy_text)
      expect(r.finishReason).toBe("length")
    })
  }
})

describe("decode fusion (RoPE and the KV append in the QKV GEMV)", () => {
  it("off and on, decode gives the golden greedy ids and the same logits of a step", async () => {
    const plain = await model.sibling({ gemv: { wg: 64, rows: 2 }, decode: { fuseRope: false } })
    try {
      for (const g of golden.slice(0, 2)) {
        const logits: Float32Array[] = []
        for (const m of [model, plain]) {
          m.reset()
          const r = await generate(m, g.input_ids, { maxTokens: 32, temperature: 0 })
          expect(r.ids).toEqual(g.greedy_ids)
          // The logits of one decode step (later steps compound rounding differences).
          m.reset()
          await generate(m, g.input_ids, { maxTokens: 2, temperature: 0 })
          logits.push(await m.readLogits())
        }
        expectLogitsClose(logits[0]!, logits[1]!)
      }
    } finally {
      plain.destroy()
    }
  })
})

describe("a biased qwen2-like model (QKV bias through the fused RoPE GEMV)", () => {
  it("prefill and 6 decode steps give the CPU reference's logits", async () => {
    const config: ModelConfig = { ...dummyPresets.tiny!, modelType: "qwen2", attentionBias: true, tieWordEmbeddings: false }
    const dummy = new DummyWeightSource(config)
    // The same values on both sides: the GPU reads the host's halves (no GPU-side random fill).
    const source: WeightSource = { config, tensors: dummy.tensors, readF16: (n, sink, max) => dummy.readF16(n, sink, max), close: () => dummy.close() }
    const gpu = await GpuModel.load(model.gpu, source, { maxContext: 64, prefillChunk: 16 })
    try {
      const cpu = CpuModel.load(source)
      const ids = [1, 7, 42, 3, 99, 5, 250, 17, 8, 64, 33, 2, 11, 400, 6, 9, 77, 123, 45]
      await gpu.prefill(ids)
      expectLogitsClose(await gpu.readLogits(), cpu.forward(ids, 0, "last"))
      let pos = ids.length
      for (const next of [4, 300, 12, 88, 7, 501]) {
        gpu.writeToken(pos, next)
        // The full manager never waits: the whole step is encoded and submitted synchronously.
        expect(gpu.decode(pos)).toBeUndefined()
        expectLogitsClose(await gpu.readLogits(), cpu.forward([next], pos, "last"))
        pos++
      }
    } finally {
      gpu.destroy()
    }
  })
})

const expectLogitsClose = (a: Float32Array, b: Float32Array) => {
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / Math.max(1, Math.abs(b[i]!)))
  expect(worst).toBeLessThan(1e-3)
}

describe("long context", () => {
  it("answers a pass key hidden at 40% of a ~2K-token prompt (chunked prefill)", async () => {
    const p = passKeyPrompt(tok, 2048, passKey(3), 0.4)
    expect(p.ids.length).toBeGreaterThan(2000)
    const r = await generate(model, p.ids, { maxTokens: 6, temperature: 0 })
    expect(tok.decode(r.ids).trim().startsWith(p.key)).toBe(true)
  })
})

describe("sampling", () => {
  const prompt = [3622, 347, 1407, 261, 577]
  it("a seed reproduces a temperature run on the GPU; another seed differs", async () => {
    const run = (seed: number) => generate(model, prompt, { maxTokens: 12, temperature: 1.5, seed })
    const a = await run(11)
    const b = await run(11)
    const c = await run(12)
    expect(a.ids).toEqual(b.ids)
    expect(c.ids).not.toEqual(a.ids)
  })
  it("top-k 1 is greedy; a seed reproduces top-p on the host", async () => {
    const greedy = await generate(model, prompt, { maxTokens: 8, temperature: 0 })
    const k1 = await generate(model, prompt, { maxTokens: 8, temperature: 1, topK: 1, seed: 5 })
    expect(k1.ids).toEqual(greedy.ids)
    const p1 = await generate(model, prompt, { maxTokens: 8, temperature: 0.9, topP: 0.9, seed: 5 })
    const p2 = await generate(model, prompt, { maxTokens: 8, temperature: 0.9, topP: 0.9, seed: 5 })
    expect(p1.ids).toEqual(p2.ids)
  })
  it("host sampling from GPU candidates equals sampling from all logits (top-k, top-p)", async () => {
    model.reset()
    await model.prefill(prompt)
    const logits = await model.readLogits()
    for (const s of [
      { temperature: 0.8, topK: 40 },
      { temperature: 1.2, topP: 0.9 },
      { temperature: 0.7, topK: 100, topP: 0.8 },
    ]) {
      const cand = await model.topCandidates(s.topK ?? 1024, s.temperature)
      const lse = logits.reduce((a, l) => Math.max(a, l / s.temperature), -Infinity)
      expect(Math.abs(cand.max - lse)).toBeLessThan(1e-4)
      for (let seed = 0; seed < 20; seed++) {
        const o = { ...s, seed }
        expect(sampleCandidates(cand.ids, cand.logits, cand, o, seed), JSON.stringify(o)).toBe(sampleHost(logits, o, seed))
      }
    }
  })

  it("stops at a stop id and keeps the cache exact", async () => {
    const greedy = await generate(model, prompt, { maxTokens: 8, temperature: 0 })
    const r = await generate(model, prompt, { maxTokens: 8, temperature: 0, stopIds: [greedy.ids[2]] })
    expect(r.ids).toEqual(greedy.ids.slice(0, 3))
    expect(r.finishReason).toBe("stop")
    expect(model.length).toBe(prompt.length + 2)
  })
})
