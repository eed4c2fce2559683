// Batched decode (engine/batch.ts) on the bundled model (lavapipe): each sequence of a
// batch, with its own prompt length and KV policy (full, quest, leoam over the host and
// disk tiers), gets the same greedy ids as when it runs alone, while sequences join and
// leave the batch between steps; the continuous-batching loop (engine/batch-loop.ts) gives
// requests that arrive while others decode, prefilled in slices, with GPU and host
// sampling and stop ids, what generate gives them alone, and one request's failure fails
// only it.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { DecodeBatch } from "../engine/batch.ts"
import { BatchLoop } from "../engine/batch-loop.ts"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { readBack } from "../engine/buffers.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import { parsePolicy } from "../protocol/policy.ts"

const modelDir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const CONTEXT = 512

let gpu: Gpu
let tok: Tokenizer
let lead: GpuModel
let store: DiskStore

beforeAll(async () => {
  gpu = await acquireGpu()
  tok = loadTokenizer(modelDir)
  lead = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: CONTEXT })
  store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-batch-")) })
})

afterAll(async () => {
  lead?.destroy()
  await store?.close()
  await releaseGpu()
})

const selection = { topk: { budget_tokens: 48, sink_tokens: 16, recent_tokens: 16 } }

/** A sibling of the lead under `policy`; tiered ones keep a third of their KV on the GPU, a third in host memory. */
const sequence = (policy: unknown, session: string) => {
  const kvBytes = CONTEXT * kvBytesPerToken(lead.config)
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes / 3) })
  const tiers = { gpuBudgetBytes: parsePolicy(policy).name === "leoam" ? Math.floor(kvBytes / 3) : undefined, arena, store, session }
  return lead.sibling(kvEngineOptions(parsePolicy(policy), tiers, lead.config, CONTEXT))
}

/** A sequence of the test: its model, prompt, tokens wanted and the step it joins the batch at. */
interface Seq {
  readonly model: GpuModel
  readonly prompt: ReadonlyArray<number>
  readonly tokens: number
  readonly joinAt: number
}

/** Greedy generation of every sequence through one batch: each joins at its step, leaves when it has its tokens. */
const runBatched = async (seqs: ReadonlyArray<Seq>, batch: DecodeBatch): Promise<number[][]> => {
  const greedy = (step: number) => ({ outSlot: step, temperature: 0, seed: 0, step })
  const made = seqs.map(() => 0) // tokens chosen so far (token i in tokenIds[i])
  for (let step = 0; made.some((n, i) => n < seqs[i].tokens); step++) {
    const rows = []
    for (const [i, s] of seqs.entries()) {
      if (step < s.joinAt || made[i] >= s.tokens) continue
      if (made[i] === 0) {
        // Joining: its prompt is prefilled between two batch steps and its first token sampled.
        s.model.reset()
        await s.model.prefill(s.prompt)
        s.model.sample(greedy(0))
        made[i] = 1
        continue
      }
      rows.push({ model: s.model, inSlot: made[i] - 1, sample: greedy(made[i]) })
      made[i]++
    }
    if (rows.length > 0) await batch.step(rows)
  }
  return Promise.all(seqs.map(async (s) => [...new Uint32Array(await readBack(gpu.device, s.model.tokenIds, 0, s.tokens * 4))]))
}

