// The abstract and score kernels (the LKA part of LeoAM, ahead of the tiered cache): min/max
// abstracts of key blocks rounded outward to f16, and Quest scores that bound every q·k of
// a chunk from above, checked against a CPU reference and against the exact maxima.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { f16ToF32 } from "../models/half.ts"
import { KernelRig, randomHalf, rng, shuffled } from "./kernel-rig.ts"

let rig: KernelRig
beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})
afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

/** A pool (blocks, KV, BS, D) of random f16 keys and jobs over some of its blocks. */
const setup = (seed: number, o: { blocks: number; KV: number; BS: number; D: number }) => {
  const rand = rng(seed)
  const keys = randomHalf(rand, o.blocks * o.KV * o.BS * o.D, 3)
  const order = shuffled(rand, Array.from({ length: o.blocks }, (_, b) => b))
  const tokens = order.map((_, i) => (i === order.length - 1 ? 1 + Math.floor(rand() * (o.BS - 1)) : o.BS))
  return { rand, keys, order, tokens }
}

const key = (keys: Float32Array, o: { KV: number; BS: number; D: number }, block: number, kvh: number, t: number, d: number) =>
  keys[((block * o.KV + kvh) * o.BS + t) * o.D + d]

describe("abstract.wgsl", () => {
  for (const shape of [{ KV: 2, BS: 16, D: 64 }, { KV: 1, BS: 32, D: 128 }]) {
    it(`min/max per block and KV head, rounded outward (KV ${shape.KV}, BS ${shape.BS}, D ${shape.D})`, async () => {
      const o = { blocks: 9, ...shape }
      const { keys, order, tokens } = setup(11, o)
      const jobs = new Uint32Array(order.length * 4)
      order.forEach((b, i) => jobs.set([b, tokens[i], i, 0], i * 4))
      const half = o.D / 2
      const amin = rig.output(order.length * o.KV * half * 4)
      const amax = rig.output(order.length * o.KV * half * 4)
      await rig.run({ op: "abstract" }, { layout: "uuuu", values: [o.KV, o.BS, o.D, order.length] }, { 1: rig.input(keys.bits), 2: rig.input(jobs), 3: amin, 4: amax }, [order.length, o.KV])
      const lo = await rig.u16(amin, order.length * o.KV * o.D)
      const hi = await rig.u16(amax, order.length * o.KV * o.D)
      order.forEach((b, slot) => {
        for (let kvh = 0; kvh < o.KV; kvh++) {
          for (let d = 0; d < o.D; d++) {
            let mn = Infinity
            let mx = -Infinity
            for (let t = 0; t < tokens[slot]; t++) {
              const v = key(keys.values, o, b, kvh, t, d)
              mn = Math.min(mn, v)
              mx = Math.max(mx, v)
            }
            const at = (slot * o.KV + kvh) * o.D + d
            // Keys are f16 already: the outward rounding must give them back exactly.
            expect(f16ToF32(lo[at])).toBe(mn)
            expect(f16ToF32(hi[at])).toBe(mx)
          }
        }
      })
    })
  }
})

describe("score.wgsl", () => {
  it("bounds every q·k of each chunk from above and equals the CPU Quest score", async () => {
    const o = { blocks: 12, KV: 2, BS: 16, D: 64 }
    const G = 3
    const H = o.KV * G
    const { rand, keys, order, tokens } = setup(23, o)
    const values = keys.values
    const jobs = new Uint32Array(order.length * 4)
    order.forEach((b, i) => jobs.set([b, tokens[i], i, 0], i * 4))
    const half = o.D / 2
    const amin = rig.output(order.length * o.KV * half * 4)
    const amax = rig.output(order.length * o.KV * half * 4)
    await rig.run({ op: "abstract" }, { layout: "uuuu", values: [o.KV, o.BS, o.D, order.length] }, { 1: rig.input(keys.bits), 2: rig.input(jobs), 3: amin, 4: amax }, [order.length, o.KV])
    const q = Float32Array.from({ length: H * o.D }, () => (rand() - 0.5) * 4)
    const scale = 1 / Math.sqrt(o.D)
    const chunkList = Uint32Array.from(shuffled(rand, order.map((_, i) => i)).slice(0, 8))
    const scores = rig.output(chunkList.length * o.KV * 4)
    await rig.run({ op: "score", constants: { G } }, { layout: "uuuf", values: [chunkList.length, o.KV, o.D, scale] }, { 1: rig.input(q), 2: amin, 3: amax, 4: rig.input(chunkList), 5: scores }, [Math.ceil((chunkList.length * o.KV) / 64)])
    const got = await rig.f32(scores, chunkList.length * o.KV)
    const lo = await rig.u16(amin, order.length * o.KV * o.D)
    const hi = await rig.u16(amax, order.length * o.KV * o.D)
    chunkList.forEach((slot, c) => {
      const b = order[slot]
      for (let kvh = 0; kvh < o.KV; kvh++) {
        let quest = -Infinity
        let exact = -Infinity
        for (let g = 0; g < G; g++) {
          const qh = (kvh * G + g) * o.D
          let s = 0
          for (let d = 0; d < o.D; d++) {
            const at = (slot * o.KV + kvh) * o.D + d
            s += Math.max(q[qh + d] * f16ToF32(lo[at]), q[qh + d] * f16ToF32(hi[at]))
          }
          quest = Math.max(quest, s * scale)
          for (let t = 0; t < tokens[slot]; t++) {
            let dot = 0
            for (let d = 0; d < o.D; d++) dot += q[qh + d] * key(values, o, b, kvh, t, d)
            exact = Math.max(exact, dot * scale)
          }
        }
        const v = got[c * o.KV + kvh]
        expect(Math.abs(v - quest)).toBeLessThan(1e-3 * (1 + Math.abs(quest)))
        expect(v).toBeGreaterThanOrEqual(exact - 1e-4)
      }
    })
  })
})
