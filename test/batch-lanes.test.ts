// Tiered lanes of the continuous batch in a node (leoam, --max-batch 4, the demo's 3 MiB GPU
// budget, which cannot hold 4 lanes of the bundled model): a lone request gets the whole
// budget and answers instead of failing with kv_budget_too_small; requests sent together run
// in as many lanes as the budget holds, each with at least a lane's minimum, and get the ids
// they get alone; admin.stats says how the budget was split. A request arriving while a lone
// lane holds the whole budget joins at the next step boundary: the running lane moves to half
// (actors/lane-reshare.ts), and grows back once the newcomer ends. The lanes' GPU KV buffers
// (pools, staging and read-back rings, abstracts) are counted from the device's allocations;
// the moved lane's reply counts its whole request.
import { expect, layer } from "@effect/vitest"
import { Effect, Fiber, Option } from "effect"
import { globals } from "webgpu"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects } from "../protocol/subjects.ts"
import { ClusterTest } from "./support/cluster-layer.ts"

const BUDGET = 3 * 2 ** 20
const prompt = (n: number, shift: number) => Array.from({ length: n }, (_, i) => 10 + ((i * 37 + shift * 101) % 3000))

/** What a tiered cache counts against its budget, by the labels its buffers are created with. */
const KV_LABEL = /tiered [kv] pool|^kv upload ring|^upload scatter landing|^kv seal read-back|^seal scratch|^seal quantized|abstract (min|max)/
const live = new Map<GPUBuffer, number>()
let liveBytes = 0
let peakBytes = 0
const classes = globals as unknown as { GPUDevice: { prototype: GPUDevice }; GPUBuffer: { prototype: GPUBuffer } }
const device = classes.GPUDevice.prototype
const createBuffer = device.createBuffer
device.createBuffer = function (this: GPUDevice, d: GPUBufferDescriptor) {
  const b = createBuffer.call(this, d)
  if (KV_LABEL.test(d.label ?? "")) {
    live.set(b, d.size)
    liveBytes += d.size
    peakBytes = Math.max(peakBytes, liveBytes)
  }
  return b
}
const buffer = classes.GPUBuffer.prototype
const destroyBuffer = buffer.destroy
buffer.destroy = function (this: GPUBuffer) {
  const size = live.get(this)
  if (size !== undefined) {
    live.delete(this)
    liveBytes -= size
  }
  return destroyBuffer.call(this)
}

layer(ClusterTest.layer({ maxContext: 512, maxBatch: 4, kvPolicy: parsePolicyDocument("leoam"), gpuKvBudget: BUDGET }), { excludeTestServices: true, timeout: "300 seconds" })((it) => {
  it.effect("a budget that cannot fit B lanes runs fewer: a lone request gets all of it, joined ones a share each", () =>
    Effect.gen(function* () {
      const { ask } = yield* ClusterTest
      const idle = (yield* ask(adminSubjects.stats, {})).json.batch
      const min = idle.gpu_shares.lane_min_bytes
      expect(idle.gpu_shares).toEqual({ budget_bytes: BUDGET, lane_min_bytes: min, lanes: [], reshares: { shrunk: 0, grown: 0, ms: 0 } })
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
  it.effect("a request arriving while a lone lane holds the budget joins at the next step boundary: the lane gives back half", () =>
    Effect.gen(function* () {
      const { ask } = yield* ClusterTest
      const stats = Effect.map(ask(adminSubjects.stats, {}), (r) => r.json.batch)
      const a = { ids: prompt(120, 1), max_tokens: 24 }
      const b = { ids: prompt(40, 2), max_tokens: 4 }
      // The executor's own model (serial runs) holds a tiered cache of its own: not a lane.
      const base = liveBytes
      const aloneA = (yield* ask(publicSubjects.generate, a)).json
      const aloneB = (yield* ask(publicSubjects.generate, b)).json
      expect(aloneA.kv.gpu.budget_bytes).toBe(BUDGET)
      expect(aloneB.kv.gpu.budget_bytes).toBe(BUDGET)
      expect(liveBytes).toBe(base)
      peakBytes = base

      const before = (yield* stats).gpu_shares.reshares
      const first = yield* Effect.fork(ask(publicSubjects.generate, a))
      while ((yield* stats).decoding === 0) yield* Effect.sleep(10)
      expect((yield* stats).gpu_shares.lanes).toEqual([BUDGET])
      const second = yield* Effect.fork(ask(publicSubjects.generate, b))
      // While both run: each split seen keeps the budget, and it is split in two.
      const seen = new Set<string>()
      while (Option.isNone(yield* Fiber.poll(second))) {
        const lanes: number[] = (yield* stats).gpu_shares.lanes
        seen.add(lanes.join("+"))
        expect(lanes.reduce((n, x) => n + x, 0)).toBeLessThanOrEqual(BUDGET)
        yield* Effect.sleep(20)
      }
      const replyB = (yield* Fiber.join(second)).json
      // B answered while A still decodes: it did not wait for A to end.
      expect(Option.isNone(yield* Fiber.poll(first))).toBe(true)
      const replyA = (yield* Fiber.join(first)).json
      expect(replyB.error).toBeUndefined()
      expect(replyA.error).toBeUndefined()
      expect(replyB.ids).toEqual(aloneB.ids)
      expect(replyA.ids).toEqual(aloneA.ids)
      expect(replyB.kv.gpu.budget_bytes).toBe(BUDGET / 2)
      // A's reply counts its whole request across its two moves, as alone: decode steps, chunks sealed, chunks chosen.
      const counted = (kv: typeof aloneA.kv) => [kv.steps, kv.chunks_sealed, kv.gpu.hits + kv.gpu.misses]
      expect(counted(replyA.kv)).toEqual(counted(aloneA.kv))
      expect(seen.has(`${BUDGET / 2}+${BUDGET / 2}`)).toBe(true)
      const after = yield* stats
      process.stderr.write(`lane-reshare: A ${replyA.timings.decode_ms_per_token} ms/token, B total ${replyB.timings.total_ms} ms; splits seen ${JSON.stringify([...seen])}; reshares ${JSON.stringify(after.gpu_shares.reshares)}; peak live lane KV bytes ${peakBytes - base} of ${BUDGET}\n`)
      // A gave back half for B, then grew back into it once B ended (while A still decoded).
      expect(after.gpu_shares.reshares.shrunk).toBe(before.shrunk + 1)
      expect(after.gpu_shares.reshares.grown).toBe(before.grown + 1)
      expect(peakBytes - base).toBeGreaterThan(BUDGET / 2)
      expect(peakBytes - base).toBeLessThanOrEqual(BUDGET)
      // Nothing left: no lane, no reservation, no KV buffer.
      expect(after).toMatchObject({ decoding: 0, prefilling: 0, waiting_for_kv: 0, kv_reserved_bytes: 0, gpu_shares: { lanes: [] } })
      expect(liveBytes).toBe(base)
      expect((yield* ask(adminSubjects.stats, {})).json.tiers.host.resident_bytes).toBe(0)
    }),
  )
})
