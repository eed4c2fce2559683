// Choosing what a decode step attends: per layer, every sealed chunk is scored from its
// min/max abstracts against the current query, then the sink, the recent and the best
// chunks under the token budget are selected, on the GPU; the choice (a few bytes) is
// read back by the caller. With group abstracts (grouped-select.ts) groups are scored first
// and only the kept groups' chunks, listed with their abstract slots, are scored: listed by
// the host, or for a pipelined step on the GPU (group_expand.wgsl). Owns the
// score and selection buffers and uniforms; the abstracts are the AbstractCache's. Only the
// encode methods write them.
import { maxBitsOf } from "../../../kv/quant-policy.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { PipelineKey, Pipelines } from "../../pipelines.ts"
import { budgetAt } from "../../sparse.ts"
import type { AbstractBuffers, AbstractCache } from "./abstract-cache.ts"
import type { LayerChunks } from "./chunks.ts"
import type { TieredPolicy } from "./layout.ts"

export const tieredPipelineKeys = (c: ModelConfig) => ({
  abstract: { op: "abstract" } as PipelineKey,
  score: { op: "score", flags: { ALL_HEADS: true }, constants: { G: c.numHeads / c.numKvHeads, HALF_D: c.headDim / 2 } } as PipelineKey,
  select: { op: "select" } as PipelineKey,
  route: { op: "route" } as PipelineKey,
  groupExpand: { op: "group_expand" } as PipelineKey,
  abstractFold: { op: "abstract_fold" } as PipelineKey,
  scatter: { op: "scatter" } as PipelineKey,
})

/** The seal's quantizer (compression below 16 bits): shapes as override constants. */
export const quantizeKey = (c: ModelConfig, blockTokens: number): PipelineKey => ({ op: "quantize", constants: { D: c.headDim, GV: Math.min(32, c.headDim), BS: blockTokens } })

/**
 * The decode attention of a tiered cache: the model's, with dequantization fused in (QUANT) where
 * decode's slots are compressed. LEOAM_QUANT_ATTN=fold picks that variant's restructured form
 * (QFOLD: kernels/lib/attn_decode_quant.wgsl, sized by the block's tokens BS); it is not the
 * default until a GPU run shows it correct and faster (bench/attn-decode-quant.ts; it hangs
 * lavapipe for some shapes, so CI cannot run it).
 */
export const tieredDecodeKey = (base: PipelineKey, p: TieredPolicy, blockTokens: number): PipelineKey => {
  if (maxBitsOf(p.compression ?? 16) === 16) return base
  const fold = quantAttnForm(process.env.LEOAM_QUANT_ATTN) === "fold"
  return { ...base, flags: { ...base.flags, QUANT: true, ...(fold ? { QFOLD: true } : {}) }, ...(fold ? { constants: { ...base.constants, BS: blockTokens } } : {}) }
}

/** LEOAM_QUANT_ATTN: "fold" or unset/"first" (the first form); anything else is an error. */
export const quantAttnForm = (value: string | undefined): "first" | "fold" => {
  if (value === undefined || value === "" || value === "first") return "first"
  if (value === "fold") return "fold"
  throw new RangeError(`LEOAM_QUANT_ATTN must be "first" or "fold", not "${value}"`)
}

/** Tokens attended per step by the policy at this length. */
export const budgetTokens = (p: TieredPolicy, length: number, slotTokens: number): number =>
  p.mode === "offload-all" ? Number.POSITIVE_INFINITY : budgetAt(p, length, slotTokens)

/** Layer l's choice at a step: n sealed chunks, the first S (sink) and last R (recent) kept, K more chosen by score. */
export interface ChoicePlan {
  readonly n: number
  readonly S: number
  readonly R: number
  readonly K: number
}

/**
 * Layer l's choice at this length: sink, the chunks starting within the first sink tokens;
 * recent, those ending within the last recent tokens; K more of at most slotTokens each fill the budget.
 */
