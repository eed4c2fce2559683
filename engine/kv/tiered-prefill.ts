// Token-major prefill of the tiered cache, the tiered manager's prefill half: a pass's tokens
// go into the tail ring, and each layer attends every sealed chunk and then the tail in
// windows of resident chunks (each its own submit), the softmax state carried between them.
// With adaptive chunking the pass also measures where attention goes (mass.ts); its chunks
// are cut from that measure at settle. A prompt of several passes goes layer-major
// (tiered-layer-prefill.ts), on this class's attention state and dispatches.
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "../buffers.ts"
import { prefillRowsPerGroup, windowedPrefillKey } from "../model-resources.ts"
import type { KvContext, LayerPrefill, StepEncoder } from "./manager.ts"
import type { TieredKv } from "./tiered/index.ts"
import { PrefillMass } from "./tiered/mass.ts"
import { TieredLayerPrefill } from "./tiered-layer-prefill.ts"

/** Window flags of the windowed prefill attention: the first window starts, the last one writes out. */
const FIRST = 1
const LAST = 2

export class TieredPrefill {
  /** Per layer: [windowed attn_prefill over the block table]. */
  private readonly attnPrefill: Array<Dispatch[]> = []
  private readonly uWindow: Uniform // windowed attn_prefill (M, H, KV, BS, pos0, scale, k0, k1, flags)
  private readonly state: GPUBuffer // (chunk, H, D + 2) f32 prefill softmax state between windows
  private readonly table: GPUBuffer // (blocks) u32 logical -> physical block of the current prefill window
  /** (chunk) u32, host copy of act.slot (decode writes its token's slot through it too). */
  readonly slotHost: Uint32Array
  /** The current prefill pass: tokens, first position, attention workgroups. */
  private pass = { m: 0, pos0: 0, groups: 0 }
  /** Adaptive chunking: the prefill passes' attention measure, and the last pass's masses on their way back (sealed at settle). */
  private readonly mass: PrefillMass | undefined
  private pendingMass: Promise<Float32Array[]> | undefined

  constructor(
    private readonly ctx: KvContext,
    private readonly t: TieredKv,
  ) {
    const { device, config: c, act } = ctx
    this.uWindow = new Uniform(device, "tier attn prefill window", "uuuuufuuuuuu")
    this.state = storageBuffer(device, "prefill attention state (chunk, H, D + 2) f32", ctx.prefillChunk * c.numHeads * (c.headDim + 2) * 4)
    this.table = storageBuffer(device, "tier prefill block table (blocks) u32", Math.ceil(ctx.maxContext / ctx.blockTokens) * 4)
    this.slotHost = new Uint32Array(ctx.prefillChunk)
    this.mass = t.adaptive ? new PrefillMass(device, ctx.pipelines, c, ctx.blockTokens, t.tailBlocks, act.q, t.pools) : undefined
    const windowKey = windowedPrefillKey(ctx.keys.attnPrefill)
    for (const kvl of t.pools) {
      const entries: Array<readonly [number, GPUBuffer]> = [[0, this.uWindow.buffer], [1, act.q], [2, kvl.k], [3, kvl.v], [4, this.table], [5, act.attn], [6, this.state]]
      this.attnPrefill.push([dispatchOf(device, ctx.pipelines.now(windowKey), entries, 1, c.numKvHeads)])
    }
  }

  begin(m: number): void {
    const c = this.ctx.config
    const pos0 = this.t.length
    for (let i = 0; i < m; i++) this.slotHost[i] = this.t.append()
    this.ctx.device.queue.writeBuffer(this.ctx.act.slot, 0, this.slotHost.buffer, 0, m * 4)
    this.pass = { m, pos0, groups: Math.ceil((m * (c.numHeads / c.numKvHeads)) / prefillRowsPerGroup(this.ctx.keys.attnPrefill)) }
  }

  /** Every sealed chunk, then the tail, in windows of resident chunks (each its own submit). */
  async attend(l: number, step: StepEncoder): Promise<void> {
    const c = this.ctx.config
    const { m, pos0, groups } = this.pass
    step.submit()
    this.mass?.encode(l, (d) => step.encode(d), this.pass, this.t.sealedOf(l))
    const plan = this.t.planPrefill(l)
    for (let i = 0; i < plan.windows.length; i++) {
      const { k0, k1, first, last } = await this.t.applyPrefillWindow(l, plan, i, this.table)
      this.uWindow.set(m, c.numHeads, c.numKvHeads, this.t.blockTokens, pos0, 1 / Math.sqrt(c.headDim), k0, k1, (first ? FIRST : 0) | (last ? LAST : 0))
      const d = this.attnPrefill[l]
      d[0].x = groups
      step.encode(d)
      step.submit()
    }
  }

  after(): void {
    // Adaptive chunks are cut from the pass's measure once it is back (settle, before the next pass).
    if (this.mass) {
      this.pendingMass = this.mass.collect()
      this.pendingMass.catch(() => undefined) // awaited by settle
    } else this.t.seal()
  }

  /**
   * Layer-major where the prompt needs more than one pass (token-major ones re-read what earlier
   * ones sealed). Seals come from its layer buffer at 16 bits in fixed chunks (the GPU quantizer
   * and the adaptive measure read the tail ring), so compression and adaptive chunks go token-major.
   */
  layerMajor(n: number): LayerPrefill | undefined {
    const layers = this.t.tables.layers
    if ((this.t.policy.compression ?? 16) !== 16 || this.mass) return undefined
    if (n <= this.t.appendRoom || layers.some((L) => L.sealed !== layers[0].sealed)) return undefined
    const shared = { uWindow: this.uWindow, state: this.state, table: this.table, attnPool: this.attnPrefill, slotHost: this.slotHost }
    return new TieredLayerPrefill(this.ctx, this.t, shared, n)
  }

  /** Seals the last pass's adaptive chunks once its measure is back. */
  async settle(): Promise<void> {
    const mass = this.pendingMass
    this.pendingMass = undefined
    if (mass) this.t.sealAdaptive(await mass)
  }

  /** A pass's measure still on its way belongs to the old sequence (its buffer unmaps when it lands). */
  reset(): void {
    this.pendingMass = undefined
  }

  destroy(): void {
    this.mass?.destroy()
    for (const b of [this.state, this.table, this.uWindow.buffer]) b.destroy()
  }
}
