// The GPU forward pass of a Llama-family model: weights, activations, the KV manager of one
// sequence (engine/kv/), and the prepared dispatch lists (engine/program.ts) whose bind
// groups are built once and replayed. One driver per phase, each `for layer: pre; attend
// through the KV manager; post`; a step writes its few changing uniforms, encodes and
// submits, and nothing is read back unless asked for. The drivers never learn which policy
// the manager runs. Only `prefill`, `decode`, `truncate`, `reset` and `resume` change the
// sequence state.
import type { ModelConfig, WeightSource } from "../models/types.ts"
import { ropeInvFreq } from "./cpu-reference.ts"
import { type Bound, type Dispatch, dispatchOf, readF32, storageBuffer } from "./buffers.ts"
import { decodeStep, OneRow } from "./decode-driver.ts"
import type { PipelineKey } from "./pipelines.ts"
import { gpuFiller } from "./gpu-fill.ts"
import type { Gpu } from "./gpu.ts"
import { Pipelines } from "./pipelines.ts"
import { defaultGemvTuning, type GemvTuningOption, type GemvTunings, resolveGemvTunings } from "./gemv-tuning.ts"
import { allocateActivations, ARGMAX_GROUPS, canFuseRope, createUniforms, fillRope, forecastInputs, gemmRowsPerGroup, modelKeys, type pipelineKeys, subgroupsOf } from "./model-resources.ts"
import { type Candidates, SamplingCandidates } from "./candidates.ts"
import { checkKernelShapes, destroyWeights, type GpuFill, type ModelWeights, uploadWeights } from "./weights.ts"
import type { KvApplies, KvManager, KvStats, StepEncoder } from "./kv/manager.ts"
import { fullKv, kvApplies, type KvKind, kvKindOf, type KvSpec, kvSwap } from "./kv/registry.ts"
import { buildProgram, type Program, rowLogits } from "./program.ts"
import { PassEncoder } from "./step-encoder.ts"
import { prefillByLayer } from "./prefill-by-layer.ts"
import type { TierStats } from "./kv/tiered/index.ts"
import type { KvBlockStore } from "./kv/block-store.ts"

export interface EngineOptions {
  /** Most tokens the sequence may hold (prompt + generated); default: the model's max positions. */
  readonly maxContext?: number
  /** Tokens per prefill pass; longer prompts are prefilled in chunks. */
  readonly prefillChunk?: number
  /** Tokens per KV block (page). */
  readonly blockTokens?: number
  /** GEMV tuning (threads and rows per workgroup), one for all or one per matrix. */
  readonly gemv?: GemvTuningOption
  /** The KV manager and its policy (engine/kv/registry.ts); absent: full attention, all KV on the GPU. */
  readonly kv?: KvSpec
  /** Decode fusions, on by default where the device allows them (off: side-by-side benchmarks). */
  readonly decode?: DecodeOptions
  /** Layer-major prefill where the KV manager offers it; false: token-major always. Default: on, unless LEOAM_PREFILL=token-major. */
  readonly layerMajor?: boolean
  /** A KV block store shared with other sequences (full attention: a decode batch then attends them in one dispatch). */
  readonly kvBlocks?: KvBlockStore
}

export interface DecodeOptions {
  /**
   * RoPE and the KV append inside the QKV GEMV (one dispatch less per layer). Needs the QKV
   * tuning's rows to be a multiple of 4 and 8 storage buffers per stage (9 with a QKV bias).
   */
  readonly fuseRope?: boolean
}

export interface SampleParams {
  readonly outSlot: number
  readonly temperature: number
  readonly seed: number
  readonly step: number
}

/** A 4-byte copy appended to a step's command buffer (the chosen token, for read-back). */
export interface CopyOut {
  readonly src: GPUBuffer
  readonly offset: number
  readonly dst: GPUBuffer
}

