// The admin subjects (leoam.v1.admin.*), served by the scheduler beside the public ones:
// the live KV policy and the node's statistics. A policy change is validated here (schema),
// checked by the gpu-executor (does it fit the GPU budget; does it apply at the next step or
// the next request), stored as the next version by the disk-store (LMDB), then broadcast:
// every actor switches at its next step boundary. Nothing changes when any of that fails.
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { JSONSchema } from "effect"
import type { PolicyRecord } from "../kv/records.ts"
import type { DiskStoreStats } from "../kv/disk-store.ts"
import type { ExecutorStats } from "./gpu-executor.ts"
import type { HostArenaStats } from "../kv/host-arena.ts"
import { requesterOf } from "./access.ts"
import { askActor, decodeAs, encodeJson } from "./nats.ts"
import { type AdminStatsReply, type Applies, PolicyHistoryRequest, PolicySetRequest } from "../protocol/admin.ts"
import { leoamError } from "../protocol/errors.ts"
import { EmptyRequest } from "../protocol/messages.ts"
import { evictionNames, KvPolicyDocument, parsePolicy, parsePolicyDocument, policyCatalog, policyView } from "../protocol/policy.ts"
import { adminSubjects, internalSubjects } from "../protocol/subjects.ts"

export interface AdminContext {
  readonly nc: NatsConnection
  /** The scheduler's queue: waiting, one being served, and the bound. */
  readonly load: () => { readonly queued: number; readonly busy: boolean; readonly capacity: number }
  /** Generate requests completed and tokens they generated. */
  readonly counters: () => { readonly requests: number; readonly generated: number }
}

type AdminHandler = (body: unknown, msg: Msg) => Promise<unknown>

const ratio = (hits: number, misses: number) => (hits + misses > 0 ? hits / (hits + misses) : null)

/** The admin handlers by subject. */
export const adminHandlers = (ctx: AdminContext): Record<keyof typeof adminSubjects, AdminHandler> => {
  const { nc } = ctx
  const executor = () => askActor<ExecutorStats>(nc, internalSubjects.executorStats, {}, 5000)

  return {
    policyGet: async (body) => {
      decodeAs(EmptyRequest, body)
      const [latest, ex] = await Promise.all([askActor<PolicyRecord>(nc, internalSubjects.diskPolicyGet, {}), executor()])
      return {
        ...latest,
        resolved: policyView(parsePolicy(latest.policy)),
        executor: { active_version: ex.policy.active_version, pending_version: ex.policy.pending_version },
      }
    },

    policySet: async (body, msg) => {
      // `{"policy": ..., "reason"?}`, or a policy document alone (it has `name`, never `policy`).
      const bare = typeof body === "object" && body !== null && !Array.isArray(body) && !("policy" in body) && "name" in body
      const req = decodeAs(PolicySetRequest, bare ? { policy: body } : body)
      if (req.policy === undefined) throw leoamError("invalid_request", "the request has no `policy` (a policy name or document)")
      // A PolicyError carries its code (unknown_policy, invalid_policy): the handler wrapper replies with it.
      const { document, resolved } = parsePolicyDocument(req.policy)
      // The executor refuses what does not fit (kv_budget_too_small) before anything is stored.
      const { applies } = await askActor<{ applies: Applies }>(nc, internalSubjects.executorPolicyCheck, { policy: document })
      const who = requesterOf(msg.headers)
      const record = await askActor<PolicyRecord>(nc, internalSubjects.diskPolicyPut, { policy: document, ...who, applies, ...(req.reason ? { reason: req.reason } : {}) })
      nc.publish(internalSubjects.policyChanged, encodeJson({ version: record.version, policy: document }))
      await nc.flush()
      return { ...record, resolved: policyView(resolved), applies }
    },

    policyList: async (body) => {
      decodeAs(EmptyRequest, body)
      return { policies: policyCatalog(), eviction: [...evictionNames], schema: JSONSchema.make(KvPolicyDocument) }
    },

    policyHistory: async (body) => {
      const req = decodeAs(PolicyHistoryRequest, body)
      return askActor<{ history: PolicyRecord[] }>(nc, internalSubjects.diskPolicyHistory, req)
    },

    stats: async (body): Promise<AdminStatsReply> => {
      decodeAs(EmptyRequest, body)
      const [ex, host, disk] = await Promise.all([
        executor(),
        askActor<HostArenaStats>(nc, internalSubjects.hostCacheStats, {}, 5000).catch(() => undefined),
        askActor<DiskStoreStats>(nc, internalSubjects.diskStats, {}, 5000).catch(() => undefined),
      ])
      const t = ex.totals
      const load = ctx.load()
      const c = ctx.counters()
      const k = t.kv
      const kvMs = t.kvMs.select + t.kvMs.transfer + t.kvMs.seal + t.kvMs.attention
      return {
        at: new Date().toISOString(),
        policy: ex.policy,
        queue: { depth: load.queued, capacity: load.capacity, in_flight: load.busy ? 1 : 0 },
        requests: { completed: c.requests, generated_tokens: c.generated },
        tiers: {
          gpu: { ...ex.gpu, hits: k.gpu.hits, misses: k.gpu.misses, hit_rate: ratio(k.gpu.hits, k.gpu.misses), bytes_read: k.gpu.bytes_read },
          host: {
            budget_bytes: ex.host?.budget_bytes ?? host?.budgetBytes ?? null,
            resident_bytes: ex.host?.resident_bytes ?? host?.residentBytes ?? 0,
            hits: k.host.hits,
            misses: k.host.misses,
            hit_rate: ratio(k.host.hits, k.host.misses),
            bytes_read: k.host.bytes_read,
            bytes_written: k.host.bytes_written,
          },
          disk: { resident_bytes: disk?.fileBytes ?? 0, hits: k.disk.hits, bytes_read: k.disk.bytes_read, bytes_written: k.disk.bytes_written },
        },
        steps: {
          count: t.decodeSteps,
          ms: {
            total: t.decodeMs,
            scoring: t.kvMs.select,
            transfer: t.kvMs.transfer,
            attention: t.kvMs.attention,
            seal: t.kvMs.seal,
            rest: Math.max(0, t.decodeMs - kvMs),
          },
        },
        prefill: { tokens: t.prefillTokens, ms: t.prefillMs },
      }
    },
  }
}
