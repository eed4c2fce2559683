// Abuse of the public subjects over a real nats-server and a real node (issue 15, items 1,
// 6, 7, 8): replies too large for NATS, deeply nested JSON, malformed requests that must
// not take places in the generate queue, bodies on models/health, stream subjects that
// are not NATS subjects; a stream event or a broadcast that cannot be sent (issue 15 loose
// ends). Each answer is asserted, and so is that the node keeps serving afterwards with no
// actor restarted.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Effect, Fiber, Layer } from "effect"
import { type RunningActor, startActor } from "../actors/actor.ts"
import { connectNats, encodeJson, jsonDepth, MAX_JSON_DEPTH, parseBody, respondSafely } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { startNode } from "../actors/node.ts"
import { publish } from "../actors/rpc.ts"
import { scheduler } from "../actors/scheduler.ts"
import type { RunRequest } from "../protocol/internal.ts"
import { encodeTokenEvent } from "../protocol/token-event.ts"
import { LeoamError } from "../protocol/errors.ts"
import { MAX_TOKENIZE_TEXT } from "../protocol/messages.ts"
import { internalSubjects, publicSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"
import { ask, modelDir } from "./support/server.ts"

const enc = new TextEncoder()
const gen = publicSubjects.generate
const deep = (n: number) => "[".repeat(n) + "]".repeat(n)

/** The node still serves: the golden greedy ids, and no actor was restarted by what came before. */
const stillServing = (askFn: (subject: string, body: unknown) => Effect.Effect<Awaited<ReturnType<typeof ask>>>) =>
  Effect.gen(function* () {
    const ok = yield* askFn(gen, { prompt: "Once upon a time", max_tokens: 4 })
    expect(ok.json.ids).toEqual([1936, 223, 20, 22])
    const health = yield* askFn(publicSubjects.health, {})
    for (const a of health.json.actors) expect([a.name, a.restarts]).toEqual([a.name, 0])
  })

describe("request bodies and replies (no server)", () => {
  it("measures nesting without recursion, ignoring brackets inside strings", () => {
    expect(jsonDepth(enc.encode('{"a":[1,{"b":[]}]}'))).toBe(4)
    expect(jsonDepth(enc.encode('{"a":"[[[[\\"[[[["}'))).toBe(1)
    expect(jsonDepth(enc.encode(deep(100_000)))).toBe(100_000)
    // It stops once past the limit.
    expect(jsonDepth(enc.encode(deep(100_000)), 10)).toBe(11)
  })

  it("refuses nesting past the limit before parsing, and accepts it up to the limit", () => {
    expect(parseBody(enc.encode(deep(MAX_JSON_DEPTH)))).toBeInstanceOf(Array)
    try {
      parseBody(enc.encode(deep(MAX_JSON_DEPTH + 1)))
      expect.unreachable()
    } catch (e) {
      expect(e).toBeInstanceOf(LeoamError)
      expect((e as LeoamError).code).toBe("invalid_request")
      expect((e as LeoamError).message).toMatch(/more than 32 deep/)
    }
  })

  it("a reply the client refuses to send becomes a small error reply, never a throw", () => {
    const sent: Array<{ data: Uint8Array; code: string | undefined }> = []
    let refuse = 1
    const msg = {
      reply: "_INBOX.x",
      respond: (data: Uint8Array, opts?: { headers?: Msg["headers"] }) => {
        if (refuse-- > 0) throw new Error("payload: max_payload size exceeded")
        sent.push({ data, code: opts?.headers?.get("Nats-Service-Error-Code") })
        return true
      },
    } as unknown as Msg
    expect(respondSafely(msg, new Uint8Array(10))).toBe(false)
    expect(sent.length).toBe(1)
    expect(sent[0].code).toBe("413")
    expect(JSON.parse(new TextDecoder().decode(sent[0].data)).error.code).toBe("payload_too_large")
    // A connection that refuses everything: nothing is sent and nothing is thrown.
    refuse = 2
    expect(respondSafely(msg, new Uint8Array(10))).toBe(false)
    expect(sent.length).toBe(1)
  })
})

layer(ClusterTest.layer({ queueCapacity: 2, maxContext: 1024 }), { excludeTestServices: true, timeout: "120 seconds" })("a node on an 8 MiB server", (it) => {
  describe("replies too large and bodies near the limit", () => {
    it.effect("a tokenize just under the 4 MiB body limit in 4-byte characters is refused at once", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const text = "\u{1F600}".repeat(Math.floor((4 * 1024 * 1024 - 64) / 4))
        const body = JSON.stringify({ text })
        expect(enc.encode(body).length).toBeLessThan(4 * 1024 * 1024)
        const t0 = performance.now()
        const r = yield* ask(publicSubjects.tokenize, body)
        expect(performance.now() - t0).toBeLessThan(2000)
        expect(r.json.error.code).toBe("payload_too_large")
        expect(r.status).toBe("413")
        expect(r.json.error.message).toMatch(/at most 131072/)
        yield* stillServing(ask)
      }),
    )

    it.effect("a 4 MiB generate prompt is tokenized off the event loop: health is answered all the while", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const prompt = "\u{1F600}".repeat(Math.floor((4 * 1024 * 1024 - 64) / 4))
        const t0 = performance.now()
        const long = yield* Effect.fork(ask(gen, JSON.stringify({ prompt, max_tokens: 1 })))
        // Health every 100 ms until the prompt is answered: the slowest says how long the event loop was held.
        const healthMs: number[] = []
        while (!(yield* long.poll)._tag.startsWith("Some")) {
          const h0 = performance.now()
          expect((yield* ask(publicSubjects.health, {})).json.status).toBe("ok")
          healthMs.push(performance.now() - h0)
          yield* Effect.sleep(100)
        }
        const r = yield* Fiber.join(long)
        const longMs = performance.now() - t0
        const slowest = Math.max(...healthMs)
        process.stderr.write(`hardening: ${healthMs.length} health requests answered in at most ${slowest.toFixed(0)} ms while a 4 MiB prompt was tokenized (its answer after ${longMs.toFixed(0)} ms)\n`)
        expect(r.json.error?.code).toBe("context_overflow") // a million tokens in a 1024-token context: counted, then refused
        expect(healthMs.length).toBeGreaterThan(5)
        expect(slowest).toBeLessThan(1500) // (each health waits 250 ms for the actors' pings)
      }),
    )

    it.effect("the longest tokenize text is answered, with a reply that fits", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const r = yield* ask(publicSubjects.tokenize, { text: "\u{1F600}".repeat(MAX_TOKENIZE_TEXT / 2) })
        expect(r.status).toBe("")
        expect(r.json.count).toBe(r.json.ids.length)
        expect(r.json.count).toBeGreaterThanOrEqual(MAX_TOKENIZE_TEXT / 2)
      }),
    )
  })

  describe("deeply nested JSON", () => {
    for (const subject of [gen, publicSubjects.tokenize, publicSubjects.models, publicSubjects.health, "leoam.v1.admin.policy.set"]) {
      it.effect(`${subject}: 5000 levels of [ and {"a": are invalid_request, and nothing restarts`, () =>
        Effect.gen(function* () {
          const { ask } = yield* ClusterTest
          for (const body of [deep(5000), '{"a":'.repeat(5000) + "1" + "}".repeat(5000)]) {
            const r = yield* ask(subject, body)
            expect(r.json.error.code).toBe("invalid_request")
            expect(r.status).toBe("400")
            expect(r.json.error.message).toMatch(/deep/)
          }
          yield* stillServing(ask)
        }),
      )
    }
  })

  describe("admission", () => {
    it.effect("malformed generate requests are answered while one runs, and never take a queue place", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const events: string[] = []
        // The queue holds 2; one run in flight, then 40 bad requests, then 2 valid ones.
        const running = Effect.fork(ask(gen, { ids: [610, 451, 1262], max_tokens: 24 }).pipe(Effect.tap(() => Effect.sync(() => events.push("long done")))))
        const long = yield* running
        yield* Effect.sleep(50)
        const bad: Array<[unknown, string]> = [
          [{ prompt: 42 }, "invalid_request"],
          [{ ids: [4096] }, "invalid_ids"],
          [{ ids: [1, 2], max_tokens: 1023 }, "context_overflow"],
          [{ prompt: "a", model: "gpt-9" }, "unknown_model"],
          [{ prompt: "a", stream: "a..b" }, "invalid_request"],
          [deep(5000), "invalid_request"],
          ["{ not json", "invalid_json"],
          [{ prompt: "" }, "invalid_request"],
        ]
        const answers = yield* Effect.all(
          Array.from({ length: 40 }, (_, i) => {
            const [body, code] = bad[i % bad.length]
            return ask(gen, typeof body === "string" ? body : JSON.stringify(body)).pipe(
              Effect.tap(() => Effect.sync(() => events.push("bad answered"))),
              Effect.map((r) => [r.json.error?.code, code]),
            )
          }),
          { concurrency: "unbounded" },
        )
        for (const [got, want] of answers) expect(got).toBe(want)
        // Every bad request was answered before the run ahead of them finished.
        expect(events.filter((e) => e === "bad answered").length).toBe(40)
        expect(events.includes("long done")).toBe(false)
        const valid = yield* Effect.all([ask(gen, { ids: [1, 2], max_tokens: 2 }), ask(gen, { ids: [3, 4], max_tokens: 2 })], { concurrency: "unbounded" })
        for (const v of valid) expect(v.json.ids?.length).toBe(2)
        const first = yield* long.await
        expect(first._tag).toBe("Success")
        yield* stillServing(ask)
      }),
    )
  })

  describe("models and health bodies, stream subjects", () => {
    for (const subject of [publicSubjects.models, publicSubjects.health]) {
      it.effect(`${subject} takes an empty body or {} and refuses anything else`, () =>
        Effect.gen(function* () {
          const { ask } = yield* ClusterTest
          for (const ok of ["", "{}", " { } "]) expect((yield* ask(subject, ok)).status).toBe("")
          for (const body of ["[]", "5", '"x"', "null", "true", '{"a":1}', "[{}]"]) {
            const r = yield* ask(subject, body)
            expect([body, r.json.error?.code, r.status]).toEqual([body, "invalid_request", "400"])
            expect(r.json.error.message).toMatch(/empty body or \{\}/)
          }
        }),
      )
    }

    it.effect("a stream that is not a NATS subject to publish to is invalid_request", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        for (const stream of ["a..b", ".a", "a.", "a b", "a\tb", "a.*", "a.>", ">", "", "a.b\n"]) {
          const r = yield* ask(gen, { ids: [1], max_tokens: 1, stream })
          expect([stream, r.json.error?.code]).toEqual([stream, "invalid_request"])
          expect(r.json.error.message).toMatch(/^stream: /)
        }
        const ok = yield* ask(gen, { ids: [1], max_tokens: 1, stream: "test.ok-1_$.x" })
        expect(ok.json.ids.length).toBe(1)
      }),
    )
  })
})

