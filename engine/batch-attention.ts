// Decode attention of a whole batch in one dispatch per layer (issue 14 §1): where every row's
// KV manager keeps its blocks in one shared KvBlockStore (full attention, BatchedKv), the
// rows' RoPE + KV append, attention and combine are one dispatch each per layer for all rows,
// instead of one each per row: at 16 rows that is 3 dispatches a layer instead of 48. The
// kernels are the single sequence's (rope_kv, attn_decode, attn_combine), run over M rows:
// row m's slot and RoPE table, its own block list (`seqs[m]` into the batch's entries) and its
// partials. Each row splits its list as it would alone (decodeSplits of the longest row), so
// a row's attention is the same arithmetic as in its own step whenever the rows' lists split
// alike (up to 256 / KV tiles each: 32K tokens at 8 KV heads and 16-token blocks).
import type { ModelConfig } from "../models/types.ts"
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "./buffers.ts"
import { ropeInvFreq } from "./cpu-reference.ts"
import type { DecodeKv } from "./decode-driver.ts"
import type { KvBlockStore } from "./kv/block-store.ts"
import type { BatchedKv, KvManager, StepEncoder } from "./kv/manager.ts"
import { ATTN_TILE, decodeSplits } from "./kv/pool.ts"
import { fillRope } from "./model-resources.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"

export interface BatchAttentionInputs {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  readonly config: ModelConfig
  readonly keys: { readonly rope: PipelineKey; readonly attnDecode: PipelineKey; readonly combine: PipelineKey }
  readonly store: KvBlockStore
  /** Most rows of a step. */
  readonly capacity: number
  /** The batch's (rows, q+k+v) f32 projections before RoPE, and its (rows, H, D) f32 attention output. */
  readonly qkv: GPUBuffer
  readonly attn: GPUBuffer
}

/** Bytes of RoPE table per row: D/2 (cos, sin) pairs. */
const ropeFloats = (c: ModelConfig) => c.headDim

export class BatchAttention implements DecodeKv {
  readonly store: KvBlockStore
  /** Per layer: RoPE + KV append of every row (end of the layer's pre), attention, combine (start of its post). */
  readonly layers: ReadonlyArray<{ readonly rope: Dispatch; readonly attend: Dispatch; readonly combine: Dispatch }>
  private readonly c: ModelConfig
  private readonly device: GPUDevice
  private readonly maxSplits: number
  private readonly buffers: GPUBuffer[]
  private readonly slot: GPUBuffer
  private readonly rope: GPUBuffer
  private readonly entries: GPUBuffer
  private readonly seqs: GPUBuffer
  private readonly uRope: Uniform
  private readonly uAttend: Uniform
  private readonly uCombine: Uniform
  private readonly invFreq: Float32Array
  private readonly slotHost: Uint32Array
  private readonly ropeHost: Float32Array
  private readonly entriesHost: Uint32Array
  private readonly seqsHost: Uint32Array
  /** The rows of the next step, in the batch's row order. */
  private rows: ReadonlyArray<BatchedKv> = []

