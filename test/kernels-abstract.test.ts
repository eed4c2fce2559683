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

/** Runs abstract.wgsl over `order` (block of abstract slot i) and returns its outputs. */
const abstracts = async (o: { KV: number; BS: number; D: number; wrap?: number }, bits: Uint16Array, order: number[], tokens: number[]) => {
  const jobs = new Uint32Array(order.length * 4)
  order.forEach((b, i) => jobs.set([b, tokens[i], i, 0], i * 4))
  const bytes = order.length * o.KV * (o.D / 2) * 4
  const amin = rig.output(bytes)
  const amax = rig.output(bytes)
  await rig.run({ op: "abstract" }, { layout: "uuuu", values: [o.KV, o.BS, o.D, o.wrap ?? 0] }, { 1: rig.input(bits), 2: rig.input(jobs), 3: amin, 4: amax }, [order.length, o.KV])
  return { amin, amax }
}

const key = (keys: Float32Array, o: { KV: number; BS: number; D: number }, block: number, kvh: number, t: number, d: number) =>
  keys[((block * o.KV + kvh) * o.BS + t) * o.D + d]

describe("abstract.wgsl", () => {
  for (const shape of [{ KV: 2, BS: 16, D: 64 }, { KV: 1, BS: 32, D: 128 }]) {
    it(`min/max per block and KV head, rounded outward (KV ${shape.KV}, BS ${shape.BS}, D ${shape.D})`, async () => {
      const o = { blocks: 9, ...shape }
      const { keys, order, tokens } = setup(11, o)
      const { amin, amax } = await abstracts(o, keys.bits, order, tokens)
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

  it("a chunk of several blocks in a ring (the tiered cache's tail) wraps at `wrap`", async () => {
    const o = { blocks: 4, KV: 2, BS: 16, D: 64, wrap: 4 }
    const { keys } = setup(5, o)
    // One chunk of 40 tokens starting at block 3: blocks 3, 0, 1 (8 tokens of the last).
    const { amin, amax } = await abstracts(o, keys.bits, [3], [40])
    const lo = await rig.u16(amin, o.KV * o.D)
    const hi = await rig.u16(amax, o.KV * o.D)
    for (let kvh = 0; kvh < o.KV; kvh++) {
      for (let d = 0; d < o.D; d++) {
        let mn = Infinity
        let mx = -Infinity
        for (let t = 0; t < 40; t++) {
          const v = key(keys.values, o, (3 + Math.floor(t / o.BS)) % o.wrap, kvh, t % o.BS, d)
          mn = Math.min(mn, v)
          mx = Math.max(mx, v)
        }
        expect(f16ToF32(lo[kvh * o.D + d])).toBe(mn)
        expect(f16ToF32(hi[kvh * o.D + d])).toBe(mx)
      }
    }
  })
})

describe("abstract_fold.wgsl", () => {
  it("starts a group from its first chunks and widens it by later ones: element-wise min of mins, max of maxes, exact", async () => {
    const o = { KV: 2, D: 64 }
    const words = o.KV * o.D // f16 elements of one abstract
    const rand = rng(31)
    // Seven sealed chunks' abstracts (min <= max elementwise), as a seal's scratch holds them.
    const [a, b] = [randomHalf(rand, 7 * words, 3), randomHalf(rand, 7 * words, 3)]
    const mins = Uint16Array.from(a.bits, (x, i) => (a.values[i] <= b.values[i] ? x : b.bits[i]))
    const maxs = Uint16Array.from(a.bits, (x, i) => (a.values[i] <= b.values[i] ? b.bits[i] : x))
    // Group 0 held chunk 0 from an earlier seal (its abstract seeded below); this seal brings
    // chunks 1-2 to group 0 and starts group 1 with chunks 3-6: (group, first, count, init).
    const seeded = randomHalf(rand, 2 * words, 3)
    const dmin = rig.input(Uint16Array.from({ length: 2 * words }, (_, i) => (i < words ? mins[i] : seeded.bits[i])))
    const dmax = rig.input(Uint16Array.from({ length: 2 * words }, (_, i) => (i < words ? maxs[i] : seeded.bits[i])))
    const jobs = Uint32Array.from([0, 1, 2, 0, 1, 3, 4, 1])
    await rig.run({ op: "abstract_fold" }, { layout: "uu", values: [o.KV, o.D] }, { 1: rig.input(mins), 2: rig.input(maxs), 3: rig.input(jobs), 4: dmin, 5: dmax }, [2, o.KV])
    const gotMin = await rig.u16(dmin, 2 * words)
    const gotMax = await rig.u16(dmax, 2 * words)
    for (const [g, chunks] of [[0, [0, 1, 2]], [1, [3, 4, 5, 6]]] as const) {
      for (let i = 0; i < words; i++) {
        const want = (a: Uint16Array, pick: (x: number, y: number) => number) => chunks.map((c) => f16ToF32(a[c * words + i])).reduce((x, y) => pick(x, y))
        expect(f16ToF32(gotMin[g * words + i])).toBe(want(mins, Math.min))
        expect(f16ToF32(gotMax[g * words + i])).toBe(want(maxs, Math.max))
      }
    }
  })
})

describe("score.wgsl", () => {
  it("bounds every q·k of each chunk from above and equals the CPU Quest score", async () => {
    const o = { blocks: 12, KV: 2, BS: 16, D: 64 }
    const G = 3
    const H = o.KV * G
    const { rand, keys, order, tokens } = setup(23, o)
    const values = keys.values
    const { amin, amax } = await abstracts(o, keys.bits, order, tokens)
    const q = Float32Array.from({ length: H * o.D }, () => (rand() - 0.5) * 4)
    const scale = 1 / Math.sqrt(o.D)
    const chunkList = Uint32Array.from(shuffled(rand, order.map((_, i) => i)).slice(0, 8))
    const scores = rig.output(chunkList.length * o.KV * 4)
    await rig.run({ op: "score", constants: { G, HALF_D: o.D / 2 } }, { layout: "uuuf", values: [chunkList.length, o.KV, o.D, scale] }, { 1: rig.input(q), 2: amin, 3: amax, 4: rig.input(chunkList), 5: scores }, [chunkList.length, 1, o.KV])
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

describe("select.wgsl", () => {
  const runSelect = async (n: number, KV: number, S: number, R: number, K: number, partial: number, scores: Float32Array) => {
    const BS = 16
    const stride = n + 1
    const blocks = Uint32Array.from({ length: n + 1 }, (_, i) => 1000 + i)
    const entries = rig.output(KV * stride * 8)
    const seqs = rig.output(KV * 8)
    await rig.run({ op: "select" }, { layout: "uuuuuuuu", values: [n, KV, S, R, K, BS, stride, partial] }, { 1: rig.input(scores), 2: rig.input(blocks), 3: entries, 4: seqs }, [KV])
    const e = await rig.u32(entries, KV * stride * 2)
    const sq = await rig.u32(seqs, KV * 2)
    return Array.from({ length: KV }, (_, kvh) => {
      const [first, count] = [sq[kvh * 2], sq[kvh * 2 + 1]]
      expect(first).toBe(kvh * stride)
      return Array.from({ length: count }, (_, j) => ({ chunk: e[(first + j) * 2] - 1000, tokens: e[(first + j) * 2 + 1] }))
    })
  }

  for (const [n, S, R, K, partial, ties] of [
    [300, 2, 4, 20, 7, false],
    [300, 0, 0, 50, 0, true],
    [40, 5, 5, 100, 3, false],
    [10, 20, 20, 3, 1, false],
    [513, 1, 8, 0, 16, false],
  ] as const) {
    it(`keeps sink ${S}, recent ${R}, the best ${K} of the rest and the partial block (n ${n}${ties ? ", many ties" : ""})`, async () => {
      const KV = 2
      const rand = rng(n + K)
      const scores = Float32Array.from({ length: n * KV }, () => (ties ? Math.floor(rand() * 5) : (rand() - 0.5) * 100))
      const lists = await runSelect(n, KV, S, R, K, partial, scores)
      lists.forEach((list, kvh) => {
        const chunks = list.filter((x) => x.chunk < n).map((x) => x.chunk)
        expect(new Set(chunks).size).toBe(chunks.length)
        const lo = Math.min(S, n)
        const hi = Math.max(lo, n - R)
        for (let i = 0; i < lo; i++) expect(chunks).toContain(i)
        for (let i = hi; i < n; i++) expect(chunks).toContain(i)
        const picked = chunks.filter((c) => c >= lo && c < hi)
        expect(picked.length).toBe(Math.min(K, hi - lo))
        const minPicked = Math.min(...picked.map((c) => scores[c * KV + kvh]))
        for (let c = lo; c < hi; c++) if (!picked.includes(c)) expect(scores[c * KV + kvh]).toBeLessThanOrEqual(minPicked)
        const tail = list.filter((x) => x.chunk === n)
        expect(tail).toEqual(partial > 0 ? [{ chunk: n, tokens: partial }] : [])
        expect(list.filter((x) => x.chunk < n).every((x) => x.tokens === 16)).toBe(true)
      })
    })
  }
})
