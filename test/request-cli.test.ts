// `leoam request` against a real nats-server, as a script would run it: a subject nothing
// serves is `no_responders` at once (not a timeout), a subscriber that never answers is
// `timeout` after --timeout; both print one stderr line, nothing on stdout, and exit 1.
import { spawn } from "node:child_process"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { connectNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname

const nats = Effect.acquireRelease(Effect.promise(() => startEmbeddedNats()), (n) => Effect.promise(() => n.stop()))

const cli = (args: string[]) =>
  Effect.async<{ code: number | null; stdout: string; stderr: string; ms: number }>((resume) => {
    const t0 = performance.now()
    const child = spawn(process.execPath, [bin, ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (d) => (stdout += String(d)))
    child.stderr!.on("data", (d) => (stderr += String(d)))
    child.once("exit", (code) => resume(Effect.succeed({ code, stdout, stderr, ms: performance.now() - t0 })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("leoam request", () => {
  it.scopedLive("a subject nothing serves: no_responders at once, exit 1; a silent subscriber: timeout", () =>
    Effect.gen(function* () {
      const { url } = yield* nats
      const none = yield* cli(["request", "leoam.v1.nothing", "{}", "--nats-url", url, "--timeout", "60000"])
      expect(none.stdout).toBe("")
      expect(none.stderr).toMatch(/^leoam: error \[no_responders\]: nothing serves leoam\.v1\.nothing on nats:\/\/127\.0\.0\.1:\d+/)
      expect(none.code).toBe(1)
      expect(none.ms).toBeLessThan(30_000) // the CLI's own start (tsx) included; far from the 60 s timeout
      const nc = yield* Effect.acquireRelease(Effect.promise(() => connectNats(url, "silent")), (c) => Effect.promise(() => c.close()))
      nc.subscribe("leoam.v1.silent", { callback: () => undefined })
      yield* Effect.promise(() => nc.flush())
      const silent = yield* cli(["request", "leoam.v1.silent", "{}", "--nats-url", url, "--timeout", "300"])
      expect(silent.stdout).toBe("")
      expect(silent.stderr).toMatch(/^leoam: error \[timeout\]: no reply on leoam\.v1\.silent within 300 ms/)
      expect(silent.code).toBe(1)
    }),
  )

  it.scopedLive("`leoam admin` and `leoam stats` with no node on the bus: no_responders at once, exit 1", () =>
    Effect.gen(function* () {
      const { url } = yield* nats
      for (const args of [["admin", "policy", "get"], ["stats"]]) {
        const r = yield* cli([...args, "--nats-url", url, "--timeout", "60000"])
        expect(r.stdout).toBe("")
        expect(r.stderr).toMatch(/^leoam: error \[no_responders\]: nothing serves leoam\.v1\.admin\.[a-z.]+ on nats:\/\/127\.0\.0\.1:\d+/)
        expect(r.code).toBe(1)
        expect(r.ms).toBeLessThan(30_000)
      }
    }),
  )
})
