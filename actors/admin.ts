// The admin subjects (leoam.v1.admin.*), served by the scheduler beside the public ones:
// the live KV policy and the node's statistics. A policy change is validated here (schema),
// checked by the gpu-executor (does it fit the GPU budget; does it apply at the next step or
// the next request), stored as the next version by the disk-store (LMDB), then broadcast
// resolved: the gpu-executor switches every tier at its next step or request boundary.
// The policy is resolved once, here. Nothing changes when any of that fails.
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { Effect, JSONSchema } from "effect"
import { requesterOf } from "./access.ts"
import { codedError } from "./errors.ts"
import { ask, decodeRequest, publish } from "./rpc.ts"
import { type AdminStatsReply, PolicyHistoryRequest, PolicySetRequest } from "../protocol/admin.ts"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
import { EmptyRequest } from "../protocol/messages.ts"
import { evictionNames, KvPolicyDocument, parsePolicyDocument, policyCatalog, policyView } from "../protocol/policy.ts"
import type { adminSubjects } from "../protocol/subjects.ts"

export interface AdminContext {
  readonly nc: NatsConnection
  /** The scheduler's queue: waiting, one being served, and the bound. */
  readonly load: () => { readonly queued: number; readonly busy: boolean; readonly capacity: number; readonly serving?: number; readonly queuedByKey?: Record<string, number> }
  /** Generate requests completed and tokens they generated. */
  readonly counters: () => { readonly requests: number; readonly generated: number }
}

type AdminHandler = (body: unknown, msg: Msg) => Effect.Effect<unknown, LeoamError>

const ratio = (hits: number, misses: number) => (hits + misses > 0 ? hits / (hits + misses) : null)

/** A policy document or name, validated and resolved (unknown_policy, invalid_policy). */
const parse = (input: unknown) =>
  Effect.try({ try: () => parsePolicyDocument(input), catch: (e) => e }).pipe(
    Effect.catchAll((e) => {
      const coded = codedError(e)
      return coded ? Effect.fail(coded) : Effect.die(e)
    }),
  )

/** Tokens a second over `ms` of wall time; null before any. */
const perSecond = (tokens: number, ms: number): number | null => (ms > 0 ? (tokens * 1000) / ms : null)

