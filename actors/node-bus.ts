// A node's view of the bus: the NATS connection its actors use, with every internal
// subject moved under the node's prefix (protocol/subjects.ts `onNode`). The actors name
// `internalSubjects` as they are and never learn the node id; public, cluster and inbox
// subjects pass unchanged. Without a node id the view is the connection itself. A node id
// is one node's: a process that would run an actor its node already runs is refused.
import type { NatsConnection } from "@nats-io/nats-core"
import { leoamError } from "../protocol/errors.ts"
import { onNode } from "../protocol/subjects.ts"
import { type ActorName, pingActors } from "./actor.ts"

export const nodeView = (nc: NatsConnection, node: string | undefined): NatsConnection => {
  if (node === undefined) return nc
  const on = (subject: string) => onNode(subject, node)
  const scoped: Partial<NatsConnection> = {
    publish: (subject, payload, opts) => nc.publish(on(subject), payload, opts),
    subscribe: (subject, opts) => nc.subscribe(on(subject), opts),
    request: (subject, payload, opts) => nc.request(on(subject), payload, opts),
    requestMany: (subject, payload, opts) => nc.requestMany(on(subject), payload, opts),
  }
  return new Proxy(nc, {
    get: (target, key) => {
      if (typeof key === "string" && key in scoped) return scoped[key as keyof NatsConnection]
      const value = Reflect.get(target, key, target) as unknown
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value
    },
  })
}

/** How long a starting node listens for actors already running under its id (a ping; an idle bus answers "no responders" at once). */
export const DUPLICATE_CHECK_MS = 1000

/**
 * Refuses to start actors under a node id that already runs them on this bus: a second
 * `leoam serve --node a` would share node a's internal subjects (its runs, broadcasts and
 * health) with the first. The first node is only pinged, never disturbed. Processes of one
 * node split over the bus (the same id, different actors) pass. Two processes starting
 * within the same second can both pass (each pings before the other listens).
 */
export const refuseDuplicate = async (view: NatsConnection, node: string, actors: ReadonlyArray<ActorName>, waitMs = DUPLICATE_CHECK_MS): Promise<void> => {
  // No actor on the id's ping subject: NATS says "no responders" at once (raised by pingActors' iterator).
  const pongs = await pingActors(view, waitMs).catch((e: unknown) => {
    if (/no responders/i.test(String(e))) return []
    throw e
  })
  const live = pongs.filter((a) => (actors as ReadonlyArray<string>).includes(a.name))
  if (live.length === 0) return
  const names = [...new Set(live.map((a) => a.name))].sort().join(", ")
  const pids = [...new Set(live.map((a) => a.pid))].join(", ")
  throw leoamError(
    "node_id_in_use",
    `node id "${node}" is in use on this NATS: its ${names} already run${live.length === 1 ? "s" : ""} (pid ${pids}); give this node another --node id (or none, for a fresh one), or stop the running one first`,
  )
}
