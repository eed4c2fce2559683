// The gpu-executor's totals since it started and its admin-stats view (the reply schema is
// protocol/internal.ts ExecutorStats). Only the gpu-executor's run handler adds to totals.
import type { KvStats } from "../protocol/messages.ts"
import type { ExecutorStats } from "../protocol/internal.ts"

/** Totals over runs of the per-request KV counters. */
export interface KvTotals {
  /** Decode's hits and misses; prefill windows' apart (TierStats.gpu). */
  gpu: { hits: number; misses: number; prefill_hits: number; prefill_misses: number; bytes_read: number }
  host: { hits: number; misses: number; bytes_read: number; bytes_written: number }
  disk: { hits: number; bytes_read: number; bytes_written: number }
  steps: number
  chunks_sealed: number
  /** Prefetch's loads and what they were worth (KvStats.prefetch). */
  prefetch: { chunks: number; bytes: number; hits: number; misses: number; wasted_bytes: number }
  /** Disk chunks recomputed from hidden records or fetched as K/V, hidden bytes read and written (KvStats.recompute). */
  recompute: { chunks_recomputed: number; chunks_fetched_from_disk: number; hidden_bytes_read: number; hidden_bytes_written: number }
}

/** Everything the executor has done since it started (admin stats). */
export interface ExecutorTotals {
  readonly kv: KvTotals
  /** Decode steps and their wall time; the tiered cache's share of it by phase. */
  decodeSteps: number
  decodeMs: number
  readonly kvMs: { select: number; transfer: number; seal: number; attention: number }
  prefillTokens: number
  prefillMs: number
  /** Sums over the last RECENT_PREFILLS prefills (admin stats' recent prefill throughput). */
  readonly prefillRecent: { runs: number; tokens: number; ms: number }
}

/** How many of the latest prefills the recent throughput covers. */
export const RECENT_PREFILLS = 8

export const emptyTotals = (): ExecutorTotals => ({
  kv: {
    gpu: { hits: 0, misses: 0, prefill_hits: 0, prefill_misses: 0, bytes_read: 0 },
    host: { hits: 0, misses: 0, bytes_read: 0, bytes_written: 0 },
    disk: { hits: 0, bytes_read: 0, bytes_written: 0 },
    steps: 0,
    chunks_sealed: 0,
    prefetch: { chunks: 0, bytes: 0, hits: 0, misses: 0, wasted_bytes: 0 },
    recompute: { chunks_recomputed: 0, chunks_fetched_from_disk: 0, hidden_bytes_read: 0, hidden_bytes_written: 0 },
  },
  decodeSteps: 0,
  decodeMs: 0,
  kvMs: { select: 0, transfer: 0, seal: 0, attention: 0 },
  prefillTokens: 0,
  prefillMs: 0,
  prefillRecent: { runs: 0, tokens: 0, ms: 0 },
})

// The latest prefills of each totals object, oldest first; kept off the wire.
const recentPrefills = new WeakMap<ExecutorTotals, Array<{ tokens: number; ms: number }>>()

/** Adds one prefill (prompt tokens, wall ms) to the totals and to the recent window. */
export const addPrefill = (t: ExecutorTotals, tokens: number, ms: number): void => {
  t.prefillTokens += tokens
  t.prefillMs += ms
  const recent = recentPrefills.get(t) ?? []
  recentPrefills.set(t, recent)
  recent.push({ tokens, ms })
  if (recent.length > RECENT_PREFILLS) recent.shift()
  t.prefillRecent.runs = recent.length
  t.prefillRecent.tokens = recent.reduce((n, p) => n + p.tokens, 0)
  t.prefillRecent.ms = recent.reduce((n, p) => n + p.ms, 0)
}

/** Adds a request's KV counters; phase times only from `atDecode` on (decode steps, not prefill). */
export const addKv = (t: ExecutorTotals, kv: KvStats, atDecode: KvStats["time_ms"] | undefined): void => {
  for (const tier of ["gpu", "host", "disk"] as const) {
    const into = t.kv[tier] as Record<string, number>
    const from = kv[tier] as Record<string, number>
    for (const k of Object.keys(into)) into[k] += from[k] ?? 0
  }
  t.kv.steps += kv.steps
  t.kv.chunks_sealed += kv.chunks_sealed
  const p = t.kv.prefetch
  if (kv.prefetch) for (const k of Object.keys(p) as Array<keyof typeof p>) p[k] += kv.prefetch[k]
  const r = t.kv.recompute
  if (kv.recompute) for (const k of Object.keys(r) as Array<keyof typeof r>) r[k] += kv.recompute[k]
  for (const k of Object.keys(t.kvMs) as Array<keyof ExecutorTotals["kvMs"]>) t.kvMs[k] += kv.time_ms[k] - (atDecode?.[k] ?? kv.time_ms[k])
}

/** What the admin stats need of the executor's state. */
export interface StatsSource {
  readonly policy: { readonly name: string; readonly active: number; readonly pending: number | undefined }
  readonly tiers: KvStats | undefined
  /** GPU bytes of KV when not tiered (all of it on the GPU). */
  readonly gpuResidentBytes: number
  readonly gpuBudgetBytes: number | undefined
  readonly runs: number
  readonly tokens: number
  readonly current: string | undefined
  readonly totals: ExecutorTotals
  /** The continuous batch (--max-batch above 1). */
  readonly batch?: ExecutorStats["batch"]
}

/** The executor's view for admin stats: residency and budgets, totals, the policy versions. */
export const executorStats = (s: StatsSource): ExecutorStats => {
  const kv = s.tiers
  return {
    policy: { name: s.policy.name, active_version: s.policy.active, pending_version: s.policy.pending ?? null },
    gpu: kv ? { budget_bytes: kv.gpu.budget_bytes, resident_bytes: kv.gpu.resident_bytes } : { budget_bytes: s.gpuBudgetBytes ?? null, resident_bytes: s.gpuResidentBytes },
    ...(kv ? { host: { budget_bytes: kv.host.budget_bytes, resident_bytes: kv.host.resident_bytes } } : {}),
    ...(kv?.abstract_bytes ? { abstract_bytes: kv.abstract_bytes } : {}),
    runs: s.runs,
    tokens: s.tokens,
    current_run: s.current ?? null,
    totals: s.totals,
    ...(s.batch ? { batch: s.batch } : {}),
  }
}