/** The admin handlers by subject. */
export const adminHandlers = (ctx: AdminContext): Record<keyof typeof adminSubjects, AdminHandler> => {
  const { nc } = ctx
  const executor = () => ask(nc, "executorStats", {}, 5000)

  return {
    policyGet: Effect.fn("Admin.policyGet")(function* (body: unknown) {
      yield* decodeRequest(EmptyRequest, body)
      const [latest, ex] = yield* Effect.all([ask(nc, "diskPolicyGet", {}), executor()], { concurrency: 2 })
      const { resolved } = yield* parse(latest.policy)
      return {
        ...latest,
        resolved: policyView(resolved),
        executor: { active_version: ex.policy.active_version, pending_version: ex.policy.pending_version },
      }
    }),

    policySet: Effect.fn("Admin.policySet")(function* (body: unknown, msg: Msg) {
      // `{"policy": ..., "reason"?}`, or a policy document alone (it has `name`, never `policy`).
      const bare = typeof body === "object" && body !== null && !Array.isArray(body) && !("policy" in body) && "name" in body
      const req = yield* decodeRequest(PolicySetRequest, bare ? { policy: body } : body)
      if (req.policy === undefined) return yield* leoamError("invalid_request", "the request has no `policy` (a policy name or document)")
      const { document, resolved } = yield* parse(req.policy)
      // The executor refuses what does not fit (kv_budget_too_small) before anything is stored.
      const { applies } = yield* ask(nc, "executorPolicyCheck", { resolved })
      const who = requesterOf(msg.headers)
      const record = yield* ask(nc, "diskPolicyPut", { policy: document, ...who, applies, ...(req.reason ? { reason: req.reason } : {}) })
      // Recorded but not announced: the executors switch at their next start; the admin is told so.
      const flush = Effect.tryPromise({ try: () => nc.flush(), catch: (e) => leoamError("actor_unavailable", `the flush failed: ${(e as Error)?.message ?? String(e)}`) })
      yield* Effect.zipRight(publish(nc, "policyChanged", { version: record.version, resolved }), flush).pipe(
        Effect.mapError((e) => leoamError("actor_unavailable", `policy version ${record.version} was recorded but not announced to the executors (they take it at their next start): ${e.message}`)),
      )
      return { ...record, resolved: policyView(resolved), applies }
    }),

    policyList: Effect.fn("Admin.policyList")(function* (body: unknown) {
      yield* decodeRequest(EmptyRequest, body)
      return { policies: policyCatalog(), eviction: [...evictionNames], schema: JSONSchema.make(KvPolicyDocument) }
    }),

    policyHistory: Effect.fn("Admin.policyHistory")(function* (body: unknown) {
      const req = yield* decodeRequest(PolicyHistoryRequest, body)
      return yield* ask(nc, "diskPolicyHistory", req)
    }),

    stats: Effect.fn("Admin.stats")(function* (body: unknown) {
      yield* decodeRequest(EmptyRequest, body)
      const [ex, host, disk] = yield* Effect.all(
        [executor(), Effect.option(ask(nc, "hostCacheStats", {}, 5000)), Effect.option(ask(nc, "diskStats", {}, 5000))],
        { concurrency: 3 },
      )
      const h = host._tag === "Some" ? host.value : undefined
      const d = disk._tag === "Some" ? disk.value : undefined
      const t = ex.totals
      const load = ctx.load()
      const c = ctx.counters()
      const k = t.kv
      // Host phases only: the GPU's attention time runs inside them (see AdminStatsReply.steps).
      const hostMs = t.kvMs.select + t.kvMs.transfer + t.kvMs.seal
      const reply: AdminStatsReply = {
        at: new Date().toISOString(),
        policy: ex.policy,
        queue: { depth: load.queued, capacity: load.capacity, in_flight: load.serving ?? (load.busy ? 1 : 0), ...(load.queuedByKey ? { queued_by_user: load.queuedByKey } : {}) },
        requests: { completed: c.requests, generated_tokens: c.generated },
        ...(ex.batch ? { batch: ex.batch } : {}),
        tiers: {
          gpu: { ...ex.gpu, hits: k.gpu.hits, misses: k.gpu.misses, prefill_hits: k.gpu.prefill_hits ?? 0, prefill_misses: k.gpu.prefill_misses ?? 0, hit_rate: ratio(k.gpu.hits, k.gpu.misses), bytes_read: k.gpu.bytes_read, ...(ex.abstract_bytes ? { abstract_bytes: ex.abstract_bytes.gpu } : {}) },
          host: {
            budget_bytes: ex.host?.budget_bytes ?? h?.budgetBytes ?? null,
            resident_bytes: ex.host?.resident_bytes ?? h?.residentBytes ?? 0,
            hits: k.host.hits,
            misses: k.host.misses,
            hit_rate: ratio(k.host.hits, k.host.misses),
            bytes_read: k.host.bytes_read,
            bytes_written: k.host.bytes_written,
          },
          disk: { resident_bytes: d?.fileBytes ?? 0, hits: k.disk.hits, bytes_read: k.disk.bytes_read, bytes_written: k.disk.bytes_written, ...(ex.abstract_bytes ? { abstract_bytes: ex.abstract_bytes.disk } : {}) },
        },
        steps: {
          count: t.decodeSteps,
          ms: {
            total: t.decodeMs,
            scoring: t.kvMs.select,
            transfer: t.kvMs.transfer,
            seal: t.kvMs.seal,
            rest: Math.max(0, t.decodeMs - hostMs),
          },
          gpu_ms: { attention: t.kvMs.attention },
          ...(k.prefetch ? { prefetch: { ...k.prefetch } } : {}),
          ...(k.recompute ? { recompute: { ...k.recompute } } : {}),
        },
        prefill: {
          tokens: t.prefillTokens,
          ms: t.prefillMs,
          tokens_per_s: perSecond(t.prefillTokens, t.prefillMs),
          recent: { ...t.prefillRecent, tokens_per_s: perSecond(t.prefillRecent.tokens, t.prefillRecent.ms) },
        },
      }
      return reply
    }),
  }
}
