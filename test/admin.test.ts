// The admin subjects against a real node (embedded nats-server, temporary kv-dir, the
// bundled model on lavapipe): live policy changes while generations run, refusals that
// change nothing, the policy surviving a restart, stats (NATS and Prometheus), access
// control with client and admin users (passwords and nkeys), and the admin CLI. A node
// shared by the tests of a block is a layer (AdminNode), stopped when the block ends.
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import { createUser } from "@nats-io/nkeys"
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { pingActors } from "../actors/actor.ts"
import { connectNats } from "../actors/nats.ts"
import { connectClient } from "../cli/connect.ts"
import { type LeoamNode, startNode } from "../actors/node.ts"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, internalSubjects, publicSubjects } from "../protocol/subjects.ts"
import { ask as askPromise, modelDir } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const MiB = 1 << 20

type NodeOptions = Parameters<typeof startNode>[0]

const nodeOptions = (kvDir: string, extra: Partial<NodeOptions> = {}): NodeOptions => ({
  actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"],
  model: modelDir,
  maxContext: 1024,
  queueCapacity: 16,
  kvDir,
  hostKvBudget: MiB,
  gpuKvBudget: MiB,
  kvPolicy: parsePolicyDocument("leoam"),
  drainTimeoutMs: 60_000,
  ...extra,
})

/** A temporary directory for the scope. */
const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
  )

/** A node on its own embedded nats-server for the scope, with a connection of the test's. */
const scopedNode = (kvDir: string, extra: Partial<NodeOptions> = {}) =>
  Effect.acquireRelease(
    Effect.promise(() => startNode(nodeOptions(kvDir, extra))),
    (node) => Effect.promise(() => node.stop()),
  )

class AdminNode extends Context.Tag("leoam/test/AdminNode")<AdminNode, { readonly node: LeoamNode; readonly kvDir: string }>() {
  static readonly layer = (prefix: string, extra: Partial<NodeOptions> = {}) =>
    Layer.scoped(
      AdminNode,
      Effect.gen(function* () {
        const kvDir = yield* tempDir(prefix)
        return { node: yield* scopedNode(kvDir, extra), kvDir }
      }),
    )
}

/** A connection for the scope. */
const connection = (url: string, name: string, auth?: Parameters<typeof connectNats>[2]) =>
  Effect.acquireRelease(
    Effect.promise(() => connectNats(url, name, auth)),
    (nc) => Effect.promise(() => nc.close().catch(() => undefined)),
  )

const ask = (nc: NatsConnection, subject: string, body: unknown, timeout?: number) => Effect.promise(() => askPromise(nc, subject, body, timeout))

/** Polls `ready` every 50 ms until it holds (dies after `ms`, naming `what`). */
const until = (ready: Effect.Effect<boolean>, ms: number, what: string) =>
  ready.pipe(
    Effect.filterOrFail((ok) => ok, () => `not yet: ${what}`),
    Effect.retry(Schedule.spaced(Duration.millis(50))),
    Effect.timeoutFail({ duration: Duration.millis(ms), onTimeout: () => new Error(`timed out waiting for ${what}`) }),
    Effect.orDie,
  )

/** The gpu-executor's current run id (null when idle), from its ping status. */
const executorRun = (nc: NatsConnection) =>
  Effect.promise(() => pingActors(nc)).pipe(
    Effect.map((actors) => (actors.find((a) => a.name === "gpu-executor")?.stats as { current_run?: string | null } | undefined)?.current_run ?? null),
  )

const prompt = (seed: number, n: number) => Array.from({ length: n }, (_, i) => 100 + ((i * 37 + seed * 101) % 3000))

