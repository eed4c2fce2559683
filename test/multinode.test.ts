// Two `leoam serve` nodes (real processes, --node a and --node b) on one nats-server with
// their own kv-dirs: both serve generates through the queue group with the golden greedy
// ids; each node's internal subjects stay its own (pings, health, the runs its executor ran
// match the generates its service instance took); then node a is killed with kill -9 while
// it holds requests, and every request gets exactly one answer: its reply, or, for those a
// held, `actor_unavailable` from node b within the lease silence; b goes on serving. A third
// node started under a live id is refused (`node_id_in_use`, exit 2) without disturbing it.
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import type { NatsConnection } from "@nats-io/nats-core"
import { Effect } from "effect"
import { connectNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import type { NodeLease } from "../protocol/cluster.ts"
import { adminSubjects, clusterSubjects, internalSubjects, NODE_ID, onNode, publicSubjects } from "../protocol/subjects.ts"
import { ask } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const GOLDEN = [1936, 223, 20, 22] // "Once upon a time", greedy, tiny-leo-14m

interface Spawned {
  readonly child: ChildProcess
  readonly pid: number
}

/** A `leoam serve` process for the scope, ready once it prints its ready line; SIGKILLed when the scope ends. */
const serve = (args: string[]) =>
  Effect.acquireRelease(
    Effect.async<Spawned>((resume) => {
      const child = spawn(process.execPath, [bin, "serve", ...args], { stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      const timer = setTimeout(() => resume(Effect.die(new Error(`leoam serve not ready in 90 s: ${out}`))), 90_000)
      child.stdout!.on("data", (d) => {
        out += String(d)
        const m = /ready on \S+ \(pid (\d+)\)/.exec(out)
        if (m) (clearTimeout(timer), resume(Effect.succeed({ child, pid: Number(m[1]) })))
      })
      child.stderr!.on("data", (d) => (out += String(d)))
      child.once("exit", (code) => (clearTimeout(timer), resume(Effect.die(new Error(`leoam serve exited with ${code}: ${out}`)))))
    }),
    (p) => Effect.sync(() => p.child.kill("SIGKILL")),
  )

/** A `leoam serve` expected to exit at start: its exit code and output. */
const refused = (args: string[]) =>
  Effect.async<{ code: number | null; out: string }>((resume) => {
    const child = spawn(process.execPath, [bin, "serve", ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    child.stdout!.on("data", (d) => (out += String(d)))
    child.stderr!.on("data", (d) => (out += String(d)))
    child.once("exit", (code) => resume(Effect.succeed({ code, out })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
  )

/** Every reply to one request within `ms` (a broadcast: pings, `$SRV.STATS`). */
const gather = (nc: NatsConnection, subject: string, ms = 400) =>
  Effect.promise(async () => {
    const out: any[] = []
    try {
      for await (const m of await nc.requestMany(subject, new Uint8Array(0), { maxWait: ms })) out.push(m.json<any>())
    } catch (e) {
      if (!/no responders/i.test(String(e))) throw e
    }
    return out
  })

const generate = (nc: NatsConnection, max_tokens: number) =>
  Effect.promise(() => ask(nc, publicSubjects.generate, { prompt: "Once upon a time", max_tokens }, 60_000).then((r) => ({ ...r, at: performance.now() })))

describe("several nodes on one NATS", () => {
  it("a node id moves the internal subjects under its prefix, and only them", () => {
    expect(onNode(internalSubjects.executorRun, "a")).toBe("leoam.int.v1.node.a.gpu-executor.run")
    expect(onNode(internalSubjects.policyChanged, "b-2")).toBe("leoam.int.v1.node.b-2.policy.changed")
    expect(onNode(internalSubjects.executorRun, undefined)).toBe(internalSubjects.executorRun)
    for (const s of [publicSubjects.generate, adminSubjects.policySet, clusterSubjects.leases, "_INBOX.x.y", "leoam.int.v1.node.a.ping"]) expect(onNode(s, "a")).toBe(s)
    for (const ok of ["a", "node-1", "A_b"]) expect(NODE_ID.test(ok)).toBe(true)
    for (const bad of ["", "a.b", "a*", ">", "a b", "x".repeat(65)]) expect(NODE_ID.test(bad)).toBe(false)
  })

  it.scopedLive(
    "two nodes share the public subjects, keep their internal ones, and a node killed under load leaves no request unanswered",
    () =>
      Effect.gen(function* () {
        const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
        const [kvA, kvB] = [yield* tempDir("leoam-kv-a-"), yield* tempDir("leoam-kv-b-")]
        const started = performance.now()
        const common = ["--nats-url", nats.url, "--max-context", "256", "--device", "cpu"]
        const [a, b] = yield* Effect.all([serve([...common, "--node", "a", "--kv-dir", kvA]), serve([...common, "--node", "b", "--kv-dir", kvB])], {
          concurrency: 2,
        })
        const readyMs = performance.now() - started
        const client = yield* Effect.acquireRelease(Effect.promise(() => connectNats(nats.url, "test")), (nc) => Effect.promise(() => nc.close().catch(() => undefined)))

        // Internal subjects: each node's actors answer only under its own prefix; nothing on the single-node ones.
        for (const [id, node] of [["a", a], ["b", b]] as const) {
          const pongs = yield* gather(client, `leoam.int.v1.node.${id}.ping`)
          expect(pongs.map((p) => p.name).sort()).toEqual(["disk-store", "gpu-executor", "host-cache", "scheduler"])
          expect(new Set(pongs.map((p) => p.pid))).toEqual(new Set([node.pid]))
        }
        expect(yield* gather(client, "leoam.int.v1.ping", 200)).toEqual([])

        // A third `leoam serve --node b` is refused (node b is live) and exits 2, leaving b alone (b serves below).
        const dup = yield* refused([...common, "--node", "b", "--kv-dir", kvB])
        expect(dup.code).toBe(2)
        expect(dup.out).toMatch(/leoam: error \[node_id_in_use\]: node id "b" is in use on this NATS/)

        // Concurrent generates: both nodes serve, every reply is the golden one.
        const firstAt = performance.now()
        const first = yield* Effect.all(Array.from({ length: 12 }, () => generate(client, 4)), { concurrency: "unbounded" })
        for (const r of first) expect(r.json.ids, JSON.stringify(r.json)).toEqual(GOLDEN)
        const firstMs = performance.now() - firstAt
        const health = yield* Effect.promise(() => ask(client, publicSubjects.health, {}))
        expect(health.json.actors).toHaveLength(4)
        // Per node: the generates its service instance took are the runs its own executor ran.
        const stats = yield* gather(client, "$SRV.STATS.leoam")
        const took = Object.fromEntries(stats.map((s) => [s.metadata.node, s.endpoints.find((e: { name: string }) => e.name === "generate").num_requests]))
        expect(took.a + took.b).toBe(12)
        for (const id of ["a", "b"]) {
          expect(took[id], `node ${id} served none of 12`).toBeGreaterThan(0)
          const executor = yield* Effect.promise(() => ask(client, `leoam.int.v1.node.${id}.gpu-executor.stats`, ""))
          expect(executor.json.runs).toBe(took[id])
        }
        // A policy change reaches the node that took it (its kv-dir stores v2), not the other.
        const set = yield* Effect.promise(() => ask(client, adminSubjects.policySet, { policy: { name: "full" }, reason: "multinode" }))
        expect(set.json).toMatchObject({ version: 2 })
        const versions = []
        for (const id of ["a", "b"]) {
          const policy = (yield* Effect.promise(() => ask(client, `leoam.int.v1.node.${id}.gpu-executor.stats`, ""))).json.policy
          versions.push(policy.pending_version ?? policy.active_version)
        }
        expect(versions.sort()).toEqual([1, 2])

        // Under load: wait until every request is held by a node (their leases) and a holds some, then kill -9 a.
        const leases = new Map<string, NodeLease>()
        const sub = client.subscribe(clusterSubjects.leases, { callback: (_e, m) => void leases.set(m.json<NodeLease>().node, m.json<NodeLease>()) })
        yield* Effect.addFinalizer(() => Effect.sync(() => sub.unsubscribe()))
        // Enough requests that a takes at least 2 (the queue group spreads them at random), each
        // long enough to be seen held: with 8 of 24 tokens all could end before a held 2.
        const N = 12
        let answered = 0
        const load = yield* Effect.fork(
          Effect.all(
            Array.from({ length: N }, () => Effect.tap(generate(client, 64), () => Effect.sync(() => answered++))),
            { concurrency: "unbounded" },
          ),
        )
        const held = (id: string) => leases.get(id)?.inflight.length ?? 0
        const t0 = performance.now()
        while (!(held("a") >= 2 && held("a") + held("b") + answered === N)) {
          if (performance.now() - t0 > 20_000) return yield* Effect.die(new Error(`not all held: a ${held("a")}, b ${held("b")}, answered ${answered}`))
          yield* Effect.sleep(10)
        }
        const heldByA = held("a")
        a.child.kill("SIGKILL")
        const killedAt = performance.now()
        const results = yield* load
        expect(results).toHaveLength(N)
        const lost = results.filter((r) => r.json.error)
        const served = results.filter((r) => !r.json.error)
        for (const r of lost) {
          expect(r.json.error).toMatchObject({ code: "actor_unavailable", message: expect.stringContaining("node a") })
          expect(r.status).toBe("503")
          expect(r.at - killedAt).toBeLessThan(8000)
        }
        for (const r of served) expect(r.json.ids.slice(0, 4)).toEqual(GOLDEN)
        expect(lost.length).toBeGreaterThan(0)
        expect(lost.length).toBeLessThanOrEqual(heldByA)
        const after = yield* generate(client, 4)
        expect(after.json.ids).toEqual(GOLDEN)
        process.stderr.write(
          `multinode: both nodes ready in ${readyMs.toFixed(0)} ms; 12 generates in ${firstMs.toFixed(0)} ms; a held ${heldByA} of ${N} when killed; ${lost.length} answered actor_unavailable ${lost.map((r) => (r.at - killedAt).toFixed(0)).join(", ")} ms after the kill; ${served.length} served\n`,
        )
      }),
    150_000, // two nodes and a refused third start on a shared two-core machine
  )
})
