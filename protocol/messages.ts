// Every message on leoam's public subjects, as one Effect Schema each. Handlers decode
// requests with these (unknown fields are rejected, numbers are range-checked) and the
// JSON Schema files in protocol/schema/ are generated from them for other languages.
import { Schema } from "effect"

const TokenId = Schema.Int.pipe(Schema.between(0, 2 ** 31 - 1))

/**
 * A NATS subject to publish to: dot-separated tokens, none empty (`a..b`, `.a`, `a.` are
 * not subjects), no whitespace and no wildcards (`*`, `>`), which publishing cannot use.
 */
export const PublishSubject = Schema.String.pipe(
  Schema.maxLength(256),
  Schema.pattern(/^[A-Za-z0-9_\-$]+(\.[A-Za-z0-9_\-$]+)*$/, {
    message: (issue) => `${JSON.stringify(issue.actual)} is not a NATS subject to publish to: dot-separated non-empty tokens of letters, digits, _ - $ (no spaces, no wildcards)`,
  }),
).annotations({ description: "a NATS subject to publish to: dot-separated non-empty tokens of letters, digits, _ - $" })

/**
 * Longest tokenize text, in UTF-16 code units. One id per UTF-8 byte at worst (byte
 * fallback: at most 3 bytes per unit) and up to 8 reply bytes per id keep the reply of the
 * longest text (about 3 MB) under the embedded server's 8 MiB max_payload, and its
 * tokenization well under a second; longer text is `payload_too_large`.
 */
export const MAX_TOKENIZE_TEXT = 128 * 1024

export const GenerateRequest = Schema.Struct({
  /** Prompt text, tokenized by the model's tokenizer. Exactly one of prompt / ids. */
  prompt: Schema.optional(Schema.String.pipe(Schema.maxLength(4 * 1024 * 1024))),
  /** Prompt as token ids. */
  ids: Schema.optional(Schema.Array(TokenId).pipe(Schema.minItems(1), Schema.maxItems(1 << 20))),
  /** Model name (GET leoam.v1.models); the server's default when absent. */
  model: Schema.optional(Schema.String.pipe(Schema.maxLength(256))),
  max_tokens: Schema.optional(Schema.Int.pipe(Schema.between(1, 1 << 20))),
  temperature: Schema.optional(Schema.Number.pipe(Schema.between(0, 100))),
  top_p: Schema.optional(Schema.Number.pipe(Schema.greaterThan(0), Schema.lessThanOrEqualTo(1))),
  top_k: Schema.optional(Schema.Int.pipe(Schema.between(0, 1 << 20))),
  seed: Schema.optional(Schema.Int.pipe(Schema.between(0, 2 ** 32 - 1))),
  /** Strings that end generation; the reply's text stops before the first match. */
  stop: Schema.optional(Schema.Array(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256))).pipe(Schema.maxItems(16))),
  /** A subject that receives StreamEvent messages as tokens come. */
  stream: Schema.optional(PublishSubject),
}).annotations({ identifier: "GenerateRequest", parseOptions: { onExcessProperty: "error" } })
export type GenerateRequest = typeof GenerateRequest.Type

export const Usage = Schema.Struct({
  prompt_tokens: Schema.Int,
  completion_tokens: Schema.Int,
  /** Prompt tokens whose KV was not prefilled: the whole chunks of a prefix shared with a running request or a stored session (absent when none). */
  cached_tokens: Schema.optional(Schema.Int),
})

const TierCounters = { hits: Schema.Int, bytes_read: Schema.Number }

