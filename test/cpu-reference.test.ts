import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, describe, expect, it } from "vitest"
import {
  CpuModel,
  applyRope,
  argmax,
  attention,
  greedyGenerate,
  matMul,
  matVec,
  rmsNorm,
  ropeInvFreq,
  silu,
} from "../engine/cpu-reference.ts"
import { dummyPresets } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { HfWeightSource } from "../models/safetensors.ts"
import type { ModelConfig } from "../models/types.ts"

const tinyDir = fileURLToPath(new URL("../models/tiny-leo-14m/", import.meta.url))

interface Golden {
  readonly prompt: string
  readonly input_ids: number[]
  readonly greedy_ids: number[]
  readonly last_logits_top5: { ids: number[]; values: number[] }
  readonly last_logits_first16: number[]
  readonly logits_l2_per_pos: number[]
}
const golden: ReadonlyArray<Golden> = JSON.parse(fs.readFileSync(path.join(tinyDir, "golden/hf-transformers-5.17-fp32.json"), "utf8"))

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-6)

describe("pure pieces", () => {
  it("rmsNorm scales by the root mean square and the weight", () => {
    const out = rmsNorm(new Float32Array(3), new Float32Array([1, 2, 3]), new Float32Array([1, 2, 0.5]), 0)
    const r = 1 / Math.sqrt(14 / 3)
    expect([...out].map((v) => +v.toFixed(6))).toEqual([r, 4 * r, 1.5 * r].map((v) => +v.toFixed(6)))
  })

  it("matVec and matMul agree, with bias", () => {
    const w = new Float32Array([1, 2, 3, 4, 5, 6]) // (2, 3)
    const x = new Float32Array([1, 0, -1, 2, 2, 2]) // (2 tokens, 3)
    expect([...matVec(new Float32Array(2), w, x, 2, 3, new Float32Array([10, 20]))]).toEqual([8, 18])
    expect([...matMul(new Float32Array(4), x, w, 2, 2, 3)]).toEqual([-2, -2, 12, 30])
  })

  it("silu and argmax", () => {
    expect(silu(0)).toBe(0)
    expect(silu(2)).toBeCloseTo(2 / (1 + Math.exp(-2)), 12)
    expect(argmax(new Float32Array([1, 5, 5, 2]))).toBe(1)
  })

  it("applyRope rotates pairs (i, i + headDim/2)", () => {
    const x = new Float32Array([1, 0, 0, 1]) // pairs (x0, x2) = (1, 0) and (x1, x3) = (0, 1)
    applyRope(x, 0, new Float32Array([0, 1]), new Float32Array([1, 0]))
    expect([...x]).toEqual([0, 0, 1, 1]) // first pair by 90 degrees, second untouched
  })

  it("attention with one key returns its value; equal scores average", () => {
    const q = new Float32Array([1, 0])
    const one = attention(new Float32Array(2), 0, q, 0, new Float32Array([3, 4]), new Float32Array([5, 6]), 2, 0, 1, 2, 1)
    expect([...one]).toEqual([5, 6])
    const keys = new Float32Array([0, 1, 0, 7]) // both orthogonal to q
    const two = attention(new Float32Array(2), 0, q, 0, keys, new Float32Array([2, 0, 4, 2]), 2, 0, 2, 2, 1)
    expect([...two]).toEqual([3, 1])
  })

  it("ropeInvFreq applies linear and llama3 scaling as transformers does", () => {
    const base: ModelConfig = { ...dummyPresets["llama-3.1-8b"]!, ropeScaling: { type: "default" } }
    const plain = ropeInvFreq(base)
    expect(plain.length).toBe(64)
    expect(plain[0]).toBe(1)
    expect(plain[1]).toBeCloseTo(500000 ** (-2 / 128), 7)
    const linear = ropeInvFreq({ ...base, ropeScaling: { type: "linear", factor: 8 } })
    for (let i = 0; i < 64; i++) expect(linear[i]).toBeCloseTo(plain[i]! / 8, 12)
    const llama3 = ropeInvFreq(dummyPresets["llama-3.1-8b"]!)
    for (let i = 0; i < 64; i++) {
      const wavelen = (2 * Math.PI) / plain[i]!
      if (wavelen < 8192 / 4) expect(llama3[i]).toBe(plain[i]) // high frequencies kept
      else if (wavelen > 8192) expect(llama3[i]).toBeCloseTo(plain[i]! / 8, 12) // low ones slowed 8x
      else {
        expect(llama3[i]).toBeLessThan(plain[i]!)
        expect(llama3[i]).toBeGreaterThan(plain[i]! / 8)
      }
    }
    // From a numpy float32 transcription of transformers' _compute_llama3_parameters
    // (Llama 3.1 8B): the smoothed band is i = 29..34.
    const expected: Record<number, number> = {
      28: 0.0032114461064338684,
      29: 0.0021665706299245358,
      31: 0.0008567514596506953,
      34: 0.0001785077911335975,
      35: 9.556212899042293e-5,
      63: 3.068925877869333e-7,
    }
    for (const [i, v] of Object.entries(expected)) expect(rel(llama3[Number(i)]!, v)).toBeLessThan(1e-6)
  })
})