  constructor(i: BatchAttentionInputs) {
    const c = i.config
    const device = i.device
    this.c = c
    this.device = device
    this.store = i.store
    const tile = ATTN_TILE / i.store.blockTokens
    // A row's splits are at most decodeSplits' target, and at most the tiles of the whole store.
    this.maxSplits = Math.min(decodeSplits(Number.MAX_SAFE_INTEGER, tile, c.numKvHeads).splits, Math.ceil(i.store.blocks / tile))
    const m = i.capacity
    const q = storageBuffer(device, "batch q (rows, H, D) f32 roped", m * c.numHeads * c.headDim * 4)
    this.slot = storageBuffer(device, "batch slot (rows) u32", m * 4)
    this.rope = storageBuffer(device, "batch rope (rows, D/2) vec2 cos,sin", m * ropeFloats(c) * 4)
    this.entries = storageBuffer(device, "batch decode entries (blocks) vec2<u32>", i.store.blocks * 8)
    this.seqs = storageBuffer(device, "batch decode seqs (rows) vec2<u32>", m * 8)
    const partO = storageBuffer(device, "batch attn partials (rows, H, splits, D) f32", m * c.numHeads * this.maxSplits * c.headDim * 4)
    const partML = storageBuffer(device, "batch attn partial max,sum (rows, H, splits) vec2", m * c.numHeads * this.maxSplits * 8)
    this.buffers = [q, this.slot, this.rope, this.entries, this.seqs, partO, partML]
    this.uRope = new Uniform(device, "batch rope", "uuuuuuuu")
    this.uAttend = new Uniform(device, "batch attn decode", "uuuuufuu")
    this.uCombine = new Uniform(device, "batch attn combine", "uuuu")
    this.invFreq = ropeInvFreq(c)
    this.slotHost = new Uint32Array(m)
    this.ropeHost = new Float32Array(m * ropeFloats(c))
    this.entriesHost = new Uint32Array(i.store.blocks * 2)
    this.seqsHost = new Uint32Array(m * 2)
    const P = (key: PipelineKey) => i.pipelines.now(key)
    const ropeGroups = Math.ceil(((c.numHeads + 2 * c.numKvHeads) * c.headDim) / 2 / 64)
    this.layers = i.store.layers.map((kvl) => ({
      rope: dispatchOf(device, P(i.keys.rope), [[0, this.uRope.buffer], [1, i.qkv], [2, this.rope], [3, this.slot], [4, q], [5, kvl.k], [6, kvl.v]], ropeGroups, 1),
      attend: dispatchOf(device, P(i.keys.attnDecode), [[0, this.uAttend.buffer], [1, q], [2, kvl.k], [3, kvl.v], [4, this.entries], [5, this.seqs], [6, partO], [7, partML]], 1, c.numKvHeads, 1),
      combine: dispatchOf(device, P(i.keys.combine), [[0, this.uCombine.buffer], [1, partO], [2, partML], [3, i.attn]], c.numHeads, 1),
    }))
  }

  /** Whether a batch of these managers can be attended here: every one batched, in this store. */
  static fits(kvs: ReadonlyArray<Pick<KvManager, "batched">>, store: KvBlockStore | undefined): boolean {
    return store !== undefined && kvs.every((kv) => kv.batched?.pool.store === store)
  }

  /** The rows of the following steps (their managers' BatchedKv, in row order). */
  use(rows: ReadonlyArray<BatchedKv>): void {
    this.rows = rows
  }

  /** Reserves every row's token and writes the step's slots, RoPE tables, block lists and uniforms. */
  beginDecode(): void {
    const c = this.c
    const m = this.rows.length
    let entries = 0
    let longest = 0
    for (const [b, kv] of this.rows.entries()) {
      const pool = kv.pool
      this.slotHost[b] = kv.reserveBatched()
      fillRope(this.ropeHost.subarray(b * ropeFloats(c)), this.invFreq, pool.length - 1, 1)
      const blocks = pool.blockList
      this.seqsHost[2 * b] = entries
      this.seqsHost[2 * b + 1] = blocks.length
      for (const [i, block] of blocks.entries()) {
        this.entriesHost[2 * entries] = block
        this.entriesHost[2 * entries + 1] = i === blocks.length - 1 ? pool.length - i * pool.blockTokens : pool.blockTokens
        entries++
      }
      longest = Math.max(longest, blocks.length)
    }
    const q = this.device.queue
    q.writeBuffer(this.slot, 0, this.slotHost, 0, m)
    q.writeBuffer(this.rope, 0, this.ropeHost, 0, m * ropeFloats(c))
    q.writeBuffer(this.entries, 0, this.entriesHost, 0, entries * 2)
    q.writeBuffer(this.seqs, 0, this.seqsHost, 0, m * 2)
    const { splits, entriesPerSplit } = decodeSplits(longest, ATTN_TILE / this.store.blockTokens, c.numKvHeads)
    if (splits > this.maxSplits) throw new RangeError(`batch attention: ${splits} splits, room for ${this.maxSplits}`)
    this.uRope.set(m, c.numHeads, c.numKvHeads, c.headDim, this.store.blockTokens)
    this.uAttend.set(c.numHeads, c.numKvHeads, this.store.blockTokens, entriesPerSplit, splits, 1 / Math.sqrt(c.headDim), 0, 0)
    this.uCombine.set(c.numHeads, splits, c.headDim, 0)
    for (const l of this.layers) {
      l.rope.y = m
      l.attend.x = splits
      l.attend.z = m
      l.combine.y = m
    }
  }

  attendDecode(l: number, step: StepEncoder): void {
    step.encode([this.layers[l].attend])
  }

  endDecode(): void {}

  afterDecode(): void {}

  destroy(): void {
    for (const b of this.buffers) b.destroy()
  }
}
