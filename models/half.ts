// IEEE half precision as bits (Uint16), the currency of WeightSource. Conversions
// round to nearest, ties to even, keep signed zeros, subnormals, infinities and NaN
// (NaN stays quiet NaN with its top payload bits). The array forms use lookup tables
// built on first use (f16 -> f32: 256 KiB; bf16 -> f16: 128 KiB).

const scratchF32 = new Float32Array(1)
const scratchU32 = new Uint32Array(scratchF32.buffer)

/** Half bits -> number (exact). */
export const f16ToF32 = (bits: number): number => {
  const sign = bits & 0x8000 ? -1 : 1
  const exp = (bits >>> 10) & 0x1f
  const mant = bits & 0x3ff
  if (exp === 0) return sign * mant * 2 ** -24
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN
  return sign * (1024 + mant) * 2 ** (exp - 25)
}

/** float32 bits -> half bits, round to nearest even (after numpy's npy_floatbits_to_halfbits). */
export const f32BitsToF16Bits = (f: number): number => {
  const sign = (f >>> 16) & 0x8000
  const fExp = f & 0x7f800000
  // Exponent >= 16: overflow to infinity, or infinity / NaN.
  if (fExp >= 0x47800000) {
    if (fExp === 0x7f800000) {
      const fSig = f & 0x007fffff
      return fSig === 0 ? sign | 0x7c00 : sign | 0x7e00 | (fSig >>> 13)
    }
    return sign | 0x7c00
  }
  // Exponent <= -15: a half subnormal, or zero below 2^-25.
  if (fExp <= 0x38000000) {
    if (fExp < 0x33000000) return sign
    const e = fExp >>> 23
    let sig = (0x800000 + (f & 0x007fffff)) >>> (113 - e)
    // Bits shifted out above are below the rounding bit; they only matter for ties.
    if ((sig & 0x3fff) !== 0x1000 || (f & 0x7ff) !== 0) sig += 0x1000
    // A carry out of the significand lands in the exponent: the right answer.
    return sign | (sig >>> 13)
  }
  const hExp = (fExp - 0x38000000) >>> 13
  let sig = f & 0x007fffff
  if ((sig & 0x3fff) !== 0x1000) sig += 0x1000
  // A carry bumps the exponent; exponent 31 with zero significand is infinity.
  return sign | (hExp + (sig >>> 13))
}

/** number -> half bits, via float32 (as a GPU would store it), round to nearest even. */
export const f32ToF16Bits = (x: number): number => {
  scratchF32[0] = x
  return f32BitsToF16Bits(scratchU32[0]!)
}

/** bfloat16 bits -> half bits (through float32, which holds bf16 exactly). */
export const bf16ToF16Bits = (bits: number): number => f32BitsToF16Bits((bits << 16) >>> 0)

// --- array forms ------------------------------------------------------------------

let f16Table: Float32Array | undefined
let bf16Table: Uint16Array | undefined

const f16ToF32Table = (): Float32Array => {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536)
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i)
  }
  return f16Table
}

const bf16ToF16Table = (): Uint16Array => {
  if (bf16Table === undefined) {
    bf16Table = new Uint16Array(65536)
    for (let i = 0; i < 65536; i++) bf16Table[i] = bf16ToF16Bits(i)
  }
  return bf16Table
}

/** Half bits -> float32, into `dst` (from `dstOffset`); returns `dst`. */
export const f16ToF32Array = (
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
  dstOffset = 0,
): Float32Array => {
  const t = f16ToF32Table()
  for (let i = 0; i < src.length; i++) dst[dstOffset + i] = t[src[i]!]!
  return dst
}

/** float32 -> half bits, into `dst` (from `dstOffset`); returns `dst`. */
export const f32ToF16Array = (
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
  dstOffset = 0,
): Uint16Array => {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length)
  for (let i = 0; i < bits.length; i++) dst[dstOffset + i] = f32BitsToF16Bits(bits[i]!)
  return dst
}

/** bfloat16 bits -> half bits, into `dst` (from `dstOffset`); returns `dst`. */
export const bf16ToF16Array = (
  src: Uint16Array,
  dst: Uint16Array = new Uint16Array(src.length),
  dstOffset = 0,
): Uint16Array => {
  const t = bf16ToF16Table()
  for (let i = 0; i < src.length; i++) dst[dstOffset + i] = t[src[i]!]!
  return dst
}
