// Two spans of one request's tier stats added into one: what a lane counted before it was
// moved to another GPU budget share (reshare.ts) and what its new lane counted since, so that
// the reply's `kv` covers the whole request. Counters add up; gauges and settings (budgets,
// residency, layouts, the policy's values) are the later span's, where the lane is now; the
// per-step averages are weighted by each span's steps.
import type { TierStats } from "./stats.ts"

/** Numbers that describe the cache now or its settings, not something counted: the later span's. */
const GAUGES = new Set(["budget_bytes", "resident_bytes", "chunk_tokens", "abstracts", "bytes_stored", "abstract_bytes", "group_chunks", "gpu_slots", "gpu_resident", "depth", "bits", "slot_bits", "layers", "judged"])

const add = (a: unknown, b: unknown, steps: { readonly a: number; readonly b: number }): unknown => {
  if (typeof a === "number" && typeof b === "number") return a + b
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return b
  const into: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(b)) {
    const before = (a as Record<string, unknown>)[k]
    if (before === undefined || GAUGES.has(k)) into[k] = v
    else if (k.endsWith("_per_step") && typeof v === "number" && typeof before === "number") into[k] = steps.a + steps.b > 0 ? (before * steps.a + v * steps.b) / (steps.a + steps.b) : 0
    else into[k] = add(before, v, steps)
  }
  return into
}

/** `earlier` then `later`, one request's stats: counters summed, gauges and settings from `later`. */
export const addTierStats = (earlier: TierStats, later: TierStats): TierStats => add(earlier, later, { a: earlier.steps, b: later.steps }) as TierStats
