// Prefix sharing (issue 14 §2) in a node (leoam, fixed 32-token chunks, --max-batch 2): a
// request whose prompt begins like a running request's or a stored session's document links
// the whole chunks of the common prefix (written once, on disk) instead of prefilling them,
// and a session opened on a document a running request holds does the same; each gets the
// ids it gets alone, the shared bytes (disk and host arena) outlive the sequence that wrote
// them while another still uses them, and are freed when the last user is gone.
import { readdirSync } from "node:fs"
import { join } from "node:path"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects, sessionSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

const doc = Array.from({ length: 160 }, (_, i) => 10 + ((i * 37 + 11) % 3000)) // 5 whole chunks
const a = { ids: [...doc, 101, 202, 303, 404, 505, 606], max_tokens: 8 }
const question = [111, 222, 333]
const b = { ids: [...doc, ...question], max_tokens: 24 }

/** The node's helpers; `alone` keeps the replies of requests run alone (nothing running beside them), by request. */
const setupWith = (alone: Map<unknown, any>) =>
  Effect.gen(function* () {
    const { cluster, ask } = yield* ClusterTest
    const aloneOf = (body: { ids: number[]; max_tokens: number }) =>
      Effect.gen(function* () {
        if (!alone.has(body)) alone.set(body, (yield* ask(publicSubjects.generate, body)).json)
        return alone.get(body)
      })
    const stats = Effect.map(ask(adminSubjects.stats, {}), (r) => r.json)
    const m = (yield* ask(publicSubjects.models, {})).json.models[0]
    return {
      ask,
      aloneOf,
      shared: Effect.map(stats, (s) => s.batch.shared_prefix_tokens as number),
      peerCopies: Effect.map(stats, (s) => s.batch.gpu_peer_copies as { chunks: number; bytes: number; lanes: number }),
      hostBytes: Effect.map(stats, (s) => s.tiers.host.resident_bytes as number),
      untilDecoding: Effect.gen(function* () {
        while (((yield* stats).batch.decoding ?? 0) === 0) yield* Effect.sleep(10)
      }),
      chunkFiles: () => readdirSync(join(cluster.kvDir, "chunks")),
      /** The KV of the document's 160 tokens (fp16 K and V of every layer). */
      layers: m.layers as number,
      docBytes: 160 * m.layers * 2 * m.kv_heads * (m.hidden_size / m.heads) * 2,
    }
  })

