// Batched decode's matrix-unit projection (kernels/half_rows.wgsl then gemm_skinny.wgsl) on
// the CPU, and one run of it on the GPU against that reference, for the tests, the bench and
// the device's check. The reference takes x' (normalized, times gamma) rounded to f16 as the
// kernel does, so what remains is the product's f32 accumulation.
import { f16ToF32, f32ToF16Bits } from "../models/half.ts"
import { dispatchOf, readF32, Uniform, upload } from "./buffers.ts"
import { seededValues, toHalf, worstError } from "./matrix-check.ts"

export interface SkinnyCase {
  readonly M: number
  readonly N: number
  readonly K: number
  /** NORM (RMSNorm of x by gamma first), ACC, BIAS, SWIGLU (W = [gate; up], y (M, N/2)). */
  readonly flags: Readonly<Record<string, boolean>>
}

export const SKINNY_EPS = 1e-5

/** x' as the kernel multiplies it: (with NORM x * rsqrt(mean(x^2) + eps) * gamma), rounded to f16 (unless `round` is false: half_rows' F32). */
export const skinnyLeft = (c: SkinnyCase, x: Float32Array, gamma: Float32Array, round = true): Float32Array => {
  const out = new Float32Array(c.M * c.K)
  for (let m = 0; m < c.M; m++) {
    let ss = 0
    for (let k = 0; k < c.K; k++) ss += x[m * c.K + k]! ** 2
    const scale = c.flags.NORM ? 1 / Math.sqrt(ss / c.K + SKINNY_EPS) : 1
    for (let k = 0; k < c.K; k++) {
      const v = Math.fround(Math.fround(x[m * c.K + k]! * scale) * (c.flags.NORM ? gamma[k]! : 1))
      out[m * c.K + k] = round ? f16ToF32(f32ToF16Bits(Math.max(-65504, Math.min(65504, v)))) : v
    }
  }
  return out
}

/** y as the decode GEMVs define it, from x' (skinnyLeft). */
export const skinnyReference = (c: SkinnyCase, xl: Float32Array, w: Float32Array, bias: Float32Array, y0: Float32Array): Float32Array => {
  const { M, N, K, flags } = c
  const outs = flags.SWIGLU ? N / 2 : N
  const y = new Float32Array(M * outs)
  const z = new Float64Array(N)
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0
      for (let k = 0; k < K; k++) s += xl[m * K + k]! * w[n * K + k]!
      z[n] = s + (flags.BIAS ? bias[n]! : 0)
    }
    for (let j = 0; j < outs; j++) {
      const v = flags.SWIGLU ? (z[j]! / (1 + Math.exp(-z[j]!))) * z[N / 2 + j]! : z[j]!
      y[m * outs + j] = (flags.ACC ? y0[m * outs + j]! : 0) + v
    }
  }
  return y
}

/**
 * Runs half_rows (`half`, compiled with NORM as c.flags.NORM) and gemm_skinny (`gemm`, with
 * c's other flags, `cols` output tiles a workgroup) or gemm_stream (`grid` its workgroups) on
 * seeded data as batch.ts does (`roundLeft` false: half_rows' F32 rows) and returns the worst relative error of y
 * against skinnyReference. The padding rows of xh start as NaN: the kernel must rewrite them
 * (a NaN row would poison nothing else, but zeros keep the scratch clean).
 */
export const skinnyError = async (device: GPUDevice, half: GPUComputePipeline, gemm: GPUComputePipeline, c: SkinnyCase, seed = 1, cols = 1, grid?: readonly [number, number, number], roundLeft = true): Promise<number> => {
  const { M, N, K, flags } = c
  const rows = Math.ceil(M / 16) * 16
  const outs = flags.SWIGLU ? N / 2 : N
  const x = seededValues(seed, M * K, 2)
  const gamma = toHalf(seededValues(seed + 4, K, 1))
  const w = toHalf(seededValues(seed + 1, N * K, 0.5))
  const bias = seededValues(seed + 2, N)
  const y0 = seededValues(seed + 3, M * outs)
  const uh = new Uniform(device, "half_rows check", "uufu")
  uh.set(M, K, SKINNY_EPS, 0)
  const ug = new Uniform(device, "gemm_skinny check", "uuuu")
  ug.set(M, N, K, 0)
  const buffers = {
    x: upload(device, "x (M, K) f32", x),
    gamma: upload(device, "gamma (K) f16", gamma.bits),
    // NaN (as f16 or f32: half_rows may write f32 rows): padding rows must be rewritten.
    xh: upload(device, "xh (rows, K) f16 or f32", new Uint16Array(rows * K * 2).fill(0x7e00)),
    w: upload(device, "w (N, K) f16", w.bits),
    y: upload(device, "y (M, outs) f32", y0),
    bias: upload(device, "bias (N) f32", bias),
  }
  try {
    const h = dispatchOf(device, half, [[0, uh.buffer], [1, buffers.x], [2, buffers.xh], ...(flags.NORM ? [[4, buffers.gamma] as const] : [])], rows)
    const [gx, gy, gz] = grid ?? [outs / (16 * cols), 1, rows / 16]
    const g = dispatchOf(device, gemm, [[0, ug.buffer], [1, buffers.xh], [2, buffers.w], [3, buffers.y], ...(flags.BIAS ? [[5, buffers.bias] as const] : [])], gx, gy, gz)
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    for (const d of [h, g]) {
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(d.x, d.y, d.z)
    }
    pass.end()
    device.queue.submit([encoder.finish()])
    const got = await readF32(device, buffers.y, 0, M * outs)
    return worstError(got, skinnyReference(c, skinnyLeft(c, x, gamma.values, roundLeft), w.values, bias, y0)).error
  } finally {
    for (const b of Object.values(buffers)) b.destroy()
    uh.buffer.destroy()
    ug.buffer.destroy()
  }
}
