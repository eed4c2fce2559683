// The tiered cache's per-request counters and the TierStats they are reported as (the `kv`
// object of replies). Counters only: nothing here allocates or logs per token (STYLE 9).
// TieredKv and its sealer add to them; reset() starts a new set.
import type { AbstractLayout } from "./abstract-layout.ts"

/** Per-request counters of the tiered cache (the `kv` object of replies). */
export interface TierStats {
  readonly policy: string
  /**
   * hits, misses: decode's chosen chunks the layer's GPU slots held or had to load (one per
   * chunk chosen, per layer and step); prefill_hits, prefill_misses: prefill windows' chunks
   * held or loaded (a window attends every sealed chunk, so they are counted apart: mixed in,
   * they would swamp decode's per-step figures). bytes_read: the held chunks' bytes, both phases.
   * peer_copies, peer_copy_bytes: misses copied on the device from a peer lane's slot holding
   * the same stored bytes (the uploads saved).
   */
  readonly gpu: { budget_bytes: number; resident_bytes: number; hits: number; misses: number; prefill_hits: number; prefill_misses: number; bytes_read: number; peer_copies: number; peer_copy_bytes: number }
  readonly host: { budget_bytes: number; resident_bytes: number; hits: number; misses: number; bytes_read: number; bytes_written: number }
  readonly disk: { hits: number; bytes_read: number; bytes_written: number }
  readonly chunk_tokens: number
  readonly chunks_sealed: number
  /** Chunk abstracts the cache holds (all layers). */
  readonly abstracts: number
  /** Bytes stored per tier: chunks in the GPU cache's slots, the host arena's, the sequence's chunks on disk. */
  readonly bytes_stored: { readonly gpu: number; readonly host: number; readonly disk: number }
  /** Bytes of the chunk abstracts per tier: their GPU copy (counted in the GPU budget) and LMDB's (the sequence's, min and max). */
  readonly abstract_bytes: { readonly gpu: number; readonly disk: number }
  /**
   * Scoring (policy `abstracts`): where the fine abstracts live on the GPU (`all`, or a
   * `budgeted` cache of `gpu_slots` per layer holding `gpu_resident` now), chunks per group
   * (0: none), abstracts uploaded from LMDB, and per step (all layers) groups and chunks scored.
   */
  readonly abstract_scoring: {
    readonly resident: "all" | "budgeted"
    readonly group_chunks: number
    readonly gpu_slots: number
    readonly gpu_resident: number
    readonly fetched: number
    readonly groups_scored_per_step: number
    readonly chunks_scored_per_step: number
  }
  readonly steps: number
  readonly windows: number
  readonly chunks_selected_per_step: number
  readonly tokens_selected_per_step: number
  /**
   * Host wall time waiting for the selection read-back (includes the layer's QKV GEMV and
   * scoring), staging transfers and sealing; GPU time of decode attention (0 without
   * timestamp queries).
   */
  readonly time_ms: { select: number; transfer: number; seal: number; attention: number }
  /** Stages that waited for a staging buffer to come back from the GPU. */
  readonly staging_waits: number
  /**
   * The pipelined step (policy `pipeline`): its depth, layers attended from the GPU's own
   * hit/miss split and checked later, and rewinds (a checked layer missed: it and the
   * `layers_rewound` layers run ahead of it were computed again).
   */
  readonly pipeline: { readonly depth: number; readonly layers_routed: number; readonly rewinds: number; readonly layers_rewound: number; readonly layers_combined?: number }
  /** Prefetch (policy `prefetch`, engine/kv/tiered/prefetch.ts). */
  readonly prefetch?: FetchStats
  /**
   * Recompute (policy `recompute`, engine/kv/tiered/recompute.ts): the setting and whether it
   * applies to this model now; of the chunks read from disk (disk.hits), those recomputed from
   * their hidden records and those fetched as K/V; hidden bytes read (also in disk.bytes_read)
   * and written (records kept beside K/V); host ms of its loads (reads, then GPU submits).
   */
  readonly recompute?: {
    readonly mode: "off" | "auto" | "always"
    readonly active: boolean
    readonly chunks_recomputed: number
    readonly chunks_fetched_from_disk: number
    readonly hidden_bytes_read: number
    readonly hidden_bytes_written: number
    readonly ms: number
  }
  /**
   * Compression (policy `compression.bits`): the setting, the bits of decode's GPU slots (16:
   * fp16), the chunks sealed at each bits, and the bytes uploaded into the GPU chunk cache
   * (what host and disk sent, compressed where the slots are, fp16 where they are not).
   */
  readonly compression: {
    readonly bits: 16 | 8 | 4 | "importance"
    readonly slot_bits: number
    readonly gpu_slots: number
    readonly sealed: { readonly f16: number; readonly int8: number; readonly int4: number }
    readonly upload_bytes: number
    /** The fill of decode's compressed slots at the switch from prefill (GpuCache.warm): chunks, bytes, host ms. */
    readonly warm: { readonly chunks: number; readonly bytes: number; readonly ms: number }
    /** Sealed chunks admitted to compressed slots straight from the seal's quantizer (a GPU copy). */
    readonly admitted: number
  }
}

