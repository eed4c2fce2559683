// What the GPU benchmarks share: timing a pass of repeated dispatches (warm-up, then the
// median of timed submits), filling buffers with random f16 values on the GPU, the
// baseline the decode benchmarks compare against, and the step encoders they hand a
// model's decode instead of the engine's (dispatches left out; one timed pass each).
import { type Dispatch, encodeAll } from "../engine/buffers.ts"
import type { GemvOp, GemvTuning } from "../engine/gemv-tuning.ts"
import type { Gpu } from "../engine/gpu.ts"
import { gpuFiller } from "../engine/gpu-fill.ts"
import type { StepEncoder } from "../engine/kv/manager.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { PassEncoder } from "../engine/step-encoder.ts"

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
export const done = (device: GPUDevice) => device.queue.onSubmittedWorkDone()

/** Runs `encode` reps times in one pass per submit, `trials` times; median seconds per rep. */
export const timeKernel = async (device: GPUDevice, reps: number, trials: number, encode: (pass: GPUComputePassEncoder, rep: number) => void) => {
  const once = async () => {
    const enc = device.createCommandEncoder()
    const pass = enc.beginComputePass()
    for (let r = 0; r < reps; r++) encode(pass, r)
    pass.end()
    device.queue.submit([enc.finish()])
    await done(device)
  }
  await once() // warm-up, immediately followed by the timed trials
  const times: number[] = []
  for (let t = 0; t < trials; t++) {
    const t0 = performance.now()
    await once()
    times.push((performance.now() - t0) / 1000 / reps)
  }
  return median(times)
}

/** Fills each buffer whole with random halves in [-amplitude, amplitude] (kernels/fill.wgsl). */
export const fillRandom = async (gpu: Gpu, buffers: ReadonlyArray<GPUBuffer>, seed: number, amplitude: number): Promise<void> => {
  const fill = await gpuFiller(gpu, new Pipelines(gpu))
  for (const b of buffers) fill(b, 0, b.size / 2, { kind: "random", seed, amplitude })
}

/** Run 9's decode GEMV tunings (bench/results/2026-11-28-h200-run9-README.md); with them RoPE runs apart. */
export const run9Tuning: Readonly<Record<GemvOp, GemvTuning>> = {
  qkv: { kind: "sg", wg: 32, rows: 2, rpw: 2 },
  o: { wg: 128, rows: 2 },
  gu: { wg: 256, rows: 2 },
  down: { wg: 128, rows: 2 },
  head: { wg: 256, rows: 2 },
}

/** Sampling's kernels: kept by FilteredStep and left untimed by TimedStep, as the step's tail. */
const sampling = (d: Dispatch) => d.pipeline.label.startsWith("argmax")

/**
 * The engine's step stream without the dispatches whose kernel name (e.g.
 * "attn_decode_D128_G4") `keep` rejects: time breakdowns, whose results are meaningless.
 */
export class FilteredStep extends PassEncoder {
  constructor(
    device: GPUDevice,
    private readonly keep: (kernel: string) => boolean,
  ) {
    super(device)
  }

  override encode(dispatches: ReadonlyArray<Dispatch>): void {
    super.encode(dispatches.filter((d) => sampling(d) || this.keep(d.pipeline.label)))
  }
}

/**
 * One decode step with every dispatch in a pass of its own, timed (begin, end) into
 * `querySet` (2 queries per dispatch); the step's last submit resolves them into `read`.
 * `labels` names the timed dispatches in order. For a step without read-backs (one submit).
 */
export class TimedStep implements StepEncoder {
  readonly labels: string[] = []
  /** The step's dispatches (timed and sampling's), and its buffer copies (read-backs' included). */
  dispatches = 0
  copies = 0
  private encoder: GPUCommandEncoder

  constructor(
    private readonly device: GPUDevice,
    private readonly querySet: GPUQuerySet,
    private readonly resolve: GPUBuffer,
    private readonly read: GPUBuffer,
  ) {
    this.encoder = device.createCommandEncoder()
  }

  encode(dispatches: ReadonlyArray<Dispatch>): void {
    for (const d of dispatches) {
      if (d.x === 0 || d.y === 0 || d.z === 0) continue
      this.dispatches++
      const i = this.labels.length
      const timed = !sampling(d)
      const pass = this.encoder.beginComputePass(timed ? { timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } } : {})
      if (timed) this.labels.push(d.pipeline.label)
      encodeAll(pass, [d])
      pass.end()
    }
  }

  compute(use: (pass: GPUComputePassEncoder) => void): void {
    const pass = this.encoder.beginComputePass()
    use(this.countingPass(pass))
    pass.end()
  }

  record(use: (encoder: GPUCommandEncoder) => void): void {
    use(this.counting())
  }

  submit(): void {
    this.device.queue.submit([this.encoder.finish()])
    this.encoder = this.device.createCommandEncoder()
  }

  finish(last?: (encoder: GPUCommandEncoder) => void): void {
    last?.(this.counting())
    const n = 2 * this.labels.length
    this.encoder.resolveQuerySet(this.querySet, 0, n, this.resolve, 0)
    this.encoder.copyBufferToBuffer(this.resolve, 0, this.read, 0, n * 8)
    this.device.queue.submit([this.encoder.finish()])
  }

  /** The encoder, its copies counted. */
  private counting(): GPUCommandEncoder {
    const encoder = this.encoder
    const copy = (...args: unknown[]) => {
      this.copies++
      return (encoder.copyBufferToBuffer as (...a: unknown[]) => void).apply(encoder, args)
    }
    return new Proxy(encoder, { get: (t, k) => (k === "copyBufferToBuffer" ? copy : bound(t, k)) })
  }

  /** A pass whose dispatches are counted (dispatches a manager encodes itself). */
  private countingPass(pass: GPUComputePassEncoder): GPUComputePassEncoder {
    const dispatch = (x: number, y?: number, z?: number) => {
      this.dispatches++
      pass.dispatchWorkgroups(x, y, z)
    }
    return new Proxy(pass, { get: (t, k) => (k === "dispatchWorkgroups" ? dispatch : bound(t, k)) })
  }
}

// A property of a WebGPU object, its methods bound to it (they check their receiver).
const bound = (target: object, key: string | symbol): unknown => {
  const v = Reflect.get(target, key) as unknown
  return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v
}
