// Messages between the actors (control plane only: ids and numbers, never KV bytes).
import { Schema } from "effect"
import { KvStats, modelShapeFields } from "./messages.ts"

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
  /** Subject that receives one TokenEvent per decode step (at most one message a step). */
  tokens: Schema.String,
})
export type RunRequest = typeof RunRequest.Type

export const TokenEvent = Schema.Struct({ run_id: Schema.String, index: Schema.Int, id: Schema.Int })
export type TokenEvent = typeof TokenEvent.Type

export const RunResult = Schema.Struct({
  run_id: Schema.String,
  ids: Schema.Array(Schema.Int),
  finish_reason: Schema.Literal("length", "stop", "cancelled"),
  prefill_ms: Schema.Number,
  decode_ms_per_token: Schema.Number,
  total_ms: Schema.Number,
  kv: Schema.optional(KvStats),
})
export type RunResult = typeof RunResult.Type

export const CancelRequest = Schema.Struct({ run_id: Schema.String })

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

/** -> gpu-executor: would this policy document fit (and apply at the next step or request)? */
export const PolicyCheck = Schema.Struct({ policy: Schema.Unknown })

/** Broadcast to every actor: a new accepted policy version. */
export const PolicyChanged = Schema.Struct({ version: Schema.Int.pipe(Schema.positive()), policy: Schema.Unknown })
export type PolicyChanged = typeof PolicyChanged.Type

/** -> disk-store: store an accepted policy as the next version. */
export const PolicyPut = Schema.Struct({
  policy: Schema.Unknown,
  user: Schema.String,
  account: Schema.optional(Schema.String),
  applies: Schema.optional(Schema.Literal("next_step", "next_request")),
  reason: Schema.optional(Schema.String),
})
