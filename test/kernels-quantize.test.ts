// quantize.wgsl (the seal's GPU quantizer) against kv/quant.ts's quantizeChunk, the CPU
// reference: chunks of several sizes (partial last blocks, a tail ring that wraps) at int8 and
// int4 in one dispatch, at the head dims and KV heads of the test model and of Llama shapes,
// over data that stresses the rounding (uniform, channels of very different magnitudes,
// values on a coarse grid where codes fall on exact halves, constant and near-constant groups).
// Codes and mins must be the CPU's bits; a scale may differ from the CPU's by one f16 ulp only
// where the f32 quotient (hi - lo) / qmax rounds otherwise than the f64 one, and then the
// codes of its group by at most one (a different scale): counted and bounded below.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { blockWords, chunkBytesAt, floatToHalf, type KvShape, quantizeChunk, valueGroup } from "../kv/quant.ts"
import { KernelRig, rng, type Rand } from "./kernel-rig.ts"

let rig: KernelRig
beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})
afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

type Data = "uniform" | "channels" | "grid" | "flat"

/** n f16 bits of (blocks, KV, BS, D) by kind. */
const poolData = (rand: Rand, kind: Data, n: number, D: number): Uint16Array => {
  const out = new Uint16Array(n + (n % 2))
  // Per channel: an offset and a scale over five orders of magnitude (keys' outlier channels).
  const gain = Array.from({ length: D }, () => 10 ** (rand() * 5 - 3))
  const offset = Array.from({ length: D }, () => (rand() - 0.5) * 4)
  for (let i = 0; i < n; i++) {
    const c = i % D
    const u = rand() * 2 - 1
    const x =
      kind === "uniform" ? u * 3
      : kind === "channels" ? offset[c] * gain[c] + u * gain[c]
      : kind === "grid" ? Math.round(u * 40) / 8
      : c % 3 === 0 ? 1.5 : c % 3 === 1 ? 1.5 + (rand() < 0.5 ? 0 : 2 ** -20) : u
    out[i] = floatToHalf(x)
  }
  return out
}

interface Job {
  readonly block: number
  readonly tokens: number
  readonly bits: 8 | 4
}

/** The chunk of `job` as quantizeChunk takes it: K then V, (nb, KV, BS, D) f16 each, from pool blocks modulo wrap. */
const chunkOf = (k: Uint16Array, v: Uint16Array, s: KvShape, job: Job, wrap: number): Uint8Array => {
  const nb = Math.ceil(job.tokens / s.blockTokens)
  const blockHalves = s.kvHeads * s.blockTokens * s.headDim
  const out = new Uint16Array(2 * nb * blockHalves)
  for (let b = 0; b < nb; b++) {
    const p = (job.block + b) % wrap
    out.set(k.subarray(p * blockHalves, (p + 1) * blockHalves), b * blockHalves)
    out.set(v.subarray(p * blockHalves, (p + 1) * blockHalves), (nb + b) * blockHalves)
  }
  return new Uint8Array(out.buffer)
}

/** Where two quantized chunks differ: words of params (scale or min halves) and codes. */
const diff = (got: Uint32Array, want: Uint32Array, s: KvShape, tokens: number, bits: 8 | 4) => {
  const w = blockWords(s, bits)
  const nb = Math.ceil(tokens / s.blockTokens)
  const codeWords = (s.kvHeads * s.blockTokens * s.headDim * bits) / 32
  const per = 32 / bits
  const mask = (1 << bits) - 1
  const r = { scales: 0, mins: 0, codes: 0, codeOffByMore: 0, params: 0, codesTotal: 0 }
  for (let i = 0; i < want.length; i++) {
    const inK = i < nb * w.k
    const local = inK ? i % w.k : (i - nb * w.k) % w.v
    if (local >= codeWords) {
      r.params++
      if ((got[i] & 0xffff) !== (want[i] & 0xffff)) r.scales++
      if (got[i] >>> 16 !== want[i] >>> 16) r.mins++
      continue
    }
    for (let j = 0; j < per; j++) {
      r.codesTotal++
      const a = (got[i] >>> (j * bits)) & mask
      const b = (want[i] >>> (j * bits)) & mask
      if (a !== b) r.codes++
      if (Math.abs(a - b) > 1) r.codeOffByMore++
    }
  }
  return r
}

