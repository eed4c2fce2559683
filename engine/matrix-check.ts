// The prefill GEMM's contract on the CPU, and the check that the GPU's matrix-unit GEMM
// (kernels/gemm_sgmat.wgsl) meets it on this device. Dawn's subgroup matrices are
// experimental and f16 on NVIDIA's Vulkan driver is a measured risk (DESIGN §5), so a device
// uses them only after one small product, with every tile edge and the K double buffer
// exercised, matched this reference; otherwise today's gemm.wgsl stays in use.
import { f16ToF32, f32ToF16Bits } from "../models/half.ts"
import { readF32, Uniform, upload } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import { type PipelineKey, Pipelines } from "./pipelines.ts"
import { mulberry32 } from "./seeded.ts"

export interface GemmCase {
  readonly M: number
  readonly N: number
  readonly K: number
  /** ACC (add into y0), BIAS (bias[n]), SWIGLU (rows of W are [gate; up]; y is (M, N/2)). */
  readonly flags: Readonly<Record<string, boolean>>
}

/**
 * y (M, N or N/2) as gemm.wgsl and gemm_sgmat.wgsl define it: y = x (M, K) . w (N, K)^T
 * (+ bias) (+ y0), with SWIGLU y[m, j] = silu(z[m, j]) * z[m, N/2 + j] (W as stored, [gate; up]).
 * `scale`, if given, receives what each output's error is measured against (see gemmError).
 */
export const gemmReference = (c: GemmCase, x: Float32Array, w: Float32Array, bias: Float32Array | undefined, y0: Float32Array | undefined, scale?: Float32Array): Float32Array => {
  const { M, N, K, flags } = c
  const outs = flags.SWIGLU ? N / 2 : N
  const y = new Float32Array(M * outs)
  const z = new Float64Array(N)
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0
      for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!
      z[n] = s + (flags.BIAS && bias ? bias[n]! : 0)
    }
    for (let j = 0; j < outs; j++) {
      const v = flags.SWIGLU ? (z[j]! / (1 + Math.exp(-z[j]!))) * z[N / 2 + j]! : z[j]!
      y[m * outs + j] = (flags.ACC && y0 ? y0[m * outs + j]! : 0) + v
      if (scale) scale[m * outs + j] = Math.max(1, Math.abs(y[m * outs + j]!), flags.SWIGLU ? swigluErrorScale(z[j]!, z[N / 2 + j]!) : 0)
    }
  }
  return y
}

/**
 * What SwiGLU makes of its products' own error: y = silu(g) * u, so to first order
 * dy = silu'(g) * u * dg + silu(g) * du. With each product off by at most e * max(1, |z|)
 * (the plain product's metric), |dy| <= e * (|silu'(g) * u| * max(1, |g|) + |silu(g)| * max(1, |u|)),
 * and this is that bracket. Measured against it, a SwiGLU output is within tolerance exactly
 * when it is as accurate as its f16-input products allow. The earlier |u| * max(1, |g|) left
 * out the second term: where |u| is small and g large, silu(g) ~ g multiplies u's own error
 * (the H100's 2.3e-3 "SwiGLU error", bench/results/2026-12-07-night-matrix-gemm).
 */
export const swigluErrorScale = (g: number, u: number): number => {
  const s = 1 / (1 + Math.exp(-g))
  const dsilu = s * (1 + g * (1 - s))
  return Math.abs(dsilu * u) * Math.max(1, Math.abs(g)) + Math.abs(g * s) * Math.max(1, Math.abs(u))
}

/** Largest |got - want| relative to max(1, |want|), or to `scale` where given. */
export const worstError = (got: Float32Array, want: Float32Array, scale?: Float32Array): { at: number; error: number } => {
  let at = -1
  let error = 0
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!) / (scale ? scale[i]! : Math.max(1, Math.abs(want[i]!)))
    if (!(e <= error)) {
      error = e
      at = i
      if (Number.isNaN(e)) break
    }
  }
  return { at, error }
}

/** Seeded values in [-amp, amp) (mulberry32), the same on every run. */
export const seededValues = (seed: number, n: number, amp = 1): Float32Array => {
  const next = mulberry32(seed)
  return Float32Array.from({ length: n }, () => (next() * 2 - 1) * amp)
}

