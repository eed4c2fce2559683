// The GPU forward pass of a Llama-family model: weights, activations, the paged KV pool
// of one sequence, and two prepared programs (prefill of a chunk of tokens, decode of one
// token) whose bind groups are built once and replayed. A step writes its few changing
// uniforms, encodes the program and submits; nothing is read back unless asked for.
// Only `prefill`, `decode` and `reset` change the sequence state.
import type { ModelConfig, WeightSource } from "../models/types.ts"
import { ropeInvFreq } from "./cpu-reference.ts"
import { dispatchOf, type Dispatch, encodeAll, readF32, storageBuffer, Uniform } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import { type PipelineKey, Pipelines } from "./pipelines.ts"
import { defaultGemvTuning, type GemvOp, type GemvTuningOption, type GemvTunings, gemvRowsPerGroup, resolveGemvTunings } from "./gemv-tuning.ts"
import { allocateActivations, ARGMAX_GROUPS, createUniforms, pipelineKeys, windowedPrefillKey } from "./model-resources.ts"
import { type Candidates, SamplingCandidates } from "./candidates.ts"
import { checkKernelShapes, destroyWeights, type GpuFill, type ModelWeights, uploadWeights } from "./weights.ts"
import { ATTN_TILE, KvPool } from "./kv-pool.ts"
import { SparseAttention, type SparsePolicy, sparsePipelineKeys } from "./sparse.ts"
import { H2oAttention, h2oPipelineKeys } from "./h2o.ts"
import { KvLayoutChange, TIER_PARTIALS, TieredKv, tieredLayout, type TieredPolicy, type TierStores, tieredPipelineKeys } from "./tiered.ts"
import { TieredSteps } from "./tiered-steps.ts"

export interface EngineOptions {
  /** Most tokens the sequence may hold (prompt + generated); default: the model's max positions. */
  readonly maxContext?: number
  /** Tokens per prefill pass; longer prompts are prefilled in chunks. */
  readonly prefillChunk?: number
  /** Tokens per KV block (page). */
  readonly blockTokens?: number
  /** Sparse decode attention (Quest-style top-k blocks per KV head); absent: full attention. */
  readonly sparse?: SparsePolicy
  /** GEMV tuning (threads and rows per workgroup), one for all or one per matrix. */
  readonly gemv?: GemvTuningOption
  /** H2O: all KV on the GPU, attention over recent and heavy-hitter blocks within a budget. */
  readonly h2o?: SparsePolicy
  /** The tiered KV cache (GPU budget, host arena, disk); absent: all KV on the GPU. */
  readonly tiered?: { readonly policy: TieredPolicy; readonly stores: TierStores }
  /** Decode fusions, on by default where the device allows them (off: side-by-side benchmarks). */
  readonly decode?: DecodeOptions
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
type BuildOptions = Required<Omit<EngineOptions, "gemv" | "sparse" | "tiered" | "h2o" | "decode">> & {
  readonly gemv: GemvTunings
  readonly decode: Required<DecodeOptions>
  readonly sparse: SparsePolicy | undefined
  readonly h2o: SparsePolicy | undefined
  readonly tiered: EngineOptions["tiered"]
}

/** The KV part of the engine options: which manager, and its policy. */
export type KvOptions = Pick<EngineOptions, "sparse" | "tiered" | "h2o">

/** Pipelines a KV setup needs besides the model's own. */
const kvPipelineKeys = (c: ModelConfig, kv: KvOptions, attnPrefill: PipelineKey): PipelineKey[] => [
  ...(kv.sparse ? Object.values(sparsePipelineKeys(c)) : []),
  ...(kv.h2o ? Object.values(h2oPipelineKeys(c)) : []),
  ...(kv.tiered ? [...Object.values(tieredPipelineKeys(c)), windowedPrefillKey(attnPrefill)] : []),
]

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
  readonly kv: KvPool
  /** Token ids chosen on the GPU: (ID_SLOTS) u32 ring; decode step reads its input here. */
  readonly tokenIds: GPUBuffer
  /** Logits of the last position of the last pass: (vocab) f32. */
  readonly logits: GPUBuffer