export const choicePlan = (L: LayerChunks, tokens: number, p: TieredPolicy, slotTokens: number): ChoicePlan => {
  const n = L.starts.length
  const tail = tokens - L.sealed
  let S = 0
  while (S < n && L.starts[S] < p.sinkTokens) S++
  const need = Math.max(0, p.recentTokens - tail)
  let R = 0
  while (R < n - S && L.starts[n - 1 - R] + L.sizes[n - 1 - R] > L.sealed - need) R++
  const kept = (S > 0 ? L.starts[S - 1] + L.sizes[S - 1] : 0) + (R > 0 ? L.sealed - L.starts[n - R] : 0)
  // At least one scored chunk: a budget that sink, recent and tail use up entirely would
  // otherwise attend nothing chosen by the query (it then exceeds the budget by a chunk).
  const K = Math.max(n - S - R > 0 ? 1 : 0, Math.floor((budgetTokens(p, tokens, slotTokens) - tail - kept) / slotTokens))
  return { n, S, R, K }
}

export class Selector {
  private readonly chunkIds: GPUBuffer
  private readonly scores: GPUBuffer
  /** (chunks) vec2<u32> (chunk, tokens) per chosen chunk, best first after sink and recent. */
  readonly selection: GPUBuffer
  /** (1) vec2<u32> (0, chunks chosen): the selection's length, as the select pass wrote it. */
  readonly selectSeqs: GPUBuffer
  private readonly u: { score: Uniform; select: Uniform }
  /** Per layer: score and select over every chunk (abstract slot = chunk). */
  private readonly plain: Array<{ readonly score: Dispatch; readonly select: Dispatch }> = []
  /** Per layer: score and select over a candidate list (abstract slots and chunk ids written per step). */
  private readonly listed: Array<{ readonly score: Dispatch; readonly select: Dispatch }> = []
  /** Per layer, with groups: score and select over a range of group abstracts. */
  private readonly grouped: Array<{ readonly score: Dispatch; readonly select: Dispatch }> = []
  /** (chunks) u32: the candidates' abstract slots and chunk ids. */
  private readonly candSlots: GPUBuffer
  private readonly candIds: GPUBuffer
  /** With groups: (groups) u32 the groups scored; their scores; (groups) vec2<u32> (group, tokens) the groups kept. */
  private readonly groupList: GPUBuffer | undefined
  private readonly groupScores: GPUBuffer | undefined
  readonly groupSelection: GPUBuffer | undefined
  private readonly groupSeqs: GPUBuffer | undefined
  /** With groups, pipelined: the kept groups' candidates listed on the GPU (built at first use). */
  private onGpu: GpuListed | undefined

  constructor(
    private readonly device: GPUDevice,
    private readonly pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly abstracts: Pick<AbstractCache, "fine" | "groups" | "layout">,
    /** (chunk, H, D) f32, the roped queries of the step. */
    private readonly q: GPUBuffer,
    private readonly maxChunks: number,
    private readonly blockTokens: number,
  ) {
    const buffer = (label: string, bytes: number) => storageBuffer(device, label, Math.max(16, bytes))
    this.chunkIds = buffer("chunk ids (chunks) u32", maxChunks * 4)
    device.queue.writeBuffer(this.chunkIds, 0, Uint32Array.from({ length: maxChunks }, (_, i) => i))
    this.scores = buffer("chunk scores (chunks) f32", maxChunks * 4)
    this.selection = buffer("selected chunks (chunks) vec2<u32>", maxChunks * 8)
    this.selectSeqs = buffer("tier select seqs (1) vec2<u32>", 16)
    this.candSlots = buffer("candidate abstract slots (chunks) u32", maxChunks * 4)
    this.candIds = buffer("candidate chunk ids (chunks) u32", maxChunks * 4)
    this.u = { score: new Uniform(device, "tier score", "uuuf"), select: new Uniform(device, "tier select", "uuuuuuuu") }
    const keys = tieredPipelineKeys(config)
    const mk = (key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>, x: number): Dispatch => dispatchOf(device, pipelines.now(key), entries, x)
    const pair = (ab: AbstractBuffers, slots: GPUBuffer, ids: GPUBuffer, scores: GPUBuffer, selection: GPUBuffer, seqs: GPUBuffer) => ({
      score: mk(keys.score, [[0, this.u.score.buffer], [1, q], [2, ab.amin], [3, ab.amax], [4, slots], [5, scores]], 0),
      select: mk(keys.select, [[0, this.u.select.buffer], [1, scores], [2, ids], [3, selection], [4, seqs]], 1),
    })
    const groups = abstracts.layout.groups
    if (abstracts.groups && groups > 0) {
      this.groupList = buffer("groups scored (groups) u32", groups * 4)
      this.groupScores = buffer("group scores (groups) f32", groups * 4)
      this.groupSelection = buffer("groups kept (groups) vec2<u32>", groups * 8)
      this.groupSeqs = buffer("tier group select seqs (1) vec2<u32>", 16)
    }
    abstracts.fine.forEach((ab, l) => {
      // Budgeted slots are not chunks: the plain pass is for abstracts all resident.
      if (abstracts.layout.resident === "all") this.plain.push(pair(ab, this.chunkIds, this.chunkIds, this.scores, this.selection, this.selectSeqs))
      this.listed.push(pair(ab, this.candSlots, this.candIds, this.scores, this.selection, this.selectSeqs))
      if (this.groupList) this.grouped.push(pair(abstracts.groups![l], this.groupList, this.groupList, this.groupScores!, this.groupSelection!, this.groupSeqs!))
    })
  }

