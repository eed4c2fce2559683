// Token choice for all rows of a decode batch in one pass (engine/batch-sampling.ts) on the
// bundled model (lavapipe): greedy rows and Gumbel rows with their own temperature and seed get
// the ids they get alone (generate), whatever their batch-mates and row order; the tokens of
// all rows come back in one read, the rows' next inputs from the host or in place in the batch;
// through the serving loop (engine/batch-loop.ts), top-k and top-p rows too, their candidates
// read with the batch's tokens.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { DecodeBatch } from "../engine/batch.ts"
import { BatchLoop } from "../engine/batch-loop.ts"
import { generate, type GenerateOptions } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { readBack } from "../engine/buffers.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"

const modelDir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const TOKENS = 6

let gpu: Gpu
let lead: GpuModel

beforeAll(async () => {
  gpu = await acquireGpu()
  lead = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 64 })
})

afterAll(async () => {
  lead?.destroy()
  await releaseGpu()
})

interface Seq {
  readonly prompt: ReadonlyArray<number>
  readonly options: GenerateOptions
}

const seqs: ReadonlyArray<Seq> = [
  { prompt: [1, 17, 305, 42, 9, 1200, 77], options: { maxTokens: TOKENS, temperature: 0 } },
  { prompt: [1, 500, 8, 8, 91, 33], options: { maxTokens: TOKENS, temperature: 0.8, seed: 3 } },
  { prompt: [1, 2000, 64, 7, 7, 7, 310, 12, 5], options: { maxTokens: TOKENS, temperature: 1.3, seed: 7 } },
  { prompt: [1, 500, 8, 8, 91, 33], options: { maxTokens: TOKENS, temperature: 0.8, seed: 4 } },
]

const params = (s: Seq, step: number) => ({ outSlot: step, temperature: s.options.temperature, seed: s.options.seed ?? 0, step })

/**
 * `order` (indices into seqs) through one batch: each prefilled and its first token chosen
 * alone, then TOKENS - 1 batch steps; with `onHost` the tokens come back through readTokens
 * and go in again as each row's `token`, else through the models' tokenIds.
 */
const batched = async (models: ReadonlyArray<GpuModel>, order: ReadonlyArray<number>, onHost: boolean): Promise<number[][]> => {
  const batch = new DecodeBatch(lead, order.length, "gemv")
  try {
    const ids: number[][] = order.map(() => [])
    for (const [b, i] of order.entries()) {
      const model = models[b]!
      model.reset()
      await model.prefill(seqs[i]!.prompt)
      model.sample(params(seqs[i]!, 0))
      ids[b]!.push(new Uint32Array(await readBack(gpu.device, model.tokenIds, 0, 4))[0]!)
    }
    for (let k = 1; k < TOKENS; k++) {
      await batch.step(order.map((i, b) => ({ model: models[b]!, inSlot: k - 1, sample: params(seqs[i]!, k), ...(onHost ? { token: ids[b]![k - 1], idsOnHost: true } : {}) })))
      if (onHost) for (const [b, id] of (await batch.readTokens()).entries()) ids[b]!.push(id)
    }
    if (!onHost) return Promise.all(models.slice(0, order.length).map(async (m) => [...new Uint32Array(await readBack(gpu.device, m.tokenIds, 0, TOKENS * 4))]))
    return ids
  } finally {
    batch.destroy()
  }
}

