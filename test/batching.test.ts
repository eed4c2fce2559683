// Continuous batching in a node (issue 14 §1), over a real nats-server with --max-batch 3:
// concurrent generate requests get the greedy ids each gets alone, a streamed one streams
// what its reply says, a cancelled one ends early without touching the others, and
// admin.stats shows the batch. The node has a GPU budget, so its full-attention lanes take
// their KV blocks from one store and the batch attends them together (engine/batch-attention.ts).
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { adminSubjects, cancelSubject, publicSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

const words = [610, 451, 1262, 621, 333, 670, 1016, 330, 288, 1846]
const prompt = (n: number, shift: number) => Array.from({ length: n }, (_, i) => words[(i * 3 + shift) % words.length]!)

layer(ClusterTest.layer({ maxContext: 1024, maxBatch: 3, queueCapacity: 16, gpuKvBudget: 16 * 2 ** 20 }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  it.effect("concurrent requests get the ids they get alone; streaming, cancel and admin.stats work in the batch", () =>
    Effect.gen(function* () {
      const { cluster, ask } = yield* ClusterTest
      const requests = [
        { ids: prompt(7, 0), max_tokens: 10 },
        { ids: prompt(300, 1), max_tokens: 6 },
        { ids: prompt(40, 2), max_tokens: 12 },
        { ids: prompt(3, 3), max_tokens: 8 },
      ]
      const alone = []
      for (const r of requests) alone.push((yield* ask(publicSubjects.generate, r)).json)
      expect(alone.every((r) => r.ids.length > 0)).toBe(true)

      const events: Array<{ text?: string; done?: boolean }> = []
      const sub = cluster.client.subscribe("test.batch.stream", { callback: (_e, m) => void events.push(m.json()) })
      // A long one to cancel: it must stop early, the others must not notice.
      const cancelled: Array<{ index?: number }> = []
      const subCancel = cluster.client.subscribe("test.batch.cancel", { callback: (_e, m) => void cancelled.push(m.json()) })
      const long = ask(publicSubjects.generate, { ids: prompt(12, 4), max_tokens: 400, stream: "test.batch.cancel" })
      const together = Effect.all(
        [long, ...requests.map((r, i) => ask(publicSubjects.generate, i === 2 ? { ...r, stream: "test.batch.stream" } : r))],
        { concurrency: "unbounded" },
      )
      const running = yield* Effect.fork(together)
      // Cancel the long one once it streams; meanwhile the node shows its batch.
      while (cancelled.filter((e) => e.index !== undefined).length < 3) yield* Effect.sleep(20)
      const stats = (yield* ask(adminSubjects.stats, {})).json
      expect(stats.batch.max).toBe(3)
      expect(stats.batch.decoding + stats.batch.prefilling).toBeGreaterThanOrEqual(1)
      expect(stats.queue.in_flight).toBeGreaterThanOrEqual(1)
      expect((yield* ask(cancelSubject, { stream: "test.batch.cancel" })).json).toEqual({ cancelled: true })
      const [longReply, ...replies] = yield* running
      yield* Effect.promise(() => cluster.client.flush())
      yield* Effect.sleep(100)
      sub.unsubscribe()
      subCancel.unsubscribe()
      expect(longReply.json.ids.length).toBeLessThan(400)
      expect(replies.map((r) => r.json.ids)).toEqual(alone.map((r) => r.ids))
      expect(events.map((e) => e.text ?? "").join("")).toBe(replies[2]!.json.text)
      expect(events.at(-1)?.done).toBe(true)
      const after = (yield* ask(adminSubjects.stats, {})).json
      expect(after.batch).toMatchObject({ max: 3, decoding: 0, prefilling: 0, waiting_for_kv: 0, kv_reserved_bytes: 0 })
      expect(after.batch.attended_together_steps).toBeGreaterThan(0)
      expect(after.batch.steps_ahead).toBeGreaterThan(0)
    }),
  )
})