describe("batched decode", () => {
  const prompt = (n: number, seed: number) => passKeyPrompt(tok, n, passKey(seed), 0.4).ids

  /** Runs `seqs` alone, then through a batch; each sequence's ids must be the same. */
  const sameAsAlone = async (seqs: ReadonlyArray<Seq>, batch: DecodeBatch) => {
    const alone = []
    for (const s of seqs) alone.push((await generate(s.model, s.prompt, { maxTokens: s.tokens, temperature: 0 })).ids)
    const selective = seqs.map((s) => s.model.kvStats().selectiveSteps)
    expect(await runBatched(seqs, batch)).toEqual(alone)
    return seqs.map((s, i) => s.model.kvStats().selectiveSteps - selective[i])
  }

  it("gives each sequence (full, quest, leoam; different prompt lengths, joining and leaving) the ids it gets alone", async () => {
    const models = await Promise.all([sequence("full", "a"), sequence({ name: "quest", selection }, "b"), sequence({ name: "leoam", chunking: { fixed: { tokens: 16 } }, selection }, "c"), sequence("full", "d")])
    const batch = new DecodeBatch(lead, 4, "gemm")
    try {
      const selective = await sameAsAlone(
        [
          { model: models[0], prompt: prompt(60, 1), tokens: 10, joinAt: 0 },
          { model: models[1], prompt: prompt(200, 2), tokens: 10, joinAt: 0 },
          { model: models[2], prompt: prompt(240, 3), tokens: 8, joinAt: 3 },
          { model: models[3], prompt: [5], tokens: 6, joinAt: 9 },
        ],
        batch,
      )
      // quest and leoam attended a selection of their context in the batch as well.
      expect(selective[1]).toBeGreaterThan(0)
      expect(selective[2]).toBeGreaterThan(0)
      expect(models[2].tierStats()!.steps).toBeGreaterThan(0)
    } finally {
      batch.destroy()
      for (const m of models) m.destroy()
    }
  }, 240_000)

  it("does the same with the GEMV projections", async () => {
    const models = await Promise.all([sequence("full", "e"), sequence({ name: "quest", selection }, "f")])
    const batch = new DecodeBatch(lead, 2, "gemv")
    try {
      const selective = await sameAsAlone(
        [
          { model: models[0], prompt: prompt(40, 4), tokens: 8, joinAt: 0 },
          { model: models[1], prompt: prompt(120, 5), tokens: 6, joinAt: 2 },
        ],
        batch,
      )
      expect(selective[1]).toBeGreaterThan(0)
    } finally {
      batch.destroy()
      for (const m of models) m.destroy()
    }
  }, 120_000)

  it("does the same with gemv_multi (each weight read once for 8 rows)", async () => {
    const models = await Promise.all([sequence("full", "m1"), sequence({ name: "quest", selection }, "m2"), sequence("full", "m3")])
    const batch = await DecodeBatch.open(lead, 3, "multi")
    try {
      const selective = await sameAsAlone(
        [
          { model: models[0], prompt: prompt(40, 11), tokens: 8, joinAt: 0 },
          { model: models[1], prompt: prompt(120, 12), tokens: 6, joinAt: 1 },
          { model: models[2], prompt: prompt(9, 13), tokens: 7, joinAt: 0 },
        ],
        batch,
      )
      expect(selective[1]).toBeGreaterThan(0)
    } finally {
      batch.destroy()
      for (const m of models) m.destroy()
    }
  }, 120_000)

  it("continuous batching: requests arriving mid-decode (sliced prefill, GPU and host sampling, a stop id, a failure) get what generate alone gives", async () => {
    const models = await Promise.all([sequence("full", "g"), sequence("full", "h"), sequence({ name: "quest", selection }, "i"), lead.sibling({ maxContext: 16 })])
    const loop = new BatchLoop(lead, { capacity: 3, prefillSlice: 64 })
    try {
      const jobs = [
        { model: models[0], prompt: prompt(50, 6), options: { maxTokens: 12, temperature: 0 } },
        { model: models[1], prompt: prompt(90, 7), options: { maxTokens: 9, temperature: 0.8, topK: 20, seed: 3 } },
        { model: models[2], prompt: prompt(230, 8), options: { maxTokens: 8, temperature: 1.2, seed: 9 } },
      ]
      const alone = []
      for (const j of jobs) alone.push(await generate(j.model, j.prompt, j.options))
      // A stop id: the second token the first request gets alone.
      const stopped = { ...jobs[0], options: { ...jobs[0].options, stopIds: [alone[0].ids[1]] } }
      const events: number[] = []
      const first = loop.generate(stopped.model, stopped.prompt, { ...stopped.options, onToken: (id) => void events.push(id) })
      await new Promise((r) => setTimeout(r, 50))
      const rest = jobs.slice(1).map((j) => loop.generate(j.model, j.prompt, j.options))
      // Too long for its context: refused in its prefill, the others go on.
      const failing = loop.generate(models[3], prompt(40, 10), { maxTokens: 4, temperature: 0 }).then(
        () => undefined,
        (e: Error & { code?: string }) => e.code,
      )
      const [a, b, c] = await Promise.all([first, ...rest])
      expect(await failing).toBe("context_overflow")
      expect(a.ids).toEqual(alone[0].ids.slice(0, alone[0].ids.indexOf(alone[0].ids[1]) + 1))
      expect(a.finishReason).toBe("stop")
      expect(events).toEqual(a.ids)
      expect(b.ids).toEqual(alone[1].ids)
      expect(c.ids).toEqual(alone[2].ids)
      expect(models[0].length).toBe(stopped.prompt.length + a.ids.length - 1) // the cache holds what was returned
      expect(loop.sizes).toEqual({ decoding: 0, prefilling: 0 })
    } finally {
      loop.destroy()
      for (const m of models) m.destroy()
    }
  }, 240_000)

  it("a KV manager failing mid-batch fails only its request; the others finish with the ids they get alone", async () => {
    const models = await Promise.all([sequence("full", "x1"), sequence("full", "x2"), sequence("full", "x3")])
    const loop = new BatchLoop(lead, { capacity: 3, prefillSlice: 64 })
    try {
      const jobs = [prompt(30, 14), prompt(50, 15), prompt(20, 16)].map((p) => ({ prompt: p, options: { maxTokens: 10, temperature: 0 } }))
      const alone = []
      for (const [i, j] of jobs.entries()) alone.push(await generate(models[i], j.prompt, j.options))
      // The second sequence's attention breaks at its fourth decode step, in the batch and alone.
      const kv = models[1].kv as { attendDecode: (l: number, step: unknown) => void | Promise<void> }
      const attend = kv.attendDecode.bind(kv)
      let calls = 0
      kv.attendDecode = (l, step) => {
        if (++calls > 3 * lead.config.numLayers) throw new Error("lane broke")
        return attend(l, step as never)
      }
      const results = await Promise.allSettled(jobs.map((j, i) => loop.generate(models[i], j.prompt, j.options)))
      expect(results[1]).toMatchObject({ status: "rejected", reason: { message: "lane broke" } })
      expect(results[0]).toMatchObject({ status: "fulfilled", value: { ids: alone[0].ids } })
      expect(results[2]).toMatchObject({ status: "fulfilled", value: { ids: alone[2].ids } })
    } finally {
      loop.destroy()
      for (const m of models) m.destroy()
    }
  }, 120_000)

  it("refuses rows beyond its capacity or on other weights", async () => {
    const batch = new DecodeBatch(lead, 1)
    const other = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 64 })
    try {
      expect(() => batch.step([])).toThrow(/1 to 1 rows/)
      expect(() => batch.step([{ model: other, inSlot: 0 }])).toThrow(/share its weights/)
    } finally {
      batch.destroy()
      other.destroy()
    }
  })
})
