// The harness of the kernel tests: seeded data, f16 inputs the CPU reference sees
// exactly, one-dispatch runs of a kernel by its pipeline key, read-back, and a tolerance
// check that names the worst element. Test-only; holds no state besides its buffers.
import { expect } from "vitest"
import { bind, readBack, storageBuffer, Uniform, upload } from "../engine/buffers.ts"
import type { Gpu } from "../engine/gpu.ts"
import { type PipelineKey, Pipelines } from "../engine/pipelines.ts"
import { f16ToF32, f32ToF16Bits } from "../models/half.ts"
import { mulberry32 } from "../engine/seeded.ts"

// --- data ---------------------------------------------------------------------------

/** mulberry32: a seeded uniform [0, 1) generator. */
export const rng = mulberry32

export type Rand = ReturnType<typeof rng>

/** n values uniform in [-amp, amp), as f32. */
export const uniformF32 = (rand: Rand, n: number, amp = 1): Float32Array => {
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * amp
  return out
}

/** An f16 tensor: its bits (padded to an even count for 4-byte uploads) and their exact values. */
export interface Half {
  readonly bits: Uint16Array
  readonly values: Float32Array
}

export const halfOf = (x: Float32Array): Half => {
  const bits = new Uint16Array(x.length + (x.length % 2))
  const values = new Float32Array(x.length)
  for (let i = 0; i < x.length; i++) {
    bits[i] = f32ToF16Bits(x[i]!)
    values[i] = f16ToF32(bits[i]!)
  }
  return { bits, values }
}

/** n f16 values uniform in [-amp, amp). */
export const randomHalf = (rand: Rand, n: number, amp = 1): Half => halfOf(uniformF32(rand, n, amp))

/** Fisher-Yates with the seeded generator. */
export const shuffled = <T>(rand: Rand, items: ReadonlyArray<T>): T[] => {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

// --- tolerance ----------------------------------------------------------------------

/** |got - want| <= abs + rel * |want| for every element. */
export interface Tolerance {
  readonly abs: number
  readonly rel: number
}

/** Per output dtype: f32 sums (order differs from the CPU), f16 stores (one rounding). */
export const TOL = {
  f32: { abs: 1e-4, rel: 1e-4 },
  f16: { abs: 2 ** -24, rel: 2 ** -10 },
} as const satisfies Record<string, Tolerance>

/** Asserts closeness and reports the worst element; returns the worst error / bound ratio. */
export const expectClose = (got: ArrayLike<number>, want: ArrayLike<number>, tol: Tolerance, what = "values"): number => {
  expect(got.length, `${what}: length`).toBe(want.length)
  let worst = 0
  let at = -1
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!)
    const ratio = Number.isNaN(err) ? Infinity : err / (tol.abs + tol.rel * Math.abs(want[i]!))
    if (ratio > worst || at < 0) {
      worst = ratio
      at = i
    }
  }
  if (worst > 1) expect.fail(`${what}: element ${at} is ${got[at]}, want ${want[at]} (${worst.toFixed(1)}x the tolerance)`)
  return worst
}

// --- running kernels ----------------------------------------------------------------

export interface UniformSpec {
  /** "u" / "f" per 32-bit field, as Uniform takes it. */
  readonly layout: string
  readonly values: ReadonlyArray<number>
}

/** Creates buffers and runs single dispatches through one Pipelines; destroy() frees all. */
export class KernelRig {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  private readonly owned: GPUBuffer[] = []

  constructor(readonly gpu: Gpu) {
    this.device = gpu.device
    this.pipelines = new Pipelines(gpu)
  }

  /** The same device, compiling without `enable subgroups` (the fallback kernels). */
  withoutSubgroups(): KernelRig {
    return new KernelRig({ ...this.gpu, hasSubgroups: false })
  }

  private own(buffer: GPUBuffer): GPUBuffer {
    this.owned.push(buffer)
    return buffer
  }

  input(data: ArrayBufferView, label = "input"): GPUBuffer {
    return this.own(upload(this.device, label, data))
  }

  /** A zeroed storage buffer of `bytes`. */
  output(bytes: number, label = "output"): GPUBuffer {
    return this.own(storageBuffer(this.device, label, bytes))
  }

  /** One dispatch of `key`; binding 0 is the uniform, `bindings` the storage buffers (undefined: absent). */
  async run(
    key: PipelineKey,
    uniform: UniformSpec,
    bindings: Readonly<Record<number, GPUBuffer | undefined>>,
    [x, y = 1, z = 1]: readonly [number, number?, number?],
  ): Promise<void> {
    await this.runPipeline(await this.pipelines.get(key), key.op, uniform, bindings, [x, y, z])
  }

  /** One dispatch of a pipeline compiled elsewhere (an emulated kernel), as `run`. */
  async runPipeline(
    pipeline: GPUComputePipeline,
    label: string,
    uniform: UniformSpec,
    bindings: Readonly<Record<number, GPUBuffer | undefined>>,
    [x, y = 1, z = 1]: readonly [number, number?, number?],
  ): Promise<void> {
    this.device.pushErrorScope("validation")
    const u = new Uniform(this.device, label, uniform.layout)
    this.own(u.buffer)
    u.set(...uniform.values)
    const entries = Object.entries(bindings).flatMap(([n, b]) => (b === undefined ? [] : [[Number(n), b] as const]))
    const group = bind(this.device, pipeline, [[0, u.buffer], ...entries])
    const encoder = this.device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    pass.setPipeline(pipeline)
    pass.setBindGroup(0, group)
    pass.dispatchWorkgroups(x, y, z)
    pass.end()
    this.device.queue.submit([encoder.finish()])
    const error = await this.device.popErrorScope()
    if (error) throw new Error(`${label}: ${error.message}`)
  }

  async f32(buffer: GPUBuffer, count: number, offset = 0): Promise<Float32Array> {
    return new Float32Array(await readBack(this.device, buffer, offset, count * 4))
  }

  async u32(buffer: GPUBuffer, count: number, offset = 0): Promise<Uint32Array> {
    return new Uint32Array(await readBack(this.device, buffer, offset, count * 4))
  }

  async u16(buffer: GPUBuffer, count: number): Promise<Uint16Array> {
    const bytes = await readBack(this.device, buffer, 0, Math.ceil(count / 2) * 4)
    return new Uint16Array(bytes, 0, count)
  }

  destroy(): void {
    for (const b of this.owned.splice(0)) b.destroy()
  }
}
