// InfiniGen's forecast query (prefetch `from: "hidden"`): while layer l attends, the decode
// row's residual stream holds layer l's input; normed by layer m's attention norm and
// multiplied by layer m's query rows (the model's own QKV GEMV, on the GPU), then rotated at
// the step's position, it is what layer m's query would be if the layers between changed
// nothing (residual streams change little from layer to layer, which InfiniGen builds on).
// Scored against layer m's abstracts, it forecasts layer m's choice before layer m runs.
// Owns the forecast query and its uniforms; only `encode` writes them.
import type { ModelConfig } from "../../../models/types.ts"
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import type { ForecastInputs } from "../manager.ts"

/** The model's RoPE kernel (q heads only here: no K or V heads, so nothing goes to a pool). */
const ROPE_KEY = { op: "rope_kv" } as const

export class ForecastQuery {
  /** (H, D) f32: layer m's forecast query, roped at the step's position. */
  readonly q: GPUBuffer
  /** (H * D) f32: the projection before RoPE. */
  private readonly raw: GPUBuffer
  /** The rope kernel's slot, K and V pool bindings (no two writable bindings may alias), which it never touches with no K or V heads. */
  private readonly unused: ReadonlyArray<GPUBuffer>
  private readonly uniforms: ReadonlyArray<Uniform>
  /** Per layer: the query rows' GEMV (norm fused) of the decode row into `raw`. */
  private readonly project: ReadonlyArray<Dispatch>
  private readonly rope: Dispatch

  constructor(device: GPUDevice, pipelines: Pipelines, c: ModelConfig, f: ForecastInputs, blockTokens: number) {
    const rows = c.numHeads * c.headDim
    this.q = storageBuffer(device, "forecast q (H, D) f32 roped", rows * 4)
    this.raw = storageBuffer(device, "forecast q (H * D) f32", rows * 4)
    this.unused = ["slot", "K", "V"].map((what) => storageBuffer(device, `forecast rope: no ${what}`, 16))
    const groups = Math.ceil(rows / f.gemv.rowsPerGroup)
    const gemvU = new Uniform(device, "forecast q gemv", "uufuuuuu")
    gemvU.set(rows, c.hiddenSize, c.rmsNormEps, Math.min(groups, 65535), c.numHeads, c.numKvHeads, c.headDim, blockTokens)
    this.project = f.layers.map((w) => {
      const bias = w.bqkv ? [[5, w.bqkv] as const] : []
      const key = w.bqkv ? f.gemv.biasKey : f.gemv.key
      return dispatchOf(device, pipelines.now(key), [[0, gemvU.buffer], [1, w.wqkv], [2, f.x], [3, this.raw], [4, w.attnNorm], ...bias], Math.min(groups, 65535), Math.ceil(groups / 65535))
    })
    // One row, H heads, no K or V heads: threads past the q heads return.
    const ropeU = new Uniform(device, "forecast rope", "uuuuuuuu")
    ropeU.set(1, c.numHeads, 0, c.headDim, blockTokens)
    const entries = [[0, ropeU.buffer], [1, this.raw], [2, f.rope], [3, this.unused[0]], [4, this.q], [5, this.unused[1]], [6, this.unused[2]]] as const
    this.rope = dispatchOf(device, pipelines.now(ROPE_KEY), entries, Math.ceil((rows / 2) / 64))
    this.uniforms = [gemvU, ropeU]
  }

  /** Encodes layer m's forecast query from the current residual input into `q`. */
  encode(m: number, pass: GPUComputePassEncoder): void {
    for (const d of [this.project[m], this.rope]) {
      pass.setPipeline(d.pipeline)
      pass.setBindGroup(0, d.bindGroup)
      pass.dispatchWorkgroups(d.x, d.y, d.z)
    }
  }

  destroy(): void {
    for (const b of [this.q, this.raw, ...this.unused, ...this.uniforms.map((u) => u.buffer)]) b.destroy()
  }
}