layer(ClusterTest.layer({ maxContext: 512, maxBatch: 2, kvPolicy: parsePolicyDocument("leoam") }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  const setup = setupWith(new Map())

  it.effect("a request sharing a running one's prefix links its chunks: same ids, written once, freed with the last user", () =>
    Effect.gen(function* () {
      const { ask, aloneOf, shared, peerCopies, layers, hostBytes, untilDecoding, chunkFiles, docBytes } = yield* setup
      const aloneA = yield* aloneOf(a)
      const aloneB = yield* aloneOf(b)
      expect(aloneA.error).toBeUndefined()
      expect(yield* shared).toBe(0) // one at a time: nothing running to share with
      expect(chunkFiles()).toEqual([])

      const order: string[] = []
      const runA = yield* Effect.fork(Effect.tap(ask(publicSubjects.generate, a), () => Effect.sync(() => order.push("a"))))
      // Once a decodes (its prompt's chunks sealed), b joins: it links the document's 5 chunks.
      yield* untilDecoding
      const runB = yield* Effect.fork(Effect.tap(ask(publicSubjects.generate, b), () => Effect.sync(() => order.push("b"))))
      const togetherA = (yield* runA).json
      // a has ended and dropped its chunks; b still reads the shared ones from a's bytes.
      expect(chunkFiles().length).toBeGreaterThan(0)
      const togetherB = (yield* runB).json
      expect(order).toEqual(["a", "b"])
      expect(togetherA.ids).toEqual(aloneA.ids)
      expect(togetherB.ids).toEqual(aloneB.ids)
      expect(yield* shared).toBe(160)
      // The reply counts them as cached prompt tokens.
      expect(togetherB.usage).toEqual({ prompt_tokens: b.ids.length, completion_tokens: b.max_tokens, cached_tokens: 160 })
      expect(aloneB.usage.cached_tokens).toBeUndefined()
      // Written once: b wrote none of the document's KV, only what follows.
      expect(aloneB.kv.disk.bytes_written).toBeGreaterThanOrEqual(docBytes)
      expect(togetherB.kv.disk.bytes_written).toBe(aloneB.kv.disk.bytes_written - docBytes)
      // And b's first token came without prefilling them.
      expect(togetherB.timings.prefill_ms).toBeLessThan(aloneB.timings.prefill_ms)
      // On the GPU: b's prefill attends the linked chunks, which a's slots hold (no budget: all
      // resident), so each was copied there on the device, once per layer, and nothing was read
      // from the host or uploaded.
      expect(aloneB.kv.gpu.peer_copies).toBe(0)
      expect(togetherB.kv.gpu.peer_copy_bytes).toBe(docBytes)
      expect(togetherB.kv.gpu.peer_copies).toBe(5 * layers)
      expect(togetherB.kv.host.bytes_read).toBe(0)
      expect(togetherB.kv.compression.upload_bytes).toBe(0)
      expect(yield* peerCopies).toEqual({ chunks: togetherB.kv.gpu.peer_copies, bytes: docBytes, lanes: 0 })
      // Freed when the last user is gone.
      expect(chunkFiles()).toEqual([])
      expect(yield* hostBytes).toBe(0)
    }),
  )

  it.effect("between requests and sessions, both ways: a session opened on a running request's document, then a request after that session, which is deleted under it", () =>
    Effect.gen(function* () {
      const { ask, aloneOf, shared, hostBytes, untilDecoding, chunkFiles, docBytes } = yield* setup
      const aloneB = yield* aloneOf(b)
      const order: string[] = []
      const first = yield* Effect.fork(Effect.tap(ask(publicSubjects.generate, b), () => Effect.sync(() => order.push("b"))))
      yield* untilDecoding
      const opened = (yield* ask(sessionSubjects.open, { ids: doc })).json
      order.push("opened")
      // The whole document taken from the request: the session wrote no KV of its own.
      expect(opened).toMatchObject({ tokens: 160, shared_tokens: 160 })
      expect(chunkFiles()).not.toContain(`${opened.session}.seg`)
      expect((yield* first).json.ids).toEqual(aloneB.ids)
      expect(order).toEqual(["opened", "b"])
      // The request has ended; its bytes stay for the session, which answers as a fresh generate does.
      expect(chunkFiles().length).toBeGreaterThan(0)
      const asked = (yield* ask(sessionSubjects.generate, { session: opened.session, ids: question, max_tokens: b.max_tokens })).json
      expect(asked.ids).toEqual(aloneB.ids)

      // A request that begins like the stored session's document links its chunks; the session
      // is deleted while the request still reads them.
      const before = yield* shared
      const second = yield* Effect.fork(Effect.tap(ask(publicSubjects.generate, b), () => Effect.sync(() => order.push("b again"))))
      yield* untilDecoding
      expect((yield* ask(sessionSubjects.delete, { session: opened.session })).status).toBe("")
      order.push("deleted")
      const together = (yield* second).json
      expect(order.slice(2)).toEqual(["deleted", "b again"])
      expect(together.ids).toEqual(aloneB.ids)
      expect(yield* shared).toBe(before + 160)
      expect(together.usage.cached_tokens).toBe(160)
      expect(together.kv.disk.bytes_written).toBe(aloneB.kv.disk.bytes_written - docBytes)
      expect(together.timings.prefill_ms).toBeLessThan(aloneB.timings.prefill_ms)
      // Nothing left on disk or in the host arena once the last user is gone.
      expect(chunkFiles()).toEqual([])
      expect(yield* hostBytes).toBe(0)
    }),
  )
})

// A GPU budget that holds one lane (a lane's least is ~0.87 MB here): a request arriving while
// another runs waits for KV room until that one ends, and takes its prefix from a hold.
layer(ClusterTest.layer({ maxContext: 512, maxBatch: 2, kvPolicy: parsePolicyDocument("leoam"), gpuKvBudget: 1_000_000 }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  it.effect("a request waiting for KV room while another runs takes the ended one's prefix (kept for it), then nothing is left", () =>
    Effect.gen(function* () {
      const { ask, aloneOf, shared, hostBytes, untilDecoding, chunkFiles, docBytes } = yield* setupWith(new Map())
      const aloneB = yield* aloneOf(b)
      const runA = yield* Effect.fork(ask(publicSubjects.generate, { ...a, max_tokens: 12 }))
      yield* untilDecoding
      const runB = yield* Effect.fork(ask(publicSubjects.generate, b))
      expect((yield* runA).json.error).toBeUndefined()
      const second = (yield* runB).json
      expect(second.ids).toEqual(aloneB.ids)
      expect(second.usage.cached_tokens).toBe(160)
      expect(yield* shared).toBe(160)
      expect(second.kv.disk.bytes_written).toBe(aloneB.kv.disk.bytes_written - docBytes)
      expect(chunkFiles()).toEqual([])
      expect(yield* hostBytes).toBe(0)
    }),
  )
})