/** f16 bits of each value (padded to an even count) and the f16 values themselves (what the kernels multiply). */
export const toHalf = (v: Float32Array): { bits: Uint16Array; values: Float32Array } => {
  const bits = new Uint16Array(v.length + (v.length % 2))
  const values = new Float32Array(v.length)
  for (let i = 0; i < v.length; i++) {
    bits[i] = f32ToF16Bits(v[i]!)
    values[i] = f16ToF32(bits[i]!)
  }
  return { bits, values }
}

/**
 * Runs one GEMM (a pipeline of gemm or gemm_sgmat compiled with c.flags: same bindings) on
 * seeded data, one dispatch of (N / block.columns, M / block.rows) workgroups, and returns its
 * worst relative error against gemmReference. Activations are given to the reference rounded
 * to f16, as the matrix kernel stages them; the f32 kernel's own rounding stays inside `tol`.
 * A plain product's error is relative to max(1, |y|); a SwiGLU output's to its products'
 * error carried through silu(gate) * up as well (swigluErrorScale), so both are measured in
 * units of the products' own accuracy.
 */
export const gemmError = async (device: GPUDevice, pipeline: GPUComputePipeline, c: GemmCase, block: { rows: number; columns: number }, seed = 1): Promise<number> => {
  const { M, N, K, flags } = c
  const outs = flags.SWIGLU ? N / 2 : N
  const x = toHalf(seededValues(seed, M * K, 2)).values
  const w = toHalf(seededValues(seed + 1, N * K, 0.5))
  const bias = seededValues(seed + 2, N)
  const y0 = seededValues(seed + 3, M * outs)
  const u = new Uniform(device, "gemm check params", "uuuu")
  u.set(M, N, K, 0)
  const buffers = { x: upload(device, "x (M, K) f32", x), w: upload(device, "w (N, K) f16", w.bits), y: upload(device, "y (M, outs) f32", y0), bias: upload(device, "bias (N) f32", bias) }
  try {
    const entries: GPUBindGroupEntry[] = [
      { binding: 0, resource: { buffer: u.buffer } },
      { binding: 1, resource: { buffer: buffers.x } },
      { binding: 2, resource: { buffer: buffers.w } },
      { binding: 3, resource: { buffer: buffers.y } },
      ...(flags.BIAS ? [{ binding: 5, resource: { buffer: buffers.bias } }] : []),
    ]
    const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries })
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    pass.setPipeline(pipeline)
    pass.setBindGroup(0, group)
    pass.dispatchWorkgroups(Math.ceil(N / block.columns), Math.ceil(M / block.rows))
    pass.end()
    device.queue.submit([encoder.finish()])
    const got = await readF32(device, buffers.y, 0, M * outs)
    const scale = new Float32Array(M * outs)
    const want = gemmReference(c, x, w.values, bias, y0, scale)
    return worstError(got, want, scale).error
  } finally {
    for (const b of Object.values(buffers)) b.destroy()
    u.buffer.destroy()
  }
}

/**
 * A matrix GEMM kernel and its tiling: a workgroup of SGM x SGN subgroups of SG lanes, each
 * TM x TN tiles of 16 x 16, K in steps of BK, PAD halves after each staged row.
 * - `staged: false`: kernels/gemm_sgmat.wgsl, the measured form (0.96-1.14x of gemm on the
 *   H100): only X staged, W's tiles loaded straight from global memory; fixed at 2 x 2
 *   subgroups of 2 x 4 tiles (64 x 128), BK 32; N (SWIGLU: N/2) a multiple of 16.
 * - `staged: true`: kernels/gemm_sgmat_staged.wgsl, both operands staged, any TM, TN in {2, 4}
 *   (its flags TM4 / TN4), SGM, SGN, BK (overrides). The engine's default (DEFAULT_MATRIX_GEMM_SHAPE,
 *   42.24.32) unless LEOAM_MATRIX_GEMM_TILING names another.
 */
export interface MatrixGemmTiling {
  readonly staged: boolean
  readonly SG: number
  readonly PAD: number
  readonly SGM: number
  readonly SGN: number
  readonly TM: number
  readonly TN: number
  readonly BK: number
}
export type MatrixGemmShape = Omit<MatrixGemmTiling, "SG" | "PAD">

