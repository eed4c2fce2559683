// The grouped choice (issue 13 §4): with group abstracts, a decode step scores layer l's
// groups first and reads back the ones it keeps (a few bytes), makes the abstracts of their
// chunks resident (budgeted: uploaded from LMDB), then scores only those chunks and selects
// as the plain pass does, into the same selection buffer. A group's bound is the largest of its
// chunks' bounds, so a chunk is skipped only where whole groups bound higher. It costs a
// second host round trip per layer; it saves scoring, and (budgeted) GPU memory. A pipelined
// step (every abstract resident) lists the kept groups' chunks on the GPU instead
// (encodeOnGpu): the same candidates, no read-back between the two passes. Owns the kept
// groups' read-back buffer; the manager reads the final choice as before.
import { traceSpan } from "../../../kv/step-trace.ts"
import type { StepEncoder } from "../manager.ts"
import { groupsKept } from "./abstract-layout.ts"
import type { AbstractCache } from "./abstract-cache.ts"
import type { Router } from "./route.ts"
import type { ChoicePlan, Selector } from "./select.ts"
import type { TierCounters } from "./stats.ts"

export class GroupedChoice {
  /** (groups) vec2<u32> MAP_READ copy of the groups kept. */
  private readonly read: GPUBuffer

  constructor(
    device: GPUDevice,
    private readonly selector: Selector,
    private readonly cache: AbstractCache,
  ) {
    this.read = device.createBuffer({ label: "groups kept read-back", size: Math.max(16, cache.layout.groups * 8), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  }

  /** The groups holding the plan's scored chunks [S, n - R), and how many of them a step keeps. */
  groupsOf(plan: ChoicePlan): { readonly g0: number; readonly g1: number; readonly keep: number } {
    const { n, S, R, K } = plan
    const size = this.cache.layout.groupChunks
    const g0 = Math.floor(S / size)
    const g1 = Math.max(g0, Math.ceil((n - R) / size))
    // Budgeted: no more than the abstract slots hold at once (a budget raised live past the layout's is clamped here).
    const most = this.cache.layout.resident === "budgeted" ? Math.max(1, Math.floor(this.cache.layout.slots / size)) : Number.POSITIVE_INFINITY
    return { g0, g1, keep: Math.min(most, groupsKept(K, size)) }
  }

  /** Whether layer l's choice needs this path: groups to skip, or abstracts that are not all resident. */
  needed(plan: ChoicePlan): boolean {
    const { g0, g1, keep } = this.groupsOf(plan)
    return this.cache.layout.resident === "budgeted" || g1 - g0 > keep
  }

  /**
   * Encodes layer l's choice into the selector's selection: where there are more groups than
   * it keeps, the groups' scoring is submitted first and the host waits for the ones kept.
   * Returns how many chunks it chooses.
   */
  async encode(l: number, step: StepEncoder, plan: ChoicePlan, counters: TierCounters): Promise<number> {
    const { n, S, R } = plan
    const size = this.cache.layout.groupChunks
    const { g0, g1, keep } = this.groupsOf(plan)
    let groups: number[]
    if (g1 - g0 > keep) {
      step.compute((pass) => this.selector.encodeGroups(l, pass, g0, g1, keep))
      step.record((encoder) => encoder.copyBufferToBuffer(this.selector.groupSelection!, 0, this.read, 0, keep * 8))
      step.submit()
      const t0 = performance.now()
      groups = await this.readGroups(keep)
      traceSpan("choice wait", t0, l) // the groups kept: the first of the layer's two waits
      counters.selectMs += performance.now() - t0
      groups.sort((a, b) => a - b)
      counters.groupsScored += g1 - g0
    } else groups = Array.from({ length: g1 - g0 }, (_, i) => g0 + i)
    const mids: number[] = []
    for (const g of groups) for (let ch = Math.max(S, g * size); ch < Math.min(n - R, (g + 1) * size); ch++) mids.push(ch)
    const fetched = this.cache.fetched
    const slots = this.cache.slotsOf(l, mids)
    counters.abstractFetches += this.cache.fetched - fetched
    counters.chunksScored += mids.length
    let count = 0
    step.compute((pass) => (count = this.selector.encodeCandidates(l, pass, plan, mids, slots)))
    return count
  }

  /**
   * Pipelined: encodes layer l's grouped choice into this pass with no host in between (groups
   * scored and kept, their chunks listed, scored and selected on the GPU), the count of chunks
   * scored going back with the choice (router.reads). Returns how many chunks it chooses at
   * most, or -1, encoding nothing, where only the host can choose: budgeted abstracts (fetched
   * from LMDB by the host), or a choice the route cannot hold (the unpipelined path reads it).
   */
  encodeOnGpu(l: number, pass: GPUComputePassEncoder, plan: ChoicePlan, router: Router, counters: TierCounters): number {
    const count = Math.min(plan.n, plan.S + plan.R + plan.K)
    if (this.cache.layout.resident !== "all" || !router.canRoute(l, count)) return -1
    const groups = this.groupsOf(plan)
    router.reads.scored = this.selector.encodeGroupsOnGpu(l, pass, plan, { ...groups, size: this.cache.layout.groupChunks })
    counters.groupsScored += groups.g1 - groups.g0
    return count
  }

  private async readGroups(count: number): Promise<number[]> {
    await this.read.mapAsync(GPUMapMode.READ, 0, count * 8)
    const view = new Uint32Array(this.read.getMappedRange(0, count * 8))
    const out = Array.from({ length: count }, (_, i) => view[2 * i])
    this.read.unmap()
    return out
  }

  destroy(): void {
    this.read.destroy()
  }
}
