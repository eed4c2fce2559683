// Prefill's GEMM on the GPU's matrix units (kernels/gemm_sgmat.wgsl): the kernel against the
// CPU reference where the device offers f16 subgroup matrices (lavapipe in Mesa 25.0 does
// not), its tiling and epilogues under an emulation of subgroup matrices everywhere, and the
// choice between it and today's gemm.wgsl.
import { afterAll, describe, expect, it } from "vitest"
import { acquireGpu, type Gpu, matrixUnitsWanted, pickMatrixF16, readMatrixConfigs, releaseGpu, type SubgroupMatrixConfig } from "../engine/gpu.ts"
import { checkMatrixGemm, DEFAULT_MATRIX_GEMM_SHAPE, type GemmCase, gemmError, GEMM_TOLERANCE, matrixGemmBlock, matrixGemmConstants, GLOBAL_W_SHAPE, matrixGemmKey, matrixGemmShapeFromEnv, matrixGemmShapeName, type MatrixGemmTiling, matrixGemmTilingProblem, matrixGemmWorkgroupBytes, parseMatrixGemmShape, swigluErrorScale } from "../engine/matrix-check.ts"
import { gemmColumnsPerGroup, gemmRowsPerGroup, matrixGemmFor, pipelineKeys } from "../engine/model-resources.ts"
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

