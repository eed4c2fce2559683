// What a GpuModel allocates besides weights and KV: the pipeline keys of every kernel it
// runs, its activation buffers (sized for one prefill chunk), and the uniforms of its
// dispatches (attention's own belong to the KV managers). Shapes are in the labels.
import type { ModelConfig } from "../models/types.ts"
import { storageBuffer, Uniform } from "./buffers.ts"
import { type GemvOp, type GemvTunings, gemvKey, gemvRowsPerGroup } from "./gemv-tuning.ts"
import type { Gpu } from "./gpu.ts"
import { type MatrixAttn, matrixAttnConstants, splitAttnConstants, splitAttnKey } from "./attn-check.ts"
import { matrixGemmBlock, matrixGemmConstants, matrixGemmKey, type MatrixGemmTiling } from "./matrix-check.ts"
import type { PipelineKey } from "./pipelines.ts"
import type { ForecastInputs } from "./kv/manager.ts"

/** The pipeline keys of a model's kernels on this device: pipelineKeys with what the device offers. */
export const modelKeys = (gpu: Gpu, c: ModelConfig, gemv: GemvTunings) =>
  pipelineKeys(c, gemv, prefillWithSubgroups(gpu), matrixGemmFor(gpu, c), registerGemmFor(gpu), matrixAttnFor(gpu, c))

/**
 * The decode attention kernel for the model's heads: 16 value loads in flight per thread
 * where the head dim allows (a multiple of 32), else 8.
 */
export const attnDecodeKey = (c: ModelConfig): PipelineKey => ({
  op: "attn_decode",
  flags: { V16: c.headDim % 32 === 0 },
  constants: { G: c.numHeads / c.numKvHeads, D: c.headDim },
})

/** Workgroups of the first argmax / log-sum-exp pass. */
export const ARGMAX_GROUPS = 64

/**
 * The matrix GEMM's tiling for prefill's GEMMs on the matrix units, or undefined for today's
 * gemm: the device must have been opened with an f16 matrix configuration (gpu.ts, which
 * also checked the kernel there), a fixed subgroup size of 16..64, room for the kernel's
 * workgroup memory, and every projection's K (hidden, heads x head dim, intermediate) a
 * multiple of the tiling's K step. gemm_sgmat (W from global memory) also needs the rows
 * (q + k + v, hidden, intermediate) multiples of 16; the staged kernel clamps W's rows.
 */
export const matrixGemmFor = (gpu: Pick<Gpu, "matrixF16" | "subgroupMinSize" | "subgroupMaxSize" | "limits">, c: ModelConfig): MatrixGemmTiling | undefined => {
  if (!gpu.matrixF16 || gpu.subgroupMinSize !== gpu.subgroupMaxSize) return undefined
  const tiling = matrixGemmConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize)
  if (!tiling) return undefined
  const ks = [c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize]
  const ns = [(c.numHeads + 2 * c.numKvHeads) * c.headDim, c.hiddenSize, c.intermediateSize]
  return ks.every((k) => k % tiling.BK === 0) && (tiling.staged || ns.every((n) => n % 16 === 0)) ? tiling : undefined
}

/**
 * Whether prefill's GEMMs (without matrix units) and attention use gemm_reg and
 * attn_prefill_reg, which have no workgroup memory and no barrier: on a CPU adapter
 * (lavapipe), where gemm_reg ran 2.8-3.1x gemm's speed at the bundled model's shapes (M 352;
 * N 2048, K 384 and N 384, K 1024) and attn_prefill_reg 1.6x attn_prefill_sg's (352 queries
 * over 2952 keys, G 3, D 64; 2 cores).
 */
export const registerGemmFor = (gpu: Pick<Gpu, "kind">): boolean => gpu.kind === "cpu"

/** A prefill GEMM's key: the matrix GEMM (gemm_sgmat or gemm_sgmat_staged) where `matrix` is set, else gemm_reg where `registers`, else gemm. */
export const gemmKey = (flags: Record<string, boolean>, matrix: MatrixGemmTiling | undefined, registers = false): PipelineKey =>
  matrix !== undefined ? matrixGemmKey(flags, matrix) : { op: registers ? "gemm_reg" : "gemm", ...(Object.keys(flags).length > 0 ? { flags } : {}) }

