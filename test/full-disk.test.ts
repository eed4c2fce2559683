// A really full disk under `leoam serve`: its kv-dir on a 256 KiB tmpfs (mounted here; CI
// runs as root), the offload-all policy writing every sealed chunk through to disk. A
// prompt whose chunks do not fit is answered `disk_full` (507, real ENOSPC), and the node
// goes on: health is ok and a short generate (no chunk to seal) is served. Skipped, with
// the reason printed, where this environment cannot mount a tmpfs (not root, no
// CAP_SYS_ADMIN).
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { connectNats } from "../actors/nats.ts"
import { publicSubjects } from "../protocol/subjects.ts"
import { ask } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const GOLDEN = [1936, 223, 20, 22] // "Once upon a time", greedy, tiny-leo-14m

/** Mounts a tmpfs of `size` at a fresh directory, or says why it cannot. */
const tryMount = (size: string): { dir: string } | { reason: string } => {
  const dir = mkdtempSync(join(tmpdir(), "leoam-fulldisk-"))
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0700`, "tmpfs", dir], { stdio: "pipe" })
    return { dir }
  } catch (e) {
    rmSync(dir, { recursive: true, force: true })
    return { reason: String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim() }
  }
}
const unmount = (dir: string) => {
  try {
    execFileSync("umount", [dir], { stdio: "pipe" })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

// Whether this environment can mount at all (probed once, at collection).
const probe = tryMount("64k")
if ("dir" in probe) unmount(probe.dir)
else process.stderr.write(`full-disk: skipped: cannot mount a tmpfs here (${probe.reason})\n`)

const serve = (args: string[]) =>
  Effect.acquireRelease(
    Effect.async<{ child: ChildProcess; url: string }>((resume) => {
      const child = spawn(process.execPath, [bin, "serve", ...args], { stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      const timer = setTimeout(() => resume(Effect.die(new Error(`leoam serve not ready in 90 s: ${out}`))), 90_000)
      child.stdout!.on("data", (d) => {
        out += String(d)
        const m = /ready on (nats:\/\/\S+) \(pid \d+\)/.exec(out)
        if (m) (clearTimeout(timer), resume(Effect.succeed({ child, url: m[1] })))
      })
      child.stderr!.on("data", (d) => (out += String(d)))
      child.once("exit", (code) => (clearTimeout(timer), resume(Effect.die(new Error(`leoam serve exited with ${code}: ${out}`)))))
    }),
    ({ child }) =>
      Effect.async<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        child.once("exit", () => resume(Effect.void))
        child.kill("SIGKILL")
      }),
  )

describe("a full disk", () => {
  it.scopedLive.skipIf(!("dir" in probe))("a prompt whose chunks do not fit the kv-dir's filesystem gets disk_full; the node goes on serving", () =>
    Effect.gen(function* () {
      const mounted = yield* Effect.acquireRelease(
        Effect.sync(() => tryMount("256k")),
        (m) => Effect.sync(() => "dir" in m && unmount(m.dir)),
      )
      if (!("dir" in mounted)) return yield* Effect.die(new Error(`cannot mount: ${mounted.reason}`))
      const kvDir = join(mounted.dir, "kv")
      const node = yield* serve(["--kv-dir", kvDir, "--kv-policy", "offload-all", "--max-context", "512", "--device", "cpu"])
      const client = yield* Effect.acquireRelease(Effect.promise(() => connectNats(node.url, "test")), (nc) => Effect.promise(() => nc.close()))
      // 160 tokens: five 32-token chunks of 8 layers (128 KiB each in fp16), about 640 KiB for a 256 KiB filesystem.
      const t0 = performance.now()
      const full = yield* Effect.promise(() => ask(client, publicSubjects.generate, { ids: Array.from({ length: 160 }, (_, i) => 100 + i), max_tokens: 4 }, 120_000))
      const fullMs = performance.now() - t0
      expect(full.json.error).toMatchObject({ code: "disk_full", message: expect.stringMatching(/ENOSPC|No space left on device/) })
      expect(full.status).toBe("507")
      const health = yield* Effect.promise(() => ask(client, publicSubjects.health, {}))
      expect(health.json.status).toBe("ok")
      const served = yield* Effect.promise(() => ask(client, publicSubjects.generate, { prompt: "Once upon a time", max_tokens: 4 }, 120_000))
      expect(served.json.ids).toEqual(GOLDEN)
      expect(node.child.exitCode).toBeNull()
      process.stderr.write(`full-disk: disk_full answered ${fullMs.toFixed(0)} ms after the request; then health ok and a short generate served\n`)
    }),
  )
})
