// Tiered lanes of the continuous batch in a node (leoam, --max-batch 4, the demo's 3 MiB GPU
// budget, which cannot hold 4 lanes of the bundled model): a lone request gets the whole
// budget and answers instead of failing with kv_budget_too_small; requests sent together run
// in as many lanes as the budget holds, each with at least a lane's minimum, and get the ids
// they get alone; admin.stats says how the budget was split.
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

const BUDGET = 3 * 2 ** 20
const prompt = (n: number, shift: number) => Array.from({ length: n }, (_, i) => 10 + ((i * 37 + shift * 101) % 3000))

layer(ClusterTest.layer({ maxContext: 512, maxBatch: 4, kvPolicy: parsePolicyDocument("leoam"), gpuKvBudget: BUDGET }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  it.effect("a budget that cannot fit B lanes runs fewer: a lone request gets all of it, joined ones a share each", () =>
    Effect.gen(function* () {
      const { ask } = yield* ClusterTest
      const idle = (yield* ask(adminSubjects.stats, {})).json.batch
      const min = idle.gpu_shares.lane_min_bytes
      expect(idle.gpu_shares).toEqual({ budget_bytes: BUDGET, lane_min_bytes: min, lanes: [] })
      // The demo's case: B equal shares would be under a lane's minimum, but 2 lanes fit.
      expect(4 * min).toBeGreaterThan(BUDGET)
      expect(2 * min).toBeLessThanOrEqual(BUDGET)

      const requests = [0, 1, 2].map((i) => ({ ids: prompt(40 + 30 * i, i), max_tokens: 12 }))
      const alone = []
      for (const r of requests) {
        const reply = (yield* ask(publicSubjects.generate, r)).json
        expect(reply.error).toBeUndefined()
        // Alone, a request's lane gets the whole budget (not budget / B).
        expect(reply.kv.gpu.budget_bytes).toBe(BUDGET)
        alone.push(reply.ids)
      }

      const together = yield* Effect.fork(Effect.all(requests.map((r) => ask(publicSubjects.generate, r)), { concurrency: "unbounded" }))
      // While they run, every split seen keeps the budget and each lane's minimum.
      const seen: number[][] = []
      while (seen.length < 400) {
        const stats = (yield* ask(adminSubjects.stats, {})).json.batch
        const lanes: number[] = stats.gpu_shares.lanes
        if (lanes.length > 0) seen.push(lanes)
        expect(lanes.length).toBeLessThanOrEqual(Math.floor(BUDGET / min))
        expect(lanes.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(BUDGET)
        for (const b of lanes) expect(b).toBeGreaterThanOrEqual(min)
        if (lanes.length === 0 && seen.length > 0 && stats.waiting_for_kv === 0) break
        yield* Effect.sleep(25)
      }
      const replies = yield* together
      expect(replies.map((r) => r.json.ids)).toEqual(alone)
      for (const r of replies) expect(r.json.kv.gpu.budget_bytes).toBeGreaterThanOrEqual(min)
      // Lanes ran side by side (those that waited for the first start together and split what it frees).
      expect(Math.max(...seen.map((lanes) => lanes.length))).toBeGreaterThanOrEqual(2)
      process.stderr.write(`batch-lanes: lane minimum ${min} bytes; splits seen ${JSON.stringify([...new Set(seen.map((l) => l.join("+")))])}\n`)
      const after = (yield* ask(adminSubjects.stats, {})).json.batch
      expect(after).toMatchObject({ decoding: 0, prefilling: 0, waiting_for_kv: 0, kv_reserved_bytes: 0, gpu_shares: { lanes: [] } })
      // The lanes' decode steps count where their time went (the chunk choice, GPU attention), as a serial run's do.
      const steps = (yield* ask(adminSubjects.stats, {})).json.steps
      expect(steps.ms.scoring).toBeGreaterThan(0)
      expect(steps.gpu_ms.attention).toBeGreaterThan(0)
    }),
  )
})
