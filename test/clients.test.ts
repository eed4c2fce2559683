// Other languages' clients against a real service: the C client of test/clients/generate.c
// (the NATS C client, Debian's libnats-dev) is compiled with gcc and run against a
// cluster; it must get the golden ids and see an error reply's Nats-Service-Error-Code.
// scripts/test.sh installs gcc and libnats-dev, so this only skips where someone runs
// vitest by hand without them.
import { execFile, spawnSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { describe, expect, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { ClusterTest } from "./support/cluster-layer.ts"

const run = promisify(execFile)
const source = fileURLToPath(new URL("./clients/generate.c", import.meta.url))

const hasGcc = spawnSync("gcc", ["--version"], { stdio: "ignore" }).status === 0
// Ask the preprocessor rather than a fixed path, so any include directory gcc searches counts.
const hasNatsHeader =
  hasGcc && spawnSync("gcc", ["-E", "-x", "c", "-o", "/dev/null", "-"], { input: "#include <nats/nats.h>\n", stdio: ["pipe", "ignore", "ignore"] }).status === 0
const missing = !hasGcc ? "gcc is not installed" : !hasNatsHeader ? "nats/nats.h is missing (apt-get install libnats-dev)" : ""
if (missing) console.warn(`test/clients.test.ts: skipping the C client test: ${missing}`)

/** Runs the client; resolves with its exit code and output whether it fails or not. */
const generate = async (binary: string, url: string, body: string) => {
  try {
    const { stdout, stderr } = await run(binary, [url, body], { timeout: 150_000 })
    return { code: 0, stdout, stderr }
  } catch (e) {
    const err = e as { code?: unknown; signal?: unknown; stdout?: string; stderr?: string }
    if (typeof err.code !== "number") throw e // spawn failure or killed by the timeout
    return { code: err.code, stdout: err.stdout ?? "", stderr: err.stderr ?? "" }
  }
}

/** The C client, compiled into a temporary directory for the layer's scope. */
class CClient extends Context.Tag("leoam/test/CClient")<CClient, { readonly binary: string }>() {
  static readonly layer = Layer.scoped(
    CClient,
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "leoam-clients-"))),
        (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true })),
      )
      const binary = join(dir, "generate")
      yield* Effect.promise(() => run("gcc", ["-O1", "-o", binary, source, "-lnats"], { timeout: 60_000 }))
      return { binary }
    }),
  )
}

describe.skipIf(missing !== "")(`C client (cnats)${missing ? ` — skipped: ${missing}` : ""}`, () => {
  layer(Layer.merge(CClient.layer, ClusterTest.layer({ maxContext: 1024 })), { excludeTestServices: true, timeout: "120 seconds" })((it) => {
    it.effect("gets the golden greedy ids from leoam.v1.generate", () =>
      Effect.gen(function* () {
        const { binary } = yield* CClient
        const { cluster } = yield* ClusterTest
        const r = yield* Effect.promise(() => generate(binary, cluster.nats.url, JSON.stringify({ prompt: "Once upon a time", max_tokens: 8 })))
        expect(r.stderr).toBe("")
        expect(r.code).toBe(0)
        const reply = JSON.parse(r.stdout)
        expect(reply.ids).toEqual([1936, 223, 20, 22, 16, 2357, 1878, 1082])
        expect(reply.finish_reason).toBe("length")
      }),
    )

    it.effect("exits 3 with the Nats-Service-Error-Code of an error reply", () =>
      Effect.gen(function* () {
        const { binary } = yield* CClient
        const { cluster } = yield* ClusterTest
        const r = yield* Effect.promise(() => generate(binary, cluster.nats.url, '{"prompt": 5}'))
        expect(r.code).toBe(3)
        expect(r.stderr.trim()).toBe("error 400")
        expect(JSON.parse(r.stdout).error.code).toBe("invalid_request")
      }),
    )
  })
})
