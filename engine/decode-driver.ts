// The one decode driver: `for layer: pre; attend through each row's KV manager; post`. A
// model's own step (engine/model.ts: one row, GEMVs) and a batched step (engine/batch.ts:
// B rows, each its own sequence and KV manager, GEMMs) are the same driver over different
// rows. It never learns which policy a manager runs; where a manager must wait (the GPU,
// the tiers), the rest of the step continues when it resolves. Where a manager rewinds (a
// pipelined step ran layers ahead of a choice that missed), the step goes back to that layer
// with its input restored; only rows that keep their inputs (a model's own step) allow it.
import type { KvManager, Rewind, StepEncoder } from "./kv/manager.ts"
import { type Dispatch, storageBuffer } from "./buffers.ts"
import type { CopyOut, SampleParams } from "./model.ts"
import type { LayerProgram } from "./program.ts"

/** What the driver asks of a row's attention: its KV manager's, or a batch's for all its rows (engine/batch-attention.ts). */
export type DecodeKv = Pick<KvManager, "beginDecode" | "rewinds" | "attendDecode" | "endLayers" | "endDecode" | "afterDecode">

/** One decode step's rows as the driver sees them. */
export interface DecodeRows {
  /** Row b's sequence's KV manager (its token slot was written by the step's preparation), or one attention for all rows. */
  readonly kvs: ReadonlyArray<DecodeKv>
  /** Per layer: `pre` ends with every row's query in its manager's `act.q` and its K, V appended; `post` starts with the combines. */
  readonly layers: ReadonlyArray<LayerProgram>
  /** Before the first layer: the rows' input tokens into the residual stream. */
  begin(step: StepEncoder): void
  /** After the last layer: logits (and sampling) of every row. */
  end(step: StepEncoder): void
  /** Adds to the step's last command encoder (read-back copies), before the managers' endDecode. */
  last(encoder: GPUCommandEncoder): void
  /** Rows that can rewind: keeps layer l's input (the residual stream before its pre) aside, and restores it. */
  readonly inputs?: { keep(step: StepEncoder, l: number): void; restore(step: StepEncoder, l: number): void }
}

/**
 * One decode step over `rows` into `step`. Returns a promise only when a manager waits;
 * otherwise the whole step is encoded and submitted before it returns.
 */
export const decodeStep = (rows: DecodeRows, step: StepEncoder): void | Promise<void> => reserve(rows, step, 0)

// Every manager reserves its token's slot and writes its step's uniforms.
const reserve = (rows: DecodeRows, step: StepEncoder, from: number): void | Promise<void> => {
  for (let b = from; b < rows.kvs.length; b++) {
    const waiting = rows.kvs[b].beginDecode(rows.inputs !== undefined)
    if (waiting) return waiting.then(() => reserve(rows, step, b + 1))
  }
  rows.begin(step)
  return layers(rows, step, 0, 0)
}

// Layers from `l0` on, resuming layer l0's attention at row `b0` (0: the layer's pre is not yet encoded).
const layers = (rows: DecodeRows, step: StepEncoder, l0: number, b0: number): void | Promise<void> => {
  const { kvs } = rows
  const keep = rows.inputs !== undefined && kvs.some((kv) => kv.rewinds === true)
  for (let l = l0; l < rows.layers.length; l++, b0 = 0) {
    if (b0 === 0) {
      if (keep) rows.inputs!.keep(step, l)
      step.encode(rows.layers[l].pre)
    }
    for (let b = b0; b < kvs.length; b++) {
      const attending = kvs[b].attendDecode(l, step)
      if (attending) return attending.then((r) => (r ? rewind(rows, step, r) : layers(rows, step, l, b + 1)))
    }
    step.encode(rows.layers[l].post)
  }
  return ends(rows, step, 0)
}

// The managers' checks of what the step left unchecked (from row `from` on), then the step's end.
const ends = (rows: DecodeRows, step: StepEncoder, from: number): void | Promise<void> => {
  const { kvs } = rows
  for (let b = from; b < kvs.length; b++) {
    const ending = kvs[b].endLayers?.(step)
    if (ending) return ending.then((r) => (r ? rewind(rows, step, r) : ends(rows, step, b + 1)))
  }
  rows.end(step)
  step.finish((e) => {
    rows.last(e)
    for (const kv of kvs) kv.endDecode(e)
  })
  for (const kv of kvs) kv.afterDecode()
}

const rewind = (rows: DecodeRows, step: StepEncoder, r: Rewind): void | Promise<void> => {
  if (!rows.inputs) throw new Error(`decode step: a KV manager rewound to layer ${r.rewind} in a step that keeps no layer inputs`)
  rows.inputs.restore(step, r.rewind)
  return layers(rows, step, r.rewind, 0)
}

/** A model's own step as the driver's one row: its GEMV program and its manager; `sample` and `copyOut` are set per step. */
export class OneRow implements DecodeRows {
  sample: SampleParams | undefined
  copyOut: CopyOut | undefined
  readonly kvs: ReadonlyArray<KvManager>
  readonly layers: ReadonlyArray<LayerProgram>

  readonly inputs: DecodeRows["inputs"]
  /** (layers, hidden) f32: each layer's input of the current step, kept for rewinds (made when first needed). */
  private kept: GPUBuffer | undefined

  constructor(
    kv: KvManager,
    private readonly program: { readonly embed: ReadonlyArray<Dispatch>; readonly layers: ReadonlyArray<LayerProgram>; readonly head: ReadonlyArray<Dispatch> },
    private readonly encodeSample: (step: StepEncoder, sample: SampleParams) => void,
    /** The residual stream: (hidden) f32 of `hiddenSize` floats. */
    residual: { readonly device: GPUDevice; readonly x: GPUBuffer; readonly hiddenSize: number },
  ) {
    this.kvs = [kv]
    this.layers = program.layers
    const rowBytes = residual.hiddenSize * 4
    const kept = () => (this.kept ??= storageBuffer(residual.device, "decode layer inputs (layers, hidden) f32", program.layers.length * rowBytes))
    this.inputs = {
      keep: (step, l) => step.record((e) => e.copyBufferToBuffer(residual.x, 0, kept(), l * rowBytes, rowBytes)),
      restore: (step, l) => step.record((e) => e.copyBufferToBuffer(kept(), l * rowBytes, residual.x, 0, rowBytes)),
    }
  }

  destroy(): void {
    this.kept?.destroy()
  }

  begin(step: StepEncoder): void {
    step.encode(this.program.embed)
  }

  end(step: StepEncoder): void {
    step.encode(this.program.head)
    if (this.sample) this.encodeSample(step, this.sample)
  }

  last(encoder: GPUCommandEncoder): void {
    const c = this.copyOut
    if (c) encoder.copyBufferToBuffer(c.src, c.offset, c.dst, 0, 4)
  }
}
