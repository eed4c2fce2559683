// A reply that reaches its requester across a nats-server restart. nats.js drops what is
// published while it is disconnected (its outbound buffer is reset at each reconnect), and
// the server drops a reply sent before the requester has resubscribed after its own
// reconnect: a generate finished around a restart was answered into the void. So a reply
// goes out with a reply subject of its own and a PING behind it: the server answers a
// message nobody subscribes to with a 503 no-responders status, which comes back before the
// PONG. A 503, or a connection lost before the PONG, sends it again (backoff up to
// RETRY_MAX_MS) until it is heard or `deadlineMs` has passed (then the requester's own
// timeout is its answer). A requester that is listening gets it once; only a connection
// lost between the server's delivery and its PONG (one round trip) can make it twice.
import { createInbox, Empty, type MsgHdrs, type NatsConnection, type Payload, type Subscription } from "@nats-io/nats-core"

export const DELIVERY_DEADLINE_MS = 60_000
const RETRY_MIN_MS = 100
const RETRY_MAX_MS = 2000

export interface DeliveryHooks {
  /** Before every send after the first (the caller's bookkeeping: "not yet answered" goes away again). */
  readonly beforeRetry?: () => void
  /** Nobody heard it this time (it will be sent again). */
  readonly missed?: () => void
  /** Heard (true) or given up (false). */
  readonly settled?: (heard: boolean) => void
}

export interface ReplyOptions {
  readonly headers?: MsgHdrs
}

/**
 * Sends `data` to `reply` until a subscriber hears it. The first send is synchronous and
 * throws as `nc.publish` does (a payload over max_payload), so callers keep their fallback.
 */
export const deliverReply = (nc: NatsConnection, reply: string, payload: Payload | undefined, opts?: ReplyOptions, hooks: DeliveryHooks = {}, deadlineMs = DELIVERY_DEADLINE_MS): boolean => {
  const until = performance.now() + deadlineMs
  const data = payload === undefined ? Empty : typeof payload === "string" ? new TextEncoder().encode(payload) : payload
  let wait = RETRY_MIN_MS

  const send = (first: boolean) => {
    if (nc.isClosed()) return hooks.settled?.(false)
    if (!first) hooks.beforeRetry?.()
    const inbox = createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix)
    let unheard = false
    let sub: Subscription | undefined
    try {
      sub = nc.subscribe(inbox, {
        max: 1,
        callback: (_e, m) => {
          if (m.headers?.code === 503 && m.data.length === 0) unheard = true
        },
      })
      nc.publish(reply, data, { ...(opts?.headers ? { headers: opts.headers } : {}), reply: inbox })
    } catch (e) {
      sub?.unsubscribe()
      if (first) throw e
      return hooks.settled?.(false)
    }
    nc.flush().then(
      () => (sub!.unsubscribe(), unheard ? again() : hooks.settled?.(true)),
      () => (sub!.unsubscribe(), again()), // disconnected before the PONG: the send may have been dropped
    )
  }
  const again = () => {
    hooks.missed?.()
    if (performance.now() + wait > until) return hooks.settled?.(false)
    setTimeout(() => send(false), wait).unref()
    wait = Math.min(RETRY_MAX_MS, wait * 2)
  }

  send(true)
  return true
}
