// Prefill progress people can see (issue 12 §5), over a real nats-server: a streamed request
// gets {"prefill": {done, total}} events, monotone and ending at done = total, before its
// first token; admin.stats shows the prefill throughput. The throttle and the wire format
// of the executor -> scheduler event are unit-tested beside it.
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect } from "effect"
import { addPrefill, emptyTotals, RECENT_PREFILLS } from "../actors/executor-stats.ts"
import { adminSubjects, publicSubjects } from "../protocol/subjects.ts"
import { decodePrefillEvent, decodeTokenEvent, encodePrefillEvent, encodeTokenEvent, prefillThrottle } from "../protocol/token-event.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

type Event = { prefill: { done: number; total: number } } | { index: number; text: string; done: boolean }

layer(ClusterTest.layer({ maxContext: 2048 }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  it.effect("a streamed 600-token prompt: monotone prefill events up to done = total, all before the first token; admin.stats has the throughput", () =>
    Effect.gen(function* () {
      const { cluster, ask } = yield* ClusterTest
      // Two prefill passes of at most 512 tokens.
      const ids = Array.from({ length: 600 }, (_, i) => [610, 451, 1262, 621, 333, 670, 1016, 330][i % 8]!)
      const events: Event[] = []
      const sub = cluster.client.subscribe("test.prefill.1", { callback: (_e, m) => void events.push(m.json()) })
      const r = yield* ask(publicSubjects.generate, { ids, max_tokens: 3, stream: "test.prefill.1" }, 240_000)
      yield* Effect.promise(() => cluster.client.flush())
      yield* Effect.sleep(100)
      sub.unsubscribe()
      expect(r.status).toBe("")
      const prefill = events.flatMap((e) => ("prefill" in e ? [e.prefill] : []))
      const firstToken = events.findIndex((e) => !("prefill" in e))
      expect(firstToken).toBeGreaterThan(0)
      expect(events.slice(firstToken).some((e) => "prefill" in e)).toBe(false)
      // The first pass is always reported, the last too: 512, then 600.
      expect(prefill.length).toBeGreaterThanOrEqual(2)
      expect(prefill.every((p) => p.total === 600)).toBe(true)
      for (let i = 1; i < prefill.length; i++) expect(prefill[i]!.done).toBeGreaterThan(prefill[i - 1]!.done)
      expect(prefill[0]!.done).toBe(512)
      expect(prefill.at(-1)!.done).toBe(600)
      const tokens = events.slice(firstToken) as Array<{ text: string; done: boolean }>
      expect(tokens.at(-1)?.done).toBe(true)
      expect(tokens.map((e) => e.text).join("")).toBe(r.json.text)

      const stats = (yield* ask(adminSubjects.stats, {})).json
      expect(stats.prefill.tokens).toBeGreaterThanOrEqual(600)
      expect(stats.prefill.recent.runs).toBeGreaterThanOrEqual(1)
      expect(stats.prefill.recent.tokens_per_s).toBeGreaterThan(0)
      expect(stats.prefill.tokens_per_s).toBeCloseTo((stats.prefill.tokens * 1000) / stats.prefill.ms, 6)
    }),
  )
})

describe("prefill events", () => {
  it("round-trip in 12 bytes and are never taken for token events (and back)", () => {
    const e = encodePrefillEvent(512, 1100)
    expect(e.byteLength).toBe(12)
    expect(decodePrefillEvent(e)).toEqual({ done: 512, total: 1100 })
    expect(decodeTokenEvent(e)).toBeUndefined()
    expect(decodePrefillEvent(encodeTokenEvent(3, 42))).toBeUndefined()
    const other = new Uint8Array(12)
    expect(decodePrefillEvent(other)).toBeUndefined()
  })

  it("are throttled to one per interval, always the first and the last, never going back", () => {
    let now = 0
    const sent: number[] = []
    const report = prefillThrottle((done) => void sent.push(done), 250, () => now)
    report(512, 4096)
    now = 100
    report(1024, 4096) // within 250 ms: dropped
    now = 300
    report(1536, 4096)
    report(1000, 4096) // going back (a retried run): dropped
    now = 310
    report(4096, 4096) // the last: always
    report(4096, 4096) // nothing new
    expect(sent).toEqual([512, 1536, 4096])
  })

  it("feed the recent prefill throughput of admin stats (the last RECENT_PREFILLS runs)", () => {
    const t = emptyTotals()
    addPrefill(t, 1000, 500)
    expect(t.prefillRecent).toEqual({ runs: 1, tokens: 1000, ms: 500 })
    for (let i = 0; i < RECENT_PREFILLS; i++) addPrefill(t, 100, 10)
    expect(t.prefillRecent).toEqual({ runs: RECENT_PREFILLS, tokens: 100 * RECENT_PREFILLS, ms: 10 * RECENT_PREFILLS })
    expect(t.prefillTokens).toBe(1000 + 100 * RECENT_PREFILLS)
    expect(t.prefillMs).toBe(500 + 10 * RECENT_PREFILLS)
  })
})
