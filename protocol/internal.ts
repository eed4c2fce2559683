// Messages between the actors (control plane only: ids and numbers, never KV bytes), and
// `internalRpc`, the one table of every internal subject with its request and reply
// schema. Both sides go through it: the asking side encodes the request and decodes the
// reply by these schemas, the serving side decodes the request and encodes the reply.
// The per-token event is binary and lives in token-event.ts.
import { Schema } from "effect"
import { Applies, BatchStats, PolicyHistoryRequest, PolicyVersion } from "./admin.ts"
import { KvStats, modelShapeFields } from "./messages.ts"
import { KvPolicyDocument, ResolvedPolicyFromWire } from "./policy.ts"
import { internalSubjects } from "./subjects.ts"

const strict = { parseOptions: { onExcessProperty: "error" } } as const

export const Empty = Schema.Struct({}).annotations(strict)

/**
 * A run on a stored session (protocol/session.ts): `open` prefills `ids` as its document,
 * `append` adds them to it, `generate` asks them after it (keeping question and answer in the
 * session when `keep`). `owner` is the requester; another owner's session is session_not_found.
 */
export const RunSession = Schema.Struct({
  id: Schema.String,
  op: Schema.Literal("open", "append", "generate"),
  owner: Schema.String,
  keep: Schema.Boolean,
})
export type RunSession = typeof RunSession.Type

/** scheduler -> gpu-executor: one run = prefill + up to max_tokens decode steps. */
export const RunRequest = Schema.Struct({
  run_id: Schema.String,
  ids: Schema.Array(Schema.Int),
  max_tokens: Schema.Int,
  temperature: Schema.Number,
  top_p: Schema.Number,
  top_k: Schema.Int,
  seed: Schema.Int,
  stop_ids: Schema.Array(Schema.Int),
  /** Subject that receives one 8-byte token event per decode step (token-event.ts). */
  tokens: Schema.String,
  /** Also send prefill progress events to `tokens` (token-event.ts), a few a second. */
  progress: Schema.optional(Schema.Boolean),
  session: Schema.optional(RunSession),
  /**
   * The requester ("anonymous" without --users): prompts share sealed prefix chunks only with
   * the same user's requests and sessions, so a faster first token tells no one whether
   * another user's prompt began the same way. Left out (an older scheduler): "anonymous".
   */
  user: Schema.optional(Schema.String),
}).annotations(strict)
export type RunRequest = typeof RunRequest.Type

export const RunResult = Schema.Struct({
  run_id: Schema.String,
  ids: Schema.Array(Schema.Int),
  finish_reason: Schema.Literal("length", "stop", "cancelled"),
  prefill_ms: Schema.Number,
  decode_ms_per_token: Schema.Number,
  total_ms: Schema.Number,
  kv: Schema.optional(KvStats),
  /** A generate's prompt tokens taken from a shared prefix's chunks instead of prefilled (absent when none). */
  shared_tokens: Schema.optional(Schema.Int),
  /** A session run: the session's length after it, and the tokens of the whole prompt (document and question). */
  session: Schema.optional(Schema.Struct({ id: Schema.String, tokens: Schema.Int, prompt_tokens: Schema.Int, shared_tokens: Schema.optional(Schema.Int) })),
})
export type RunResult = typeof RunResult.Type

export const CancelRequest = Schema.Struct({ run_id: Schema.String }).annotations(strict)

export const Ok = Schema.Struct({ ok: Schema.Literal(true) })

export const ActorStatus = Schema.Struct({
  name: Schema.String,
  pid: Schema.Int,
  status: Schema.Literal("running", "restarting"),
  restarts: Schema.Int,
  stats: Schema.optional(Schema.Unknown),
})
export type ActorStatus = typeof ActorStatus.Type

export const ModelDescription = Schema.Struct({
  name: Schema.String,
  ...modelShapeFields,
  eos_ids: Schema.Array(Schema.Int),
  device: Schema.String,
})
export type ModelDescription = typeof ModelDescription.Type

/** -> gpu-executor: would this resolved policy fit (and apply at the next step or request)? */
export const PolicyCheck = Schema.Struct({ resolved: ResolvedPolicyFromWire }).annotations(strict)

/**
 * Broadcast: a new accepted policy version, resolved once by the admin (every parameter
 * filled in). Only the gpu-executor acts on it; it alone decides when each tier switches.
 */
export const PolicyChanged = Schema.Struct({ version: Schema.Int.pipe(Schema.positive()), resolved: ResolvedPolicyFromWire }).annotations(strict)
export type PolicyChanged = typeof PolicyChanged.Type

