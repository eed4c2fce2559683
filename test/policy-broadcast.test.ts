// Only the gpu-executor decides when a policy change reaches each tier: a change set
// through the admin subject switches the executor and the host arena's eviction together;
// a broadcast the executor refuses (a policy that does not fit its GPU budget) changes
// neither, although every actor received it. A node with every actor on an embedded
// nats-server and a temporary kv-dir, as a layer; the internal subjects through the table.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Schedule } from "effect"
import { startNode, type LeoamNode } from "../actors/node.ts"
import { ask, publish } from "../actors/rpc.ts"
import { parsePolicy, parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects } from "../protocol/subjects.ts"
import { call } from "./support/nats-layer.ts"
import { modelDir } from "./support/server.ts"

const MiB = 1 << 20

class PolicyNode extends Context.Tag("leoam/test/PolicyNode")<PolicyNode, LeoamNode>() {
  static readonly layer = Layer.scoped(
    PolicyNode,
    Effect.gen(function* () {
      const kvDir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "leoam-broadcast-"))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
      )
      // 1024 tokens of full KV need 4 MiB: over the 1 MiB GPU budget, `full` is refused.
      return yield* Effect.acquireRelease(
        Effect.promise(() =>
          startNode({ actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"], model: modelDir, maxContext: 1024, kvDir, hostKvBudget: MiB, gpuKvBudget: MiB, kvPolicy: parsePolicyDocument("leoam") }),
        ),
        (node) => Effect.promise(() => node.stop()),
      )
    }),
  )
}

/** The executor's active version and the arena's eviction, once the executor holds nothing pending. */
const settled = Effect.gen(function* () {
  const { nc } = yield* PolicyNode
  const ex = yield* ask(nc, "executorStats", {})
  const host = yield* ask(nc, "hostCacheStats", {})
  return { active: ex.policy.active_version, pending: ex.policy.pending_version, eviction: host.eviction }
})

/** `settled` once it satisfies `done` (polled every 50 ms, for 5 s at most). */
const settledWhen = (done: (s: Effect.Effect.Success<typeof settled>) => boolean) =>
  settled.pipe(
    Effect.filterOrFail(done, () => "not yet"),
    Effect.retry({ schedule: Schedule.spaced(50), times: 100 }),
  )

layer(PolicyNode.layer, { excludeTestServices: true, timeout: "120 seconds" })("a policy change reaches the tiers through the gpu-executor", (it) => {
  it.effect("an admin change switches the executor and the host arena together", () =>
    Effect.gen(function* () {
      const { nc } = yield* PolicyNode
      expect((yield* settled).eviction).toBe("lru")
      const set = yield* call(nc, adminSubjects.policySet, { policy: { name: "leoam", eviction: "lfu" } })
      expect(set.applies).toBe("next_step")
      // Idle, the executor applies a live swap as the broadcast arrives.
      const after = yield* settledWhen((s) => s.active === set.version)
      expect(after).toEqual({ active: set.version, pending: null, eviction: "lfu" })
    }),
  )

  it.effect("a broadcast the executor refuses changes no tier; the next accepted one changes both", () =>
    Effect.gen(function* () {
      const { nc } = yield* PolicyNode
      const before = yield* settled
      yield* publish(nc, "policyChanged", { version: before.active + 1, resolved: parsePolicy({ name: "full", eviction: "importance" }) })
      yield* Effect.sleep(300)
      expect(yield* settled).toEqual(before)
      yield* publish(nc, "policyChanged", { version: before.active + 2, resolved: parsePolicy({ name: "leoam", eviction: "importance" }) })
      const after = yield* settledWhen((s) => s.active === before.active + 2)
      expect(after).toEqual({ active: before.active + 2, pending: null, eviction: "importance" })
    }),
  )
})
