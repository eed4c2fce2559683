// Client users on a real node and its embedded nats-server (`--users`): each has its own
// inbox prefix and stream subjects, may not subscribe to another's nor name another's as a
// generate's `stream`, and still gets its own replies and token stream; the CLI connects
// with the right prefix and takes the password from a file or the environment.
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import { connect } from "@nats-io/transport-node"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { inboxPrefixOf, streamAllowed, streamPrefixOf, userToken } from "../actors/access.ts"
import { type LeoamNode, startNode } from "../actors/node.ts"
import { connectClient } from "../cli/connect.ts"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { publicSubjects } from "../protocol/subjects.ts"
import { ask, modelDir } from "./support/server.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const users = {
  users: [
    { user: "ann", password: "ann-secret", role: "client" as const },
    { user: "ben", password: "ben-secret", role: "client" as const },
    { user: "root", password: "root-secret", role: "admin" as const },
  ],
}

describe("stream subjects per user (pure)", () => {
  it("a client's own inbox and stream subjects only; admins and open nodes anything but leoam.* and $", () => {
    const ann = { user: "ann", account: "CLIENTS" }
    expect(inboxPrefixOf("ann")).toBe("_INBOX_ann")
    expect(streamPrefixOf("ann")).toBe("leoam.v1.stream.ann.")
    expect(streamAllowed(ann, "_INBOX_ann.x")).toBe(true)
    expect(streamAllowed(ann, "leoam.v1.stream.ann.t")).toBe(true)
    for (const other of ["_INBOX_ben.x", "_INBOX.x", "_INBOX_ann", "_INBOX_annx.y", "leoam.v1.stream.ben.t", "leoam.v1.stream.annx.t", "demo.tokens"]) {
      expect(streamAllowed(ann, other), other).toBe(false)
    }
    // A dot in a name would let "a" cover "a.b"'s subjects: such names become one hex token.
    expect(userToken("a.b")).toBe("~612e62")
    expect(streamAllowed({ user: "a", account: "CLIENTS" }, `${streamPrefixOf("a.b")}t`)).toBe(false)
    for (const who of [{ user: "root", account: "ADMIN" }, { user: "anonymous" }]) {
      expect(streamAllowed(who, "demo.tokens")).toBe(true)
      expect(streamAllowed(who, "leoam.v1.stream.ben.t")).toBe(true)
      expect(streamAllowed(who, "leoam.int.v1.gpu-executor.cancel")).toBe(false)
    }
  })
})

