// A node id is one node's on a shared NATS: a process that would run an actor its node
// already runs is refused with `node_id_in_use` before it touches the kv-dir, and the live
// node is not disturbed; the processes of one node split over the bus (the same id,
// other actors) and other ids start. Disk-store actors only: no model, no GPU.
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { pingActors } from "../actors/actor.ts"
import { connectNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { nodeView } from "../actors/node-bus.ts"
import { type NodeOptions, startNode } from "../actors/node.ts"
import { internalSubjects, onNode } from "../protocol/subjects.ts"
import { modelDir } from "./support/server.ts"

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
  )

describe("node ids on one NATS", () => {
  it.scopedLive("a second process under a live node's id with the same actor is refused (node_id_in_use); the live node goes on; other ids start", () =>
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
      const base = yield* tempDir("leoam-nodeid-")
      const options = (node: string, kv: string): NodeOptions => ({ actors: ["disk-store"], node, natsUrl: nats.url, model: modelDir, kvDir: join(base, kv), hostKvBudget: 1 << 20 })
      yield* Effect.acquireRelease(Effect.promise(() => startNode(options("dup", "kv-1"))), (n) => Effect.promise(() => n.stop()))

      const t0 = performance.now()
      const second = yield* Effect.exit(Effect.tryPromise(() => startNode(options("dup", "kv-2"))))
      const refusedMs = performance.now() - t0
      const error = Exit.isFailure(second) && second.cause._tag === "Fail" ? (second.cause.error.error as { code?: string; message?: string }) : undefined
      expect(error).toMatchObject({ code: "node_id_in_use", message: expect.stringMatching(/node id "dup" is in use on this NATS: its disk-store already runs \(pid \d+\)/) })
      expect(existsSync(join(base, "kv-2")), "refused before its kv-dir was opened").toBe(false)
      expect(refusedMs).toBeLessThan(5000)

      // The live node still answers on its own subjects, and alone.
      const client = yield* Effect.acquireRelease(Effect.promise(() => connectNats(nats.url, "test")), (c) => Effect.promise(() => c.close()))
      const live = yield* Effect.promise(() => pingActors(nodeView(client, "dup"), 300))
      expect(live.map((a) => [a.name, a.pid])).toEqual([["disk-store", process.pid]])
      const stats = yield* Effect.promise(() => client.request(onNode(internalSubjects.diskStats, "dup"), new Uint8Array(0), { timeout: 5000 }))
      expect(stats.headers?.get("Nats-Service-Error-Code") ?? "").toBe("")

      // Another id starts; so does another actor of node dup (one node split over processes).
      yield* Effect.acquireRelease(Effect.promise(() => startNode(options("other", "kv-3"))), (n) => Effect.promise(() => n.stop()))
      const split = yield* Effect.acquireRelease(
        Effect.promise(() => startNode({ ...options("dup", "kv-1"), actors: ["gpu-executor", "host-cache"], device: "cpu", maxContext: 256 })),
        (n) => Effect.promise(() => n.stop()),
      )
      expect(split.actors.map((a) => a.name)).toEqual(["gpu-executor", "host-cache"])
      process.stderr.write(`node-id: the duplicate refused in ${refusedMs.toFixed(0)} ms\n`)
    }),
  )
})
