// kv/quant.ts (the CPU reference of int8/int4 KV chunks) with exact words on a tiny chunk,
// error bounds on random ones, conversions; kv/quant-policy.ts's importance rule; and a
// round trip of mixed-bit chunks through LocalTierIo (host arena, then disk after eviction).
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { chunkBytesAt, convertChunk, dequantizeChunk, floatToHalf, halfToFloat, type KvBits, type KvShape, quantizeChunk } from "../kv/quant.ts"
import { abstractBound, COLD_BITS, HOT_BITS, SealBits } from "../kv/quant-policy.ts"
import { KvTierError } from "../kv/tier-errors.ts"
import { LocalTierIo } from "../kv/tier-io.ts"
import { checkPolicyChange, KvLayoutChange, quantSlots, type TieredPolicy } from "../engine/kv/tiered/layout.ts"
import { evictionPolicies } from "../kv/eviction.ts"
import { parsePolicy, PolicyError } from "../protocol/policy.ts"

/** An fp16 chunk (K then V, (nb, KV, BS, D)) from f32 arrays of the same shape. */
const f16Chunk = (k: ArrayLike<number>, v: ArrayLike<number>): Uint8Array => {
  const h = new Uint16Array(k.length * 2)
  for (let i = 0; i < k.length; i++) {
    h[i] = floatToHalf(k[i])
    h[k.length + i] = floatToHalf(v[i])
  }
  return new Uint8Array(h.buffer)
}

const random = (seed: number) => () => {
  seed = (seed * 1664525 + 1013904223) >>> 0
  return seed / 2 ** 32
}

describe("quantizeChunk / dequantizeChunk", () => {
  it("lays out a tiny int4 chunk exactly (keys per channel, values per token)", () => {
    const s: KvShape = { kvHeads: 1, blockTokens: 2, headDim: 8 }
    // (t, c): channel 0 spans 0..15 (scale 1), channel 1 is constant, channel 2 spans -1..2, channel 7 3..3.5.
    const k = [0, 1, -1, 0, 0, 0, 0, 3, 15, 1, 2, 0, 0, 0, 0, 3.5]
    const v = [0, 15, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2]
    const q = quantizeChunk(f16Chunk(k, v), s, 2, 4)
    expect(q.length).toBe(chunkBytesAt(s, 2, 4))
    const words = Array.from(new Uint32Array(q.buffer, q.byteOffset, q.length / 4))
    expect(words).toEqual([
      // K codes (t0, t1), then (scale, min) f16 pairs per channel
      0, 0xf0000f0f, 0x00003c00, 0x3c000000, 0xbc003266, 0, 0, 0, 0, 0x42002844,
      // V codes (t0, t1), then (scale, min) per token
      0xf0, 0, 0x00003c00, 0x40000000,
    ])
    const d = dequantizeChunk(q, s, 2, 4)
    expect(Array.from(d.k)).toEqual([0, 1, -1, 0, 0, 0, 0, 3, 15, 1, 1.999267578125, 0, 0, 0, 0, 3 + 15 * halfToFloat(0x2844)])
    expect(Array.from(d.v)).toEqual(v)
  })

  it("pads a partial last block with code 0 and leaves it out of the key ranges", () => {
    const s: KvShape = { kvHeads: 1, blockTokens: 2, headDim: 8 }
    const k = [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]
    const q = quantizeChunk(f16Chunk(k, k), s, 1, 8)
    const d = dequantizeChunk(q, s, 1, 8)
    // One token: every key channel is constant (scale 0, min = the value), exact.
    expect(Array.from(d.k)).toEqual(k)
    expect(Array.from(d.v.subarray(8))).toEqual(new Array(8).fill(0))
  })

  it.each([8, 4] as const)("keeps every value within half a step of its group at %i bits (random chunk, 2 blocks, GQA shape)", (bits) => {
    const s: KvShape = { kvHeads: 2, blockTokens: 16, headDim: 64 }
    const n = 2 * 2 * 16 * 64
    const rnd = random(bits)
    const k = Float32Array.from({ length: n }, () => halfToFloat(floatToHalf((rnd() - 0.5) * 8)))
    const v = Float32Array.from({ length: n }, () => halfToFloat(floatToHalf((rnd() - 0.5) * 2)))
    const q = quantizeChunk(f16Chunk(k, v), s, 32, bits)
    expect(q.length).toBe(chunkBytesAt(s, 32, bits))
    expect(q.length).toBeLessThan(chunkBytesAt(s, 32, 16) * (bits === 8 ? 0.6 : 0.36))
    const d = dequantizeChunk(q, s, 32, bits)
    const qmax = (1 << bits) - 1
    let kErr = 0
    let vErr = 0
    for (let i = 0; i < n; i++) {
      kErr = Math.max(kErr, Math.abs(d.k[i] - k[i]))
      vErr = Math.max(vErr, Math.abs(d.v[i] - v[i]))
    }
    // Ranges are at most 8 (keys) and 2 (values); the f16 scale and min add ~0.1 %.
    expect(kErr).toBeLessThanOrEqual((8 / qmax) * 0.5 * 1.02 + 1e-3)
    expect(vErr).toBeLessThanOrEqual((2 / qmax) * 0.5 * 1.02 + 1e-3)
    expect(kErr).toBeGreaterThan(0)
  })

  it("converts int4 to int8 without loss and fp16 both ways", () => {
    const s: KvShape = { kvHeads: 1, blockTokens: 16, headDim: 32 }
    const rnd = random(7)
    const n = 16 * 32
    const f16 = f16Chunk(Float32Array.from({ length: n }, () => rnd() * 4 - 2), Float32Array.from({ length: n }, () => rnd() - 0.5))
    const q4 = convertChunk(f16, s, 16, 16, 4)
    const q8 = convertChunk(q4, s, 16, 4, 8)
    expect(Array.from(dequantizeChunk(q8, s, 16, 8).k)).toEqual(Array.from(dequantizeChunk(q4, s, 16, 4).k))
    const back = convertChunk(q8, s, 16, 8, 16)
    expect(back.length).toBe(f16.length)
    expect(Array.from(dequantizeChunk(back, s, 16, 16).v)).toEqual(Array.from(dequantizeChunk(q8, s, 16, 8).v).map((x) => halfToFloat(floatToHalf(x))))
    expect(() => quantizeChunk(f16.subarray(2), s, 16, 8)).toThrow(RangeError)
  })
})

