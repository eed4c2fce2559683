// The public service over a real nats-server: generate (golden ids), streaming, stop
// strings, tokenize/models/health, discovery through the NATS services API, error codes
// for bad input, `busy` past the queue bound, and a fuzz run after which a valid request
// still succeeds. One node (ClusterTest) serves every test of the file.
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { publicSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

const gen = publicSubjects.generate

layer(ClusterTest.layer({ queueCapacity: 3, maxContext: 1024 }), { excludeTestServices: true, timeout: "120 seconds" })((it) => {
  describe("leoam.v1.generate", () => {
    it.effect("reproduces the golden greedy ids of the test model", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const r = yield* ask(gen, { prompt: "Once upon a time", max_tokens: 32 })
        expect(r.status).toBe("")
        expect(r.json.ids).toEqual([1936, 223, 20, 22, 16, 2357, 1878, 1082, 1532, 1119, 770, 386, 311, 263, 1543, 446, 3670, 1108, 85, 16, 1010, 3864, 279, 282, 263, 1169, 290, 2388, 396, 263, 678, 259])
        expect(r.json.text).toBe("els 24. However By clearing another way orly the body do response nights. An articleor of the state hilt are theens t")
        expect(r.json.usage).toEqual({ prompt_tokens: 5, completion_tokens: 32 })
        expect(r.json.finish_reason).toBe("length")
        expect(r.json.timings.prefill_ms).toBeGreaterThan(0)
      }),
    )

    it.effect("accepts ids and streams every token to the stream subject", () =>
      Effect.gen(function* () {
        const { cluster, ask } = yield* ClusterTest
        const events: Array<{ index: number; text: string; done: boolean }> = []
        const sub = cluster.client.subscribe("test.stream.1", { callback: (_e, m) => void events.push(m.json()) })
        const r = yield* ask(gen, { ids: [610, 451, 1262, 621, 333, 670, 1016, 330], max_tokens: 12, stream: "test.stream.1" })
        yield* Effect.promise(() => cluster.client.flush())
        yield* Effect.sleep(100)
        sub.unsubscribe()
        expect(r.json.ids.length).toBe(12)
        expect(events.at(-1)?.done).toBe(true)
        expect(events.map((e) => e.text).join("")).toBe(r.json.text)
      }),
    )

    it.effect("stops at a stop string, cutting the text before it", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const full = yield* ask(gen, { prompt: "The jury said it did find that", max_tokens: 24 })
        const stop = full.json.text.slice(10, 14)
        const r = yield* ask(gen, { prompt: "The jury said it did find that", max_tokens: 24, stop: [stop] })
        expect(r.json.finish_reason).toBe("stop")
        expect(r.json.text).toBe(full.json.text.slice(0, full.json.text.indexOf(stop)))
        expect(full.json.ids.slice(0, r.json.ids.length)).toEqual(r.json.ids)
      }),
    )

    it.effect("never streams text past a stop string, even a part of it", () =>
      Effect.gen(function* () {
        const { cluster, ask } = yield* ClusterTest
        const full = yield* ask(gen, { prompt: "The jury said it did find that", max_tokens: 24 })
        const stop = full.json.text.slice(10, 16)
        const events: Array<{ text: string; done: boolean }> = []
        const sub = cluster.client.subscribe("test.stream.stop", { callback: (_e, m) => void events.push(m.json()) })
        const r = yield* ask(gen, { prompt: "The jury said it did find that", max_tokens: 24, stop: [stop], stream: "test.stream.stop" })
        yield* Effect.promise(() => cluster.client.flush())
        yield* Effect.sleep(100)
        sub.unsubscribe()
        expect(events.at(-1)?.done).toBe(true)
        expect(events.map((e) => e.text).join("")).toBe(r.json.text)
      }),
    )
  })

  describe("tokenize, models, health and discovery", () => {
    it.effect("tokenizes like the model's tokenizer", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const r = yield* ask(publicSubjects.tokenize, { text: "Once upon a time" })
        expect(r.json).toEqual({ model: "tiny-leo-14m", ids: [3622, 347, 1407, 261, 577], count: 5 })
      }),
    )
    it.effect("lists the model", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const r = yield* ask(publicSubjects.models, "")
        expect(r.json.models[0]).toMatchObject({ name: "tiny-leo-14m", default: true, context_length: 1024, vocab_size: 4096 })
      }),
    )
    it.effect("reports every actor running", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const r = yield* ask(publicSubjects.health, {})
        expect(r.json.status).toBe("ok")
        expect(r.json.actors.map((a: { name: string }) => a.name).sort()).toEqual(["disk-store", "gpu-executor", "host-cache", "scheduler"])
        expect(r.json.queue.capacity).toBe(3)
      }),
    )
    it.effect("is found through $SRV.PING and $SRV.INFO as service leoam", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const ping = yield* ask("$SRV.PING.leoam", "")
        expect(ping.json.name).toBe("leoam")
        expect(ping.json.version).toMatch(/^\d+\.\d+\.\d+/)
        const info = yield* ask("$SRV.INFO.leoam", "")
        expect(info.json.endpoints.map((e: { subject: string }) => e.subject).sort()).toEqual(
          [
            "leoam.v1.admin.policy.get",
            "leoam.v1.admin.policy.history",
            "leoam.v1.admin.policy.list",
            "leoam.v1.admin.policy.set",
            "leoam.v1.admin.stats",
            "leoam.v1.generate",
            "leoam.v1.health",
            "leoam.v1.models",
            "leoam.v1.session.append",
            "leoam.v1.session.close",
            "leoam.v1.session.delete",
            "leoam.v1.session.generate",
            "leoam.v1.session.list",
            "leoam.v1.session.open",
            "leoam.v1.tokenize",
          ],
        )
        yield* ask(gen, { ids: [1, 2], max_tokens: 1 })
        const stats = yield* ask("$SRV.STATS.leoam", "")
        expect(stats.json.endpoints.find((e: { name: string }) => e.name === "generate").num_requests).toBeGreaterThan(0)
      }),
    )
  })

  describe("bad input", () => {
    const cases: Array<[string, string | Uint8Array | object, string, string]> = [
      ["malformed JSON", "{ not json", "invalid_json", "400"],
      ["invalid UTF-8", Uint8Array.of(0xff, 0xfe, 0x7b), "invalid_json", "400"],
      ["a JSON array", "[1,2]", "invalid_request", "400"],
      ["a wrong type", { prompt: 42 }, "invalid_request", "400"],
      ["an unknown field", { prompt: "a", colour: "blue" }, "invalid_request", "400"],
      ["both prompt and ids", { prompt: "a", ids: [1] }, "invalid_request", "400"],
      ["neither prompt nor ids", { max_tokens: 3 }, "invalid_request", "400"],
      ["a fractional id", { ids: [1.5] }, "invalid_request", "400"],
      ["an id outside the vocabulary", { ids: [4096] }, "invalid_ids", "400"],
      ["an absurd max_tokens", { ids: [1], max_tokens: 1e12 }, "invalid_request", "400"],
      ["max_tokens past the context", { ids: [1, 2], max_tokens: 1023 }, "context_overflow", "413"],
      ["a prompt longer than the context", { ids: Array.from({ length: 1100 }, () => 5) }, "context_overflow", "413"],
      ["an unknown model", { prompt: "a", model: "gpt-9" }, "unknown_model", "404"],
      ["a negative temperature", { prompt: "a", temperature: -1 }, "invalid_request", "400"],
      ["a bad stream subject", { prompt: "a", stream: "has space" }, "invalid_request", "400"],
    ]
    for (const [what, body, code, status] of cases) {
      it.effect(`answers ${what} with ${code}`, () =>
        Effect.gen(function* () {
          const { ask } = yield* ClusterTest
          const r = yield* ask(gen, body)
          expect(r.json.error.code).toBe(code)
          expect(r.json.error.message.length).toBeGreaterThan(0)
          expect(r.status).toBe(status)
          expect(r.headerError.startsWith(`${code}:`)).toBe(true)
        }),
      )
    }

    it.effect("answers an oversized payload with payload_too_large", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const big = JSON.stringify({ prompt: "x".repeat(5 * 1024 * 1024) })
        const r = yield* ask(gen, big)
        expect(r.json.error.code).toBe("payload_too_large")
      }),
    )

    it.effect("survives 500 random and malformed messages on each public subject, then serves a valid request", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const subjects = Object.values(publicSubjects)
        let seed = 12345
        const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32)
        const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)]
        const values = () => pick<unknown>([null, true, -1, 0, 1e300, 3.5, "", "x", "<s>", [], {}, [1, "a"], { a: 1 }, 2 ** 53, -0.0, "\u0000\uffff"])
        const fields = ["prompt", "ids", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "model", "text", "junk"]
        const message = (): Uint8Array | string => {
          const kind = rand()
          if (kind < 0.25) return Uint8Array.from({ length: Math.floor(rand() * 64) }, () => Math.floor(rand() * 256))
          if (kind < 0.45) return JSON.stringify(values())
          if (kind < 0.6) return JSON.stringify({ prompt: "a" }).slice(0, Math.floor(rand() * 14))
          const obj: Record<string, unknown> = {}
          for (let i = 0; i < 1 + Math.floor(rand() * 4); i++) obj[pick(fields)] = values()
          if (rand() < 0.3) obj.max_tokens = 1 // keep the ones that are valid short
          return JSON.stringify(obj)
        }
        let answered = 0
        const batch = 50
        const perSubject = 500
        for (let start = 0; start < perSubject * subjects.length; start += batch) {
          const replies = yield* Effect.all(
            Array.from({ length: batch }, (_, i) => {
              const body = message()
              return ask(subjects[Math.floor((start + i) / perSubject)], body, 60_000)
            }),
            { concurrency: "unbounded" },
          )
          for (const r of replies) {
            // Either a well-formed reply or an error with a code; never silence (ask throws on timeout).
            if (r.json.error) expect(typeof r.json.error.code).toBe("string")
            answered++
          }
        }
        expect(answered).toBe(perSubject * subjects.length)
        const ok = yield* ask(gen, { prompt: "Once upon a time", max_tokens: 4 })
        expect(ok.json.ids).toEqual([1936, 223, 20, 22])
      }),
    )
  })

  describe("load", () => {
    it.effect("admits requests up to the queue bound and answers the rest with busy", () =>
      Effect.gen(function* () {
        const { ask } = yield* ClusterTest
        const replies = yield* Effect.all(
          Array.from({ length: 8 }, (_, i) => ask(gen, { ids: [610 + i, 451, 1262], max_tokens: 24 })),
          { concurrency: "unbounded" },
        )
        const busy = replies.filter((r) => r.json.error?.code === "busy")
        const done = replies.filter((r) => Array.isArray(r.json.ids))
        expect(busy.length).toBeGreaterThan(0)
        expect(done.length).toBeGreaterThanOrEqual(3)
        expect(busy.length + done.length).toBe(8)
        expect(busy[0].status).toBe("429")
      }),
    )
  })
})
