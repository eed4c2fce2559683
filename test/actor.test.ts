// The actor runtime against a real nats-server, with a toy actor (a service built from its
// layer): a crash — a defect, or a library error whose code means a bug — answers the
// request it was serving with actor_restarted, closes the service's scope and builds it
// again; a LeoamError or a mapped condition is only an error reply; an immediate handler's
// crash restarts too; the mailbox bound gives busy; draining finishes what was admitted and
// refuses the rest with shutting_down.
import { expect, it, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { type ActorDefinition, pingActors, type RunningActor, serviceOf, startActor } from "../actors/actor.ts"
import { attempt } from "../actors/errors.ts"
import { startNode } from "../actors/node.ts"
import { hostCacheError } from "../kv/host-errors.ts"
import { leoamError, type LeoamError } from "../protocol/errors.ts"
import { call, NatsTest } from "./support/nats-layer.ts"

interface ToyService {
  readonly generation: number
  readonly serve: (op: string, ms?: number) => Effect.Effect<{ generation: number; served: number }, LeoamError>
}

let generations = 0
let released = 0

class Toy extends Context.Tag("leoam/test/Toy")<Toy, ToyService>() {
  static readonly layer = Layer.scoped(
    Toy,
    Effect.gen(function* () {
      const generation = yield* Effect.acquireRelease(
        Effect.sync(() => ++generations),
        () => Effect.sync(() => released++),
      )
      let served = 0
      const arena = attempt()
      return {
        generation,
        serve: Effect.fn("Toy.serve")(function* (op: string, ms?: number) {
          if (ms) yield* Effect.sleep(ms)
          if (op === "crash") return yield* Effect.die(new Error("boom"))
          if (op === "refuse") return yield* leoamError("invalid_request", "refused")
          // An arena error that means a bug: a crash, although it carries a string code.
          if (op === "stale") yield* arena(() => { throw hostCacheError("ticket_stale", "s/0/1", "store ticket 3 is not pending") })
          // An arena error that is a condition: answered with its code.
          if (op === "full") yield* arena(() => { throw hostCacheError("budget_exceeded", "s/0/1", "too large") })
          served++
          return { generation, served }
        }),
      }
    }),
  )
}

const toy = (subject: string, mailbox = 4): ActorDefinition<ToyService> => ({
  name: "host-cache",
  mailbox,
  service: serviceOf(Toy, Toy.layer),
  stats: (s) => ({ generation: s.generation }),
  handlers: [{ source: subject, handler: (s, body) => s.serve((body as { op: string }).op, (body as { ms?: number }).ms) }],
  immediate: [{ source: `${subject}.now`, handler: (s, body) => s.serve((body as { op: string }).op) }],
})

/** Starts an actor for the test's scope (drained when it closes). */
const started = (def: ActorDefinition<ToyService>) =>
  Effect.gen(function* () {
    const { nc } = yield* NatsTest
    return yield* Effect.acquireRelease(startActor(nc, def), (a: RunningActor) => Effect.promise(() => a.drain(1000)))
  })

layer(NatsTest.layer, { excludeTestServices: true })("actor runtime", (it) => {
  it.scoped("restarts after a crash: the request gets actor_restarted, the next one a fresh service", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const actor = yield* started(toy("toy.a"))
      const first = yield* call(nc, "toy.a", { op: "ok" })
      expect(first.served).toBe(1)
      const releasedBefore = released
      const crashed = yield* call(nc, "toy.a", { op: "crash" })
      expect(crashed.error.code).toBe("actor_restarted")
      expect(released).toBe(releasedBefore + 1) // the old service's scope was closed
      const after = yield* call(nc, "toy.a", { op: "ok" })
      expect(after.generation).toBe(first.generation + 1)
      expect(after.served).toBe(1)
      expect(actor.status().restarts).toBe(1)
      const refused = yield* call(nc, "toy.a", { op: "refuse" })
      expect(refused.error.code).toBe("invalid_request")
      expect(actor.status().restarts).toBe(1)
      const pings = yield* Effect.promise(() => pingActors(nc))
      expect(pings.some((p) => p.name === "host-cache" && p.restarts === 1)).toBe(true)
    }),
  )

  it.scoped("a library code that means a bug is a crash; one that is a condition is answered", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const actor = yield* started(toy("toy.e"))
      const full = yield* call(nc, "toy.e", { op: "full" })
      expect(full.error.code).toBe("budget_exceeded")
      expect(actor.status().restarts).toBe(0)
      const stale = yield* call(nc, "toy.e", { op: "stale" })
      expect(stale.error.code).toBe("actor_restarted")
      expect(stale.error.message).toContain("ticket 3 is not pending")
      expect(actor.status().restarts).toBe(1)
    }),
  )

  it.scoped("an immediate handler's crash restarts the actor after the message being served", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const actor = yield* started(toy("toy.f"))
      const slow = yield* Effect.fork(call(nc, "toy.f", { op: "ok", ms: 300 }))
      yield* Effect.sleep(50)
      const crashed = yield* call(nc, "toy.f.now", { op: "crash" })
      expect(crashed.error.code).toBe("actor_restarted")
      const done = yield* slow
      expect(done.served).toBe(1) // the run in the mailbox finished on the old service
      yield* Effect.sleep(50)
      expect(actor.status().restarts).toBe(1)
      const after = yield* call(nc, "toy.f.now", { op: "ok" })
      expect(after.generation).toBe(done.generation + 1)
    }),
  )

  it.scoped("answers busy past the mailbox bound", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      yield* started(toy("toy.b", 2))
      const replies = yield* Effect.all(
        Array.from({ length: 6 }, () => call(nc, "toy.b", { op: "ok", ms: 100 })),
        { concurrency: "unbounded" },
      )
      expect(replies.filter((r) => r.error?.code === "busy").length).toBeGreaterThan(0)
      expect(replies.filter((r) => r.served).length).toBeGreaterThanOrEqual(2)
    }),
  )

  it.scoped("drains: admitted requests finish, new ones get shutting_down", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const actor = yield* started(toy("toy.c", 8))
      const inFlight = yield* Effect.fork(Effect.all([call(nc, "toy.c", { op: "ok", ms: 200 }), call(nc, "toy.c", { op: "ok", ms: 200 })], { concurrency: 2 }))
      yield* Effect.sleep(50)
      const draining = yield* Effect.fork(Effect.promise(() => actor.drain(5000)))
      const late = yield* call(nc, "toy.c", { op: "ok" }).pipe(Effect.catchAllDefect((e) => Effect.succeed({ error: { code: (e as Error).message } })))
      expect(late.error.code).toMatch(/shutting_down|503|no responders/i)
      const done = yield* inFlight
      expect(done.every((r) => r.served >= 1)).toBe(true)
      yield* draining
    }),
  )

  it.scoped("serves `concurrency` messages at once; a crash restarts only after the others are done", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      yield* started({ ...toy("toy.p", 8), concurrency: 2 })
      const t0 = performance.now()
      const both = yield* Effect.all([call(nc, "toy.p", { op: "ok", ms: 400 }), call(nc, "toy.p", { op: "ok", ms: 400 })], { concurrency: 2 })
      expect(performance.now() - t0).toBeLessThan(750) // one at a time would take 800 ms
      expect(both.map((r) => r.generation)).toEqual([both[0].generation, both[0].generation])
      const [slow, crashed] = yield* Effect.all([call(nc, "toy.p", { op: "ok", ms: 300 }), Effect.zipRight(Effect.sleep(50), call(nc, "toy.p", { op: "crash" }))], { concurrency: 2 })
      expect(crashed.error.code).toBe("actor_restarted")
      expect(slow.generation).toBe(both[0].generation) // finished on the service it started on
      const after = yield* call(nc, "toy.p", { op: "ok" })
      expect(after.generation).toBe(both[0].generation + 1)
    }),
  )

  it.scoped("takes turns across fair keys: a user's backlog does not hold another user's message behind it", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const order: string[] = []
      const def: ActorDefinition<ToyService> = {
        ...toy("toy.f", 16),
        handlers: [
          {
            source: "toy.f",
            fairKey: (msg) => (msg.json() as { user: string }).user,
            handler: (s, body) => Effect.tap(s.serve("ok", (body as { ms?: number }).ms), () => Effect.sync(() => order.push((body as { id: string }).id))),
          },
        ],
      }
      yield* started(def)
      const send = (user: string, id: string, ms = 0) => call(nc, "toy.f", { user, id, ms })
      const blocker = yield* Effect.fork(send("a", "a0", 300))
      yield* Effect.sleep(50)
      const queued = yield* Effect.fork(Effect.all([send("a", "a1"), send("a", "a2"), send("a", "a3")], { concurrency: "unbounded" }))
      yield* Effect.sleep(50)
      const b = yield* Effect.fork(send("b", "b1"))
      yield* Effect.all([blocker, queued, b].map((f) => Effect.fromFiber(f)))
      expect(order[0]).toBe("a0")
      expect(order.indexOf("b1")).toBeLessThanOrEqual(2) // after at most one of a's backlog, not after all three
    }),
  )

  it.scoped("drain with a short bound refuses what is still queued", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const actor = yield* started(toy("toy.d", 8))
      const pending = yield* Effect.fork(Effect.all(Array.from({ length: 4 }, () => call(nc, "toy.d", { op: "ok", ms: 300 })), { concurrency: "unbounded" }))
      yield* Effect.sleep(50)
      yield* Effect.promise(() => actor.drain(100))
      const replies = yield* pending
      expect(replies.some((r) => r.error?.code === "shutting_down")).toBe(true)
    }),
  )
})

it("refuses a host-cache actor without the gpu-executor in its process (the arena lives there)", async () => {
  const error = await startNode({ actors: ["host-cache"], model: "dummy:tiny", kvDir: "/nonexistent", hostKvBudget: 1 << 20, natsUrl: "nats://127.0.0.1:1" }).catch((e) => e)
  expect(error).toMatchObject({ code: "invalid_request" })
  expect(String(error.message)).toContain("gpu-executor")
})
