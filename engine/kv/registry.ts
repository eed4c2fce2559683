// The registry of KV managers: the one place that switches on policy and manager names.
// From a resolved policy (protocol/policy.ts) and the tiers (GPU budget, host arena, disk
// store, session) to a manager spec (`kvEngineOptions`); from a spec to what the model
// needs before building its manager (pipelines, attention partials, a layout check) and to
// the manager itself (`kvKindOf`). `full` and `quest` keep all KV on the GPU (quest attends
// top-k pages of it), `h2o` keeps all KV on the GPU and evicts from the attended set,
// `offload-all` and `leoam` use the tiered cache. The GPU budget binds every policy: one
// that keeps all KV on the GPU refuses a context whose KV does not fit in it.
import type { DiskStore } from "../../kv/disk-store.ts"
import { evictionPolicies } from "../../kv/eviction.ts"
import type { HostArena } from "../../kv/host-arena.ts"
import type { ModelConfig } from "../../models/types.ts"
import type { ResolvedPolicy } from "../../protocol/policy.ts"
import { ATTN_TILE } from "./pool.ts"
import { attnDecodeKey, windowedPrefillKey } from "../model-resources.ts"
import type { PipelineKey } from "../pipelines.ts"
import type { SparsePolicy } from "../sparse.ts"
import { chunkMassKey } from "./tiered/mass.ts"
import { KvBudgetError, quantizeKey, TIER_PARTIALS, tieredDecodeKey, tieredLayout, tieredMinimumBytes, tieredPipelineKeys, type TieredPolicy, type TierPeers, type TierStores } from "./tiered/index.ts"
import { FullKv } from "./full.ts"
import { H2oKv, type H2oPolicy, h2oPipelineKeys } from "./h2o.ts"
import type { KvApplies, KvContext, KvManager } from "./manager.ts"
import { QuestKv, sparsePipelineKeys } from "./quest.ts"
import { TieredManager } from "./tiered-manager.ts"

/** Which manager, with its policy: what the engine options carry. */
export type KvSpec =
  | { readonly kind: "full" }
  | { readonly kind: "quest"; readonly policy: SparsePolicy }
  | { readonly kind: "h2o"; readonly policy: H2oPolicy }
  | { readonly kind: "tiered"; readonly policy: TieredPolicy; readonly stores: TierStores }

export const fullKv: KvSpec = { kind: "full" }

export interface KvTiers {
  /** GPU bytes for KV (pools, staging); undefined: no limit. */
  readonly gpuBudgetBytes?: number
  /** Needed by the tiered policies. */
  readonly arena?: HostArena
  readonly store?: DiskStore
  /** Key prefix of this model's chunks in the host arena and LMDB. */
  readonly session: string
  /** The node's tiered lanes (device copies of shared prefix chunks between them). */
  readonly peers?: TierPeers
}

/** KV bytes per token of a model (all layers, K and V, f16). */
export const kvBytesPerToken = (c: ModelConfig): number => c.numLayers * 2 * c.numKvHeads * c.headDim * 2

/** Whether a policy keeps KV on host and disk (it then needs the host arena and the disk store). */
export const isTiered = (policy: ResolvedPolicy): boolean => policy.name === "leoam" || policy.name === "offload-all"

/** The engine options of a policy for a model allocated `maxContext` tokens. */
export const kvEngineOptions = (policy: ResolvedPolicy, tiers: KvTiers, config: ModelConfig, maxContext: number): { readonly kv: KvSpec } => {
  const selection = { budgetTokens: policy.budgetTokens, budgetFraction: policy.budgetFraction, sinkTokens: policy.sinkTokens, recentTokens: policy.recentTokens }
  if (!isTiered(policy)) {
    const need = maxContext * kvBytesPerToken(config)
    if (tiers.gpuBudgetBytes !== undefined && need > tiers.gpuBudgetBytes) {
      throw new KvBudgetError(
        `policy ${policy.name} keeps all KV on the GPU: ${maxContext} tokens need ${need} bytes (${(need / 2 ** 20).toFixed(1)} MiB), ` +
          `more than --gpu-kv-budget ${tiers.gpuBudgetBytes}; use leoam or offload-all, or a shorter --max-context`,
      )
    }
    if (policy.name === "quest") return { kv: { kind: "quest", policy: selection } }
    if (policy.name === "h2o") return { kv: { kind: "h2o", policy: selection } }
    return { kv: fullKv }
  }
  if (!tiers.arena || !tiers.store) throw new Error(`policy ${policy.name} needs the host arena and the disk store`)
  // Without a budget the GPU may hold the whole context (plus staging): tiers still persist it.
  const gpuBudgetBytes = tiers.gpuBudgetBytes ?? maxContext * kvBytesPerToken(config) * 2 + 256 * 2 ** 20
  const eviction = evictionPolicies[policy.eviction]
  return {
    kv: {
      kind: "tiered",
      policy: { mode: policy.name === "offload-all" ? "offload-all" : "leoam", chunkTokens: policy.chunkTokens, chunkMinTokens: policy.chunkMinTokens, ...selection, gpuEviction: eviction, hostEviction: eviction, compression: policy.compression, pipelineDepth: policy.pipelineDepth, pipelineCombine: policy.pipelineCombine, prefetchLayers: policy.prefetchLayers, prefetchFrom: policy.prefetchFrom, prefetchSteps: policy.prefetchSteps, prefetchAdaptive: policy.prefetchAdaptive, prefetchProbeSteps: policy.prefetchProbeSteps, abstracts: { resident: policy.abstractsResident, groupChunks: policy.groupChunks }, recompute: policy.recompute },
      stores: { gpuBudgetBytes, arena: tiers.arena, store: tiers.store, session: tiers.session, peers: tiers.peers },
    },
  }
}