/** A node on a nats-server whose max_payload (256 KiB) is smaller than a long tokenize reply. */
class SmallPayloadNode extends Context.Tag("leoam/test/SmallPayloadNode")<
  SmallPayloadNode,
  { readonly ask: (subject: string, body: unknown) => Effect.Effect<Awaited<ReturnType<typeof ask>>>; readonly nc: NatsConnection }
>() {
  static readonly layer = Layer.scoped(
    SmallPayloadNode,
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(
        Effect.promise(() => startEmbeddedNats({ extraConfig: "max_payload: 262144" })),
        (s) => Effect.promise(() => s.stop()),
      )
      const kvDir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "leoam-kv-"))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
      )
      yield* Effect.acquireRelease(
        Effect.promise(() =>
          startNode({ actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"], natsUrl: nats.url, model: modelDir, maxContext: 1024, queueCapacity: 2, kvDir, hostKvBudget: 8 * 1024 * 1024, drainTimeoutMs: 5000 }),
        ),
        (node) => Effect.promise(() => node.stop()),
      )
      const client = yield* Effect.acquireRelease(
        Effect.promise(() => connectNats(nats.url, "test-client")),
        (c) => Effect.promise(() => c.close()),
      )
      return { ask: (subject: string, body: unknown) => Effect.promise(() => ask(client, subject, body, 60_000)), nc: client }
    }),
  )
}

