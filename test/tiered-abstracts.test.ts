// Abstracts under budget (issue 13 §4). Pure: the GPU budget pays for the abstracts before
// any chunk slot, so a budget holds fewer chunks by their bytes (at Llama-3.1-8B 128K, 512 MiB
// of them when all are resident). On the test model (lavapipe): a 512-token pass key is found
// with every abstract on the GPU, with group scoring (groups first, then only the kept groups'
// chunks), and with budgeted abstracts (a cache of them filled from LMDB), next to full
// attention; the policy change between them applies at the next request.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { abstractLayout } from "../engine/kv/tiered/abstract-layout.ts"
import { tierLayout, tieredLayout, type TieredPolicy } from "../engine/kv/tiered/index.ts"
import { GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { lru } from "../kv/eviction.ts"
import { HostArena } from "../kv/host-arena.ts"
import type { ModelConfig } from "../models/types.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import { parsePolicy } from "../protocol/policy.ts"

const GiB = 2 ** 30
const llama8b = { numLayers: 32, numHeads: 32, numKvHeads: 8, headDim: 128 } as ModelConfig
const leoam32: TieredPolicy = { mode: "leoam", chunkTokens: 32, budgetFraction: 0.1, sinkTokens: 32, recentTokens: 64, gpuEviction: lru, hostEviction: lru }
const sizes = { blockTokens: 16, maxContext: 128 * 1024, prefillChunk: 512 }

describe("abstracts in the GPU budget", () => {
  const arena = { slabBytes: 2 ** 20 } as HostArena
  const layoutOf = (p: TieredPolicy, budget: number) => tieredLayout(llama8b, p, { gpuBudgetBytes: budget, arena }, sizes)

  it("8B at 128K: all abstracts take 512 MiB of a 6 GiB budget, and the chunk cache holds fewer chunks by their bytes", () => {
    const all = layoutOf(leoam32, 6 * GiB)
    const fine = 32 * 4096 * 2 * 8 * 64 * 4 // layers x chunks x (min, max) x (KV, D/2) f16 pairs
    expect(fine).toBe(512 * 2 ** 20)
    expect(all.abstracts.bytes).toBeGreaterThan(fine) // and the seal's scratch
    expect(all.abstracts.bytes - fine).toBeLessThan(8 * 2 ** 20)
    // The same layout without abstracts: the chunk slots the abstracts' bytes paid for.
    const slotBytes = 2 * 2 * 8 * 16 * 128 * 2
    const bare = tierLayout({ layers: 32, tailSlackBytes: slotBytes / 2, slotBytes, sealBytes: slotBytes + 2 * 8 * 64 * 4, scratchBytes: slotBytes / 2, minimumSlots: 4, wantedPrefillChunks: 16, maxChunks: 4096, budgetBytes: 6 * GiB })
    if (typeof bare === "number") throw new Error("6 GiB refused")
    expect(bare.tailChunks).toBe(all.tailChunks)
    // Per layer, the abstracts' share in slots: 128 (512 MiB / 32 layers / 128 KiB slots), and the scratch's 8 KiB within the rounding.
    expect(bare.cacheSlots - all.cacheSlots).toBeGreaterThanOrEqual(Math.floor(all.abstracts.bytes / 32 / slotBytes))
    expect(bare.cacheSlots - all.cacheSlots).toBeLessThanOrEqual(Math.ceil(all.abstracts.bytes / 32 / slotBytes))
    expect(bare.cacheSlots - all.cacheSlots).toBe(128)
    expect(all.bytes).toBeLessThanOrEqual(6 * GiB)
  })

  it("budgeted in groups of 16: the abstracts of the groups a step keeps, and group abstracts, in a fraction of the bytes", () => {
    const budgeted = layoutOf({ ...leoam32, abstracts: { resident: "budgeted", groupChunks: 16 } }, 6 * GiB)
    const all = layoutOf(leoam32, 6 * GiB)
    // 10 % of 128K in 32-token chunks: 410 chosen, twice that in groups of 16 = 52 groups, 832 slots.
    expect(budgeted.abstracts.slots).toBe(832)
    expect(budgeted.abstracts.groups).toBe(256)
    expect(budgeted.abstracts.bytes).toBeLessThan(all.abstracts.bytes / 3)
    expect(budgeted.cacheSlots).toBeGreaterThan(all.cacheSlots)
    // Groups alone change no fine abstract's place but add theirs.
    const grouped = abstractLayout(llama8b, { ...leoam32, abstracts: { resident: "all", groupChunks: 16 } }, { ...sizes, minChunkTokens: 32 })
    expect(grouped.bytes - all.abstracts.bytes).toBe(32 * 256 * 2 * 8 * 64 * 4)
  })
})

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

const leoam = (abstracts?: { gpu_resident?: "all" | "budgeted"; group_chunks?: number }) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  ...(abstracts ? { abstracts } : {}),
})

