// The split-key flash attention on the matrix units (kernels/attn_prefill_fa.wgsl) against the
// CPU reference, under the emulation of subgroup matrices (lavapipe offers none; its shuffles
// emulated too): row tiles, key splits merged at the end, GQA rows, the lazy softmax's rescale,
// WINDOW passes in any order; and on the device's own matrix units where it has them.
import { afterAll, describe, expect, it } from "vitest"
import { ATTN_MATRIX_TOLERANCE, type AttnCase, attnInputs, attnReference, checkSplitAttention, type KeyWindow, runPrefillAttention, splitAttnConstants, splitAttnWorkgroupBytes } from "../engine/attn-check.ts"
import { acquireGpu, type Gpu, releaseGpu, SUBGROUP_MATRIX_FEATURE, type SubgroupMatrixConfig } from "../engine/gpu.ts"
import { worstError } from "../engine/matrix-check.ts"
import { attnPrefillKey, matrixAttnFor, prefillRowsPerGroup, windowedPrefillKey } from "../engine/model-resources.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { dummyPresets } from "../models/config.ts"
import { emulateFlashAttention, workgroupVariableBytes } from "./support/flash-emulation.ts"

const gpu: Gpu = await acquireGpu()
const noMatrix = gpu.device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName) ? undefined : `${gpu.adapterName} has no subgroup matrices`
afterAll(async () => {
  await releaseGpu()
})

const pipelines = new Pipelines(gpu)

/** The emulated kernel with NSG subgroups in RT row tiles (WINDOW or not). */
const emulated = async (window: boolean, c: AttnCase, NSG: number, RT: number) => {
  const code = emulateFlashAttention(pipelines.source({ op: "attn_prefill_fa", flags: { WINDOW: window, KDIRECT: true } }))
  const module = gpu.device.createShaderModule({ label: "attn_prefill_fa emulated", code })
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
  expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([])
  return gpu.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main", constants: { SG: 32, NSG, RT, G: c.G, D: c.D } } })
}

const check = async (pipeline: GPUComputePipeline, c: AttnCase, RT: number, seed: number, windows?: ReadonlyArray<KeyWindow>) => {
  const inputs = attnInputs(c, seed)
  const got = await runPrefillAttention(gpu.device, pipeline, c, inputs, 16 * RT, windows)
  const { at, error } = worstError(got, attnReference(c, inputs))
  expect(error, `${JSON.stringify(c)} ${windows ? JSON.stringify(windows) : "one pass"}: element ${at}`).toBeLessThan(ATTN_MATRIX_TOLERANCE)
}

describe("attn_prefill_fa under emulated subgroup matrices", () => {
  it("2 row tiles of 2 key splits merged: GQA rows off the tile, a split past the keys, WINDOW passes in any order, the max moving past TAU", async () => {
    if (!gpu.hasF16) return expect.fail(`the test device lacks shader-f16 (${gpu.adapterName})`)
    // One pipeline (each compile costs lavapipe tens of seconds under load): 4 subgroups, D 64,
    // 31.5 KiB with the emulation's exchange, inside lavapipe's 32. Head dim 128 is checked on
    // the GPU at device open (checkSplitAttention).
    const c: AttnCase = { G: 3, KV: 2, D: 64, BS: 16, pos0: 150, M: 13 }
    const kernel = await emulated(true, c, 4, 2)
    await check(kernel, c, 2, 1, [[0, 0]])
    // [144, end) is one tile: a split sees no key there and keeps its state.
    await check(kernel, { ...c, qAmp: 24 }, 2, 2, [[144, 0], [0, 48], [48, 144]])
  })

  it("every workgroup variable a multiple of 16 bytes, and their sum what the constants are chosen by", () => {
    for (const window of [false, true]) {
      for (const BK of [64, 32] as const) {
        const source = pipelines.source({ op: "attn_prefill_fa", flags: { WINDOW: window, KDIRECT: true, BK32: BK === 32 } })
        for (const D of [64, 128]) {
          for (const [NSG, RT] of [[1, 1], [2, 1], [2, 2], [4, 1], [4, 2], [8, 1]] as const) {
            const sizes = workgroupVariableBytes(source, { D, NSG, RT, SG: 32, G: 4 })
            for (const [name, bytes] of Object.entries(sizes)) expect(bytes % 16, `${name} (${bytes} bytes), D ${D}, NSG ${NSG}, RT ${RT}, BK ${BK}`).toBe(0)
            expect(Object.values(sizes).reduce((a, b) => a + b, 0)).toBe(splitAttnWorkgroupBytes({ NSG, RT, BK }, D))
          }
        }
      }
    }
    expect(splitAttnConstants(32, 49152, 128)).toEqual({ SG: 32, NSG: 4, RT: 1 })
    expect(splitAttnConstants(32, 16384, 128)).toEqual({ SG: 32, NSG: 1, RT: 1 })
    expect(splitAttnConstants(16, 49152, 128)).toBeUndefined()
    expect(splitAttnConstants(32, 49152, 72)).toBeUndefined()
  })
})

describe.skipIf(noMatrix !== undefined)("attn_prefill_fa on the device's matrix units", () => {
  it("matches the CPU reference (the check the device runs before using it)", async () => {
    const constants = splitAttnConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize, 128)!
    expect(await checkSplitAttention(gpu, constants)).toBeUndefined()
  })
})

describe("choosing attn_prefill_fa", () => {
  it("where LEOAM_MATRIX_ATTENTION=split passed its check: 16 rows a workgroup, WINDOW kept, else attn_prefill_mx", () => {
    const config = dummyPresets["llama-3.1-8b"]!
    const f16: SubgroupMatrixConfig = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }
    const nvidia = { matrixAttention: f16, matrixAttentionShared: false, matrixAttentionDirect: false, matrixAttentionSplit: true, subgroupMinSize: 32, subgroupMaxSize: 32, limits: { maxComputeWorkgroupStorageSize: 49152 } as GPUSupportedLimits }
    const key = attnPrefillKey(config, true, false, matrixAttnFor(nvidia, config))
    expect(key).toEqual({ op: "attn_prefill_fa", flags: { KDIRECT: true }, constants: { G: 4, D: 128, SG: 32, NSG: 4, RT: 1 } })
    expect(prefillRowsPerGroup(key)).toBe(16)
    expect(windowedPrefillKey(key).flags).toEqual({ KDIRECT: true, WINDOW: true })
    // 16-lane subgroups: no split form, the check's choice stands (attn_prefill_mx).
    expect(attnPrefillKey(config, true, false, matrixAttnFor({ ...nvidia, subgroupMinSize: 16, subgroupMaxSize: 16 }, config)).op).toBe("attn_prefill_mx")
  })
})
