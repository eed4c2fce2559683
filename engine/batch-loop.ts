// Continuous batching over one DecodeBatch: sequences join between steps and leave when they
// finish (a stop id, their token budget, a full context, or their caller's `onToken` saying
// stop), and long prompts are prefilled a slice at a time between decode steps so that the
// sequences already decoding keep streaming (with none decoding, a prompt goes in whole). Each sequence is its own GpuModel (a sibling on
// the batch's weights) and keeps generate.ts's contract: the same ids as `generate` alone
// (greedy and GPU sampling by (seed, step); top-k / top-p on the host from its own logits),
// its cache truncated to the tokens it returns. One sequence's failure (its prefill, an
// invalid token, its KV manager failing a step) fails only it: after a failed batch step
// each row takes the step again alone.
// Only the loop (`drive`) changes the members, and between steps `replace` and `lose`.
import { DecodeBatch, type BatchRow, type Projections } from "./batch.ts"
import { MAX_BATCH_CANDIDATES, type StepRead } from "./batch-sampling.ts"
import type { Candidates } from "./candidates.ts"
import { type GenerateOptions, type GenerateResult, NumericalFailure } from "./generate.ts"
import { type CopyOut, GpuModel } from "./model.ts"
import { sampleCandidates, sampleHost } from "./sampling.ts"

export interface BatchLoopOptions {
  /** Most sequences decoding together. */
  readonly capacity: number
  /** Most prompt tokens prefilled between two decode steps. */
  readonly prefillSlice: number
  readonly projections?: Projections
  /** Encode a batched step before the last one's tokens are read, where its rows allow (default true). */
  readonly overlap?: boolean
  /** At each step boundary, before the next prompt slice and step (where lanes may be moved: `replace`). */
  readonly between?: () => Promise<void>
  /** Whether `between` has work waiting: then no step is encoded ahead, so that the boundary comes with nothing in flight. */
  readonly betweenWaits?: () => boolean
}

/** Candidates read back for top-p sampling without top-k (as generate.ts). */
const TOP_P_CANDIDATES = 1024

interface Member {
  /** Replaced between steps when the lane moves to another KV budget share (`replace`). */
  model: GpuModel
  readonly prompt: ReadonlyArray<number>
  readonly options: GenerateOptions
  readonly onGpu: boolean
  readonly readback: GPUBuffer // 4 bytes, MAP_READ
  /** At its first prefill turn: the prompt tokens the model holds already (a shared prefix it adopted then). */
  prepare: (() => Promise<number>) | undefined
  readonly resolve: (r: GenerateResult) => void
  readonly reject: (e: unknown) => void
  readonly t0: number
  /** The sequence's length when it joined (0, or a resumed session's). */
  readonly base: number
  prefilled: number
  ids: number[]
  firstTokenAt: number
  finishReason: "length" | "stop"
  /** Its last token was chosen in a batch step, which leaves it in the batch: a step alone writes it to the model first. */
  batched: boolean
}

/** An encoded step: its sequences, rows and their lengths before it; `failed`: what its encoding threw. */
interface InFlight {
  readonly members: ReadonlyArray<Member>
  readonly rows: ReadonlyArray<BatchRow>
  readonly lengths: ReadonlyArray<number>
  readonly failed?: unknown
}

export class BatchLoop {
  private batch: DecodeBatch | undefined
  private readonly prefilling: Member[] = []
  private readonly decoding: Member[] = []
  /** A batched step encoded before the one in flight was read (see `step`). */
  private ahead: InFlight | undefined
  private running: Promise<void> | undefined

  constructor(
    private readonly lead: GpuModel,
    private readonly options: BatchLoopOptions,
    /** Called before each decode step (where a live policy change applies). */
    private readonly beforeStep?: () => void,
  ) {
  }

  /** Batched steps whose rows attended together in one dispatch a layer (rows in one KV block store), since the loop started. */
  get attendedTogether(): number {
    return this.batch?.stepsTogether ?? 0
  }

  /** Batched steps encoded before the step before them was read (see `step`), since the loop started. */
  stepsAhead = 0

  /** Sequences decoding, and those still prefilling. */
  get sizes(): { readonly decoding: number; readonly prefilling: number } {
    return { decoding: this.decoding.length, prefilling: this.prefilling.length }
  }

