// The layer-major prefill driver (issue 12 §4), beside GpuModel's token-major one and in its
// shape: `for layer: (for slice: pre; attend through the KV manager's LayerPrefill; post);
// the manager seals the layer`. The hidden states of the whole prompt stay on the GPU between
// layers (`hidden`); each slice is copied into the activations and back, so the model's
// dispatch lists serve unchanged. The manager decides the slices and where the layer's KV
// lives; this driver never learns which policy it runs.
import type { ModelConfig } from "../models/types.ts"
import { storageBuffer, type Uniform } from "./buffers.ts"
import type { LayerPrefill, StepEncoder } from "./kv/manager.ts"
import type { allocateActivations } from "./model-resources.ts"
import type { Program } from "./program.ts"

/** What the driver needs of a GpuModel. */
export interface LayerDriverContext {
  readonly device: GPUDevice
  readonly config: ModelConfig
  readonly program: Program["prefill"]
  readonly act: ReturnType<typeof allocateActivations>
  /** The prefill embedding's uniform. */
  readonly embed: Uniform
  /** Sets a pass of m rows in the uniforms and dispatches. */
  setPassRows(m: number): void
  /** cos, sin of positions pos0 .. pos0 + m - 1 into `to`. */
  writeRope(pos0: number, m: number, to: GPUBuffer): void
}

/** Prefills `ids` (the sequence held pos0 tokens before them) layer by layer; afterwards `logits` holds the last position's. */
export const prefillByLayer = async (
  d: LayerDriverContext,
  pos0: number,
  ids: ReadonlyArray<number>,
  run: LayerPrefill,
  onProgress: ((done: number, total: number) => void) | undefined,
  open: () => StepEncoder,
): Promise<void> => {
  const { device, config: c, program: p, act } = d
  const n = ids.length
  const rowBytes = c.hiddenSize * 4
  const ropeRow = c.headDim * 4 // (D/2) vec2 cos, sin
  const hidden = storageBuffer(device, "layer-major hidden states (prompt, hidden) f32", n * rowBytes)
  const rope = storageBuffer(device, "layer-major rope (prompt, D/2) vec2 cos,sin", n * ropeRow)
  try {
    d.writeRope(pos0, n, rope)
    const starts = run.slices.map((_, i) => run.slices.slice(0, i).reduce((a, b) => a + b, 0))
    // Embeddings of every slice into `hidden`.
    run.slices.forEach((m, i) => {
      const step = open()
      device.queue.writeBuffer(act.promptIds, 0, Uint32Array.from(ids.slice(starts[i], starts[i] + m)))
      d.embed.set(c.hiddenSize, 0, c.vocabSize, m, 0)
      d.setPassRows(m)
      step.encode(p.embed)
      step.finish((e) => e.copyBufferToBuffer(act.x, 0, hidden, starts[i] * rowBytes, m * rowBytes))
    })
    for (let l = 0; l < c.numLayers; l++) {
      for (let i = 0; i < run.slices.length; i++) {
        // One submit per slice: its uniforms and slots are written before it, after the last one's submit.
        const m = run.slices[i]
        const step = open()
        d.setPassRows(m)
        step.record((e) => {
          e.copyBufferToBuffer(hidden, starts[i] * rowBytes, act.x, 0, m * rowBytes)
          e.copyBufferToBuffer(rope, starts[i] * ropeRow, act.rope, 0, m * ropeRow)
        })
        run.beginSlice(l, i)
        step.encode(p.layers[l].pre)
        const attending = run.attend(l, i, step)
        if (attending) await attending
        step.encode(p.layers[l].post)
        step.finish((e) => e.copyBufferToBuffer(act.x, 0, hidden, starts[i] * rowBytes, m * rowBytes))
      }
      await run.endLayer(l)
      if (onProgress) {
        await device.queue.onSubmittedWorkDone()
        onProgress(Math.floor((n * (l + 1)) / c.numLayers), n)
      }
    }
    const step = open()
    step.record((e) => e.copyBufferToBuffer(hidden, (n - 1) * rowBytes, act.xlast, 0, rowBytes))
    step.encode(p.headLast)
    step.finish()
    run.finish()
  } catch (e) {
    run.abort()
    throw e
  } finally {
    hidden.destroy()
    rope.destroy()
  }
}
