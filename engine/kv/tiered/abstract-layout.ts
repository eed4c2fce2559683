// What the chunk abstracts cost the GPU budget (issue 13 §4), pure arithmetic. Every sealed
// chunk has a min/max abstract per KV head, kept in LMDB (their source of truth) and copied
// to the GPU for scoring: either all of them (`all`: slot = chunk, the copy grows with the
// context: 512 MiB at Llama-3.1-8B 128K in 32-token chunks) or, `budgeted`, a cache of
// abstract slots evicted like chunks, with group abstracts (min/max over `groupChunks`
// consecutive chunks) always resident so that scoring skips whole groups. Both, and the seal's
// scratch, are counted in the GPU budget (layout.ts subtracts them before the chunk slots).
import type { ModelConfig } from "../../../models/types.ts"
import { budgetAt } from "../../sparse.ts"
import type { TieredPolicy } from "./layout.ts"

/** The abstracts' GPU copy, as the policy's `abstracts` sets it. */
export interface AbstractsPolicy {
  /** `all`: every abstract on the GPU; `budgeted`: a cache of them, filled from LMDB (needs groups). */
  readonly resident: "all" | "budgeted"
  /** Chunks per group abstract; 0 (or 1): no groups, every chunk scored each step. */
  readonly groupChunks: number
}

export const allAbstracts: AbstractsPolicy = { resident: "all", groupChunks: 0 }

export const abstractsOf = (p: TieredPolicy): AbstractsPolicy => p.abstracts ?? allAbstracts

/**
 * Groups kept per step for `chosen` chunks: twice the groups the chosen chunks would fill, as
 * a group's bound is looser than its chunks' (it is their maximum), so the best chunks may
 * sit in groups that do not rank first.
 */
export const GROUP_OVERSAMPLE = 2
export const groupsKept = (chosen: number, groupChunks: number): number => Math.max(1, Math.ceil((GROUP_OVERSAMPLE * chosen) / groupChunks))

export interface AbstractLayout {
  readonly resident: "all" | "budgeted"
  /** Bytes of one chunk's min (or max) abstract: (KV, D/2) f16 pairs as u32 words. */
  readonly abstractBytes: number
  /** Fine abstract slots per layer: one per chunk (`all`), else the cache's. */
  readonly slots: number
  /** Chunks per group (0: no groups) and group abstracts per layer. */
  readonly groupChunks: number
  readonly groups: number
  /** Abstracts one seal computes at once (the seal's scratch; larger seals go in batches). */
  readonly sealSlots: number
  /** GPU bytes of all of it, min and max: fine slots and groups of every layer, and the scratch. */
  readonly bytes: number
}

/**
 * The abstracts' GPU layout for this model and policy. A budgeted cache holds the chunks of
 * the groups one step keeps at the longest context (groupsKept of the chunks its budget
 * chooses), all a step's scoring needs at once.
 */
export const abstractLayout = (
  c: ModelConfig,
  p: TieredPolicy,
  o: { readonly maxContext: number; readonly minChunkTokens: number },
): AbstractLayout => {
  const a = abstractsOf(p)
  const abstractBytes = c.numKvHeads * (c.headDim / 2) * 4
  const maxChunks = Math.ceil(o.maxContext / o.minChunkTokens)
  const groupChunks = a.groupChunks > 1 ? a.groupChunks : 0
  if (a.resident === "budgeted" && groupChunks === 0) throw new RangeError("tiered KV: budgeted abstracts need groups (group_chunks of 2 or more)")
  const groups = groupChunks > 0 ? Math.ceil(maxChunks / groupChunks) : 0
  const chosen = Math.ceil(budgetAt(p, o.maxContext, p.chunkTokens) / p.chunkTokens)
  const slots = a.resident === "all" ? maxChunks : Math.min(maxChunks, groupsKept(chosen, groupChunks) * groupChunks)
  // A decode seal in one batch: a largest chunk in every layer, cut in minimum chunks (and one
  // more); prefill's larger seals go in batches of this many, paced by the read-back ring anyway.
  const sealSlots = c.numLayers * Math.min(maxChunks, Math.ceil(p.chunkTokens / o.minChunkTokens) + 1)
  const bytes = 2 * abstractBytes * (c.numLayers * (slots + groups) + sealSlots)
  return { resident: a.resident, abstractBytes, slots, groupChunks, groups, sealSlots, bytes }
}