/** A matrix GEMM's workgroup tile from its key (matrixGemmKey's flags and constants). */
const matrixBlock = (key: PipelineKey) =>
  key.op === "gemm_sgmat"
    ? { rows: 64, columns: 128 }
    : matrixGemmBlock({ SGM: key.constants?.SGM ?? 2, SGN: key.constants?.SGN ?? 2, TM: key.flags?.TM4 ? 4 : 2, TN: key.flags?.TN4 ? 4 : 2 })
const isMatrix = (key: PipelineKey) => key.op === "gemm_sgmat" || key.op === "gemm_sgmat_staged"

/** Columns of W (dispatch x) per workgroup of a prefill GEMM (SWIGLU: half as many outputs). */
export const gemmColumnsPerGroup = (key: PipelineKey): number => (isMatrix(key) ? matrixBlock(key).columns : 64)

/** Output rows (dispatch y) per workgroup of a prefill GEMM. */
export const gemmRowsPerGroup = (key: PipelineKey): number => (isMatrix(key) ? matrixBlock(key).rows : 64)

/**
 * The constants of attn_prefill_mx (flash attention on the matrix units) for this model, or
 * undefined for today's prefill attention: the device must have passed the kernel's check
 * (gpu.ts; LEOAM_MATRIX_ATTENTION=0 turns it off), with a fixed subgroup size, a head dim that
 * is a multiple of 16 up to 128, and room for the kernel's workgroup memory.
 */
export const matrixAttnFor = (
  gpu: Pick<Gpu, "matrixAttention" | "matrixAttentionShared" | "matrixAttentionDirect" | "matrixAttentionSplit" | "subgroupMinSize" | "subgroupMaxSize" | "limits">,
  c: ModelConfig,
): MatrixAttn | undefined => {
  if (!gpu.matrixAttention || gpu.subgroupMinSize !== gpu.subgroupMaxSize) return undefined
  const shared = gpu.matrixAttentionShared
  const constants = matrixAttnConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize, c.headDim, shared)
  const split = gpu.matrixAttentionSplit ? splitAttnConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize, c.headDim) : undefined
  return constants && { constants, shared, ...(gpu.matrixAttentionDirect ? { direct: true } : {}), ...(split ? { split } : {}) }
}

/** The prefill attention kernel: attn_prefill_mx on matrix units, else attn_prefill_reg on a CPU adapter, else attn_prefill_sg or attn_prefill. */
export const attnPrefillKey = (c: ModelConfig, prefillSubgroups: boolean, registers: boolean, matrix?: MatrixAttn): PipelineKey => {
  const G = c.numHeads / c.numKvHeads
  if (matrix?.split) return splitAttnKey({ G, D: c.headDim }, matrix.split)
  if (matrix) {
    const flags = { ...(matrix.shared ? { OSHARED: true } : {}), ...(matrix.direct ? { KDIRECT: true } : {}) }
    return { op: "attn_prefill_mx", ...(Object.keys(flags).length > 0 ? { flags } : {}), constants: { G, D: c.headDim, ...matrix.constants } }
  }
  return { op: registers ? "attn_prefill_reg" : prefillSubgroups ? "attn_prefill_sg" : "attn_prefill", constants: { G, D: c.headDim } }
}

/** Rows (query, head-in-group) per workgroup of a prefill attention key: 16 per subgroup for attn_prefill_mx, 16 per row tile for attn_prefill_fa, else 32. */
export const prefillRowsPerGroup = (key: PipelineKey): number =>
  key.op === "attn_prefill_mx" ? 16 * (key.constants?.NSG ?? 4) : key.op === "attn_prefill_fa" ? 16 * (key.constants?.RT ?? 1) : 32