describe("sampling every row of a batch in one pass", () => {
  it("gives greedy and seeded rows the ids they get alone, in any order and company, read back once a step", async () => {
    const models = await Promise.all(seqs.map(() => lead.sibling({ maxContext: 64 })))
    try {
      const alone: number[][] = []
      for (const [i, s] of seqs.entries()) alone.push((await generate(models[i]!, s.prompt, s.options)).ids)
      // Rows 1 and 3 differ only in their seed: their streams are their own.
      expect(alone[1]).not.toEqual(alone[3])
      for (const onHost of [true, false]) {
        const all = await batched(models, [0, 1, 2, 3], onHost)
        expect(all, `all rows, tokens ${onHost ? "read together" : "in tokenIds"}`).toEqual(alone)
      }
      // Other company and order: the same ids per sequence.
      const some = await batched(models, [3, 2, 1], true)
      expect(some).toEqual([alone[3], alone[2], alone[1]])
    } finally {
      for (const m of models) m.destroy()
    }
  }, 120_000)

  it("through the loop, top-k and top-p rows beside them get their alone ids, their candidates read with the batch's tokens", async () => {
    const jobs: ReadonlyArray<Seq> = [
      seqs[0]!,
      seqs[1]!,
      { prompt: [1, 17, 305, 42, 9, 1200, 77], options: { maxTokens: TOKENS, temperature: 0.9, topK: 20, seed: 5 } },
      { prompt: [1, 2000, 64, 7, 7, 7, 310, 12, 5], options: { maxTokens: TOKENS, temperature: 1.1, topP: 0.9, seed: 6 } },
      { prompt: [1, 500, 8, 8, 91, 33], options: { maxTokens: TOKENS, temperature: 0.7, topK: 40, topP: 0.8, seed: 8 } },
    ]
    const models = await Promise.all(jobs.map(() => lead.sibling({ maxContext: 64 })))
    const loop = new BatchLoop(lead, { capacity: jobs.length, prefillSlice: 64 })
    try {
      const alone: number[][] = []
      for (const [i, j] of jobs.entries()) alone.push((await generate(models[i]!, j.prompt, j.options)).ids)
      // Reads of candidates through a model's own buffers: its first token, and steps it takes alone.
      const ownReads = models.map(() => 0)
      models.forEach((m, i) => {
        const own = m.topCandidates.bind(m)
        m.topCandidates = (count, temperature) => {
          ownReads[i]!++
          return own(count, temperature)
        }
      })
      const got = await Promise.all(jobs.map((j, i) => loop.generate(models[i]!, j.prompt, j.options)))
      expect(got.map((r) => r.ids)).toEqual(alone)
      // The host-sampled rows took most of their steps in the batch, their candidates read with it.
      for (const i of [2, 3, 4]) expect(ownReads[i], `row ${i}`).toBeLessThan(TOKENS - 2)
    } finally {
      loop.destroy()
      for (const m of models) m.destroy()
    }
  }, 120_000)

  it("reads every host-sampled row's candidates and softmax mass as its model reads them alone", async () => {
    const models = await Promise.all([0, 1, 2].map(() => lead.sibling({ maxContext: 64 })))
    const batch = new DecodeBatch(lead, 3, "gemv")
    try {
      for (const [i, m] of models.entries()) {
        await m.prefill(seqs[i]!.prompt)
        m.writeToken(0, 100 + i)
      }
      const asked = [
        { count: 20, temperature: 0.9 },
        { count: 1024, temperature: 1.3 },
        { count: 1, temperature: 2 },
      ]
      await batch.step(models.map((model, i) => ({ model, inSlot: 0, candidates: asked[i]!, logits: true })))
      const read = await batch.readStep()
      for (const [i, m] of models.entries()) {
        const alone = await m.topCandidates(asked[i]!.count, asked[i]!.temperature)
        const got = read.candidates.get(i)!
        const byId = (c: typeof alone) => [...c.ids].map((id, k) => [id, c.logits[k]!] as const).sort((a, b) => a[0] - b[0])
        expect(byId(got), `row ${i}: candidates`).toEqual(byId(alone))
        expect([got.max, got.sumExp], `row ${i}: softmax mass`).toEqual([alone.max, alone.sumExp])
        expect(await batch.rowLogits(i)).toEqual(await m.readLogits())
      }
    } finally {
      batch.destroy()
      for (const m of models) m.destroy()
    }
  }, 60_000)

  it("through the loop, steps run ahead of their read give the ids alone, also to a row that stops while one is in flight", async () => {
    const jobs = [seqs[0]!, seqs[1]!, seqs[2]!]
    const models = await Promise.all(jobs.map(() => lead.sibling({ maxContext: 64 })))
    try {
      const alone: number[][] = []
      for (const [i, j] of jobs.entries()) alone.push((await generate(models[i]!, j.prompt, { ...j.options, maxTokens: 10 })).ids)
      // Row 1 stops at its fourth token: the step after it is in flight by then.
      const options = jobs.map((j, i) => ({ ...j.options, maxTokens: 10, ...(i === 1 ? { stopIds: [alone[1]![3]!] } : {}) }))
      const want = alone.map((ids, i) => (i === 1 ? ids.slice(0, ids.indexOf(alone[1]![3]!) + 1) : ids))
      for (const overlap of [true, false]) {
        const loop = new BatchLoop(lead, { capacity: 3, prefillSlice: 64, overlap })
        try {
          const got = await Promise.all(jobs.map((j, i) => loop.generate(models[i]!, j.prompt, options[i]!)))
          expect(got.map((r) => r.ids), `overlap ${overlap}`).toEqual(want)
          // Each cache holds what was returned, not the step run past a stop.
          for (const [i, r] of got.entries()) expect(models[i]!.length).toBe(jobs[i]!.prompt.length + r.ids.length - 1)
          if (overlap) expect(loop.stepsAhead).toBeGreaterThan(0)
          else expect(loop.stepsAhead).toBe(0)
        } finally {
          loop.destroy()
        }
      }
    } finally {
      for (const m of models) m.destroy()
    }
  }, 120_000)
})
