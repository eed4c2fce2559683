// A node's view of the bus: the NATS connection its actors use, with every internal
// subject moved under the node's prefix (protocol/subjects.ts `onNode`). The actors name
// `internalSubjects` as they are and never learn the node id; public, cluster and inbox
// subjects pass unchanged. Without a node id the view is the connection itself.
import type { NatsConnection } from "@nats-io/nats-core"
import { onNode } from "../protocol/subjects.ts"

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
