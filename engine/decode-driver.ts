// The one decode driver: `for layer: pre; attend through each row's KV manager; post`. A
// model's own step (engine/model.ts: one row, GEMVs) and a batched step (engine/batch.ts:
// B rows, each its own sequence and KV manager, GEMMs) are the same driver over different
// rows. It never learns which policy a manager runs; where a manager must wait (the GPU,
// the tiers), the rest of the step continues when it resolves.
import type { KvManager, StepEncoder } from "./kv/manager.ts"
import type { Dispatch } from "./buffers.ts"
import type { CopyOut, SampleParams } from "./model.ts"
import type { LayerProgram } from "./program.ts"

/** One decode step's rows as the driver sees them. */
export interface DecodeRows {
  /** Row b's sequence's KV manager (its token slot was written by the step's preparation). */
  readonly kvs: ReadonlyArray<KvManager>
  /** Per layer: `pre` ends with every row's query in its manager's `act.q` and its K, V appended; `post` starts with the combines. */
  readonly layers: ReadonlyArray<LayerProgram>
  /** Before the first layer: the rows' input tokens into the residual stream. */
  begin(step: StepEncoder): void
  /** After the last layer: logits (and sampling) of every row. */
  end(step: StepEncoder): void
  /** Adds to the step's last command encoder (read-back copies), before the managers' endDecode. */
  last(encoder: GPUCommandEncoder): void
}

/**
 * One decode step over `rows` into `step`. Returns a promise only when a manager waits;
 * otherwise the whole step is encoded and submitted before it returns.
 */
export const decodeStep = (rows: DecodeRows, step: StepEncoder): void | Promise<void> => reserve(rows, step, 0)

// Every manager reserves its token's slot and writes its step's uniforms.
const reserve = (rows: DecodeRows, step: StepEncoder, from: number): void | Promise<void> => {
  for (let b = from; b < rows.kvs.length; b++) {
    const waiting = rows.kvs[b].beginDecode()
    if (waiting) return waiting.then(() => reserve(rows, step, b + 1))
  }
  rows.begin(step)
  return layers(rows, step, 0, 0)
}

// Layers from `l0` on, resuming layer l0's attention at row `b0` (0: the layer's pre is not yet encoded).
const layers = (rows: DecodeRows, step: StepEncoder, l0: number, b0: number): void | Promise<void> => {
  const { kvs } = rows
  for (let l = l0; l < rows.layers.length; l++, b0 = 0) {
    if (b0 === 0) step.encode(rows.layers[l].pre)
    for (let b = b0; b < kvs.length; b++) {
      const attending = kvs[b].attendDecode(l, step)
      if (attending) return attending.then(() => layers(rows, step, l, b + 1))
    }
    step.encode(rows.layers[l].post)
  }
  rows.end(step)
  step.finish((e) => {
    rows.last(e)
    for (const kv of kvs) kv.endDecode(e)
  })
  for (const kv of kvs) kv.afterDecode()
}

/** A model's own step as the driver's one row: its GEMV program and its manager; `sample` and `copyOut` are set per step. */
export class OneRow implements DecodeRows {
  sample: SampleParams | undefined
  copyOut: CopyOut | undefined
  readonly kvs: ReadonlyArray<KvManager>
  readonly layers: ReadonlyArray<LayerProgram>

  constructor(
    kv: KvManager,
    private readonly program: { readonly embed: ReadonlyArray<Dispatch>; readonly layers: ReadonlyArray<LayerProgram>; readonly head: ReadonlyArray<Dispatch> },
    private readonly encodeSample: (step: StepEncoder, sample: SampleParams) => void,
  ) {
    this.kvs = [kv]
    this.layers = program.layers
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
