// The actor boundary's error table. Handlers fail only with LeoamError (a Schema.TaggedError
// whose every code has a status, protocol/errors.ts); errors of the libraries below (kv,
// models, the engine) that are real conditions become LeoamErrors here, by class and code,
// through exhaustive tables. Anything else — a code that means a bug (an arena ticket gone
// stale, a closed store), a RangeError, a TypeError — is a defect: the actor runtime
// answers `actor_restarted` and rebuilds the actor's state.
import { Effect } from "effect"
import { type DiskStoreErrorCode, DiskStoreError } from "../kv/disk-errors.ts"
import { type HostCacheErrorCode, HostCacheError } from "../kv/host-errors.ts"
import { KvBudgetError, KvTierError } from "../kv/tier-errors.ts"
import { type ModelErrorCode, ModelError } from "../models/errors.ts"
import { type ErrorCode, LeoamError, leoamError } from "../protocol/errors.ts"
import { PolicyError } from "../protocol/policy.ts"

/** Disk store codes: conditions of the disk (answered) or misuse (undefined: a crash). */
export const diskStoreCodes: Record<DiskStoreErrorCode, ErrorCode | undefined> = {
  kv_dir_unavailable: "kv_dir_unavailable",
  disk_full: "disk_full",
  io_failed: "io_failed",
  chunk_corrupt: "chunk_corrupt",
  chunk_missing: "chunk_missing",
  abstract_missing: "abstract_missing",
  invalid_key: undefined,
  invalid_meta: undefined,
  buffer_too_small: undefined,
  store_closed: undefined,
}

/** Host arena codes: only a chunk too large for the budget is a condition; the rest are bugs of the caller. */
export const hostCacheCodes: Record<HostCacheErrorCode, ErrorCode | undefined> = {
  budget_exceeded: "budget_exceeded",
  entry_busy: undefined,
  not_resident: undefined,
  not_pinned: undefined,
  ticket_stale: undefined,
  invalid_size: undefined,
}

/** Model loading: every failure means the model asked for cannot be served. */
export const modelCodes: Record<ModelErrorCode, ErrorCode> = {
  config_missing: "unknown_model",
  config_malformed: "unknown_model",
  unsupported_architecture: "unknown_model",
  shard_missing: "unknown_model",
  tensor_missing: "unknown_model",
  tensor_shape: "unknown_model",
  tensor_dtype: "unknown_model",
  safetensors_malformed: "unknown_model",
  tokenizer_missing: "unknown_model",
  tokenizer_malformed: "unknown_model",
  unknown_model: "unknown_model",
}

/** One row: errors of a class, and the public code of one (undefined: it is a bug). */
export type ErrorRow = readonly [new (...args: any[]) => Error, (e: any) => ErrorCode | undefined]

/** The rows every actor shares (kv, models, policy documents); the gpu-executor adds the engine's. */
export const libraryErrors: ReadonlyArray<ErrorRow> = [
  [LeoamError, (e: LeoamError) => e.code],
  [DiskStoreError, (e: DiskStoreError) => diskStoreCodes[e.code]],
  [HostCacheError, (e: HostCacheError) => hostCacheCodes[e.code]],
  [ModelError, (e: ModelError) => modelCodes[e.code]],
  [PolicyError, (e: PolicyError) => e.code],
  // The tiered KV cache: a budget too small for a policy, a tier that cannot give a chunk back.
  [KvBudgetError, () => "kv_budget_too_small"],
  [KvTierError, (e: KvTierError) => e.code],
]

/** The coded error a thrown value stands for under `rows`, or undefined when it is a bug. */
export const codedBy =
  (rows: ReadonlyArray<ErrorRow>) =>
  (e: unknown): LeoamError | undefined => {
    if (e instanceof LeoamError) return e
    for (const [cls, code] of rows) {
      if (e instanceof cls) {
        const c = code(e)
        return c === undefined ? undefined : leoamError(c, e.message)
      }
    }
    return undefined
  }

export const codedError = codedBy(libraryErrors)

/** Runs library code at the boundary: its coded conditions fail the Effect, anything else is a defect. */
export const attempt =
  (coded: (e: unknown) => LeoamError | undefined = codedError) =>
  <A>(f: () => A): Effect.Effect<A, LeoamError> =>
    Effect.suspend(() => {
      try {
        return Effect.succeed(f())
      } catch (e) {
        const c = coded(e)
        return c ? Effect.fail(c) : Effect.die(e)
      }
    })

/** The same for a promise. */
export const attemptPromise =
  (coded: (e: unknown) => LeoamError | undefined = codedError) =>
  <A>(f: () => Promise<A>): Effect.Effect<A, LeoamError> =>
    Effect.tryPromise({ try: f, catch: (e) => e }).pipe(
      Effect.catchAll((e) => {
        const c = coded(e)
        return c ? Effect.fail(c) : Effect.die(e)
      }),
    )

/**
 * A start-up failure: a coded condition (bad configuration: a missing kv-dir, an unknown
 * model, a budget too small) fails for good, with the original error (the CLI prints its
 * code); anything else is a defect, which the runtime retries with backoff.
 */
export const startup =
  (final: (e: unknown) => boolean = (e) => codedError(e) !== undefined) =>
  <A>(f: () => Promise<A>): Effect.Effect<A, unknown> =>
    Effect.tryPromise({ try: f, catch: (e) => e }).pipe(Effect.catchAll((e) => (final(e) ? Effect.fail(e) : Effect.die(e))))
