// What the GPU benchmarks share: timing a pass of repeated dispatches (warm-up, then the
// median of timed submits), filling buffers with random f16 values on the GPU, and the
// baseline the decode benchmarks compare against.
import type { GemvOp, GemvTuning } from "../engine/gemv-tuning.ts"
import type { Gpu } from "../engine/gpu.ts"
import { gpuFiller } from "../engine/model.ts"
import { Pipelines } from "../engine/pipelines.ts"

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
