// A node holding a session killed (kill -9) while questions to that session are in flight:
// two `leoam serve` processes (--node a, b) on one nats-server. A question sent to b's
// subject (b forwards it to a) and one sent to a's own subject both get `actor_unavailable`
// from b within the lease silence, never silence; b goes on answering.
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { connectNats, type EmbeddedNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { nodeSessionSubject, sessionSubjects } from "../protocol/subjects.ts"
import { ask } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname

/** A `leoam serve` process, once it prints its ready line. */
const serve = (args: string[]) =>
  new Promise<ChildProcess>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, "serve", ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    const timer = setTimeout(() => reject(new Error(`leoam serve not ready in 120 s: ${out}`)), 120_000)
    child.stdout!.on("data", (d) => {
      out += String(d)
      if (/ready on \S+ \(pid \d+\)/.test(out)) (clearTimeout(timer), resolve(child))
    })
    child.stderr!.on("data", (d) => (out += String(d)))
    child.once("exit", (code) => (clearTimeout(timer), reject(new Error(`leoam serve exited with ${code}: ${out}`))))
  })

describe("a session's node killed mid-question", () => {
  const children: ChildProcess[] = []
  const dirs: string[] = []
  let nats: EmbeddedNats | undefined
  afterAll(async () => {
    for (const c of children) c.kill("SIGKILL")
    await nats?.stop()
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
  })

  it("answers the questions it held with actor_unavailable from the other node", async () => {
    nats = await startEmbeddedNats()
    const common = ["--nats-url", nats.url, "--max-context", "512", "--device", "cpu", "--kv-policy", "leoam"]
    const start = (id: string) => {
      const dir = mkdtempSync(join(tmpdir(), `leoam-failover-${id}-`))
      dirs.push(dir)
      return serve([...common, "--node", id, "--kv-dir", dir])
    }
    const [a] = await Promise.all([start("a"), start("b")]).then((cs) => (children.push(...cs), cs))
    const client = await connectNats(nats.url, "test")
    try {
      const doc = Array.from({ length: 40 }, (_, i) => 30 + i)
      const opened = (await ask(client, nodeSessionSubject("a", "open"), { ids: doc })).json
      expect(opened.node).toBe("a")
      const body = { session: opened.session, ids: [7, 8, 9], max_tokens: 400 }
      const sent = performance.now()
      const viaB = ask(client, nodeSessionSubject("b", "generate"), body, 60_000)
      const viaA = ask(client, nodeSessionSubject("a", "generate"), body, 60_000)
      await new Promise((r) => setTimeout(r, 1500))
      a.kill("SIGKILL")
      const killed = performance.now()
      for (const r of await Promise.all([viaB, viaA])) {
        expect(r.json.error?.code, JSON.stringify(r.json)).toBe("actor_unavailable")
      }
      const answeredMs = performance.now() - killed
      console.log(`sent ${(killed - sent).toFixed(0)} ms before the kill; both answered actor_unavailable ${answeredMs.toFixed(0)} ms after it`)
      expect(answeredMs).toBeLessThan(15_000)
      expect((await ask(client, sessionSubjects.list, {})).json.nodes).toEqual(["b"])
    } finally {
      await client.close()
    }
  })
})
