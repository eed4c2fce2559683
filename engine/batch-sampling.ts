// Token choice for every row of a decode batch in one pass (issue 14 §1): kernels/argmax.wgsl
// with ROWS runs each row's argmax or Gumbel-max over its row of the batch's logits, with its
// own (seed, step, temperature), into the batch's token buffer: 2 dispatches a step for all
// rows instead of 2 per row, one write of the rows' parameters instead of a uniform per row,
// no copy of a row's logits into its model. A row's slices, noise and reductions are those of
// its own step (engine/model.ts encodeSample), so its token is the one it gets alone. Rows
// sampled on the host (top-k / top-p) get their candidates the same way: each row's `count`
// best logits and its softmax mass at its own temperature, for all such rows in one select and
// one log-sum-exp pass (kernels/select.wgsl, lse.wgsl with ROWS; as engine/candidates.ts does
// for one row). The tokens and candidates come back in one read: a ring of read-back buffers,
// so that the next step can be encoded while a read is pending.
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "./buffers.ts"
import type { Candidates } from "./candidates.ts"
import { ARGMAX_GROUPS } from "./model-resources.ts"
import type { SampleParams } from "./model.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"

/** Most candidates a row of a batch reads back (top-p alone takes 1024, as generate.ts); a larger top-k samples through its own model. */
export const MAX_BATCH_CANDIDATES = 1024

/** A host-sampled row's request: its `count` best logits and its softmax mass at `temperature`. */
export interface CandidateRequest {
  readonly count: number
  readonly temperature: number
}

/** What one step read back: every row's token (in row order), and the candidates of the rows that asked (by row). */
export interface StepRead {
  readonly tokens: Uint32Array
  readonly candidates: ReadonlyMap<number, Candidates>
}

export interface BatchSamplingInputs {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  readonly keys: { readonly argmaxRows: PipelineKey; readonly argmaxRowsFinal: PipelineKey; readonly candidatesRows: PipelineKey; readonly lseRows: PipelineKey; readonly lseFinal: PipelineKey }
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
  /** The host-sampled rows' select and log-sum-exp passes (x, y = how many rows asked). */
  readonly candidateDispatches: ReadonlyArray<Dispatch>
  private readonly candParams: GPUBuffer
  private readonly entries: GPUBuffer
  private readonly lsePart: GPUBuffer
  private readonly lseOut: GPUBuffer
  private readonly seqs: GPUBuffer
  private readonly identity: GPUBuffer
  private readonly candHost: Uint32Array
  private readonly candHostF32: Float32Array
  private readonly capacity: number
  /** Bytes of a read-back: tokens, then (max, sum) per asking row, then their candidate lists. */
  private readonly lseAt: number
  private readonly entriesAt: number
  private readonly uniforms: ReadonlyArray<Uniform>
  private readonly ring: GPUBuffer[]
  private next = 0
  /** The step's candidate requests, by row (set with `set`). */
  private asked: ReadonlyArray<readonly [number, CandidateRequest]> = []
  /** The ring buffers steps were copied to, oldest first, each with what it holds. */
  private readonly pending: Array<{ readonly buffer: GPUBuffer; readonly rows: number; readonly asked: ReadonlyArray<readonly [number, CandidateRequest]> }> = []

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
    const m = i.capacity
    this.capacity = m
    this.candParams = storageBuffer(device, "batch candidate rows (rows) {row, count, inv_temp bits, 0}", m * 16)
    this.entries = storageBuffer(device, "batch candidates (rows, 1024) vec2<u32> (id, logit bits)", m * MAX_BATCH_CANDIDATES * 8)
    this.lsePart = storageBuffer(device, "batch lse parts (rows, groups) vec2", m * ARGMAX_GROUPS * 8)
    this.lseOut = storageBuffer(device, "batch lse (rows) (max, sum)", m * 8)
    this.seqs = storageBuffer(device, "batch candidate counts (rows) vec2<u32>", m * 8)
    this.identity = storageBuffer(device, "token ids 0..V (V) u32", i.vocabSize * 4)
    device.queue.writeBuffer(this.identity, 0, Uint32Array.from({ length: i.vocabSize }, (_, k) => k))
    this.candHost = new Uint32Array(m * 4)
    this.candHostF32 = new Float32Array(this.candHost.buffer)
    const select = new Uniform(device, "batch candidates", "uuuuuuuu")
    select.set(i.vocabSize, 1, 0, 0, 0, 0, MAX_BATCH_CANDIDATES, 0)
    const lse = new Uniform(device, "batch lse", "uufu")
    lse.set(i.vocabSize, ARGMAX_GROUPS, 1)
    this.uniforms = [select, lse]
    this.candidateDispatches = [
      dispatchOf(device, P(i.keys.candidatesRows), [[0, select.buffer], [1, i.logits], [2, this.identity], [3, this.entries], [4, this.seqs], [5, this.candParams]], 1),
      dispatchOf(device, P(i.keys.lseRows), [[0, lse.buffer], [1, i.logits], [2, this.lsePart], [4, this.candParams]], ARGMAX_GROUPS, 1),
      dispatchOf(device, P(i.keys.lseFinal), [[0, lse.buffer], [2, this.lsePart], [3, this.lseOut]], 1, 1),
    ]
    this.lseAt = Math.ceil((m * 4) / 8) * 8
    this.entriesAt = this.lseAt + m * 8
    const bytes = this.entriesAt + m * MAX_BATCH_CANDIDATES * 8
    this.ring = Array.from({ length: RING }, (_, k) => device.createBuffer({ label: `batch tokens read-back ${k}`, size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }))
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

