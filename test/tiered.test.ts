// The tiered KV cache on the bundled model (lavapipe): exact policies (offload-all, and
// leoam attending everything) reproduce full attention token for token while the GPU
// holds a fraction of the KV and the rest is served by the host arena and disk; leoam with
// a selection budget still finds a pass key; bad budgets and corrupt chunk files give
// coded errors, never a wrong answer.
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import { parsePolicy } from "../protocol/policy.ts"

const modelDir = new URL("../models/tiny-leo-14m", import.meta.url).pathname

let gpu: Gpu
let tok: Tokenizer
let full: GpuModel

beforeAll(async () => {
  gpu = await acquireGpu()
  tok = loadTokenizer(modelDir)
  full = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 2400 })
})

afterAll(async () => {
  full?.destroy()
  await releaseGpu()
})

const tiered = async (policy: unknown, fractions: { gpu: number; host: number }, tokens: number) => {
  const c = full.config
  const kvBytes = tokens * kvBytesPerToken(c)
  const kvDir = mkdtempSync(join(tmpdir(), "leoam-tier-"))
  const store = DiskStore.open({ kvDir })
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * fractions.host) })
  const options = kvEngineOptions(parsePolicy(policy), { gpuBudgetBytes: Math.floor(kvBytes * fractions.gpu), arena, store, session: "t" }, c, tokens + 64)
  const model = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: tokens + 64, ...options })
  return { model, store, kvDir, close: async () => (model.destroy(), await store.close()) }
}

const greedy = { maxTokens: 12, temperature: 0 }

/** The least GPU budget (bytes) of leoam's defaults for `tokens`, as a refusal's kv_budget_too_small message names it. */
const leastBudget = async (tokens: number): Promise<number> => {
  const err = await tiered("leoam", { gpu: 0.001, host: 0.5 }, tokens).then(
    async (t) => (await t.close(), undefined),
    (e: Error & { code?: string }) => e,
  )
  expect(err?.code).toBe("kv_budget_too_small")
  return Number(/at least (\d+) bytes/.exec(err!.message)?.[1])
}

describe("tiered KV cache, exact policies", () => {
  const prompt = () => passKeyPrompt(tok, 700, passKey(5), 0.3).ids

  it("offload-all with 40% of the KV on the GPU and 30% in host memory equals full attention", async () => {
    const ids = prompt()
    const want = await generate(full, ids, greedy)
    const t = await tiered("offload-all", { gpu: 0.4, host: 0.3 }, ids.length + 12)
    try {
      const got = await generate(t.model, ids, greedy)
      expect(got.ids).toEqual(want.ids)
      const kv = t.model.tierStats()!
      expect(kv.disk.bytes_read).toBeGreaterThan(0) // the host arena holds less than the KV
      expect(kv.host.hits).toBeGreaterThan(0)
      expect(kv.windows).toBeGreaterThan(kv.steps * full.config.numLayers) // the GPU cannot hold a layer's chunks at once
      expect(kv.gpu.resident_bytes).toBe(0) // offload-all keeps nothing between steps
    } finally {
      await t.close()
    }
  }, 180_000)

  it("leoam attending every chunk (budget 100%, importance eviction) equals full attention, across chunk seals in decode", async () => {
    const ids = prompt()
    const want = await generate(full, ids, { ...greedy, maxTokens: 40 })
    const t = await tiered({ name: "leoam", selection: { topk: { budget_fraction: 1 } }, eviction: "importance" }, { gpu: 0.5, host: 0.5 }, ids.length + 40)
    try {
      const got = await generate(t.model, ids, { ...greedy, maxTokens: 40 })
      expect(got.ids).toEqual(want.ids)
      const kv = t.model.tierStats()!
      expect(kv.chunks_sealed).toBe(Math.floor((ids.length + 39) / 32) * full.config.numLayers) // every layer's chunks
      expect(kv.gpu.hits).toBeGreaterThan(0)
      // A prompt appended to the sequence attends its sealed chunks in prefill windows: counted
      // apart from decode's choices (gpu.hits and misses: one per chosen chunk, layer and step).
      await generate(t.model, ids.slice(0, 16), { ...greedy, maxTokens: 2, continue: true })
      const after = t.model.tierStats()!
      expect(after.gpu.hits + after.gpu.misses).toBe(Math.round(after.chunks_selected_per_step * after.steps * full.config.numLayers))
      expect(after.gpu.prefill_hits + after.gpu.prefill_misses).toBeGreaterThanOrEqual(Math.floor(ids.length / 32) * full.config.numLayers)
    } finally {
      await t.close()
    }
  }, 180_000)
})