layer(SmallPayloadNode.layer, { excludeTestServices: true, timeout: "120 seconds" })("a node on a 256 KiB server", (it) => {
  it.effect("a reply over the server's max_payload is answered payload_too_large, and the node keeps serving", () =>
    Effect.gen(function* () {
      const { ask } = yield* SmallPayloadNode
      // 4 byte-fallback ids per character, 120K ids: a reply of about 500 KB, over the 256 KiB the server carries.
      const r = yield* ask(publicSubjects.tokenize, { text: "\u{1F600}".repeat(30_000) })
      expect(r.json.error.code).toBe("payload_too_large")
      expect(r.status).toBe("413")
      expect(r.json.error.message).toMatch(/more than this NATS server carries/)
      yield* stillServing(ask)
      // Twice: the first was no fluke of a fresh node.
      expect((yield* ask(publicSubjects.tokenize, { text: "\u{1F600}".repeat(30_000) })).json.error.code).toBe("payload_too_large")
      yield* stillServing(ask)
    }),
  )

  it.scoped("a reply too large, from the mailbox or beside it, is payload_too_large and the actor goes on serving", () =>
    Effect.gen(function* () {
      const { nc, ask } = yield* SmallPayloadNode
      // Replies of `bytes` characters: 300 KB is over the server's max_payload.
      const reply = (_s: unknown, body: unknown) => Effect.succeed({ text: "x".repeat((body as { bytes: number }).bytes) })
      yield* Effect.acquireRelease(
        startActor(nc, { name: "host-cache", service: Effect.succeed({}), handlers: [{ source: "test.big", handler: reply }], immediate: [{ source: "test.big.now", handler: reply }] }),
        (a: RunningActor) => Effect.promise(() => a.drain(1000)),
      )
      for (const subject of ["test.big", "test.big.now"]) {
        for (let i = 0; i < 2; i++) {
          const big = yield* ask(subject, { bytes: 300_000 })
          expect([subject, big.json.error?.code, big.status]).toEqual([subject, "payload_too_large", "413"])
          const small = yield* ask(subject, { bytes: 10 })
          expect(small.json.text).toBe("x".repeat(10))
        }
      }
    }),
  )
})