/** KV statistics of one request under a tiered policy (leoam, offload-all). */
export const KvStats = Schema.Struct({
  policy: Schema.String,
  /**
   * hits, misses: decode's chosen chunks the GPU slots held or loaded (one per chunk chosen, per
   * layer and step); prefill_hits, prefill_misses: prefill windows' chunks held or loaded, counted
   * apart (left out by older executors, which counted them in hits and misses); bytes_read: both
   * phases. peer_copies, peer_copy_bytes: GPU misses copied on the device from a lane running beside this one that holds the same stored bytes of a shared prefix chunk (the uploads saved).
   */
  gpu: Schema.Struct({ ...TierCounters, misses: Schema.Int, prefill_hits: Schema.optional(Schema.Int), prefill_misses: Schema.optional(Schema.Int), budget_bytes: Schema.Number, resident_bytes: Schema.Number, peer_copies: Schema.optional(Schema.Int), peer_copy_bytes: Schema.optional(Schema.Number) }),
  host: Schema.Struct({ ...TierCounters, misses: Schema.Int, budget_bytes: Schema.Number, resident_bytes: Schema.Number, bytes_written: Schema.Number }),
  disk: Schema.Struct({ ...TierCounters, bytes_written: Schema.Number }),
  chunk_tokens: Schema.Int,
  chunks_sealed: Schema.Int,
  /** Chunk abstracts the request's cache holds (all layers): with adaptive chunking, fewer where attention is sparse. */
  abstracts: Schema.optional(Schema.Int),
  /** Bytes stored per tier: chunks in this cache's GPU slots, the host arena's (shared by sessions), the sequence's chunks on disk. */
  bytes_stored: Schema.optional(Schema.Struct({ gpu: Schema.Number, host: Schema.Number, disk: Schema.Number })),
  /** Bytes of the chunk abstracts per tier: their GPU copy (counted in the GPU budget: fine slots, groups, the seal's scratch) and LMDB's (the sequence's). */
  abstract_bytes: Schema.optional(Schema.Struct({ gpu: Schema.Number, disk: Schema.Number })),
  /**
   * Scoring under the policy's `abstracts`: all or budgeted fine abstracts on the GPU (slots per
   * layer, resident now), chunks per group (0: none), abstracts uploaded from LMDB, and per step
   * (all layers) the groups and chunks scored.
   */
  abstract_scoring: Schema.optional(
    Schema.Struct({
      resident: Schema.Literal("all", "budgeted"),
      group_chunks: Schema.Int,
      gpu_slots: Schema.Int,
      gpu_resident: Schema.Int,
      fetched: Schema.Int,
      groups_scored_per_step: Schema.Number,
      chunks_scored_per_step: Schema.Number,
    }),
  ),
  steps: Schema.Int,
  windows: Schema.Int,
  chunks_selected_per_step: Schema.Number,
  tokens_selected_per_step: Schema.Number,
  time_ms: Schema.Struct({ select: Schema.Number, transfer: Schema.Number, seal: Schema.Number, attention: Schema.Number }),
  staging_waits: Schema.Int,
  /**
   * The pipelined step: its depth (0: off), layers attended from the GPU's own hit/miss split
   * (run ahead and checked afterwards, or completed by a combine), rewinds (a checked layer
   * missed) and the layers computed again, layers whose late misses a combine merged.
   */
  pipeline: Schema.optional(
    Schema.Struct({ depth: Schema.Int, layers_routed: Schema.Int, rewinds: Schema.Int, layers_rewound: Schema.Int, layers_combined: Schema.optional(Schema.Int) }),
  ),
  /**
   * Prefetch (policy `prefetch`): its settings; forecasts made, and those back too late for
   * their layer; visits of layers whose forecast was loaded; chunks and bytes loaded ahead; at
   * those visits, loaded chunks chosen (hits), chosen chunks still missing (misses), bytes
   * loaded and not chosen (wasted); failed loads; host ms in the loads (overlapping the waits).
   * The forecasts' quality at the visits of layers whose forecast landed, over the chunks the
   * layer scores (sink and recent, always chosen, left out): forecast chunks, chosen chunks, and
   * forecast chunks chosen (precision: forecast_chosen / forecast_chunks; recall: / chosen_chunks).
   * Adaptive prefetch (policy `prefetch.adaptive`; left out by older executors): whether on, steps
   * it sat out, pauses, probes, and its last judgement over its recent steps: loaded chunks chosen
   * / loaded (precision), host ms per chunk loaded, and the miss path's host ms per chunk missed.
   */
  prefetch: Schema.optional(
    Schema.Struct({
      layers: Schema.Int,
      from: Schema.Literal("choice", "query", "hidden"),
      steps: Schema.Boolean,
      forecasts: Schema.Int,
      late: Schema.Int,
      visits: Schema.Int,
      chunks: Schema.Int,
      bytes: Schema.Number,
      hits: Schema.Int,
      misses: Schema.Int,
      wasted_bytes: Schema.Number,
      failed: Schema.Int,
      ms: Schema.Number,
      forecast_chunks: Schema.Int,
      chosen_chunks: Schema.Int,
      forecast_chosen: Schema.Int,
      adaptive: Schema.optional(Schema.Boolean),
      paused_steps: Schema.optional(Schema.Int),
      pauses: Schema.optional(Schema.Int),
      probes: Schema.optional(Schema.Int),
      judged: Schema.optional(Schema.Struct({ precision: Schema.Number, load_ms_per_chunk: Schema.Number, miss_ms_per_chunk: Schema.Number })),
    }),
  ),
  /**
   * Compression: the setting, decode's GPU slot bits, chunks sealed per dtype, bytes uploaded into
   * the GPU chunk cache; the fill of decode's compressed slots at the switch from prefill (chunks,
   * bytes, host ms) and sealed chunks admitted to them from the seal's quantizer on the GPU.
   */
  compression: Schema.optional(
    Schema.Struct({
      bits: Schema.Union(Schema.Literal(16, 8, 4), Schema.Literal("importance")),
      slot_bits: Schema.Int,
      gpu_slots: Schema.Int,
      sealed: Schema.Struct({ f16: Schema.Int, int8: Schema.Int, int4: Schema.Int }),
      upload_bytes: Schema.Number,
      warm: Schema.Struct({ chunks: Schema.Int, bytes: Schema.Number, ms: Schema.Number }),
      admitted: Schema.Int,
    }),
  ),
  /**
   * Recompute (policy `recompute`): the setting and whether it applies to this model now; of
   * the chunks read from disk (disk.hits), those recomputed from their hidden records and those
   * fetched as K/V; hidden bytes read (also in disk.bytes_read) and written; host ms of its loads.
   */
  recompute: Schema.optional(
    Schema.Struct({
      mode: Schema.Literal("off", "auto", "always"),
      active: Schema.Boolean,
      chunks_recomputed: Schema.Int,
      chunks_fetched_from_disk: Schema.Int,
      hidden_bytes_read: Schema.Number,
      hidden_bytes_written: Schema.Number,
      ms: Schema.Number,
    }),
  ),
}).annotations({ identifier: "KvStats" })
export type KvStats = typeof KvStats.Type