/** What a model is constructed from (besides weights and pipelines). */
interface BuildOptions {
  readonly maxContext: number
  readonly prefillChunk: number
  readonly blockTokens: number
  readonly gemv: GemvTunings
  readonly decode: Required<DecodeOptions>
  readonly kv: KvSpec
  readonly layerMajor: boolean
  readonly kvBlocks?: KvBlockStore
}

/** The KV part of the engine options: which manager, and its policy. */
export type KvOptions = Pick<EngineOptions, "kv">

/** withKv could not build the new KV setup; `fallback` is the model under the old one. */
export class KvRebuildError extends Error {
  constructor(
    override readonly cause: Error,
    readonly fallback: GpuModel,
  ) {
    super(cause.message)
  }
  get code(): string {
    return (this.cause as { code?: string }).code ?? "internal"
  }
}

export class ContextOverflow extends Error {
  readonly code = "context_overflow"
}

const ID_SLOTS = 256

export class GpuModel {
  readonly config: ModelConfig
  readonly maxContext: number
  readonly prefillChunk: number
  /** The sequence's KV cache behind the one seam the drivers call. */
  readonly kv: KvManager
  /** Token ids chosen on the GPU: (ID_SLOTS) u32 ring; decode step reads its input here. */
  readonly tokenIds: GPUBuffer
  /** Logits of the last position of the last pass: (vocab) f32. */
  readonly logits: GPUBuffer

  private readonly device: GPUDevice
  private readonly invFreq: Float32Array
  private readonly act: ReturnType<typeof allocateActivations>
  private readonly u: ReturnType<typeof createUniforms>
  /** The pipelines of the model's kernels, and its GEMV tunings (a decode batch runs the same). */
  readonly keys: ReturnType<typeof pipelineKeys>
  readonly gemv: GemvTunings
  private readonly program: Program
  private readonly ropeHost: Float32Array // (chunk, D/2) vec2 cos, sin: host copy of act.rope
  private readonly steps: PassEncoder
  private readonly alone: OneRow
  private sampling: SamplingCandidates | undefined
  private ownsWeights = true

  private constructor(
    readonly gpu: Gpu,
    readonly weights: ModelWeights,
    readonly pipelines: Pipelines,
    config: ModelConfig,
    private built: BuildOptions,
  ) {
    const o = built
    const device = gpu.device
    this.device = device
    this.config = config
    this.maxContext = o.maxContext
    this.prefillChunk = o.prefillChunk
    this.invFreq = ropeInvFreq(config)
    this.gemv = o.gemv
    this.keys = modelKeys(gpu, config, o.gemv)
    const kind = kvKindOf(o.kv, config, o, this.keys.attnPrefill)
    this.act = allocateActivations(device, config, o.prefillChunk, kind.partials)
    this.u = createUniforms(device, config, o.gemv, o.blockTokens)
    this.kv = kind.create({
      device, pipelines, config,
      blockTokens: o.blockTokens,
      maxContext: o.maxContext,
      prefillChunk: o.prefillChunk,
      act: this.act,
      combine: this.u.combine,
      keys: this.keys,
      blockStore: o.kvBlocks, weights: weights.layers,
      forecast: forecastInputs(this.act, weights.layers, this.keys, o.gemv),
    })
    this.tokenIds = storageBuffer(device, "token ids (slots) u32", ID_SLOTS * 4)
    this.logits = this.act.logits
    this.ropeHost = new Float32Array(o.prefillChunk * config.headDim)
    this.steps = new PassEncoder(device)
    const fuseRope = o.decode.fuseRope && canFuseRope(gpu, o.gemv, weights.layers[0]?.bqkv !== undefined)
    this.program = buildProgram({ device, pipelines, config, weights, act: this.act, u: this.u, keys: this.keys, gemv: o.gemv, pools: this.kv.pools, tokenIds: this.tokenIds, fuseRope })
    this.alone = new OneRow(this.kv, this.program.decode, (step, sample) => this.encodeSample(step, sample), { device, x: this.act.x, hiddenSize: config.hiddenSize })
  }