/** The sizes a manager is laid out for. */
export interface KvSizes {
  readonly blockTokens: number
  readonly maxContext: number
  readonly prefillChunk: number
}

/** The least GPU budget a spec's manager accepts (a tiered one; the others need their context's KV, counted by the caller). */
export const kvMinimumBytes = (spec: KvSpec, c: ModelConfig, sizes: KvSizes): number =>
  spec.kind === "tiered" ? tieredMinimumBytes(c, spec.policy, spec.stores.arena, sizes) : 0

/** What the model needs of a spec's manager before it builds it, and the build. */
export interface KvKind {
  /** Pipelines the manager needs besides the model's own (prewarmed before `create`). */
  readonly pipelineKeys: ReadonlyArray<PipelineKey>
  /** Decode attention partials per head the manager writes (the size of the partials activations). */
  readonly partials: number
  /** Throws KvBudgetError when the manager's layout does not fit its budget. */
  readonly checkFits: () => void
  readonly create: (ctx: KvContext) => KvManager
}

export const kvKindOf = (spec: KvSpec, c: ModelConfig, sizes: KvSizes, attnPrefill: PipelineKey): KvKind => {
  // One decode-attention split per tile of the whole context (the full list's most).
  const fullPartials = Math.ceil(Math.ceil(sizes.maxContext / sizes.blockTokens) / (ATTN_TILE / sizes.blockTokens))
  const fits = () => {}
  switch (spec.kind) {
    case "full":
      return { pipelineKeys: [], partials: fullPartials, checkFits: fits, create: (ctx) => new FullKv(ctx) }
    case "quest":
      return { pipelineKeys: Object.values(sparsePipelineKeys(c)), partials: fullPartials, checkFits: fits, create: (ctx) => new QuestKv(ctx, spec.policy) }
    case "h2o":
      return { pipelineKeys: Object.values(h2oPipelineKeys(c)), partials: fullPartials, checkFits: fits, create: (ctx) => new H2oKv(ctx, spec.policy) }
    case "tiered":
      return {
        pipelineKeys: [
          ...Object.values(tieredPipelineKeys(c)),
          windowedPrefillKey(attnPrefill),
          tieredDecodeKey(attnDecodeKey(c), spec.policy, sizes.blockTokens),
          ...((spec.policy.compression ?? 16) !== 16 ? [quantizeKey(c, sizes.blockTokens)] : []),
          ...(spec.policy.chunkMinTokens !== undefined ? [chunkMassKey(c, sizes.blockTokens)] : []),
        ],
        partials: Math.max(fullPartials, TIER_PARTIALS),
        checkFits: () => void tieredLayout(c, spec.policy, spec.stores, sizes),
        create: (ctx) => new TieredManager(ctx, spec.policy, spec.stores),
      }
  }
}

/** The policy a spec hands its manager (none for full attention). */
const policyOf = (spec: KvSpec): unknown => ("policy" in spec ? spec.policy : undefined)

/**
 * When `next` would replace `current`, whose manager is `manager`: a change within the same
 * kind of manager at the next step if the manager can take it, any other at the next request
 * (with a new manager). Throws KvBudgetError when the manager refuses it for its budget.
 */
export const kvApplies = (manager: KvManager, current: KvSpec, next: KvSpec): KvApplies =>
  next.kind === current.kind ? manager.applies(policyOf(next)) : "next_request"

/** Makes `next` (for which `kvApplies` said "next_step") the policy of `manager`. */
export const kvSwap = (manager: KvManager, next: KvSpec): void => manager.swap(policyOf(next))