export const GenerateReply = Schema.Struct({
  model: Schema.String,
  ids: Schema.Array(Schema.Int),
  text: Schema.String,
  finish_reason: Schema.Literal("length", "stop"),
  usage: Usage,
  timings: Schema.Struct({
    queue_ms: Schema.Number,
    prefill_ms: Schema.Number,
    decode_ms_per_token: Schema.Number,
    total_ms: Schema.Number,
  }),
  /** Present under a tiered KV policy: bytes read and hits per tier, selection, time. */
  kv: Schema.optional(KvStats),
}).annotations({ identifier: "GenerateReply" })
export type GenerateReply = typeof GenerateReply.Type

/** One generated token's text (`done`: the last event, after the last token). */
export const TokenStreamEvent = Schema.Struct({
  index: Schema.Int,
  id: Schema.optional(Schema.Int),
  text: Schema.String,
  done: Schema.Boolean,
}).annotations({ identifier: "TokenStreamEvent", description: "one generated token's new text; the last event has done: true" })
export type TokenStreamEvent = typeof TokenStreamEvent.Type

/** Prompt tokens through the model so far (a few a second while it runs, the last with done = total), before the first token. */
export const PrefillStreamEvent = Schema.Struct({
  prefill: Schema.Struct({ done: Schema.Int, total: Schema.Int }),
}).annotations({
  identifier: "PrefillStreamEvent",
  description: "prompt tokens through the model so far, of total: a few a second while the prompt is prefilled, never going back, the last with done = total, all before the first token",
})
export type PrefillStreamEvent = typeof PrefillStreamEvent.Type