  static async load(gpu: Gpu, source: WeightSource, options: EngineOptions = {}, progress?: (bytes: number) => void): Promise<GpuModel> {
    const c = source.config
    checkKernelShapes(c, gpu.limits.maxStorageBufferBindingSize)
    const gemv = resolveGemvTunings(c, options.gemv ?? defaultGemvTuning(gpu), subgroupsOf(gpu))
    const pipelines = new Pipelines(gpu)
    const keys = modelKeys(gpu, c, gemv)
    const maxContext = Math.max(1, Math.min(options.maxContext ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings))
    const built: BuildOptions = {
      maxContext,
      prefillChunk: options.prefillChunk ?? 512,
      blockTokens: options.blockTokens ?? 16,
      gemv,
      decode: { fuseRope: options.decode?.fuseRope ?? true },
      kv: options.kv ?? fullKv,
      layerMajor: options.layerMajor ?? process.env.LEOAM_PREFILL !== "token-major",
    }
    const compiling = pipelines.prewarm([...Object.values(keys), ...kvKindOf(built.kv, c, built, keys.attnPrefill).pipelineKeys])
    const fill = source.gpuFill ? await gpuFiller(gpu, pipelines) : undefined
    const weights = uploadWeights(gpu.device, source, progress, fill)
    await compiling
    try {
      return new GpuModel(gpu, weights, pipelines, c, built)
    } catch (e) {
      // A refused KV budget (or any other construction error) must not keep the weights.
      destroyWeights(weights)
      throw e
    }
  }

  /** Tokens currently in the sequence's KV cache. */
  get length(): number {
    return this.kv.length
  }

  static readonly idSlots = ID_SLOTS

  /** Tokens per KV block (a KV layout's unit). */
  get blockTokens(): number {
    return this.built.blockTokens
  }

  // --- prefill -------------------------------------------------------------------

  /**
   * Runs the prompt through the model, appending its KV. Afterwards `logits` holds the
   * last position's logits. With `allLogits`, returns the logits of every position
   * (tests only: one readback per chunk). `open` (benchmarks) starts each pass's command
   * stream instead of the engine's, e.g. with a timed pass per dispatch.
   */
  async prefill(ids: ReadonlyArray<number>, allLogits = false, onProgress?: (done: number, total: number) => void, open: () => StepEncoder = () => this.steps.open()): Promise<Float32Array | undefined> {
    const c = this.config
    if (ids.length === 0) throw new RangeError("prefill of zero tokens")
    if (this.length + ids.length > this.maxContext) {
      throw new ContextOverflow(`${this.length + ids.length} tokens exceed the context of ${this.maxContext}`)
    }
    const all = allLogits ? new Float32Array(ids.length * c.vocabSize) : undefined
    if (!allLogits && this.built.layerMajor && ids.length * c.hiddenSize * 4 <= this.device.limits.maxBufferSize) {
      await this.kv.settle()
      const run = this.kv.layerPrefill?.(ids.length)
      if (run) {
        const driver = { device: this.device, config: c, program: this.program.prefill, act: this.act, embed: this.u.embedPrefill, setPassRows: (m: number) => this.setPassRows(m), writeRope: (at: number, m: number, to: GPUBuffer) => this.writeRope(at, m, to) }
        await prefillByLayer(driver, this.length - ids.length, ids, run, onProgress, open)
        await this.kv.settle()
        return undefined
      }
    }
    for (let start = 0, m = 0; start < ids.length; start += m) {
      await this.kv.settle()
      m = Math.min(this.kv.prefillRoom(), this.prefillChunk, ids.length - start)
      await this.prefillPass(ids.slice(start, start + m), open())
      if (all) all.set(await rowLogits(this.device, this.program.prefill.headLast, this.act, c, m), start * c.vocabSize)
      if (onProgress) {
        await this.device.queue.onSubmittedWorkDone()
        onProgress(start + m, ids.length)
      }
    }
    await this.kv.settle()
    return all
  }

