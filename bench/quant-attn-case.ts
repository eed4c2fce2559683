// A small decode-attention case over a mixed block list and its CPU reference, shared by
// test/kernels-quant.test.ts and bench/attn-decode-quant.ts (its correctness check): pools
// holding fp16 tail blocks, then quantized slots of int8 and int4 chunks (kv/quant.ts's
// quantizer on the CPU, a partial last block included); a shuffled entry list mixing both
// kinds; and softmax attention over the keys and values kv/quant.ts dequantizes (the result
// attn_decode's QUANT variant and attn_combine must give, within f32 rounding).
import { blockWords, chunkBytesAt, dequantizeChunk, type KvShape, quantizeChunk } from "../kv/quant.ts"
import { f16ToF32, f32ToF16Bits } from "../models/half.ts"
import { mulberry32 } from "../engine/seeded.ts"

/** mulberry32: a seeded uniform [0, 1) generator. */
const rng = mulberry32

/** n f16 values uniform in [-amp, amp): bits (padded to an even count) and exact values. */
const randomHalf = (rand: () => number, n: number, amp: number) => {
  const bits = new Uint16Array(n + (n % 2))
  const values = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    bits[i] = f32ToF16Bits((rand() * 2 - 1) * amp)
    values[i] = f16ToF32(bits[i]!)
  }
  return { bits, values }
}

/** Softmax attention of one query (H, D) over rows of keys and values (tokens, KV, D). */
export const cpuAttention = (G: number, KV: number, D: number, q: Float32Array, k: number[][], v: number[][]): Float32Array => {
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

export interface QuantAttnCase {
  readonly H: number
  readonly KV: number
  readonly D: number
  /** Pools as attn_decode binds them: fp16 tail blocks from word 0, quantized slots from word qbase. */
  readonly kpool: Uint32Array
  readonly vpool: Uint32Array
  /** (physical block or slot block, tokens | bits << 16) pairs, shuffled. */
  readonly list: Uint32Array
  readonly entries: number
  readonly q: Float32Array
  readonly qbase: number
  readonly slotBlocks: number
  readonly kSlotWords: number
  readonly vSlotWords: number
  /** Tokens the list covers. */
  readonly tokens: number
  /** The CPU reference: (H, D) attention output. */
  readonly want: Float32Array
}

/**
 * The case at G query heads per kv head, KV heads, head dim D, 16-token blocks: 3 fp16 tail
 * blocks (16 + 16 + 7 tokens), then slots of `slotBits` holding chunks of 32, 32 and 20 tokens
 * (int8, int4, int8 in int8 slots; int4 in int4 slots: a 4-bit chunk fits a slot of 8).
 */
export const quantAttnCase = (G: number, KV: number, D: number, slotBits: 8 | 4, seed = G * 100 + D): QuantAttnCase => {
  const BS = 16
  const s: KvShape = { kvHeads: KV, blockTokens: BS, headDim: D }
  const rand = rng(seed)
  const H = G * KV
  const blockHalves = KV * BS * D
  const tailBlocks = 3
  const slotBlocks = 2
  const chunks: Array<{ tokens: number; bits: 8 | 4 }> = slotBits === 8 ? [{ tokens: 32, bits: 8 }, { tokens: 32, bits: 4 }, { tokens: 20, bits: 8 }] : [{ tokens: 32, bits: 4 }, { tokens: 20, bits: 4 }]
  const w = blockWords(s, slotBits)
  const kSlotWords = slotBlocks * w.k
  const vSlotWords = slotBlocks * w.v
  const qbase = (tailBlocks * blockHalves) / 2
  const kpool = new Uint32Array(qbase + chunks.length * kSlotWords)
  const vpool = new Uint32Array(qbase + chunks.length * vSlotWords)
  const tailK = randomHalf(rand, tailBlocks * blockHalves, 1.5)
  const tailV = randomHalf(rand, tailBlocks * blockHalves, 1)
  kpool.set(new Uint32Array(tailK.bits.buffer, 0, qbase))
  vpool.set(new Uint32Array(tailV.bits.buffer, 0, qbase))
  // Rows of every token an entry covers: [entry] -> (its tokens) rows of (KV, D).
  const entries: number[] = []
  const rows: Array<{ k: number[][]; v: number[][] }> = []
  const rowsOf = (x: Float32Array, b: number, tokens: number) =>
    Array.from({ length: tokens }, (_, t) => Array.from({ length: KV * D }, (_, i) => x[((b * KV + Math.floor(i / D)) * BS + t) * D + (i % D)]))
  const tokensOfTail = [16, 16, 7]
  for (let b = 0; b < tailBlocks; b++) {
    entries.push(b, tokensOfTail[b])
    rows.push({ k: rowsOf(tailK.values, b, tokensOfTail[b]), v: rowsOf(tailV.values, b, tokensOfTail[b]) })
  }
  chunks.forEach((c, slot) => {
    const nb = Math.ceil(c.tokens / BS)
    const f16 = randomHalf(rand, 2 * nb * blockHalves, 1.5)
    const q = quantizeChunk(new Uint8Array(f16.bits.buffer, 0, chunkBytesAt(s, c.tokens, 16)), s, c.tokens, c.bits)
    const words = new Uint32Array(q.buffer)
    const cw = blockWords(s, c.bits)
    kpool.set(words.subarray(0, nb * cw.k), qbase + slot * kSlotWords)
    vpool.set(words.subarray(nb * cw.k), qbase + slot * vSlotWords)
    const d = dequantizeChunk(q, s, c.tokens, c.bits)
    for (let b = 0; b < nb; b++) {
      const tokens = Math.min(BS, c.tokens - b * BS)
      entries.push(slot * slotBlocks + b, tokens | (c.bits << 16))
      rows.push({ k: rowsOf(d.k, b, tokens), v: rowsOf(d.v, b, tokens) })
    }
  })
  // A shuffled list; its rows in the same order for the reference.
  const order = Array.from({ length: rows.length }, (_, i) => i)
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[order[i], order[j]] = [order[j]!, order[i]!]
  }
  const list = Uint32Array.from(order.flatMap((i) => [entries[2 * i], entries[2 * i + 1]]))
  const q = Float32Array.from({ length: H * D }, () => rand() * 2 - 1)
  const k = order.flatMap((i) => rows[i].k)
  const v = order.flatMap((i) => rows[i].v)
  return { H, KV, D, kpool, vpool, list, entries: order.length, q, qbase, slotBlocks, kSlotWords, vSlotWords, tokens: k.length, want: cpuAttention(G, KV, D, q, k, v) }
}
