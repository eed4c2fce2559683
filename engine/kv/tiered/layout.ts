// How a GPU KV budget is spent by the tiered cache: staging rings, the tail ring and the
// chunk cache slots of every layer. Pure arithmetic over the model, the policy and the
// budget; TieredKv is built from the layout this returns, and a policy change is checked
// against it (setPolicy may change neither the mode nor the chunk size).
import type { DiskStore } from "../../../kv/disk-store.ts"
import type { EvictionPolicy } from "../../../kv/eviction.ts"
import type { HostArena } from "../../../kv/host-arena.ts"
import { blockWords, type KvShape } from "../../../kv/quant.ts"
import { type CompressionBits, maxBitsOf } from "../../../kv/quant-policy.ts"
import { KvBudgetError } from "../../../kv/tier-errors.ts"
import type { ModelConfig } from "../../../models/types.ts"
import type { ResolvedPolicy } from "../../../protocol/policy.ts"
import { type AbstractLayout, abstractLayout, abstractsOf, type AbstractsPolicy } from "./abstract-layout.ts"
import type { TierPeers } from "./peers.ts"
import type { TierIo } from "../../../kv/tier-io.ts"

/** How the tiered cache chooses what to attend. */
export interface TieredPolicy {
  /** `leoam`: abstracts + selection + GPU cache; `offload-all`: every step attends all chunks, fetched from host/disk (exact). */
  readonly mode: "leoam" | "offload-all"
  /** Tokens per chunk (`fixed` chunking; a multiple of the block size); with adaptive chunking the largest chunk (a slot's size). */
  readonly chunkTokens: number
  /** Adaptive chunking (kv/chunk-plan.ts): the smallest chunk; undefined for fixed chunks. */
  readonly chunkMinTokens?: number
  /** Most tokens attended per step (sink, recent and tail included); or a fraction of the context. */
  readonly budgetTokens?: number
  readonly budgetFraction?: number
  readonly sinkTokens: number
  readonly recentTokens: number
  /** Eviction of the GPU chunk cache. */
  readonly gpuEviction: EvictionPolicy
  /** Eviction of the host arena (set on the arena when the cache is built and at each policy change). */
  readonly hostEviction: EvictionPolicy
  /** Bits chunks are sealed with into the host and disk tiers (kv/quant-policy.ts); 16 when left out. */
  readonly compression?: CompressionBits
  /**
   * The pipelined decode step (issue 13 §1): layers a step may run ahead of the last one whose
   * choice the host has checked; 0 or left out: every layer waits for its own choice.
   */
  readonly pipelineDepth?: number
  /** The pipelined step completes a layer expected to miss by a combine of hits and late misses (true when left out). */
  readonly pipelineCombine?: boolean
  /** Prefetch (engine/kv/tiered/prefetch.ts): the forecast's layer distance (0 or left out: none), from a layer's choice or query, and the last step's choice. */
  readonly prefetchLayers?: number
  readonly prefetchFrom?: "choice" | "query" | "hidden"
  readonly prefetchSteps?: boolean
  /** Adaptive prefetch (prefetch-gate.ts; off when left out) and the steps it sits out before a probe. */
  readonly prefetchAdaptive?: boolean
  readonly prefetchProbeSteps?: number
  /** The abstracts' GPU copy (abstract-layout.ts): all of them, no groups, when left out. */
  readonly abstracts?: AbstractsPolicy
  /** Recompute of disk chunks from their hidden states (recompute.ts); off when left out. */
  readonly recompute?: ResolvedPolicy["recompute"]
}

export interface TierStores {
  readonly gpuBudgetBytes: number
  readonly arena: HostArena
  readonly store: DiskStore
  /** The session id the chunks are kept under (LMDB keys, host keys). */
  readonly session: string
  /** The node's tiered lanes, whose GPU slots this cache may copy shared prefix chunks from (peers.ts). */
  readonly peers?: TierPeers
  /** The host and disk side of a lane moved to another budget share (reshare.ts): its sessions, host entries and links go on. */
  readonly io?: TierIo
}

/** A policy change that needs a new KV cache (another manager or chunk size): it applies at the next request. */
export class KvLayoutChange extends Error {
  readonly code = "kv_layout_change"
}

/** Staging buffers: upload slots and read-back slots, each budget / 64 (a seal at least, 16 MiB at most). */
const STAGING_MAX_BYTES = 16 * 2 ** 20
const READBACK_SLOTS = 2
/**
 * Upload slots by GPU budget: decode flushes the ring once per layer, and a slot comes back
 * only when its mapAsync resolves, so a large budget affords enough slots that a step seldom
 * waits; a small one keeps two (one fills while the other copies).
 */
