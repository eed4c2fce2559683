// Batched attention (engine/batch-attention.ts): full-attention sequences whose KV blocks share
// one KvBlockStore decode through a DecodeBatch with one RoPE, attention and combine dispatch
// a layer for all rows. Each row, with its own length (one past a 256-token tile, so the rows'
// lists split differently), gets the CPU reference's greedy ids, and the logits it gets alone
// (GEMV projections: the same arithmetic, so equal) within the GPU's own distance from the
// CPU's; a row leaves mid-way and the others go on; the store gets every block back.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { DecodeBatch } from "../engine/batch.ts"
import { readBack, readF32 } from "../engine/buffers.ts"
import { argmax, CpuModel } from "../engine/cpu-reference.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { KvBlockStore } from "../engine/kv/block-store.ts"
import { KvPool } from "../engine/kv/pool.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"

const modelDir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const CONTEXT = 288

let gpu: Gpu
let lead: GpuModel
let cpu: CpuModel

beforeAll(async () => {
  gpu = await acquireGpu()
  lead = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 64 })
  cpu = CpuModel.load(openHfModel(modelDir))
})

afterAll(async () => {
  lead?.destroy()
  await releaseGpu()
})

/** Greedy ids of `prompt` on the CPU, and the logits that chose the last of them. */
const reference = (prompt: ReadonlyArray<number>, n: number): { ids: number[]; last: Float32Array } => {
  cpu.reset()
  const ids: number[] = []
  let logits = cpu.forward(prompt, 0, "last")
  for (let i = 0; ; i++) {
    ids.push(argmax(logits))
    if (i === n - 1) return { ids, last: logits }
    logits = cpu.forward([ids[i]!], prompt.length + i, "last")
  }
}

describe("batched attention over a shared KV block store", () => {
  it("gives every row the CPU reference's greedy ids and logits, as rows leave", async () => {
    const prompt = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 2 + ((i * 7919 + seed * 104729) % 4000))
    const seqs = [
      { prompt: prompt(9, 1), tokens: 5 },
      { prompt: prompt(262, 2), tokens: 5 }, // 267 tokens at the end: two 256-token splits
      { prompt: prompt(30, 3), tokens: 3 }, // leaves after its second batched step
    ]
    const store = new KvBlockStore(gpu.device, lead.config, lead.blockTokens, seqs.length * Math.ceil(CONTEXT / lead.blockTokens))
    const models = await Promise.all(seqs.map(() => lead.sibling({ maxContext: CONTEXT, kvBlocks: store })))
    const batch = new DecodeBatch(lead, seqs.length, "gemv")
    const greedy = (step: number) => ({ outSlot: step, temperature: 0, seed: 0, step })
    try {
      for (const [i, s] of seqs.entries()) {
        await models[i]!.prefill(s.prompt)
        models[i]!.sample(greedy(0))
      }
      const lastLogits: Float32Array[] = []
      for (let step = 1; step < 5; step++) {
        const rows = models.flatMap((model, i) => (step < seqs[i]!.tokens ? [{ model, inSlot: step - 1, sample: greedy(step), logits: true }] : []))
        await batch.step(rows)
        expect(batch.attendsTogether).toBe(true)
        for (const [i, model] of models.entries()) if (step === seqs[i]!.tokens - 1) lastLogits[i] = await readF32(gpu.device, model.logits)
      }
      const worst = (a: Float32Array, b: Float32Array) => a.reduce((w, v, k) => Math.max(w, Math.abs(v - b[k]!) / Math.max(1, Math.abs(v))), 0)
      for (const [i, s] of seqs.entries()) {
        const want = reference(s.prompt, s.tokens)
        const ids = [...new Uint32Array(await readBack(gpu.device, models[i]!.tokenIds, 0, s.tokens * 4))]
        expect(ids, `row ${i}`).toEqual(want.ids)
        const alone = await lead.sibling({ maxContext: CONTEXT })
        try {
          await alone.prefill(s.prompt)
          alone.sample(greedy(0))
          for (let step = 1; step < s.tokens; step++) await alone.decode(step - 1, greedy(step))
          const aloneLogits = await readF32(gpu.device, alone.logits)
          expect(worst(aloneLogits, lastLogits[i]!), `row ${i}: last logits against alone`).toBeLessThan(1e-6)
          // The GPU alone is ~2e-2 from the CPU on this model (f16 KV, large logits).
          expect(worst(want.last, lastLogits[i]!), `row ${i}: last logits against the CPU`).toBeLessThan(4e-2)
        } finally {
          alone.destroy()
        }
      }
    } finally {
      batch.destroy()
      for (const m of models) m.destroy()
    }
    expect(store.available).toBe(store.blocks)
    store.destroy()
  }, 60_000)

  it("hands each sequence's pool blocks of its own, takes them back on truncate and destroy, and refuses past its size", () => {
    const c = lead.config
    const store = new KvBlockStore(gpu.device, c, 16, 5)
    const a = new KvPool(gpu.device, c, 16, 64, store)
    const b = new KvPool(gpu.device, c, 16, 64, store)
    try {
      expect(a.layers).toBe(store.layers)
      for (let t = 0; t < 33; t++) a.append() // 3 blocks
      for (let t = 0; t < 20; t++) b.append() // 2 blocks
      expect(new Set([...a.blockList, ...b.blockList]).size).toBe(5)
      // b's 33rd token needs a sixth block.
      expect(() => {
        while (b.length < 33) b.append()
      }).toThrow("the shared KV store is full")
      expect(b.length).toBe(32)
      a.truncate(16)
      expect(store.available).toBe(2)
      // A pool's own limit still holds: 64 tokens are 4 blocks.
      b.reset()
      for (let t = 0; t < 64; t++) b.append()
      expect(() => b.append()).toThrow("KV pool is full")
    } finally {
      a.destroy()
      b.destroy()
    }
    expect(store.available).toBe(store.blocks)
    store.destroy()
  })
})
