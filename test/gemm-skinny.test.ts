// Batched decode's projections on the matrix units (kernels/half_rows.wgsl + gemm_skinny.wgsl,
// engine/batch-mma.ts): the kernel pair against the CPU reference under an emulation of
// subgroup matrices everywhere (lavapipe has none), and on the device's own matrix units
// where it has them; and where the batch may use them.
import { afterAll, describe, expect, it } from "vitest"
import { acquireGpu, type Gpu, releaseGpu, type SubgroupMatrixConfig } from "../engine/gpu.ts"
import { halfRowsKey, SKINNY_FORM, skinnyFor, skinnyKey } from "../engine/batch-mma.ts"
import { GEMM_TOLERANCE } from "../engine/matrix-check.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { type SkinnyCase, skinnyError } from "../engine/skinny-check.ts"
import { dummyPresets } from "../models/config.ts"
import { emulateSubgroupMatrices } from "./support/sgmat-emulation.ts"
import { DecodeBatch, defaultProjections, MMA_MIN_ROWS } from "../engine/batch.ts"
import { readBack } from "../engine/buffers.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"

const gpu: Gpu = await acquireGpu()
const noMatrix = gpu.matrixF16 === undefined ? `${gpu.adapterName} has no f16 16x16x16 subgroup-matrix configuration` : undefined
afterAll(async () => {
  await releaseGpu()
})

// K = 43 steps of 16: with SPLIT 8 every subgroup runs the four-step loop once and the
// one-step tail once or twice. M 3 (one padded group) and 19 (two groups, the second partial).
const K = 16 * 43
const cases: SkinnyCase[] = [
  { M: 3, N: 64, K, flags: { NORM: true, BIAS: true } },
  { M: 19, N: 128, K, flags: { NORM: true, SWIGLU: true, ACC: true } },
]

describe("gemm_skinny", () => {
  it("RMSNorm, bias, SwiGLU pairs and the residual over padded row groups, under emulated subgroup matrices, match the CPU reference", async () => {
    if (!gpu.hasF16 || !gpu.hasSubgroups) return expect.fail(`the test device lacks shader-f16 or subgroups (${gpu.adapterName})`)
    const pipelines = new Pipelines(gpu)
    // Each case in both forms: one output tile a workgroup, and two sharing each left tile.
    for (const [i, c] of cases.entries()) {
      for (const COLS of [1, 2] as const) {
        const { NORM, ...flags } = c.flags
        const code = emulateSubgroupMatrices(pipelines.source(skinnyKey(flags, { SG: 32, SPLIT: 8, COLS })), "xh", "w")
        const module = gpu.device.createShaderModule({ label: "gemm_skinny emulated", code })
        const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
        expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([])
        const gemm = await gpu.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main", constants: { SG: 32, SPLIT: 8 } } })
        const half = await pipelines.get(halfRowsKey(NORM === true))
        expect(await skinnyError(gpu.device, half, gemm, c, 40 + i, COLS), `COLS ${COLS} ${JSON.stringify(c)}`).toBeLessThan(GEMM_TOLERANCE)
      }
    }
  })

  it.skipIf(noMatrix !== undefined)("on the device's matrix units: against the CPU reference", async () => {
    const pipelines = new Pipelines(gpu)
    for (const COLS of [1, 2] as const) {
      const k = skinnyFor(gpu, dummyPresets.tiny!, { SPLIT: 8, COLS })!
      for (const [i, c] of cases.entries()) {
        const { NORM, ...flags } = c.flags
        const error = await skinnyError(gpu.device, await pipelines.get(halfRowsKey(NORM === true)), await pipelines.get(skinnyKey(flags, k)), c, 50 + i, COLS)
        expect(error, `COLS ${COLS} ${JSON.stringify(c)}`).toBeLessThan(GEMM_TOLERANCE)
      }
    }
  })
})

