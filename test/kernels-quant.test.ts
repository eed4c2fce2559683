// attn_decode's QUANT variant (dequantization fused into the decode attention) against the
// CPU reference: softmax attention over the keys and values that kv/quant.ts dequantizes.
// The pool holds fp16 tail blocks, then quantized slots holding int8 and int4 chunks (one
// with a partial last block); the entries mix both kinds in a shuffled order.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { blockWords, chunkBytesAt, dequantizeChunk, type KvShape, quantizeChunk } from "../kv/quant.ts"
import { expectClose, KernelRig, randomHalf, rng, shuffled, uniformF32 } from "./kernel-rig.ts"

let rig: KernelRig

beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})

afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

/** Softmax attention of one query (H, D) over rows of keys and values (tokens, KV, D). */
const cpuAttention = (G: number, KV: number, D: number, q: Float32Array, k: number[][], v: number[][]): Float32Array => {
  const out = new Float32Array(G * KV * D)
  for (let h = 0; h < G * KV; h++) {
    const kvh = Math.floor(h / G)
    const scores = k.map((row) => {
      let s = 0
      for (let c = 0; c < D; c++) s += q[h * D + c] * row[kvh * D + c]
      return s / Math.sqrt(D)
    })
    const mx = Math.max(...scores)
    const w = scores.map((s) => Math.exp(s - mx))
    const den = w.reduce((a, b) => a + b, 0)
    for (let c = 0; c < D; c++) out[h * D + c] = w.reduce((a, wi, i) => a + wi * v[i][kvh * D + c], 0) / den
  }
  return out
}

describe("attn_decode QUANT (fused int8/int4 dequantization)", () => {
  it.each([
    [3, 2, 64, 8],
    [1, 1, 32, 4],
  ])("G %i, KV %i, D %i, slots of %i bits: fp16 tail blocks and quantized chunks in one list", async (G, KV, D, slotBits) => {
    const BS = 16
    const s: KvShape = { kvHeads: KV, blockTokens: BS, headDim: D }
    const rand = rng(G * 100 + D)
    const H = G * KV
    const blockHalves = KV * BS * D
    const tailBlocks = 3
    const slotBlocks = 2
    // Chunks: (tokens, bits) in slots 0.. of `slotBits` (a 4-bit chunk fits a slot of 8).
    const chunks: Array<{ tokens: number; bits: 8 | 4 }> = slotBits === 8 ? [{ tokens: 32, bits: 8 }, { tokens: 32, bits: 4 }, { tokens: 20, bits: 8 }] : [{ tokens: 32, bits: 4 }, { tokens: 20, bits: 4 }]
    const w = blockWords(s, slotBits as 8 | 4)
    const kSlotWords = slotBlocks * w.k
    const vSlotWords = slotBlocks * w.v
    const qbase = (tailBlocks * blockHalves) / 2
    const kpool = new Uint32Array(qbase + chunks.length * kSlotWords)
    const vpool = new Uint32Array(qbase + chunks.length * vSlotWords)
    // The fp16 tail: random blocks.
    const tailK = randomHalf(rand, tailBlocks * blockHalves, 1.5)
    const tailV = randomHalf(rand, tailBlocks * blockHalves, 1)
    kpool.set(new Uint32Array(tailK.bits.buffer, 0, qbase))
    vpool.set(new Uint32Array(tailV.bits.buffer, 0, qbase))
    // Rows of every token that an entry covers: [entry] -> (tokens of it) rows of (KV, D).
    const entries: number[] = []
    const rows: Array<{ k: number[][]; v: number[][] }> = []
    const tokensOfTail = [16, 16, 7]
    for (let b = 0; b < tailBlocks; b++) {
      entries.push(b, tokensOfTail[b])
      const at = (x: Float32Array, t: number) => Array.from({ length: KV * D }, (_, i) => x[((b * KV + Math.floor(i / D)) * BS + t) * D + (i % D)])
      rows.push({ k: Array.from({ length: tokensOfTail[b] }, (_, t) => at(tailK.values, t)), v: Array.from({ length: tokensOfTail[b] }, (_, t) => at(tailV.values, t)) })
    }
    chunks.forEach((c, slot) => {
      const nb = Math.ceil(c.tokens / BS)
      const f16 = randomHalf(rand, 2 * nb * blockHalves, 1.5)
      // Zero the padding of a partial block, as the tail's unused slots would be copied.
      const q = quantizeChunk(new Uint8Array(f16.bits.buffer, 0, chunkBytesAt(s, c.tokens, 16)), s, c.tokens, c.bits)
      const words = new Uint32Array(q.buffer)
      const cw = blockWords(s, c.bits)
      kpool.set(words.subarray(0, nb * cw.k), qbase + slot * kSlotWords)
      vpool.set(words.subarray(nb * cw.k), qbase + slot * vSlotWords)
      const d = dequantizeChunk(q, s, c.tokens, c.bits)
      for (let b = 0; b < nb; b++) {
        const tokens = Math.min(BS, c.tokens - b * BS)
        entries.push(slot * slotBlocks + b, tokens | (c.bits << 16))
        const at = (x: Float32Array, t: number) => Array.from({ length: KV * D }, (_, i) => x[((b * KV + Math.floor(i / D)) * BS + t) * D + (i % D)])
        rows.push({ k: Array.from({ length: tokens }, (_, t) => at(d.k, t)), v: Array.from({ length: tokens }, (_, t) => at(d.v, t)) })
      }
    })
    // A shuffled list; its rows in the same order for the reference.
    const order = shuffled(rand, Array.from({ length: rows.length }, (_, i) => i))
    const list = order.flatMap((i) => [entries[2 * i], entries[2 * i + 1]])
    const q = uniformF32(rand, H * D, 1)
    const EPS = 256 / BS // one tile per split: several splits over the list
    const S = Math.ceil(order.length / EPS)
    const partO = rig.output(H * S * D * 4)
    const partML = rig.output(H * S * 8)
    const out = rig.output(H * D * 4)
    await rig.run(
      { op: "attn_decode", flags: { QUANT: true, V16: D % 32 === 0 }, constants: { G, D } },
      { layout: "uuuuufuuuuuu", values: [H, KV, BS, EPS, S, 1 / Math.sqrt(D), 0, 0, qbase, slotBlocks, kSlotWords, vSlotWords] },
      { 1: rig.input(q), 2: rig.input(kpool), 3: rig.input(vpool), 4: rig.input(Uint32Array.from(list)), 5: rig.input(Uint32Array.of(0, order.length)), 6: partO, 7: partML },
      [S, KV, 1],
    )
    await rig.run({ op: "attn_combine" }, { layout: "uuuu", values: [H, S, D] }, { 1: partO, 2: partML, 3: out }, [H, 1])
    const k = order.flatMap((i) => rows[i].k)
    const v = order.flatMap((i) => rows[i].v)
    const want = cpuAttention(G, KV, D, q, k, v)
    const got = await rig.f32(out, H * D)
    // The same dequantized values (f32 fma on the GPU: one rounding apart) and f32 sums in another order.
    expectClose(got, want, { abs: 2e-4, rel: 2e-4 }, "quantized attention")
    expect(k.length).toBe(16 + 16 + 7 + chunks.reduce((a, c) => a + c.tokens, 0))
  })
})
