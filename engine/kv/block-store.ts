// The GPU memory of paged KV: per layer K and V pools of `blocks` blocks, (blocks, KV, BS, D)
// f16, and the free list that hands them out. A sequence's KvPool takes its blocks from one;
// it owns a store of its own, or takes its blocks from one shared with other sequences: then
// one dispatch can attend every row of a decode batch, all their blocks being in the same
// buffers (engine/batch-attention.ts). Only take/give change the free list.
import type { ModelConfig } from "../../models/types.ts"
import { storageBuffer } from "../buffers.ts"

export class KvBlockStore {
  readonly layers: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>
  readonly blockBytes: number
  private readonly free: number[] = []

  constructor(
    device: GPUDevice,
    config: ModelConfig,
    readonly blockTokens: number,
    readonly blocks: number,
    /** Whether several sequences take their blocks here (a batch may then attend them together). */
    readonly shared = true,
  ) {
    this.blockBytes = config.numKvHeads * blockTokens * config.headDim * 2
    this.layers = Array.from({ length: config.numLayers }, (_, l) => ({
      k: storageBuffer(device, `L${l} k pool (blocks, KV, BS, D) f16`, blocks * this.blockBytes),
      v: storageBuffer(device, `L${l} v pool (blocks, KV, BS, D) f16`, blocks * this.blockBytes),
    }))
    // Taken from the end: block 0 first, so a fresh store hands out blocks in order.
    for (let b = blocks - 1; b >= 0; b--) this.free.push(b)
  }

  /** A free block, or undefined when none is left. */
  take(): number | undefined {
    return this.free.pop()
  }

  give(block: number): void {
    this.free.push(block)
  }

  /** Blocks not handed out. */
  get available(): number {
    return this.free.length
  }

  destroy(): void {
    for (const l of this.layers) {
      l.k.destroy()
      l.v.destroy()
    }
  }
}
