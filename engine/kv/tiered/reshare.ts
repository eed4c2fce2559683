// A running tiered lane moved to another GPU budget share between two decode steps (issue 14
// §1: the batch's GPU budget is re-shared when a request arrives while the lanes running hold
// it). WebGPU buffers cannot shrink, and the lane's pools are bound into its program, so the
// lane is rebuilt: a sibling on the same weights whose TieredKv has the new share's layout
// and takes over the old one's host and disk side (its TierIo: session, host entries, links).
// The sequence goes over as the tiers hold it: the sealed chunks and their abstracts are
// adopted from LMDB (as a resumed session), the unsealed tail and the GPU's sampled token ids
// are read back and written into the new pools (the same bytes, so the next step computes
// what it would have), and the chunks the old GPU cache held are loaded again, as many as the
// new cache holds, those its eviction policy would keep first. The old lane is destroyed
// before the new one is built, so the two never hold GPU memory at once: the budget stays
// whole while a share shrinks. What the lane counted before the move is kept beside the new
// lane (laneTierStats adds it), so that the reply's `kv` covers the whole request.
import type { GpuModel } from "../../model.ts"
import { TieredManager } from "../tiered-manager.ts"
import { KvBudgetError } from "../../../kv/tier-errors.ts"
import { slotBitsOf, tieredLayout, type TierStores } from "./layout.ts"
import type { TieredKv } from "./tiered-kv.ts"
import type { TierStats } from "./stats.ts"
import { addTierStats } from "./stats-sum.ts"

// Per moved lane, what its earlier lanes counted (before each move, summed).
const earlier = new WeakMap<GpuModel, TierStats>()

/** A lane's tier stats over its request: its own since it was built, plus what the lanes it was moved from counted. */
export const laneTierStats = (lane: GpuModel): TierStats | undefined => {
  const now = lane.tierStats()
  const before = earlier.get(lane)
  return now && before ? addTierStats(before, now) : now
}

/** What a lane of this cache must carry over, read before the cache goes: the tail's blocks and the token ids. */
interface Carried {
  readonly sealed: number
  readonly tokens: number
  /** Per layer, K then V, the tail's blocks from the first unsealed one, then the token id ring. */
  readonly bytes: Uint8Array
  readonly blocks: number
  /** Per layer, the resident chunks in the order the policy keeps them (last evicted first). */
  readonly residents: number[][]
}

/**
 * Moves `lane` (a sibling of `main` with a tiered KV manager, between decode steps) to a
 * TieredKv of `stores.gpuBudgetBytes`; resolves to the new lane, the old one destroyed, or to
 * undefined with nothing changed where it cannot move: not tiered, a share below the lane's
 * minimum, or layers sealed to different lengths (adaptive chunks mid-cut).
 */
export const moveLane = async (main: GpuModel, lane: GpuModel, stores: Omit<TierStores, "io">): Promise<GpuModel | undefined> => {
  if (!(lane.kv instanceof TieredManager)) return undefined
  const old = lane.kv.t
  const sizes = { blockTokens: main.blockTokens, maxContext: lane.maxContext, prefillChunk: lane.prefillChunk }
  try {
    tieredLayout(lane.config, old.policy, stores, sizes)
  } catch (e) {
    if (e instanceof KvBudgetError) return undefined
    throw e
  }
  await lane.settle()
  const sealed = old.tables.layers.map((L) => L.sealed)
  if (sealed.some((s) => s !== sealed[0])) return undefined
  const carried = await readCarried(lane, old, sealed[0] ?? 0)
  const counted = laneTierStats(lane)
  const spec = { kind: "tiered" as const, policy: old.policy, stores: { ...stores, io: old.io } }
  lane.destroy()
  let next: GpuModel | undefined
  try {
    next = await main.sibling({ maxContext: lane.maxContext, kv: spec })
    await restore(next, carried)
    if (counted) earlier.set(next, counted)
    return next
  } catch (e) {
    next?.destroy()
    throw new LaneLost(e)
  }
}