/** The executor's answer to a broadcast: the version it now runs or holds as pending. */
export const PolicyAck = Schema.Struct({ ok: Schema.Literal(true), version: Schema.Int })

/** -> disk-store: store an accepted policy as the next version. */
export const PolicyPut = Schema.Struct({
  policy: KvPolicyDocument,
  user: Schema.String,
  account: Schema.optional(Schema.String),
  applies: Schema.optional(Applies),
  reason: Schema.optional(Schema.String),
}).annotations(strict)

export const PolicyHistory = Schema.Struct({ history: Schema.Array(PolicyVersion) })

/** The gpu-executor's totals since it started (admin stats). */
export const ExecutorTotals = Schema.Struct({
  kv: Schema.Struct({
    /** prefill_hits, prefill_misses: left out by executors older than the split (their hits and misses include prefill's). */
    gpu: Schema.Struct({ hits: Schema.Number, misses: Schema.Number, prefill_hits: Schema.optional(Schema.Number), prefill_misses: Schema.optional(Schema.Number), bytes_read: Schema.Number }),
    host: Schema.Struct({ hits: Schema.Number, misses: Schema.Number, bytes_read: Schema.Number, bytes_written: Schema.Number }),
    disk: Schema.Struct({ hits: Schema.Number, bytes_read: Schema.Number, bytes_written: Schema.Number }),
    steps: Schema.Number,
    chunks_sealed: Schema.Number,
    /** Left out by executors older than prefetch. */
    prefetch: Schema.optional(Schema.Struct({ chunks: Schema.Number, bytes: Schema.Number, hits: Schema.Number, misses: Schema.Number, wasted_bytes: Schema.Number })),
    /** Left out by executors older than recompute. */
    recompute: Schema.optional(Schema.Struct({ chunks_recomputed: Schema.Number, chunks_fetched_from_disk: Schema.Number, hidden_bytes_read: Schema.Number, hidden_bytes_written: Schema.Number })),
  }),
  decodeSteps: Schema.Number,
  decodeMs: Schema.Number,
  kvMs: Schema.Struct({ select: Schema.Number, transfer: Schema.Number, seal: Schema.Number, attention: Schema.Number }),
  prefillTokens: Schema.Number,
  prefillMs: Schema.Number,
  /** The last few prefills (executor-stats.ts RECENT_PREFILLS): their count, tokens and wall time. */
  prefillRecent: Schema.Struct({ runs: Schema.Int, tokens: Schema.Number, ms: Schema.Number }),
})

export const ExecutorStats = Schema.Struct({
  policy: Schema.Struct({ name: Schema.String, active_version: Schema.Int, pending_version: Schema.NullOr(Schema.Int) }),
  gpu: Schema.Struct({ budget_bytes: Schema.NullOr(Schema.Number), resident_bytes: Schema.Number }),
  host: Schema.optional(Schema.Struct({ budget_bytes: Schema.Number, resident_bytes: Schema.Number })),
  /** The chunk abstracts of the executor's tiered cache: its GPU copy (in the budget) and the sequence's in LMDB. */
  abstract_bytes: Schema.optional(Schema.Struct({ gpu: Schema.Number, disk: Schema.Number })),
  runs: Schema.Int,
  tokens: Schema.Int,
  current_run: Schema.NullOr(Schema.String),
  totals: ExecutorTotals,
  /** The continuous batch (--max-batch above 1): its bound, runs decoding and prefilling, runs waiting for KV room, GPU KV bytes reserved. */
  batch: Schema.optional(BatchStats),
})
export type ExecutorStats = typeof ExecutorStats.Type

/** The host arena's counters (kv/host-arena.ts HostArenaStats), its eviction, and the process that holds it. */
export const HostCacheStats = Schema.Struct({
  pid: Schema.Int,
  /** The eviction the arena runs now (set by the gpu-executor's KV manager when a policy change applies). */
  eviction: Schema.String,
  budgetBytes: Schema.Number,
  residentBytes: Schema.Number,
  entries: Schema.Number,
  pinned: Schema.Number,
  hits: Schema.Number,
  misses: Schema.Number,
  bytesIn: Schema.Number,
  bytesOut: Schema.Number,
  evictions: Schema.Number,
  evictedBytes: Schema.Number,
  compactions: Schema.Number,
  movedBytes: Schema.Number,
})
export type HostCacheStats = typeof HostCacheStats.Type

