// Group-wise quantization of KV chunks (KIVI: keys per channel, values per token), the CPU
// reference and the codec of the host and disk tiers. A chunk's bytes are either the GPU
// pools' fp16 layout ("f16") or this module's "int8"/"int4" layout; the dtype string goes
// with the bytes into LMDB (ChunkMeta.dtype), so a chunk stays readable whatever the
// policy says later. Pure functions, no state.
//
// Quantized layout (all u32 words, little-endian), for a chunk of nb = ceil(tokens / BS)
// blocks, KV heads, head dim D, b bits (PER = 32 / b codes per word), GV = min(32, D):
//   K part, per block:  codes  (KV, BS, D / PER) u32   code of channel c in word c / PER, bits (c % PER) * b
//                       params (KV, D) u32             pack2x16float(scale, min) per channel over the block's tokens
//   V part, per block:  codes  (KV, BS, D / PER) u32
//                       params (KV, BS, D / GV) u32    pack2x16float(scale, min) per token per group of GV channels
//   the K parts of all blocks, then the V parts (as the fp16 layout: K then V).
// x ~ code * scale + min, in f32 from the f16 scale and min; code = clamp(round((x - min) / scale), 0, 2^b - 1)
// with the f16-rounded scale and min. Token slots past the chunk's tokens in its last block
// have code 0 and (for values) scale = min = 0; they are left out of the key groups' range.

/** Bits of a stored chunk: fp16, int8 or int4. */
export type KvBits = 16 | 8 | 4

export interface KvShape {
  readonly kvHeads: number
  /** Tokens per block (the engine's 16). */
  readonly blockTokens: number
  readonly headDim: number
}

export const dtypeOfBits = (bits: KvBits): "f16" | "int8" | "int4" => (bits === 16 ? "f16" : bits === 8 ? "int8" : "int4")

/** The bits of a stored dtype, undefined for one this build cannot read. */
export const bitsOfDtype = (dtype: string): KvBits | undefined => (dtype === "f16" ? 16 : dtype === "int8" ? 8 : dtype === "int4" ? 4 : undefined)

/** Channels per value group. */
export const valueGroup = (s: KvShape): number => Math.min(32, s.headDim)

/** u32 words of one block's K part and V part at `bits` (< 16). */
export const blockWords = (s: KvShape, bits: 8 | 4): { readonly k: number; readonly v: number } => {
  const codes = (s.kvHeads * s.blockTokens * s.headDim * bits) / 32
  return { k: codes + s.kvHeads * s.headDim, v: codes + (s.kvHeads * s.blockTokens * s.headDim) / valueGroup(s) }
}

/** Bytes of a chunk of `tokens` tokens stored at `bits`. */
export const chunkBytesAt = (s: KvShape, tokens: number, bits: KvBits): number => {
  const nb = Math.ceil(tokens / s.blockTokens)
  if (bits === 16) return 2 * nb * s.kvHeads * s.blockTokens * s.headDim * 2
  const w = blockWords(s, bits)
  return nb * (w.k + w.v) * 4
}

/** Throws unless the shape can be quantized (D a multiple of 8, and of 32 above 32). */
export const checkQuantShape = (s: KvShape): void => {
  if (s.headDim % 8 !== 0 || s.headDim % valueGroup(s) !== 0) throw new RangeError(`KV quantization needs a head dim that is a multiple of 8 (and of 32 above 32), not ${s.headDim}`)
}

// --- f16 ------------------------------------------------------------------------------

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** f16 bits -> number (exact). */
export const halfToFloat = (h: number): number => halfTable()[h & 0xffff]

let table: Float32Array | undefined
/** Every f16 value as f32 (256 KiB, built on first use). */
const halfTable = (): Float32Array => {
  if (table) return table
  table = new Float32Array(65536)
  for (let h = 0; h < 65536; h++) table[h] = halfBitsToFloat(h)
  return table
}