  /**
   * The step's host-sampled rows (row, request; count at most MAX_BATCH_CANDIDATES): one write
   * of their parameters; `candidateDispatches` then run only if any asked.
   */
  ask(asked: ReadonlyArray<readonly [number, CandidateRequest]>): void {
    this.asked = asked
    if (asked.length === 0) return
    for (const [j, [row, r]] of asked.entries()) {
      if (!(r.count >= 1 && r.count <= MAX_BATCH_CANDIDATES)) throw new RangeError(`a batch row reads 1 to ${MAX_BATCH_CANDIDATES} candidates, not ${r.count}`)
      this.candHost[4 * j] = row
      this.candHost[4 * j + 1] = r.count
      this.candHostF32[4 * j + 2] = 1 / r.temperature // as candidates.ts's uniform: f32 1 / temperature
      this.candHost[4 * j + 3] = 0
    }
    this.device.queue.writeBuffer(this.candParams, 0, this.candHost, 0, asked.length * 4)
    const [select, lse, lseFinal] = this.candidateDispatches
    select!.x = asked.length
    lse!.y = asked.length
    lseFinal!.y = asked.length
  }

  /** Appends the copy of the step's `rows` tokens, and the candidates asked for, to the next read-back buffer of the ring. */
  copyOut(encoder: GPUCommandEncoder, rows: number): void {
    const buffer = this.ring[this.next]!
    if (this.pending.length >= RING) throw new Error(`batch sampling: a step's tokens were copied out with ${RING} reads pending`)
    this.next = (this.next + 1) % RING
    encoder.copyBufferToBuffer(this.tokens, 0, buffer, 0, Math.ceil((rows * 4) / 4) * 4)
    const h = this.asked.length
    if (h > 0) {
      encoder.copyBufferToBuffer(this.lseOut, 0, buffer, this.lseAt, h * 8)
      encoder.copyBufferToBuffer(this.entries, 0, buffer, this.entriesAt, h * MAX_BATCH_CANDIDATES * 8)
    }
    this.pending.push({ buffer, rows, asked: this.asked })
  }

  /** The oldest step copied out and not yet read: its tokens and candidates (one map). */
  async read(): Promise<StepRead> {
    const step = this.pending[0]
    if (!step) throw new Error("batch sampling: no step's tokens were copied out")
    const { buffer, rows, asked } = step
    const bytes = asked.length > 0 ? this.entriesAt + asked.length * MAX_BATCH_CANDIDATES * 8 : Math.max(8, rows * 4)
    const size = Math.ceil(bytes / 8) * 8
    try {
      await buffer.mapAsync(GPUMapMode.READ, 0, size)
      const raw = buffer.getMappedRange(0, size).slice(0)
      buffer.unmap()
      const tokens = new Uint32Array(raw, 0, rows)
      const candidates = new Map<number, Candidates>()
      for (const [j, [row, r]] of asked.entries()) {
        const n = r.count
        const words = new Uint32Array(raw, this.entriesAt + j * MAX_BATCH_CANDIDATES * 8, n * 2)
        const asFloat = new Float32Array(raw, this.entriesAt + j * MAX_BATCH_CANDIDATES * 8, n * 2)
        const ids = new Uint32Array(n)
        const logits = new Float32Array(n)
        for (let k = 0; k < n; k++) {
          ids[k] = words[2 * k]!
          logits[k] = asFloat[2 * k + 1]!
        }
        const lse = new Float32Array(raw, this.lseAt + j * 8, 2)
        candidates.set(row, { ids, logits, max: lse[0]!, sumExp: lse[1]! })
      }
      return { tokens, candidates }
    } finally {
      this.pending.shift()
    }
  }

  destroy(): void {
    for (const b of [this.params, this.part, this.candParams, this.entries, this.lsePart, this.lseOut, this.seqs, this.identity, ...this.ring]) b.destroy()
    for (const u of this.uniforms) u.buffer.destroy()
    this.u.buffer.destroy()
  }
}
