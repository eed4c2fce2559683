// Layer-major prefill of the tiered cache (issue 12 §4): every token of the prompt goes
// through layer l before layer l + 1 runs, so layer l's KV of the prompt is written once,
// sealed into chunks with their abstracts and sent to host and disk once, and never read
// back during the prefill: transfer grows with the prompt, not with its square.
// One layer's prompt KV lives in `layer` (K and V, the engine's block layout, logical block
// baseBlock + i in block i), besides the budgeted pools: slices are written by the model's
// QKV into the layer's tail ring as usual and copied there; attention of a slice reads
// the layer's sealed history (chunks sealed before this prompt, through the GPU cache in
// windows, as token-major prefill does) and then `layer` up to itself. At the end of a
// layer its chunks are cut exactly where token-major prefill cuts them (ChunkTables.cut
// from the layer's sealed end, whole chunks) and sealed from `layer`; what is left after
// the last whole chunk goes back into the tail ring, where decode expects it.
import { type Dispatch, dispatchOf, storageBuffer, type Uniform } from "../buffers.ts"
import { prefillRowsPerGroup, windowedPrefillKey } from "../model-resources.ts"
import type { KvContext, LayerPrefill, StepEncoder } from "./manager.ts"
import type { TieredKv } from "./tiered/index.ts"
import { AbstractJobs, type SealSource } from "./tiered/seal.ts"
import type { HiddenRecorder } from "./tiered/hidden-record.ts"

/** Window flags of the windowed prefill attention (attn_prefill WINDOW). */
const FIRST = 1
const LAST = 2

/** What the tiered manager lends a layer-major prefill: its prefill attention state and dispatches. */
export interface PrefillShared {
  /** The windowed attention's uniform (M, H, KV, BS, pos0, scale, k0, k1, flags). */
  readonly uWindow: Uniform
  /** (chunk, H, D + 2) f32 softmax state between windows. */
  readonly state: GPUBuffer
  /** (blocks) u32 logical -> physical block: history windows write below the prompt's first block, this run above. */
  readonly table: GPUBuffer
  /** Per layer: windowed attention over the pool (history windows). */
  readonly attnPool: ReadonlyArray<Dispatch[]>
  /** (chunk) u32 host copy of act.slot. */
  readonly slotHost: Uint32Array
}

/** A slice: tokens [t0, t1), and the first block the copy into `layer` starts from. */
interface Slice {
  readonly t0: number
  readonly t1: number
  readonly b0: number
}

export class TieredLayerPrefill implements LayerPrefill {
  readonly slices: ReadonlyArray<number>
  private readonly plan: ReadonlyArray<Slice>
  /** The sequence's length before the prompt, and its end after. */
  private readonly pos0: number
  private readonly end: number
  /** The first token and block not sealed in any layer when the prefill began (a chunk boundary). */
  private readonly base: number
  private readonly baseBlock: number
  /** Layer l's KV of tokens [base, end): (blocks, KV, BS, D) f16 each. */
  private readonly layer: { readonly k: GPUBuffer; readonly v: GPUBuffer }
  private readonly attnLayer: Dispatch[]
  private readonly abstracts: AbstractJobs
  private readonly source: SealSource
  /** Recompute (policy `recompute`): the layer's input hidden states, recorded on disk beside the chunks sealed. */
  private readonly hidden: HiddenRecorder | undefined
  /** Layers begun (their tail ring was overwritten by slices). */
  private begun = 0
  private done = false

  constructor(
    private readonly ctx: KvContext,
    private readonly t: TieredKv,
    private readonly shared: PrefillShared,
    n: number,
  ) {
    const { device, config: c, blockTokens: bs } = ctx
    const tables = t.tables
    this.pos0 = t.length
    this.end = this.pos0 + n
    this.base = tables.layers[0].sealed
    this.baseBlock = this.base / bs
    const blocks = Math.ceil(this.end / bs) - this.baseBlock
    const bytes = blocks * tables.blockBytes
    this.layer = {
      k: storageBuffer(device, "layer-major prefill k (prompt blocks, KV, BS, D) f16", bytes),
      v: storageBuffer(device, "layer-major prefill v (prompt blocks, KV, BS, D) f16", bytes),
    }
    this.plan = sliceTokens(this.pos0, this.end, this.base, bs, Math.min(ctx.prefillChunk, ctx.act.slot.size / 4), tables.tailBlocks * bs)
    this.slices = this.plan.map((s) => s.t1 - s.t0)
    const windowKey = windowedPrefillKey(ctx.keys.attnPrefill)
    this.attnLayer = [dispatchOf(device, ctx.pipelines.now(windowKey), [[0, shared.uWindow.buffer], [1, ctx.act.q], [2, this.layer.k], [3, this.layer.v], [4, shared.table], [5, ctx.act.attn], [6, shared.state]], 1, c.numKvHeads)]
    const maxChunks = Math.ceil(blocks / t.slotBlocks) + 1
    this.abstracts = new AbstractJobs(device, ctx.pipelines, c, t.pools.map(() => this.layer.k), t.abstracts.seal, Math.min(maxChunks, t.abstracts.layout.sealSlots), bs, 0)
    const toLayer = (b: number) => b - this.baseBlock
    this.source = {
      buffers: () => this.layer,
      runs: (start, tokens) => [{ block: toLayer(start / bs), blocks: Math.ceil(tokens / bs) }],
      encodeAbstracts: (l, jobs, pass) => this.abstracts.encode(l, jobs.map(({ f, at }) => [toLayer(f.start / bs), f.tokens, at] as const), pass),
    }
    // The prompt's blocks of the block table: identity into `layer`, the same for every layer.
    device.queue.writeBuffer(shared.table, this.baseBlock * 4, Uint32Array.from({ length: blocks }, (_, i) => i))
    tables.extend(n)
    this.hidden = t.recompute.recorder(this.pos0, this.end, ctx.act.x)
  }