const uploadSlotsFor = (budgetBytes: number): number => (budgetBytes >= 2 * 2 ** 30 ? 16 : budgetBytes >= 16 * 2 ** 20 ? 4 : 2)

/**
 * Tokens a generation may append past the point where it stops (decode steps already in
 * flight; generate.ts keeps at most this many ahead). The tail ring holds them beyond its
 * whole chunks, so truncating back to the stop never needs bytes they overwrote.
 */
export const TAIL_SLACK_TOKENS = 8

export const tailSlackBlocks = (blockTokens: number) => Math.ceil(TAIL_SLACK_TOKENS / blockTokens)

/** Attention partials (splits) one step may produce over all its windows. */
export const TIER_PARTIALS = 512

export interface TierLayoutInput {
  readonly layers: number
  /** The tail's slack (TAIL_SLACK_TOKENS rounded up to blocks) in one layer, K and V. */
  readonly tailSlackBytes: number
  /** One chunk of one layer (K and V). */
  readonly slotBytes: number
  /** A seal's read-back: a chunk and its abstracts. */
  readonly sealBytes: number
  /** The in-pool copy's scratch buffer. */
  readonly scratchBytes: number
  /** Whether seals quantize on the GPU: a scratch of one staging slot more. */
  readonly quantScratch?: boolean
  /** Cache slots that must fit at once (sink, recent, one chosen). */
  readonly minimumSlots: number
  readonly wantedPrefillChunks: number
  readonly maxChunks: number
  readonly budgetBytes: number
  /** The chunk abstracts' GPU copy, over all layers (abstract-layout.ts): taken from the budget before any slot. */
  readonly abstractBytes?: number
}

export interface TierLayout {
  readonly stagingSlotBytes: number
  /** Upload ring slots (a landing buffer of the same size besides them where `scatter`). */
  readonly uploadSlots: number
  /** Whether the ring's flushes scatter from a landing buffer (one copy and a pass) instead of a copy per chunk half. */
  readonly scatter: boolean
  readonly readbackSlots: number
  /** Tail ring chunks per layer (one at least), besides the slack: prefill passes fill what the unsealed tokens leave. */
  readonly tailChunks: number
  readonly cacheSlots: number
  /** Everything counted against the budget. */
  readonly bytes: number
}

/** Staging bytes at a budget: both rings, the scratch buffer and, when seals quantize, their output. */
const stagingAt = (i: TierLayoutInput, budgetBytes: number) => {
  const stagingSlotBytes = Math.ceil(Math.max(i.sealBytes, Math.min(STAGING_MAX_BYTES, budgetBytes / 64)) / 4) * 4
  const uploadSlots = uploadSlotsFor(budgetBytes)
  // Where the ring has four slots or more, one of them is the upload scatter's landing buffer
  // (engine/staging-scatter.ts): the same bytes, so the budget's split does not change.
  const scatter = uploadSlots >= 4
  const slots = uploadSlots + READBACK_SLOTS + (i.quantScratch ? 1 : 0)
  return { stagingSlotBytes, uploadSlots: uploadSlots - (scatter ? 1 : 0), scatter, readbackSlots: READBACK_SLOTS, bytes: stagingSlotBytes * slots + i.scratchBytes }
}

/**
 * How a GPU KV budget is spent: staging first, then per layer the sink, recent and one chosen
 * chunk's slots and a one-chunk tail; what is left grows the tail (prefill passes, up to half
 * of a layer's share) and then the cache. Returns the least budget that would do when this
 * one cannot (staging grows with the budget, so that least budget is solved for, not guessed).
 */
export const tierLayout = (i: TierLayoutInput): TierLayout | number => {
  const layout = layoutWith(i, stagingAt(i, i.budgetBytes))
  if (layout) return layout
  const fixed = i.layers * ((1 + i.minimumSlots) * i.slotBytes + i.tailSlackBytes) + (i.abstractBytes ?? 0)
  let least = fixed + stagingAt(i, fixed).bytes
  for (let b = fixed + stagingAt(i, least).bytes; b !== least; b = fixed + stagingAt(i, least).bytes) least = b
  // Staging grows with the budget in steps, so a budget past the least one can still be
  // refused with its own staging: it then gets the least budget's staging.
  return least <= i.budgetBytes ? layoutWith(i, stagingAt(i, least))! : least
}