describe("SealBits (compression: importance)", () => {
  const abstractOf = (x: number) => new Uint8Array(Uint16Array.from([floatToHalf(-x), floatToHalf(x / 2), floatToHalf(x / 2), floatToHalf(x)]).buffer)

  it("keeps the sink and chunks at or above their layer's median bound at int8, the rest at int4", () => {
    expect(abstractBound(abstractOf(2))).toBe(4)
    const b = new SealBits()
    // Layer 0: bounds 4 (first: hot), 2 (below 4: cold), 8 (hot), 1 (median of [2,4,8] is 4: cold), 6 (median of [1,2,4,8] is 2: hot).
    const got = [2, 1, 4, 0.5, 3].map((x, i) => b.bitsFor("importance", 0, 32 + i * 32, 32, abstractOf(x)))
    expect(got).toEqual([HOT_BITS, COLD_BITS, HOT_BITS, COLD_BITS, HOT_BITS])
    // The sink is hot whatever its bound; layers keep their own medians; fixed settings are what they say.
    expect(b.bitsFor("importance", 0, 0, 32, abstractOf(0))).toBe(HOT_BITS)
    expect(b.bitsFor("importance", 1, 64, 32, abstractOf(0))).toBe(HOT_BITS)
    expect(b.bitsFor(4, 0, 64, 32, abstractOf(100))).toBe(4)
    b.reset()
    expect(b.bitsFor("importance", 0, 64, 32, abstractOf(0))).toBe(HOT_BITS)
  })
})

describe("compression in the policy document", () => {
  it("takes bits 16, 8, 4 or importance for tiered policies, 16 by default; refuses anything else with invalid_policy", () => {
    expect(parsePolicy("leoam").compression).toBe(16)
    expect(parsePolicy({ name: "leoam", compression: { bits: 4 } }).compression).toBe(4)
    expect(parsePolicy({ name: "offload-all", compression: { bits: "importance" } }).compression).toBe("importance")
    expect(parsePolicy({ name: "quest", compression: { bits: 16 } }).compression).toBe(16)
    const code = (doc: unknown) => {
      try {
        parsePolicy(doc)
        return undefined
      } catch (e) {
        return e instanceof PolicyError ? e.code : String(e)
      }
    }
    expect(code({ name: "leoam", compression: { bits: 3 } })).toBe("invalid_policy")
    expect(code({ name: "leoam", compression: { bits: 8, group: 32 } })).toBe("invalid_policy")
    expect(code({ name: "leoam", compression: {} })).toBe("invalid_policy")
    expect(code({ name: "quest", compression: { bits: 8 } })).toBe("invalid_policy")
  })
})

