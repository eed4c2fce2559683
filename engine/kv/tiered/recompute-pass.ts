// The GPU side of recompute (policy `recompute`, recompute.ts): a batch of chunks' hidden
// states (fp16 rows, as stored on disk) becomes their K and V in their cache slots with the
// model's own kernels: widen (hidden_rows.wgsl), RMSNorm with the layer's attention norm,
// the GEMM over the K and V rows of the fused QKV weight only, and rope_kv with H = 0, which
// rotates K and writes K and V into the pool at each token's slot exactly as a forward pass
// does. Where the K/V rows cannot be bound alone (their offset in the weight is not a multiple
// of the device's storage offset alignment) the GEMM runs over all QKV rows and the queries
// go to a scratch buffer.
import type { ModelConfig } from "../../../models/types.ts"
import { fillRope, gemmColumnsPerGroup, gemmRowsPerGroup } from "../../model-resources.ts"
import { ropeInvFreq } from "../../cpu-reference.ts"
import { type Dispatch, dispatchOf, encodeAll, storageBuffer, Uniform } from "../../buffers.ts"
import type { PipelineKey, Pipelines } from "../../pipelines.ts"
import type { LayerWeights } from "../../weights.ts"

/** What recompute needs of the model: its layers' weights and the keys of the kernels it reuses. */
export interface RecomputeModel {
  readonly weights: ReadonlyArray<Pick<LayerWeights, "attnNorm" | "wqkv" | "bqkv">>
  readonly keys: { readonly gemm: PipelineKey; readonly gemmBias: PipelineKey; readonly rmsnorm: PipelineKey; readonly rope: PipelineKey }
}

export const hiddenRowsKey = (narrow: boolean): PipelineKey => ({ op: "hidden_rows", ...(narrow ? { flags: { NARROW: true } } : {}) })

/** The most tokens one batch recomputes (its buffers' rows). */
export const RECOMPUTE_ROWS = 256

/** One chunk of a batch: its first token's position and count, and the first pool block of its slot. */
export interface RecomputeJob {
  readonly start: number
  readonly tokens: number
  readonly block: number
}