describe("client users on the embedded nats-server", () => {
  let node: LeoamNode
  let kvDir: string
  const open: NatsConnection[] = []
  const client = async (user: string, inboxPrefix?: string) => {
    const nc = await connectClient(node.url, user, { user, pass: `${user}-secret`, inboxPrefix })
    open.push(nc)
    return nc
  }
  /** Resolves to the error the server sends for a subscription, or "no error" after a flush and a pause. */
  const subscribeError = async (nc: NatsConnection, subject: string): Promise<string> => {
    const err = new Promise<string>((resolve) => nc.subscribe(subject, { callback: (e) => void (e && resolve(e.message)) }))
    await nc.flush()
    return Promise.race([err, new Promise<string>((r) => setTimeout(() => r("no error"), 500))])
  }

  beforeAll(async () => {
    kvDir = mkdtempSync(join(tmpdir(), "leoam-isolation-"))
    node = await startNode({
      actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"],
      model: modelDir,
      maxContext: 256,
      queueCapacity: 8,
      kvDir,
      hostKvBudget: 1 << 20,
      kvPolicy: parsePolicyDocument("full"),
      drainTimeoutMs: 10_000,
      users,
    })
  }, 120_000)
  afterAll(async () => {
    for (const nc of open) await nc.close().catch(() => undefined)
    await node?.stop()
    rmSync(kvDir, { recursive: true, force: true })
  })

  it("a client may not subscribe to another user's inbox or stream subjects, nor to the shared _INBOX", async () => {
    const ann = await client("ann")
    for (const subject of ["_INBOX_ben.>", "_INBOX.>", ">", "leoam.v1.stream.ben.>", "leoam.v1.stream.>", "leoam.int.v1.>"]) {
      expect(await subscribeError(ann, subject), subject).toMatch(/Permissions Violation/)
    }
    expect(await subscribeError(ann, "_INBOX_ann.mine")).toBe("no error")
    expect(await subscribeError(ann, "leoam.v1.stream.ann.mine")).toBe("no error")
  })

  it("nor publish into another user's inbox or stream; a connection without its prefix gets no replies", async () => {
    const [ann, ben] = [await client("ann"), await client("ben")]
    const seen: string[] = []
    ben.subscribe("_INBOX_ben.>", { callback: (_e, m) => void seen.push(m.subject) })
    ben.subscribe("leoam.v1.stream.ben.>", { callback: (_e, m) => void seen.push(m.subject) })
    await ben.flush()
    ann.publish("_INBOX_ben.fake", "forged reply")
    ann.publish("leoam.v1.stream.ben.t", "forged token")
    await ann.flush()
    await new Promise((r) => setTimeout(r, 300))
    expect(seen).toEqual([])
    const plain = await connect({ servers: node.url, user: "ann", pass: "ann-secret" }) // inbox _INBOX.
    open.push(plain)
    await expect(plain.request(publicSubjects.health, "{}", { timeout: 3000 })).rejects.toThrow(/Permissions Violation|timeout/i)
  })

  it("refuses a stream in another user's space (invalid_request) and delivers one's own, unseen by others", async () => {
    const [ann, ben] = [await client("ann"), await client("ben")]
    for (const stream of ["_INBOX_ben.tokens", "leoam.v1.stream.ben.t", "demo.tokens"]) {
      const r = await ask(ann, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2, stream })
      expect(r.json.error?.code, stream).toBe("invalid_request")
      expect(r.json.error.message).toContain("_INBOX_ann.")
    }
    const benSaw: string[] = []
    ben.subscribe("_INBOX_ben.>", { callback: (_e, m) => void benSaw.push(m.subject) })
    ben.subscribe("leoam.v1.stream.ben.>", { callback: (_e, m) => void benSaw.push(m.subject) })
    await ben.flush()
    for (const stream of ["leoam.v1.stream.ann.t1", "_INBOX_ann.tokens"]) {
      const events: Array<{ done: boolean } | { prefill: { done: number; total: number } }> = []
      ann.subscribe(stream, { callback: (_e, m) => void events.push(m.json()) })
      await ann.flush()
      const r = await ask(ann, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2, stream })
      expect(r.json.usage, stream).toEqual({ prompt_tokens: 3, completion_tokens: 2 })
      // Prefill progress first (one event for a 3-token prompt), then the two tokens and done.
      expect(events.filter((e) => "prefill" in e), stream).toEqual([{ prefill: { done: 3, total: 3 } }])
      const tokens = events.filter((e): e is { done: boolean } => !("prefill" in e))
      expect(tokens.length, stream).toBe(3) // two tokens, then done
      expect(tokens.at(-1)!.done).toBe(true)
    }
    await ben.flush()
    expect(benSaw).toEqual([])
    expect((await ask(ben, publicSubjects.health, {})).json.status).toBe("ok") // (its own reply: seen on its own inbox)
    expect(benSaw.length).toBe(1)
  }, 60_000)

  it("a refused stream is answered at admission, while a generate runs, not after it", async () => {
    const [ann, ben] = [await client("ann"), await client("ben")]
    const order: string[] = []
    const running = ask(ann, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 64 }).then((r) => (order.push("run done"), r))
    await new Promise((r) => setTimeout(r, 50))
    const refused = await ask(ben, publicSubjects.generate, { ids: [5, 6, 7], max_tokens: 2, stream: "_INBOX_ann.tokens" })
    order.push("refused answered")
    expect(refused.json.error?.code).toBe("invalid_request")
    expect(refused.json.error.message).toContain("_INBOX_ben.")
    expect((await running).json.usage.completion_tokens).toBe(64)
    expect(order).toEqual(["refused answered", "run done"])
  }, 60_000)

  it("the CLI: request --stream as a client user, the password from a file or LEOAM_NATS_PASS", async () => {
    const dir = mkdtempSync(join(tmpdir(), "leoam-pass-"))
    const passFile = join(dir, "pass")
    writeFileSync(passFile, "ann-secret\n", { mode: 0o600 })
    const leoam = (args: string[], env: NodeJS.ProcessEnv = {}) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(process.execPath, [bin, ...args, "--nats-url", node.url], { timeout: 60_000, env: { ...process.env, ...env } }, (error, stdout, stderr) =>
          resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        ),
      )
    try {
      const body = JSON.stringify({ ids: [5, 6, 7], max_tokens: 2 })
      const streamed = await leoam(["request", publicSubjects.generate, body, "--stream", "--nats-user", "ann", "--nats-pass-file", passFile])
      expect(streamed.code, streamed.stderr).toBe(0)
      const lines = streamed.stdout.trim().split("\n").map((l) => JSON.parse(l))
      expect(lines.length).toBe(5) // prefill progress, two tokens, done, the reply
      expect(lines[0]).toEqual({ prefill: { done: 3, total: 3 } })
      expect(lines[3]).toMatchObject({ done: true })
      expect(lines[4].usage).toEqual({ prompt_tokens: 3, completion_tokens: 2 })
      const fromEnv = await leoam(["request", publicSubjects.health, "--nats-user", "ann"], { LEOAM_NATS_PASS: "ann-secret" })
      expect(fromEnv.code, fromEnv.stderr).toBe(0)
      expect(JSON.parse(fromEnv.stdout).status).toBe("ok")
      const both = await leoam(["request", publicSubjects.health, "--nats-user", "ann", "--nats-pass", "x", "--nats-pass-file", passFile])
      expect(both.code).toBe(2)
      expect(both.stderr).toContain("invalid_argument")
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 120_000)
})
