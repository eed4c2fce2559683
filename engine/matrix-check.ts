// The prefill GEMM's contract on the CPU, and the check that the GPU's matrix-unit GEMM
// (kernels/gemm_sgmat.wgsl) meets it on this device. Dawn's subgroup matrices are
// experimental and f16 on NVIDIA's Vulkan driver is a measured risk (DESIGN §5), so a device
// uses them only after one small product, with every tile edge and the K double buffer
// exercised, matched this reference; otherwise today's gemm.wgsl stays in use.
import { f16ToF32, f32ToF16Bits } from "../models/half.ts"
import { readF32, Uniform, upload } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import { type PipelineKey, Pipelines } from "./pipelines.ts"

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
      if (scale) scale[m * outs + j] = Math.max(1, Math.abs(y[m * outs + j]!), flags.SWIGLU ? Math.abs(z[N / 2 + j]!) * Math.max(1, Math.abs(z[j]!)) : 0)
    }
  }
  return y
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
  let a = seed >>> 0
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * amp
  }
  return out
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
 * seeded data, one dispatch of (N / columnsPerGroup, M / 64) workgroups, and returns its
 * worst relative error against gemmReference. Activations are given to the reference rounded
 * to f16, as the matrix kernel stages them; the f32 kernel's own rounding stays inside `tol`.
 * With SWIGLU the error is relative to max(1, |y|, |up| * max(1, |gate|)): silu(gate) * up
 * multiplies the product's own error in gate by up (and in up by ~gate), so an error of e
 * in the product becomes ~e * |up| * max(1, |gate|) in y whatever |y| is. Against |y|
 * alone, the H100's matrix units (plain product 1.7e-4 off at K = 4096, f16-exact inputs)
 * measured 2.3e-3 to 4.5e-3 through SwiGLU with |up| ~ 20 (bench/results/2026-12-07-matrix-gemm-2).
 */
export const gemmError = async (device: GPUDevice, pipeline: GPUComputePipeline, c: GemmCase, columnsPerGroup: number, seed = 1): Promise<number> => {
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
    pass.dispatchWorkgroups(Math.ceil(N / columnsPerGroup), Math.ceil(M / 64))
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

/** gemm_sgmat's override constants: SG lanes a subgroup, PAD halves after each staged row. */
export interface MatrixGemmConstants {
  readonly SG: number
  readonly PAD: number
}

/** Workgroup memory of gemm_sgmat: two stages of X (64 rows of 32 + pad halves); 4 x 512 f32 for the epilogue. */
export const matrixGemmWorkgroupBytes = (pad: number): number => 2 * 64 * (32 + pad) * 2 + 4 * 512 * 4

/** The constants for a device's subgroup size (16..64) and workgroup memory; undefined if none fit. */
export const matrixGemmConstants = (lanes: number, maxWorkgroupBytes: number): MatrixGemmConstants | undefined => {
  if (!(lanes >= 16 && lanes <= 64 && (lanes & (lanes - 1)) === 0)) return undefined
  const pad = [8, 0].find((p) => matrixGemmWorkgroupBytes(p) <= maxWorkgroupBytes)
  return pad === undefined ? undefined : { SG: lanes, PAD: pad }
}

/** Relative error a correct f16-input, f32-accumulating GEMM stays under at K <= 256. */
export const GEMM_TOLERANCE = 2e-3

/**
 * Undefined when gemm_sgmat with these constants computes this device's products correctly (M, N
 * not multiples of the 64 x 128 tile, N (SWIGLU: N/2) a multiple of 16 as the kernel needs,
 * three K steps, every epilogue); else why not, for the
 * caller to report before falling back to gemm.wgsl.
 */
export const checkMatrixGemm = async (gpu: Gpu, constants: MatrixGemmConstants): Promise<string | undefined> => {
  const pipelines = new Pipelines(gpu)
  const key: PipelineKey = { op: "gemm_sgmat", constants: { ...constants } }
  const cases: GemmCase[] = [
    { M: 70, N: 208, K: 96, flags: { ACC: true, BIAS: true } },
    { M: 3, N: 288, K: 32, flags: { SWIGLU: true } },
  ]
  try {
    for (const [i, c] of cases.entries()) {
      const pipeline = await pipelines.get({ ...key, flags: c.flags })
      const error = await gemmError(gpu.device, pipeline, c, 128, 11 + 7 * i)
      if (!(error <= GEMM_TOLERANCE)) return `gemm_sgmat ${JSON.stringify(c)} differs from the CPU reference (relative error ${error})`
    }
    return undefined
  } catch (e) {
    return `gemm_sgmat failed: ${(e as Error).message}`
  }
}