/** The layout of the budget with this staging, or undefined when the minimum slots do not fit. */
const layoutWith = (i: TierLayoutInput, staging: ReturnType<typeof stagingAt>): TierLayout | undefined => {
  const abstracts = i.abstractBytes ?? 0
  const perLayer = Math.floor((i.budgetBytes - staging.bytes - abstracts) / i.layers) - i.tailSlackBytes
  const slots = Math.floor(perLayer / i.slotBytes)
  if (!(slots >= 1 + i.minimumSlots)) return undefined
  const tailChunks = Math.max(1, Math.min(i.wantedPrefillChunks, Math.floor(slots / 2), slots - i.minimumSlots))
  const cacheSlots = Math.min(i.maxChunks, slots - tailChunks)
  return { ...staging, tailChunks, cacheSlots, bytes: staging.bytes + abstracts + i.layers * ((tailChunks + cacheSlots) * i.slotBytes + i.tailSlackBytes) }
}

/** The smallest chunk the policy cuts: chunk counts (abstracts, selection) are sized by it. */
export const minChunkTokens = (p: TieredPolicy): number => p.chunkMinTokens ?? p.chunkTokens

/** The policy's adaptive chunking bounds, or undefined for fixed chunks. */
export const adaptiveOf = (p: TieredPolicy): { readonly minTokens: number; readonly maxTokens: number } | undefined =>
  p.chunkMinTokens === undefined ? undefined : { minTokens: p.chunkMinTokens, maxTokens: p.chunkTokens }

/** Cache slots that must fit at once: the sink and recent chunks plus one. */
export const minimumSlots = (p: TieredPolicy): number =>
  p.mode === "offload-all" ? 1 : Math.ceil(p.sinkTokens / p.chunkTokens) + Math.ceil(p.recentTokens / p.chunkTokens) + 1

/** The sizes a tiered cache is laid out for. */
type LayoutSizes = { readonly blockTokens: number; readonly maxContext: number; readonly prefillChunk: number }

/** The abstracts' GPU layout of this model and policy (abstract-layout.ts). */
const abstractsAt = (c: ModelConfig, policy: TieredPolicy, options: LayoutSizes): AbstractLayout => abstractLayout(c, policy, { ...options, minChunkTokens: minChunkTokens(policy) })

/** The layout arithmetic's input for this model, policy and budget; throws KvBudgetError for a chunk size the cache cannot cut. */
const layoutInput = (c: ModelConfig, policy: TieredPolicy, stores: Pick<TierStores, "gpuBudgetBytes" | "arena">, options: LayoutSizes): TierLayoutInput => {
  const bs = options.blockTokens
  if (!Number.isInteger(policy.chunkTokens) || policy.chunkTokens <= 0 || policy.chunkTokens % bs !== 0) {
    throw new KvBudgetError(`chunk size ${policy.chunkTokens} must be a positive multiple of the block size ${bs}`)
  }
  const blockBytes = c.numKvHeads * bs * c.headDim * 2
  const slotBlocks = policy.chunkTokens / bs
  const slotBytes = 2 * slotBlocks * blockBytes
  if (slotBytes > stores.arena.slabBytes) {
    throw new KvBudgetError(`a chunk of ${slotBytes} bytes exceeds the host arena's slab of ${stores.arena.slabBytes}`)
  }
  return {
    layers: c.numLayers,
    tailSlackBytes: tailSlackBlocks(bs) * 2 * blockBytes,
    slotBytes,
    sealBytes: slotBytes + 2 * c.numKvHeads * (c.headDim / 2) * 4,
    scratchBytes: slotBlocks * blockBytes,
    quantScratch: (policy.compression ?? 16) !== 16,
    minimumSlots: minimumSlots(policy),
    wantedPrefillChunks: Math.ceil(options.prefillChunk / policy.chunkTokens),
    maxChunks: Math.ceil(options.maxContext / minChunkTokens(policy)),
    budgetBytes: stores.gpuBudgetBytes,
    abstractBytes: abstractsAt(c, policy, options).bytes,
  }
}

/**
 * The GPU layout of a tiered cache for this model, policy and budget; throws KvBudgetError
 * (with the least budget that would do) where the constructor would refuse it.
 */