/** Published to the request's `stream` subject: prefill progress, then one per token, then one with done. */
export const StreamEvent = Schema.Union(PrefillStreamEvent, TokenStreamEvent).annotations({
  identifier: "StreamEvent",
  description: "published to a generate request's stream subject: prefill progress, then the tokens",
})
export type StreamEvent = typeof StreamEvent.Type

/** leoam.v1.cancel (protocol/subjects.ts cancelSubject): stop the generate that streams to `stream` (its client left). */
export const StreamCancelRequest = Schema.Struct({ stream: PublishSubject }).annotations({
  identifier: "StreamCancelRequest",
  parseOptions: { onExcessProperty: "error" },
})
/** `cancelled`: this node was running it (or had it queued: it is answered with no tokens when its turn comes). */
export const StreamCancelReply = Schema.Struct({ cancelled: Schema.Boolean }).annotations({ identifier: "StreamCancelReply" })
export type StreamCancelReply = typeof StreamCancelReply.Type

export const TokenizeRequest = Schema.Struct({
  text: Schema.String.pipe(Schema.maxLength(MAX_TOKENIZE_TEXT)),
  model: Schema.optional(Schema.String.pipe(Schema.maxLength(256))),
}).annotations({ identifier: "TokenizeRequest", parseOptions: { onExcessProperty: "error" } })
export type TokenizeRequest = typeof TokenizeRequest.Type

export const TokenizeReply = Schema.Struct({ model: Schema.String, ids: Schema.Array(Schema.Int), count: Schema.Int }).annotations({
  identifier: "TokenizeReply",
})
export type TokenizeReply = typeof TokenizeReply.Type

/** The shape of a served model, shared by the public models reply and the actors. */
export const modelShapeFields = {
  context_length: Schema.Int,
  vocab_size: Schema.Int,
  layers: Schema.Int,
  hidden_size: Schema.Int,
  heads: Schema.Int,
  kv_heads: Schema.Int,
}

export const ModelInfo = Schema.Struct({ name: Schema.String, default: Schema.Boolean, ...modelShapeFields })
export const ModelsReply = Schema.Struct({ models: Schema.Array(ModelInfo) }).annotations({ identifier: "ModelsReply" })
export type ModelsReply = typeof ModelsReply.Type

export const HealthReply = Schema.Struct({
  status: Schema.Literal("ok", "draining"),
  version: Schema.String,
  device: Schema.String,
  actors: Schema.Array(Schema.Struct({ name: Schema.String, status: Schema.Literal("running", "restarting"), restarts: Schema.Int })),
  queue: Schema.Struct({ depth: Schema.Int, capacity: Schema.Int, in_flight: Schema.Int }),
}).annotations({ identifier: "HealthReply" })
export type HealthReply = typeof HealthReply.Type

/** The body of every error reply (also in the Nats-Service-Error headers). */
export const ErrorReply = Schema.Struct({
  error: Schema.Struct({ code: Schema.String, message: Schema.String }),
}).annotations({ identifier: "ErrorReply" })
export type ErrorReply = typeof ErrorReply.Type

/**
 * The request of models and health: an empty body (read as {}) or `{}`, nothing else.
 * (Schema.Struct({}) would be TypeScript's `{}`, which accepts any value but null.)
 */
export const EmptyRequest = Schema.declare(
  (u: unknown): u is Readonly<Record<string, never>> => typeof u === "object" && u !== null && !Array.isArray(u) && Object.keys(u).length === 0,
  { identifier: "EmptyRequest", message: () => "this subject takes an empty body or {}" },
)
