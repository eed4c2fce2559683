// Prefill's GEMM on the GPU's matrix units (kernels/gemm_sgmat.wgsl): the kernel against the
// CPU reference where the device offers f16 subgroup matrices (lavapipe in Mesa 25.0 does
// not), its tiling and epilogues under an emulation of subgroup matrices everywhere, and the
// choice between it and today's gemm.wgsl.
import { afterAll, describe, expect, it } from "vitest"
import { acquireGpu, type Gpu, matrixUnitsWanted, pickMatrixF16, readMatrixConfigs, releaseGpu, type SubgroupMatrixConfig } from "../engine/gpu.ts"
import { checkMatrixGemm, type GemmCase, gemmError, GEMM_TOLERANCE, matrixGemmConstants, matrixGemmWorkgroupBytes } from "../engine/matrix-check.ts"
import { gemmColumnsPerGroup, matrixGemmFor, pipelineKeys } from "../engine/model-resources.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { resolveGemvTunings } from "../engine/gemv-tuning.ts"
import { dummyPresets } from "../models/config.ts"
import { emulateSubgroupMatrices } from "./support/sgmat-emulation.ts"

// Opened at collection time: whether the device has matrix units decides what is skipped.
const gpu: Gpu = await acquireGpu()
const noMatrix =
  gpu.matrixF16 === undefined
    ? `${gpu.adapterName} has no f16 16x16x16 subgroup-matrix configuration (offered: ${JSON.stringify(gpu.subgroupMatrixConfigs)}; lavapipe in Mesa 25.0 offers no chromium-experimental-subgroup-matrix)`
    : undefined
if (noMatrix) console.log(`gemm_sgmat on the matrix units skipped: ${noMatrix}`)
afterAll(async () => {
  await releaseGpu()
})

const variants: ReadonlyArray<Record<string, boolean>> = [{}, { ACC: true }, { BIAS: true }, { ACC: true, BIAS: true }, { SWIGLU: true }, { SWIGLU: true, ACC: true }]
// M and N off the 64 x 128 tile, three K steps of 32 (both stages of the double buffer).
const cases: GemmCase[] = variants.map((flags) => ({ M: 70, N: flags.SWIGLU ? 288 : 208, K: 96, flags }))

describe("gemm_sgmat", () => {
  it("tiling, double buffering and both epilogue paths under emulated subgroup matrices match the CPU reference", async () => {
    if (!gpu.hasF16 || !gpu.hasSubgroups) return expect.fail(`the test device lacks shader-f16 or subgroups (${gpu.adapterName})`)
    const pipelines = new Pipelines(gpu)
    // lavapipe compiles each emulated variant for tens of seconds: the two epilogue paths only
    // (a plain store with bias; SwiGLU pairs added into y), with the staged rows padded by 4
    // halves (off the GPU's 8) and by none.
    const emulated: Array<[number, GemmCase]> = [
      [4, { M: 70, N: 208, K: 96, flags: { BIAS: true } }],
      [0, { M: 70, N: 288, K: 96, flags: { SWIGLU: true, ACC: true } }],
    ]
    for (const [i, [PAD, c]] of emulated.entries()) {
      const code = emulateSubgroupMatrices(pipelines.source({ op: "gemm_sgmat", flags: c.flags }), "xs", "w")
      const module = gpu.device.createShaderModule({ label: "gemm_sgmat emulated", code })
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
      expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([])
      const pipeline = await gpu.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main", constants: { SG: 32, PAD } } })
      const error = await gemmError(gpu.device, pipeline, c, 128, 300 + i)
      expect(error, `PAD ${PAD} ${JSON.stringify(c)}`).toBeLessThan(GEMM_TOLERANCE)
    }
  })

  it.skipIf(noMatrix !== undefined)("on the device's matrix units: every epilogue against the CPU reference", async () => {
    const pipelines = new Pipelines(gpu)
    for (const [i, c] of cases.entries()) {
      const constants = matrixGemmConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize)!
      const pipeline = await pipelines.get({ op: "gemm_sgmat", flags: c.flags, constants: { ...constants } })
      expect(await gemmError(gpu.device, pipeline, c, 128, 400 + i), JSON.stringify(c)).toBeLessThan(GEMM_TOLERANCE)
    }
    expect(await checkMatrixGemm(gpu, matrixGemmConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize)!)).toBeUndefined()
  })
})