describe("CpuModel on tiny-leo-14m against transformers", () => {
  const src = HfWeightSource.open(tinyDir)
  const model = CpuModel.load(src)
  afterAll(() => src.close())
  const V = src.config.vocabSize

  it.each(golden.map((g) => [g.prompt, g] as const))("reproduces the logits of %j", (_, g) => {
    model.reset()
    const T = g.input_ids.length
    const logits = model.forward(g.input_ids, 0)
    expect(logits.length).toBe(T * V)
    for (let t = 0; t < T; t++) {
      const row = logits.subarray(t * V, (t + 1) * V)
      const l2 = Math.sqrt(row.reduce((s, v) => s + v * v, 0))
      expect(rel(l2, g.logits_l2_per_pos[t]!)).toBeLessThan(1e-3)
    }
    const last = logits.subarray((T - 1) * V)
    const top5 = [...last.keys()].sort((a, b) => last[b]! - last[a]!).slice(0, 5)
    expect(top5).toEqual(g.last_logits_top5.ids)
    top5.forEach((id, k) => expect(rel(last[id]!, g.last_logits_top5.values[k]!)).toBeLessThan(1e-3))
    g.last_logits_first16.forEach((v, i) => expect(Math.abs(last[i]! - v)).toBeLessThan(1e-3 * Math.max(1, Math.abs(v))))
  })

  it.each(golden.map((g) => [g.prompt, g] as const))("greedy-decodes %j through the KV cache", (_, g) => {
    expect(greedyGenerate(model, g.input_ids, 32)).toEqual(g.greedy_ids)
    expect(model.cachedTokens).toBe(g.input_ids.length + 31)
  })

  it("gives the same logits for a whole sequence as for incremental decoding", () => {
    const g = golden[1]!
    const ids = [...g.input_ids, ...g.greedy_ids.slice(0, 12)]
    model.reset()
    const whole = model.forward(ids, 0)
    model.reset()
    const P = g.input_ids.length
    const steps = [model.forward(ids.slice(0, P), 0)]
    for (let t = P; t < ids.length; t++) steps.push(model.forward([ids[t]!], t))
    const incremental = new Float32Array(whole.length)
    let at = 0
    for (const s of steps) {
      incremental.set(s, at)
      at += s.length
    }
    let maxDiff = 0
    for (let i = 0; i < whole.length; i++) maxDiff = Math.max(maxDiff, Math.abs(whole[i]! - incremental[i]!))
    expect(maxDiff).toBeLessThan(1e-4)
    // Rewinding the cache and recomputing a suffix gives the same rows.
    const again = model.forward(ids.slice(P), P, "all")
    expect(again).toEqual(whole.subarray(P * V))
    expect(model.forward(ids.slice(P), P, "last")).toEqual(whole.subarray((ids.length - 1) * V))
  })

  it("refuses a start position beyond the cache", () => {
    model.reset()
    expect(() => model.forward([5], 3)).toThrow(RangeError)
  })
})

describe("CpuModel on dummy weights", () => {
  it("runs the tiny preset and refuses large models", () => {
    const m = CpuModel.load(new DummyWeightSource(dummyPresets.tiny!))
    const logits = m.forward([1, 2, 3], 0)
    expect(logits.length).toBe(3 * 512)
    expect(logits.every(Number.isFinite)).toBe(true)
    expect(() => CpuModel.load(new DummyWeightSource(dummyPresets["llama-3.2-1b"]!))).toThrow(/1236M parameters/)
  })

  it("runs a biased qwen2-like shape", () => {
    const c: ModelConfig = { ...dummyPresets.tiny!, modelType: "qwen2", attentionBias: true, tieWordEmbeddings: false }
    const m = CpuModel.load(new DummyWeightSource(c))
    expect(greedyGenerate(m, [1, 2, 3], 4).length).toBe(4)
  })
})
