// The disk-store actor: owns the DiskStore (LMDB index + chunk segment files under
// --kv-dir) and serves it over internal subjects. Control messages only: chunk bytes are
// read and written through the files that both sides map, never through NATS.
import { Schema } from "effect"
import { PolicyHistoryRequest } from "../protocol/admin.ts"
import { leoamError } from "../protocol/errors.ts"
import { PolicyPut } from "../protocol/internal.ts"
import { internalSubjects } from "../protocol/subjects.ts"
import type { ActorDefinition } from "./actor.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { decodeAs } from "./nats.ts"

const SessionGet = Schema.Struct({ id: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256)) })
const SessionPut = Schema.Struct({
  id: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256)),
  model: Schema.String,
  tokens: Schema.Int.pipe(Schema.nonNegative()),
})

/** With `store`, the actor serves that store (shared in-process with the gpu-executor's tiered cache) and its owner closes it. */
export const diskStoreActor = (options: { readonly kvDir: string; readonly store?: DiskStore }): ActorDefinition<DiskStore> => ({
  name: "disk-store",
  mailbox: 1024,
  start: async () => options.store ?? DiskStore.open({ kvDir: options.kvDir }),
  stop: async (store) => {
    if (!options.store) await store.close()
  },
  stats: (store) => ({ kv_dir: options.kvDir, ...store.stats() }),
  handlers: [
    [
      internalSubjects.diskPutSession,
      async (store, body) => {
        const req = decodeAs(SessionPut, body)
        return store.putSession(req.id, { model: req.model, tokens: req.tokens })
      },
    ],
    [
      internalSubjects.diskPolicyPut,
      async (store, body) => {
        const req = decodeAs(PolicyPut, body)
        return store.appendPolicy(req)
      },
    ],
    [
      internalSubjects.diskGetSession,
      async (store, body) => {
        const { id } = decodeAs(SessionGet, body)
        const record = store.getSession(id)
        if (!record) throw leoamError("invalid_request", `no session "${id}"`)
        return record
      },
    ],
  ],
  immediate: [
    [internalSubjects.diskStats, async (store) => store.stats()],
    [
      internalSubjects.diskPolicyGet,
      async (store) => {
        const latest = store.latestPolicy()
        if (!latest) throw leoamError("unknown_policy", "no policy has been stored in this kv-dir")
        return latest
      },
    ],
    [
      internalSubjects.diskPolicyHistory,
      async (store, body) => {
        const { limit } = decodeAs(PolicyHistoryRequest, body)
        const all = store.policyHistory()
        return { history: limit === undefined ? all : all.slice(-limit) }
      },
    ],
  ],
})