  /** One pass of m tokens: every layer's pre, attention through the manager, post; then the last row's head. */
  private async prefillPass(ids: ReadonlyArray<number>, step: StepEncoder): Promise<void> {
    const c = this.config
    const m = ids.length
    const p = this.program.prefill
    this.device.queue.writeBuffer(this.act.promptIds, 0, Uint32Array.from(ids))
    this.writeRope(this.kv.length, m)
    this.kv.beginPrefill(m)
    const u = this.u
    u.embedPrefill.set(c.hiddenSize, 0, c.vocabSize, m, 0)
    this.setPassRows(m)
    step.encode(p.embed)
    for (let l = 0; l < c.numLayers; l++) {
      step.encode(p.layers[l].pre)
      const attending = this.kv.attendPrefill(l, step)
      if (attending) await attending
      step.encode(p.layers[l].post)
    }
    const rowBytes = c.hiddenSize * 4
    step.record((e) => e.copyBufferToBuffer(this.act.x, (m - 1) * rowBytes, this.act.xlast, 0, rowBytes))
    step.encode(p.headLast)
    step.finish()
    this.kv.afterPrefill()
  }

  /** The row counts of a prefill pass of m tokens in the uniforms and dispatches. */
  private setPassRows(m: number): void {
    const c = this.config
    const p = this.program.prefill
    this.u.ropePrefill.set(m, c.numHeads, c.numKvHeads, c.headDim, this.built.blockTokens)
    this.u.setGemmRows(m)
    for (const r of p.rows) r.y = m
    for (const g of p.gemms) g.y = Math.ceil(m / gemmRowsPerGroup(this.keys.gemm))
  }

  // --- decode --------------------------------------------------------------------

  /**
   * One decode step: the input token is tokenIds[inSlot] (chosen on the GPU by the last
   * step, or written by `writeToken`), its KV is appended, and `logits` receives the next
   * distribution. With `sample`, the next token is chosen on the GPU into tokenIds[outSlot].
   * Returns a promise only when the KV manager waits on the GPU or its tiers; otherwise the
   * whole step is encoded and submitted before it returns. `step` (benchmarks) replaces
   * the engine's command stream, e.g. with one timed pass per dispatch.
   */
  decode(inSlot: number, sample?: SampleParams, copyOut?: CopyOut, step: StepEncoder = this.steps.open()): void | Promise<void> {
    this.prepareStep()
    this.u.embedDecode.set(this.config.hiddenSize, 0, this.config.vocabSize, 1, inSlot % ID_SLOTS)
    this.alone.sample = sample
    this.alone.copyOut = copyOut
    return decodeStep(this.alone, step)
  }

  /** Before a decode step (alone or as a row of a batch): the context's room, the step's RoPE (unless a batch that attends its rows together writes it: `rope` false). */
  prepareStep(rope = true): void {
    if (this.length + 1 > this.maxContext) throw new ContextOverflow(`context of ${this.maxContext} tokens is full`)
    if (rope) this.writeRope(this.kv.length, 1)
  }

