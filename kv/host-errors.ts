// The one error type of the host arena. Arena methods are synchronous and throw
// HostCacheError (an Error); the host-cache actor turns it into a failed Effect and an
// error reply. `code` is stable and meant for replies; `message` names the key.

import { Schema } from "effect"

export const HostCacheErrorCode = Schema.Literal(
  /** The chunk is larger than the budget, or pinned chunks leave no room for it. */
  "budget_exceeded",
  /** A store or remove hit a chunk that is pinned (being loaded or stored). */
  "entry_busy",
  /** pin of a chunk that is not resident (or still being stored). */
  "not_resident",
  /** completeLoad or unpin of a chunk that is not pinned. */
  "not_pinned",
  /** completeStore or abortStore with a ticket that is no longer pending. */
  "ticket_stale",
  /** A chunk size that is not a positive integer. */
  "invalid_size",
)
export type HostCacheErrorCode = typeof HostCacheErrorCode.Type

export class HostCacheError extends Schema.TaggedError<HostCacheError>()("HostCacheError", {
  code: HostCacheErrorCode,
  /** The chunk key at fault, when there is one. */
  key: Schema.optional(Schema.String),
  message: Schema.String,
}) {}

export const hostCacheError = (code: HostCacheErrorCode, key: string | undefined, detail: string) =>
  new HostCacheError({ code, key, message: key === undefined ? detail : `chunk ${key}: ${detail}` })
