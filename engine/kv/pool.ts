// The paged KV cache of one sequence on the GPU: per layer a pool of blocks of BS tokens,
// (blocks, KV, BS, D) f16 packed, and the lists the attention kernels read (block table for
// prefill, (block, tokens) entries for decode). Blocks come from a KvBlockStore's free list
// (the pool's own, or one shared by a batch's sequences), so logical and physical order may
// differ; only append/truncate/reset change the sequence.
import type { ModelConfig } from "../../models/types.ts"
import { storageBuffer } from "../buffers.ts"
import { KvBlockStore } from "./block-store.ts"

/** Token slots a decode-attention workgroup covers per tile (its workgroup size). */
export const ATTN_TILE = 256
/** Aim for this many decode-attention workgroups (splits x kv heads) per step. */
const TARGET_WORKGROUPS = 256

/**
 * How decode attention splits a list of n entries over workgroups (tiles of `tile` entries,
 * about TARGET_WORKGROUPS workgroups with the KV heads): a batch's rows split as each would alone
 * (engine/batch-attention.ts), so that a row's partials are the same.
 */
export const decodeSplits = (n: number, tile: number, kvHeads: number): { splits: number; entriesPerSplit: number } => {
  const targetSplits = Math.max(1, Math.floor(TARGET_WORKGROUPS / kvHeads))
  const entriesPerSplit = Math.max(tile, Math.ceil(Math.ceil(n / targetSplits) / tile) * tile)
  return { splits: Math.max(1, Math.ceil(n / entriesPerSplit)), entriesPerSplit }
}

export class KvPool {
  readonly layers: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>
  readonly table: GPUBuffer // (maxBlocks) u32 logical -> physical block
  readonly entries: GPUBuffer // (maxBlocks) vec2<u32> (physical block, tokens used)
  readonly seqs: GPUBuffer // (1) vec2<u32> (first entry, entry count)
  readonly maxBlocks: number
  readonly maxSplits: number
  /** Where the blocks live: the pool's own store, or a shared one (then not destroyed with the pool). */
  readonly store: KvBlockStore
  private readonly blocks: number[] = []
  private tokens = 0
  private tableSynced = 0
  private entriesSynced = 0
  private readonly scratch = new Uint32Array(2)
  // Host copy of the entries to write; allocated once, not per decode step.
  private readonly entryScratch: Uint32Array

  constructor(
    private readonly device: GPUDevice,
    private readonly config: ModelConfig,
    readonly blockTokens: number,
    maxContext: number,
    shared?: KvBlockStore,
  ) {
    if (ATTN_TILE % blockTokens !== 0) throw new RangeError(`block size ${blockTokens} must divide ${ATTN_TILE}`)
    if (shared && shared.blockTokens !== blockTokens) throw new RangeError(`a shared KV store of ${shared.blockTokens}-token blocks, not ${blockTokens}`)
    this.maxBlocks = Math.ceil(maxContext / blockTokens)
    this.maxSplits = Math.ceil(this.maxBlocks / this.tileEntries)
    this.entryScratch = new Uint32Array(this.maxBlocks * 2)
    this.store = shared ?? new KvBlockStore(device, config, blockTokens, this.maxBlocks, false)
    this.layers = this.store.layers
    this.table = storageBuffer(device, "block table (blocks) u32", this.maxBlocks * 4)
    this.entries = storageBuffer(device, "decode entries (blocks) vec2<u32>", this.maxBlocks * 8)
    this.seqs = storageBuffer(device, "decode seqs (1) vec2<u32>", 16)
  }

  get tileEntries(): number {
    return ATTN_TILE / this.blockTokens
  }

  get length(): number {
    return this.tokens
  }

  /** The sequence's physical blocks in logical order (read-only view). */
  get blockList(): ReadonlyArray<number> {
    return this.blocks
  }

  get bytesPerToken(): number {
    return this.config.numLayers * 2 * this.config.numKvHeads * this.config.headDim * 2
  }

  /** Reserves the next token's slot (block * BS + offset), taking a new block when needed. */
  append(): number {
    const off = this.tokens % this.blockTokens
    if (off === 0) {
      const block = this.blocks.length < this.maxBlocks ? this.store.take() : undefined
      if (block === undefined) throw new RangeError(this.blocks.length < this.maxBlocks ? "the shared KV store is full" : "KV pool is full")
      this.blocks.push(block)
    }
    this.tokens++
    return this.blocks[this.blocks.length - 1] * this.blockTokens + off
  }

  /** Writes table entries for blocks taken since the last sync. */
  syncTable(): void {
    if (this.tableSynced < this.blocks.length) {
      const fresh = Uint32Array.from(this.blocks.slice(this.tableSynced))
      this.device.queue.writeBuffer(this.table, this.tableSynced * 4, fresh)
      this.tableSynced = this.blocks.length
    }
  }

  /**
   * Writes the decode list (every block, in order; only what changed since the last
   * sync) and returns how to split it over workgroups.
   */
  syncDecodeList(): { splits: number; entriesPerSplit: number } {
    const n = this.blocks.length
    const from = Math.max(0, Math.min(this.entriesSynced, n) - 1) // the last block's count changes
    const data = this.entryScratch
    for (let i = from; i < n; i++) {
      data[(i - from) * 2] = this.blocks[i]
      data[(i - from) * 2 + 1] = i === n - 1 ? this.tokens - i * this.blockTokens : this.blockTokens
    }
    this.device.queue.writeBuffer(this.entries, from * 8, data.buffer, 0, (n - from) * 8)
    this.entriesSynced = n
    this.scratch[0] = 0
    this.scratch[1] = n
    this.device.queue.writeBuffer(this.seqs, 0, this.scratch)
    this.syncTable()
    return decodeSplits(n, this.tileEntries, this.config.numKvHeads)
  }

  /** Keeps the first `length` tokens, returning the blocks past them to the pool. */
  truncate(length: number): void {
    if (length >= this.tokens) return
    const keep = Math.ceil(length / this.blockTokens)
    while (this.blocks.length > keep) this.store.give(this.blocks.pop()!)
    this.tokens = length
    this.tableSynced = Math.min(this.tableSynced, keep)
    this.entriesSynced = Math.min(this.entriesSynced, keep)
  }

  reset(): void {
    while (this.blocks.length > 0) this.store.give(this.blocks.pop()!)
    this.tokens = 0
    this.tableSynced = 0
    this.entriesSynced = 0
  }

  destroy(): void {
    this.reset() // a shared store gets the blocks back
    if (!this.store.shared) this.store.destroy()
    this.table.destroy()
    this.entries.destroy()
    this.seqs.destroy()
  }
}