const halfBitsToFloat = (h: number): number => {
  const exp = (h >>> 10) & 0x1f
  const mant = h & 0x3ff
  const sign = h & 0x8000 ? -1 : 1
  if (exp === 0) return sign * mant * 2 ** -24
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN
  return sign * (1024 + mant) * 2 ** (exp - 25)
}

/** number -> f16 bits, through f32, round to nearest even (finite inputs; overflow -> inf). */
export const floatToHalf = (x: number): number => {
  f32[0] = x
  const f = u32[0]
  const sign = (f >>> 16) & 0x8000
  const fExp = f & 0x7f800000
  if (fExp >= 0x47800000) return fExp === 0x7f800000 && (f & 0x7fffff) !== 0 ? sign | 0x7e00 : sign | 0x7c00
  if (fExp <= 0x38000000) {
    if (fExp < 0x33000000) return sign
    const e = fExp >>> 23
    let sig = (0x800000 + (f & 0x7fffff)) >>> (113 - e)
    if ((sig & 0x3fff) !== 0x1000 || (f & 0x7ff) !== 0) sig += 0x1000
    return sign | (sig >>> 13)
  }
  let sig = f & 0x7fffff
  if ((sig & 0x3fff) !== 0x1000) sig += 0x1000
  return sign | (((fExp - 0x38000000) >>> 13) + (sig >>> 13))
}

/** f16 rounding of a number (the value a pack2x16float/unpack2x16float round trip gives). */
export const roundHalf = (x: number): number => halfToFloat(floatToHalf(x))

const f32Round = (x: number): number => Math.fround(x)

// --- quantize / dequantize --------------------------------------------------------------

/** A value as the GPU computes it from a code: fma in f32 of the f16 scale and min. */
export const dequantValue = (code: number, scale: number, min: number): number => f32Round(f32Round(code * scale) + min)

/**
 * Quantizes an fp16 chunk (K then V, each (nb, KV, BS, D) f16, the GPU pools' layout) of
 * `tokens` tokens to `bits` in the layout above.
 */
