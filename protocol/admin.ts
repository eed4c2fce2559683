// The admin subjects' messages (leoam.v1.admin.*): the live KV policy (get, set, list,
// history) and the node's statistics. Reachable only by NATS users with admin permissions
// (README, "Access control"). A policy travels as data (KvPolicyDocument), never code.
import { Schema } from "effect"
import { KvPolicyDocument, ResolvedPolicyWire } from "./policy.ts"

/** When a change takes effect: the next decode step (same KV manager and chunk size) or the next request (a new KV cache). */
export const Applies = Schema.Literal("next_step", "next_request")
export type Applies = typeof Applies.Type

export const PolicySetRequest = Schema.Struct({
  /** A policy document, or a registered policy's name (its defaults). */
  policy: Schema.Unknown,
  /** Why, for the history (optional). */
  reason: Schema.optional(Schema.String.pipe(Schema.maxLength(500))),
}).annotations({ identifier: "PolicySetRequest", parseOptions: { onExcessProperty: "error" } })
export type PolicySetRequest = typeof PolicySetRequest.Type

export const PolicyHistoryRequest = Schema.Struct({
  /** The most recent changes only (default: all). */
  limit: Schema.optional(Schema.Int.pipe(Schema.between(1, 100_000))),
}).annotations({ identifier: "PolicyHistoryRequest", parseOptions: { onExcessProperty: "error" } })

/**
 * A policy with every parameter filled in (the engine's view of a document): the wire's
 * resolved policy (compression, pipeline, prefetch, abstracts and recompute included, so that
 * `admin.policy.list` shows e.g. leoam's pipelined default), names and eviction as strings.
 */
export const ResolvedPolicyView = Schema.Struct({
  ...ResolvedPolicyWire.fields,
  name: Schema.String,
  eviction: Schema.String,
})

/** One accepted change, as stored in LMDB. */
export const PolicyVersion = Schema.Struct({
  version: Schema.Int,
  policy: KvPolicyDocument,
  /** The NATS user that made the change ("anonymous" without access control; "startup" for the policy a node started with). */
  user: Schema.String,
  /** The user's NATS account, where the server shares it. */
  account: Schema.optional(Schema.String),
  at: Schema.String,
  applies: Schema.optional(Applies),
  reason: Schema.optional(Schema.String),
})
export type PolicyVersion = typeof PolicyVersion.Type

export const PolicyGetReply = Schema.Struct({
  ...PolicyVersion.fields,
  resolved: ResolvedPolicyView,
  /** What the gpu-executor runs now; a version above it is pending (its next step or request). */
  executor: Schema.Struct({ active_version: Schema.Int, pending_version: Schema.NullOr(Schema.Int) }),
}).annotations({ identifier: "PolicyGetReply" })

export const PolicySetReply = Schema.Struct({
  ...PolicyVersion.fields,
  resolved: ResolvedPolicyView,
  applies: Applies,
}).annotations({ identifier: "PolicySetReply" })

export const PolicyListReply = Schema.Struct({
  policies: Schema.Array(
    Schema.Struct({
      name: Schema.String,
      description: Schema.String,
      /** Every parameter's default under this name. */
      defaults: ResolvedPolicyView,
      /** JSON Schema of a document naming this policy (its parameters). */
      schema: Schema.Unknown,
    }),
  ),
  eviction: Schema.Array(Schema.String),
  /** JSON Schema of the policy document that set accepts. */
  schema: Schema.Unknown,
}).annotations({ identifier: "PolicyListReply" })

export const PolicyHistoryReply = Schema.Struct({ history: Schema.Array(PolicyVersion) }).annotations({ identifier: "PolicyHistoryReply" })

const Tier = {
  budget_bytes: Schema.NullOr(Schema.Number),
  resident_bytes: Schema.Number,
}

/**
 * How a tiered policy's GPU budget is split among the batch's lanes: each lane gets a share
 * when it starts (the free bytes split among the lanes starting together; all of it for a
 * lone request), at least the least budget a lane's KV manager accepts; running plain
 * requests' lanes give part of theirs back to a request that waits for budget, and grow
 * again when a lane ends.
 */
export const GpuShares = Schema.Struct({
  budget_bytes: Schema.Number,
  lane_min_bytes: Schema.Number,
  /** The share of each tiered lane running, in the order they started. */
  lanes: Schema.Array(Schema.Number),
  /**
   * Running lanes moved to another share at a step boundary, since start: to a smaller one
   * (giving a request that waited for budget its share) and to a larger one (after a lane ended),
   * and the milliseconds the moves took (the batch's steps wait meanwhile).
   */
  reshares: Schema.optional(Schema.Struct({ shrunk: Schema.Int, grown: Schema.Int, ms: Schema.Number })),
})