describe("gemm_sgmat", () => {
  it("tiling, double buffering and both epilogue paths under emulated subgroup matrices match the CPU reference", async () => {
    if (!gpu.hasF16 || !gpu.hasSubgroups) return expect.fail(`the test device lacks shader-f16 or subgroups (${gpu.adapterName})`)
    const pipelines = new Pipelines(gpu)
    // Each emulated variant runs in about a second on lavapipe. gemm_sgmat (W from global
    // memory): a plain store with bias, rows padded by 4 halves (off the GPU's 8); SwiGLU pairs
    // added into y, no padding. gemm_sgmat_staged: 4 x 4 tiles a subgroup (one subgroup, K
    // steps of 16) with SwiGLU pairs added into y, padded by 4; 2 x 2 tiles in 1 x 2 subgroups,
    // K steps of 32, a plain store with bias, no padding. M and N off the tile, three K steps
    // (both stages of the double buffer).
    const global = { SG: 32, ...GLOBAL_W_SHAPE }
    const emulated: Array<[MatrixGemmTiling, GemmCase]> = [
      [{ ...global, PAD: 4 }, { M: 70, N: 208, K: 96, flags: { BIAS: true } }],
      [{ ...global, PAD: 0 }, { M: 70, N: 288, K: 96, flags: { SWIGLU: true, ACC: true } }],
      [{ staged: true, SG: 32, PAD: 4, SGM: 1, SGN: 1, TM: 4, TN: 4, BK: 16 }, { M: 70, N: 96, K: 48, flags: { SWIGLU: true, ACC: true } }],
      [{ staged: true, SG: 32, PAD: 0, SGM: 1, SGN: 2, TM: 2, TN: 2, BK: 32 }, { M: 40, N: 72, K: 96, flags: { BIAS: true } }],
    ]
    for (const [i, [t, c]] of emulated.entries()) {
      expect(matrixGemmTilingProblem(t, gpu.limits.maxComputeWorkgroupStorageSize)).toBeUndefined()
      const key = matrixGemmKey(c.flags, t)
      const code = emulateSubgroupMatrices(pipelines.source(key), "xs", t.staged ? "ws" : "w")
      const module = gpu.device.createShaderModule({ label: "gemm_sgmat emulated", code })
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
      expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([])
      const pipeline = await gpu.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main", constants: { ...key.constants } } })
      const error = await gemmError(gpu.device, pipeline, c, matrixGemmBlock(t), 300 + i)
      expect(error, `${JSON.stringify(t)} ${JSON.stringify(c)}`).toBeLessThan(GEMM_TOLERANCE)
    }
  })

  it.skipIf(noMatrix !== undefined)("on the device's matrix units: every epilogue against the CPU reference", async () => {
    const pipelines = new Pipelines(gpu)
    const t = matrixGemmConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize)!
    const block = matrixGemmBlock(t)
    for (const [i, flags] of variants.entries()) {
      const c: GemmCase = { M: block.rows + 6, N: flags.SWIGLU ? 2 * block.columns + 32 : block.columns + 80, K: 3 * t.BK, flags }
      const pipeline = await pipelines.get(matrixGemmKey(flags, t))
      expect(await gemmError(gpu.device, pipeline, c, block, 400 + i), JSON.stringify(c)).toBeLessThan(GEMM_TOLERANCE)
    }
    expect(await checkMatrixGemm(gpu, t)).toBeUndefined()
  })

  it("SwiGLU's error is measured against its products' error carried through silu(gate) * up", () => {
    // Where up is small and gate large, silu(gate) ~ gate multiplies up's own error.
    expect(swigluErrorScale(40, 0.01)).toBeCloseTo(40.4, 6)
    // Where gate is very negative, silu and its slope vanish: the bound is small, not 1.
    expect(swigluErrorScale(-40, 20)).toBeLessThan(1e-12)
    // At gate 0: silu'(0) = 1/2, silu(0) = 0.
    expect(swigluErrorScale(0, 8)).toBeCloseTo(4, 12)
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

  it("gemm_sgmat_staged 42.24.32 with the subgroup size where the device has them, gemm_sgmat where it does not fit, today's gemm where nothing does", () => {
    const staged = { SG: 32, PAD: 8, ...DEFAULT_MATRIX_GEMM_SHAPE }
    expect(DEFAULT_MATRIX_GEMM_SHAPE).toEqual(parseMatrixGemmShape("42.24.32"))
    expect(matrixGemmFor(nvidia, config)).toEqual(staged)
    const tiling = { SG: 32, PAD: 8, ...GLOBAL_W_SHAPE }
    const keys = pipelineKeys(config, gemv, true, tiling)
    expect(keys.gemmSwiglu).toEqual({ op: "gemm_sgmat", flags: { SWIGLU: true }, constants: { SG: 32, PAD: 8 } })
    expect(gemmColumnsPerGroup(keys.gemmAcc)).toBe(128)
    expect(gemmRowsPerGroup(keys.gemmAcc)).toBe(64)
    const stagedKeys = pipelineKeys(config, gemv, true, staged)
    expect([gemmRowsPerGroup(stagedKeys.gemmAcc), gemmColumnsPerGroup(stagedKeys.gemmAcc)]).toEqual([128, 128])
    expect(gemmColumnsPerGroup(pipelineKeys(config, gemv, true).gemmAcc)).toBe(64)
    expect(gemmRowsPerGroup(pipelineKeys(config, gemv, true).gemmAcc)).toBe(64)
    // The fallback's pipeline names are those of before (cache keys, prewarm lists).
    expect(pipelineKeys(config, gemv, true).gemm).toEqual({ op: "gemm" })
    expect(matrixGemmFor({ ...nvidia, subgroupMinSize: 16 }, config)).toBeUndefined()
    // Less workgroup memory: the staged tiling unpadded, then gemm_sgmat padded, then unpadded, then none.
    const limit = (bytes: number) => ({ ...nvidia, limits: { maxComputeWorkgroupStorageSize: bytes } as GPUSupportedLimits })
    expect(matrixGemmFor(limit(matrixGemmWorkgroupBytes(staged) - 1), config)).toEqual({ ...staged, PAD: 0 })
    expect(matrixGemmFor(limit(matrixGemmWorkgroupBytes({ ...staged, PAD: 0 }) - 1), config)).toEqual(tiling)
    expect(matrixGemmFor(limit(matrixGemmWorkgroupBytes(tiling) - 1), config)).toEqual({ ...tiling, PAD: 0 })
    expect(matrixGemmFor(limit(matrixGemmWorkgroupBytes({ ...tiling, PAD: 0 }) - 1), config)).toBeUndefined()
    // K steps of 32: an intermediate size of 14352 fits neither.
    expect(matrixGemmFor(nvidia, { ...config, intermediateSize: 14336 + 16 })).toBeUndefined()
    expect(matrixGemmTilingProblem({ ...tiling, TM: 4 }, 49152)).toMatch(/one shape/)
  })

  it("gemm_sgmat_staged where LEOAM_MATRIX_GEMM_TILING asks, with its workgroup tile", () => {
    expect(matrixGemmShapeFromEnv(undefined)).toBeUndefined()
    expect(matrixGemmShapeFromEnv("global")).toEqual(GLOBAL_W_SHAPE)
    const shape = matrixGemmShapeFromEnv("44.22.32")!
    expect(shape).toEqual({ staged: true, TM: 4, TN: 4, SGM: 2, SGN: 2, BK: 32 })
    expect(matrixGemmShapeName(shape)).toBe("44.22.32")
    expect(() => parseMatrixGemmShape("33.22.32")).toThrow(/TMTN/)
    const tiling = matrixGemmConstants(32, 49152, shape)!
    expect(tiling).toEqual({ SG: 32, PAD: 8, ...shape })
    const key = matrixGemmKey({ SWIGLU: true }, tiling)
    expect(key).toEqual({ op: "gemm_sgmat_staged", flags: { SWIGLU: true, TM4: true, TN4: true }, constants: { SG: 32, PAD: 8, SGM: 2, SGN: 2, BK: 32 } })
    expect([gemmRowsPerGroup(key), gemmColumnsPerGroup(key)]).toEqual([128, 128])
    const wide = matrixGemmKey({}, matrixGemmConstants(32, 49152, parseMatrixGemmShape("44.24.16"))!)
    expect([gemmRowsPerGroup(wide), gemmColumnsPerGroup(wide)]).toEqual([128, 256])
    // 44 KiB with padded rows; unpadded where less is offered; none below that.
    expect(matrixGemmConstants(32, matrixGemmWorkgroupBytes(tiling) - 1, shape)).toEqual({ ...tiling, PAD: 0 })
    expect(matrixGemmConstants(32, matrixGemmWorkgroupBytes({ ...tiling, PAD: 0 }) - 1, shape)).toBeUndefined()
    expect(matrixGemmTilingProblem({ ...tiling, TM: 3 }, 49152)).toMatch(/TM/)
    expect(matrixGemmTilingProblem({ ...tiling, SGM: 1, SGN: 1, TM: 2, TN: 2, BK: 16 }, 49152)).toBeUndefined()
    expect(matrixGemmTilingProblem({ ...tiling, SGM: 4, SGN: 4, TM: 2, TN: 2, BK: 16 }, 49152)).toMatch(/loads/)
    // Every workgroup variable (xs, ws, cs) a multiple of 16 bytes, and row strides too: a 4-byte
    // variable beside matrix arrays broke every matrix load of attn_prefill_mx on an H100 (0fc756c).
    for (const name of ["44.22.32", "42.24.32", "44.12.32", "22.22.64", "44.22.16", "44.24.16", "44.42.16"]) {
      for (const PAD of [0, 8]) {
        const t = { SG: 32, PAD, ...parseMatrixGemmShape(name) }
        const { rows, columns } = matrixGemmBlock(t)
        const vars = [2 * rows * (t.BK + PAD) * 2, 2 * columns * (t.BK + PAD) * 2, t.SGM * t.SGN * 1024]
        expect(vars.map((b) => b % 16), name).toEqual([0, 0, 0])
        expect(((t.BK + PAD) * 2) % 16, name).toBe(0)
        expect(vars.reduce((a, b) => a + b), name).toBe(matrixGemmWorkgroupBytes(t))
      }
    }
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