/** Output rows (BM) and W rows (BN; SWIGLU: BN / 2 outputs) of one workgroup. */
export const matrixGemmBlock = (t: Pick<MatrixGemmTiling, "SGM" | "SGN" | "TM" | "TN">): { rows: number; columns: number } => ({ rows: t.SGM * t.TM * 16, columns: t.SGN * t.TN * 16 })

/**
 * Workgroup memory: staged, two stages of X and W tiles as f16 (BK + PAD halves a row) and one
 * f32 16 x 16 tile a subgroup for the epilogue; W from global memory, two stages of X (64 rows)
 * and 4 x 512 f32.
 */
export const matrixGemmWorkgroupBytes = (t: MatrixGemmTiling): number => {
  if (!t.staged) return 2 * 64 * (32 + t.PAD) * 2 + 4 * 512 * 4
  const { rows, columns } = matrixGemmBlock(t)
  return 2 * (rows + columns) * (t.BK + t.PAD) * 2 + t.SGM * t.SGN * 1024
}

/** The one shape of kernels/gemm_sgmat.wgsl (W from global memory). */
export const GLOBAL_W_SHAPE: MatrixGemmShape = { staged: false, SGM: 2, SGN: 2, TM: 2, TN: 4, BK: 32 }

/**
 * Why a tiling cannot run (undefined if it can). Staged: TM, TN in {2, 4}; BK a multiple of
 * 16; each thread's share of a step's global loads (BM x BK / 4 vec4 of X, BN x BK / 8 of W)
 * whole and at most the kernel's 8 registers. Both: workgroup memory and invocations within
 * the device's limits.
 */
export const matrixGemmTilingProblem = (t: MatrixGemmTiling, maxWorkgroupBytes: number, maxInvocations = 1024): string | undefined => {
  if (!t.staged && ["SGM", "SGN", "TM", "TN", "BK"].some((k) => t[k as keyof MatrixGemmShape] !== GLOBAL_W_SHAPE[k as keyof MatrixGemmShape])) return "gemm_sgmat has one shape, 24.22.32"
  if (![2, 4].includes(t.TM) || ![2, 4].includes(t.TN)) return "TM and TN must be 2 or 4"
  if (!(t.BK >= 16 && t.BK % 16 === 0)) return "BK must be a multiple of 16"
  const threads = t.SGM * t.SGN * t.SG
  if (threads > maxInvocations) return `${threads} invocations`
  if (t.staged) {
    const { rows, columns } = matrixGemmBlock(t)
    for (const [what, loads] of [["X", (rows * t.BK) / 4], ["W", (columns * t.BK) / 8]] as const) {
      if (loads % threads !== 0 || loads / threads > 8 || loads < threads) return `${what}'s ${loads} loads a step do not split into 1..8 per thread of ${threads}`
    }
  }
  const bytes = matrixGemmWorkgroupBytes(t)
  return bytes > maxWorkgroupBytes ? `${bytes} bytes of workgroup memory, ${maxWorkgroupBytes} allowed` : undefined
}

/** A staged tiling written TMTN.SGMSGN.BK (e.g. 44.22.32: 4 x 4 tiles a subgroup, 2 x 2 subgroups, K steps of 32), or "global" for gemm_sgmat. */
export const parseMatrixGemmShape = (text: string): MatrixGemmShape => {
  if (text === "global") return GLOBAL_W_SHAPE
  const m = /^([24])([24])\.(\d)(\d)\.(\d+)$/.exec(text)
  if (!m) throw new Error(`a matrix GEMM tiling is "global" or TMTN.SGMSGN.BK such as 44.22.32, not "${text}"`)
  return { staged: true, TM: Number(m[1]), TN: Number(m[2]), SGM: Number(m[3]), SGN: Number(m[4]), BK: Number(m[5]) }
}

/** The name parseMatrixGemmShape reads. */
export const matrixGemmShapeName = (t: MatrixGemmShape): string => (t.staged ? `${t.TM}${t.TN}.${t.SGM}${t.SGN}.${t.BK}` : "global")

/**
 * The staged tiling the engine uses unless LEOAM_MATRIX_GEMM_TILING says otherwise: the fastest
 * measured on an H100 (bench/results/2026-12-07-late-gpu-session: 93.6 TFLOPS at 8192^3, 3.3x
 * today's gemm and 3.0x gemm_sgmat; 44.22.32 81.1, 22.22.64 55.8), checked there at every
 * epilogue. Where it does not fit the device, gemm_sgmat (W from global memory).
 */