describe("where the batch may use the matrix units", () => {
  const f16: SubgroupMatrixConfig = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }
  const nvidia = { matrixF16: f16, subgroupMinSize: 32, subgroupMaxSize: 32 }
  it("needs the f16 configuration, a fixed subgroup size, and rows and K in multiples of 16", () => {
    const c = dummyPresets["llama-3.1-8b"]!
    expect(skinnyFor(nvidia, c)).toEqual({ SG: 32, ...SKINNY_FORM })
    expect(skinnyFor(nvidia, c, { SPLIT: 16, COLS: 2 })).toEqual({ SG: 32, SPLIT: 16, COLS: 2 })
    expect(skinnyFor(nvidia, { ...c, hiddenSize: c.hiddenSize + 16 }, { SPLIT: 8, COLS: 2 })).toBeUndefined()
    expect(skinnyFor({ ...nvidia, matrixF16: undefined }, c)).toBeUndefined()
    expect(skinnyFor({ ...nvidia, subgroupMinSize: 16 }, c)).toBeUndefined()
    expect(skinnyFor(nvidia, { ...c, vocabSize: c.vocabSize + 8 })).toBeUndefined()
    expect(skinnyFor(nvidia, { ...c, intermediateSize: c.intermediateSize + 8 })).toBeUndefined()
    if (noMatrix) expect(skinnyFor(gpu, c)).toBeUndefined()
  })

  it("with LEOAM_SKINNY_GEMM=old, is the default from MMA_MIN_ROWS rows where it fits; the GEMVs, gemv_multi or the GEMMs elsewhere", () => {
    const c = dummyPresets["llama-3.1-8b"]!
    const h100 = { ...nvidia, kind: "discrete" as const, hasF16: true, hasSubgroups: true }
    expect(defaultProjections(h100, c, 16, "old")).toBe("mma")
    expect(defaultProjections(h100, c, MMA_MIN_ROWS, "old")).toBe("mma")
    expect(defaultProjections(h100, c, MMA_MIN_ROWS - 1, "old")).toBe("gemv")
    expect(defaultProjections({ ...h100, matrixF16: undefined }, c, 16, "old")).toBe("multi")
    expect(defaultProjections({ ...h100, kind: "cpu" }, c, 16, "old")).toBe("gemm")
  })
})

describe("a decode batch on the matrix units (emulated)", () => {
  it("gives each sequence of the bundled model the greedy ids it gets alone", async () => {
    const original = Pipelines.prototype.source
    Pipelines.prototype.source = function (this: Pipelines, key) {
      const text = original.call(this, key)
      return key.op === "gemm_skinny" ? emulateSubgroupMatrices(text, "xh", "w") : text
    }
    const dir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
    const source = openHfModel(dir)
    const lead = await GpuModel.load(gpu, source, { maxContext: 256 })
    const models = [lead, await lead.sibling({ maxContext: 256 })]
    // Prefill keeps today's GEMMs; only the batch is told the device has (emulated) matrix units.
    Object.defineProperty(lead, "gpu", { value: { ...gpu, matrixF16: { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }, subgroupMinSize: 32, subgroupMaxSize: 32 } })
    const prompts = [[1, 5, 9, 200, 31], Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 4000)]
    const tokens = 5
    try {
      const alone = []
      for (const [i, m] of models.entries()) alone.push((await generate(m, prompts[i]!, { maxTokens: tokens, temperature: 0 })).ids)
      const batch = await DecodeBatch.open(lead, 2, "mma", { minRows: 1 })
      try {
        const greedy = (step: number) => ({ outSlot: step, temperature: 0, seed: 0, step })
        for (const [i, m] of models.entries()) {
          m.reset()
          await m.prefill(prompts[i]!)
          m.sample(greedy(0))
        }
        for (let s = 1; s < tokens; s++) await batch.step(models.map((model) => ({ model, inSlot: s - 1, sample: greedy(s) })))
        const batched = await Promise.all(models.map(async (m) => [...new Uint32Array(await readBack(gpu.device, m.tokenIds, 0, tokens * 4))]))
        expect(batched).toEqual(alone)
      } finally {
        batch.destroy()
      }
    } finally {
      for (const m of models.slice(1)) m.destroy()
      lead.destroy()
      source.close()
      Pipelines.prototype.source = original
    }
  }, 120_000)
})