describe("choosing the prefill GEMM", () => {
  const config = dummyPresets["llama-3.1-8b"]!
  const gemv = resolveGemvTunings(config, { wg: 128, rows: 2 }, undefined)
  const f16: SubgroupMatrixConfig = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }
  const nvidia = { matrixF16: f16, subgroupMinSize: 32, subgroupMaxSize: 32, limits: { maxComputeWorkgroupStorageSize: 49152 } as GPUSupportedLimits }

  it("today's gemm where the device has no f16 subgroup matrices", () => {
    expect(matrixGemmFor({ ...nvidia, matrixF16: undefined }, config)).toBeUndefined()
    for (const k of Object.values(pipelineKeys(config, gemv, true, undefined))) expect(k.op).not.toBe("gemm_sgmat")
    // This device: no configuration, no matrix GEMM in its model's keys.
    if (noMatrix) expect(matrixGemmFor(gpu, config)).toBeUndefined()
  })

  it("gemm_sgmat with the subgroup size where the device has them, today's gemm where a shape or limit does not fit", () => {
    expect(matrixGemmFor(nvidia, config)).toEqual({ SG: 32, PAD: 8 })
    const keys = pipelineKeys(config, gemv, true, { SG: 32, PAD: 8 })
    expect(keys.gemmSwiglu).toEqual({ op: "gemm_sgmat", flags: { SWIGLU: true }, constants: { SG: 32, PAD: 8 } })
    expect(gemmColumnsPerGroup(keys.gemmAcc)).toBe(128)
    expect(gemmColumnsPerGroup(pipelineKeys(config, gemv, true).gemmAcc)).toBe(64)
    // The fallback's pipeline names are those of before (cache keys, prewarm lists).
    expect(pipelineKeys(config, gemv, true).gemm).toEqual({ op: "gemm" })
    expect(matrixGemmFor({ ...nvidia, subgroupMinSize: 16 }, config)).toBeUndefined()
    // Too little workgroup memory for the padded rows: no padding; less than the unpadded kernel needs: none.
    expect(matrixGemmFor({ ...nvidia, limits: { maxComputeWorkgroupStorageSize: matrixGemmWorkgroupBytes(8) - 1 } as GPUSupportedLimits }, config)).toEqual({ SG: 32, PAD: 0 })
    expect(matrixGemmFor({ ...nvidia, limits: { maxComputeWorkgroupStorageSize: matrixGemmWorkgroupBytes(0) - 1 } as GPUSupportedLimits }, config)).toBeUndefined()
    expect(matrixGemmFor(nvidia, { ...config, intermediateSize: 14336 + 16 })).toBeUndefined()
  })

  it("picks the 16x16x16 f16 -> f32 configuration and reads LEOAM_MATRIX_UNITS", () => {
    const configs: SubgroupMatrixConfig[] = [
      { componentType: "u8", resultComponentType: "u32", M: 16, N: 16, K: 32 },
      { componentType: "f16", resultComponentType: "f16", M: 16, N: 16, K: 16 },
      { componentType: "f16", resultComponentType: "f32", M: 16, N: 8, K: 16 },
      f16,
    ]
    expect(pickMatrixF16(configs)).toEqual(f16)
    // Dawn's config objects keep their fields in prototype getters (they print as {}).
    class Native {
      get componentType() { return "f16" }
      get resultComponentType() { return "f32" }
      get M() { return 16 }
      get N() { return 16 }
      get K() { return 16 }
    }
    expect(JSON.stringify(new Native())).toBe("{}")
    expect(readMatrixConfigs({ subgroupMatrixConfigs: [new Native()] } as unknown as GPUAdapterInfo)).toEqual([f16])
    expect(readMatrixConfigs({} as GPUAdapterInfo)).toEqual([])
    expect(pickMatrixF16(configs.slice(0, 3))).toBeUndefined()
    expect(matrixUnitsWanted(undefined, "nvidia")).toBe(true)
    expect(matrixUnitsWanted(undefined, "mesa")).toBe(false)
    expect(matrixUnitsWanted("auto", "nvidia")).toBe(true)
    expect(matrixUnitsWanted("auto", "mesa")).toBe(false)
    expect(matrixUnitsWanted("0", "nvidia")).toBe(false)
    expect(matrixUnitsWanted("1", "mesa")).toBe(true)
    expect(() => matrixUnitsWanted("yes please", "nvidia")).toThrow(/LEOAM_MATRIX_UNITS/)
  })
})
