// A decode step over up to `capacity` sequences (continuous batching): each row is its own
// GpuModel (its own KV manager, activations, token ids and sampling) on one set of weights
// (GpuModel.sibling), and the batch owns only the rows' shared projections. The step is the
// one decode driver (engine/decode-driver.ts) with B rows: per layer the QKV projection of
// all rows, then per row RoPE + KV append into its own pools and attention through its own
// manager, then per row the combine into the batch's rows, then the O / gate-up / down
// projections of all rows. Where every row's manager keeps its blocks in one shared
// KvBlockStore (full attention, `kvBlocks`), RoPE, attention and combine are instead one
// dispatch each per layer for all rows (engine/batch-attention.ts). The head projects all
// rows; the rows sampled on the GPU (argmax / Gumbel) choose their tokens in one pass over
// the batch's logits (engine/batch-sampling.ts) into the batch's input ids, so that a row
// that stays in place takes its next input from there, with no copy; the tokens of all rows
// come back in one read (`readTokens`). Only rows sampled on the host (top-k / p, from
// `model.logits`) get their logits copied to their model. The projections are the
// prefill GEMMs (weights read once per step, 64-row tiles) or the decode GEMVs (one pass
// over the weights per row, no wasted rows): which is faster at small B depends on the
// device (bench/batch-bench.ts measures both). Only `step` changes state.
import { type Bound, type Dispatch, dispatchOf, readF32, storageBuffer } from "./buffers.ts"
import { decodeStep, type DecodeRows } from "./decode-driver.ts"
import type { Gpu } from "./gpu.ts"
import type { StepEncoder } from "./kv/manager.ts"
import { createUniforms } from "./model-resources.ts"
import { type CopyOut, GpuModel, type SampleParams } from "./model.ts"
import type { LayerProgram } from "./program.ts"
import { PassEncoder } from "./step-encoder.ts"
import type { ModelConfig } from "../models/types.ts"
import { BatchAttention } from "./batch-attention.ts"
import { BatchSampling, type CandidateRequest, type StepRead } from "./batch-sampling.ts"
import { halfRowsKey, mmaPipelineKeys, SKINNY_FORM, type SkinnyForm, skinnyFor } from "./batch-mma.ts"
import { type StreamForm, streamFor, streamPipelineKeys, streamRowCounts } from "./batch-stream.ts"
import { gemmShared, gemvShared, mmaShared, multiPipelineKeys, multiShared, type Shared, skinnyOf, streamOf, streamShared } from "./batch-projections.ts"

/** One sequence's part of a batched step: as `GpuModel.decode`'s arguments. */
export interface BatchRow {
  readonly model: GpuModel
  /** The row's input token is model.tokenIds[inSlot]. */
  readonly inSlot: number
  readonly sample?: SampleParams
  readonly copyOut?: CopyOut
  /** The input token, where the caller knows it (read back from the step before): written from the host unless it is in place. */
  readonly token?: number
  /**
   * The sampled token stays in the batch (for its next step and `readStep`, which the caller
   * then calls after every step): its model's tokenIds[outSlot] is not written, so a caller
   * that steps the model alone next writes it (`writeToken`) or passes `token`.
   */
  readonly idsOnHost?: boolean
  /**
   * A row sampled on the host (top-k / top-p, no `sample`): its `count` best logits (at most
   * MAX_BATCH_CANDIDATES) and softmax mass come back with `readStep` (as its model's
   * topCandidates), instead of its logits being copied to its model.
   */
  readonly candidates?: CandidateRequest
  /** Also copies the row's logits to its model's `logits` (tests); rows without `sample` always get them (host sampling reads them). */
  readonly logits?: boolean
}

/**
 * How the rows' projections run: the prefill GEMMs, the decode GEMVs (one pass over the
 * weights per row), kernels/gemv_multi.wgsl (one pass over the weights for every 8 rows), the
 * matrix units (engine/batch-mma.ts: one pass for every 16 rows; where skinnyFor allows), or
 * kernels/gemm_stream.wgsl (engine/batch-stream.ts: one pass for every 16 rows at GEMV speed).
 */
export type Projections = "gemm" | "gemv" | "multi" | "mma" | "stream"

