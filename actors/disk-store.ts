// The disk-store actor: serves the DiskStore (LMDB index + chunk segment files under
// --kv-dir) over internal subjects: the policy history (put, get, history) and stats.
// Control messages only. Which process holds what: the chunk files and the chunk index are
// written and read by the gpu-executor's tiered KV cache through its own DiskStore handle
// (in one process with this actor the same handle; in split-process mode its own handle on
// the same kv-dir, LMDB allowing several processes); this actor's process holds the policy
// records it stores, and its stats count the shared index but only its own process's I/O.
import { Context, Effect, Layer } from "effect"
import { DiskStore } from "../kv/disk-store.ts"
import { leoamError, type LeoamError } from "../protocol/errors.ts"
import type { DiskStats, ReplyOf, RequestOf } from "../protocol/internal.ts"
import { type ActorDefinition, serviceOf } from "./actor.ts"
import { attempt, startup } from "./errors.ts"
import { serve } from "./rpc.ts"

type PolicyVersion = ReplyOf<"diskPolicyGet">

export interface DiskStoreService {
  readonly stats: () => Effect.Effect<DiskStats, LeoamError>
  readonly policyPut: (req: RequestOf<"diskPolicyPut">) => Effect.Effect<PolicyVersion, LeoamError>
  readonly policyGet: () => Effect.Effect<PolicyVersion, LeoamError>
  readonly policyHistory: (req: RequestOf<"diskPolicyHistory">) => Effect.Effect<ReplyOf<"diskPolicyHistory">, LeoamError>
}

const guard = attempt()

const make = (store: DiskStore, kvDir: string): DiskStoreService => ({
  stats: Effect.fn("DiskStore.stats")(function* () {
    return { pid: process.pid, kv_dir: kvDir, ...(yield* guard(() => store.stats())) }
  }),
  // Records hold validated documents (PolicyPut's schema); the reply schema checks them again on encode.
  policyPut: Effect.fn("DiskStore.policyPut")(function* (req) {
    return (yield* guard(() => store.appendPolicy(req))) as PolicyVersion
  }),
  policyGet: Effect.fn("DiskStore.policyGet")(function* () {
    const latest = yield* guard(() => store.latestPolicy())
    if (!latest) return yield* leoamError("unknown_policy", "no policy has been stored in this kv-dir")
    return latest as PolicyVersion
  }),
  policyHistory: Effect.fn("DiskStore.policyHistory")(function* ({ limit }) {
    const all = (yield* guard(() => store.policyHistory())) as ReadonlyArray<PolicyVersion>
    return { history: limit === undefined ? all : all.slice(-limit) }
  }),
})

export class DiskStoreActor extends Context.Tag("leoam/actors/DiskStore")<DiskStoreActor, DiskStoreService>() {
  /** With `store`, serves that store (its owner closes it); else opens the kv-dir and closes it with the scope. */
  static readonly layer = (options: { readonly kvDir: string; readonly store?: DiskStore }) =>
    Layer.scoped(
      DiskStoreActor,
      Effect.gen(function* () {
        const store = options.store
          ? options.store
          : yield* Effect.acquireRelease(
              startup()(async () => DiskStore.open({ kvDir: options.kvDir })),
              (s) => Effect.promise(() => s.close().catch(() => undefined)),
            )
        return make(store, options.kvDir)
      }),
    )
}

export const diskStoreActor = (options: { readonly kvDir: string; readonly store?: DiskStore }): ActorDefinition<DiskStoreService> => ({
  name: "disk-store",
  mailbox: 1024,
  service: serviceOf(DiskStoreActor, DiskStoreActor.layer(options)),
  stats: (s) => {
    const exit = Effect.runSyncExit(s.stats())
    return exit._tag === "Success" ? exit.value : undefined
  },
  handlers: [serve("diskPolicyPut", (s: DiskStoreService, req) => s.policyPut(req))],
  immediate: [
    serve("diskStats", (s: DiskStoreService) => s.stats()),
    serve("diskPolicyGet", (s: DiskStoreService) => s.policyGet()),
    serve("diskPolicyHistory", (s: DiskStoreService, req) => s.policyHistory(req)),
  ],
})