const run = async (s: KvShape, kind: Data, jobs: ReadonlyArray<Job>, wrap: number, seed: number) => {
  const rand = rng(seed)
  const blockHalves = s.kvHeads * s.blockTokens * s.headDim
  const k = poolData(rand, kind, wrap * blockHalves, s.headDim)
  const v = poolData(rand, kind, wrap * blockHalves, s.headDim)
  // Each job's output at its word offset, one word of gap after each (left untouched).
  const offsets: number[] = []
  let words = 3
  for (const j of jobs) {
    offsets.push(words)
    words += chunkBytesAt(s, j.tokens, j.bits) / 4 + 1
  }
  const table = new Uint32Array(jobs.length * 4)
  jobs.forEach((j, i) => table.set([j.block, j.tokens, offsets[i], j.bits], i * 4))
  const out = rig.output(words * 4)
  const key = { op: "quantize" as const, constants: { D: s.headDim, GV: valueGroup(s), BS: s.blockTokens } }
  await rig.run(key, { layout: "uuuu", values: [s.kvHeads, wrap, 0, 0] }, { 1: rig.input(k), 2: rig.input(v), 3: rig.input(table), 4: out }, [jobs.length, s.kvHeads])
  const got = await rig.u32(out, words)
  return jobs.map((j, i) => {
    const want = new Uint32Array(quantizeChunk(chunkOf(k, v, s, j, wrap), s, j.tokens, j.bits).buffer)
    const mine = got.subarray(offsets[i], offsets[i] + want.length)
    expect(got[offsets[i] + want.length], "the word after a chunk is not written").toBe(0)
    return { job: j, ...diff(mine, want, s, j.tokens, j.bits), identical: mine.every((x, n) => x === want[n]) }
  })
}

describe("quantize.wgsl against kv/quant.ts", () => {
  const shapes: Array<[string, KvShape]> = [
    ["tiny-leo-14m (KV 2, D 64)", { kvHeads: 2, blockTokens: 16, headDim: 64 }],
    ["MQA, D 32", { kvHeads: 1, blockTokens: 16, headDim: 32 }],
    ["Llama 8B (KV 8, D 128)", { kvHeads: 8, blockTokens: 16, headDim: 128 }],
  ]
  for (const [name, s] of shapes) {
    it(`${name}: int8 and int4 chunks of 16, 20, 48 and 64 tokens, one wrapping the ring`, async () => {
      const wrap = 12
      const jobs: Job[] = [
        { block: 0, tokens: 16, bits: 8 },
        { block: 1, tokens: 20, bits: 4 },
        { block: 3, tokens: 48, bits: 8 },
        { block: 10, tokens: 64, bits: 4 }, // blocks 10, 11, 0, 1
        { block: 6, tokens: 64, bits: 8 },
        { block: 6, tokens: 37, bits: 4 },
      ]
      const totals = { scales: 0, params: 0, codes: 0, codesTotal: 0 }
      for (const kind of ["uniform", "channels", "grid", "flat"] as const) {
        for (const r of await run(s, kind, jobs, wrap, s.headDim * 7 + kind.length)) {
          const where = `${kind}, ${r.job.tokens} tokens at ${r.job.bits} bits`
          expect(r.mins, `${where}: mins`).toBe(0)
          expect(r.codeOffByMore, `${where}: codes off by more than one`).toBe(0)
          // A code may differ only in a group whose scale differs.
          if (r.scales === 0) expect(r.identical, `${where}: identical bytes`).toBe(true)
          totals.scales += r.scales
          totals.params += r.params
          totals.codes += r.codes
          totals.codesTotal += r.codesTotal
        }
      }
      console.log(`${name}: scales differing ${totals.scales}/${totals.params}, codes differing ${totals.codes}/${totals.codesTotal}`)
      expect(totals.scales / totals.params).toBeLessThan(1e-3)
    })
  }
})
