// Prefix sharing between plain generate requests (issue 14 §2) in a node (leoam, fixed 16-token
// chunks, --max-batch 2): a request whose prompt begins like a running one's links the whole
// chunks of the common prefix (written once, on disk) instead of prefilling them, gets the
// ids it gets alone, and the shared chunks' bytes outlive the request that wrote them while
// the other still uses them, and are freed when the last user is gone.
import { readdirSync } from "node:fs"
import { join } from "node:path"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

const doc = Array.from({ length: 160 }, (_, i) => 10 + ((i * 37 + 11) % 3000)) // 10 whole chunks
const a = { ids: [...doc, 101, 202, 303, 404, 505, 606], max_tokens: 8 }
const b = { ids: [...doc, 111, 222, 333], max_tokens: 24 }

layer(ClusterTest.layer({ maxContext: 512, maxBatch: 2, kvPolicy: parsePolicyDocument("leoam") }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  it.effect("a request sharing a running one's prefix links its chunks: same ids, written once, freed with the last user", () =>
    Effect.gen(function* () {
      const { cluster, ask } = yield* ClusterTest
      const chunkFiles = () => readdirSync(join(cluster.kvDir, "chunks")).length
      const shared = Effect.map(ask(adminSubjects.stats, {}), (r) => r.json.batch.shared_prefix_tokens as number)
      const aloneA = (yield* ask(publicSubjects.generate, a)).json
      const aloneB = (yield* ask(publicSubjects.generate, b)).json
      expect(aloneA.error).toBeUndefined()
      expect(yield* shared).toBe(0) // one at a time: nothing running to share with
      expect(chunkFiles()).toBe(0)

      const order: string[] = []
      const runA = yield* Effect.fork(Effect.tap(ask(publicSubjects.generate, a), () => Effect.sync(() => order.push("a"))))
      // Once a decodes (its prompt's chunks sealed), b joins: it links the document's 10 chunks.
      while (((yield* ask(adminSubjects.stats, {})).json.batch.decoding ?? 0) === 0) yield* Effect.sleep(10)
      const runB = yield* Effect.fork(Effect.tap(ask(publicSubjects.generate, b), () => Effect.sync(() => order.push("b"))))
      const togetherA = (yield* runA).json
      // a has ended and dropped its chunks; b still reads the shared ones from a's bytes.
      expect(chunkFiles()).toBeGreaterThan(0)
      const togetherB = (yield* runB).json
      expect(order).toEqual(["a", "b"])
      expect(togetherA.ids).toEqual(aloneA.ids)
      expect(togetherB.ids).toEqual(aloneB.ids)
      expect(yield* shared).toBe(160)
      // Written once: b wrote none of the document's KV (160 tokens, fp16 K and V of every layer), only what follows.
      const m = (yield* ask(publicSubjects.models, {})).json.models[0]
      const docBytes = 160 * m.layers * 2 * m.kv_heads * (m.hidden_size / m.heads) * 2
      expect(aloneB.kv.disk.bytes_written).toBeGreaterThanOrEqual(docBytes)
      expect(togetherB.kv.disk.bytes_written).toBe(aloneB.kv.disk.bytes_written - docBytes)
      // And b's first token came without prefilling them.
      expect(togetherB.timings.prefill_ms).toBeLessThan(aloneB.timings.prefill_ms)
      // Freed when the last user is gone.
      expect(chunkFiles()).toBe(0)
    }),
  )
})
