// The KV quality program's core on small cases (bench/kv-quality.ts, lavapipe): leoam at a
// 10% selection budget, its GPU holding at most 10% of the request's KV and the rest on host and disk, answers a 2K pass key token for token as full does;
// teacher-forced KL(full || full) is 0, KL(full || leoam) is finite, non-negative and smaller
// at a 50% budget than at 5%.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  ANSWER_TOKENS, answerPassKey, type Engine, heldOutIds, klAgainst, loadEngine, MODEL_DIR, passKeyCases, referenceLogProbs, type Variant,
} from "../bench/kv-quality.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"

let gpu: Gpu
let tok: Tokenizer

beforeAll(async () => {
  gpu = await acquireGpu()
  tok = loadTokenizer(MODEL_DIR)
})

afterAll(async () => {
  await releaseGpu()
})

const withEngine = async <T,>(v: Variant, requestTokens: number, f: (e: Engine) => Promise<T>): Promise<T> => {
  const e = await loadEngine(gpu, v, requestTokens)
  try {
    return await f(e)
  } finally {
    await e.close()
  }
}

const full: Variant = { policy: "full" }
const leoam = (budget: number): Variant => ({ policy: "leoam", budget })

describe("KV quality, quick cases", () => {
  it("leoam at a 10% budget, ~10% of the KV on the GPU, answers a 2K pass key exactly as full does", async () => {
    const [c] = passKeyCases([2048], [0.5])
    const tokens = c.context + ANSWER_TOKENS
    const want = await withEngine(full, tokens, (e) => answerPassKey(e.model, tok, c))
    const got = await withEngine(leoam(0.1), tokens, async (e) => ({ answer: await answerPassKey(e.model, tok, c), gpu: e.gpu!, kv: e.model.tierStats()!, gpuBytes: e.model.kv.gpuBytes }))
    expect(want.correct).toBe(true)
    expect(got.answer.ids).toEqual(want.ids)
    // The GPU holds at most 10% of the request's KV, staging rings included, besides the chunk abstracts (counted in its budget).
    expect(got.gpu.raised).toBe(false)
    expect(got.gpu.kvFraction).toBeLessThanOrEqual(0.1)
    expect(got.gpuBytes).toBeLessThanOrEqual(got.gpu.budgetBytes)
    expect(got.kv.disk.bytes_read).toBeGreaterThan(0)
  }, 240_000)

  it("KL from full over held-out text: 0 for full itself; finite, >= 0 and smaller at 50% than at 5% for leoam", async () => {
    const text = heldOutIds(tok)
    // Long enough that 50 % leaves room for query-chosen chunks beyond sink and recent (5 % leaves one).
    const prefix = 512
    const positions = 64
    const tokens = prefix + positions
    const reference = await withEngine(full, tokens, (e) => referenceLogProbs(e.model, text, prefix, positions))
    const self = await withEngine(full, tokens, (e) => klAgainst(e.model, text, prefix, reference))
    const at5 = await withEngine(leoam(0.05), tokens, (e) => klAgainst(e.model, text, prefix, reference))
    const at50 = await withEngine(leoam(0.5), tokens, (e) => klAgainst(e.model, text, prefix, reference))
    expect(self.positions).toBe(positions)
    expect(Math.abs(self.mean)).toBeLessThan(1e-6)
    expect(self.max).toBeLessThan(1e-6)
    expect(self.top1Agreement).toBe(1)
    for (const r of [at5, at50]) {
      expect(r.nonFinite).toBe(0)
      expect(r.mean).toBeGreaterThanOrEqual(0)
    }
    expect(at50.mean).toBeLessThan(at5.mean)
  }, 180_000)
})