export class RecomputePass {
  private readonly h16: GPUBuffer
  private readonly x: GPUBuffer
  private readonly xn: GPUBuffer
  private readonly kv: GPUBuffer
  private readonly q: GPUBuffer
  private readonly rope: GPUBuffer
  private readonly slot: GPUBuffer
  private readonly uWiden: Uniform
  private readonly uNorm: Uniform
  private readonly uGemm: Uniform
  private readonly uRope: Uniform
  private readonly widen: Dispatch
  /** Per layer: norm, gemm, rope. */
  private readonly layers: ReadonlyArray<readonly [Dispatch, Dispatch, Dispatch]>
  private readonly invFreq: Float32Array
  private readonly ropeHost: Float32Array
  private readonly slotHost: Uint32Array
  /** Output rows of the GEMM: K and V rows (alone), or all QKV rows; and the query heads rope_kv sees. */
  private readonly n: number
  private readonly heads: number
  private readonly gemmKey: PipelineKey
  readonly bytes: number

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly c: ModelConfig,
    model: RecomputeModel,
    pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>,
    private readonly blockTokens: number,
  ) {
    const rows = RECOMPUTE_ROWS
    const hidden = c.hiddenSize
    const qRows = c.numHeads * c.headDim
    const kvRows = 2 * c.numKvHeads * c.headDim
    const align = device.limits.minStorageBufferOffsetAlignment
    const bias = model.weights[0]?.bqkv !== undefined
    const alone = (qRows * hidden * 2) % align === 0 && (!bias || (qRows * 4) % align === 0)
    this.n = alone ? kvRows : qRows + kvRows
    this.heads = alone ? 0 : c.numHeads
    this.gemmKey = bias ? model.keys.gemmBias : model.keys.gemm
    this.h16 = storageBuffer(device, "recompute hidden (rows, hidden) f16", rows * hidden * 2)
    this.x = storageBuffer(device, "recompute x (rows, hidden) f32", rows * hidden * 4)
    this.xn = storageBuffer(device, "recompute xn (rows, hidden) f32 normed", rows * hidden * 4)
    this.kv = storageBuffer(device, `recompute ${alone ? "k+v" : "q+k+v"} (rows, n) f32`, rows * this.n * 4)
    this.q = storageBuffer(device, "recompute q (rows, H, D) f32 (unused with the K/V rows alone)", alone ? 16 : rows * qRows * 4)
    this.rope = storageBuffer(device, "recompute rope (rows, D/2) vec2 cos,sin", rows * c.headDim * 4)
    this.slot = storageBuffer(device, "recompute slot (rows) u32", rows * 4)
    this.bytes = [this.h16, this.x, this.xn, this.kv, this.q, this.rope, this.slot].reduce((s, b) => s + b.size, 0)
    this.uWiden = new Uniform(device, "recompute widen", "uuuu")
    this.uNorm = new Uniform(device, "recompute rmsnorm", "ufuu")
    this.uNorm.set(hidden, c.rmsNormEps)
    this.uGemm = new Uniform(device, "recompute gemm k/v", "uuuu")
    this.uRope = new Uniform(device, "recompute rope", "uuuuuuuu")
    this.widen = dispatchOf(device, pipelines.now(hiddenRowsKey(false)), [[0, this.uWiden.buffer], [1, this.x], [2, this.h16]], Math.ceil(hidden / 2 / 64), 1)
    const gemmPipeline = pipelines.now(this.gemmKey)
    this.layers = model.weights.map((w, l) => {
      const weight = alone ? { buffer: w.wqkv, offset: qRows * hidden * 2, size: kvRows * hidden * 2 } : w.wqkv
      const biasOf = w.bqkv ? [[5, alone ? { buffer: w.bqkv, offset: qRows * 4, size: kvRows * 4 } : w.bqkv] as const] : []
      const norm = dispatchOf(device, pipelines.now(model.keys.rmsnorm), [[0, this.uNorm.buffer], [1, this.x], [2, w.attnNorm], [3, this.xn]], 1, 1)
      const gemm = dispatchOf(device, gemmPipeline, [[0, this.uGemm.buffer], [1, this.xn], [2, weight], [3, this.kv], ...biasOf], Math.ceil(this.n / gemmColumnsPerGroup(this.gemmKey)), 1)
      const ropeRows = Math.ceil(this.n / 2 / 64)
      const rope = dispatchOf(device, pipelines.now(model.keys.rope), [[0, this.uRope.buffer], [1, this.kv], [2, this.rope], [3, this.slot], [4, this.q], [5, pools[l].k], [6, pools[l].v]], ropeRows, 1)
      return [norm, gemm, rope] as const
    })
    this.invFreq = ropeInvFreq(c)
    this.ropeHost = new Float32Array(rows * c.headDim)
    this.slotHost = new Uint32Array(rows)
  }

  /**
   * Encodes and submits the recompute of `jobs` (at most RECOMPUTE_ROWS tokens in all) of
   * layer l from `hidden`, their fp16 rows back to back in job order.
   */
  submit(l: number, jobs: ReadonlyArray<RecomputeJob>, hidden: Uint8Array): void {
    const c = this.c
    const bs = this.blockTokens
    let m = 0
    for (const j of jobs) {
      fillRope(this.ropeHost.subarray(m * c.headDim), this.invFreq, j.start, j.tokens)
      for (let t = 0; t < j.tokens; t++) this.slotHost[m + t] = (j.block + Math.floor(t / bs)) * bs + (t % bs)
      m += j.tokens
    }
    if (m === 0) return
    if (m > RECOMPUTE_ROWS || hidden.length !== m * c.hiddenSize * 2) throw new RangeError(`recompute: ${m} tokens and ${hidden.length} hidden bytes in one batch`)
    const q = this.device.queue
    q.writeBuffer(this.h16, 0, hidden.buffer, hidden.byteOffset, hidden.length)
    q.writeBuffer(this.rope, 0, this.ropeHost.buffer, 0, m * c.headDim * 4)
    q.writeBuffer(this.slot, 0, this.slotHost.buffer, 0, m * 4)
    this.uWiden.set(m, c.hiddenSize, 0)
    this.uGemm.set(m, this.n, c.hiddenSize)
    this.uRope.set(m, this.heads, c.numKvHeads, c.headDim, bs)
    const [norm, gemm, rope] = this.layers[l]
    this.widen.y = m
    norm.y = m
    gemm.y = Math.ceil(m / gemmRowsPerGroup(this.gemmKey))
    rope.y = m
    const encoder = this.device.createCommandEncoder({ label: `recompute L${l}` })
    const pass = encoder.beginComputePass()
    encodeAll(pass, [this.widen, norm, gemm, rope])
    pass.end()
    q.submit([encoder.finish()])
  }

  destroy(): void {
    for (const b of [this.h16, this.x, this.xn, this.kv, this.q, this.rope, this.slot]) b.destroy()
    for (const u of [this.uWiden, this.uNorm, this.uGemm, this.uRope]) u.buffer.destroy()
  }
}