describe("tiered KV cache, resuming from disk", () => {
  it("a second model on the same kv-dir resumes the sequence: chunk tables and GPU abstracts rebuilt from LMDB", async () => {
    const ids = passKeyPrompt(tok, 640, passKey(11), 0.5).ids.slice(0, 608) // 19 whole 32-token chunks
    const policy = { name: "leoam", selection: { topk: { budget_tokens: 192, sink_tokens: 32, recent_tokens: 64 } } }
    const a = await tiered(policy, { gpu: 0.5, host: 0.5 }, ids.length + 8)
    const argmax = (x: Float32Array) => x.reduce((best, v, i) => (v > x[best] ? i : best), 0)
    const continueFrom = async (m: GpuModel, first: number, steps: number) => {
      const out = [first]
      for (let i = 0; i < steps; i++) {
        m.writeToken(i, out[i])
        await m.decode(i)
        out.push(argmax(await m.readLogits()))
      }
      return out
    }
    try {
      await a.model.prefill(ids)
      const first = argmax(await a.model.readLogits())
      // A second model (as after a restart), its own GPU and host caches, the same disk store.
      const arena = new HostArena({ budgetBytes: 1 << 20 })
      const options = kvEngineOptions(parsePolicy(policy), { gpuBudgetBytes: a.model.kv.gpuBytes, arena, store: a.store, session: "t" }, full.config, ids.length + 8)
      const b = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: ids.length + 8, ...options })
      try {
        expect(b.resume()).toBe(ids.length)
        const want = await continueFrom(a.model, first, 5)
        const got = await continueFrom(b, first, 5)
        expect(got).toEqual(want) // the same chunks chosen from the same abstracts, the same tokens
        expect(b.tierStats()!.disk.bytes_read).toBeGreaterThan(0) // its chunks came from disk
      } finally {
        b.destroy()
      }
    } finally {
      await a.close()
    }
  }, 180_000)
})

describe("tiered KV cache, leoam selection", () => {
  // (The 10 % GPU budget case is in the quality test; a fifth keeps this one quick.)
  it("finds a 2K-token pass key with 256 tokens attended per step and the GPU holding a fifth of the KV", async () => {
    const p = passKeyPrompt(tok, 2048, passKey(7), 0.6) // full attention answers it (engine.test.ts)
    const policy = { name: "leoam", chunking: { fixed: { tokens: 16 } }, selection: { topk: { budget_tokens: 256, sink_tokens: 16, recent_tokens: 32 } } }
    const t = await tiered(policy, { gpu: 0.2, host: 0.25 }, p.ids.length + 6)
    try {
      const got = await generate(t.model, p.ids, { maxTokens: 6, temperature: 0 })
      expect(tok.decode(got.ids)).toContain(p.key)
      const kv = t.model.tierStats()!
      expect(kv.tokens_selected_per_step).toBeLessThanOrEqual(256)
      expect(kv.disk.bytes_read).toBeGreaterThan(0)
    } finally {
      await t.close()
    }
  }, 300_000)
})

