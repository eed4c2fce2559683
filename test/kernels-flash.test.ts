// Flash-attention prefill on the GPU's matrix units (kernels/attn_prefill_mx.wgsl) against
// the CPU reference: under an emulation of subgroup matrices everywhere (lavapipe offers
// none), so its tiling, GQA rows, lazy softmax, rescaling and WINDOW state are checked in CI,
// and on the device's own matrix units where it has them.
import { afterAll, describe, expect, it } from "vitest"
import { ATTN_MATRIX_TOLERANCE, type AttnCase, attnInputs, attnReference, checkMatrixAttention, type KeyWindow, matrixAttnConstants, matrixAttnWorkgroupBytes, runPrefillAttention } from "../engine/attn-check.ts"
import { acquireGpu, type Gpu, matrixKernelWanted, releaseGpu, SUBGROUP_MATRIX_FEATURE, type SubgroupMatrixConfig } from "../engine/gpu.ts"
import { worstError } from "../engine/matrix-check.ts"
import { attnPrefillKey, matrixAttnFor, prefillRowsPerGroup, windowedPrefillKey } from "../engine/model-resources.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { dummyPresets } from "../models/config.ts"
import { emulateFlashAttention, workgroupVariableBytes } from "./support/flash-emulation.ts"

const gpu: Gpu = await acquireGpu()
// Where the device was opened with subgroup matrices, the kernel is checked whatever the
// device-open check concluded (a failure there only falls back; here it fails the test).
const noMatrix = gpu.device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName) ? undefined : `${gpu.adapterName} has no subgroup matrices`
afterAll(async () => {
  await releaseGpu()
})

const pipelines = new Pipelines(gpu)

/** The emulated kernel compiled with these constants (WINDOW or not). */
const emulated = async (window: boolean, constants: Record<string, number>, direct = false) => {
  const code = emulateFlashAttention(pipelines.source({ op: "attn_prefill_mx", flags: { WINDOW: window, KDIRECT: direct } }))
  const module = gpu.device.createShaderModule({ label: "attn_prefill_mx emulated", code })
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
  expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([])
  return gpu.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main", constants } })
}

const check = async (pipeline: GPUComputePipeline, c: AttnCase, nsg: number, seed: number, windows?: ReadonlyArray<KeyWindow>) => {
  const inputs = attnInputs(c, seed)
  const got = await runPrefillAttention(gpu.device, pipeline, c, inputs, 16 * nsg, windows)
  const { at, error } = worstError(got, attnReference(c, inputs))
  expect(error, `${JSON.stringify(c)} ${windows ? JSON.stringify(windows) : "one pass"}: element ${at}`).toBeLessThan(ATTN_MATRIX_TOLERANCE)
  return error
}

