// From a resolved KV policy and the tier budgets to the engine options that implement it:
// `full` and `quest` keep all KV on the GPU (quest attends top-k pages of it), `h2o` keeps
// all KV on the GPU and evicts from the attended set, `offload-all` and `leoam` use the
// tiered cache (GPU budget, host arena, disk). The GPU budget binds every policy: one that
// keeps all KV on the GPU refuses a context whose KV does not fit in it.
import type { DiskStore } from "../kv/disk-store.ts"
import type { HostArena } from "../kv/host-arena.ts"
import { evictionPolicies } from "../kv/eviction.ts"
import type { ModelConfig } from "../models/types.ts"
import type { ResolvedPolicy } from "../protocol/policy.ts"
import type { EngineOptions } from "./model.ts"
import { KvBudgetError } from "./tiered.ts"

export interface KvTiers {
  /** GPU bytes for KV (pools, staging); undefined: no limit. */
  readonly gpuBudgetBytes?: number
  /** Needed by the tiered policies. */
  readonly arena?: HostArena
  readonly store?: DiskStore
  /** Key prefix of this model's chunks in the host arena and LMDB. */
  readonly session: string
}

/** KV bytes per token of a model (all layers, K and V, f16). */
export const kvBytesPerToken = (c: ModelConfig): number => c.numLayers * 2 * c.numKvHeads * c.headDim * 2

export const isTiered = (policy: ResolvedPolicy): boolean => policy.name === "leoam" || policy.name === "offload-all"

/** The engine options of a policy for a model allocated `maxContext` tokens. */
export const kvEngineOptions = (
  policy: ResolvedPolicy,
  tiers: KvTiers,
  config: ModelConfig,
  maxContext: number,
): Pick<EngineOptions, "sparse" | "tiered" | "h2o"> => {
  const selection = { budgetTokens: policy.budgetTokens, budgetFraction: policy.budgetFraction, sinkTokens: policy.sinkTokens, recentTokens: policy.recentTokens }
  if (!isTiered(policy)) {
    const need = maxContext * kvBytesPerToken(config)
    if (tiers.gpuBudgetBytes !== undefined && need > tiers.gpuBudgetBytes) {
      throw new KvBudgetError(
        `policy ${policy.name} keeps all KV on the GPU: ${maxContext} tokens need ${need} bytes (${(need / 2 ** 20).toFixed(1)} MiB), ` +
          `more than --gpu-kv-budget ${tiers.gpuBudgetBytes}; use leoam or offload-all, or a shorter --max-context`,
      )
    }
    if (policy.name === "quest") return { sparse: selection }
    if (policy.name === "h2o") return { h2o: selection }
    return {}
  }
  if (!tiers.arena || !tiers.store) throw new Error(`policy ${policy.name} needs the host arena and the disk store`)
  // Without a budget the GPU may hold the whole context (plus staging): tiers still persist it.
  const gpuBudgetBytes = tiers.gpuBudgetBytes ?? maxContext * kvBytesPerToken(config) * 2 + 256 * 2 ** 20
  return {
    tiered: {
      policy: { mode: policy.name === "offload-all" ? "offload-all" : "leoam", chunkTokens: policy.chunkTokens, ...selection, gpuEviction: evictionPolicies[policy.eviction], hostEviction: evictionPolicies[policy.eviction] },
      stores: { gpuBudgetBytes, arena: tiers.arena, store: tiers.store, session: tiers.session },
    },
  }
}