describe("tiered KV cache with abstracts under budget", () => {
  it("finds a 512-token pass key with all abstracts, with groups and with budgeted abstracts; the change applies at the next request", async () => {
    const p = passKeyPrompt(tok, 512, passKey(13), 0.5)
    const maxTokens = 6
    const weights = openHfModel(modelDir)
    const c = weights.config
    const tokens = p.ids.length + maxTokens + 8
    const kvBytes = tokens * kvBytesPerToken(c)
    const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-abstracts-")) })
    const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * 0.5) })
    const tiers = { gpuBudgetBytes: Math.floor(kvBytes * 0.6), arena, store, session: "ab" }
    const options = (policy: unknown) => kvEngineOptions(parsePolicy(policy), tiers, c, tokens)
    const full = await GpuModel.load(gpu, weights, { maxContext: tokens })
    let model = await GpuModel.load(gpu, weights, { maxContext: tokens, ...options(leoam()) })
    try {
      const reference = await generate(full, p.ids, { maxTokens, temperature: 0 })
      expect(tok.decode(reference.ids)).toContain(p.key)
      const run = async () => {
        const got = await generate(model, p.ids, { maxTokens, temperature: 0 })
        return { text: tok.decode(got.ids), kv: model.tierStats()! }
      }
      const plain = await run()
      const change = (policy: unknown) => {
        // The abstracts' layout is the cache's: not at the next step, at the next request.
        expect(model.swapKvPolicy(options(policy))).toBe(false)
        expect(model.checkKv(options(policy))).toBe("next_request")
        return model.withKv(options(policy))
      }
      model = await change(leoam({ group_chunks: 4 }))
      const grouped = await run()
      model = await change(leoam({ gpu_resident: "budgeted", group_chunks: 4 }))
      const budgeted = await run()
      for (const r of [plain, grouped, budgeted]) expect(r.text).toContain(p.key)
      console.log(
        [plain, grouped, budgeted]
          .map(({ text, kv }) => `${kv.abstract_scoring.resident}/${kv.abstract_scoring.group_chunks}: ${JSON.stringify(text)} gpu ${kv.abstract_bytes.gpu} B, scored ${kv.abstract_scoring.groups_scored_per_step} groups + ${kv.abstract_scoring.chunks_scored_per_step} chunks/step, fetched ${kv.abstract_scoring.fetched}`)
          .join("; "),
      )
      const chunks = plain.kv.abstracts
      // All resident: every sealed chunk scored each step, no groups.
      expect(plain.kv.abstract_scoring).toMatchObject({ resident: "all", group_chunks: 0, groups_scored_per_step: 0, fetched: 0 })
      expect(plain.kv.abstract_bytes.disk).toBe(chunks * 2 * c.numKvHeads * (c.headDim / 2) * 4)
      // Groups: scored first, then a fraction of the chunks.
      expect(grouped.kv.abstract_scoring.group_chunks).toBe(4)
      expect(grouped.kv.abstract_scoring.groups_scored_per_step).toBeGreaterThan(0)
      expect(grouped.kv.abstract_scoring.chunks_scored_per_step).toBeLessThan(plain.kv.abstract_scoring.chunks_scored_per_step / 2)
      expect(grouped.kv.abstract_bytes.gpu).toBeGreaterThan(plain.kv.abstract_bytes.gpu)
      // Budgeted: fewer abstract slots than chunks, filled from LMDB, in fewer GPU bytes.
      const b = budgeted.kv.abstract_scoring
      expect(b.resident).toBe("budgeted")
      expect(b.gpu_slots * c.numLayers).toBeLessThan(chunks)
      expect(b.gpu_resident).toBeLessThanOrEqual(b.gpu_slots * c.numLayers)
      expect(b.fetched).toBeGreaterThan(0)
      expect(budgeted.kv.abstract_bytes.gpu).toBeLessThan(plain.kv.abstract_bytes.gpu)
      // The GPU memory of each cache, abstracts included, within the budget.
      expect(model.kv.gpuBytes).toBeLessThanOrEqual(tiers.gpuBudgetBytes)
    } finally {
      full.destroy()
      model.destroy()
      await store.close()
    }
  }, 600_000)

  it("a second model on the same kv-dir resumes with budgeted groups: groups rebuilt on the host from LMDB choose as the GPU-folded ones", async () => {
    const ids = passKeyPrompt(tok, 640, passKey(11), 0.5).ids.slice(0, 608) // 38 whole 16-token chunks
    const policy = leoam({ gpu_resident: "budgeted", group_chunks: 4 })
    const weights = openHfModel(modelDir)
    const c = weights.config
    const tokens = ids.length + 8
    const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-abstracts-resume-")) })
    const load = (budget: number) => {
      const arena = new HostArena({ budgetBytes: 1 << 20 })
      return GpuModel.load(gpu, openHfModel(modelDir), { maxContext: tokens, ...kvEngineOptions(parsePolicy(policy), { gpuBudgetBytes: budget, arena, store, session: "r" }, c, tokens) })
    }
    const a = await load(Math.floor(tokens * kvBytesPerToken(c) * 0.6))
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
      await a.prefill(ids)
      await a.settle()
      const first = argmax(await a.readLogits())
      const b = await load(a.kv.gpuBytes)
      try {
        expect(b.resume()).toBe(ids.length)
        const want = await continueFrom(a, first, 4)
        const got = await continueFrom(b, first, 4)
        expect(got).toEqual(want)
        const kv = b.tierStats()!
        expect(kv.abstract_scoring.groups_scored_per_step).toBeGreaterThan(0)
        expect(kv.abstract_scoring.fetched).toBeGreaterThan(0) // every abstract it scored came from LMDB
      } finally {
        b.destroy()
      }
    } finally {
      a.destroy()
      await store.close()
    }
  }, 300_000)
})
