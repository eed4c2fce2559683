import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  bf16ToF16Array,
  bf16ToF16Bits,
  f16ToF32,
  f16ToF32Array,
  f32BitsToF16Bits,
  f32ToF16Array,
  f32ToF16Bits,
} from "../models/half.ts"

const isNaNBits = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0
const f32Bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0]!
const f32FromBits = (b: number) => new Float32Array(new Uint32Array([b]).buffer)[0]!

describe("f16ToF32", () => {
  it("decodes the edge values", () => {
    expect(f16ToF32(0x0000)).toBe(0)
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true)
    expect(f16ToF32(0x3c00)).toBe(1)
    expect(f16ToF32(0xc000)).toBe(-2)
    expect(f16ToF32(0x7bff)).toBe(65504)
    expect(f16ToF32(0x0400)).toBe(2 ** -14)
    expect(f16ToF32(0x0001)).toBe(2 ** -24)
    expect(f16ToF32(0x03ff)).toBe(1023 * 2 ** -24)
    expect(f16ToF32(0x7c00)).toBe(Infinity)
    expect(f16ToF32(0xfc00)).toBe(-Infinity)
    expect(f16ToF32(0x7e00)).toBeNaN()
    expect(f16ToF32(0x3555)).toBeCloseTo(1 / 3, 3)
  })
})

describe("f32ToF16Bits", () => {
  it("rounds to nearest even at every boundary", () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00)
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00) // tie -> even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02) // tie -> even
    expect(f32ToF16Bits(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01) // above the tie
    expect(f32ToF16Bits(65504)).toBe(0x7bff)
    expect(f32ToF16Bits(65519.99)).toBe(0x7bff)
    expect(f32ToF16Bits(65520)).toBe(0x7c00) // tie with "65536" -> even = infinity
    expect(f32ToF16Bits(1e6)).toBe(0x7c00)
    expect(f32ToF16Bits(-1e6)).toBe(0xfc00)
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00)
    expect(f32ToF16Bits(-Infinity)).toBe(0xfc00)
  })

  it("keeps subnormals, signed zeros and NaN", () => {
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001)
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000) // tie -> even (zero)
    expect(f32ToF16Bits(f32FromBits(f32Bits(2 ** -25) + 1))).toBe(0x0001)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002) // tie -> even
    expect(f32ToF16Bits(-(2 ** -26))).toBe(0x8000)
    expect(f32ToF16Bits(1023.5 * 2 ** -24)).toBe(0x0400) // rounds up into the normals
    expect(f32ToF16Bits(2 ** -14)).toBe(0x0400)
    expect(f32ToF16Bits(1e-30)).toBe(0x0000)
    expect(f32ToF16Bits(-0)).toBe(0x8000)
    expect(isNaNBits(f32ToF16Bits(NaN))).toBe(true)
    // A NaN whose payload lives only in low bits must stay NaN, not become infinity.
    expect(isNaNBits(f32BitsToF16Bits(0x7f800001))).toBe(true)
    expect(isNaNBits(f32BitsToF16Bits(0xff800001))).toBe(true)
  })

  it("round-trips every half value", () => {
    for (let h = 0; h < 65536; h++) {
      if (isNaNBits(h)) expect(isNaNBits(f32ToF16Bits(f16ToF32(h)))).toBe(true)
      else expect(f32ToF16Bits(f16ToF32(h))).toBe(h)
    }
  })

  it("picks the nearest half, ties to even (property)", () => {
    fc.assert(
      fc.property(fc.float({ noNaN: true, noDefaultInfinity: true }), (x) => {
        const h = f32ToF16Bits(x)
        if (Math.abs(x) >= 65520) return h === (x < 0 ? 0xfc00 : 0x7c00)
        const v = f16ToF32(h)
        const err = Math.abs(x - v)
        // The neighbours in magnitude (same sign) must not be closer.
        const mag = h & 0x7fff
        for (const n of [mag - 1, mag + 1]) {
          if (n < 0 || n > 0x7bff) continue
          const other = Math.abs(x - f16ToF32((h & 0x8000) | n))
          if (other < err) return false
          if (other === err && (mag & 1) !== 0) return false
        }
        return Object.is(Math.sign(x), Math.sign(v)) || v === 0
      }),
      { numRuns: 20000 },
    )
  })
})

describe("bf16 and array forms", () => {
  it("converts bf16 through f32", () => {
    expect(bf16ToF16Bits(0x3f80)).toBe(0x3c00) // 1.0
    expect(bf16ToF16Bits(0xbf80)).toBe(0xbc00) // -1.0
    expect(bf16ToF16Bits(0x47c3)).toBe(0x7c00) // 99840: too large for f16
    expect(bf16ToF16Bits(0x3380)).toBe(0x0001) // 2^-24
    expect(bf16ToF16Bits(0x7f80)).toBe(0x7c00)
    expect(isNaNBits(bf16ToF16Bits(0x7fc0))).toBe(true)
    expect(isNaNBits(bf16ToF16Bits(0x7f81))).toBe(true)
  })

  it("array forms agree with the scalar forms on every input", () => {
    const all = new Uint16Array(65536).map((_, i) => i)
    const f32 = f16ToF32Array(all)
    const bf = bf16ToF16Array(all)
    for (let i = 0; i < 65536; i++) {
      if (isNaNBits(i)) expect(f32[i]).toBeNaN()
      else expect(f32[i]).toBe(f16ToF32(i))
      expect(bf[i]).toBe(bf16ToF16Bits(i))
    }
  })

  it("f32ToF16Array agrees with f32ToF16Bits and honours offsets (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.float(), { maxLength: 64 }), fc.nat(4), (xs, offset) => {
        const src = new Float32Array(xs)
        const dst = f32ToF16Array(src.subarray(0), new Uint16Array(xs.length + offset), offset)
        return xs.every((x, i) => dst[offset + i] === f32ToF16Bits(x))
      }),
    )
    const back = f16ToF32Array(new Uint16Array([0x3c00, 0xc000]), new Float32Array(4), 2)
    expect([...back]).toEqual([0, 0, 1, -2])
  })
})