  /** Layer l's choice at this length (choicePlan). */
  plan(L: LayerChunks, tokens: number, p: TieredPolicy, slotTokens: number): ChoicePlan {
    return choicePlan(L, tokens, p, slotTokens)
  }

  /**
   * Encodes layer l's scoring and selection of all its sealed chunks against the current
   * query into `selection` (abstracts all resident). Returns how many chunks it chooses.
   */
  encode(l: number, pass: GPUComputePassEncoder, L: LayerChunks, tokens: number, p: TieredPolicy, slotTokens: number): number {
    const { n, S, R, K } = this.plan(L, tokens, p, slotTokens)
    this.dispatch(pass, this.plain[l], n, S, R, K)
    return Math.min(n, S + R + K)
  }

  /** Encodes the scoring of groups [g0, g1) of layer l and the choice of the `keep` best into groupSelection. */
  encodeGroups(l: number, pass: GPUComputePassEncoder, g0: number, g1: number, keep: number): void {
    this.device.queue.writeBuffer(this.groupList!, 0, Uint32Array.from({ length: g1 - g0 }, (_, i) => g0 + i))
    this.dispatch(pass, this.grouped[l], g1 - g0, 0, 0, keep)
  }

  /**
   * Encodes layer l's scoring and selection over candidates: the plan's sink, then `mids`
   * (chunks in [S, n - R), abstracts at `slots`), then its recent chunks. Returns how many it chooses.
   */
  encodeCandidates(l: number, pass: GPUComputePassEncoder, plan: ChoicePlan, mids: ReadonlyArray<number>, slots: Uint32Array): number {
    const { n, S, R, K } = plan
    const count = S + mids.length + R
    const ids = new Uint32Array(count)
    const at = new Uint32Array(count) // sink and recent are kept unscored: their slot is any
    for (let i = 0; i < S; i++) ids[i] = i
    ids.set(mids, S)
    at.set(slots, S)
    for (let i = 0; i < R; i++) ids[S + mids.length + i] = n - R + i
    this.device.queue.writeBuffer(this.candIds, 0, ids)
    this.device.queue.writeBuffer(this.candSlots, 0, at)
    this.dispatch(pass, this.listed[l], count, S, R, K)
    return Math.min(count, S + R + K)
  }