  beginSlice(_l: number, i: number): void {
    const { t0, t1 } = this.plan[i]
    const slots = this.shared.slotHost
    const tables = this.t.tables
    for (let t = t0; t < t1; t++) slots[t - t0] = tables.tailSlot(t)
    this.ctx.device.queue.writeBuffer(this.ctx.act.slot, 0, slots.buffer, 0, (t1 - t0) * 4)
  }

  /** The slice's K and V (in the tail ring since the layer's pre) into `layer`; the history in windows; then `layer` up to the slice. */
  async attend(l: number, i: number, step: StepEncoder): Promise<void> {
    const c = this.ctx.config
    const bs = this.ctx.blockTokens
    const { t0, t1, b0 } = this.plan[i]
    const t = this.t
    const pool = t.pools[l]
    const blockBytes = t.tables.blockBytes
    if (i === 0) this.begun = l + 1
    this.hidden?.capture(t0, t1, step)
    step.record((e) => {
      for (const [src, dst] of [[pool.k, this.layer.k], [pool.v, this.layer.v]] as const) {
        let at = (b0 - this.baseBlock) * blockBytes
        for (const r of t.tables.tailRuns(b0 * bs, t1 - b0 * bs)) {
          e.copyBufferToBuffer(src, r.block * blockBytes, dst, at, r.blocks * blockBytes)
          at += r.blocks * blockBytes
        }
      }
    })
    const m = t1 - t0
    const groups = Math.ceil((m * (c.numHeads / c.numKvHeads)) / prefillRowsPerGroup(this.ctx.keys.attnPrefill))
    const scale = 1 / Math.sqrt(c.headDim)
    const u = this.shared.uWindow
    let first = true
    if (t.chunkCount(l) > 0) {
      // Chunks sealed before this prompt: windows of resident chunks, each its own submit.
      step.submit()
      const plan = t.planPrefill(l, this.base)
      for (let w = 0; w < plan.windows.length; w++) {
        const { k0, k1 } = await t.applyPrefillWindow(l, plan, w, this.shared.table)
        if (k1 <= k0) continue
        u.set(m, c.numHeads, c.numKvHeads, bs, t0, scale, k0, k1, first ? FIRST : 0)
        const d = this.shared.attnPool[l]
        d[0].x = groups
        step.encode(d)
        step.submit()
        first = false
      }
    }
    u.set(m, c.numHeads, c.numKvHeads, bs, t0, scale, this.base, 0, (first ? FIRST : 0) | LAST)
    this.attnLayer[0].x = groups
    step.encode(this.attnLayer)
  }

  /** Cuts and seals layer l's chunks from `layer`, puts its unsealed end back into the tail ring, and waits until `layer` may be overwritten. */
  async endLayer(l: number): Promise<void> {
    const t = this.t
    const bs = this.ctx.blockTokens
    const blockBytes = t.tables.blockBytes
    const before = t.chunkCount(l)
    const sealing = t.seal(undefined, { layer: l, source: this.source })
    const sealed = t.tables.layers[l].sealed
    if (sealed < this.end) this.toTail(l, sealed, this.end, blockBytes, bs)
    await Promise.all([sealing, this.hidden?.record(l, before)])
  }

  /** Copies tokens [from, to) (from a block boundary) of layer l from `layer` back to their tail ring blocks. */
  private toTail(l: number, from: number, to: number, blockBytes: number, bs: number): void {
    const pool = this.t.pools[l]
    const encoder = this.ctx.device.createCommandEncoder({ label: "layer-major prefill: tail" })
    for (const [src, dst] of [[this.layer.k, pool.k], [this.layer.v, pool.v]] as const) {
      let at = (from / bs - this.baseBlock) * blockBytes
      for (const r of this.t.tables.tailRuns(from, to - from)) {
        encoder.copyBufferToBuffer(src, at, dst, r.block * blockBytes, r.blocks * blockBytes)
        at += r.blocks * blockBytes
      }
    }
    this.ctx.device.queue.submit([encoder.finish()])
  }

  finish(): void {
    this.done = true
    this.release()
  }

  abort(): void {
    if (this.done) return
    this.done = true
    // The layers begun overwrote their tail ring: put back the tokens [base, pos0) that were there.
    for (let l = 0; l < this.begun; l++) if (this.pos0 > this.base) this.toTail(l, this.base, this.pos0, this.t.tables.blockBytes, this.ctx.blockTokens)
    this.t.rollBack(this.pos0)
    this.release()
  }

  private release(): void {
    this.layer.k.destroy()
    this.layer.v.destroy()
    this.abstracts.destroy()
    this.hidden?.destroy()
  }
}

/**
 * Slices of tokens [pos0, end): at most `most` tokens each, and each with the blocks it
 * copies (from its first block b0, which for the first slice reaches back to the unsealed
 * tokens at `base`) within the tail ring's `ring` tokens, so that the ring never wraps
 * onto what the slice still has to copy.
 */
export const sliceTokens = (pos0: number, end: number, base: number, bs: number, most: number, ring: number): Slice[] => {
  const out: Slice[] = []
  for (let t0 = pos0, b0 = Math.floor(base / bs); t0 < end; ) {
    const t1 = Math.min(end, t0 + most, b0 * bs + ring)
    if (t1 <= t0) throw new RangeError(`layer-major prefill: a tail ring of ${ring} tokens cannot hold a slice from ${t0}`)
    out.push({ t0, t1, b0 })
    t0 = t1
    b0 = Math.floor(t1 / bs)
  }
  return out
}