describe("tiered KV cache, bad budgets and files", () => {
  it("refuses a GPU budget that cannot hold the tail, sink and recent chunks, naming a least budget that is then accepted", async () => {
    const tokens = 2000
    const least = await leastBudget(tokens)
    expect(least).toBeGreaterThan(0)
    const kvBytes = tokens * kvBytesPerToken(full.config)
    await expect(tiered("leoam", { gpu: (least - 1) / kvBytes, host: 0.5 }, tokens)).rejects.toMatchObject({ code: "kv_budget_too_small" })
    const t = await tiered("leoam", { gpu: least / kvBytes + 1e-12, host: 0.5 }, tokens)
    try {
      expect(t.model.kv.gpuBytes).toBeLessThanOrEqual(least)
      // Sink (32), recent (64) and one chosen chunk, and a one-chunk tail, under 10% of a 2K request's KV,
      // besides the abstracts: all of them on the GPU (1/32 of the KV in 32-token chunks) and the seal's scratch.
      expect(t.model.tierStats()!.abstract_bytes.gpu).toBeGreaterThan(kvBytes / 32)
      expect((least - t.model.tierStats()!.abstract_bytes.gpu) / kvBytes).toBeLessThan(0.1)
    } finally {
      await t.close()
    }
  })

  it("at the least GPU budget, a stop just before a chunk boundary (steps computed past it sealed that chunk) truncates cleanly and the next request is exact", async () => {
    const tokens = 400
    const kvBytes = tokens * kvBytesPerToken(full.config)
    const least = await leastBudget(tokens)
    const t = await tiered({ name: "leoam", selection: { topk: { budget_fraction: 1 } } }, { gpu: least / kvBytes + 1e-12, host: 0.5 }, tokens)
    try {
      // 30 tokens past a 32-token boundary: the first generated token ends the request (a stop
      // string, say), while the steps in flight append past the next chunk boundary.
      const ids = passKeyPrompt(tok, 300, passKey(3), 0.5).ids
      const prompt = ids.slice(0, 32 * Math.floor(ids.length / 32) - 2)
      const stopped = await generate(t.model, prompt, { maxTokens: 8, temperature: 0, onToken: () => true })
      expect(stopped.ids.length).toBe(1)
      expect(t.model.length).toBe(prompt.length)
      const want = await generate(full, prompt, greedy)
      expect((await generate(t.model, prompt, greedy)).ids).toEqual(want.ids)
    } finally {
      await t.close()
    }
  }, 120_000)

  it("refuses a full-attention policy whose KV exceeds the GPU budget", () => {
    const arena = new HostArena({ budgetBytes: 1 << 20 })
    expect(() => kvEngineOptions(parsePolicy("full"), { gpuBudgetBytes: 1 << 20, arena, session: "x" }, full.config, 2000)).toThrow(
      expect.objectContaining({ code: "kv_budget_too_small" }),
    )
  })

  it("a chunk missing from LMDB fails the request with chunk_missing", async () => {
    const ids = passKeyPrompt(tok, 400, passKey(10), 0.5).ids
    const t = await tiered("offload-all", { gpu: 0.5, host: 0.02 }, ids.length + 4)
    try {
      await generate(t.model, ids, { maxTokens: 2, temperature: 0 })
      t.store.dropSession("t") // the index entries (and files) are gone; the host arena holds one chunk
      await expect(
        (async () => {
          for (let i = 0; i < 2; i++) await t.model.decode(0)
        })(),
      ).rejects.toMatchObject({ code: "chunk_missing" })
    } finally {
      await t.close()
    }
  }, 120_000)

  it("a corrupt chunk file fails the request with chunk_corrupt instead of attending wrong bytes", async () => {
    const ids = passKeyPrompt(tok, 400, passKey(9), 0.5).ids
    // A host arena of one chunk: later reads must come from disk.
    const t = await tiered("offload-all", { gpu: 0.5, host: 0.02 }, ids.length + 4)
    try {
      await generate(t.model, ids, { maxTokens: 2, temperature: 0 })
      const dir = join(t.kvDir, "chunks")
      for (const f of readdirSync(dir)) {
        const bytes = readFileSync(join(dir, f))
        for (let i = 0; i < bytes.length; i += 4096) bytes[i] ^= 0xff
        writeFileSync(join(dir, f), bytes)
      }
      // The next request re-prefills: its chunks are rewritten, so corrupt them mid-run by
      // decoding more of the same sequence instead.
      await expect(
        (async () => {
          for (let i = 0; i < 4; i++) await t.model.decode(0)
        })(),
      ).rejects.toMatchObject({ code: "chunk_corrupt" })
    } finally {
      await t.close()
    }
  }, 120_000)
})
