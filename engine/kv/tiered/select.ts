// Choosing what a decode step attends: per layer, every sealed chunk is scored from its
// min/max abstracts against the current query, then the sink, the recent and the best
// chunks under the token budget are selected, on the GPU; the choice (a few bytes) is
// read back by the caller. Owns the score and selection buffers and uniforms; the
// abstracts are the cache's (written by seals and adopt). Only encodeSelect writes them.
import { maxBitsOf } from "../../../kv/quant-policy.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { dispatchOf, type Dispatch, storageBuffer, Uniform } from "../../buffers.ts"
import type { PipelineKey, Pipelines } from "../../pipelines.ts"
import { budgetAt } from "../../sparse.ts"
import type { LayerChunks } from "./chunks.ts"
import type { TieredPolicy } from "./layout.ts"

export const tieredPipelineKeys = (c: ModelConfig) => ({
  abstract: { op: "abstract" } as PipelineKey,
  score: { op: "score", flags: { ALL_HEADS: true }, constants: { G: c.numHeads / c.numKvHeads, HALF_D: c.headDim / 2 } } as PipelineKey,
  select: { op: "select" } as PipelineKey,
  route: { op: "route" } as PipelineKey,
})

/** The seal's quantizer (compression below 16 bits): shapes as override constants. */
export const quantizeKey = (c: ModelConfig, blockTokens: number): PipelineKey => ({ op: "quantize", constants: { D: c.headDim, GV: Math.min(32, c.headDim), BS: blockTokens } })

/** The decode attention of a tiered cache: the model's, with dequantization fused in (QUANT) where decode's slots are compressed. */
export const tieredDecodeKey = (base: PipelineKey, p: TieredPolicy): PipelineKey =>
  maxBitsOf(p.compression ?? 16) === 16 ? base : { ...base, flags: { ...base.flags, QUANT: true } }

/** Tokens attended per step by the policy at this length. */
export const budgetTokens = (p: TieredPolicy, length: number, slotTokens: number): number =>
  p.mode === "offload-all" ? Number.POSITIVE_INFINITY : budgetAt(p, length, slotTokens)

export class Selector {
  private readonly chunkIds: GPUBuffer
  private readonly scores: GPUBuffer
  /** (chunks) vec2<u32> (chunk, tokens) per chosen chunk, best first after sink and recent. */
  readonly selection: GPUBuffer
  private readonly selectSeqs: GPUBuffer
  private readonly u: { score: Uniform; select: Uniform }
  private readonly scoreDispatches: Dispatch[] = []
  private readonly selectDispatches: Dispatch[] = []

  constructor(
    device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    abstracts: ReadonlyArray<{ readonly amin: GPUBuffer; readonly amax: GPUBuffer }>,
    /** (chunk, H, D) f32, the roped queries of the step. */
    q: GPUBuffer,
    private readonly maxChunks: number,
    private readonly blockTokens: number,
  ) {
    this.chunkIds = storageBuffer(device, "chunk ids (chunks) u32", maxChunks * 4)
    device.queue.writeBuffer(this.chunkIds, 0, Uint32Array.from({ length: maxChunks }, (_, i) => i))
    this.scores = storageBuffer(device, "chunk scores (chunks) f32", maxChunks * 4)
    this.selection = storageBuffer(device, "selected chunks (chunks) vec2<u32>", maxChunks * 8)
    this.selectSeqs = storageBuffer(device, "tier select seqs (1) vec2<u32>", 16)
    this.u = { score: new Uniform(device, "tier score", "uuuf"), select: new Uniform(device, "tier select", "uuuuuuuu") }
    const keys = tieredPipelineKeys(config)
    const mk = (key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>, x: number): Dispatch => dispatchOf(device, pipelines.now(key), entries, x)
    for (const ab of abstracts) {
      this.scoreDispatches.push(mk(keys.score, [[0, this.u.score.buffer], [1, q], [2, ab.amin], [3, ab.amax], [4, this.chunkIds], [5, this.scores]], 0))
      this.selectDispatches.push(mk(keys.select, [[0, this.u.select.buffer], [1, this.scores], [2, this.chunkIds], [3, this.selection], [4, this.selectSeqs]], 1))
    }
  }

  /**
   * Encodes layer l's scoring and selection of its sealed chunks against the current query
   * into `selection`. Returns how many chunks it chooses.
   */
  encode(l: number, pass: GPUComputePassEncoder, L: LayerChunks, tokens: number, p: TieredPolicy, slotTokens: number): number {
    const c = this.config
    const n = L.starts.length
    const tail = tokens - L.sealed
    // Sink: the chunks starting within the first sink tokens; recent: those ending within
    // the last recent tokens; K more of at most slotTokens each fill the budget.
    let S = 0
    while (S < n && L.starts[S] < p.sinkTokens) S++
    const need = Math.max(0, p.recentTokens - tail)
    let R = 0
    while (R < n - S && L.starts[n - 1 - R] + L.sizes[n - 1 - R] > L.sealed - need) R++
    const kept = (S > 0 ? L.starts[S - 1] + L.sizes[S - 1] : 0) + (R > 0 ? L.sealed - L.starts[n - R] : 0)
    // At least one scored chunk: a budget that sink, recent and tail use up entirely would
    // otherwise attend nothing chosen by the query (it then exceeds the budget by a chunk).
    const K = Math.max(n - S - R > 0 ? 1 : 0, Math.floor((budgetTokens(p, tokens, slotTokens) - tail - kept) / slotTokens))
    this.u.score.set(n, c.numKvHeads, c.headDim, 1 / Math.sqrt(c.headDim))
    this.u.select.set(n, 1, S, R, K, this.blockTokens, this.maxChunks, 0)
    const score = this.scoreDispatches[l]
    pass.setPipeline(score.pipeline)
    pass.setBindGroup(0, score.bindGroup)
    pass.dispatchWorkgroups(Math.min(n, 65535), Math.max(1, Math.ceil(n / 65535)))
    const sel = this.selectDispatches[l]
    pass.setPipeline(sel.pipeline)
    pass.setBindGroup(0, sel.bindGroup)
    pass.dispatchWorkgroups(1)
    return Math.min(n, S + R + K)
  }

  destroy(): void {
    for (const b of [this.chunkIds, this.scores, this.selection, this.selectSeqs]) b.destroy()
  }
}
