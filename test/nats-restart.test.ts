// A nats-server restarted (same port) while a generate runs and another waits behind it:
// every request gets exactly one reply once NATS is back, also when the client comes back
// later than the node (a client with a longer reconnect wait than the node's 2 s, as any
// client on another host or with other settings may be). Before the fix, a reply the node
// sent before the client had resubscribed was dropped by the server: the request was lost.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { connect } from "@nats-io/transport-node"
import { describe, expect, it } from "@effect/vitest"
import type { Msg } from "@nats-io/nats-core"
import { Effect } from "effect"
import { connectNats, encodeJson } from "../actors/nats.ts"
import { startLeases } from "../actors/node-leases.ts"
import { deliverReply } from "../actors/reply-delivery.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { startNode } from "../actors/node.ts"
import { publicSubjects } from "../protocol/subjects.ts"
import { modelDir } from "./support/server.ts"

const GOLDEN = [1936, 223, 20, 22] // "Once upon a time", greedy, tiny-leo-14m

describe("nats-server restarted under load", () => {
  it.scopedLive("a generate in flight and one queued each get exactly one reply, though the client reconnects after the node", () =>
    Effect.gen(function* () {
      const first = yield* Effect.promise(() => startEmbeddedNats())
      let current = first
      yield* Effect.addFinalizer(() => Effect.promise(() => current.stop()))
      const kvDir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "leoam-kv-"))),
        (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true })),
      )
      yield* Effect.acquireRelease(
        Effect.promise(() => startNode({ actors: ["gpu-executor", "host-cache", "scheduler"], natsUrl: first.url, model: modelDir, maxContext: 256, kvDir, hostKvBudget: 1 << 20 })),
        (node) => Effect.promise(() => node.stop()),
      )
      // The client comes back 4 s after losing the server; the node after ~2 s (nats.js's default).
      const client = yield* Effect.acquireRelease(
        Effect.promise(() => connect({ servers: first.url, name: "slow-client", maxReconnectAttempts: -1, reconnectTimeWait: 4000, reconnectJitter: 0 })),
        (nc) => Effect.promise(() => nc.close().catch(() => undefined)),
      )
      const prefix = `_INBOX.restart.${process.pid}`
      const replies = new Map<string, Array<{ at: number; body: any }>>()
      client.subscribe(`${prefix}.>`, { callback: (_e, m) => void replies.set(m.subject, [...(replies.get(m.subject) ?? []), { at: performance.now(), body: m.json() }]) })
      const stream = `${prefix}-stream`
      const firstToken = yield* Effect.fork(
        Effect.async<void>((resume) => {
          const sub = client.subscribe(stream, { max: 1, callback: () => resume(Effect.void) })
          return Effect.sync(() => sub.unsubscribe())
        }),
      )
      yield* Effect.promise(() => client.flush())
      client.publish(publicSubjects.generate, encodeJson({ prompt: "Once upon a time", max_tokens: 24, stream }), { reply: `${prefix}.running` })
      client.publish(publicSubjects.generate, encodeJson({ prompt: "Once upon a time", max_tokens: 4 }), { reply: `${prefix}.queued` })
      yield* Effect.promise(() => client.flush())
      yield* firstToken
      yield* Effect.promise(() => first.stop())
      const restartedAt = performance.now()
      current = yield* Effect.promise(() => startEmbeddedNats({ port: first.port }))
      const both = () => replies.has(`${prefix}.running`) && replies.has(`${prefix}.queued`)
      while (!both() && performance.now() - restartedAt < 40_000) yield* Effect.sleep(50)
      yield* Effect.sleep(1500) // a second reply would come now
      const running = replies.get(`${prefix}.running`) ?? []
      const queued = replies.get(`${prefix}.queued`) ?? []
      expect(running, "the running generate: one reply").toHaveLength(1)
      expect(queued, "the queued generate: one reply").toHaveLength(1)
      for (const r of [running[0], queued[0]]) expect(r.body.error?.code ?? "ok").toMatch(/^(ok|actor_unavailable)$/)
      if (!queued[0].body.error) expect(queued[0].body.ids).toEqual(GOLDEN)
      const next = yield* Effect.promise(() => client.request(publicSubjects.generate, encodeJson({ prompt: "Once upon a time", max_tokens: 4 }), { timeout: 30_000 }))
      expect(next.json<{ ids: number[] }>().ids).toEqual(GOLDEN)
      process.stderr.write(
        `nats-restart: running ${running[0].body.error?.code ?? "ok"} ${(running[0].at - restartedAt).toFixed(0)} ms, queued ${queued[0].body.error?.code ?? "ok"} ${(queued[0].at - restartedAt).toFixed(0)} ms after the restart\n`,
      )
    }),
  )

  it.scopedLive("deliverReply: a listener gets one copy at once; a reply sent before its requester subscribes arrives once it does", () =>
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
      const conn = (name: string) => Effect.acquireRelease(Effect.promise(() => connectNats(nats.url, name)), (nc) => Effect.promise(() => nc.close()))
      const [node, client] = [yield* conn("node"), yield* conn("client")]
      const got: string[] = []
      client.subscribe("_INBOX.deliver.now", { callback: (_e, m) => void got.push(m.string()) })
      yield* Effect.promise(() => client.flush())
      const outcome = (subject: string, body: string) =>
        Effect.async<{ heard: boolean; missed: number }>((resume) => {
          let missed = 0
          deliverReply(node, subject, body, undefined, { missed: () => void missed++, settled: (heard) => resume(Effect.succeed({ heard, missed })) }, 10_000)
        })
      expect(yield* outcome("_INBOX.deliver.now", "one")).toEqual({ heard: true, missed: 0 })
      const late = yield* Effect.fork(outcome("_INBOX.deliver.late", "two"))
      yield* Effect.sleep(600)
      client.subscribe("_INBOX.deliver.late", { callback: (_e, m) => void got.push(m.string()) })
      const settled = yield* late
      expect(settled.heard).toBe(true)
      expect(settled.missed).toBeGreaterThan(0)
      yield* Effect.sleep(300)
      expect(got).toEqual(["one", "two"])
    }),
  )

  it.scopedLive("a node back on the bus later than its peer does not take the peer for dead (its own time off is not the peer's silence)", () =>
    Effect.gen(function* () {
      const first = yield* Effect.promise(() => startEmbeddedNats())
      let current = first
      yield* Effect.addFinalizer(() => Effect.promise(() => current.stop()))
      const conn = (name: string, reconnectTimeWait: number) =>
        Effect.acquireRelease(
          Effect.promise(() => connect({ servers: first.url, name, maxReconnectAttempts: -1, reconnectTimeWait, reconnectJitter: 0 })),
          (nc) => Effect.promise(() => nc.close().catch(() => undefined)),
        )
      // Node a and the client come back at once, node b 2.5 s later: five silences of a at b's reconnect.
      const [a, b, client] = [yield* conn("a", 100), yield* conn("b", 2500), yield* conn("client", 100)]
      const [leasesA, leasesB] = [startLeases(a, "a", 500, 100), startLeases(b, "b", 500, 100)]
      yield* Effect.addFinalizer(() => Effect.sync(() => (leasesA.stop(), leasesB.stop())))
      const reply = `_INBOX.leases.${process.pid}`
      const got: string[] = []
      client.subscribe(reply, { callback: (_e, m) => void got.push(m.data.length ? (m.json<{ error?: { code: string } }>().error?.code ?? "ok") : "empty") })
      yield* Effect.promise(() => client.flush())
      const msg = { reply, respond: (data?: Uint8Array) => (a.publish(reply, data), true) } as unknown as Msg
      leasesA.hold(msg)
      yield* Effect.sleep(400) // b has a's lease with the request
      yield* Effect.promise(() => first.stop())
      current = yield* Effect.promise(() => startEmbeddedNats({ port: first.port }))
      yield* Effect.sleep(4500) // b back at ~2.6 s; a reaper that counted its own time off would answer now
      expect(got).toEqual([])
      expect(leasesB.answeredForPeers()).toBe(0)
      msg.respond(encodeJson({ ok: true }))
      yield* Effect.sleep(500)
      expect(got).toEqual(["ok"])
    }),
  )

  it.scopedLive("nodes whose event loop stalled past the silence do not take each other for dead once it runs again", () =>
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
      const conn = (name: string) => Effect.acquireRelease(Effect.promise(() => connectNats(nats.url, name)), (nc) => Effect.promise(() => nc.close()))
      const [a, b, client] = [yield* conn("a"), yield* conn("b"), yield* conn("client")]
      const [leasesA, leasesB] = [startLeases(a, "a", 500, 100), startLeases(b, "b", 500, 100)]
      yield* Effect.addFinalizer(() => Effect.sync(() => (leasesA.stop(), leasesB.stop())))
      const reply = `_INBOX.stall.${process.pid}`
      const got: string[] = []
      client.subscribe(reply, { callback: () => void got.push("reply") })
      yield* Effect.promise(() => client.flush())
      const msg = { reply, respond: () => true } as unknown as Msg
      leasesA.hold(msg)
      yield* Effect.sleep(400) // b has a's lease with the request
      const until = Date.now() + 1500 // both nodes' loops (this process) stall for three silences
      while (Date.now() < until) {
        // busy
      }
      yield* Effect.sleep(1000)
      expect(leasesA.answeredForPeers() + leasesB.answeredForPeers()).toBe(0)
      expect(got).toEqual([])
    }),
  )
})