/**
 * What prefetch did: the policy's settings; forecasts read back, and those that came too late
 * for their layer; visits of layers whose forecast was loaded; chunks and bytes it loaded;
 * at those visits, loaded chunks chosen (hits), chosen chunks still missing (misses) and the
 * bytes of loaded chunks not chosen (wasted); loads that failed; host ms in its loads
 * (they overlap the choice waits: no term of the step's phases). The forecasts' quality at
 * those visits, over the chunks each layer scores (sink and recent left out): forecast chunks,
 * chosen chunks and forecast chunks chosen (precision and recall, whether loaded or not).
 * Adaptive prefetch (prefetch-gate.ts): whether on; steps it sat out, pauses, probes; and its
 * last judgement: loaded chunks chosen / loaded, host ms per chunk loaded and per chunk missed.
 */
export interface FetchStats {
  readonly layers: number
  readonly from: "choice" | "query" | "hidden"
  readonly steps: boolean
  readonly forecasts: number
  readonly late: number
  readonly visits: number
  readonly chunks: number
  readonly bytes: number
  readonly hits: number
  readonly misses: number
  readonly wasted_bytes: number
  readonly failed: number
  readonly ms: number
  readonly forecast_chunks: number
  readonly chosen_chunks: number
  readonly forecast_chosen: number
  readonly adaptive?: boolean
  readonly paused_steps?: number
  readonly pauses?: number
  readonly probes?: number
  readonly judged?: { readonly precision: number; readonly load_ms_per_chunk: number; readonly miss_ms_per_chunk: number }
}

export const emptyCounters = () => ({
  /** Decode's chosen chunks held and loaded; prefill windows' apart (TierStats.gpu). */
  gpuHits: 0,
  gpuMisses: 0,
  gpuPrefillHits: 0,
  gpuPrefillMisses: 0,
  gpuBytesRead: 0,
  hostHits: 0,
  hostMisses: 0,
  hostBytesRead: 0,
  hostWritten: 0,
  diskHits: 0,
  diskBytesRead: 0,
  diskWritten: 0,
  chunksSealed: 0,
  sealedF16: 0,
  sealedInt8: 0,
  sealedInt4: 0,
  uploadBytes: 0,
  /** Chunks copied on the device from a peer lane's slot instead of uploaded (peers.ts), and their bytes. */
  peerCopies: 0,
  peerCopyBytes: 0,
  warmChunks: 0,
  warmBytes: 0,
  warmMs: 0,
  admittedQuant: 0,
  windows: 0,
  selectedDecode: 0,
  selectedTokens: 0,
  selectMs: 0,
  transferMs: 0,
  sealMs: 0,
  attentionMs: 0,
  routedLayers: 0,
  rewinds: 0,
  rewoundLayers: 0,
  groupsScored: 0,
  chunksScored: 0,
  abstractFetches: 0,
  /** Recompute (recompute.ts): chunks recomputed from hidden records, their bytes read, records written, host ms of its loads. */
  recomputed: 0,
  hiddenBytesRead: 0,
  hiddenWritten: 0,
  recomputeMs: 0,
  /** The upload ring's stalls when the counters started. */
  stallsAtReset: 0,
})

