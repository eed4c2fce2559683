// The managers that keep all KV in the full manager's paged pool and attend a part of it
// (quest, h2o): the pool, the slots, prefill and the sequence are the full manager's; a
// subclass says how a decode step attends and forgets its per-block state (abstracts,
// masses) whenever the sequence changes under it. Only the subclass's own methods and the
// full manager's change that state.
import { FullKv } from "./full.ts"
import { cannotResume, type KvApplies, type KvContext, type KvManager, type KvStats, type StepEncoder } from "./manager.ts"

export abstract class OverFullKv<P> implements KvManager<P> {
  protected readonly full: FullKv
  /** Decode steps that attended a selection (not every token). */
  protected selectiveSteps = 0

  constructor(protected readonly ctx: KvContext) {
    this.full = new FullKv(ctx)
  }

  get length(): number {
    return this.full.length
  }

  get pools(): FullKv["pools"] {
    return this.full.pools
  }

  get gpuBytes(): number {
    return this.full.gpuBytes
  }

  abstract beginDecode(): void
  abstract attendDecode(l: number, step: StepEncoder): void
  /** A next-step change: the new selection takes effect at the next decode step. */
  abstract swap(next: P): void
  /** The sequence changed under the subclass's per-block state (truncate, reset). */
  protected abstract invalidate(): void
  /** Frees what the subclass allocated (the pool is freed after it). */
  protected abstract destroyOwn(): void

  endDecode(): void {}

  afterDecode(): void {}

  prefillRoom(): number {
    return Number.POSITIVE_INFINITY
  }

  beginPrefill(m: number): void {
    this.full.beginPrefill(m)
  }

  attendPrefill(l: number, step: StepEncoder): void {
    this.full.attendPrefill(l, step)
  }

  afterPrefill(): void {}

  /** Same manager, same pool: every change of its parameters applies at the next step. */
  applies(): KvApplies {
    return "next_step"
  }

  truncate(length: number): void {
    this.full.truncate(length)
    this.invalidate()
  }

  reset(): void {
    this.full.reset()
    this.invalidate()
  }

  settle(): Promise<void> {
    return this.full.settle()
  }

  resume(): number {
    return cannotResume()
  }

  stats(): KvStats {
    return { selectiveSteps: this.selectiveSteps }
  }

  appendSynthetic(tokens: number, fill: (bytes: number, batch: number, from?: number) => void): Promise<void> {
    return this.full.appendSynthetic(tokens, fill)
  }

  destroy(): void {
    this.destroyOwn()
    this.full.destroy()
  }
}
