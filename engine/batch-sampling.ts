// Token choice for every row of a decode batch in one pass (issue 14 §1): kernels/argmax.wgsl
// with ROWS runs each row's argmax or Gumbel-max over its row of the batch's logits, with its
// own (seed, step, temperature), into the batch's token buffer: 2 dispatches a step for all
// rows instead of 2 per row, one write of the rows' parameters instead of a uniform per row,
// no copy of a row's logits into its model. A row's slices, noise and reductions are those of
// its own step (engine/model.ts encodeSample), so its token is the one it gets alone. The
// chosen tokens come back in one read: a ring of read-back buffers, so that the next step can
// be encoded while a read is pending.
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "./buffers.ts"
import { ARGMAX_GROUPS } from "./model-resources.ts"
import type { SampleParams } from "./model.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"

export interface BatchSamplingInputs {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  readonly keys: { readonly argmaxRows: PipelineKey; readonly argmaxRowsFinal: PipelineKey }
  readonly vocabSize: number
  /** Most rows of a step. */
  readonly capacity: number
  /** The batch's (rows, vocab) f32 logits. */
  readonly logits: GPUBuffer
  /** The batch's (rows) u32 tokens: row r's choice is written to tokens[r]. */
  readonly tokens: GPUBuffer
}

/** Read-back buffers in the ring: a step can be encoded while the one before it is read. */
const RING = 2

export class BatchSampling {
  /** The rows' scores and their final reduction (workgroup y = row). */
  readonly dispatches: ReadonlyArray<Dispatch>
  private readonly device: GPUDevice
  private readonly tokens: GPUBuffer
  private readonly params: GPUBuffer
  private readonly part: GPUBuffer
  private readonly u: Uniform
  private readonly host: ArrayBuffer
  private readonly hostU32: Uint32Array
  private readonly hostF32: Float32Array
  private readonly ring: GPUBuffer[]
  private next = 0
  /** The ring buffer the last step's tokens were copied to, and how many rows. */
  private last: { readonly buffer: GPUBuffer; readonly rows: number } | undefined

  constructor(i: BatchSamplingInputs) {
    const device = i.device
    this.device = device
    this.tokens = i.tokens
    this.params = storageBuffer(device, "batch sample params (rows) {seed, step, inv_temp, gumbel}", i.capacity * 16)
    this.part = storageBuffer(device, "batch sample partials (rows, groups) vec2", i.capacity * ARGMAX_GROUPS * 8)
    this.u = new Uniform(device, "batch sample", "uuuuufuu")
    this.u.set(i.vocabSize, ARGMAX_GROUPS, 0, 0, 0, 1)
    this.host = new ArrayBuffer(i.capacity * 16)
    this.hostU32 = new Uint32Array(this.host)
    this.hostF32 = new Float32Array(this.host)
    const P = (key: PipelineKey) => i.pipelines.now(key)
    this.dispatches = [
      dispatchOf(device, P(i.keys.argmaxRows), [[0, this.u.buffer], [1, i.logits], [2, this.part], [4, this.params]], ARGMAX_GROUPS, 1),
      dispatchOf(device, P(i.keys.argmaxRowsFinal), [[0, this.u.buffer], [2, this.part], [3, i.tokens]], 1, 1),
    ]
    this.ring = Array.from({ length: RING }, (_, k) => device.createBuffer({ label: `batch tokens read-back ${k}`, size: Math.max(16, i.capacity * 4), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }))
  }

  /** The step's rows (undefined: a row the batch does not sample; it gets argmax, unused): one write of their parameters. */
  set(rows: ReadonlyArray<SampleParams | undefined>): void {
    for (const [r, s] of rows.entries()) {
      const gumbel = s !== undefined && s.temperature > 0
      // As encodeSample's uniform: u32 seed and step, f32 1 / temperature.
      this.hostU32[4 * r] = (s?.seed ?? 0) >>> 0
      this.hostU32[4 * r + 1] = (s?.step ?? 0) >>> 0
      this.hostF32[4 * r + 2] = gumbel ? 1 / s.temperature : 1
      this.hostU32[4 * r + 3] = gumbel ? 1 : 0
    }
    this.device.queue.writeBuffer(this.params, 0, this.host, 0, rows.length * 16)
    for (const d of this.dispatches) d.y = rows.length
  }

  /** Appends the copy of the step's `rows` tokens to the next read-back buffer of the ring. */
  copyOut(encoder: GPUCommandEncoder, rows: number): void {
    const buffer = this.ring[this.next]!
    if (buffer.mapState !== "unmapped") throw new Error("batch sampling: a step's tokens were copied out before the read two steps back ended")
    this.next = (this.next + 1) % RING
    encoder.copyBufferToBuffer(this.tokens, 0, buffer, 0, rows * 4)
    this.last = { buffer, rows }
  }

  /** The tokens of the last step copied out (one map for all rows). */
  async read(): Promise<Uint32Array> {
    const last = this.last
    if (!last) throw new Error("batch sampling: no step's tokens were copied out")
    this.last = undefined
    await last.buffer.mapAsync(GPUMapMode.READ, 0, Math.max(16, last.rows * 4))
    const ids = new Uint32Array(last.buffer.getMappedRange(0, Math.max(16, last.rows * 4)).slice(0, last.rows * 4))
    last.buffer.unmap()
    return ids
  }

  destroy(): void {
    this.params.destroy()
    this.part.destroy()
    for (const b of this.ring) b.destroy()
  }
}