/** A move failed after the old lane was destroyed: the sequence is gone (its chunks stay in the tiers under its session). */
export class LaneLost extends Error {
  constructor(readonly reason: unknown) {
    super(`a tiered lane moved to another GPU budget share was lost: ${(reason as Error)?.message ?? reason}`)
  }
}

/** Reads back the tail's blocks and the token ids, and ranks the resident chunks by the GPU cache's policy. */
const readCarried = async (lane: GpuModel, t: TieredKv, sealed: number): Promise<Carried> => {
  const device = lane.gpu.device
  const T = t.tables
  const bs = t.blockTokens
  const b0 = sealed / bs
  const blocks = Math.ceil(T.tokens / bs) - b0
  const bb = T.blockBytes
  const idBytes = lane.tokenIds.size
  const size = t.pools.length * 2 * blocks * bb + idBytes
  const read = device.createBuffer({ label: "moved lane's tail read-back", size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  try {
    const e = device.createCommandEncoder({ label: "moved lane's tail read-back" })
    t.pools.forEach((p, l) => {
      for (let j = 0; j < blocks; j++) {
        const at = (l * 2 * blocks + j) * bb
        e.copyBufferToBuffer(p.k, T.tailBlock(b0 + j) * bb, read, at, bb)
        e.copyBufferToBuffer(p.v, T.tailBlock(b0 + j) * bb, read, at + blocks * bb, bb)
      }
    })
    e.copyBufferToBuffer(lane.tokenIds, 0, read, size - idBytes, idBytes)
    device.queue.submit([e.finish()])
    await read.mapAsync(GPUMapMode.READ)
    const bytes = new Uint8Array(read.getMappedRange().slice(0))
    read.unmap()
    const eviction = t.policy.gpuEviction
    const residents = t.pools.map((_, l) => {
      const entries = t.cache.residents(l)
      // The policy's eviction order over all of them: what it would evict last is kept first.
      const order = entries.length > 0 ? (eviction.select(entries, entries.reduce((n, x) => n + x.length, 0), new Set()) ?? []) : []
      return order.map(Number).reverse()
    })
    return { sealed, tokens: T.tokens, bytes, blocks, residents }
  } finally {
    read.destroy()
  }
}

/** Gives the new lane the sequence: adopted sealed chunks, the tail and ids written back, the kept residents loaded. */
const restore = async (next: GpuModel, c: Carried): Promise<void> => {
  if (!(next.kv instanceof TieredManager)) throw new RangeError("a moved lane lost its tiered KV manager")
  const t = next.kv.t
  const length = next.resume()
  if (length !== c.sealed) throw new RangeError(`a moved lane adopted ${length} sealed tokens, it had ${c.sealed}`)
  for (let i = c.sealed; i < c.tokens; i++) t.append()
  const queue = next.gpu.device.queue
  const bb = t.tables.blockBytes
  const b0 = c.sealed / t.blockTokens
  t.pools.forEach((p, l) => {
    for (let j = 0; j < c.blocks; j++) {
      const at = (l * 2 * c.blocks + j) * bb
      queue.writeBuffer(p.k, t.tables.tailBlock(b0 + j) * bb, c.bytes, at, bb)
      queue.writeBuffer(p.v, t.tables.tailBlock(b0 + j) * bb, c.bytes, at + c.blocks * bb, bb)
    }
  })
  const idBytes = next.tokenIds.size
  queue.writeBuffer(next.tokenIds, 0, c.bytes, c.bytes.length - idBytes, idBytes)
  // Compressed decode slots are filled at the switch from prefill's (they empty then): nothing to load here.
  if (slotBitsOf(t.policy) !== 16) return
  for (let l = 0; l < c.residents.length; l++) {
    const keep = c.residents[l].slice(0, t.cacheSlots)
    if (keep.length > 0) await t.prefetch(l, keep, [])
  }
}
