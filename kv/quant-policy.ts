// How many bits a chunk is sealed with (policy `compression.bits`). 16, 8 and 4 are fixed;
// "importance" (LeoAM: fewer bits for less important chunks) decides per chunk when it is
// sealed, from what is known then, its abstract: the chunk's score bound against a
// worst-case query of unit max-norm, sum over KV heads and channels of max(|min_c|, |max_c|)
// (the Quest bound of a sign vector), an upper bound of |q.k| / |q|_inf for every key in it.
// A chunk in the sink, or whose bound reaches the median bound of the chunks its layer sealed
// before it, is hot: int8; the others are cold: int4. The first chunk of a layer is hot.
// Owns each layer's sorted bounds; reset() starts a new sequence.
import { halfToFloat, type KvBits } from "./quant.ts"

export type { CompressionBits } from "../protocol/policy.ts"
import type { CompressionBits } from "../protocol/policy.ts"

/** Bits of hot and cold chunks under "importance". */
export const HOT_BITS = 8
export const COLD_BITS = 4

/** The largest bits a chunk sealed under this setting can have. */
export const maxBitsOf = (c: CompressionBits): KvBits => (c === "importance" ? HOT_BITS : c)

/**
 * The forms a seal produces of each chunk under this setting: its bits, or under "importance"
 * both HOT_BITS and COLD_BITS (the GPU quantizes both in the seal's pass; the choice, which
 * needs the chunk's abstract, is made from them once read back, by SealBits).
 */
export const sealForms = (c: CompressionBits): ReadonlyArray<KvBits> => (c === "importance" ? [HOT_BITS, COLD_BITS] : [c])

/**
 * The query-free score bound of a chunk's abstract: min then max, (KV, D) f16 each
 * (`bytes.length / 4` halves per side).
 */
export const abstractBound = (abstract: Uint8Array): number => {
  const h = new Uint16Array(abstract.buffer, abstract.byteOffset, abstract.length / 2)
  const n = h.length / 2
  let sum = 0
  for (let i = 0; i < n; i++) sum += Math.max(Math.abs(halfToFloat(h[i])), Math.abs(halfToFloat(h[n + i])))
  return sum
}

export class SealBits {
  /** Per layer, the bounds of the chunks sealed so far, ascending. */
  private bounds: number[][] = []

  /** The bits of chunk (layer, chunk) starting at token `start`, sealed under `setting`. */
  bitsFor(setting: CompressionBits, layer: number, start: number, sinkTokens: number, abstract: Uint8Array): KvBits {
    if (setting !== "importance") return setting
    const bound = abstractBound(abstract)
    const seen = (this.bounds[layer] ??= [])
    const median = seen.length === 0 ? -Infinity : seen[Math.floor((seen.length - 1) / 2)]
    let at = seen.length
    while (at > 0 && seen[at - 1] > bound) at--
    seen.splice(at, 0, bound)
    return start < sinkTokens || bound >= median ? HOT_BITS : COLD_BITS
  }

  reset(): void {
    this.bounds = []
  }
}