export const quantizeChunk = (src: Uint8Array, s: KvShape, tokens: number, bits: 8 | 4): Uint8Array => {
  checkQuantShape(s)
  const { kvHeads: KV, blockTokens: BS, headDim: D } = s
  const nb = Math.ceil(tokens / BS)
  if (src.length !== chunkBytesAt(s, tokens, 16)) throw new RangeError(`quantizeChunk: ${src.length} bytes for ${tokens} tokens, want ${chunkBytesAt(s, tokens, 16)}`)
  const h = new Uint16Array(src.buffer, src.byteOffset, src.length / 2)
  const t16 = halfTable()
  const x = new Float32Array(h.length) // K then V, (nb, KV, BS, D)
  for (let i = 0; i < h.length; i++) x[i] = t16[h[i]]
  const w = blockWords(s, bits)
  const out = new Uint32Array(nb * (w.k + w.v))
  // Codes are or-ed in through a signed view: words past 2^31 stay small integers (no heap numbers).
  const codes = new Int32Array(out.buffer)
  const qmax = (1 << bits) - 1
  const per = 32 / bits
  const rowWords = D / per
  const GV = valueGroup(s)
  const half = nb * KV * BS * D // elements of the K part
  const codeWords = KV * BS * rowWords
  const lo = new Float64Array(D) // per channel: the range's low end, then the group's min
  const hi = new Float64Array(D) // per channel: the range's high end, then the group's scale
  const pack = (scale: number, min: number) => (floatToHalf(scale) | (floatToHalf(min) << 16)) >>> 0
  for (let b = 0; b < nb; b++) {
    const valid = Math.min(BS, tokens - b * BS)
    const kBase = b * w.k
    const vBase = nb * w.k + b * w.v
    for (let kv = 0; kv < KV; kv++) {
      const row0 = (b * KV + kv) * BS // first token row of this block and head
      // Keys: one group per channel over the block's tokens (rows read in order).
      lo.fill(Infinity)
      hi.fill(-Infinity)
      for (let t = 0; t < valid; t++) {
        const r = (row0 + t) * D
        for (let c = 0; c < D; c++) {
          const v = x[r + c]
          if (v < lo[c]) lo[c] = v
          if (v > hi[c]) hi[c] = v
        }
      }
      for (let c = 0; c < D; c++) {
        const scale = hi[c] > lo[c] ? roundHalf((hi[c] - lo[c]) / qmax) : 0
        const min = roundHalf(lo[c])
        out[kBase + codeWords + kv * D + c] = pack(scale, min)
        lo[c] = min
        hi[c] = scale
      }
      for (let t = 0; t < valid; t++) {
        const r = (row0 + t) * D
        const word0 = kBase + (kv * BS + t) * rowWords
        for (let c = 0; c < D; c++) {
          const scale = hi[c]
          if (scale === 0) continue
          const q = Math.max(0, Math.min(qmax, Math.round((x[r + c] - lo[c]) / scale)))
          codes[word0 + ((c / per) | 0)] |= q << ((c % per) * bits)
        }
      }
      // Values: one group per token and GV channels.
      for (let t = 0; t < valid; t++) {
        const r = half + (row0 + t) * D
        const word0 = vBase + (kv * BS + t) * rowWords
        for (let g0 = 0; g0 < D; g0 += GV) {
          let lo = Infinity
          let hi = -Infinity
          for (let c = g0; c < g0 + GV; c++) {
            const v = x[r + c]
            if (v < lo) lo = v
            if (v > hi) hi = v
          }
          const scale = hi > lo ? roundHalf((hi - lo) / qmax) : 0
          const min = roundHalf(lo)
          out[vBase + codeWords + (kv * BS + t) * (D / GV) + g0 / GV] = pack(scale, min)
          if (scale === 0) continue
            for (let c = g0; c < g0 + GV; c++) {
            const q = Math.max(0, Math.min(qmax, Math.round((x[r + c] - min) / scale)))
            codes[word0 + ((c / per) | 0)] |= q << ((c % per) * bits)
          }
        }
      }
    }
  }
  return new Uint8Array(out.buffer)
}

/**
 * Dequantizes a chunk stored at `bits` into f32 K and V, each (nb, KV, BS, D), padding slots 0
 * (the CPU reference of the fused attention, and the source of `toF16`).
 */
export const dequantizeChunk = (src: Uint8Array, s: KvShape, tokens: number, bits: KvBits): { readonly k: Float32Array; readonly v: Float32Array } => {
  const { kvHeads: KV, blockTokens: BS, headDim: D } = s
  const nb = Math.ceil(tokens / BS)
  const n = nb * KV * BS * D
  if (src.length !== chunkBytesAt(s, tokens, bits)) throw new RangeError(`dequantizeChunk: ${src.length} bytes for ${tokens} tokens at ${bits} bits, want ${chunkBytesAt(s, tokens, bits)}`)
  const k = new Float32Array(n)
  const v = new Float32Array(n)
  if (bits === 16) {
    const h = new Uint16Array(src.buffer, src.byteOffset, src.length / 2)
    for (let i = 0; i < n; i++) {
      k[i] = halfToFloat(h[i])
      v[i] = halfToFloat(h[n + i])
    }
    return { k, v }
  }
  const words = new Uint32Array(src.buffer, src.byteOffset, src.length / 4)
  const w = blockWords(s, bits)
  const per = 32 / bits
  const mask = (1 << bits) - 1
  const GV = valueGroup(s)
  const codeWords = KV * BS * (D / per)
  const t16 = halfTable()
  for (let b = 0; b < nb; b++) {
    const valid = Math.min(BS, tokens - b * BS)
    const kBase = b * w.k
    const vBase = nb * w.k + b * w.v
    for (let kv = 0; kv < KV; kv++) {
      for (let t = 0; t < valid; t++) {
        const i0 = ((b * KV + kv) * BS + t) * D
        const kRow = kBase + (kv * BS + t) * (D / per)
        const vRow = vBase + (kv * BS + t) * (D / per)
        const vPar = vBase + codeWords + (kv * BS + t) * (D / GV)
        for (let c = 0; c < D; c++) {
          const shift = (c % per) * bits
          const kp = words[kBase + codeWords + kv * D + c]
          k[i0 + c] = dequantValue((words[kRow + ((c / per) | 0)] >>> shift) & mask, t16[kp & 0xffff], t16[kp >>> 16])
          const vp = words[vPar + ((c / GV) | 0)]
          v[i0 + c] = dequantValue((words[vRow + ((c / per) | 0)] >>> shift) & mask, t16[vp & 0xffff], t16[vp >>> 16])
        }
      }
    }
  }
  return { k, v }
}