export type TierCounters = ReturnType<typeof emptyCounters>

/** What the counters report, with the gauges of the moment. */
export const tierStats = (
  k: TierCounters,
  at: {
    readonly policy: string
    readonly gpuBudgetBytes: number
    readonly gpuResidentBytes: number
    readonly host: { readonly budgetBytes: number; readonly residentBytes: number }
    readonly chunkTokens: number
    readonly abstracts: number
    readonly diskStoredBytes: number
    readonly layers: number
    readonly steps: number
    readonly stalls: number
    readonly compression: { readonly bits: 16 | 8 | 4 | "importance"; readonly slotBits: number; readonly gpuSlots: number }
    readonly pipelineDepth: number
    readonly abstractCopy: { readonly layout: AbstractLayout; readonly gpuResident: number }
  },
): TierStats => ({
  policy: at.policy,
  gpu: { budget_bytes: at.gpuBudgetBytes, resident_bytes: at.gpuResidentBytes, hits: k.gpuHits, misses: k.gpuMisses, prefill_hits: k.gpuPrefillHits, prefill_misses: k.gpuPrefillMisses, bytes_read: k.gpuBytesRead, peer_copies: k.peerCopies, peer_copy_bytes: k.peerCopyBytes },
  host: { budget_bytes: at.host.budgetBytes, resident_bytes: at.host.residentBytes, hits: k.hostHits, misses: k.hostMisses, bytes_read: k.hostBytesRead, bytes_written: k.hostWritten },
  disk: { hits: k.diskHits, bytes_read: k.diskBytesRead, bytes_written: k.diskWritten },
  chunk_tokens: at.chunkTokens,
  chunks_sealed: k.chunksSealed,
  abstracts: at.abstracts,
  bytes_stored: { gpu: at.gpuResidentBytes, host: at.host.residentBytes, disk: at.diskStoredBytes },
  abstract_bytes: { gpu: at.abstractCopy.layout.bytes, disk: at.abstracts * 2 * at.abstractCopy.layout.abstractBytes },
  abstract_scoring: {
    resident: at.abstractCopy.layout.resident,
    group_chunks: at.abstractCopy.layout.groupChunks,
    gpu_slots: at.abstractCopy.layout.slots,
    gpu_resident: at.abstractCopy.gpuResident,
    fetched: k.abstractFetches,
    groups_scored_per_step: at.steps > 0 ? k.groupsScored / at.steps : 0,
    chunks_scored_per_step: at.steps > 0 ? k.chunksScored / at.steps : 0,
  },
  steps: at.steps,
  windows: k.windows,
  chunks_selected_per_step: at.steps > 0 ? k.selectedDecode / at.steps / at.layers : 0,
  tokens_selected_per_step: at.steps > 0 ? k.selectedTokens / at.layers / at.steps : 0,
  time_ms: { select: k.selectMs, transfer: k.transferMs, seal: k.sealMs, attention: k.attentionMs },
  staging_waits: at.stalls - k.stallsAtReset,
  pipeline: { depth: at.pipelineDepth, layers_routed: k.routedLayers, rewinds: k.rewinds, layers_rewound: k.rewoundLayers },
  compression: {
    bits: at.compression.bits,
    slot_bits: at.compression.slotBits,
    gpu_slots: at.compression.gpuSlots,
    sealed: { f16: k.sealedF16, int8: k.sealedInt8, int4: k.sealedInt4 },
    upload_bytes: k.uploadBytes,
    warm: { chunks: k.warmChunks, bytes: k.warmBytes, ms: k.warmMs },
    admitted: k.admittedQuant,
  },
})