/**
 * Fewer rows than this take the GEMVs in a batch with "mma" projections: the matrix units
 * cost the same at 1 row as at 16 (a pass over the weights at ~1 TB/s), the GEMVs one faster
 * pass per row (H100, 8B, 1K, bench/results/2026-12-07-matrix-gemm-2: B=1 6.8 ms/step with
 * the GEMVs, 18.1 with the matrix units; B=4 23.0 and 22.2).
 */
export const MMA_MIN_ROWS = 4

/** Fewer rows than this take the GEMVs in a batch with "stream" projections (one row: the GEMV step, with RoPE fused). */
export const STREAM_MIN_ROWS = 2

/** The matrix-unit projections' form (default SKINNY_FORM), the streamed ones' (default STREAM_FORM), and the fewest rows that take them (default MMA_MIN_ROWS, STREAM_MIN_ROWS). */
export interface MmaOptions {
  readonly form?: SkinnyForm
  readonly stream?: StreamForm
  readonly minRows?: number
  /** Attention per row even where the rows share a KV block store (side-by-side benchmarks). */
  readonly rowAttention?: boolean
  /** Sampling per row, as before engine/batch-sampling.ts: each row's logits copied to its model, which samples them (side-by-side benchmarks). */
  readonly rowSampling?: boolean
}

/** The batch's buffers hold whole groups of this many rows (gemv_multi's 8, the matrix units' 16). */
const ROW_GROUP = 16

/**
 * The projections a batch uses where none is asked for, by measurement (bench/batch-bench.ts):
 * - a CPU adapter (lavapipe): the GEMMs (gemm_reg), which read the weights once per step: the
 *   test model at 256 tokens of context ran B=4 in 123 ms/step against 412 with the GEMVs, B=8
 *   in 348 against 1124 (2 loaded cores);
 * - a GPU: the GEMVs up to 4 rows, gemv_multi past that. On an H100 at 8B shapes, 1K context
 *   (bench/results/2026-12-07-gpu-session/part2/batch-8b-1k.txt), B=4 took 22.4 ms/step with
 *   the GEMVs, 27.7 with gemv_multi and 85.2 with the GEMMs (whose 64-row tiles waste most of
 *   their work on a few rows); B=16 took 62.6 with gemv_multi, 86.1 and 99.2;
 * - a GPU opened with the matrix units (LEOAM_MATRIX_UNITS) and a model they fit: those from
 *   MMA_MIN_ROWS rows (steps of fewer rows take the GEMVs): on the same H100, B=16 took 32.9
 *   ms/step against gemv_multi's 62.1, B=4 22.2 against the GEMVs' 23.0
 *   (bench/results/2026-12-07-matrix-gemm-2);
 * - a GPU without them (or a model they do not fit), 2 rows or more: the streamed projections
 *   (gemm_stream), in place of gemv_multi's measured 1.75x at B=16. LEOAM_SKINNY_GEMM=stream
 *   takes them on every GPU, =old never. They are not the default where the matrix units are:
 *   gemm_stream has not run on a GPU yet (it passes the same checks as the others on lavapipe),
 *   while the matrix units' 6.25x at B=16 is measured, though they stream the weights at only
 *   ~1 TB/s where the GEMVs reach ~2.4 (H100, 8B; bench/skinny-bench.ts and
 *   `scripts/gpu-run.sh stream` compare them: bench/results/2026-12-08-gpu-session/runB.sh).
 */
export const defaultProjections = (
  gpu: Pick<Gpu, "kind" | "matrixF16" | "subgroupMinSize" | "subgroupMaxSize" | "hasF16" | "hasSubgroups">,
  config: ModelConfig,
  capacity: number,
  env: string | undefined = process.env.LEOAM_SKINNY_GEMM,
): Projections => {
  if (gpu.kind === "cpu") return "gemm"
  const want = streamWanted(env)
  const mma = capacity >= MMA_MIN_ROWS && skinnyFor(gpu, config)
  if (want !== "old" && !(want === "auto" && mma) && capacity >= STREAM_MIN_ROWS && streamFor(gpu, config)) return "stream"
  return mma ? "mma" : capacity <= 4 ? "gemv" : "multi"
}