/** A stored chunk at `from` bits re-encoded at `to` bits (fp16 goes through f32; same bits: the bytes themselves). */
export const convertChunk = (src: Uint8Array, s: KvShape, tokens: number, from: KvBits, to: KvBits): Uint8Array => {
  if (from === to) return src
  if (from === 4 && to === 8) return widen4to8(src, s, tokens)
  if (from === 16) return quantizeChunk(src, s, tokens, to as 8 | 4)
  const { k, v } = dequantizeChunk(src, s, tokens, from)
  const f16 = new Uint16Array(k.length * 2)
  for (let i = 0; i < k.length; i++) {
    f16[i] = floatToHalf(k[i])
    f16[k.length + i] = floatToHalf(v[i])
  }
  const bytes = new Uint8Array(f16.buffer)
  return to === 16 ? bytes : quantizeChunk(bytes, s, tokens, to)
}

/** An int4 chunk as int8 with the same scales and mins and the same codes: exact. */
const widen4to8 = (src: Uint8Array, s: KvShape, tokens: number): Uint8Array => {
  const nb = Math.ceil(tokens / s.blockTokens)
  const w4 = blockWords(s, 4)
  const w8 = blockWords(s, 8)
  const codes4 = (s.kvHeads * s.blockTokens * s.headDim) / 8
  const inW = new Uint32Array(src.buffer, src.byteOffset, src.length / 4)
  const out = new Uint32Array(nb * (w8.k + w8.v))
  const part = (inBase: number, outBase: number, params: number) => {
    for (let i = 0; i < codes4; i++) {
      const x = inW[inBase + i]
      out[outBase + 2 * i] = ((x & 0xf) | ((x >>> 4) & 0xf) << 8 | ((x >>> 8) & 0xf) << 16 | ((x >>> 12) & 0xf) << 24) >>> 0
      out[outBase + 2 * i + 1] = (((x >>> 16) & 0xf) | ((x >>> 20) & 0xf) << 8 | ((x >>> 24) & 0xf) << 16 | ((x >>> 28) & 0xf) << 24) >>> 0
    }
    out.set(inW.subarray(inBase + codes4, inBase + codes4 + params), outBase + 2 * codes4)
  }
  for (let b = 0; b < nb; b++) {
    part(b * w4.k, b * w8.k, w4.k - codes4)
    part(nb * w4.k + b * w4.v, nb * w8.k + b * w8.v, w4.v - codes4)
  }
  return new Uint8Array(out.buffer)
}

/** Dequantizes a stored chunk into an fp16 chunk view (the GPU pools' layout), e.g. a staging buffer. */
export const dequantizeInto = (src: Uint8Array, s: KvShape, tokens: number, bits: KvBits, into: Uint8Array): void => {
  if (bits === 16) {
    into.set(src)
    return
  }
  const { k, v } = dequantizeChunk(src, s, tokens, bits)
  const h = new Uint16Array(into.buffer, into.byteOffset, k.length * 2)
  for (let i = 0; i < k.length; i++) {
    h[i] = floatToHalf(k[i])
    h[k.length + i] = floatToHalf(v[i])
  }
}
