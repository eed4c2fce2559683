// The actor runtime against a real nats-server, with a toy actor: a crash answers the
// request it was serving with actor_restarted and rebuilds the state; a coded failure is
// only an error reply; the mailbox bound gives busy; draining finishes what was admitted
// and refuses the rest with shutting_down.
import type { NatsConnection } from "@nats-io/nats-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type ActorDefinition, pingActors, startActor } from "../actors/actor.ts"
import { connectNats, type EmbeddedNats, startNatsServer } from "../actors/nats.ts"
import { leoamError } from "../protocol/errors.ts"

let nats: EmbeddedNats
let nc: NatsConnection

beforeAll(async () => {
  nats = await startNatsServer()
  nc = await connectNats(nats.url, "actor-test")
})
afterAll(async () => {
  await nc?.close()
  await nats?.stop()
})

interface Toy {
  readonly generation: number
  served: number
}

let generations = 0
const toy = (subject: string, mailbox = 4): ActorDefinition<Toy> => ({
  name: "host-cache",
  mailbox,
  start: async () => ({ generation: ++generations, served: 0 }),
  stats: (s) => ({ generation: s.generation, served: s.served }),
  handlers: [
    [
      subject,
      async (s, body) => {
        const { op, ms } = body as { op: string; ms?: number }
        if (ms) await new Promise((r) => setTimeout(r, ms))
        if (op === "crash") throw new Error("boom")
        if (op === "refuse") throw leoamError("invalid_request", "refused")
        s.served++
        return { generation: s.generation, served: s.served }
      },
    ],
  ],
})

const call = async (subject: string, body: unknown) => {
  const m = await nc.request(subject, new TextEncoder().encode(JSON.stringify(body)), { timeout: 10_000 })
  return m.json<any>()
}

describe("actor runtime", () => {
  it("restarts after a crash: the request gets actor_restarted, the next one a fresh state", async () => {
    const actor = await startActor(nc, toy("toy.a"))
    const first = await call("toy.a", { op: "ok" })
    expect(first.served).toBe(1)
    const crashed = await call("toy.a", { op: "crash" })
    expect(crashed.error.code).toBe("actor_restarted")
    const after = await call("toy.a", { op: "ok" })
    expect(after.generation).toBe(first.generation + 1)
    expect(after.served).toBe(1)
    expect(actor.status().restarts).toBe(1)
    const refused = await call("toy.a", { op: "refuse" })
    expect(refused.error.code).toBe("invalid_request")
    expect(actor.status().restarts).toBe(1)
    const pings = await pingActors(nc)
    expect(pings.some((p) => p.name === "host-cache" && p.restarts === 1)).toBe(true)
    await actor.drain(1000)
  })

  it("answers busy past the mailbox bound", async () => {
    const actor = await startActor(nc, toy("toy.b", 2))
    const replies = await Promise.all(Array.from({ length: 6 }, () => call("toy.b", { op: "ok", ms: 100 })))
    expect(replies.filter((r) => r.error?.code === "busy").length).toBeGreaterThan(0)
    expect(replies.filter((r) => r.served).length).toBeGreaterThanOrEqual(2)
    await actor.drain(2000)
  })

  it("drains: admitted requests finish, new ones get shutting_down", async () => {
    const actor = await startActor(nc, toy("toy.c", 8))
    const inFlight = [call("toy.c", { op: "ok", ms: 200 }), call("toy.c", { op: "ok", ms: 200 })]
    await new Promise((r) => setTimeout(r, 50))
    const draining = actor.drain(5000)
    const late = await call("toy.c", { op: "ok" }).catch((e: Error) => ({ error: { code: e.message } }))
    expect(late.error.code).toMatch(/shutting_down|503|no responders/i)
    const done = await Promise.all(inFlight)
    expect(done.every((r) => r.served >= 1)).toBe(true)
    await draining
  })

  it("drain with a short bound refuses what is still queued", async () => {
    const actor = await startActor(nc, toy("toy.d", 8))
    const pending = Array.from({ length: 4 }, () => call("toy.d", { op: "ok", ms: 300 }))
    await new Promise((r) => setTimeout(r, 50))
    await actor.drain(100)
    const replies = await Promise.all(pending)
    expect(replies.some((r) => r.error?.code === "shutting_down")).toBe(true)
  })
})