export const pipelineKeys = (c: ModelConfig, gemv: GemvTunings, prefillSubgroups: boolean, matrix?: MatrixGemmTiling, registerGemm = false, matrixAttn?: MatrixAttn) => {
  const g = (op: GemvOp, flags: Record<string, boolean>): PipelineKey => gemvKey(gemv[op], flags)
  const G = c.numHeads / c.numKvHeads
  return {
    embed: { op: "embed" },
    rmsnorm: { op: "rmsnorm" },
    rope: { op: "rope_kv" },
    gemvQkv: g("qkv", { NORM: true }),
    gemvQkvBias: g("qkv", { NORM: true, BIAS: true }),
    gemvQkvRope: g("qkv", { NORM: true, ROPE: true }),
    gemvQkvRopeBias: g("qkv", { NORM: true, ROPE: true, BIAS: true }),
    gemvO: g("o", { ACC: true }),
    gemvOBias: g("o", { ACC: true, BIAS: true }),
    gemvGu: g("gu", { NORM: true, SWIGLU: true }),
    gemvDown: g("down", { ACC: true }),
    gemvHead: g("head", { NORM: true }),
    gemm: gemmKey({}, matrix, registerGemm),
    gemmBias: gemmKey({ BIAS: true }, matrix, registerGemm),
    gemmAcc: gemmKey({ ACC: true }, matrix, registerGemm),
    gemmAccBias: gemmKey({ ACC: true, BIAS: true }, matrix, registerGemm),
    gemmSwiglu: gemmKey({ SWIGLU: true }, matrix, registerGemm),
    attnDecode: attnDecodeKey(c),
    combine: { op: "attn_combine" },
    attnPrefill: attnPrefillKey(c, prefillSubgroups, registerGemm, matrixAttn),
    argmax: { op: "argmax" },
    gumbel: { op: "argmax", flags: { GUMBEL: true } },
    argmaxFinal: { op: "argmax", flags: { FINAL: true } },
    // Every row of a decode batch at once (engine/batch-sampling.ts).
    argmaxRows: { op: "argmax", flags: { ROWS: true } },
    argmaxRowsFinal: { op: "argmax", flags: { FINAL: true, ROWS: true } },
    candidates: { op: "select", flags: { VALUES: true } },
    lse: { op: "lse" },
    lseFinal: { op: "lse", flags: { FINAL: true } },
    candidatesRows: { op: "select", flags: { VALUES: true, ROWS: true } },
    lseRows: { op: "lse", flags: { ROWS: true } },
  } satisfies Record<string, PipelineKey>
}

/** The prefill attention kernel in window mode (softmax state carried between passes). */
export const windowedPrefillKey = (key: PipelineKey): PipelineKey => ({ ...key, flags: { ...key.flags, WINDOW: true } })

/** The uniform of a decode GEMV (lib/gemv_io.wgsl Params): N, K, eps, groups_x, then H, KV, D, BS for ROPE. */
export const gemvUniform = (device: GPUDevice, label: string): Uniform => new Uniform(device, label, "uufuuuuu")

export const allocateActivations = (device: GPUDevice, c: ModelConfig, chunk: number, maxSplits: number) => {
  const f = 4
  const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim
  const qDim = c.numHeads * c.headDim
  return {
    x: storageBuffer(device, "x (chunk, hidden) f32 residual stream", chunk * c.hiddenSize * f),
    xn: storageBuffer(device, "xn (chunk, hidden) f32 normed", chunk * c.hiddenSize * f),
    xlast: storageBuffer(device, "xlast (hidden) f32", c.hiddenSize * f),
    qkv: storageBuffer(device, "qkv (chunk, q+k+v) f32", chunk * qkvRows * f),
    q: storageBuffer(device, "q (chunk, H, D) f32 roped", chunk * qDim * f),
    attn: storageBuffer(device, "attn (chunk, H, D) f32", chunk * qDim * f),
    ffn: storageBuffer(device, "ffn (chunk, F) f32", chunk * c.intermediateSize * f),
    logits: storageBuffer(device, "logits (vocab) f32", c.vocabSize * f),
    rope: storageBuffer(device, "rope (chunk, D/2) vec2 cos,sin", chunk * c.headDim * f),
    slot: storageBuffer(device, "slot (chunk) u32", chunk * 4),
    promptIds: storageBuffer(device, "prompt ids (chunk) u32", chunk * 4),
    partO: storageBuffer(device, "attn partials (H, splits, D) f32", c.numHeads * maxSplits * c.headDim * f),
    partML: storageBuffer(device, "attn partial max,sum (H, splits) vec2", c.numHeads * maxSplits * 8),
    samplePart: storageBuffer(device, "sample partials (groups) vec2", ARGMAX_GROUPS * 8),
  }
}