describe("a stream event or broadcast that cannot be sent", () => {
  const cut = "test.stream.cut"
  /** The scheduler's connection, refusing every publish on `cut` as a draining connection does. */
  const refusing = (nc: NatsConnection): NatsConnection =>
    new Proxy(nc, {
      get: (target, key) => {
        if (key === "publish") {
          return (subject: string, ...rest: unknown[]) => {
            if (subject === cut) throw new Error("connection draining")
            return (target.publish as (...a: unknown[]) => void)(subject, ...rest)
          }
        }
        const value = Reflect.get(target, key)
        return typeof value === "function" ? value.bind(target) : value
      },
    })

  it.scoped("ends the stream, never the request: one reply with the whole result, and the scheduler does not restart", () =>
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
      const open = (name: string) => Effect.acquireRelease(Effect.promise(() => connectNats(nats.url, name)), (c) => Effect.promise(() => c.close().catch(() => undefined)))
      const [executor, client, own] = [yield* open("stand-in"), yield* open("client"), yield* open("scheduler")]
      const description = { name: "stand-in", context_length: 64, vocab_size: 100, layers: 1, hidden_size: 8, heads: 1, kv_heads: 1, eos_ids: [], device: "none" }
      executor.subscribe(internalSubjects.executorDescribe, { callback: (_e, m) => void m.respond(encodeJson(description)) })
      executor.subscribe(internalSubjects.executorRun, {
        callback: (_e, m) => {
          const run = m.json<RunRequest>()
          for (let i = 0; i < 3; i++) executor.publish(run.tokens, encodeTokenEvent(i, 7 + i))
          m.respond(encodeJson({ run_id: run.run_id, ids: [7, 8, 9], finish_reason: "length", prefill_ms: 1, decode_ms_per_token: 1, total_ms: 3 }))
        },
      })
      yield* Effect.promise(() => executor.flush())
      const sources = { generate: "test.gen", tokenize: "test.tok", models: "test.models", health: "test.health" }
      let load = () => ({ queued: 0, busy: false, capacity: 4 })
      const actor = yield* Effect.acquireRelease(
        startActor(refusing(own), scheduler(refusing(own), { queueCapacity: 4, version: "test", sources, load: () => load(), draining: () => false })),
        (a: RunningActor) => Effect.promise(() => a.drain(1000)),
      )
      load = actor.load
      // The scheduler's subscriptions reach the server before the client asks (else no responders under load).
      yield* Effect.promise(() => own.flush())
      for (let i = 0; i < 2; i++) {
        const m = yield* Effect.promise(() => client.request("test.gen", encodeJson({ ids: [1, 2], max_tokens: 3, stream: cut }), { timeout: 5000 }))
        expect(m.json<{ ids: number[] }>().ids).toEqual([7, 8, 9])
      }
      expect(actor.status()).toMatchObject({ status: "running", restarts: 0, stats: { requests: 2, streams_cut: 2 } })
    }),
  )

  it.effect("a broadcast on a closed connection is actor_unavailable, not a defect", () =>
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
      const nc = yield* Effect.promise(() => connectNats(nats.url, "closed"))
      yield* Effect.promise(() => nc.close())
      const exit = yield* Effect.exit(publish(nc, "executorCancel", { run_id: "x" }))
      expect(exit._tag === "Failure" && exit.cause._tag === "Fail" ? exit.cause.error.code : exit).toBe("actor_unavailable")
    }).pipe(Effect.scoped),
  )
})