/** The disk store's counters (kv/disk-store.ts DiskStoreStats), and the process that answers. */
export const DiskStats = Schema.Struct({
  pid: Schema.Int,
  kv_dir: Schema.String,
  bytesWritten: Schema.Number,
  bytesRead: Schema.Number,
  chunkWrites: Schema.Number,
  chunkReads: Schema.Number,
  corruptReads: Schema.Number,
  chunkCount: Schema.Number,
  abstractCount: Schema.Number,
  sessionCount: Schema.Number,
  fileBytes: Schema.Number,
  crc32Native: Schema.Boolean,
})
export type DiskStats = typeof DiskStats.Type

/** A stored session as its node's gpu-executor knows it (the scheduler checks owner and length). */
export const SessionRecordWire = Schema.Struct({
  session: Schema.String,
  owner: Schema.String,
  tokens: Schema.Int,
  model: Schema.String,
  node: Schema.String,
  created: Schema.String,
  last_used: Schema.String,
  open: Schema.Boolean,
  bytes: Schema.Struct({ gpu: Schema.Number, host: Schema.Number, disk: Schema.Number }),
})
export type SessionRecordWire = typeof SessionRecordWire.Type

export const SessionOwned = Schema.Struct({ session: Schema.String, owner: Schema.String }).annotations(strict)
export const SessionNodeList = Schema.Struct({ node: Schema.String, sessions: Schema.Array(SessionRecordWire) })

/** A session request forwarded to the node holding the session, with the requester the first node saw. */
export const SessionForward = Schema.Struct({
  op: Schema.Literal("open", "append", "generate", "close", "delete"),
  body: Schema.Unknown,
  user: Schema.String,
  account: Schema.optional(Schema.String),
}).annotations(strict)
export type SessionForward = typeof SessionForward.Type

/** One internal subject: where it goes, what it takes, what it answers. */
export interface Rpc<Req extends Schema.Schema.AnyNoContext, Rep extends Schema.Schema.AnyNoContext> {
  readonly subject: string
  readonly request: Req
  readonly reply: Rep
}

const rpc = <Req extends Schema.Schema.AnyNoContext, Rep extends Schema.Schema.AnyNoContext>(subject: string, request: Req, reply: Rep): Rpc<Req, Rep> => ({
  subject,
  request,
  reply,
})

/** Every internal subject (protocol/subjects.ts internalSubjects), by the same key. */
export const internalRpc = {
  executorRun: rpc(internalSubjects.executorRun, RunRequest, RunResult),
  executorCancel: rpc(internalSubjects.executorCancel, CancelRequest, Ok),
  executorDescribe: rpc(internalSubjects.executorDescribe, Empty, ModelDescription),
  executorPolicyCheck: rpc(internalSubjects.executorPolicyCheck, PolicyCheck, Schema.Struct({ applies: Applies })),
  executorStats: rpc(internalSubjects.executorStats, Empty, ExecutorStats),
  hostCacheStats: rpc(internalSubjects.hostCacheStats, Empty, HostCacheStats),
  diskStats: rpc(internalSubjects.diskStats, Empty, DiskStats),
  diskPolicyPut: rpc(internalSubjects.diskPolicyPut, PolicyPut, PolicyVersion),
  diskPolicyGet: rpc(internalSubjects.diskPolicyGet, Empty, PolicyVersion),
  diskPolicyHistory: rpc(internalSubjects.diskPolicyHistory, PolicyHistoryRequest, PolicyHistory),
  policyChanged: rpc(internalSubjects.policyChanged, PolicyChanged, PolicyAck),
  ping: rpc(internalSubjects.ping, Empty, ActorStatus),
  executorSessionInfo: rpc(internalSubjects.executorSessionInfo, SessionOwned, SessionRecordWire),
  executorSessionClose: rpc(internalSubjects.executorSessionClose, SessionOwned, SessionRecordWire),
  executorSessionDelete: rpc(internalSubjects.executorSessionDelete, SessionOwned, Ok),
  sessionList: rpc(internalSubjects.sessionList, Empty, SessionNodeList),
  sessionForward: rpc(internalSubjects.sessionForward, SessionForward, Schema.Unknown),
} as const satisfies Record<keyof typeof internalSubjects, Rpc<Schema.Schema.AnyNoContext, Schema.Schema.AnyNoContext>>

export type InternalRpc = typeof internalRpc
export type RpcKey = keyof InternalRpc
export type RequestOf<K extends RpcKey> = Schema.Schema.Type<InternalRpc[K]["request"]>
export type ReplyOf<K extends RpcKey> = Schema.Schema.Type<InternalRpc[K]["reply"]>