describe("attn_prefill_mx under emulated subgroup matrices", () => {
  it("one causal pass: GQA rows off the tile, keys off the 32-key tile, the max moving past TAU", async () => {
    if (!gpu.hasF16) return expect.fail(`the test device lacks shader-f16 (${gpu.adapterName})`)
    // 4 subgroups, D 64 (the bundled model's head dim), pad 8: 31 KiB, inside lavapipe's 32.
    const wide = await emulated(false, { SG: 32, NSG: 4, PAD: 8, G: 3, D: 64 })
    await check(wide, { G: 3, KV: 2, D: 64, BS: 16, pos0: 0, M: 45 }, 4, 1)
    await check(wide, { G: 3, KV: 1, D: 64, BS: 32, pos0: 70, M: 30 }, 4, 2)
    await check(wide, { G: 3, KV: 1, D: 64, BS: 32, pos0: 70, M: 30, qAmp: 24 }, 4, 10)
  })

  it("WINDOW at D 128: passes over key windows, in any order, equal one causal pass, rescaling the carried state", async () => {
    // 2 subgroups, D 128 unpadded (the 8B shapes' G and D; 30 KiB): 148 rows, keys 0 .. 106.
    const c: AttnCase = { G: 4, KV: 2, D: 128, BS: 16, pos0: 70, M: 37 }
    const win = await emulated(true, { SG: 32, NSG: 2, PAD: 0, G: c.G, D: c.D })
    await check(win, c, 2, 3, [[0, 0]])
    await check(win, c, 2, 4, [[0, 32], [32, 80], [80, 0]])
    // KDIRECT (K and V loaded from the pools, not staged): a half tile past the keys reads the
    // last visible 16 keys' block instead, masked; blocks of 16 and of 32 keys.
    const direct = await emulated(true, { SG: 32, NSG: 2, PAD: 0, G: c.G, D: c.D }, true)
    await check(direct, c, 2, 5, [[80, 0], [0, 32], [32, 80]])
    // [96, end) holds no key for the first workgroup's rows: it runs no tile and keeps its state.
    await check(win, c, 2, 6, [[0, 96], [96, 0]])
    await check(direct, { ...c, BS: 32 }, 2, 7, [[96, 0], [0, 96]])
    // Scores spread over tens: the reference max moves past TAU within and between passes.
    await check(win, { ...c, qAmp: 24 }, 2, 8, [[32, 80], [0, 32], [80, 0]])
  })

  it("OSHARED (O in workgroup memory): one pass and windowed passes, the max moving past TAU", async () => {
    // D 64, 2 subgroups, pad 8, O's 8 KiB: 28 KiB.
    const c: AttnCase = { G: 3, KV: 2, D: 64, BS: 16, pos0: 70, M: 37 }
    const code = emulateFlashAttention(pipelines.source({ op: "attn_prefill_mx", flags: { WINDOW: true, OSHARED: true } }))
    const module = gpu.device.createShaderModule({ label: "attn_prefill_mx OSHARED emulated", code })
    const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
    expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([])
    const win = await gpu.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main", constants: { SG: 32, NSG: 2, PAD: 8, G: c.G, D: c.D } } })
    await check(win, c, 2, 11, [[0, 0]])
    await check(win, c, 2, 12, [[80, 0], [0, 32], [32, 80]])
    await check(win, { ...c, qAmp: 24 }, 2, 13, [[32, 80], [0, 32], [80, 96], [96, 0]])
  })

  it("every workgroup variable a multiple of 16 bytes, and their sum what the constants are chosen by", () => {
    // What the emulation cannot show: on an H100 a 4-byte variable among the matrix arrays
    // turned every matrix load and store of this kernel into garbage.
    for (const shared of [false, true]) {
      for (const window of [false, true]) {
        const source = pipelines.source({ op: "attn_prefill_mx", flags: { WINDOW: window, OSHARED: shared } })
        for (const D of [64, 128]) {
          for (const NSG of [1, 2, 4]) {
            for (const PAD of [0, 8]) {
              const sizes = workgroupVariableBytes(source, { D, NSG, PAD, SG: 32, G: 4 })
              for (const [name, bytes] of Object.entries(sizes)) expect(bytes % 16, `${name} (${bytes} bytes), D ${D}, NSG ${NSG}, PAD ${PAD}`).toBe(0)
              expect(Object.values(sizes).reduce((a, b) => a + b, 0)).toBe(matrixAttnWorkgroupBytes({ NSG, PAD }, D, shared))
            }
          }
        }
      }
    }
    // The check itself: a u32 flag is caught.
    const old = pipelines.source({ op: "attn_prefill_mx" }).replace("rescale: vec4<u32>", "rescale: u32")
    expect(workgroupVariableBytes(old, { D: 128, NSG: 4, PAD: 8 }).rescale).toBe(4)
  })

  it("choosing constants: 4 subgroups padded where 48 KiB allow, fewer where less, none past D 128", () => {
    expect(matrixAttnConstants(32, 49152, 128)).toEqual({ SG: 32, NSG: 4, PAD: 8 })
    expect(matrixAttnConstants(32, 32768, 128)).toEqual({ SG: 32, NSG: 2, PAD: 0 })
    expect(matrixAttnConstants(32, 32768, 64)).toEqual({ SG: 32, NSG: 4, PAD: 8 })
    expect(matrixAttnConstants(32, 49152, 256)).toBeUndefined()
    expect(matrixAttnConstants(32, 49152, 72)).toBeUndefined()
    expect(matrixAttnConstants(8, 49152, 128)).toBeUndefined()
  })
})