/**
 * LEOAM_SKINNY_GEMM: "stream" takes gemm_stream for every batch on a GPU, "old" the matrix units /
 * GEMVs / gemv_multi as before, "auto" (or unset) gemm_stream only where the matrix units are not used.
 */
export const streamWanted = (env: string | undefined): "auto" | "stream" | "old" => {
  const v = (env ?? "auto").trim().toLowerCase()
  if (v === "auto" || v === "") return "auto"
  if (v === "stream" || v === "old") return v
  throw new RangeError(`LEOAM_SKINNY_GEMM must be stream, old or auto, not "${env}"`)
}

/** What one row's per-layer dispatches were built for. */
interface RowProgram {
  readonly row: number
  readonly layers: ReadonlyArray<{ readonly rope: Dispatch; readonly combine: Dispatch }>
}

export class DecodeBatch {
  readonly capacity: number
  readonly projections: Projections
  private readonly lead: GpuModel
  private readonly buffers: ReadonlyArray<GPUBuffer>
  private readonly qkv: GPUBuffer // (rows, q+k+v) f32 before RoPE
  private readonly attn: GPUBuffer // (rows, H, D) f32
  private readonly ids: GPUBuffer // (rows) u32 input tokens
  private readonly logits: GPUBuffer // (rows, vocab) f32
  private readonly embed: Dispatch
  private readonly embedRows: (m: number) => void
  private readonly shared: Shared
  /** "mma", "stream": the GEMVs, for steps of fewer than MMA_MIN_ROWS (STREAM_MIN_ROWS) rows. */
  private readonly few: Shared | undefined
  /** The projections of the current members' steps: `shared`, or `few`. */
  private active: Shared
  private readonly mmaMinRows: number
  private readonly rowAttention: boolean
  /** The rows' token choice in one pass (undefined: per row through their models, MmaOptions.rowSampling). */
  private readonly sampling: BatchSampling | undefined
  /** Where the last step left each GPU-sampled row's token in `ids`: its row and the slot it stands for (the next input there needs no write). */
  private placed = new Map<GpuModel, { readonly row: number; readonly slot: number }>()
  /** `placed` as the current step found it. */
  private inPlace = new Map<GpuModel, { readonly row: number; readonly slot: number }>()
  private readonly hostIds: Uint32Array
  /** Attention of every row in one dispatch a layer, for rows in this store (made at the first such step). */
  private attention: BatchAttention | undefined
  private readonly qkvBytes: number
  private readonly attnBytes: number
  private readonly rowPrograms = new Map<GpuModel, RowProgram>()
  private readonly steps: PassEncoder
  /** The step's layers for the current members (rebuilt when they change). */
  private layers: ReadonlyArray<LayerProgram> = []
  private members: ReadonlyArray<GpuModel> = []
  private rows: ReadonlyArray<BatchRow> = []
  private driverRows: DecodeRows

  /** A batch on `lead`'s weights, its pipelines prewarmed first. */
  static async open(lead: GpuModel, capacity: number, projections: Projections = defaultProjections(lead.gpu, lead.config, capacity), mma: MmaOptions = {}): Promise<DecodeBatch> {
    if (projections === "multi") await lead.pipelines.prewarm(multiPipelineKeys())
    if (projections === "mma") await lead.pipelines.prewarm(mmaPipelineKeys(skinnyOf(lead, mma.form ?? SKINNY_FORM), lead.weights.layers.some((w) => w.bqkv || w.bo), lead.config))
    if (projections === "stream") {
      const bias = lead.weights.layers.some((w) => w.bqkv || w.bo)
      const k = streamOf(lead, mma.stream)
      const keys = streamPipelineKeys(k, bias, lead.config, streamRowCounts(capacity, mma.minRows ?? STREAM_MIN_ROWS))
      await lead.pipelines.prewarm([halfRowsKey(true, k.X32), halfRowsKey(false, k.X32), ...keys])
    }
    return new DecodeBatch(lead, capacity, projections, mma)
  }

