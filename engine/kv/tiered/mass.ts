// Adaptive chunking's measure (kv/chunk-plan.ts): during each prefill pass, per layer, where
// the pass's attention goes among the tokens not yet sealed (kernels/chunk_mass.wgsl, R query
// rows spread over the pass), then read back once after the pass, summed over rows and KV
// heads into one mass per whole block. Owns its uniforms (one per layer: each is written once
// a pass, before its layer's submit), the mass buffer and its read-back copy.
import type { ModelConfig } from "../../../models/types.ts"
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "../../buffers.ts"
import type { PipelineKey, Pipelines } from "../../pipelines.ts"

/** Query rows sampled per pass and layer. */
export const MASS_ROWS = 32
/** Tokens right before a sampled row that its measure leaves out (local attention). */
export const MASS_SKIP = 32

export const chunkMassKey = (c: ModelConfig, blockTokens: number): PipelineKey => ({
  op: "chunk_mass",
  constants: { G: c.numHeads / c.numKvHeads, D: c.headDim, BS: blockTokens },
})

export class PrefillMass {
  /** Per layer: (R, KV, NB) f32 block masses of the last pass, NB up to maxBlocks. */
  private readonly masses: GPUBuffer[]
  /** (layers, R, KV, maxBlocks) f32: their read-back copy. */
  private readonly read: GPUBuffer
  private readonly uniforms: Uniform[]
  private readonly dispatches: Dispatch[]
  /** Blocks one layer's measure can cover: the tail ring's, plus a partial one. */
  private readonly maxBlocks: number
  private readonly layerBytes: number
  /** Per layer, this pass: the kernel's blocks (its stride), the whole ones among them and the rows sampled. */
  private readonly measured: Array<{ nb: number; whole: number; rows: number }>
  /** The last collect (a reset may drop its result, not its mapping): the next waits for it. */
  private collecting: Promise<unknown> = Promise.resolve()

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly blockTokens: number,
    /** The tail ring's blocks: logical block b is physical block b % wrap. */
    private readonly wrap: number,
    /** (m, H, D) f32, the pass's queries of the layer being attended. */
    q: GPUBuffer,
    pools: ReadonlyArray<{ readonly k: GPUBuffer }>,
  ) {
    const c = config
    this.maxBlocks = wrap + 1
    this.layerBytes = MASS_ROWS * c.numKvHeads * this.maxBlocks * 4
    this.masses = pools.map((_, l) => storageBuffer(device, `L${l} prefill block mass (R, KV, blocks) f32`, this.layerBytes))
    this.read = device.createBuffer({ label: "prefill block mass read-back", size: c.numLayers * this.layerBytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    const pipeline = pipelines.now(chunkMassKey(c, blockTokens))
    this.uniforms = pools.map((_, l) => new Uniform(device, `L${l} chunk mass`, "uuuuuuuufuuu"))
    this.dispatches = pools.map((pool, l) => ({
      ...dispatchOf(device, pipeline, [[0, this.uniforms[l].buffer], [1, q], [2, pool.k], [3, this.masses[l]]], MASS_ROWS),
      y: c.numKvHeads,
    }))
    this.measured = pools.map(() => ({ nb: 0, whole: 0, rows: 0 }))
  }

  /**
   * Encodes layer l's measure of the pass of m tokens from position pos0 over the tokens from
   * `start` (its first unsealed token, a block boundary): after the layer's keys are written,
   * before the next layer overwrites the queries.
   */
  encode(l: number, encode: (d: ReadonlyArray<Dispatch>) => void, pass: { readonly m: number; readonly pos0: number }, start: number): void {
    const c = this.config
    const bs = this.blockTokens
    const end = pass.pos0 + pass.m
    const nb = Math.floor((end - 1) / bs) - start / bs + 1
    const rows = Math.min(MASS_ROWS, pass.m)
    if (nb > this.maxBlocks) throw new RangeError(`prefill mass: ${nb} blocks past the tail's ${this.maxBlocks}`)
    this.uniforms[l].set(pass.m, rows, c.numHeads, c.numKvHeads, pass.pos0, start, this.wrap, nb, 1 / Math.sqrt(c.headDim), MASS_SKIP, 0, 0)
    const d = this.dispatches[l]
    d.x = rows
    encode([d])
    // Whole blocks only: the planner never cuts a partial one.
    this.measured[l] = { nb, whole: Math.floor(end / bs) - start / bs, rows }
  }

  /** Copies the pass's masses back (call after the pass's last submit) and sums them per whole block, per layer. */
  collect(): Promise<Float32Array[]> {
    const done = this.collecting.then(() => this.collectNow(), () => this.collectNow())
    this.collecting = done.catch(() => undefined)
    return done
  }

  private async collectNow(): Promise<Float32Array[]> {
    const KV = this.config.numKvHeads
    const encoder = this.device.createCommandEncoder({ label: "prefill block mass read-back" })
    this.masses.forEach((b, l) => encoder.copyBufferToBuffer(b, 0, this.read, l * this.layerBytes, this.layerBytes))
    this.device.queue.submit([encoder.finish()])
    await this.read.mapAsync(GPUMapMode.READ)
    try {
      const all = new Float32Array(this.read.getMappedRange())
      return this.measured.map(({ nb, whole, rows }, l) => {
        const out = new Float32Array(Math.max(0, whole))
        for (let r = 0; r < rows * KV; r++) {
          const at = l * (this.layerBytes / 4) + r * nb
          for (let b = 0; b < out.length; b++) out[b] += all[at + b]
        }
        return out
      })
    } finally {
      this.read.unmap()
    }
  }

  destroy(): void {
    for (const b of [...this.masses, this.read, ...this.uniforms.map((u) => u.buffer)]) b.destroy()
  }
}