layer(AdminNode.layer("leoam-admin-", { metricsPort: 0 }), { excludeTestServices: true, timeout: "120 seconds" })("live KV policy over leoam.v1.admin.policy.*", (it) => {
  it.scoped("starts at version 1 (the startup policy) and lists the registered policies with their schema", () =>
    Effect.gen(function* () {
      const { node } = yield* AdminNode
      const nc = yield* connection(node.url, "test-admin")
      const get = yield* ask(nc, adminSubjects.policyGet, {})
      expect(get.status).toBe("")
      expect(get.json).toMatchObject({ version: 1, policy: { name: "leoam" }, user: "startup", executor: { active_version: 1, pending_version: null } })
      // leoam's defaults: fp16, the unpipelined step, no prefetch.
      expect(get.json.resolved).toMatchObject({ name: "leoam", chunk_tokens: 32, budget_fraction: 0.1, eviction: "lru", compression_bits: 16, pipeline_depth: 0, prefetch_layers: 0 })
      const list = yield* ask(nc, adminSubjects.policyList, {})
      expect(list.json.policies.map((p: { name: string }) => p.name)).toEqual(["full", "offload-all", "h2o", "quest", "leoam"])
      expect(list.json.eviction).toEqual(["lru", "lfu", "importance"])
      expect(JSON.stringify(list.json.schema)).toContain("budget_fraction")
      const quest = list.json.policies.find((p: { name: string }) => p.name === "quest")
      expect(quest.defaults).toMatchObject({ chunk_tokens: 16, budget_fraction: 0.1, sink_tokens: 16, recent_tokens: 32 })
      expect(JSON.stringify(quest.schema)).toContain('"quest"')
      expect(JSON.stringify(quest.schema)).toContain("sink_tokens")
    }),
  )

  it.scoped(
    "changes eviction and selection while several long generations run: each change applies at a step boundary, all generations complete",
    () =>
      Effect.gen(function* () {
        const { node } = yield* AdminNode
        const nc = yield* connection(node.url, "test-admin")
        const before = (yield* ask(nc, adminSubjects.policyGet, {})).json.version as number
        const activeVersion = ask(nc, adminSubjects.policyGet, {}).pipe(Effect.map((r) => r.json.executor.active_version as number))
        const maxTokens = 48
        let done = 0
        const runs = yield* Effect.fork(
          Effect.all(
            [0, 1, 2].map((k) => ask(nc, publicSubjects.generate, { ids: prompt(k, 260), max_tokens: maxTokens }, 600_000).pipe(Effect.tap(() => void done++))),
            { concurrency: "unbounded" },
          ),
        )
        yield* until(Effect.map(executorRun(nc), (run) => run !== null), 120_000, "the first run to start")

        const changes = [
          { policy: { name: "leoam", eviction: "lfu" }, reason: "lfu for a while" },
          { policy: { name: "leoam", eviction: "importance", selection: { topk: { budget_fraction: 0.25, sink_tokens: 32, recent_tokens: 32 } } } },
          // The pipelined step turned on live.
          { policy: { name: "leoam", selection: { topk: { budget_tokens: 160 } }, pipeline: { enabled: true } } },
        ]
        const appliedWhileRunning: boolean[] = []
        for (const [i, change] of changes.entries()) {
          const set = yield* ask(nc, adminSubjects.policySet, change)
          expect(set.status, JSON.stringify(set.json)).toBe("")
          expect(set.json).toMatchObject({ version: before + i + 1, applies: "next_step", user: "anonymous" })
          expect(set.json.resolved.pipeline_depth).toBe(i === 2 ? 2 : 0)
          // The executor switches at its next decode step, while the generations are still going.
          yield* until(Effect.map(activeVersion, (v) => v === before + i + 1), 60_000, `v${before + i + 1} to apply`)
          appliedWhileRunning.push(done < 3)
        }
        expect(appliedWhileRunning[0]).toBe(true)

        // Another chunk size needs a new KV cache: it applies at the next request.
        const layout = yield* ask(nc, adminSubjects.policySet, { policy: { name: "leoam", chunking: { fixed: { tokens: 16 } } } })
        expect(layout.json).toMatchObject({ version: before + 4, applies: "next_request" })

        const replies = yield* runs
        for (const r of replies) {
          expect(r.status).toBe("")
          expect(r.json.finish_reason).toBe("length")
          expect(r.json.usage.completion_tokens).toBe(maxTokens)
        }
        const after = yield* ask(nc, publicSubjects.generate, { ids: prompt(7, 100), max_tokens: 4 })
        expect(after.status).toBe("")
        expect(after.json.kv.chunk_tokens).toBe(16)
        expect(after.json.kv.pipeline.depth).toBe(0) // the layout change's document leaves the pipeline out: off
        const get = yield* ask(nc, adminSubjects.policyGet, {})
        expect(get.json.executor).toEqual({ active_version: before + 4, pending_version: null })

        const history = (yield* ask(nc, adminSubjects.policyHistory, {})).json.history
        expect(history.map((h: { version: number }) => h.version)).toEqual(Array.from({ length: before + 4 }, (_, i) => i + 1))
        expect(history[before]).toMatchObject({ user: "anonymous", reason: "lfu for a while", applies: "next_step", policy: { name: "leoam", eviction: "lfu" } })
        expect(Date.parse(history[before].at)).toBeGreaterThan(0)
        expect((yield* ask(nc, adminSubjects.policyHistory, { limit: 2 })).json.history.map((h: { version: number }) => h.version)).toEqual([before + 3, before + 4])
      }),
    900_000,
  )

  it.scoped("refuses an invalid policy with a coded reason and changes nothing", () =>
    Effect.gen(function* () {
      const { node } = yield* AdminNode
      const nc = yield* connection(node.url, "test-admin")
      const versionBefore = (yield* ask(nc, adminSubjects.policyGet, {})).json.version
      const historyBefore = (yield* ask(nc, adminSubjects.policyHistory, {})).json.history.length
      const cases: Array<[string, unknown, string]> = [
        ["not JSON", "{nope", "invalid_json"],
        ["no policy", {}, "invalid_request"],
        ["an unknown field in the request", { policy: "leoam", force: true }, "invalid_request"],
        ["an unknown policy", { policy: "lru" }, "unknown_policy"],
        ["an unknown policy document", { policy: { name: "flexgen" } }, "unknown_policy"],
        ["a chunk size off the block grid", { policy: { name: "leoam", chunking: { fixed: { tokens: 20 } } } }, "invalid_policy"],
        ["an unknown field in the policy", { policy: { name: "leoam", speculate: "next_layer" } }, "invalid_policy"],
        ["a wrong type", { policy: { name: "leoam", selection: { topk: { budget_fraction: "half" } } } }, "invalid_policy"],
        ["a budget under sink + recent", { policy: { name: "leoam", selection: { topk: { budget_tokens: 40 } } } }, "invalid_policy"],
        ["a recent window the GPU budget cannot hold", { policy: { name: "leoam", selection: { topk: { recent_tokens: 60000 } } } }, "kv_budget_too_small"],
        ["all KV on the GPU beyond its budget", { policy: "full" }, "kv_budget_too_small"],
      ]
      for (const [what, body, code] of cases) {
        const r = yield* ask(nc, adminSubjects.policySet, body)
        expect(r.json.error?.code, what).toBe(code)
        expect(r.status, what).not.toBe("")
      }
      expect((yield* ask(nc, adminSubjects.policyGet, {})).json.version).toBe(versionBefore)
      expect((yield* ask(nc, adminSubjects.policyHistory, {})).json.history.length).toBe(historyBefore)
      // A policy document alone (without the {"policy": ...} wrapper) is taken too.
      const bare = yield* ask(nc, adminSubjects.policySet, { name: "leoam", eviction: "lru" })
      expect(bare.json).toMatchObject({ version: versionBefore + 1, policy: { name: "leoam", eviction: "lru" } })
    }),
  )

  it.scoped("reports stats: residency and budgets, bytes per tier, hit rates, decode time by phase, queue, policy version; the same as Prometheus text", () =>
    Effect.gen(function* () {
      const { node } = yield* AdminNode
      const nc = yield* connection(node.url, "test-admin")
      const s = (yield* ask(nc, adminSubjects.stats, {})).json
      expect(s.policy.name).toBe("leoam")
      expect(s.policy.active_version).toBeGreaterThan(1)
      expect(s.queue).toMatchObject({ depth: 0, capacity: 16, in_flight: 0 })
      expect(s.requests.completed).toBeGreaterThanOrEqual(4)
      expect(s.tiers.gpu.budget_bytes).toBe(MiB)
      expect(s.tiers.host.budget_bytes).toBe(MiB)
      // The chunk abstracts' GPU copy, counted in that budget; the sequence's in LMDB.
      expect(s.tiers.gpu.abstract_bytes).toBeGreaterThan(0)
      expect(s.tiers.gpu.abstract_bytes).toBeLessThan(MiB)
      expect(s.tiers.disk.abstract_bytes).toBeGreaterThanOrEqual(0)
      expect(s.tiers.disk.bytes_written).toBeGreaterThan(0)
      expect(s.tiers.host.bytes_written).toBeGreaterThan(0)
      expect(s.tiers.gpu.hits + s.tiers.gpu.misses).toBeGreaterThan(0)
      expect(s.tiers.gpu.hit_rate).toBeGreaterThanOrEqual(0)
      expect(s.tiers.gpu.hit_rate).toBeLessThanOrEqual(1)
      expect(s.steps.count).toBeGreaterThanOrEqual(3 * 47)
      const m = s.steps.ms
      expect(m.total).toBeGreaterThan(0)
      // Host phases are disjoint and add up to the wall time; GPU attention is reported apart.
      expect(m.scoring + m.transfer + m.seal + m.rest).toBeGreaterThanOrEqual(m.total * 0.999)
      if (m.rest > 0) expect(m.scoring + m.transfer + m.seal + m.rest).toBeCloseTo(m.total, 3)
      expect(s.steps.gpu_ms.attention).toBeGreaterThanOrEqual(0)
      expect(s.prefill.tokens).toBeGreaterThanOrEqual(3 * 260)

      const text = yield* Effect.promise(async () => (await fetch(node.metricsUrl!)).text())
      expect(text).toContain(`leoam_policy_version{policy="leoam"} ${s.policy.active_version}`)
      expect(text).toMatch(/leoam_tier_read_bytes_total\{tier="disk"\} \d+/)
      expect(text).toMatch(/leoam_tier_hit_ratio\{tier="gpu"\} [\d.]+/)
      expect(text).toMatch(/leoam_decode_seconds_total\{phase="transfer"\} [\d.e-]+/)
      expect(text).toMatch(/leoam_decode_gpu_seconds_total\{kernel="attention"\} [\d.e-]+/)
      expect(text).toMatch(/# TYPE leoam_tier_hits_total counter/)
      expect((yield* Effect.promise(() => fetch(node.metricsUrl!.replace("/metrics", "/other")))).status).toBe(404)
    }),
  )
})

describe("the active policy survives a restart", () => {
  it.scopedLive(
    "is read back from LMDB, with its history, whatever --kv-policy the new node is given",
    () =>
      Effect.gen(function* () {
        const kvDir = yield* tempDir("leoam-admin-restart-")
        const set = yield* Effect.scoped(
          Effect.gen(function* () {
            const first = yield* scopedNode(kvDir)
            return (yield* ask(first.nc, adminSubjects.policySet, { policy: { name: "leoam", eviction: "lfu", selection: { topk: { budget_tokens: 256 } } } })).json as {
              version: number
              policy: unknown
            }
          }),
        )
        expect(set.version).toBe(2)
        const second = yield* scopedNode(kvDir, { kvPolicy: parsePolicyDocument("offload-all") })
        expect(second.policy).toEqual({ version: 2, name: "leoam", stored: true })
        const get = (yield* ask(second.nc, adminSubjects.policyGet, {})).json
        expect(get).toMatchObject({ version: 2, policy: set.policy, executor: { active_version: 2, pending_version: null } })
        const history = (yield* ask(second.nc, adminSubjects.policyHistory, {})).json.history
        expect(history.map((h: { user: string }) => h.user)).toEqual(["startup", "anonymous"])
        const r = yield* ask(second.nc, publicSubjects.generate, { ids: prompt(3, 300), max_tokens: 2 })
        expect(r.json.kv.policy).toBe("leoam")
      }),
    300_000,
  )
})

const bob = createUser()
const bobSeed = join(mkdtempSync(join(tmpdir(), "leoam-nkey-")), "bob.nk")
writeFileSync(bobSeed, new TextDecoder().decode(bob.getSeed()))

const users = {
  users: [
    { user: "alice", password: "alice-secret", role: "admin" as const },
    { user: "carol", password: "carol-secret", role: "client" as const },
    { nkey: bob.getPublicKey(), role: "admin" as const },
  ],
}

layer(AdminNode.layer("leoam-acl-", { users }), { excludeTestServices: true, timeout: "120 seconds" })("access control on the embedded nats-server", (it) => {
  it.scoped("denies a client user the admin and the internal subjects, and serves it the public ones", () =>
    Effect.gen(function* () {
      const { node } = yield* AdminNode
      // A client user connects with its own inbox prefix (_INBOX_carol), the only one it may subscribe to.
      const carol = yield* Effect.acquireRelease(
        Effect.promise(() => connectClient(node.url, "carol", { user: "carol", pass: "carol-secret" })),
        (nc) => Effect.promise(() => nc.close().catch(() => undefined)),
      )
      const r = yield* ask(carol, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2 })
      expect(r.json.usage).toEqual({ prompt_tokens: 3, completion_tokens: 2 })
      expect((yield* ask(carol, publicSubjects.health, {})).json.status).toBe("ok")
      for (const subject of [adminSubjects.policyGet, adminSubjects.policySet, adminSubjects.stats, internalSubjects.ping, internalSubjects.executorRun, internalSubjects.diskPolicyPut]) {
        yield* Effect.promise(() => expect(carol.request(subject, new TextEncoder().encode("{}"), { timeout: 5000 }), subject).rejects.toThrow(/Permissions Violation/))
      }
      // A stream subject may not point the scheduler at internal subjects either.
      const sneaky = yield* ask(carol, publicSubjects.generate, { ids: [5], max_tokens: 1, stream: internalSubjects.executorCancel })
      expect(sneaky.json.error.code).toBe("invalid_request")
    }),
  )

  it.scoped("allows an admin user everything, and names it in the policy history (password and nkey users)", () =>
    Effect.gen(function* () {
      const { node } = yield* AdminNode
      const alice = yield* connection(node.url, "alice", { user: "alice", pass: "alice-secret" })
      expect((yield* ask(alice, adminSubjects.policyGet, {})).json.version).toBe(1)
      const set = (yield* ask(alice, adminSubjects.policySet, { policy: { name: "leoam", eviction: "lfu" } })).json
      expect(set).toMatchObject({ version: 2, user: "alice", account: "ADMIN" })
      expect((yield* ask(alice, adminSubjects.stats, {})).json.policy.active_version).toBe(2)
      expect((yield* ask(alice, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2 })).json.usage.completion_tokens).toBe(2)
      const ping = yield* Effect.promise(() => alice.request(internalSubjects.ping, new Uint8Array(0), { timeout: 5000 }))
      expect(ping.json<{ name: string }>().name).toBeTruthy()
      const bobConn = yield* connection(node.url, "bob", { nkeySeedFile: bobSeed })
      const bobSet = (yield* ask(bobConn, adminSubjects.policySet, { policy: "leoam" })).json
      expect(bobSet).toMatchObject({ version: 3, user: bob.getPublicKey() })
      const history = (yield* ask(node.nc, adminSubjects.policyHistory, {})).json.history
      expect(history.map((h: { user: string }) => h.user)).toEqual(["startup", "alice", bob.getPublicKey()])
    }),
  )

  it.effect("refuses a connection without credentials or with a wrong password", () =>
    Effect.gen(function* () {
      const { node } = yield* AdminNode
      yield* Effect.promise(() => expect(connectNats(node.url, "nobody").then((c) => c.close())).rejects.toThrow(/Authorization/i))
      yield* Effect.promise(() => expect(connectNats(node.url, "mallory", { user: "carol", pass: "wrong" }).then((c) => c.close())).rejects.toThrow(/Authorization/i))
    }),
  )

  it.scoped(
    "the admin CLI: set, get, history and stats with --json; a client user is refused with permission_denied",
    () =>
      Effect.gen(function* () {
        const { node } = yield* AdminNode
        const leoam = (...args: string[]) =>
          Effect.async<{ code: number; stdout: string; stderr: string }>((resume) => {
            execFile(process.execPath, [bin, ...args, "--nats-url", node.url], { timeout: 120_000 }, (error, stdout, stderr) =>
              resume(Effect.succeed({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr })),
            )
          })
        const asAlice = ["--nats-user", "alice", "--nats-pass", "alice-secret"]
        const file = join(yield* tempDir("leoam-policy-"), "p.json")
        writeFileSync(file, JSON.stringify({ name: "leoam", eviction: "importance", selection: { topk: { budget_fraction: 0.2 } }, pipeline: { enabled: true } }))
        const set = yield* leoam("admin", "policy", "set", file, "--reason", "from the CLI", "--json", ...asAlice)
        expect(set.code, set.stderr).toBe(0)
        const version = JSON.parse(set.stdout).version
        expect(JSON.parse(set.stdout)).toMatchObject({ user: "alice", reason: "from the CLI", applies: "next_step" })
        const human = yield* leoam("admin", "policy", "get", ...asAlice)
        expect(human.stdout).toContain(`policy v${version}`)
        expect(human.stdout).toContain("eviction importance, pipelined step depth 2 with the combine")
        const history = yield* leoam("admin", "policy", "history", "--json", ...asAlice)
        expect(JSON.parse(history.stdout).history.at(-1)).toMatchObject({ version, user: "alice" })
        const stats = yield* leoam("stats", "--json", ...asAlice)
        expect(JSON.parse(stats.stdout).policy.active_version).toBe(version)
        expect((yield* leoam("stats", ...asAlice)).stdout).toMatch(/^tier +budget/m)

        writeFileSync(file, JSON.stringify({ name: "leoam", chunking: { fixed: { tokens: 24 } } }))
        const bad = yield* leoam("admin", "policy", "set", file, ...asAlice)
        expect(bad.code).toBe(2)
        expect(bad.stderr).toMatch(/error \[invalid_policy\]: .*multiple of 16/)
        const denied = yield* leoam("admin", "policy", "get", "--nats-user", "carol", "--nats-pass", "carol-secret")
        expect(denied.code).toBe(2)
        expect(denied.stderr).toMatch(/error \[permission_denied\]/)
      }),
    300_000,
  )
})