describe("compressed GPU slots (layout)", () => {
  const policy = (compression: TieredPolicy["compression"]): TieredPolicy => ({
    mode: "leoam",
    chunkTokens: 32,
    budgetFraction: 0.1,
    sinkTokens: 32,
    recentTokens: 64,
    gpuEviction: evictionPolicies.lru,
    hostEviction: evictionPolicies.lru,
    compression,
  })
  // Llama-3.1-8B shapes: a 32-token chunk is 2 blocks of (8, 16, 128) per K and V.
  const s: KvShape = { kvHeads: 8, blockTokens: 16, headDim: 128 }
  const g = { slotBlocks: 2, cacheSlots: 100, tailBlocks: 10, maxChunks: 4096 }

  it("counts decode's slots from the compressed size: 1.6x the fp16 slots at int8, 2.67x at int4", () => {
    expect(quantSlots(policy(16), s, g)).toBeUndefined()
    const q8 = quantSlots(policy(8), s, g)!
    expect(q8).toMatchObject({ bits: 8, slots: 160, kSlotWords: 2 * (8 * 16 * 128 / 4 + 8 * 128), qbase: (10 * 8 * 16 * 128 * 2) / 4 })
    expect(quantSlots(policy("importance"), s, g)!.slots).toBe(160)
    expect(quantSlots(policy(4), s, g)!.slots).toBe(266)
    expect(quantSlots(policy(4), s, { ...g, maxChunks: 120 })!.slots).toBe(120)
  })

  it("a change of the slot bits is a new layout; within them the next step", () => {
    expect(() => checkPolicyChange(policy(8), policy("importance"), 10)).not.toThrow()
    expect(() => checkPolicyChange(policy(16), policy(8), 10)).toThrow(KvLayoutChange)
    expect(() => checkPolicyChange(policy(8), policy(4), 10)).toThrow(KvLayoutChange)
    expect(() => checkPolicyChange(policy(undefined), policy(16), 10)).not.toThrow()
  })
})

describe("LocalTierIo with quantized chunks", () => {
  const temps: string[] = []
  const stores: DiskStore[] = []
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close()
    for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
  })

  it("stores mixed bits, reads each back at its own bits from the host arena and, after eviction, from disk", async () => {
    const s: KvShape = { kvHeads: 1, blockTokens: 16, headDim: 32 }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-quant-"))
    temps.push(dir)
    const store = DiskStore.open({ kvDir: path.join(dir, "kv") })
    stores.push(store)
    const f16Bytes = chunkBytesAt(s, 32, 16)
    const arena = new HostArena({ budgetBytes: 2 * f16Bytes, evictAheadBytes: 0 })
    const io = new LocalTierIo(arena, store, "doc", s)
    const rnd = random(3)
    const n = 2 * 16 * 32
    const chunks = ([16, 8, 4, 8, 4] as KvBits[]).map((bits, chunk) => ({
      layer: 0,
      chunk,
      tokens: 32,
      bits,
      kv: f16Chunk(Float32Array.from({ length: n }, () => rnd() - 0.5), Float32Array.from({ length: n }, () => rnd() - 0.5)),
      abstract: new Uint8Array(8),
    }))
    // Seals arrive at their bits (the GPU quantizes them); here the CPU reference does.
    const written = await io.storeSealed(chunks.map((c) => ({ ...c, kv: c.bits === 16 ? c.kv : quantizeChunk(c.kv, s, 32, c.bits as 8 | 4) })))
    expect(written).toBe(chunks.reduce((a, c) => a + chunkBytesAt(s, 32, c.bits), 0))
    expect(store.chunksOf("doc", 0).map((c) => c.entry.dtype)).toEqual(["f16", "int8", "int4", "int8", "int4"])
    const expected = chunks.map((c) => (c.bits === 16 ? c.kv : quantizeChunk(c.kv, s, 32, c.bits as 8 | 4)))
    const staged: Array<{ chunk: number; bits: KvBits; bytes: Uint8Array }> = []
    const loads = chunks.map((c) => ({
      layer: 0,
      chunk: c.chunk,
      bytes: f16Bytes,
      tokens: 32,
      stage: async (src: Uint8Array, bits: KvBits) => void staged.push({ chunk: c.chunk, bits, bytes: src.slice() }),
    }))
    // The arena (two fp16 chunks' bytes) holds the last seals; the first ones come from disk.
    const tiers = await io.load(loads, false)
    expect(tiers[0]).toBe("disk")
    expect(tiers[4]).toBe("host")
    expect(staged.map((x) => x.bits)).toEqual([16, 8, 4, 8, 4])
    staged.forEach((x, i) => expect(x.bytes).toEqual(expected[i]))
    // A fresh TierIo (another process, a policy change since) reads the bits from LMDB.
    const io2 = new LocalTierIo(new HostArena({ budgetBytes: f16Bytes, evictAheadBytes: 0 }), store, "doc", s)
    const again: KvBits[] = []
    await io2.load(loads.map((l) => ({ ...l, stage: async (_src: Uint8Array, bits: KvBits) => void again.push(bits) })), true)
    expect(again).toEqual([16, 8, 4, 8, 4])
    // Without the tokens a quantized chunk cannot be sized: a coded error, not a wrong read.
    const err = await io2.load([{ layer: 0, chunk: 2, bytes: f16Bytes, stage: async () => {} }], false).then(() => undefined, (e: unknown) => e)
    expect(err).toBeInstanceOf(KvTierError)
    expect((err as KvTierError).code).toBe("chunk_corrupt")
  })
})
