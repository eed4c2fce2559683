// Hand-off of a shared prefix between requests that do not run at the same time. Under a GPU
// budget a request that arrives while another runs may wait for KV room until that one ends
// (a lone tiered lane holds the whole budget), and then the running request's chunks, which
// it would have linked, are gone. So a lane that ends while a pending request begins like it
// leaves its prompt's sealed chunks under a hold (a sequence of its own in the disk store and
// the prefix index, linking the same bytes) until each such request has taken its prefix at
// its first prefill turn, or ended. Holds are in-process only: one left by a crash is
// reclaimed with the other unrecorded sequences at the next start.
import type { DiskStore } from "./disk-store.ts"
import type { PrefixIndex } from "./prefix-index.ts"

export class PrefixHolds {
  /** Prompt chunk keys of the requests not yet at their first prefill turn, by run id. */
  private readonly pending = new Map<string, ReadonlyArray<string>>()
  /** Each hold's sequence and the pending runs it is kept for. */
  private readonly holds = new Map<string, Set<string>>()

  constructor(
    private readonly index: PrefixIndex,
    private readonly store: DiskStore,
  ) {}

  /** Run `runId` will look for a shared prefix of these keys at its first prefill turn. */
  wait(runId: string, keys: ReadonlyArray<string>): void {
    if (keys.length > 0) this.pending.set(runId, keys)
  }

  /** Run `runId` has taken its prefix (or ended): the holds kept only for it go. */
  settle(runId: string): void {
    this.pending.delete(runId)
    for (const [hold, runs] of this.holds) {
      if (!runs.delete(runId) || runs.size > 0) continue
      this.holds.delete(hold)
      this.index.remove(hold)
      this.store.dropSession(hold)
    }
  }

  /**
   * Sequence `session` (a lane, of run `except`) ends: when pending runs begin like its prompt
   * (its keys in the index), its sealed prompt chunks (whole in every layer) stay under a hold
   * for them.
   * Returns the hold's id, or undefined when none is needed.
   */
  holdFor(session: string, layers: number, except?: string): string | undefined {
    const keys = this.index.keysOf(session)
    const runs = [...this.pending].filter(([id, k]) => id !== except && k[0] === keys[0]).map(([id]) => id)
    if (keys.length === 0 || runs.length === 0) return undefined
    let chunks = keys.length
    for (let l = 0; l < layers && chunks > 0; l++) chunks = Math.min(chunks, this.store.chunksOf(session, l).length)
    if (chunks === 0) return undefined
    const hold = `${session}-held`
    this.store.linkChunks(session, hold, Array.from({ length: layers }, () => chunks))
    this.index.add(hold, keys.slice(0, chunks))
    this.holds.set(hold, new Set(runs))
    return hold
  }

  /** Holds kept now (for stats and tests). */
  get size(): number {
    return this.holds.size
  }
}
