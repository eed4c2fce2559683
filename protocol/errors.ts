// The stable error codes of every reply, and the one error type that carries them. An
// error reply has the JSON body {"error": {"code", "message"}} and the NATS services
// headers Nats-Service-Error-Code (a numeric class below) and Nats-Service-Error
// ("code: message"). Every code has a status; the actors answer a code only for a
// LeoamError (library errors are mapped to one by actors/errors.ts), never by duck typing.
import { Schema } from "effect"

export const errorStatus = {
  invalid_json: 400,
  invalid_request: 400,
  invalid_ids: 400,
  unknown_model: 404,
  permission_denied: 403,
  node_id_in_use: 409,
  context_overflow: 413,
  payload_too_large: 413,
  busy: 429,
  shutting_down: 503,
  actor_restarted: 503,
  actor_unavailable: 503,
  timeout: 504,
  kv_dir_unavailable: 503,
  disk_full: 507,
  budget_exceeded: 507,
  chunk_missing: 404,
  abstract_missing: 404,
  chunk_corrupt: 500,
  io_failed: 500,
  unknown_policy: 404,
  session_not_found: 404,
  session_needs_tiered_policy: 409,
  session_incompatible: 409,
  session_quota: 429,
  invalid_policy: 400,
  kv_budget_too_small: 400,
  numerical_failure: 500,
  internal: 500,
} as const

export type ErrorCode = keyof typeof errorStatus

export class LeoamError extends Schema.TaggedError<LeoamError>()("LeoamError", {
  code: Schema.Literal(...(Object.keys(errorStatus) as [ErrorCode, ...ErrorCode[]])),
  message: Schema.String,
}) {}

export const leoamError = (code: ErrorCode, message: string) => new LeoamError({ code, message })