  /**
   * This sequence as row `row` of a decode batch (engine/batch.ts), per layer: RoPE and the KV
   * append of the row's q, k, v from the batch's `qkv`, and the combine of its attention
   * partials into the batch's `attn`. The ranges are the row's own (256-byte aligned).
   */
  rowDispatches(qkv: Bound, attn: Bound): ReadonlyArray<{ readonly rope: Dispatch; readonly combine: Dispatch }> {
    const { act: a, u, keys } = this
    const c = this.config
    const P = (key: PipelineKey) => this.pipelines.now(key)
    const ropeGroups = Math.ceil(((c.numHeads + 2 * c.numKvHeads) * c.headDim) / 2 / 64)
    return this.kv.pools.map((kvl) => ({
      rope: dispatchOf(this.device, P(keys.rope), [[0, u.ropeDecode.buffer], [1, qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], ropeGroups, 1),
      combine: dispatchOf(this.device, P(keys.combine), [[0, u.combine.buffer], [1, a.partO], [2, a.partML], [3, attn]], c.numHeads, 1),
    }))
  }

  /** Chooses a token from `logits` on the GPU into tokenIds[outSlot] (after prefill). */
  sample(sample: SampleParams, copyOut?: CopyOut): void {
    const step = this.steps.open()
    this.encodeSample(step, sample)
    step.finish((e) => copyOut && e.copyBufferToBuffer(copyOut.src, copyOut.offset, copyOut.dst, 0, 4))
  }

  /** Encodes the choice of a token from `logits` into tokenIds[outSlot] (a batch's rows after their logits). */
  encodeSample(step: StepEncoder, s: SampleParams): void {
    const gumbel = s.temperature > 0
    this.u.sample.set(this.config.vocabSize, ARGMAX_GROUPS, s.outSlot % ID_SLOTS, s.seed, s.step, gumbel ? 1 / s.temperature : 1)
    step.encode(gumbel ? this.program.sample.gumbel : this.program.sample.argmax)
  }

  /** The logits of the last position (host sampling, tests). */
  readLogits(): Promise<Float32Array> {
    return readF32(this.device, this.logits, 0, this.config.vocabSize)
  }

  /**
   * The `count` largest logits (ids and values, any order) and (max, sum of exp) of
   * logits / temperature over the whole vocabulary: what host top-k / top-p sampling needs.
   */
  topCandidates(count: number, temperature: number): Promise<Candidates> {
    this.sampling ??= new SamplingCandidates(this.device, this.pipelines, this.keys, this.logits, this.config.vocabSize)
    return this.sampling.read(count, temperature)
  }

  /** Writes a host-chosen token into tokenIds[slot]. */
  writeToken(slot: number, id: number): void {
    this.device.queue.writeBuffer(this.tokenIds, (slot % ID_SLOTS) * 4, Uint32Array.of(id))
  }

  /** cos, sin of positions pos0 .. pos0 + m - 1 into `to` (default: act.rope, m at most a pass). */
  private writeRope(pos0: number, m: number, to: GPUBuffer = this.act.rope): void {
    const host = m <= this.prefillChunk ? this.ropeHost : new Float32Array(m * this.config.headDim)
    const bytes = fillRope(host, this.invFreq, pos0, m)
    this.device.queue.writeBuffer(to, 0, host.buffer, 0, bytes)
  }

  // --- the sequence and its KV manager ---------------------------------------------

  /** Drops tokens past `length` from the sequence (those computed after a stop). */
  truncate(length: number): void {
    this.kv.truncate(length)
  }

  /** Forgets the sequence. */
  reset(): void {
    this.kv.reset()
  }

  /** Waits for work a step left in flight (the KV manager's: chunks on their way to host and disk, timings). */
  settle(): Promise<void> {
    return this.kv.settle()
  }

  /**
   * Resumes the sequence the KV manager's tiers hold under its session (chunk tables and
   * abstracts rebuilt from LMDB); returns its length. The next decode step continues it.
   */
  resume(): number {
    if (this.length > 0) throw new RangeError("resume wants a model with an empty sequence")
    return this.kv.resume()
  }

  /** Whether the KV manager keeps persistent sessions (a tiered one). */
  get hasSessions(): boolean {
    return this.kv.openSession !== undefined
  }

  /**
   * Forgets the sequence and resumes the stored session `id` (chunk tables and abstracts from
   * LMDB); returns its sealed length. Prefill and decode then continue it.
   */
  openSession(id: string): number {
    if (!this.kv.openSession) throw new RangeError("sessions need a KV manager with host and disk tiers (leoam or offload-all)")
    return this.kv.openSession(id)
  }

  /** Leaves the stored session, keeping its first `keepTokens` tokens' sealed chunks in the tiers (call after settle); `stay`: stays on it, holding them (KvManager.closeSession). */
  closeSession(keepTokens: number, stay = false): void {
    this.kv.closeSession?.(keepTokens, stay)
  }

  kvStats(): KvStats {
    return this.kv.stats()
  }

  /** The KV tiers' statistics since the last reset (undefined: a manager without host and disk tiers). */
  tierStats(): TierStats | undefined {
    return this.kv.stats().tiers
  }

  /**
   * A live policy change that keeps the KV manager and its layout: the new selection (and
   * eviction) takes effect at the next decode step. Returns false when the change
   * needs a new KV cache (another manager or chunk size: see withKv); throws KvBudgetError
   * when the new sink and recent windows do not fit the GPU cache. `dryRun` only checks.
   */
  swapKvPolicy(kv: KvOptions, dryRun = false): boolean {
    const next = kv.kv ?? fullKv
    if (kvApplies(this.kv, this.built.kv, next) !== "next_step") return false
    if (!dryRun) {
      kvSwap(this.kv, next)
      this.built = { ...this.built, kv: next }
    }
    return true
  }

  /**
   * When a KV setup would take effect if given now: at the next decode step (swapKvPolicy)
   * or at the next request (withKv). Throws KvBudgetError when it does not fit the GPU budget.
   */
  checkKv(kv: KvOptions): KvApplies {
    if (this.swapKvPolicy(kv, true)) return "next_step"
    this.kindOf(kv.kv ?? fullKv).checkFits()
    return "next_request"
  }

  private kindOf(spec: KvSpec): KvKind {
    return kvKindOf(spec, this.config, this.built, this.keys.attnPrefill)
  }

  /**
   * The same weights under another KV setup (a policy change that needs a new KV cache;
   * between requests only): this model's KV, activations and buffers are freed first (GPU
   * memory for two caches at once may not exist), then a model sharing its weights and
   * pipelines is built. If that fails, this model's own setup is rebuilt and the error thrown.
   */
  async withKv(kv: KvOptions): Promise<GpuModel> {
    const spec = kv.kv ?? fullKv
    await this.pipelines.prewarm(this.kindOf(spec).pipelineKeys)
    this.kv.reset()
    this.destroyKv()
    const build = (k: KvSpec) => {
      const model = new GpuModel(this.gpu, this.weights, this.pipelines, this.config, { ...this.built, kv: k })
      model.ownsWeights = this.ownsWeights // a sibling's successor leaves the weights to their owner too
      return model
    }
    try {
      return build(spec)
    } catch (e) {
      throw new KvRebuildError(e as Error, build(this.built.kv))
    }
  }

  /**
   * Another model on this one's weights and pipelines, with its own (empty) KV, activations,
   * context and GEMV / decode / KV setup: benchmarks compare setups side by side on one copy of the
   * weights. Its `destroy` leaves the weights to this model.
   */
  async sibling(options: Pick<EngineOptions, "gemv" | "decode" | "kv" | "maxContext" | "layerMajor" | "kvBlocks">): Promise<GpuModel> {
    const gemv = options.gemv ? resolveGemvTunings(this.config, options.gemv, subgroupsOf(this.gpu)) : this.built.gemv
    const maxContext = Math.max(1, Math.min(options.maxContext ?? this.maxContext, this.config.maxPositionEmbeddings))
    const built = { ...this.built, gemv, maxContext, decode: { ...this.built.decode, ...options.decode }, kv: options.kv ?? this.built.kv, layerMajor: options.layerMajor ?? this.built.layerMajor, kvBlocks: options.kvBlocks }
    const keys = modelKeys(this.gpu, this.config, gemv)
    await this.pipelines.prewarm([...Object.values(keys), ...kvKindOf(built.kv, this.config, built, keys.attnPrefill).pipelineKeys])
    const model = new GpuModel(this.gpu, this.weights, this.pipelines, this.config, built)
    model.ownsWeights = false
    return model
  }

  /** Frees everything but the weights. */
  private destroyKv(): void {
    this.kv.destroy()
    for (const b of Object.values(this.act)) b.destroy()
    this.sampling?.destroy()
    this.alone.destroy()
    this.tokenIds.destroy()
  }

  destroy(): void {
    if (this.ownsWeights) destroyWeights(this.weights)
    this.destroyKv()
  }
}
