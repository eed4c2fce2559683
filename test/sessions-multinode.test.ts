// Sessions on two nodes sharing one nats-server (node ids a and b, each its own kv-dir): the
// open reply names the holding node and its own subjects; a question sent to the other node
// (its node-scoped subject, or the shared public one) is routed to the holder and answers the
// fresh generate's ids; session.list answers for both nodes.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { connectNats, type EmbeddedNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { type LeoamNode, startNode } from "../actors/node.ts"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { nodeSessionSubject, publicSubjects, sessionSubjects } from "../protocol/subjects.ts"
import { ask, modelDir } from "./support/server.ts"

describe("sessions on two nodes", () => {
  let nats: EmbeddedNats
  const nodes: LeoamNode[] = []
  const dirs: string[] = []
  let client: NatsConnection

  beforeAll(async () => {
    nats = await startEmbeddedNats()
    for (const id of ["a", "b"]) {
      const kvDir = mkdtempSync(join(tmpdir(), `leoam-sessions-${id}-`))
      dirs.push(kvDir)
      nodes.push(
        await startNode({
          actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"],
          node: id,
          natsUrl: nats.url,
          model: modelDir,
          maxContext: 256,
          queueCapacity: 8,
          kvDir,
          hostKvBudget: 1 << 20,
          kvPolicy: parsePolicyDocument("leoam"),
          drainTimeoutMs: 10_000,
        }),
      )
    }
    client = await connectNats(nats.url, "test-client")
  }, 180_000)
  afterAll(async () => {
    await client?.close().catch(() => undefined)
    for (const n of nodes) await n.stop()
    await nats?.stop()
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
  })

  it("routes a session's questions to its node and lists both nodes", async () => {
    const doc = Array.from({ length: 70 }, (_, i) => 20 + ((i * 53) % 2000))
    const q = [300, 301, 302]
    // A fresh prefill first: a generate beginning with a stored session's document may link its chunks.
    const want = (await ask(client, publicSubjects.generate, { ids: [...doc, ...q], max_tokens: 4 })).json.ids
    const opened = (await ask(client, sessionSubjects.open, { ids: doc })).json
    const holder: string = opened.node
    const other = holder === "a" ? "b" : "a"
    expect(["a", "b"]).toContain(holder)
    expect(opened.session.startsWith(`${holder}.`)).toBe(true)
    expect(opened.subjects.generate).toBe(nodeSessionSubject(holder, "generate"))
    const body = { session: opened.session, ids: q, max_tokens: 4 }
    // The other node's own subject, the holder's own subject, and the shared public one.
    for (const subject of [nodeSessionSubject(other, "generate"), opened.subjects.generate, sessionSubjects.generate]) {
      const got = await ask(client, subject, body)
      expect(got.json.ids, subject).toEqual(want)
    }
    const listed = (await ask(client, sessionSubjects.list, {})).json
    expect(listed.nodes).toEqual(["a", "b"])
    expect(listed.sessions).toMatchObject([{ session: opened.session, node: holder, tokens: doc.length }])
    expect((await ask(client, nodeSessionSubject(other, "delete"), { session: opened.session })).json).toEqual({ session: opened.session, deleted: true })
    expect((await ask(client, sessionSubjects.list, {})).json.sessions).toEqual([])
  })
})