export const tieredLayout = (
  c: ModelConfig,
  policy: TieredPolicy,
  stores: Pick<TierStores, "gpuBudgetBytes" | "arena">,
  options: LayoutSizes,
): TierLayout & { readonly abstracts: AbstractLayout } => {
  const layout = tierLayout(layoutInput(c, policy, stores, options))
  const abstracts = abstractsAt(c, policy, options)
  if (typeof layout === "number") {
    throw new KvBudgetError(
      `a GPU KV budget of ${stores.gpuBudgetBytes} bytes cannot hold the tail and the sink and recent chunks: ` +
        `at least ${layout} bytes (${(layout / 2 ** 20).toFixed(2)} MiB) are needed with ${policy.chunkTokens}-token chunks ` +
        `(of which ${abstracts.bytes} for the chunk abstracts)`,
    )
  }
  return { ...layout, abstracts }
}

/** The least GPU budget a tiered cache of this model and policy accepts (a batch lane's minimum share). */
export const tieredMinimumBytes = (c: ModelConfig, policy: TieredPolicy, arena: HostArena, options: LayoutSizes): number => {
  const least = tierLayout(layoutInput(c, policy, { gpuBudgetBytes: 0, arena }, options))
  return typeof least === "number" ? least : least.bytes
}

/**
 * The quantized slots of decode: with `compression` below 16 bits, decode's GPU cache slots
 * hold chunks compressed (kv/quant.ts layout; a slot of 8 bits holds an int8 or int4 chunk),
 * laid over the same pool bytes that prefill uses as fp16 slots (the cache switches between
 * the two and starts empty after each switch). Slots are counted from the compressed size,
 * so the same budget holds more chunks: per pool, the fp16 slots' bytes over the larger of a
 * quantized slot's K and V parts.
 */
export interface QuantSlots {
  readonly bits: 8 | 4
  readonly slots: number
  /** u32 words of a slot's K part (in the K pool) and V part (in the V pool). */
  readonly kSlotWords: number
  readonly vSlotWords: number
  /** The first word of the slots in each pool: past the tail's fp16 blocks. */
  readonly qbase: number
}

/** The slot bits of decode's GPU cache under a compression setting (16: fp16 slots). */
export const slotBitsOf = (p: TieredPolicy): 16 | 8 | 4 => maxBitsOf(p.compression ?? 16)

export const quantSlots = (p: TieredPolicy, shape: KvShape, g: { readonly slotBlocks: number; readonly cacheSlots: number; readonly tailBlocks: number; readonly maxChunks: number }): QuantSlots | undefined => {
  const bits = slotBitsOf(p)
  if (bits === 16) return undefined
  const blockBytes = shape.kvHeads * shape.blockTokens * shape.headDim * 2
  const w = blockWords(shape, bits)
  const kSlotWords = g.slotBlocks * w.k
  const vSlotWords = g.slotBlocks * w.v
  const poolBytes = g.cacheSlots * g.slotBlocks * blockBytes
  const slots = Math.min(g.maxChunks, Math.floor(poolBytes / (4 * Math.max(kSlotWords, vSlotWords))))
  return { bits, slots, kSlotWords, vSlotWords, qbase: (g.tailBlocks * blockBytes) / 4 }
}

/** Throws what TieredKv.setPolicy would refuse: another mode, chunk size or slot bits, or sink and recent chunks past the cache slots. */
export const checkPolicyChange = (current: TieredPolicy, next: TieredPolicy, cacheSlots: number): void => {
  if (next.mode !== current.mode || next.chunkTokens !== current.chunkTokens || next.chunkMinTokens !== current.chunkMinTokens) {
    const chunks = (p: TieredPolicy) => (p.chunkMinTokens === undefined ? `${p.chunkTokens}-token chunks` : `adaptive ${p.chunkMinTokens}..${p.chunkTokens}-token chunks`)
    throw new KvLayoutChange(`${current.mode} with ${chunks(current)} -> ${next.mode} with ${chunks(next)}`)
  }
  if (slotBitsOf(next) !== slotBitsOf(current)) {
    throw new KvLayoutChange(`GPU chunk slots of ${slotBitsOf(current)} bits -> ${slotBitsOf(next)} bits`)
  }
  const [a, b] = [abstractsOf(current), abstractsOf(next)]
  if (a.resident !== b.resident || a.groupChunks !== b.groupChunks) {
    throw new KvLayoutChange(`abstracts ${a.resident} in groups of ${a.groupChunks} -> ${b.resident} in groups of ${b.groupChunks}`)
  }
  const need = minimumSlots(next)
  if (need > cacheSlots) {
    throw new KvBudgetError(`sink_tokens ${next.sinkTokens} and recent_tokens ${next.recentTokens} need ${need} chunk slots per layer; the GPU budget gives ${cacheSlots}`)
  }
}