export const DEFAULT_MATRIX_GEMM_SHAPE: MatrixGemmShape = { staged: true, TM: 4, TN: 2, SGM: 2, SGN: 4, BK: 32 }

/** LEOAM_MATRIX_GEMM_TILING (parseMatrixGemmShape's text) where set; undefined leaves the engine's default. */
export const matrixGemmShapeFromEnv = (env = process.env.LEOAM_MATRIX_GEMM_TILING): MatrixGemmShape | undefined =>
  env === undefined || env.trim() === "" ? undefined : parseMatrixGemmShape(env.trim())

/**
 * The tiling for a device's subgroup size (16..64) and workgroup memory: `shape` (default:
 * LEOAM_MATRIX_GEMM_TILING, else DEFAULT_MATRIX_GEMM_SHAPE and, where that does not fit,
 * gemm_sgmat's) with rows padded by 8 halves, else none; undefined if nothing fits.
 */
export const matrixGemmConstants = (lanes: number, maxWorkgroupBytes: number, shape?: MatrixGemmShape): MatrixGemmTiling | undefined => {
  if (!(lanes >= 16 && lanes <= 64 && (lanes & (lanes - 1)) === 0)) return undefined
  const shapes = shape ? [shape] : (() => {
    const env = matrixGemmShapeFromEnv()
    return env ? [env] : [DEFAULT_MATRIX_GEMM_SHAPE, GLOBAL_W_SHAPE]
  })()
  for (const s of shapes) {
    const t = [8, 0].map((PAD) => ({ SG: lanes, PAD, ...s })).find((t) => matrixGemmTilingProblem(t, maxWorkgroupBytes) === undefined)
    if (t) return t
  }
  return undefined
}

/** Relative error a correct f16-input, f32-accumulating GEMM stays under at K <= 256. */
export const GEMM_TOLERANCE = 2e-3

/** The pipeline key of a tiling's kernel for a GEMM's flags (ACC, BIAS, SWIGLU). */
export const matrixGemmKey = (flags: Record<string, boolean>, t: MatrixGemmTiling): PipelineKey =>
  t.staged
    ? {
        op: "gemm_sgmat_staged",
        flags: { ...flags, ...(t.TM === 4 ? { TM4: true } : {}), ...(t.TN === 4 ? { TN4: true } : {}) },
        constants: { SG: t.SG, PAD: t.PAD, SGM: t.SGM, SGN: t.SGN, BK: t.BK },
      }
    : { op: "gemm_sgmat", flags, constants: { SG: t.SG, PAD: t.PAD } }

/**
 * Undefined when the tiling's kernel computes this device's products correctly (M, N
 * not multiples of the workgroup's tile, three K steps, every epilogue); else why not, for
 * the caller to report before falling back to gemm.wgsl.
 */
export const checkMatrixGemm = async (gpu: Gpu, tiling: MatrixGemmTiling): Promise<string | undefined> => {
  const pipelines = new Pipelines(gpu)
  const block = matrixGemmBlock(tiling)
  const cases: GemmCase[] = [
    // gemm_sgmat needs N (SWIGLU: N/2) a multiple of 16; the staged kernel nothing.
    { M: block.rows + 6, N: block.columns + 80, K: 3 * tiling.BK, flags: { ACC: true, BIAS: true } },
    { M: 3, N: 2 * block.columns + 32, K: tiling.BK, flags: { SWIGLU: true } },
  ]
  try {
    for (const [i, c] of cases.entries()) {
      const pipeline = await pipelines.get(matrixGemmKey(c.flags, tiling))
      const error = await gemmError(gpu.device, pipeline, c, block, 11 + 7 * i)
      if (!(error <= GEMM_TOLERANCE)) return `${matrixGemmKey(c.flags, tiling).op} ${matrixGemmShapeName(tiling)} ${JSON.stringify(c)} differs from the CPU reference (relative error ${error})`
    }
    return undefined
  } catch (e) {
    return `${matrixGemmKey({}, tiling).op} ${matrixGemmShapeName(tiling)} failed: ${(e as Error).message}`
  }
}