  /**
   * Pipelined, every abstract resident: encodes layer l's groups [g0, g1) scored and the
   * `keep` best kept, their chunks listed between the plan's sink and recent ones
   * (group_expand.wgsl), then scored and selected, all in this pass: the choice the host's
   * encodeCandidates makes from the same groups, with no read-back between. Returns the buffer
   * that receives the count of chunks listed from groups ((1) u32).
   */
  encodeGroupsOnGpu(l: number, pass: GPUComputePassEncoder, plan: ChoicePlan, g: { readonly g0: number; readonly g1: number; readonly keep: number; readonly size: number }): GPUBuffer {
    const d = (this.onGpu ??= this.gpuListed())
    this.encodeGroups(l, pass, g.g0, g.g1, g.keep)
    const c = this.config
    d.uniform.set(plan.n, plan.S, plan.R, plan.K, g.size, g.keep, c.numKvHeads, c.headDim, 1 / Math.sqrt(c.headDim), this.blockTokens, this.maxChunks, 0)
    // At most every chunk of the kept groups: the score pass's workgroups past the listed count return at once.
    const most = plan.S + plan.R + Math.min(g.keep * g.size, Math.max(0, plan.n - plan.S - plan.R))
    pass.setPipeline(d.expand.pipeline)
    pass.setBindGroup(0, d.expand.bindGroup)
    pass.dispatchWorkgroups(1)
    const { score, select } = d.layers[l]
    pass.setPipeline(score.pipeline)
    pass.setBindGroup(0, score.bindGroup)
    pass.dispatchWorkgroups(Math.min(most, 65535), Math.max(1, Math.ceil(most / 65535)))
    pass.setPipeline(select.pipeline)
    pass.setBindGroup(0, select.bindGroup)
    pass.dispatchWorkgroups(1)
    return d.listed
  }

  /** The GPU-listed candidates' buffers and dispatches: their score and select uniforms are written by group_expand.wgsl. */
  private gpuListed(): GpuListed {
    const device = this.device
    const keys = tieredPipelineKeys(this.config)
    const params = (label: string, bytes: number) => device.createBuffer({ label, size: bytes, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE })
    const scoreP = params("listed score params (4) u32", 16)
    const selectP = params("listed select params (8) u32", 32)
    const listed = storageBuffer(this.device, "chunks listed from groups (1) u32", 16)
    const uniform = new Uniform(device, "group expand", "uuuuuuuufuuu")
    const mk = (key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>): Dispatch => dispatchOf(device, this.pipelines.now(key), entries)
    const expand = mk(keys.groupExpand, [[0, uniform.buffer], [1, this.groupSelection!], [2, this.candIds], [3, scoreP], [4, selectP], [5, listed]])
    const layers = this.abstracts.fine.map((ab) => ({
      score: mk(keys.score, [[0, scoreP], [1, this.q], [2, ab.amin], [3, ab.amax], [4, this.candIds], [5, this.scores]]),
      select: mk(keys.select, [[0, selectP], [1, this.scores], [2, this.candIds], [3, this.selection], [4, this.selectSeqs]]),
    }))
    return { uniform, expand, layers, listed, buffers: [scoreP, selectP, listed, uniform.buffer] }
  }

  private dispatch(pass: GPUComputePassEncoder, d: { readonly score: Dispatch; readonly select: Dispatch }, n: number, S: number, R: number, K: number): void {
    const c = this.config
    this.u.score.set(n, c.numKvHeads, c.headDim, 1 / Math.sqrt(c.headDim))
    this.u.select.set(n, 1, S, R, K, this.blockTokens, this.maxChunks, 0)
    pass.setPipeline(d.score.pipeline)
    pass.setBindGroup(0, d.score.bindGroup)
    pass.dispatchWorkgroups(Math.min(n, 65535), Math.max(1, Math.ceil(n / 65535)))
    pass.setPipeline(d.select.pipeline)
    pass.setBindGroup(0, d.select.bindGroup)
    pass.dispatchWorkgroups(1)
  }

  destroy(): void {
    for (const b of this.onGpu?.buffers ?? []) b.destroy()
    for (const b of [this.chunkIds, this.scores, this.selection, this.selectSeqs, this.candSlots, this.candIds, this.groupList, this.groupScores, this.groupSelection, this.groupSeqs]) b?.destroy()
  }
}

interface GpuListed {
  readonly uniform: Uniform
  readonly expand: Dispatch
  readonly layers: ReadonlyArray<{ readonly score: Dispatch; readonly select: Dispatch }>
  readonly listed: GPUBuffer
  readonly buffers: ReadonlyArray<GPUBuffer>
}
