// Re-sharing the GPU budget among the tiered lanes running (issue 14 §1: requests join at step
// boundaries; the GPU budget is shared by the batch). A tiered lane's share is fixed when it
// is built (actors/kv-admission.ts), so a lone request holds the whole budget; without this a
// request arriving while it runs waits until it ends. At each step boundary of the batch loop:
// - a run waits for budget alone (KvAdmission.blockedShare): the plain runs' lanes that are
//   decoding give back what an equal split of their shares and the free bytes among them and
//   the newcomer leaves them, each moved to its smaller share (engine/kv/tiered/reshare.ts:
//   GPU cache evicted by its policy down to the new size, pools reallocated), and admission
//   grants the freed bytes to the newcomer; only where every lane keeps its minimum (sink,
//   recent, one chosen chunk, the tail, staging) and the newcomer gets its own, else the
//   newcomer waits as before;
// - no run waits and a lane's worth of the budget is free (a lane ended): those lanes grow
//   back to an equal split of it.
// Session runs keep their share (their callers hold the lane between calls). The loop is
// between steps meanwhile, so the other lanes do not step while one moves.
import type { BatchLoop } from "../engine/batch-loop.ts"
import type { TierStores } from "../engine/kv/tiered/index.ts"
import { LaneLost, moveLane } from "../engine/kv/tiered/reshare.ts"
import type { GpuModel } from "../engine/model.ts"
import type { KvAdmission } from "./kv-admission.ts"

/** A lane that may move: its session (its cache's scratch key) and the least share it accepts. */
interface Movable {
  readonly session: string
  readonly minBytes: number
}

export interface ReshareDeps {
  readonly admission: KvAdmission
  /** GPU shares of the tiered lanes running, by run id (this module changes those it moves). */
  readonly shares: Map<string, number>
  /** The lanes by run id (this module replaces those it moves). */
  readonly lanes: Map<string, GpuModel>
  readonly main: () => GpuModel
  readonly loop: () => BatchLoop | undefined
  /** The tiers a moved lane's cache is built on, at `share` bytes under its `session`. */
  readonly stores: (share: number, session: string) => Omit<TierStores, "io">
}

export class LaneReshare {
  private readonly movable = new Map<string, Movable>()
  private readonly lost = new Set<string>()
  /** Lanes moved to a smaller share (for a newcomer) and to a larger one (after a lane ended), since start. */
  shrunk = 0
  grown = 0
  /** Milliseconds the moves took (the batch's steps wait meanwhile). */
  ms = 0

  constructor(private readonly deps: ReshareDeps) {}

  /** Run `runId`'s lane may move while it decodes. */
  add(runId: string, lane: Movable): void {
    this.movable.set(runId, lane)
  }

  /** The run ended; true when its lane was lost in a move (it was destroyed then: nothing to reset). */
  remove(runId: string): boolean {
    this.movable.delete(runId)
    return this.lost.delete(runId)
  }

  /** Whether a boundary has lanes to move now (the loop then encodes no step ahead of it). */
  wanted(): boolean {
    return this.plan() !== undefined
  }

  /** At a step boundary: shrinks lanes for a run waiting for budget, else grows them into a free lane's worth. */
  async atBoundary(): Promise<void> {
    const plan = this.plan()
    const loop = this.deps.loop()
    if (!plan || !loop) return
    for (const [id, l] of plan.lanes) {
      const share = this.deps.shares.get(id)!
      if (plan.shrink ? share > plan.target : share < plan.target) await this.move(loop, id, l, plan.target)
    }
  }

  /** The lanes to move and the share they move to, or undefined where none should. */
  private plan(): { readonly lanes: Array<[string, Movable]>; readonly target: number; readonly shrink: boolean } | undefined {
    const { admission } = this.deps
    const budget = admission.budgetBytes
    const loop = this.deps.loop()
    if (budget === undefined || !loop) return undefined
    const lanes = [...this.movable].filter(([id]) => this.deps.shares.has(id) && loop.isDecoding(this.deps.lanes.get(id)!))
    if (lanes.length === 0) return undefined
    const held = lanes.reduce((n, [id]) => n + this.deps.shares.get(id)!, 0)
    const free = budget - admission.stats.reservedBytes
    const ask = admission.blockedShare
    if (ask !== undefined) {
      const target = Math.floor((free + held) / (lanes.length + 1))
      if (target < ask || lanes.some(([, l]) => target < l.minBytes)) return undefined
      const moving = lanes.filter(([id]) => this.deps.shares.get(id)! > target)
      return moving.length > 0 ? { lanes: moving, target, shrink: true } : undefined
    }
    if (admission.stats.waiting > 0 || free < Math.min(...lanes.map(([, l]) => l.minBytes))) return undefined
    const target = Math.floor((free + held) / lanes.length)
    const moving = lanes.filter(([id]) => this.deps.shares.get(id)! < target)
    return moving.length > 0 ? { lanes: moving, target, shrink: false } : undefined
  }

  private async move(loop: BatchLoop, id: string, l: Movable, to: number): Promise<void> {
    const { shares, lanes, admission } = this.deps
    const lane = lanes.get(id)!
    const from = shares.get(id)!
    let next: GpuModel | undefined
    const t0 = performance.now()
    try {
      next = await moveLane(this.deps.main(), lane, this.deps.stores(to, l.session))
    } catch (e) {
      if (e instanceof LaneLost) this.lost.add(id)
      this.movable.delete(id)
      loop.lose(lane, e)
      return
    }
    if (!next) return
    this.ms += performance.now() - t0
    loop.replace(lane, next)
    lanes.set(id, next)
    shares.set(id, to)
    if (to < from) this.shrunk++
    else this.grown++
    admission.resize(from, to)
  }
}