  /**
   * Generates from `prompt` on `model` (a sibling of the lead, with room for the prompt and
   * `maxTokens`): a fresh sequence, or with `continue` after the one the model holds (a
   * resumed session); joining the batch at the next step boundary. With `maxTokens` 0 it
   * only prefills (a session's document). `prepare`, at the sequence's first prefill turn
   * (after the prompts before it), may give the model the prompt's first tokens (a shared
   * prefix's chunks) and resolves to how many it holds; the rest is prefilled.
   */
  generate(model: GpuModel, prompt: ReadonlyArray<number>, options: GenerateOptions, prepare?: () => Promise<number>): Promise<GenerateResult> {
    if (prompt.length === 0) return Promise.reject(new RangeError("generate of an empty prompt"))
    return new Promise((resolve, reject) => {
      if (!options.continue) model.reset()
      const onGpu = options.temperature <= 0 || ((options.topK ?? 0) <= 0 && (options.topP ?? 1) >= 1)
      const readback = model.gpu.device.createBuffer({ label: "batch token readback", size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
      this.prefilling.push({ model, prompt, options, onGpu, readback, prepare, resolve, reject, t0: performance.now(), base: model.length, prefilled: 0, ids: [], firstTokenAt: 0, finishReason: "length", batched: false })
      this.running ??= this.drive().finally(() => (this.running = undefined))
    })
  }

  /** Whether `model` is a sequence decoding now (past its prompt, not finished). */
  isDecoding(model: GpuModel): boolean {
    return this.decoding.some((m) => m.model === model)
  }

  /**
   * Between steps (from `between`): the decoding sequence on `old` goes on on `next`, which
   * holds the same sequence (a lane moved to another KV budget share).
   */
  replace(old: GpuModel, next: GpuModel): void {
    const m = this.decoding.find((d) => d.model === old)
    if (!m) throw new RangeError("replace: no decoding sequence on that model")
    m.model = next
  }

  /** Between steps: the decoding sequence on `model` fails with `e` (its lane was lost moving). */
  lose(model: GpuModel, e: unknown): void {
    const m = this.decoding.find((d) => d.model === model)
    if (m) this.fail(m, e)
  }

  /** Resolves when no sequence is left. */
  async idle(): Promise<void> {
    while (this.running) await this.running
  }

  destroy(): void {
    this.batch?.destroy()
  }

  private async drive(): Promise<void> {
    while (this.prefilling.length > 0 || this.decoding.length > 0) {
      // A boundary with no step in flight (one encoded ahead waits for its turn: `betweenWaits` holds the next back).
      if (this.options.between && !this.ahead) await this.between(this.options.between)
      // A slice of the oldest prompt, while there is room in the batch for it to join.
      if (this.prefilling.length > 0 && this.decoding.length < this.options.capacity) await this.prefillSlice(this.prefilling[0])
      if (this.decoding.length > 0) await this.step()
    }
  }

  private async prefillSlice(m: Member): Promise<void> {
    try {
      if (m.prepare) {
        const held = await m.prepare()
        m.prepare = undefined
        // At least the last prompt token is prefilled here: its logits choose the first token.
        if (!(held >= 0 && held < m.prompt.length) || held !== m.model.length - m.base) throw new RangeError(`a prepared prefix of ${held} tokens for a prompt of ${m.prompt.length}`)
        m.prefilled = held
      }
      // Slices keep the decoding sequences streaming; with none decoding the whole prompt goes
      // in one call (a tiered cache prefills it layer by layer, each chunk written once).
      const left = m.prompt.length - m.prefilled
      const n = this.decoding.length > 0 ? Math.min(this.options.prefillSlice, left) : left
      const at = m.prefilled
      await m.model.prefill(m.prompt.slice(at, at + n), false, m.options.onPrefill && ((done) => m.options.onPrefill!(at + done, m.prompt.length)))
      m.prefilled += n
      m.options.onPrefill?.(m.prefilled, m.prompt.length)
      if (m.prefilled < m.prompt.length) return
      this.prefilling.splice(this.prefilling.indexOf(m), 1)
      if (m.options.maxTokens <= 0) {
        m.firstTokenAt = performance.now()
        return this.finish(m)
      }
      // The first token, from the prompt's last logits.
      let done: boolean
      if (m.onGpu) {
        m.model.sample(this.params(m, 0), this.copyOut(m, 0))
        done = await this.accept(m, await this.read(m))
      } else done = await this.acceptHost(m, 0)
      // A prompt that fills the context ends with its first token (as generate alone).
      if (done || m.model.length >= m.model.maxContext) return this.finish(m)
      this.decoding.push(m)
    } catch (e) {
      this.fail(m, e)
    }
  }

  /** The boundary's work; its failure fails the decoding sequences (a lane it moved may be gone). */
  private async between(work: () => Promise<void>): Promise<void> {
    try {
      await work()
    } catch (e) {
      for (const m of [...this.decoding]) this.fail(m, e)
    }
  }

  /**
   * One decode step of every decoding sequence: alone through its own GEMVs, else as a batch.
   * Where nothing can change the next batched step's rows (every row sampled on the GPU, none
   * finishing by length or context, no prompt waiting), it is encoded before this one's
   * tokens are read, its inputs in place in the batch (as generate.ts queues steps ahead
   * alone): the GPU runs it while the host reads. A row that then stops had its step computed
   * for nothing; its cache is truncated to the tokens it returns.
   */
  private async step(): Promise<void> {
    const current = this.ahead ?? (await this.encode([...this.decoding], false))
    this.ahead = undefined
    if (this.canRunAhead(current)) {
      this.ahead = await this.encode(current.members, true)
      this.stepsAhead++
    }
    await this.collect(current)
  }

  /**
   * Encodes a step of `members`: step k consumes token k - 1 and chooses token k (`ahead`: the
   * step after the one in flight, whose tokens are in place in the batch). In a batch the
   * GPU-sampled rows' tokens stay there, and come back with the host-sampled rows'
   * candidates in one read for all rows (`readStep`).
   */
  private async encode(members: ReadonlyArray<Member>, ahead: boolean): Promise<InFlight> {
    this.beforeStep?.()
    for (const m of members) m.options.beforeStep?.()
    const rows: BatchRow[] = members.map((m) => {
      const k = m.ids.length + (ahead ? 1 : 0)
      const host = m.onGpu ? undefined : this.candidateCount(m)
      const token = ahead ? {} : { token: m.ids[k - 1] }
      return { model: m.model, inSlot: k - 1, ...token, ...(m.onGpu ? { sample: this.params(m, k), idsOnHost: true } : host ? { candidates: { count: host, temperature: m.options.temperature } } : {}) }
    })
    const step = { members, rows, lengths: members.map((m) => m.model.length) }
    try {
      if (rows.length === 1) await this.decodeAlone(members[0], rows[0])
      else {
        this.batch ??= await DecodeBatch.open(this.lead, this.options.capacity, this.options.projections)
        await this.batch.step(rows)
        for (const m of members) m.batched = true
      }
      return step
    } catch (e) {
      return { ...step, failed: e }
    }
  }

  /** Whether the step after `s` can be encoded before `s` is read (see `step`). */
  private canRunAhead(s: InFlight): boolean {
    return (
      this.options.overlap !== false &&
      this.options.betweenWaits?.() !== true &&
      s.failed === undefined &&
      s.rows.length > 1 &&
      this.prefilling.length === 0 &&
      s.members.length === this.decoding.length &&
      s.members.every((m) => m.onGpu && m.ids.length + 2 <= m.options.maxTokens && m.model.length < m.model.maxContext)
    )
  }

  /** Reads a step's tokens and takes them; finishes the sequences that are done. */
  private async collect(s: InFlight): Promise<void> {
    // Rows that finished or failed while the step was in flight (it ran ahead of their end) take nothing from it.
    const keep = s.members.map((m) => this.decoding.includes(m))
    let members = s.members.filter((_, b) => keep[b])
    const rowOf = new Map(s.members.map((m, b) => [m, b]))
    // What the batch read back, where the step was batched.
    let read: StepRead | undefined
    let failed = s.failed
    if (failed === undefined && s.rows.length > 1 && s.rows.some((r) => r.idsOnHost || r.candidates)) {
      try {
        read = await this.batch!.readStep()
      } catch (e) {
        failed = e
      }
    }
    if (failed !== undefined) {
      if (s.rows.length === 1) return members.length > 0 ? this.fail(members[0], failed) : undefined
      // A step run ahead of this one is dropped (its tokens read and left): the rows take this step again alone.
      if (this.ahead) {
        if (this.ahead.failed === undefined) await this.batch!.readStep().catch(() => undefined)
        this.ahead = undefined
      }
      const at = (xs: ReadonlyArray<BatchRow> | ReadonlyArray<number>) => xs.filter((_, b) => keep[b])
      members = await this.alone(members, at(s.rows) as BatchRow[], at(s.lengths) as number[])
    }
    await Promise.all(
      members.map(async (m) => {
        try {
          const k = m.ids.length
          const b = rowOf.get(m)!
          const candidates = read?.candidates.get(b)
          const batch = this.batch
          const done = m.onGpu
            ? await this.accept(m, read ? read.tokens[b]! : await this.read(m))
            : await this.acceptHost(m, k, candidates && batch ? { candidates, logits: () => batch.rowLogits(b) } : undefined)
          if (done || m.model.length >= m.model.maxContext) await this.finish(m)
        } catch (e) {
          this.fail(m, e)
        }
      }),
    )
  }

  /**
   * After a failed batch step, whose row failed is not known: every row goes back to the
   * length the step found it at and takes the step alone; only the rows that fail alone fail.
   * Returns the others.
   */
  private async alone(members: ReadonlyArray<Member>, rows: ReadonlyArray<BatchRow>, lengths: ReadonlyArray<number>): Promise<Member[]> {
    const ok: Member[] = []
    for (const [i, m] of members.entries()) {
      try {
        await m.model.settle()
        m.model.truncate(lengths[i])
        await this.decodeAlone(m, rows[i])
        ok.push(m)
      } catch (e) {
        this.fail(m, e)
      }
    }
    return ok
  }

  /** A step of one sequence through its own model, its token read back through its own buffer. */
  private async decodeAlone(m: Member, row: BatchRow): Promise<void> {
    const k = m.ids.length
    if (m.batched) m.model.writeToken(row.inSlot, m.ids[k - 1])
    m.batched = false
    await m.model.decode(row.inSlot, row.sample, row.sample && this.copyOut(m, k))
  }

  private params(m: Member, step: number) {
    return { outSlot: step, temperature: Math.max(0, m.options.temperature), seed: m.options.seed ?? 0, step }
  }

  private copyOut(m: Member, slot: number): CopyOut {
    return { src: m.model.tokenIds, offset: (slot % GpuModel.idSlots) * 4, dst: m.readback }
  }

  private async read(m: Member): Promise<number> {
    await m.readback.mapAsync(GPUMapMode.READ)
    const id = new Uint32Array(m.readback.getMappedRange())[0]
    m.readback.unmap()
    return id
  }

  /** Candidates a host-sampled sequence reads back (its top-k, else TOP_P_CANDIDATES), where a batch can read them for it (undefined: through its model). */
  private candidateCount(m: Member): number | undefined {
    const o = m.options
    const count = Math.max(1, Math.min(o.topK && o.topK > 0 ? o.topK : TOP_P_CANDIDATES, m.model.config.vocabSize))
    return count <= MAX_BATCH_CANDIDATES ? count : undefined
  }

  /**
   * Top-k / top-p on the host from the sequence's logits (its candidates, read with a batch
   * step's tokens or else from its model; all its logits where they hold too little of top-p);
   * writes the token for the next step.
   */
  private async acceptHost(m: Member, step: number, batched?: { readonly candidates: Candidates; readonly logits: () => Promise<Float32Array> }): Promise<boolean> {
    const o = m.options
    const cand = batched?.candidates ?? (await m.model.topCandidates(o.topK && o.topK > 0 ? o.topK : TOP_P_CANDIDATES, o.temperature))
    const id = sampleCandidates(cand.ids, cand.logits, cand, o, step) ?? sampleHost(await (batched?.logits() ?? m.model.readLogits()), o, step)
    const done = await this.accept(m, id)
    if (!done) m.model.writeToken(step, id)
    return done
  }

  /** Takes a chosen token; true when the sequence is finished. */
  private async accept(m: Member, id: number): Promise<boolean> {
    const o = m.options
    if (!(id >= 0 && id < m.model.config.vocabSize)) throw new NumericalFailure(`the model produced no valid token (id ${id}): NaN or infinite logits`)
    if (m.ids.length === 0) m.firstTokenAt = performance.now()
    m.ids.push(id)
    const stop = o.onToken?.(id, m.ids.length - 1) === true || (o.stopIds?.includes(id) ?? false)
    if (stop) m.finishReason = "stop"
    return stop || m.ids.length >= o.maxTokens
  }

  private async finish(m: Member): Promise<void> {
    this.leave(m)
    try {
      await m.model.settle()
      m.model.truncate(m.base + m.prompt.length + Math.max(0, m.ids.length - 1))
      const end = performance.now()
      const decoded = Math.max(0, m.ids.length - 1)
      m.resolve({
        ids: m.ids,
        finishReason: m.finishReason,
        promptTokens: m.prompt.length,
        timings: { prefillMs: m.firstTokenAt - m.t0, decodeMsPerToken: decoded > 0 ? (end - m.firstTokenAt) / decoded : 0, totalMs: end - m.t0 },
      })
    } catch (e) {
      m.reject(e)
    } finally {
      m.readback.destroy()
    }
  }

  private fail(m: Member, e: unknown): void {
    this.leave(m)
    m.readback.destroy()
    m.reject(e)
  }

  private leave(m: Member): void {
    for (const list of [this.prefilling, this.decoding]) {
      const i = list.indexOf(m)
      if (i >= 0) list.splice(i, 1)
    }
  }
}
