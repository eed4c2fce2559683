// The hidden-state records of recompute (recompute.ts): during a layer-major prefill, each
// slice's input to layer l (the residual stream entering it, in the activations' x while the
// layer's attention runs) is narrowed to fp16 into a buffer of the prompt's rows; at the end
// of the layer the rows of the chunks it sealed are read back and written to disk under
// [session, HIDDEN_LAYER_BASE + l, chunk], one record per chunk, beside its K/V. Chunks that
// reach back before the prompt (tokens of an earlier request) have no rows here and get none.
import type { DiskStore } from "../../../kv/disk-store.ts"
import { HIDDEN_LAYER_BASE } from "../../../kv/recompute-cost.ts"
import { tierErrorOf } from "../../../kv/tier-errors.ts"
import type { ModelConfig } from "../../../models/types.ts"
import { type Dispatch, dispatchOf, readBack, storageBuffer, Uniform } from "../../buffers.ts"
import type { Pipelines } from "../../pipelines.ts"
import type { StepEncoder } from "../manager.ts"
import type { ChunkTables } from "./chunks.ts"
import { hiddenRowsKey } from "./recompute-pass.ts"

export class HiddenRecorder {
  /** (end - pos0, hidden) f16: the current layer's input rows of the prompt. */
  private readonly rows: GPUBuffer
  private readonly u: Uniform
  private readonly narrow: Dispatch
  private readonly rowBytes: number

  constructor(
    private readonly device: GPUDevice,
    pipelines: Pipelines,
    private readonly c: ModelConfig,
    private readonly tables: ChunkTables,
    private readonly store: DiskStore,
    private readonly session: string,
    x: GPUBuffer,
    private readonly pos0: number,
    private readonly end: number,
    private readonly written: (l: number, ch: number, bytes: number) => void,
  ) {
    this.rowBytes = c.hiddenSize * 2
    this.rows = storageBuffer(device, "layer-major hidden records (prompt, hidden) f16", (end - pos0) * this.rowBytes)
    this.u = new Uniform(device, "hidden records narrow", "uuuu")
    this.narrow = dispatchOf(device, pipelines.now(hiddenRowsKey(true)), [[0, this.u.buffer], [1, x], [2, this.rows]], Math.ceil(c.hiddenSize / 2 / 64), 1)
  }

  /** Encodes the narrowing of a slice's rows (tokens [t0, t1), in x rows [0, t1 - t0)) into the record buffer. */
  capture(t0: number, t1: number, step: StepEncoder): void {
    this.u.set(t1 - t0, this.c.hiddenSize, t0 - this.pos0)
    this.narrow.y = t1 - t0
    step.encode([this.narrow])
  }

  /** Writes the records of layer l's chunks from index `from` on that lie within the prompt. */
  async record(l: number, from: number): Promise<void> {
    const L = this.tables.layers[l]
    const chunks: number[] = []
    for (let ch = from; ch < L.starts.length; ch++) if (L.starts[ch] >= this.pos0 && L.starts[ch] + L.sizes[ch] <= this.end) chunks.push(ch)
    if (chunks.length === 0) return
    const r0 = L.starts[chunks[0]] - this.pos0
    const last = chunks[chunks.length - 1]
    const r1 = L.starts[last] + L.sizes[last] - this.pos0
    const view = new Uint8Array(await readBack(this.device, this.rows, r0 * this.rowBytes, (r1 - r0) * this.rowBytes))
    const writes = chunks.map((ch) => {
      const at = (L.starts[ch] - this.pos0 - r0) * this.rowBytes
      return { key: [this.session, HIDDEN_LAYER_BASE + l, ch] as const, bytes: view.subarray(at, at + L.sizes[ch] * this.rowBytes), meta: { tokens: L.sizes[ch], dtype: "f16" } }
    })
    try {
      this.store.putChunks(writes)
    } catch (e) {
      throw tierErrorOf(e)
    }
    for (const w of writes) this.written(l, w.key[2], w.bytes.length)
  }

  destroy(): void {
    this.rows.destroy()
    this.u.buffer.destroy()
  }
}