export const createUniforms = (device: GPUDevice, c: ModelConfig, gemv: GemvTunings, blockTokens: number) => {
  const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim
  const qDim = c.numHeads * c.headDim
  const gemvU = (label: GemvOp, n: number, k: number) => {
    const u = gemvUniform(device, `gemv ${label}`)
    u.set(n, k, c.rmsNormEps, Math.min(Math.ceil(n / gemvRowsPerGroup(gemv[label])), 65535), c.numHeads, c.numKvHeads, c.headDim, blockTokens)
    return u
  }
  const gemmU = (label: string) => new Uniform(device, label, "uuuu")
  const u = {
    embedDecode: new Uniform(device, "embed decode", "uuuuuuuu"),
    embedPrefill: new Uniform(device, "embed prefill", "uuuuuuuu"),
    rmsnorm: new Uniform(device, "rmsnorm", "ufuu"),
    ropeDecode: new Uniform(device, "rope decode", "uuuuuuuu"),
    ropePrefill: new Uniform(device, "rope prefill", "uuuuuuuu"),
    combine: new Uniform(device, "attn combine", "uuuu"),
    sample: new Uniform(device, "sample", "uuuuufuu"),
    gemvQkv: gemvU("qkv", qkvRows, c.hiddenSize),
    gemvO: gemvU("o", c.hiddenSize, qDim),
    gemvGu: gemvU("gu", 2 * c.intermediateSize, c.hiddenSize),
    gemvDown: gemvU("down", c.hiddenSize, c.intermediateSize),
    gemvHead: gemvU("head", c.vocabSize, c.hiddenSize),
    gemmQkv: gemmU("gemm qkv"),
    gemmO: gemmU("gemm o"),
    gemmGu: gemmU("gemm gate/up"),
    gemmDown: gemmU("gemm down"),
    setGemmRows(m: number) {
      u.gemmQkv.set(m, qkvRows, c.hiddenSize)
      u.gemmO.set(m, c.hiddenSize, qDim)
      u.gemmGu.set(m, 2 * c.intermediateSize, c.hiddenSize)
      u.gemmDown.set(m, c.hiddenSize, c.intermediateSize)
    },
  }
  u.rmsnorm.set(c.hiddenSize, c.rmsNormEps)
  u.ropeDecode.set(1, c.numHeads, c.numKvHeads, c.headDim, blockTokens)
  return u
}

/** Writes the RoPE table (m, D/2) vec2 (cos, sin) of positions pos0.. into `out`; returns its bytes. */
export const fillRope = (out: Float32Array, invFreq: Float32Array, pos0: number, m: number): number => {
  const half = invFreq.length
  for (let t = 0; t < m; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround((pos0 + t) * invFreq[i])
      out[(t * half + i) * 2] = Math.cos(angle)
      out[(t * half + i) * 2 + 1] = Math.sin(angle)
    }
  }
  return m * half * 8
}

/**
 * Whether the decode QKV GEMV can apply RoPE itself: its rows are taken in quads, and it
 * binds 8 storage buffers (9 with a bias).
 */
export const canFuseRope = (gpu: Gpu, gemv: GemvTunings, bias: boolean): boolean =>
  gemv.qkv.rows % 4 === 0 && gpu.device.limits.maxStorageBuffersPerShaderStage >= (bias ? 9 : 8)

/** The largest subgroup of the device (undefined: no subgroups), for checking GEMV tunings. */
export const subgroupsOf = (gpu: Gpu): number | undefined => (gpu.hasSubgroups ? gpu.subgroupMaxSize : undefined)

/** attn_prefill_sg needs the 8 lanes of a row in one subgroup. */
export const prefillWithSubgroups = (gpu: Gpu) => gpu.hasSubgroups && gpu.subgroupMinSize >= 8

/** The model's side of prefetch's hidden-state forecast (KvContext.forecast): its decode input, RoPE, layers and QKV GEMV. */
export const forecastInputs = (a: { readonly x: GPUBuffer; readonly rope: GPUBuffer }, layers: ForecastInputs["layers"], keys: ReturnType<typeof pipelineKeys>, gemv: GemvTunings): ForecastInputs => ({
  x: a.x,
  rope: a.rope,
  layers,
  gemv: { key: keys.gemvQkv, biasKey: keys.gemvQkvBias, rowsPerGroup: gemvRowsPerGroup(gemv.qkv) },
})
