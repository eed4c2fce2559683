// The seals of a tiered cache in order: each seal's chunks get their bits (the compression
// setting at seal time, or per chunk by importance) and go to the Sealer in batches of what its
// abstract scratch holds, each batch once the one before has queued its read-backs (they read
// the scratch). A seal starts at once unless a batch is still queueing, as seals did before
// batches. TieredKv owns it; reset() forgets the importance history and the seals in flight.
import { SealBits } from "../../../kv/quant-policy.ts"
import type { FreshChunk } from "./chunks.ts"
import type { TieredPolicy } from "./layout.ts"
import type { Admit, Sealer, SealSource } from "./seal.ts"
import type { TierCounters } from "./stats.ts"

export class SealQueue {
  /** The bits of each chunk sealed under `compression: "importance"`. */
  private readonly sealBits = new SealBits()
  /** The last batch, until it has queued its read-backs. */
  private last: Promise<void> | undefined

  constructor(private readonly sealer: Sealer) {}

  /** Seals `fresh` under `policy` (admitted to the GPU cache by `admit`), from `source` (default: the tail ring). Resolves once every read-back is queued. */
  seal(fresh: ReadonlyArray<FreshChunk>, policy: TieredPolicy, counters: TierCounters, admit: Admit, source?: SealSource): Promise<void> {
    // The setting at seal time holds for these chunks, whatever the policy is when their read-back lands.
    const setting = policy.compression ?? 16
    const sink = policy.sinkTokens
    const bitsOf = (f: { layer: number; start: number }, abstract: Uint8Array) => {
      const bits = this.sealBits.bitsFor(setting, f.layer, f.start, sink, abstract)
      if (bits === 16) counters.sealedF16++
      else if (bits === 8) counters.sealedInt8++
      else counters.sealedInt4++
      return bits
    }
    const most = this.sealer.maxChunks
    const run = (i: number) => () => this.sealer.seal(fresh.slice(i, i + most), admit, counters, setting, bitsOf, source)
    let chain = this.last ? this.last.then(run(0)) : run(0)()
    for (let i = most; i < fresh.length; i += most) chain = chain.then(run(i))
    const last = chain
    const done = () => void (this.last === last && (this.last = undefined))
    this.last = last
    last.then(done, done)
    return last
  }

  /** Waits for the host and disk copies of every seal so far. */
  async settle(counters: TierCounters): Promise<void> {
    await this.last
    return this.sealer.settle(counters)
  }

  reset(): void {
    this.sealer.reset()
    this.sealBits.reset()
  }
}