describe.skipIf(noMatrix !== undefined)("attn_prefill_mx on the device's matrix units", () => {
  it("matches the CPU reference (the check the device runs before using it)", async () => {
    const constants = matrixAttnConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize, 128)!
    expect(await checkMatrixAttention(gpu, constants)).toBeUndefined()
  })
})

describe("choosing the prefill attention kernel", () => {
  const config = dummyPresets["llama-3.1-8b"]!
  const f16: SubgroupMatrixConfig = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }
  const nvidia = { matrixAttention: f16, matrixAttentionShared: false, matrixAttentionDirect: false, subgroupMinSize: 32, subgroupMaxSize: 32, limits: { maxComputeWorkgroupStorageSize: 49152 } as GPUSupportedLimits }

  it("attn_prefill_mx with 16 rows a subgroup where the device passed its check, today's kernels elsewhere", () => {
    const mx = matrixAttnFor(nvidia, config)
    expect(mx).toEqual({ constants: { SG: 32, NSG: 4, PAD: 8 }, shared: false })
    const key = attnPrefillKey(config, true, false, mx)
    expect(key).toEqual({ op: "attn_prefill_mx", constants: { G: 4, D: 128, SG: 32, NSG: 4, PAD: 8 } })
    expect(prefillRowsPerGroup(key)).toBe(64)
    expect(windowedPrefillKey(key).flags).toEqual({ WINDOW: true })
    // Only O in workgroup memory passed: 2 subgroups unpadded fit 48 KiB with O's 16 KiB.
    const shared = matrixAttnFor({ ...nvidia, matrixAttentionShared: true }, config)
    expect(shared).toEqual({ constants: { SG: 32, NSG: 2, PAD: 0 }, shared: true })
    const sharedKey = attnPrefillKey(config, true, false, shared)
    expect(sharedKey.flags).toEqual({ OSHARED: true })
    expect(prefillRowsPerGroup(sharedKey)).toBe(32)
    expect(windowedPrefillKey(sharedKey).flags).toEqual({ OSHARED: true, WINDOW: true })
    // LEOAM_MATRIX_ATTENTION=direct passed: K and V loaded from the pool (KDIRECT), WINDOW kept.
    const direct = matrixAttnFor({ ...nvidia, matrixAttentionDirect: true }, config)
    expect(direct).toEqual({ constants: { SG: 32, NSG: 4, PAD: 8 }, shared: false, direct: true })
    expect(windowedPrefillKey(attnPrefillKey(config, true, false, direct)).flags).toEqual({ KDIRECT: true, WINDOW: true })
    // No matrix attention: the kernels of before, 32 rows a workgroup, under their old names.
    expect(matrixAttnFor({ ...nvidia, matrixAttention: undefined }, config)).toBeUndefined()
    expect(matrixAttnFor({ ...nvidia, subgroupMinSize: 16 }, config)).toBeUndefined()
    expect(matrixAttnFor(nvidia, { ...config, headDim: 256 })).toBeUndefined()
    for (const [sub, reg, op] of [[true, false, "attn_prefill_sg"], [false, false, "attn_prefill"], [true, true, "attn_prefill_reg"]] as const) {
      const k = attnPrefillKey(config, sub, reg)
      expect(k).toEqual({ op, constants: { G: 4, D: 128 } })
      expect(prefillRowsPerGroup(k)).toBe(32)
    }
    if (!gpu.matrixAttention) expect(matrixAttnFor(gpu, config)).toBeUndefined()
  })

  it("reads LEOAM_MATRIX_ATTENTION and LEOAM_MATRIX_GEMM (default on where the matrix units are)", () => {
    expect(matrixKernelWanted("LEOAM_MATRIX_ATTENTION", undefined)).toBe(true)
    expect(matrixKernelWanted("LEOAM_MATRIX_ATTENTION", "auto")).toBe(true)
    expect(matrixKernelWanted("LEOAM_MATRIX_GEMM", "0")).toBe(false)
    expect(() => matrixKernelWanted("LEOAM_MATRIX_GEMM", "maybe")).toThrow(/LEOAM_MATRIX_GEMM/)
  })
})
