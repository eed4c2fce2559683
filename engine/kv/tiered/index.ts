// The tiered KV cache (leoam, offload-all), as the engine's tiered manager and the model see
// it: TieredKv applies the plans of kv/plan.ts; its layout, policy and stats types.
export { KvBudgetError, KvTierError } from "../../../kv/tier-errors.ts"
export type { DecodePlan, PrefillPlan } from "../../../kv/plan.ts"
export {
  KvLayoutChange,
  TAIL_SLACK_TOKENS,
  TIER_PARTIALS,
  type TierLayout,
  type TierLayoutInput,
  tierLayout,
  tieredLayout,
  tieredMinimumBytes,
  type TieredPolicy,
  type TierStores,
} from "./layout.ts"
export { quantizeKey, tieredDecodeKey, tieredPipelineKeys } from "./select.ts"
export { TierPeers } from "./peers.ts"
export type { TierStats } from "./stats.ts"
export { TieredKv } from "./tiered-kv.ts"
