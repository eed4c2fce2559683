// Leases between the nodes on one NATS, so that a generate held by a node that dies is
// answered rather than lost. NATS request/reply delivers a request to one node and no other
// node knows of it, so each node publishes its lease (protocol/cluster.ts) on
// clusterSubjects.leases: at once when a generate arrives (coalesced per event-loop turn)
// and every HEARTBEAT_MS, listing the reply subjects it holds. Every node keeps its peers'
// latest leases; a peer silent for `silenceMs` is dead, and the live node with the smallest
// instance id answers each reply subject it held with `actor_unavailable`. A node that stops
// answers its own requests (drain) and says `leaving`. A node's own time off the bus (a
// nats-server restart) or its own stalled event loop is not its peers' silence. Only this
// module publishes leases.
import { randomUUID } from "node:crypto"
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core"
import { Schema } from "effect"
import { NodeLease } from "../protocol/cluster.ts"
import { leoamError } from "../protocol/errors.ts"
import { clusterSubjects } from "../protocol/subjects.ts"
import { HEARTBEAT_MS, RUN_SILENCE_MS } from "./liveness.ts"
import { encodeJson, respondError } from "./nats.ts"
import { deliverReply } from "./reply-delivery.ts"

export interface NodeLeases {
  readonly instance: string
  /** Holds a request from now until its reply (wraps `msg.respond`); a message without a reply subject is not held. */
  readonly hold: (msg: Msg) => void
  /** Requests held by peers that were answered here because their node went silent. */
  readonly answeredForPeers: () => number
  /** The last lease, `leaving`, then no more. */
  readonly stop: () => void
}

interface Peer {
  readonly lease: NodeLease
  /** When its latest lease arrived here. */
  readonly heard: number
  /** Where its silence is counted from: `heard`, or later once this node could not listen (a stall, a reconnect). */
  readonly seen: number
  /** When its first lease arrived here: a node that appeared after a dead one's last lease never held that lease. */
  readonly first: number
}

const decodeLease = Schema.decodeUnknownOption(NodeLease)

export const startLeases = (nc: NatsConnection, node: string | undefined, silenceMs = RUN_SILENCE_MS, everyMs = HEARTBEAT_MS): NodeLeases => {
  const instance = randomUUID()
  const startedAt = Date.now()
  const held = new Set<string>()
  const peers = new Map<string, Peer>()
  let answered = 0
  let pending = false
  let stopped = false

  const lease = (leaving?: boolean): NodeLease => ({ node: node ?? "", instance, pid: process.pid, inflight: [...held], ...(leaving ? { leaving } : {}) })
  const publish = (leaving?: boolean) => {
    try {
      nc.publish(clusterSubjects.leases, encodeJson(lease(leaving)))
    } catch {
      // A closed connection: nothing left to tell.
    }
  }
  const soon = () => {
    if (pending || stopped) return
    pending = true
    setImmediate(() => {
      pending = false
      if (!stopped) publish()
    })
  }

  const sub: Subscription = nc.subscribe(clusterSubjects.leases, {
    callback: (_e, m) => {
      let body: unknown
      try {
        body = m.json<unknown>()
      } catch {
        return
      }
      const got = decodeLease(body)
      if (got._tag === "None" || got.value.instance === instance) return
      if (got.value.leaving) peers.delete(got.value.instance)
      else {
        const now = Date.now()
        peers.set(got.value.instance, { lease: got.value, heard: now, seen: now, first: peers.get(got.value.instance)?.first ?? now })
      }
    },
  })

  // While this node's own connection is down it hears no lease: that silence is not its peers'.
  // At reconnect every peer gets a fresh window (a peer that died meanwhile is reaped one silence later).
  let offline = false
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") offline = true
      else if (status.type === "reconnect") {
        offline = false
        const now = Date.now()
        for (const [id, p] of peers) peers.set(id, { ...p, seen: now })
      }
    }
  })().catch(() => undefined)

  // A tick that comes late means this node's own event loop stalled: its peers' leases may be
  // waiting unread in the socket, or not yet sent (their senders may share the stall). So a
  // stall gives every peer a fresh window, as a reconnect does, and the check runs after the
  // loop's I/O (setImmediate). At most one fresh window per two silences: a loop that is
  // always late still reaps a dead peer, within two silences.
  const tickMs = Math.max(50, Math.min(everyMs, silenceMs / 10))
  let lastTick = Date.now()
  let lastWindow = Number.NEGATIVE_INFINITY
  const reap = () => {
    const now = Date.now()
    const stalled = now - lastTick > Math.max(3 * tickMs, 250)
    lastTick = now
    if (offline) return
    if (stalled && now - lastWindow > 2 * silenceMs) {
      lastWindow = now
      for (const [id, p] of peers) peers.set(id, { ...p, seen: now })
      return
    }
    const dead = [...peers.values()].filter((p) => now - p.seen > silenceMs)
    if (dead.length === 0) return
    for (const p of dead) peers.delete(p.lease.instance)
    for (const p of dead) {
      // One answer per request: of the live nodes that were there before the dead one's last
      // lease (a node restarted since never received it, so it must not be the one chosen),
      // the one with the smallest instance id answers.
      const holders = [...(startedAt <= p.heard ? [instance] : []), ...[...peers.values()].filter((q) => q.first <= p.heard).map((q) => q.lease.instance)]
      if (holders.sort()[0] !== instance) continue
      const who = p.lease.node ? `node ${p.lease.node}` : "a node"
      for (const reply of p.lease.inflight) {
        answered++
        const error = leoamError("actor_unavailable", `${who} (pid ${p.lease.pid}) went silent (no lease for ${silenceMs} ms) while it held this request; it was not retried: send it again`)
        respondError({ reply, respond: (data, opts) => (nc.publish(reply, data, opts), true) }, error)
      }
    }
  }

  const beat = setInterval(publish, everyMs).unref()
  const check = setInterval(() => setImmediate(reap), tickMs).unref()
  publish()

  return {
    instance,
    hold: (msg) => {
      const reply = msg.reply
      if (!reply || stopped) return
      const release = () => {
        // The lease without this request goes out before the reply (one connection keeps
        // their order), so a peer never answers a request this node already answered.
        if (held.delete(reply) && !stopped) publish()
      }
      msg.respond = (data, opts) => {
        release()
        // Until the requester hears it (across a nats-server restart: reply-delivery.ts), the
        // request is held again between sends, so a peer answers it if this node dies meanwhile.
        return deliverReply(nc, reply, data, opts, { beforeRetry: release, missed: () => void (!stopped && (held.add(reply), soon())), settled: release })
      }
      held.add(reply)
      soon()
    },
    answeredForPeers: () => answered,
    stop: () => {
      if (stopped) return
      stopped = true
      clearInterval(beat)
      clearInterval(check)
      publish(true)
      sub.unsubscribe()
    },
  }
}