  /** A batch on `lead`'s weights; its rows may be `lead` and any of its siblings ("multi", "mma", "stream": after `open` prewarmed their pipelines). */
  constructor(lead: GpuModel, capacity: number, projections: Projections = defaultProjections(lead.gpu, lead.config, capacity), mma: MmaOptions = {}) {
    const c = lead.config
    const device = lead.gpu.device
    this.lead = lead
    this.capacity = capacity
    this.projections = projections
    this.qkvBytes = (c.numHeads + 2 * c.numKvHeads) * c.headDim * 4
    this.attnBytes = c.numHeads * c.headDim * 4
    const align = device.limits.minStorageBufferOffsetAlignment
    if (this.qkvBytes % align !== 0 || this.attnBytes % align !== 0) {
      // A row's q, k, v and attention output are bound as ranges of the batch's buffers.
      throw new RangeError(`batched decode needs a head's bytes (head_dim ${c.headDim} x 4) in multiples of ${align}`)
    }
    const rows = Math.ceil(capacity / ROW_GROUP) * ROW_GROUP
    const x = storageBuffer(device, "batch x (rows, hidden) f32", rows * c.hiddenSize * 4)
    const xn = storageBuffer(device, "batch xn (rows, hidden) f32", rows * c.hiddenSize * 4)
    this.qkv = storageBuffer(device, "batch qkv (rows, q+k+v) f32", rows * this.qkvBytes)
    this.attn = storageBuffer(device, "batch attn (rows, H, D) f32", rows * this.attnBytes)
    const ffn = storageBuffer(device, "batch ffn (rows, F) f32", rows * c.intermediateSize * 4)
    this.ids = storageBuffer(device, "batch ids (rows) u32", rows * 4)
    this.logits = storageBuffer(device, "batch logits (rows, vocab) f32", rows * c.vocabSize * 4)
    this.buffers = [x, xn, this.qkv, this.attn, ffn, this.ids, this.logits]
    const u = createUniforms(device, c, lead.gemv, 0)
    const inputs = { device, pipelines: lead.pipelines, config: c, weights: lead.weights, keys: lead.keys, gemv: lead.gemv }
    const act = { x, xn, qkv: this.qkv, attn: this.attn, ffn, logits: this.logits }
    this.shared =
      projections === "gemm"
        ? gemmShared(inputs, act, u)
        : projections === "gemv"
          ? gemvShared(inputs, act, u)
          : projections === "multi"
            ? multiShared(inputs, act)
            : projections === "stream"
              ? streamShared(inputs, act, capacity, streamOf(lead, mma.stream), mma.minRows ?? STREAM_MIN_ROWS)
              : mmaShared(inputs, act, capacity, skinnyOf(lead, mma.form ?? SKINNY_FORM))
    this.few = projections === "mma" || projections === "stream" ? gemvShared(inputs, act, u) : undefined
    this.active = this.shared
    this.mmaMinRows = mma.minRows ?? (projections === "stream" ? STREAM_MIN_ROWS : MMA_MIN_ROWS)
    this.rowAttention = mma.rowAttention ?? false
    this.sampling = mma.rowSampling ? undefined : new BatchSampling({ device, pipelines: lead.pipelines, keys: lead.keys, vocabSize: c.vocabSize, capacity, logits: this.logits, tokens: this.ids })
    this.hostIds = new Uint32Array(capacity)
    this.embed = dispatchOf(device, lead.pipelines.now(lead.keys.embed), [[0, u.embedPrefill.buffer], [1, lead.weights.embed], [2, this.ids], [3, x]], Math.ceil(c.hiddenSize / 2 / 256), 1)
    this.embedRows = (m) => {
      u.embedPrefill.set(c.hiddenSize, 0, c.vocabSize, m, 0)
      this.embed.y = m
    }
    this.steps = new PassEncoder(device)
    this.driverRows = this.rowsOf([], [])
  }

