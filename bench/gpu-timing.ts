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
 * `labels` names the timed dispatches in order. A step may submit several times (the queries
 * are resolved at its end).
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

  /**
   * A pass a manager encodes itself (the tiered cache's scoring, selection, route): each of its
   * dispatches runs in a timed pass of its own, with the pipeline and bind groups set before it
   * replayed there.
   */
  compute(use: (pass: GPUComputePassEncoder) => void): void {
    let pipeline: GPUComputePipeline | undefined
    const groups = new Map<number, [GPUBindGroup | null, Iterable<number> | undefined]>()
    const timedPass = (dispatch: (pass: GPUComputePassEncoder) => void) => {
      this.dispatches++
      const i = this.labels.length
      this.labels.push(pipeline?.label ?? "manager pass")
      const pass = this.encoder.beginComputePass({ timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } })
      if (pipeline) pass.setPipeline(pipeline)
      for (const [index, [group, offsets]] of groups) pass.setBindGroup(index, group, offsets)
      dispatch(pass)
      pass.end()
    }
    const recording = {
      setPipeline: (p: GPUComputePipeline) => void (pipeline = p),
      setBindGroup: (index: number, group: GPUBindGroup | null, offsets?: Iterable<number>) => void groups.set(index, [group, offsets === undefined ? undefined : [...offsets]]),
      dispatchWorkgroups: (x: number, y?: number, z?: number) => {
        if (x === 0 || y === 0 || z === 0) return
        timedPass((pass) => pass.dispatchWorkgroups(x, y, z))
      },
      dispatchWorkgroupsIndirect: (buffer: GPUBuffer, offset: number) => timedPass((pass) => pass.dispatchWorkgroupsIndirect(buffer, offset)),
      end: () => {},
      pushDebugGroup: () => {},
      popDebugGroup: () => {},
      insertDebugMarker: () => {},
      label: "timed manager pass",
    }
    use(recording as unknown as GPUComputePassEncoder)
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
}

// A property of a WebGPU object, its methods bound to it (they check their receiver).
const bound = (target: object, key: string | symbol): unknown => {
  const v = Reflect.get(target, key) as unknown
  return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v
}

/** profileStep's result: GPU time per kernel (µs summed over its dispatches), largest first, and the step's counts. */
export interface StepProfile {
  /** From the first timed dispatch's start to the last one's end (ms). */
  readonly span_ms: number
  /** Time inside timed dispatches (ms). */
  readonly busy_ms: number
  readonly kernels: ReadonlyArray<{ readonly kernel: string; readonly us: number; readonly dispatches: number }>
  readonly dispatches: number
  readonly copies: number
  /** Queue writes (uniforms, block lists, input tokens) made while the step was encoded. */
  readonly writes: number
}

/** Runs one step with every dispatch in a timed pass of its own (TimedStep): GPU time per kernel. Needs "timestamp-query". */
export const profileStep = async (device: GPUDevice, step: (timed: TimedStep) => void | Promise<void>): Promise<StepProfile> => {
  const maxQueries = 4096 // WebGPU's most queries in a set (lavapipe refuses more)
  const querySet = device.createQuerySet({ type: "timestamp", count: maxQueries })
  const resolve = device.createBuffer({ size: maxQueries * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC })
  const read = device.createBuffer({ size: maxQueries * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  const queue = device.queue
  const write = queue.writeBuffer
  let writes = 0
  queue.writeBuffer = (...args: Parameters<GPUQueue["writeBuffer"]>) => {
    writes++
    return write.apply(queue, args)
  }
  try {
    const timed = new TimedStep(device, querySet, resolve, read)
    try {
      await step(timed)
    } finally {
      queue.writeBuffer = write
    }
    if (timed.labels.length > maxQueries / 2) throw new RangeError(`the step has ${timed.labels.length} timed dispatches; a query set holds ${maxQueries / 2}`)
    await read.mapAsync(GPUMapMode.READ)
    const stamps = new BigUint64Array(read.getMappedRange().slice(0, timed.labels.length * 16))
    read.unmap()
    const kernels = new Map<string, { us: number; dispatches: number }>()
    let busy = 0
    timed.labels.forEach((label, i) => {
      const us = Number(stamps[2 * i + 1]! - stamps[2 * i]!) / 1000
      const k = kernels.get(label) ?? { us: 0, dispatches: 0 }
      k.us += us
      k.dispatches++
      kernels.set(label, k)
      busy += us
    })
    const span = timed.labels.length > 0 ? Number(stamps[2 * timed.labels.length - 1]! - stamps[0]!) / 1e6 : 0
    return {
      span_ms: span,
      busy_ms: busy / 1000,
      kernels: [...kernels.entries()].map(([kernel, k]) => ({ kernel, ...k })).sort((a, b) => b.us - a.us),
      dispatches: timed.dispatches,
      copies: timed.copies,
      writes,
    }
  } finally {
    querySet.destroy()
    resolve.destroy()
    read.destroy()
  }
}

/** A profile's largest kernels as one line: "name ms/dispatches, ...". */
export const profileLine = (p: StepProfile, most = 10): string =>
  `${p.busy_ms.toFixed(2)} ms in kernels, ${p.span_ms.toFixed(2)} ms span, ${p.dispatches} dispatches, ${p.copies} copies, ${p.writes} queue writes; ` +
  p.kernels
    .slice(0, most)
    .map((k) => `${k.kernel} ${(k.us / 1000).toFixed(2)} ms/${k.dispatches}`)
    .join(", ")