/** The continuous batch (--max-batch above 1): its bound, runs decoding and prefilling, runs waiting for KV room, GPU KV bytes reserved by the batch's lanes, and under leoam or offload-all how the GPU budget is split. */
export const BatchStats = Schema.Struct({
  max: Schema.Int,
  decoding: Schema.Int,
  prefilling: Schema.Int,
  waiting_for_kv: Schema.Int,
  kv_reserved_bytes: Schema.Number,
  /** Prompt tokens whose chunks requests linked from a running request's or a stored session's (a shared prefix) instead of prefilling them, since start. */
  shared_prefix_tokens: Schema.optional(Schema.Number),
  /** Session runs that went on in the lane parked on their session (kept on the GPU since its last run: nothing resumed from LMDB, the chunks it holds not uploaded), since start; lanes parked now (0 or 1). */
  warm_session_runs: Schema.optional(Schema.Number),
  parked_session_lanes: Schema.optional(Schema.Int),
  /** Batched decode steps whose rows attended in one dispatch a layer (full-attention lanes in the GPU budget's block store), since start. */
  attended_together_steps: Schema.optional(Schema.Number),
  /** Batched decode steps encoded before the step before them was read back (the GPU ran them while the host read), since start. */
  steps_ahead: Schema.optional(Schema.Number),
  gpu_shares: Schema.optional(GpuShares),
  /**
   * Shared prefix chunks a tiered lane copied on the device from a lane running beside it (the
   * same stored bytes) instead of uploading them from host or disk, and their bytes (the uploads
   * saved), since start; the tiered lanes offering their GPU slots now.
   */
  gpu_peer_copies: Schema.optional(Schema.Struct({ chunks: Schema.Int, bytes: Schema.Number, lanes: Schema.Int })),
})

/** leoam.v1.admin.stats: totals since the node started. */
export const AdminStatsReply = Schema.Struct({
  at: Schema.String,
  policy: Schema.Struct({ name: Schema.String, active_version: Schema.Int, pending_version: Schema.NullOr(Schema.Int) }),
  /** Generate requests waiting (in all and per NATS user: they are served in turns across users) and being served. */
  queue: Schema.Struct({ depth: Schema.Int, capacity: Schema.Int, in_flight: Schema.Int, queued_by_user: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.Int })) }),
  requests: Schema.Struct({ completed: Schema.Int, generated_tokens: Schema.Int }),
  batch: Schema.optional(BatchStats),
  tiers: Schema.Struct({
    /**
     * hits, misses, hit_rate: decode's chosen chunks the GPU slots held or loaded; prefill_hits,
     * prefill_misses: prefill windows' chunks, counted apart (left out by older nodes).
     * abstract_bytes: the GPU copy of the chunk abstracts (tiered policies): counted in budget_bytes, besides the chunks of resident_bytes.
     */
    gpu: Schema.Struct({ ...Tier, hits: Schema.Int, misses: Schema.Int, prefill_hits: Schema.optional(Schema.Int), prefill_misses: Schema.optional(Schema.Int), hit_rate: Schema.NullOr(Schema.Number), bytes_read: Schema.Number, abstract_bytes: Schema.optional(Schema.Number) }),
    host: Schema.Struct({ ...Tier, hits: Schema.Int, misses: Schema.Int, hit_rate: Schema.NullOr(Schema.Number), bytes_read: Schema.Number, bytes_written: Schema.Number }),
    /** abstract_bytes: the chunk abstracts of the executor's current sequence in LMDB. */
    disk: Schema.Struct({ resident_bytes: Schema.Number, hits: Schema.Int, bytes_read: Schema.Number, bytes_written: Schema.Number, abstract_bytes: Schema.optional(Schema.Number) }),
  }),
  /** Decode steps and where their time went (ms, summed over steps). */
  steps: Schema.Struct({
    count: Schema.Int,
    /**
     * Host wall time by phase, disjoint intervals of the host's timeline, so that total =
     * scoring (waiting for a layer's chunk choice) + transfer (staging chunks to the GPU) +
     * seal (waiting for sealed chunks' host and disk copies) + rest (encoding, planning).
     */
    ms: Schema.Struct({ total: Schema.Number, scoring: Schema.Number, transfer: Schema.Number, seal: Schema.Number, rest: Schema.Number }),
    /**
     * GPU time (timestamp queries; 0 without them): decode attention runs while the host waits
     * in scoring and transfer, so it overlaps those phases and is no term of their sum.
     */
    gpu_ms: Schema.Struct({ attention: Schema.Number }),
    /**
     * Prefetch into the GPU chunk cache (policy `prefetch`): chunks and bytes loaded ahead of
     * their layer; at the forecast layers' visits, loaded chunks chosen (hits), chosen chunks
     * still missing (misses), and bytes loaded but not chosen (wasted).
     */
    prefetch: Schema.optional(Schema.Struct({ chunks: Schema.Int, bytes: Schema.Number, hits: Schema.Int, misses: Schema.Int, wasted_bytes: Schema.Number })),
    /**
     * Recompute (policy `recompute`): of the chunks read from disk, those recomputed on the GPU
     * from their hidden records and those fetched as K/V; hidden bytes read and written.
     */
    recompute: Schema.optional(Schema.Struct({ chunks_recomputed: Schema.Int, chunks_fetched_from_disk: Schema.Int, hidden_bytes_read: Schema.Number, hidden_bytes_written: Schema.Number })),
  }),
  /** Prompt tokens and wall time of every prefill; tokens/s overall and over the last few (null before any). */
  prefill: Schema.Struct({
    tokens: Schema.Int,
    ms: Schema.Number,
    tokens_per_s: Schema.NullOr(Schema.Number),
    recent: Schema.Struct({ runs: Schema.Int, tokens: Schema.Int, ms: Schema.Number, tokens_per_s: Schema.NullOr(Schema.Number) }),
  }),
}).annotations({ identifier: "AdminStatsReply" })
export type AdminStatsReply = typeof AdminStatsReply.Type

/** The reply schema of every admin subject (protocol/subjects.ts adminSubjects), by the same key. */
export const adminReplies = {
  policyGet: PolicyGetReply,
  policySet: PolicySetReply,
  policyList: PolicyListReply,
  policyHistory: PolicyHistoryReply,
  stats: AdminStatsReply,
} as const