  /**
   * One decode step of every row (at most `capacity`, each model at most once): as
   * `model.decode(inSlot, sample, copyOut)` for each, in one pass over the weights. Returns
   * a promise only when a KV manager waits; throws ContextOverflow before encoding anything
   * when a row's context is full.
   */
  step(rows: ReadonlyArray<BatchRow>, step: StepEncoder = this.steps.open()): void | Promise<void> {
    if (rows.length === 0 || rows.length > this.capacity) throw new RangeError(`a batch step takes 1 to ${this.capacity} rows, not ${rows.length}`)
    for (const r of rows) {
      if (r.model.weights !== this.lead.weights) throw new RangeError("a batch's rows share its weights (GpuModel.sibling)")
      r.model.prepareStep(false)
    }
    this.rows = rows
    if (!sameMembers(this.members, rows)) this.join(rows)
    // Rows attended together take their RoPE from the batch's attention; per row, from their own.
    if (!this.attendsTogether) for (const r of rows) r.model.prepareStep()
    if (rows.length > 1 && this.attendsTogether) this.stepsTogether++
    // Until the step is encoded no token is in place: a failed step leaves `ids` unknown.
    this.inPlace = this.placed
    this.placed = new Map()
    const placed = new Map<GpuModel, { row: number; slot: number }>()
    if (this.sampling) rows.forEach((r, row) => r.sample && placed.set(r.model, { row, slot: r.sample.outSlot % GpuModel.idSlots }))
    const encoding = decodeStep(this.driverRows, step)
    if (!encoding) this.placed = placed
    else return encoding.then(() => void (this.placed = placed))
  }

  /**
   * The tokens the last step sampled, one per row in row order, in one read. A step copies them
   * out where a row has `idsOnHost`; the next step may be encoded before this resolves.
   */
  async readTokens(): Promise<Uint32Array> {
    return (await this.readStep()).tokens
  }

  /** The tokens of the oldest step not yet read, and the candidates its host-sampled rows asked for (by row), in one read. */
  readStep(): Promise<StepRead> {
    if (!this.sampling) throw new Error("readStep: this batch samples per row (rowSampling)")
    return this.sampling.read()
  }

  /** Row `row`'s logits of the last step (a host-sampled row whose candidates were too few for its top-p), until the next step. */
  rowLogits(row: number): Promise<Float32Array> {
    const v = this.lead.config.vocabSize
    return readF32(this.lead.gpu.device, this.logits, row * v * 4, v)
  }

  /** Steps of two or more rows that attended together (rows sharing a KV block store), since the batch was made. */
  stepsTogether = 0

  /** Whether the current members' steps attend all rows in one dispatch a layer (rows sharing a KV block store). */
  get attendsTogether(): boolean {
    return this.attention !== undefined && this.driverRows.kvs[0] === this.attention
  }

  // The step's layer lists for a new membership.
  private join(rows: ReadonlyArray<BatchRow>): void {
    const m = rows.length
    const members = rows.map((r) => r.model)
    this.active = this.few && m < this.mmaMinRows ? this.few : this.shared
    this.members = members
    this.active.resize(m)
    this.embedRows(m)
    const store = members[0].kv.batched?.pool.store
    if (!this.rowAttention && BatchAttention.fits(members.map((model) => model.kv), store)) {
      let a = this.attention
      if (!a || a.store !== store) {
        a?.destroy()
        const l = this.lead
        a = this.attention = new BatchAttention({ device: l.gpu.device, pipelines: l.pipelines, config: l.config, keys: l.keys, store: store!, capacity: this.capacity, qkv: this.qkv, attn: this.attn })
      }
      a.use(members.map((model) => model.kv.batched!))
      this.layers = this.active.layers.map((g, l) => ({ pre: [...g.pre, a.layers[l].rope], post: [a.layers[l].combine, ...g.post] }))
      this.driverRows = this.rowsOf([a], this.layers)
      return
    }
    this.joinRows(members)
  }

  // Attention per row, through each row's own manager: the rows' programs (RoPE + append, combine).
  private joinRows(members: ReadonlyArray<GpuModel>): void {
    for (const model of this.rowPrograms.keys()) if (!members.includes(model)) this.rowPrograms.delete(model)
    const programs = members.map((model, row) => {
      const held = this.rowPrograms.get(model)
      if (held?.row === row) return held
      const range = (buffer: GPUBuffer, bytes: number): Bound => ({ buffer, offset: row * bytes, size: bytes })
      const program = { row, layers: model.rowDispatches(range(this.qkv, this.qkvBytes), range(this.attn, this.attnBytes)) }
      this.rowPrograms.set(model, program)
      return program
    })
    this.layers = this.active.layers.map((g, l) => ({
      pre: [...g.pre, ...programs.map((p) => p.layers[l].rope)],
      post: [...programs.map((p) => p.layers[l].combine), ...g.post],
    }))
    this.driverRows = this.rowsOf(
      members.map((m) => m.kv),
      this.layers,
    )
  }

