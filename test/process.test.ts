// Actors as separate processes: disk-store alone (`leoam actor disk-store`) on the bus of
// a node running the other three, completing a generate; and `leoam serve` as a process
// that prints its NATS URL and drains on SIGTERM (the request in flight finishes), and that
// the admin CLI finds without --nats-url.
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { connectNats, startNatsServer } from "../actors/nats.ts"
import { startNode } from "../actors/node.ts"
import { publicSubjects } from "../protocol/subjects.ts"
import { ask, modelDir } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname

/** Spawns the CLI and resolves with the process once a stdout line matches `ready`. */
const spawnLeoam = (args: string[], ready: RegExp, env?: NodeJS.ProcessEnv) =>
  new Promise<{ child: ChildProcess; match: RegExpExecArray; output: () => string }>((resolve, reject) => {
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

describe("actors in separate processes", () => {
  it("completes a generate with disk-store in its own process", async () => {
    const nats = await startNatsServer()
    const kvDir = mkdtempSync(join(tmpdir(), "leoam-kv-"))
    const disk = await spawnLeoam(["actor", "disk-store", "--nats-url", nats.url, "--kv-dir", kvDir], /ready on (\S+) \(pid (\d+)\)/)
    const node = await startNode({ actors: ["gpu-executor", "host-cache", "scheduler"], natsUrl: nats.url, model: modelDir, maxContext: 512, kvDir, hostKvBudget: 1 << 20 })
    const client = await connectNats(nats.url, "test")
    try {
      const r = await ask(client, publicSubjects.generate, { prompt: "Once upon a time", max_tokens: 4 })
      expect(r.json.ids).toEqual([1936, 223, 20, 22])
      const health = await ask(client, publicSubjects.health, {})
      const names = health.json.actors.map((a: { name: string }) => a.name).sort()
      expect(names).toEqual(["disk-store", "gpu-executor", "host-cache", "scheduler"])
      const stats = await ask(client, "leoam.int.v1.disk-store.stats", "")
      expect(stats.json.chunkCount).toBe(0)
      expect(Number(disk.match[2])).not.toBe(process.pid)
    } finally {
      disk.child.kill("SIGTERM")
      expect(await exited(disk.child)).toBe(0)
      await client.close()
      await node.stop()
      await nats.stop()
      rmSync(kvDir, { recursive: true, force: true })
    }
  })

  it("`leoam serve` prints its URL, drains on SIGTERM and exits 0", async () => {
    const kvDir = mkdtempSync(join(tmpdir(), "leoam-kv-"))
    const serve = await spawnLeoam(["serve", "--kv-dir", kvDir, "--max-context", "512", "--device", "cpu"], /ready on (nats:\/\/127\.0\.0\.1:\d+)/)
    const client = await connectNats(serve.match[1], "test")
    try {
      const inFlight = ask(client, publicSubjects.generate, { prompt: "Once upon a time", max_tokens: 24 })
      await new Promise((r) => setTimeout(r, 500))
      serve.child.kill("SIGTERM")
      await new Promise((r) => setTimeout(r, 200))
      const late = await ask(client, publicSubjects.generate, { prompt: "a", max_tokens: 2 }, 5000).catch((e: Error) => ({ json: { error: { code: e.message } } }))
      expect(late.json.error.code).toMatch(/shutting_down|no responders|503|CONNECTION|closed|TIMEOUT/i)
      const done = await inFlight
      expect(done.json.ids.length).toBe(24)
      expect(await exited(serve.child)).toBe(0)
      expect(serve.output()).toContain("leoam: stopped")
    } finally {
      serve.child.kill("SIGKILL")
      await client.close().catch(() => undefined)
      rmSync(kvDir, { recursive: true, force: true })
    }
  })

  it("`leoam admin` and `leoam stats` find the running `leoam serve` without --nats-url; a metrics port serves Prometheus text", async () => {
    const cache = mkdtempSync(join(tmpdir(), "leoam-cache-"))
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_CACHE_HOME: cache }
    delete env.LEOAM_NATS_URL
    const serve = await spawnLeoam(
      ["serve", "--max-context", "512", "--device", "cpu", "--kv-policy", "leoam", "--gpu-kv-budget", "1MiB", "--metrics-port", "0"],
      /ready on (nats:\/\/127\.0\.0\.1:\d+).*KV policy leoam v1; metrics (http:\/\/\S+)/,
      env,
    )
    const cli = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(process.execPath, [bin, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) => resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr })),
      )
    try {
      expect(JSON.parse(readFileSync(join(cache, "leoam", "serve.json"), "utf8")).url).toBe(serve.match[1])
      const set = await cli("admin", "policy", "set", "leoam", "--json")
      expect(set.code, set.stderr).toBe(0)
      expect(JSON.parse(set.stdout)).toMatchObject({ version: 2, user: "anonymous", applies: "next_step" })
      const stats = await cli("stats", "--json")
      expect(JSON.parse(stats.stdout).policy).toEqual({ name: "leoam", active_version: 2, pending_version: null })
      const text = await (await fetch(serve.match[2])).text()
      expect(text).toContain('leoam_policy_version{policy="leoam"} 2')
      serve.child.kill("SIGTERM")
      expect(await exited(serve.child)).toBe(0)
      expect(existsSync(join(cache, "leoam", "serve.json"))).toBe(false)
    } finally {
      serve.child.kill("SIGKILL")
      rmSync(cache, { recursive: true, force: true })
    }
  }, 180_000)
})
