// Actors as separate processes: disk-store alone (`leoam actor disk-store`) on the bus of
// a node running the other three, completing a generate; and `leoam serve` as a process
// that prints its NATS URL and drains on SIGTERM (the request in flight finishes), and that
// the admin CLI finds without --nats-url. Processes, servers and directories are scoped to
// each test (killed and removed when it ends, pass or fail).
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { connectNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { startNode } from "../actors/node.ts"
import { publicSubjects } from "../protocol/subjects.ts"
import { ask as askPromise, modelDir } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname

interface Spawned {
  readonly child: ChildProcess
  readonly match: RegExpExecArray
  readonly output: () => string
}

/** Spawns the CLI and resolves with the process once a stdout line matches `ready`. */
const spawnLeoam = (args: string[], ready: RegExp, env?: NodeJS.ProcessEnv) =>
  new Promise<Spawned>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ["ignore", "pipe", "pipe"], env: env ?? process.env })
    let out = ""
    const onData = (d: Buffer) => {
      out += String(d)
      const m = ready.exec(out)
      if (m) resolve({ child, match: m, output: () => out })
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", (d) => (out += String(d)))
    child.once("exit", (code) => reject(new Error(`leoam ${args.join(" ")} exited with ${code}: ${out}`)))
    setTimeout(() => reject(new Error(`leoam ${args.join(" ")} not ready in 90 s: ${out}`)), 90_000)
  })

const exited = (child: ChildProcess) => new Promise<number | null>((r) => (child.exitCode !== null ? r(child.exitCode) : child.once("exit", (c) => r(c))))

/** A CLI process for the scope: SIGKILLed at the end if it is still running. */
const leoamProcess = (args: string[], ready: RegExp, env?: NodeJS.ProcessEnv) =>
  Effect.acquireRelease(Effect.promise(() => spawnLeoam(args, ready, env)), (p) => Effect.sync(() => p.child.kill("SIGKILL")))

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
  )

const connection = (url: string) =>
  Effect.acquireRelease(Effect.promise(() => connectNats(url, "test")), (nc) => Effect.promise(() => nc.close().catch(() => undefined)))

const ask = (nc: Parameters<typeof askPromise>[0], subject: string, body: unknown, timeout?: number) => Effect.promise(() => askPromise(nc, subject, body, timeout))

describe("actors in separate processes", () => {
  it.scopedLive("completes a generate with disk-store in its own process", () =>
    Effect.gen(function* () {
      const nats = yield* Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))
      const kvDir = yield* tempDir("leoam-kv-")
      const disk = yield* leoamProcess(["actor", "disk-store", "--nats-url", nats.url, "--kv-dir", kvDir], /ready on (\S+) \(pid (\d+)\)/)
      yield* Effect.acquireRelease(
        Effect.promise(() => startNode({ actors: ["gpu-executor", "host-cache", "scheduler"], natsUrl: nats.url, model: modelDir, maxContext: 512, kvDir, hostKvBudget: 1 << 20 })),
        (node) => Effect.promise(() => node.stop()),
      )
      const client = yield* connection(nats.url)
      const r = yield* ask(client, publicSubjects.generate, { prompt: "Once upon a time", max_tokens: 4 })
      expect(r.json.ids).toEqual([1936, 223, 20, 22])
      const health = yield* ask(client, publicSubjects.health, {})
      const names = health.json.actors.map((a: { name: string }) => a.name).sort()
      expect(names).toEqual(["disk-store", "gpu-executor", "host-cache", "scheduler"])
      const stats = yield* ask(client, "leoam.int.v1.disk-store.stats", "")
      expect(stats.json.chunkCount).toBe(0)
      expect(stats.json.pid).toBe(Number(disk.match[2]))
      expect(Number(disk.match[2])).not.toBe(process.pid)
      disk.child.kill("SIGTERM")
      expect(yield* Effect.promise(() => exited(disk.child))).toBe(0)
    }),
  )

  it.scopedLive("`leoam serve` prints its URL, drains on SIGTERM and exits 0", () =>
    Effect.gen(function* () {
      const kvDir = yield* tempDir("leoam-kv-")
      const serve = yield* leoamProcess(["serve", "--kv-dir", kvDir, "--max-context", "512", "--device", "cpu"], /ready on (nats:\/\/127\.0\.0\.1:\d+)/)
      const client = yield* connection(serve.match[1])
      const inFlight = yield* Effect.fork(ask(client, publicSubjects.generate, { prompt: "Once upon a time", max_tokens: 24 }))
      yield* Effect.sleep(500)
      serve.child.kill("SIGTERM")
      yield* Effect.sleep(200)
      const late = yield* ask(client, publicSubjects.generate, { prompt: "a", max_tokens: 2 }, 5000).pipe(
        Effect.catchAllDefect((e) => Effect.succeed({ json: { error: { code: (e as Error).message } } })),
      )
      expect(late.json.error.code).toMatch(/shutting_down|no responders|503|CONNECTION|closed|TIMEOUT/i)
      const done = yield* inFlight
      expect(done.json.ids.length).toBe(24)
      expect(yield* Effect.promise(() => exited(serve.child))).toBe(0)
      expect(serve.output()).toContain("leoam: stopped")
    }),
  )

  it.scopedLive(
    "`leoam admin` and `leoam stats` find the running `leoam serve` without --nats-url; a metrics port serves Prometheus text",
    () =>
      Effect.gen(function* () {
        const cache = yield* tempDir("leoam-cache-")
        const env: NodeJS.ProcessEnv = { ...process.env, XDG_CACHE_HOME: cache }
        delete env.LEOAM_NATS_URL
        const serve = yield* leoamProcess(
          ["serve", "--max-context", "512", "--device", "cpu", "--kv-policy", "leoam", "--gpu-kv-budget", "1MiB", "--metrics-port", "0"],
          /ready on (nats:\/\/127\.0\.0\.1:\d+).*KV policy leoam v1; metrics (http:\/\/\S+)/,
          env,
        )
        const cli = (...args: string[]) =>
          Effect.async<{ code: number; stdout: string; stderr: string }>((resume) => {
            execFile(process.execPath, [bin, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) =>
              resume(Effect.succeed({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr })),
            )
          })
        expect(JSON.parse(readFileSync(join(cache, "leoam", "serve.json"), "utf8")).url).toBe(serve.match[1])
        const set = yield* cli("admin", "policy", "set", "leoam", "--json")
        expect(set.code, set.stderr).toBe(0)
        expect(JSON.parse(set.stdout)).toMatchObject({ version: 2, user: "anonymous", applies: "next_step" })
        const stats = yield* cli("stats", "--json")
        expect(JSON.parse(stats.stdout).policy).toEqual({ name: "leoam", active_version: 2, pending_version: null })
        const text = yield* Effect.promise(async () => (await fetch(serve.match[2])).text())
        expect(text).toContain('leoam_policy_version{policy="leoam"} 2')
        serve.child.kill("SIGTERM")
        expect(yield* Effect.promise(() => exited(serve.child))).toBe(0)
        expect(existsSync(join(cache, "leoam", "serve.json"))).toBe(false)
      }),
    180_000,
  )
})
