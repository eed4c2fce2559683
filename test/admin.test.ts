// The admin subjects against a real node (embedded nats-server, temporary kv-dir, the
// bundled model on lavapipe): live policy changes while generations run, refusals that
// change nothing, the policy surviving a restart, stats (NATS and Prometheus), access
// control with client and admin users (passwords and nkeys), and the admin CLI.
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import { createUser } from "@nats-io/nkeys"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { pingActors } from "../actors/actor.ts"
import { connectNats } from "../actors/nats.ts"
import { type LeoamNode, startNode } from "../actors/node.ts"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, internalSubjects, publicSubjects } from "../protocol/subjects.ts"
import { ask, modelDir } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const MiB = 1 << 20

const startTestNode = (kvDir: string, extra: Partial<Parameters<typeof startNode>[0]> = {}) =>
  startNode({
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

const until = async (f: () => Promise<boolean>, ms: number, what: string) => {
  const deadline = Date.now() + ms
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** The gpu-executor's current run id (null when idle), from its ping status. */
const executorRun = async (nc: NatsConnection): Promise<string | null> => {
  const actors = await pingActors(nc)
  const stats = actors.find((a) => a.name === "gpu-executor")?.stats as { current_run?: string | null } | undefined
  return stats?.current_run ?? null
}

const prompt = (seed: number, n: number) => Array.from({ length: n }, (_, i) => 100 + ((i * 37 + seed * 101) % 3000))

describe("live KV policy over leoam.v1.admin.policy.*", () => {
  let kvDir: string
  let node: LeoamNode
  let nc: NatsConnection

  beforeAll(async () => {
    kvDir = mkdtempSync(join(tmpdir(), "leoam-admin-"))
    node = await startTestNode(kvDir, { metricsPort: 0 })
    nc = await connectNats(node.url, "test-admin")
  }, 120_000)

  afterAll(async () => {
    await nc?.close().catch(() => undefined)
    await node?.stop()
    rmSync(kvDir, { recursive: true, force: true })
  })

  it("starts at version 1 (the startup policy) and lists the registered policies with their schema", async () => {
    const get = await ask(nc, adminSubjects.policyGet, {})
    expect(get.status).toBe("")
    expect(get.json).toMatchObject({ version: 1, policy: { name: "leoam" }, user: "startup", executor: { active_version: 1, pending_version: null } })
    expect(get.json.resolved).toMatchObject({ name: "leoam", chunk_tokens: 32, budget_fraction: 0.1, eviction: "lru" })
    const list = await ask(nc, adminSubjects.policyList, {})
    expect(list.json.policies.map((p: { name: string }) => p.name)).toEqual(["full", "offload-all", "h2o", "quest", "leoam"])
    expect(list.json.eviction).toEqual(["lru", "lfu", "importance"])
    expect(JSON.stringify(list.json.schema)).toContain("budget_fraction")
    const quest = list.json.policies.find((p: { name: string }) => p.name === "quest")
    expect(quest.defaults).toMatchObject({ chunk_tokens: 16, budget_fraction: 0.1, sink_tokens: 16, recent_tokens: 32 })
    expect(JSON.stringify(quest.schema)).toContain('"quest"')
    expect(JSON.stringify(quest.schema)).toContain("sink_tokens")
  })

  it("changes eviction and selection while several long generations run: each change applies at a step boundary, all generations complete", async () => {
    const before = (await ask(nc, adminSubjects.policyGet, {})).json.version as number
    const maxTokens = 48
    let done = 0
    const runs = [0, 1, 2].map((k) =>
      ask(nc, publicSubjects.generate, { ids: prompt(k, 260), max_tokens: maxTokens }, 600_000).then((r) => {
        done++
        return r
      }),
    )
    await until(async () => (await executorRun(nc)) !== null, 120_000, "the first run to start")

    const changes = [
      { policy: { name: "leoam", eviction: "lfu" }, reason: "lfu for a while" },
      { policy: { name: "leoam", eviction: "importance", selection: { topk: { budget_fraction: 0.25, sink_tokens: 32, recent_tokens: 32 } } } },
      { policy: { name: "leoam", selection: { topk: { budget_tokens: 160 } } } },
    ]
    const appliedWhileRunning: boolean[] = []
    for (const [i, change] of changes.entries()) {
      const set = await ask(nc, adminSubjects.policySet, change)
      expect(set.status, JSON.stringify(set.json)).toBe("")
      expect(set.json).toMatchObject({ version: before + i + 1, applies: "next_step", user: "anonymous" })
      // The executor switches at its next decode step, while the generations are still going.
      await until(async () => (await ask(nc, adminSubjects.policyGet, {})).json.executor.active_version === before + i + 1, 60_000, `v${before + i + 1} to apply`)
      appliedWhileRunning.push(done < runs.length)
    }
    expect(appliedWhileRunning[0]).toBe(true)

    // Another chunk size needs a new KV cache: it applies at the next request.
    const layout = await ask(nc, adminSubjects.policySet, { policy: { name: "leoam", chunking: { fixed: { tokens: 16 } } } })
    expect(layout.json).toMatchObject({ version: before + 4, applies: "next_request" })

    const replies = await Promise.all(runs)
    for (const r of replies) {
      expect(r.status).toBe("")
      expect(r.json.finish_reason).toBe("length")
      expect(r.json.usage.completion_tokens).toBe(maxTokens)
    }
    const after = await ask(nc, publicSubjects.generate, { ids: prompt(7, 100), max_tokens: 4 })
    expect(after.status).toBe("")
    expect(after.json.kv.chunk_tokens).toBe(16)
    const get = await ask(nc, adminSubjects.policyGet, {})
    expect(get.json.executor).toEqual({ active_version: before + 4, pending_version: null })

    const history = (await ask(nc, adminSubjects.policyHistory, {})).json.history
    expect(history.map((h: { version: number }) => h.version)).toEqual(Array.from({ length: before + 4 }, (_, i) => i + 1))
    expect(history[before]).toMatchObject({ user: "anonymous", reason: "lfu for a while", applies: "next_step", policy: { name: "leoam", eviction: "lfu" } })
    expect(Date.parse(history[before].at)).toBeGreaterThan(0)
    expect((await ask(nc, adminSubjects.policyHistory, { limit: 2 })).json.history.map((h: { version: number }) => h.version)).toEqual([before + 3, before + 4])
  }, 900_000)

  it("refuses an invalid policy with a coded reason and changes nothing", async () => {
    const versionBefore = (await ask(nc, adminSubjects.policyGet, {})).json.version
    const historyBefore = (await ask(nc, adminSubjects.policyHistory, {})).json.history.length
    const cases: Array<[string, unknown, string]> = [
      ["not JSON", "{nope", "invalid_json"],
      ["no policy", {}, "invalid_request"],
      ["an unknown field in the request", { policy: "leoam", force: true }, "invalid_request"],
      ["an unknown policy", { policy: "lru" }, "unknown_policy"],
      ["an unknown policy document", { policy: { name: "flexgen" } }, "unknown_policy"],
      ["a chunk size off the block grid", { policy: { name: "leoam", chunking: { fixed: { tokens: 20 } } } }, "invalid_policy"],
      ["an unknown field in the policy", { policy: { name: "leoam", prefetch: "next_layer" } }, "invalid_policy"],
      ["a wrong type", { policy: { name: "leoam", selection: { topk: { budget_fraction: "half" } } } }, "invalid_policy"],
      ["a budget under sink + recent", { policy: { name: "leoam", selection: { topk: { budget_tokens: 40 } } } }, "invalid_policy"],
      ["a recent window the GPU budget cannot hold", { policy: { name: "leoam", selection: { topk: { recent_tokens: 60000 } } } }, "kv_budget_too_small"],
      ["all KV on the GPU beyond its budget", { policy: "full" }, "kv_budget_too_small"],
    ]
    for (const [what, body, code] of cases) {
      const r = await ask(nc, adminSubjects.policySet, body)
      expect(r.json.error?.code, what).toBe(code)
      expect(r.status, what).not.toBe("")
    }
    expect((await ask(nc, adminSubjects.policyGet, {})).json.version).toBe(versionBefore)
    expect((await ask(nc, adminSubjects.policyHistory, {})).json.history.length).toBe(historyBefore)
    // A policy document alone (without the {"policy": ...} wrapper) is taken too.
    const bare = await ask(nc, adminSubjects.policySet, { name: "leoam", eviction: "lru" })
    expect(bare.json).toMatchObject({ version: versionBefore + 1, policy: { name: "leoam", eviction: "lru" } })
  })

  it("reports stats: residency and budgets, bytes per tier, hit rates, decode time by phase, queue, policy version; the same as Prometheus text", async () => {
    const s = (await ask(nc, adminSubjects.stats, {})).json
    expect(s.policy.name).toBe("leoam")
    expect(s.policy.active_version).toBeGreaterThan(1)
    expect(s.queue).toMatchObject({ depth: 0, capacity: 16, in_flight: 0 })
    expect(s.requests.completed).toBeGreaterThanOrEqual(4)
    expect(s.tiers.gpu.budget_bytes).toBe(MiB)
    expect(s.tiers.host.budget_bytes).toBe(MiB)
    expect(s.tiers.disk.bytes_written).toBeGreaterThan(0)
    expect(s.tiers.host.bytes_written).toBeGreaterThan(0)
    expect(s.tiers.gpu.hits + s.tiers.gpu.misses).toBeGreaterThan(0)
    expect(s.tiers.gpu.hit_rate).toBeGreaterThanOrEqual(0)
    expect(s.tiers.gpu.hit_rate).toBeLessThanOrEqual(1)
    expect(s.steps.count).toBeGreaterThanOrEqual(3 * 47)
    const m = s.steps.ms
    expect(m.total).toBeGreaterThan(0)
    expect(m.scoring + m.transfer + m.attention + m.seal + m.rest).toBeGreaterThanOrEqual(m.total * 0.999)
    expect(s.prefill.tokens).toBeGreaterThanOrEqual(3 * 260)

    const text = await (await fetch(node.metricsUrl!)).text()
    expect(text).toContain(`leoam_policy_version{policy="leoam"} ${s.policy.active_version}`)
    expect(text).toMatch(/leoam_tier_read_bytes_total\{tier="disk"\} \d+/)
    expect(text).toMatch(/leoam_tier_hit_ratio\{tier="gpu"\} [\d.]+/)
    expect(text).toMatch(/leoam_decode_seconds_total\{phase="transfer"\} [\d.e-]+/)
    expect(text).toMatch(/# TYPE leoam_tier_hits_total counter/)
    expect((await fetch(node.metricsUrl!.replace("/metrics", "/other"))).status).toBe(404)
  })
})

describe("the active policy survives a restart", () => {
  it("is read back from LMDB, with its history, whatever --kv-policy the new node is given", async () => {
    const kvDir = mkdtempSync(join(tmpdir(), "leoam-admin-restart-"))
    try {
      const first = await startTestNode(kvDir)
      let set: { version: number; policy: unknown }
      try {
        set = (await ask(first.nc, adminSubjects.policySet, { policy: { name: "leoam", eviction: "lfu", selection: { topk: { budget_tokens: 256 } } } })).json
        expect(set.version).toBe(2)
      } finally {
        await first.stop()
      }
      const second = await startTestNode(kvDir, { kvPolicy: parsePolicyDocument("offload-all") })
      try {
        expect(second.policy).toEqual({ version: 2, name: "leoam", stored: true })
        const get = (await ask(second.nc, adminSubjects.policyGet, {})).json
        expect(get).toMatchObject({ version: 2, policy: set.policy, executor: { active_version: 2, pending_version: null } })
        const history = (await ask(second.nc, adminSubjects.policyHistory, {})).json.history
        expect(history.map((h: { user: string }) => h.user)).toEqual(["startup", "anonymous"])
        const r = await ask(second.nc, publicSubjects.generate, { ids: prompt(3, 300), max_tokens: 2 })
        expect(r.json.kv.policy).toBe("leoam")
      } finally {
        await second.stop()
      }
    } finally {
      rmSync(kvDir, { recursive: true, force: true })
    }
  }, 300_000)
})

describe("access control on the embedded nats-server", () => {
  let kvDir: string
  let node: LeoamNode
  const bob = createUser()
  const bobSeed = join(mkdtempSync(join(tmpdir(), "leoam-nkey-")), "bob.nk")

  beforeAll(async () => {
    kvDir = mkdtempSync(join(tmpdir(), "leoam-acl-"))
    writeFileSync(bobSeed, new TextDecoder().decode(bob.getSeed()))
    node = await startTestNode(kvDir, {
      users: {
        users: [
          { user: "alice", password: "alice-secret", role: "admin" },
          { user: "carol", password: "carol-secret", role: "client" },
          { nkey: bob.getPublicKey(), role: "admin" },
        ],
      },
    })
  }, 120_000)

  afterAll(async () => {
    await node?.stop()
    rmSync(kvDir, { recursive: true, force: true })
  })

  it("denies a client user the admin and the internal subjects, and serves it the public ones", async () => {
    const carol = await connectNats(node.url, "carol", { user: "carol", pass: "carol-secret" })
    try {
      const r = await ask(carol, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2 })
      expect(r.json.usage).toEqual({ prompt_tokens: 3, completion_tokens: 2 })
      expect((await ask(carol, publicSubjects.health, {})).json.status).toBe("ok")
      for (const subject of [adminSubjects.policyGet, adminSubjects.policySet, adminSubjects.stats, internalSubjects.ping, internalSubjects.executorRun, internalSubjects.diskPolicyPut]) {
        await expect(carol.request(subject, new TextEncoder().encode("{}"), { timeout: 5000 }), subject).rejects.toThrow(/Permissions Violation/)
      }
      // A stream subject may not point the scheduler at internal subjects either.
      const sneaky = await ask(carol, publicSubjects.generate, { ids: [5], max_tokens: 1, stream: internalSubjects.executorCancel })
      expect(sneaky.json.error.code).toBe("invalid_request")
    } finally {
      await carol.close()
    }
  }, 120_000)

  it("allows an admin user everything, and names it in the policy history (password and nkey users)", async () => {
    const alice = await connectNats(node.url, "alice", { user: "alice", pass: "alice-secret" })
    try {
      expect((await ask(alice, adminSubjects.policyGet, {})).json.version).toBe(1)
      const set = (await ask(alice, adminSubjects.policySet, { policy: { name: "leoam", eviction: "lfu" } })).json
      expect(set).toMatchObject({ version: 2, user: "alice", account: "ADMIN" })
      expect((await ask(alice, adminSubjects.stats, {})).json.policy.active_version).toBe(2)
      expect((await ask(alice, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2 })).json.usage.completion_tokens).toBe(2)
      const ping = await alice.request(internalSubjects.ping, new Uint8Array(0), { timeout: 5000 })
      expect(ping.json<{ name: string }>().name).toBeTruthy()
    } finally {
      await alice.close()
    }
    const bobConn = await connectNats(node.url, "bob", { nkeySeedFile: bobSeed })
    try {
      const set = (await ask(bobConn, adminSubjects.policySet, { policy: "leoam" })).json
      expect(set).toMatchObject({ version: 3, user: bob.getPublicKey() })
    } finally {
      await bobConn.close()
    }
    const history = (await ask(node.nc, adminSubjects.policyHistory, {})).json.history
    expect(history.map((h: { user: string }) => h.user)).toEqual(["startup", "alice", bob.getPublicKey()])
  }, 120_000)

  it("refuses a connection without credentials or with a wrong password", async () => {
    await expect(connectNats(node.url, "nobody").then((c) => c.close())).rejects.toThrow(/Authorization/i)
    await expect(connectNats(node.url, "mallory", { user: "carol", pass: "wrong" }).then((c) => c.close())).rejects.toThrow(/Authorization/i)
  })

  it("the admin CLI: set, get, history and stats with --json; a client user is refused with permission_denied", async () => {
    const leoam = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile(process.execPath, [bin, ...args, "--nats-url", node.url], { timeout: 120_000 }, (error, stdout, stderr) =>
          resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        )
      })
    const asAlice = ["--nats-user", "alice", "--nats-pass", "alice-secret"]
    const file = join(mkdtempSync(join(tmpdir(), "leoam-policy-")), "p.json")
    writeFileSync(file, JSON.stringify({ name: "leoam", eviction: "importance", selection: { topk: { budget_fraction: 0.2 } } }))
    const set = await leoam("admin", "policy", "set", file, "--reason", "from the CLI", "--json", ...asAlice)
    expect(set.code, set.stderr).toBe(0)
    const version = JSON.parse(set.stdout).version
    expect(JSON.parse(set.stdout)).toMatchObject({ user: "alice", reason: "from the CLI", applies: "next_step" })
    const human = await leoam("admin", "policy", "get", ...asAlice)
    expect(human.stdout).toContain(`policy v${version}`)
    expect(human.stdout).toContain("eviction importance")
    const history = await leoam("admin", "policy", "history", "--json", ...asAlice)
    expect(JSON.parse(history.stdout).history.at(-1)).toMatchObject({ version, user: "alice" })
    const stats = await leoam("stats", "--json", ...asAlice)
    expect(JSON.parse(stats.stdout).policy.active_version).toBe(version)
    expect((await leoam("stats", ...asAlice)).stdout).toMatch(/^tier +budget/m)

    writeFileSync(file, JSON.stringify({ name: "leoam", chunking: { fixed: { tokens: 24 } } }))
    const bad = await leoam("admin", "policy", "set", file, ...asAlice)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/error \[invalid_policy\]: .*multiple of 16/)
    const denied = await leoam("admin", "policy", "get", "--nats-user", "carol", "--nats-pass", "carol-secret")
    expect(denied.code).toBe(2)
    expect(denied.stderr).toMatch(/error \[permission_denied\]/)
  }, 300_000)
})