  private readonly device: GPUDevice
  private readonly invFreq: Float32Array
  private readonly act: ReturnType<typeof allocateActivations>
  private readonly u: ReturnType<typeof createUniforms>
  private readonly prefillProgram: Dispatch[]
  private readonly decodeProgram: Dispatch[]
  private readonly sparseDecodeProgram: Dispatch[]
  private readonly h2oDecodeProgram: Dispatch[]
  /** H2O attention, when the options ask for it. */
  readonly h2o: H2oAttention | undefined
  /** Sparse decode attention, when the options ask for it. */
  readonly sparse: SparseAttention | undefined
  private readonly samplePrograms: { readonly argmax: Dispatch[]; readonly gumbel: Dispatch[] }
  private readonly attnDecode: Dispatch[]
  /** Whether the decode QKV GEMV applies RoPE and appends k, v itself (DecodeOptions.fuseRope). */
  private readonly fusesRope: boolean
  private readonly attnPrefill: Dispatch[]
  private readonly gemms: Array<{ d: Dispatch; n: number }>
  private readonly rowDispatches: Dispatch[]
  private readonly ropeHost: Float32Array
  private readonly slotHost: Uint32Array

  private constructor(
    readonly gpu: Gpu,
    readonly weights: ModelWeights,
    readonly pipelines: Pipelines,
    config: ModelConfig,
    private readonly built: BuildOptions,
  ) {
    const options = built
    const device = gpu.device
    this.device = device
    this.config = config
    this.maxContext = options.maxContext
    this.prefillChunk = options.prefillChunk
    this.invFreq = ropeInvFreq(config)
    const fullSplits = Math.ceil(Math.ceil(options.maxContext / options.blockTokens) / (ATTN_TILE / options.blockTokens))
    this.act = allocateActivations(device, config, options.prefillChunk, options.tiered ? Math.max(fullSplits, TIER_PARTIALS) : fullSplits)
    this.tiered = options.tiered
      ? new TieredKv(device, pipelines, config, options.tiered.policy, options.tiered.stores, {
          blockTokens: options.blockTokens,
          maxContext: options.maxContext,
          prefillChunk: options.prefillChunk,
          q: this.act.q,
        })
      : undefined
    this.kv = new KvPool(device, config, options.blockTokens, options.maxContext, this.tiered?.pools)
    this.tokenIds = storageBuffer(device, "token ids (slots) u32", ID_SLOTS * 4)
    this.logits = this.act.logits
    this.u = createUniforms(device, config, options.gemv, this.kv.blockTokens)
    this.ropeHost = new Float32Array(options.prefillChunk * config.headDim)
    this.slotHost = new Uint32Array(options.prefillChunk)

    const keys = pipelineKeys(config, options.gemv, prefillWithSubgroups(gpu))
    this.keys = keys
    this.fusesRope = options.decode.fuseRope && canFuseRope(gpu, options.gemv, weights.layers[0]?.bqkv !== undefined)
    const P = (key: PipelineKey) => pipelines.now(key)
    this.sparse = options.sparse ? new SparseAttention(device, pipelines, config, this.kv, this.act, keys.attnDecode, options.sparse) : undefined
    this.h2o = options.h2o ? new H2oAttention(device, pipelines, config, this.kv, this.act, keys.attnDecode, options.h2o) : undefined
    const h2o = this.h2o
    const sparse = this.sparse
    const a = this.act
    const u = this.u
    const c = config
    const H = c.numHeads
    const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim
    const gx = (op: GemvOp, n: number) => Math.min(Math.ceil(n / gemvRowsPerGroup(options.gemv[op])), 65535)
    const gy = (op: GemvOp, n: number) => Math.ceil(Math.ceil(n / gemvRowsPerGroup(options.gemv[op])) / 65535)
    const d = (pipeline: GPUComputePipeline, entries: Array<readonly [number, GPUBuffer]>, x: number, y = 1, z = 1): Dispatch =>
      dispatchOf(device, pipeline, entries, x, y, z)

    // ---- decode: one token, GEMVs with fused RMSNorm / residual / SwiGLU
    const dec: Dispatch[] = []
    const decodeLayers: Array<{ pre: Dispatch[]; combine: Dispatch; post: Dispatch[] }> = []
    const attnDecode: Dispatch[] = []
    const attnCombine: Dispatch[] = []
    dec.push(d(P(keys.embed), [[0, u.embedDecode.buffer], [1, weights.embed], [2, this.tokenIds], [3, a.x]], Math.ceil(c.hiddenSize / 2 / 256), 1))
    weights.layers.forEach((w, l) => {
      const kvl = this.kv.layers[l]
      const bias = w.bqkv ? [[5, w.bqkv] as const] : []
      const layerPre = this.fusesRope
        ? [d(P(w.bqkv ? keys.gemvQkvRopeBias : keys.gemvQkvRope), [[0, u.gemvQkv.buffer], [1, w.wqkv], [2, a.x], [3, a.q], [4, w.attnNorm], ...bias, [6, a.rope], [7, a.slot], [8, kvl.k], [9, kvl.v]], gx("qkv", qkvRows), gy("qkv", qkvRows))]
        : [
            d(P(w.bqkv ? keys.gemvQkvBias : keys.gemvQkv), [[0, u.gemvQkv.buffer], [1, w.wqkv], [2, a.x], [3, a.qkv], [4, w.attnNorm], ...bias], gx("qkv", qkvRows), gy("qkv", qkvRows)),
            d(P(keys.rope), [[0, u.ropeDecode.buffer], [1, a.qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], Math.ceil(((c.numHeads + 2 * c.numKvHeads) * c.headDim) / 2 / 64), 1),
          ]
      dec.push(...layerPre)
      if (sparse) dec.push(sparse.abstractOf(l))
      const ad = d(P(keys.attnDecode), [[0, u.attnDecode.buffer], [1, a.q], [2, kvl.k], [3, kvl.v], [4, this.kv.entries], [5, this.kv.seqs], [6, a.partO], [7, a.partML]], 1, c.numKvHeads, 1)
      const ac = d(P(keys.combine), [[0, u.combine.buffer], [1, a.partO], [2, a.partML], [3, a.attn]], H, 1)
      attnDecode.push(ad)
      attnCombine.push(ac)
      const post = [
        d(P(w.bo ? keys.gemvOBias : keys.gemvO), [[0, u.gemvO.buffer], [1, w.wo], [2, a.attn], [3, a.x], ...(w.bo ? [[5, w.bo] as const] : [])], gx("o", c.hiddenSize), gy("o", c.hiddenSize)),
        d(P(keys.gemvGu), [[0, u.gemvGu.buffer], [1, w.wgu], [2, a.x], [3, a.ffn], [4, w.mlpNorm]], gx("gu", 2 * c.intermediateSize), gy("gu", 2 * c.intermediateSize)),
        d(P(keys.gemvDown), [[0, u.gemvDown.buffer], [1, w.wdown], [2, a.ffn], [3, a.x]], gx("down", c.hiddenSize), gy("down", c.hiddenSize)),
      ]
      decodeLayers.push({ pre: layerPre, combine: ac, post })
      dec.push(ad, ac, ...post)
    })
    dec.push(d(P(keys.gemvHead), [[0, u.gemvHead.buffer], [1, weights.lmHead], [2, a.x], [3, a.logits], [4, weights.finalNorm]], gx("head", c.vocabSize), gy("head", c.vocabSize)))
    this.decodeProgram = dec
    const decodeParts = { embed: dec[0], layers: decodeLayers, head: dec[dec.length - 1] }
    this.attnDecode = attnDecode
    // The sparse program is the same but for attention: score, select, attend per layer.
    this.sparseDecodeProgram = sparse ? dec.flatMap((x) => (attnDecode.includes(x) ? sparse.attentionOf(attnDecode.indexOf(x)) : [x])) : []
    // H2O runs on every step: block masses accumulate below the budget too.
    this.h2oDecodeProgram = h2o ? dec.flatMap((x) => (attnDecode.includes(x) ? h2o.attentionOf(attnDecode.indexOf(x)) : [x])) : []

    // ---- prefill: a chunk of M tokens, GEMMs
    const pre: Dispatch[] = []
    const gemms: Array<{ d: Dispatch; n: number }> = []
    const rowDispatches: Dispatch[] = []
    const attnPrefill: Dispatch[] = []
    const prefillLayers: Array<{ pre: Dispatch[]; post: Dispatch[] }> = []
    const gemm = (key: PipelineKey, uniform: Uniform, wbuf: GPUBuffer, xbuf: GPUBuffer, ybuf: GPUBuffer, n: number, bias?: GPUBuffer) => {
      const g = d(P(key), [[0, uniform.buffer], [1, xbuf], [2, wbuf], [3, ybuf], ...(bias ? [[5, bias] as const] : [])], Math.ceil(n / 64), 1)
      gemms.push({ d: g, n })
      return g
    }
    const embedPre = d(P(keys.embed), [[0, u.embedPrefill.buffer], [1, weights.embed], [2, a.promptIds], [3, a.x]], Math.ceil(c.hiddenSize / 2 / 256), 1)
    rowDispatches.push(embedPre)
    pre.push(embedPre)
    weights.layers.forEach((w, l) => {
      const kvl = this.kv.layers[l]
      const norm1 = d(P(keys.rmsnorm), [[0, u.rmsnorm.buffer], [1, a.x], [2, w.attnNorm], [3, a.xn]], 1)
      const rope = d(P(keys.rope), [[0, u.ropePrefill.buffer], [1, a.qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], Math.ceil(((c.numHeads + 2 * c.numKvHeads) * c.headDim) / 2 / 64), 1)
      const attn = d(P(keys.attnPrefill), [[0, u.attnPrefill.buffer], [1, a.q], [2, kvl.k], [3, kvl.v], [4, this.kv.table], [5, a.attn]], 1, c.numKvHeads)
      const norm2 = d(P(keys.rmsnorm), [[0, u.rmsnorm.buffer], [1, a.x], [2, w.mlpNorm], [3, a.xn]], 1)
      rowDispatches.push(norm1, norm2, rope)
      attnPrefill.push(attn)
      const layerPre = [norm1, gemm(w.bqkv ? keys.gemmBias : keys.gemm, u.gemmQkv, w.wqkv, a.xn, a.qkv, qkvRows, w.bqkv), rope]
      const layerPost = [
        gemm(w.bo ? keys.gemmAccBias : keys.gemmAcc, u.gemmO, w.wo, a.attn, a.x, c.hiddenSize, w.bo),
        norm2,
        gemm(keys.gemmSwiglu, u.gemmGu, w.wgu, a.xn, a.ffn, 2 * c.intermediateSize),
        gemm(keys.gemmAcc, u.gemmDown, w.wdown, a.ffn, a.x, c.hiddenSize),
      ]
      prefillLayers.push({ pre: layerPre, post: layerPost })
      pre.push(...layerPre, ...(sparse ? [sparse.abstractOf(l)] : []), attn, ...layerPost)
    })
    this.prefillProgram = pre
    this.gemms = gemms
    this.rowDispatches = rowDispatches
    this.attnPrefill = attnPrefill
    // After prefill: the last row's logits through the decode head (copied row -> xlast).
    this.headLast = d(P(keys.gemvHead), [[0, u.gemvHead.buffer], [1, weights.lmHead], [2, a.xlast], [3, a.logits], [4, weights.finalNorm]], gx("head", c.vocabSize), gy("head", c.vocabSize))

    const argmax = (gumbel: boolean) => [
      d(P(gumbel ? keys.gumbel : keys.argmax), [[0, u.sample.buffer], [1, a.logits], [2, a.samplePart]], ARGMAX_GROUPS),
      d(P(keys.argmaxFinal), [[0, u.sample.buffer], [2, a.samplePart], [3, this.tokenIds]], 1),
    ]
    this.samplePrograms = { argmax: argmax(false), gumbel: argmax(true) }
    this.tieredSteps = this.tiered
      ? new TieredSteps(device, pipelines, config, this.tiered, this.kv, a, u, keys, {
          decode: decodeParts,
          prefill: { embed: embedPre, layers: prefillLayers, headLast: this.headLast },
          rowDispatches,
          gemms,
        }, options.prefillChunk)
      : undefined
  }

  /** The tiered KV cache, when the options ask for one. */
  readonly tiered: TieredKv | undefined
  private readonly tieredSteps: TieredSteps | undefined

  /** Waits for work a step left in flight (tiered cache: sealed chunks reaching host and disk, timings). */
  async settle(): Promise<void> {
    await this.tieredSteps?.settle()
  }

  /**
   * Tiered cache only: resumes the sequence the disk store holds under the cache's session
   * (chunk tables and abstracts rebuilt from LMDB); returns its length. The next decode
   * step continues it.
   */
  resume(): number {
    if (!this.tiered) throw new RangeError("resume needs the tiered KV cache")
    if (this.length > 0) throw new RangeError("resume wants a model with an empty sequence")
    return this.tiered.adopt()
  }

  /** KV statistics of the tiered cache since the last reset (undefined without tiers). */
  tierStats() {
    return this.tieredSteps?.stats()
  }

  private readonly headLast: Dispatch
  private readonly keys: ReturnType<typeof pipelineKeys>

  /**
   * Benchmarks only (time breakdowns): decode skips the dispatches whose kernel name
   * (e.g. "attn_decode_D128_G4") this rejects. The results are then meaningless.
   */
  decodeFilter: ((kernel: string) => boolean) | undefined

  /**
   * Benchmarks only (per-kernel GPU times): encodes the decode program (full attention, no
   * tiers) into the step's command encoder itself, e.g. one timed pass per dispatch.
   */
  decodeEncoder: ((encoder: GPUCommandEncoder, program: ReadonlyArray<Dispatch>) => void) | undefined

  static async load(gpu: Gpu, source: WeightSource, options: EngineOptions = {}, progress?: (bytes: number) => void): Promise<GpuModel> {
    const c = source.config
    checkKernelShapes(c, gpu.limits.maxStorageBufferBindingSize)
    const gemv = resolveGemvTunings(c, options.gemv ?? defaultGemvTuning(gpu), subgroupsOf(gpu))
    const pipelines = new Pipelines(gpu)
    const keys = pipelineKeys(c, gemv, prefillWithSubgroups(gpu))
    if ([options.sparse, options.tiered, options.h2o].filter((x) => x !== undefined).length > 1) {
      throw new RangeError("quest (sparse), h2o and the tiered cache are exclusive")
    }
    const compiling = pipelines.prewarm([...Object.values(keys), ...kvPipelineKeys(c, options, keys.attnPrefill)])
    const fill = source.gpuFill ? await gpuFiller(gpu, pipelines) : undefined
    const weights = uploadWeights(gpu.device, source, progress, fill)
    await compiling
    const maxContext = Math.max(1, Math.min(options.maxContext ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings))
    try {
      return new GpuModel(gpu, weights, pipelines, c, {
        maxContext,
        prefillChunk: options.prefillChunk ?? 512,
        blockTokens: options.blockTokens ?? 16,
        gemv,
        decode: { fuseRope: options.decode?.fuseRope ?? true },
        sparse: options.sparse,
        tiered: options.tiered,
        h2o: options.h2o,
      })
    } catch (e) {
      // A refused KV budget (or any other construction error) must not keep the weights.
      destroyWeights(weights)
      throw e
    }
  }

  /** Tokens currently in the sequence's KV cache. */
  get length(): number {
    return this.tiered ? this.tiered.length : this.kv.length
  }

  /** Decode steps that ran sparse attention (the context was past the budget). */
  sparseSteps = 0
  /** With a sparse policy: false forces full attention (for side-by-side measurements). */
  sparseEnabled = true

  /** Forgets the sequence (its blocks go back to the pool). */
  reset(): void {
    this.tiered?.reset()
    this.tieredSteps?.resetStats()
    this.kv.reset()
    this.sparse?.invalidate()
    this.h2o?.invalidate()
  }

  private writeRope(pos0: number, m: number): void {
    const half = this.config.headDim / 2
    const r = this.ropeHost
    for (let t = 0; t < m; t++) {
      for (let i = 0; i < half; i++) {
        const angle = Math.fround((pos0 + t) * this.invFreq[i])
        r[(t * half + i) * 2] = Math.cos(angle)
        r[(t * half + i) * 2 + 1] = Math.sin(angle)
      }
    }
    this.device.queue.writeBuffer(this.act.rope, 0, r.buffer, 0, m * half * 8)
  }

  /** Reserves slots for m tokens; blocks they fill get their abstracts in the same pass. */
  private appendSlots(m: number): void {
    let filled: number[] | undefined
    for (let t = 0; t < m; t++) {
      this.slotHost[t] = this.kv.append()
      if (this.sparse && this.kv.length % this.kv.blockTokens === 0) (filled ??= []).push(this.kv.blockList[this.kv.blockList.length - 1])
    }
    this.device.queue.writeBuffer(this.act.slot, 0, this.slotHost.buffer, 0, m * 4)
    this.sparse?.queueAbstracts(filled ?? noBlocks)
  }

  /**
   * Runs the prompt through the model, appending its KV. Afterwards `logits` holds the
   * last position's logits. With `allLogits`, returns the logits of every position
   * (tests only: one readback per chunk).
   */
  async prefill(
    ids: ReadonlyArray<number>,
    allLogits = false,
    onProgress?: (done: number, total: number) => void,
  ): Promise<Float32Array | undefined> {
    const c = this.config
    if (ids.length === 0) throw new RangeError("prefill of zero tokens")
    if (this.length + ids.length > this.maxContext) {
      throw new ContextOverflow(`${this.length + ids.length} tokens exceed the context of ${this.maxContext}`)
    }
    if (this.tieredSteps) {
      if (allLogits) throw new RangeError("all-position logits are not kept with the tiered cache")
      await this.tieredSteps.settle()
      await this.tieredSteps.prefill(ids, (pos0, m) => this.writeRope(pos0, m), onProgress)
      return undefined
    }
    const all = allLogits ? new Float32Array(ids.length * c.vocabSize) : undefined
    for (let start = 0; start < ids.length; start += this.prefillChunk) {
      const m = Math.min(this.prefillChunk, ids.length - start)
      const pos0 = this.kv.length
      this.device.queue.writeBuffer(this.act.promptIds, 0, Uint32Array.from(ids.slice(start, start + m)))
      this.writeRope(pos0, m)
      this.appendSlots(m)
      this.kv.syncTable()
      const u = this.u
      u.embedPrefill.set(c.hiddenSize, 0, c.vocabSize, m, 0)
      u.ropePrefill.set(m, c.numHeads, c.numKvHeads, c.headDim, this.kv.blockTokens)
      u.attnPrefill.set(m, c.numHeads, c.numKvHeads, this.kv.blockTokens, pos0, 1 / Math.sqrt(c.headDim))
      u.setGemmRows(m)
      for (const r of this.rowDispatches) r.y = m
      const rowsPerTile = 32
      for (const a of this.attnPrefill) a.x = Math.ceil((m * (c.numHeads / c.numKvHeads)) / rowsPerTile)
      for (const g of this.gemms) g.d.y = Math.ceil(m / 64)
      const encoder = this.device.createCommandEncoder()
      const pass = encoder.beginComputePass()
      encodeAll(pass, this.prefillProgram)
      pass.end()
      const rowBytes = c.hiddenSize * 4
      encoder.copyBufferToBuffer(this.act.x, (m - 1) * rowBytes, this.act.xlast, 0, rowBytes)
      const head = encoder.beginComputePass()
      encodeAll(head, [this.headLast])
      head.end()
      this.device.queue.submit([encoder.finish()])
      if (all) all.set(await this.allPositionLogits(m), start * c.vocabSize)
      if (onProgress) {
        await this.device.queue.onSubmittedWorkDone()
        onProgress(start + m, ids.length)
      }
    }
    return all
  }

  // Logits of every row of the last chunk, one GEMV per row through the decode head.
  private async allPositionLogits(m: number): Promise<Float32Array> {
    const c = this.config
    const out = new Float32Array(m * c.vocabSize)
    const rowBytes = c.hiddenSize * 4
    for (let t = 0; t < m; t++) {
      const encoder = this.device.createCommandEncoder()
      encoder.copyBufferToBuffer(this.act.x, t * rowBytes, this.act.xlast, 0, rowBytes)
      const pass = encoder.beginComputePass()
      encodeAll(pass, [this.headLast])
      pass.end()
      this.device.queue.submit([encoder.finish()])
      out.set(await readF32(this.device, this.act.logits, 0, c.vocabSize), t * c.vocabSize)
    }
    return out
  }

  /**
   * One decode step: the input token is tokenIds[inSlot] (chosen on the GPU by the last
   * step, or written by `writeToken`), its KV is appended, and `logits` receives the next
   * distribution. With `sample`, the next token is chosen on the GPU into tokenIds[outSlot].
   */
  decode(inSlot: number, sample?: SampleParams, copyOut?: CopyOut): void | Promise<void> {
    const c = this.config
    if (this.length + 1 > this.maxContext) throw new ContextOverflow(`context of ${this.maxContext} tokens is full`)
    if (this.tieredSteps) {
      this.writeRope(this.length, 1)
      return this.tieredSteps.decode(inSlot % ID_SLOTS, (pass) => sample && this.encodeSample(pass, sample), copyOut)
    }
    const pos = this.kv.length
    this.writeRope(pos, 1)
    this.appendSlots(1)
    const u = this.u
    u.embedDecode.set(c.hiddenSize, 0, c.vocabSize, 1, inSlot % ID_SLOTS)
    const sparse = this.sparseEnabled && this.sparse?.pays() === true
    let program = this.decodeProgram
    if (this.h2o) {
      program = this.h2oDecodeProgram
      u.combine.set(c.numHeads, this.h2o.prepareStep(), c.headDim)
    } else if (sparse) {
      program = this.sparseDecodeProgram
      u.combine.set(c.numHeads, this.sparse!.prepareStep(), c.headDim)
    } else {
      const { splits, entriesPerSplit } = this.kv.syncDecodeList()
      u.attnDecode.set(c.numHeads, c.numKvHeads, this.kv.blockTokens, entriesPerSplit, splits, 1 / Math.sqrt(c.headDim), 0)
      u.combine.set(c.numHeads, splits, c.headDim)
      for (const a of this.attnDecode) a.x = splits
    }
    this.sparseSteps += sparse ? 1 : 0
    const encoder = this.device.createCommandEncoder()
    const steps = this.decodeFilter ? program.filter((d) => this.decodeFilter!(d.pipeline.label)) : program
    this.decodeEncoder?.(encoder, steps)
    const pass = encoder.beginComputePass()
    if (!this.decodeEncoder) encodeAll(pass, steps)
    if (sample) this.encodeSample(pass, sample)
    pass.end()
    if (copyOut) encoder.copyBufferToBuffer(copyOut.src, copyOut.offset, copyOut.dst, 0, 4)
    this.device.queue.submit([encoder.finish()])
  }

  /** Chooses a token from `logits` on the GPU into tokenIds[outSlot] (after prefill). */
  sample(sample: SampleParams, copyOut?: CopyOut): void {
    const encoder = this.device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    this.encodeSample(pass, sample)
    pass.end()
    if (copyOut) encoder.copyBufferToBuffer(copyOut.src, copyOut.offset, copyOut.dst, 0, 4)
    this.device.queue.submit([encoder.finish()])
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

  private sampling: SamplingCandidates | undefined

  /** Drops tokens past `length` from the sequence (those computed after a stop). */
  truncate(length: number): void {
    this.tiered?.truncate(length)
    this.kv.truncate(length)
    this.sparse?.invalidate()
    this.h2o?.invalidate()
  }

  private encodeSample(pass: GPUComputePassEncoder, s: SampleParams) {
    const gumbel = s.temperature > 0
    this.u.sample.set(this.config.vocabSize, ARGMAX_GROUPS, s.outSlot % ID_SLOTS, s.seed, s.step, gumbel ? 1 / s.temperature : 1)
    encodeAll(pass, gumbel ? this.samplePrograms.gumbel : this.samplePrograms.argmax)
  }

  /** Writes a host-chosen token into tokenIds[slot]. */
  writeToken(slot: number, id: number): void {
    this.device.queue.writeBuffer(this.tokenIds, (slot % ID_SLOTS) * 4, Uint32Array.of(id))
  }

  static readonly idSlots = ID_SLOTS

  /**
   * A live policy change that keeps the KV manager and its layout: the new selection (and,
   * tiered, eviction) takes effect at the next decode step. Returns false when the change
   * needs a new KV cache (another manager or chunk size: see withKv); throws KvBudgetError
   * when the new sink and recent windows do not fit the GPU cache. `dryRun` only checks.
   */
  swapKvPolicy(kv: KvOptions, dryRun = false): boolean {
    const kinds = (o: KvOptions) => (o.tiered ? "tiered" : o.sparse ? "sparse" : o.h2o ? "h2o" : "full")
    const current = kinds(this.built)
    if (current !== kinds(kv)) return false
    if (kv.tiered && this.tiered) {
      try {
        this.tiered.checkPolicy(kv.tiered.policy)
      } catch (e) {
        if (e instanceof KvLayoutChange) return false
        throw e
      }
      if (!dryRun) this.tiered.setPolicy(kv.tiered.policy)
    } else if (!dryRun && kv.sparse && this.sparse) this.sparse.policy = kv.sparse
    else if (!dryRun && kv.h2o && this.h2o) this.h2o.policy = kv.h2o
    return true
  }

  /**
   * When a KV setup would take effect if given now: at the next decode step (swapKvPolicy)
   * or at the next request (withKv). Throws KvBudgetError when it does not fit the GPU budget.
   */
  checkKv(kv: KvOptions): "next_step" | "next_request" {
    if (this.swapKvPolicy(kv, true)) return "next_step"
    if (kv.tiered) tieredLayout(this.config, kv.tiered.policy, kv.tiered.stores, { blockTokens: this.built.blockTokens, maxContext: this.maxContext, prefillChunk: this.prefillChunk })
    return "next_request"
  }

  /**
   * The same weights under another KV setup (a policy change that needs a new KV cache;
   * between requests only): this model's KV, activations and buffers are freed first (GPU
   * memory for two caches at once may not exist), then a model sharing its weights and
   * pipelines is built. If that fails, this model's own setup is rebuilt and the error thrown.
   */
  async withKv(kv: KvOptions): Promise<GpuModel> {
    await this.pipelines.prewarm(kvPipelineKeys(this.config, kv, this.keys.attnPrefill))
    this.tiered?.reset()
    this.destroyKv()
    const build = (k: KvOptions) => {
      const model = new GpuModel(this.gpu, this.weights, this.pipelines, this.config, { ...this.built, sparse: k.sparse, h2o: k.h2o, tiered: k.tiered })
      model.ownsWeights = this.ownsWeights // a sibling's successor leaves the weights to their owner too
      return model
    }
    try {
      return build(kv)
    } catch (e) {
      throw new KvRebuildError(e as Error, build(this.built))
    }
  }

  /** Frees everything but the weights. */
  private destroyKv(): void {
    this.kv.destroy()
    this.sparse?.destroy()
    this.h2o?.destroy()
    this.tiered?.destroy()
    for (const b of Object.values(this.act)) b.destroy()
    this.sampling?.destroy()
    this.tokenIds.destroy()
  }

  /**
   * Another model on this one's weights and pipelines, with its own (empty) KV, activations
   * and GEMV / decode setup: benchmarks compare setups side by side on one copy of the
   * weights. Its `destroy` leaves the weights to this model.
   */
  async sibling(options: Pick<EngineOptions, "gemv" | "decode">): Promise<GpuModel> {
    const gemv = options.gemv ? resolveGemvTunings(this.config, options.gemv, subgroupsOf(this.gpu)) : this.built.gemv
    const decode = { ...this.built.decode, ...options.decode }
    await this.pipelines.prewarm(Object.values(pipelineKeys(this.config, gemv, prefillWithSubgroups(this.gpu))))
    const model = new GpuModel(this.gpu, this.weights, this.pipelines, this.config, { ...this.built, gemv, decode })
    model.ownsWeights = false
    return model
  }

  private ownsWeights = true

  destroy(): void {
    if (this.ownsWeights) destroyWeights(this.weights)
    this.destroyKv()
  }
}

/** Fills f16 ranges of buffers on the GPU (kernels/fill.wgsl): random halves, or ones. */
export const gpuFiller = async (gpu: Gpu, pipelines: Pipelines): Promise<GpuFill> => {
  const device = gpu.device
  const random = await pipelines.get({ op: "fill" })
  const ones = await pipelines.get({ op: "fill", flags: { ONES: true } })
  const align = device.limits.minStorageBufferOffsetAlignment
  return (buffer, at, count, spec) => {
    const offset = at * 2
    if (offset % align !== 0 || count % 2 !== 0) return false
    const words = count / 2
    const pipeline = spec.kind === "ones" ? ones : random
    const uniform = new Uniform(device, "fill", "uufu")
    const groups = Math.min(Math.ceil(words / 256), 65535)
    uniform.set(words, spec.kind === "random" ? spec.seed : 0, spec.kind === "random" ? spec.amplitude : 0, groups * 256)
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: uniform.buffer } },
        { binding: 1, resource: { buffer, offset, size: words * 4 } },
      ],
    })
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    pass.setPipeline(pipeline)
    pass.setBindGroup(0, bindGroup)
    pass.dispatchWorkgroups(groups)
    pass.end()
    device.queue.submit([encoder.finish()])
    return true
  }
}

/**
 * Whether the decode QKV GEMV can apply RoPE itself: its rows are taken in quads, and it
 * binds 8 storage buffers (9 with a bias).
 */
const canFuseRope = (gpu: Gpu, gemv: GemvTunings, bias: boolean): boolean =>
  gemv.qkv.rows % 4 === 0 && gpu.device.limits.maxStorageBuffersPerShaderStage >= (bias ? 9 : 8)

/** The largest subgroup of the device (undefined: no subgroups), for checking GEMV tunings. */
const subgroupsOf = (gpu: Gpu): number | undefined => (gpu.hasSubgroups ? gpu.subgroupMaxSize : undefined)

/** attn_prefill_sg needs the 8 lanes of a row in one subgroup. */
const noBlocks: ReadonlyArray<number> = []

const prefillWithSubgroups = (gpu: Gpu) => gpu.hasSubgroups && gpu.subgroupMinSize >= 8