  private rowsOf(kvs: DecodeRows["kvs"], layers: ReadonlyArray<LayerProgram>): DecodeRows {
    const vocabBytes = this.lead.config.vocabSize * 4
    return {
      kvs,
      layers,
      begin: (step) => {
        this.writeInputs(step)
        step.encode([this.embed])
      },
      end: (step) => {
        step.encode(this.active.head)
        const sampling = this.sampling
        const asked = sampling ? this.rows.flatMap((r, b) => (r.candidates && !r.sample ? [[b, r.candidates] as const] : [])) : []
        const logits = this.rows.map((r, b) => [r, b] as const).filter(([r]) => !sampling || r.logits || (!r.sample && !r.candidates))
        if (logits.length > 0) step.record((e) => logits.forEach(([r, b]) => e.copyBufferToBuffer(this.logits, b * vocabBytes, r.model.logits, 0, vocabBytes)))
        if (!sampling) for (const r of this.rows) r.sample && r.model.encodeSample(step, r.sample)
        else {
          if (this.rows.some((r) => r.sample)) {
            sampling.set(this.rows.map((r) => r.sample))
            step.encode(sampling.dispatches)
          }
          sampling.ask(asked)
          if (asked.length > 0) step.encode(sampling.candidateDispatches)
        }
      },
      last: (e) => {
        if (this.sampling) {
          this.rows.forEach((r, b) => r.sample && !r.idsOnHost && e.copyBufferToBuffer(this.ids, b * 4, r.model.tokenIds, (r.sample.outSlot % GpuModel.idSlots) * 4, 4))
          if (this.rows.some((r) => (r.sample && r.idsOnHost) || (r.candidates && !r.sample))) this.sampling.copyOut(e, this.rows.length)
        }
        for (const r of this.rows) if (r.copyOut) e.copyBufferToBuffer(r.copyOut.src, r.copyOut.offset, r.copyOut.dst, 0, 4)
      },
    }
  }

  // The rows' input tokens into `ids`: nothing for a row whose token the last step left in its
  // place, the host's `token` where given (one write per run of rows), else a copy from its model.
  private writeInputs(step: StepEncoder): void {
    const copies: number[] = []
    let run = -1
    const flush = (end: number) => {
      if (run >= 0) this.lead.gpu.device.queue.writeBuffer(this.ids, run * 4, this.hostIds, run, end - run)
      run = -1
    }
    this.rows.forEach((r, b) => {
      const slot = r.inSlot % GpuModel.idSlots
      const held = this.inPlace.get(r.model)
      if (held?.row === b && held.slot === slot) return flush(b)
      if (r.token === undefined) {
        // The model's tokenIds do not hold a token the batch kept (idsOnHost), so a moved row needs `token`.
        if (r.idsOnHost && held !== undefined) throw new RangeError("a batch row whose token stayed in the batch moved without its `token`")
        copies.push(b)
        return flush(b)
      }
      this.hostIds[b] = r.token
      if (run < 0) run = b
    })
    flush(this.rows.length)
    if (copies.length > 0) step.record((e) => copies.forEach((b) => e.copyBufferToBuffer(this.rows[b].model.tokenIds, (this.rows[b].inSlot % GpuModel.idSlots) * 4, this.ids, b * 4, 4)))
  }

  destroy(): void {
    for (const b of this.buffers) b.destroy()
    this.sampling?.destroy()
    this.attention?.destroy()
    this.shared.destroy?.()
    this.rowPrograms.clear()
  }
}

const sameMembers = (members: ReadonlyArray<GpuModel>, rows: ReadonlyArray<BatchRow>): boolean =>
  members.length === rows.length && rows.every((r, i) => r.model === members[i])

