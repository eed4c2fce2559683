// Persistent sessions on a real node (embedded nats-server with client users, leoam policy,
// a temporary kv-dir, the test model): a session asked twice answers the same greedy ids as
// a fresh generate of document + question, also after append and after a restart of the
// node on the same kv-dir; another user cannot see or use it, nor share its chunks; bad input gets stable codes;
// delete frees its disk entries; a GPU-only policy refuses sessions; the disk budget counts a
// chunk sessions share once.
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type LeoamNode, startNode } from "../actors/node.ts"
import { connectClient } from "../cli/connect.ts"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects, sessionSubjects } from "../protocol/subjects.ts"
import { ask, modelDir } from "./support/server.ts"

const users = {
  users: [
    { user: "ann", password: "ann-secret", role: "client" as const },
    { user: "ben", password: "ben-secret", role: "client" as const },
    { user: "root", password: "root-secret", role: "admin" as const },
  ],
}

/** A document of `n` ids in the vocabulary (deterministic), and questions. */
const doc = Array.from({ length: 150 }, (_, i) => 10 + ((i * 37 + 11) % 3000))
const q1 = [101, 202, 303, 404, 505, 606, 707]
const q2 = [111, 222, 333]
const MAX = 6
/** 4096 KV bytes per token: two sealed 128-token documents fit, three do not. */
const BUDGET = 1400 * 1024

describe("sessions", () => {
  let node: LeoamNode | undefined
  let kvDir: string
  const conns: NatsConnection[] = []
  const client = async (user: string) => {
    const nc = await connectClient(node!.url, user, { user, pass: `${user}-secret` })
    conns.push(nc)
    return nc
  }
  const start = async (limits: { kvDiskBudget?: number; sessionQuota?: number } = {}) => {
    node = await startNode({
      ...limits,
      actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"],
      model: modelDir,
      maxContext: 512,
      queueCapacity: 8,
      // As `leoam serve` runs by default: generates batched (each in a lane of its own), session runs alone.
      maxBatch: 2,
      kvDir,
      hostKvBudget: 4 << 20,
      kvPolicy: parsePolicyDocument("leoam"),
      drainTimeoutMs: 10_000,
      users,
    })
  }
  const stop = async () => {
    for (const nc of conns.splice(0)) await nc.close().catch(() => undefined)
    await node?.stop()
    node = undefined
  }
  let ann: NatsConnection
  let ben: NatsConnection
  let session: string
  /** Fresh generates (nothing stored shared with them) of document + q1, and of the appended session + q1. */
  let wantQ1: { ids: number[]; usage: unknown }
  let wantAppended: { ids: number[] }
  const fresh = async (ids: number[]) => (await ask(ann, publicSubjects.generate, { ids, max_tokens: MAX })).json

  beforeAll(async () => {
    kvDir = mkdtempSync(join(tmpdir(), "leoam-sessions-"))
    await start()
    ann = await client("ann")
    ben = await client("ben")
  }, 120_000)
  afterAll(async () => {
    await stop()
    rmSync(kvDir, { recursive: true, force: true })
  })

  it("open, then two questions: the same greedy ids as a fresh prefill of document + question, the session unchanged", async () => {
    // Fresh prefills first: once the session is stored, a generate beginning with its document links its chunks.
    const want = await fresh([...doc, ...q1])
    wantQ1 = want
    wantAppended = await fresh([...doc, ...q1, ...want.ids, ...q2, ...q1])
    const opened = await ask(ann, sessionSubjects.open, { ids: doc })
    expect(opened.status).toBe("")
    session = opened.json.session
    expect(opened.json).toMatchObject({ tokens: doc.length, node: "", subjects: { generate: sessionSubjects.generate } })
    const first = (await ask(ann, sessionSubjects.generate, { session, ids: q1, max_tokens: MAX })).json
    const second = (await ask(ann, sessionSubjects.generate, { session, ids: q1, max_tokens: MAX })).json
    expect(first.ids).toEqual(want.ids)
    expect(second.ids).toEqual(want.ids)
    expect(second.usage).toEqual(want.usage)
    expect(second.session).toBeUndefined()
    // The questions go on in the open's lane, parked on the session: every document chunk is still in its GPU slots, none uploaded.
    for (const r of [first, second]) expect([r.kv.gpu.misses, r.kv.host.hits, r.kv.disk.hits]).toEqual([0, 0, 0])
    console.log(`TTFT: fresh generate of ${doc.length + q1.length} tokens ${want.timings.prefill_ms.toFixed(1)} ms; session question ${first.timings.prefill_ms.toFixed(1)} / ${second.timings.prefill_ms.toFixed(1)} ms`)
  })

  it("a session question runs in the batch beside a generate: it answers while the generate still runs, with the same ids", async () => {
    const long = { ids: q2, max_tokens: 60 }
    const wantLong = (await ask(ann, publicSubjects.generate, long)).json
    expect(wantLong.ids.length).toBeGreaterThan(30)
    const root = await client("root")
    const want = wantQ1
    const order: string[] = []
    const running = ask(ann, publicSubjects.generate, long).then((r) => (order.push("generate"), r.json))
    // Once the generate decodes (its first tokens out), the session question joins the batch.
    while (((await ask(root, adminSubjects.stats, {})).json.batch?.decoding ?? 0) === 0) await new Promise((r) => setTimeout(r, 20))
    const asked = ask(ann, sessionSubjects.generate, { session, ids: q1, max_tokens: MAX }).then((r) => (order.push("session"), r.json))
    const [gen, question] = await Promise.all([running, asked])
    expect(question.ids).toEqual(want.ids)
    expect(gen.ids).toEqual(wantLong.ids)
    expect(order).toEqual(["session", "generate"])
  })

  it("append: true keeps question and answer; append adds to the document", async () => {
    const kept = (await ask(ann, sessionSubjects.generate, { session, ids: q1, max_tokens: MAX, append: true })).json
    expect(kept.ids).toEqual(wantQ1.ids)
    const tokens = doc.length + q1.length + kept.ids.length
    expect(kept.session).toEqual({ session, tokens })
    const appended = (await ask(ann, sessionSubjects.append, { session, ids: q2 })).json
    expect(appended.tokens).toBe(tokens + q2.length)
    // wantAppended: the fresh prefill of document, question, answer, q2 and the question again.
    const got = (await ask(ann, sessionSubjects.generate, { session, ids: q1, max_tokens: MAX })).json
    expect(got.ids).toEqual(wantAppended.ids)
  })

  it("another user can neither see nor use it", async () => {
    for (const [subject, body] of [
      [sessionSubjects.generate, { session, ids: q1, max_tokens: 2 }],
      [sessionSubjects.append, { session, ids: q2 }],
      [sessionSubjects.close, { session }],
      [sessionSubjects.delete, { session }],
    ] as const) {
      const r = await ask(ben, subject, body)
      expect(r.json.error?.code, subject).toBe("session_not_found")
      expect(r.status).toBe("404")
    }
    expect((await ask(ben, sessionSubjects.list, {})).json.sessions).toEqual([])
    const mine = (await ask(ann, sessionSubjects.list, {})).json
    expect(mine.sessions.map((s: { session: string }) => s.session)).toEqual([session])
    expect(mine.sessions[0].bytes.disk).toBeGreaterThan(0)
    // Prefix sharing stays within a user: ann's generate of her document links the session's
    // 4 whole chunks, ben's prefills them itself (a faster first token would tell him her document).
    const own = (await ask(ann, publicSubjects.generate, { ids: [...doc, ...q1], max_tokens: MAX })).json
    const other = (await ask(ben, publicSubjects.generate, { ids: [...doc, ...q1], max_tokens: MAX })).json
    expect(own.usage.cached_tokens).toBe(128)
    expect(other.usage.cached_tokens).toBeUndefined()
    expect(other.ids).toEqual(wantQ1.ids)
    expect(own.ids).toEqual(wantQ1.ids)
  })

  it("bad input gets stable codes", async () => {
    const cases: Array<[string, unknown, string]> = [
      [sessionSubjects.generate, { session: "AAAAAAAAAAAAAAAAAAAAAA", ids: q1 }, "session_not_found"],
      [sessionSubjects.generate, { session: "no such id", ids: q1 }, "invalid_request"],
      [sessionSubjects.generate, { session, ids: "x" }, "invalid_request"],
      [sessionSubjects.generate, { session, ids: q1, prompt: "both" }, "invalid_request"],
      [sessionSubjects.generate, { session, ids: q1, max_tokens: 400 }, "context_overflow"],
      [sessionSubjects.open, { ids: Array.from({ length: 600 }, () => 5) }, "context_overflow"],
      [sessionSubjects.open, { ids: [5], extra: 1 }, "invalid_request"],
      [sessionSubjects.open, { ids: [99999] }, "invalid_ids"],
      [sessionSubjects.append, { session, ids: Array.from({ length: 400 }, () => 5) }, "context_overflow"],
      [sessionSubjects.list, { x: 1 }, "invalid_request"],
      [sessionSubjects.close, {}, "invalid_request"],
    ]
    for (const [subject, body, code] of cases) expect((await ask(ann, subject, body)).json.error?.code, `${subject} ${JSON.stringify(body).slice(0, 60)}`).toBe(code)
    // A text document is tokenized like a generate prompt.
    const text = (await ask(ann, sessionSubjects.open, { prompt: "Once upon a time" })).json
    expect(text.tokens).toBe((await ask(ann, publicSubjects.tokenize, { text: "Once upon a time" })).json.count)
    expect((await ask(ann, sessionSubjects.delete, { session: text.session })).json.deleted).toBe(true)
  })

  it("survives a restart of the node on the same kv-dir", async () => {
    const info = (await ask(ann, sessionSubjects.list, {})).json.sessions[0]
    const before = (await ask(ann, sessionSubjects.generate, { session, ids: q2, max_tokens: MAX })).json
    await stop()
    // Restarted with a disk budget and a quota (the last test).
    await start({ kvDiskBudget: BUDGET, sessionQuota: 3 })
    ann = await client("ann")
    ben = await client("ben")
    const after = (await ask(ann, sessionSubjects.generate, { session, ids: q2, max_tokens: MAX })).json
    expect(after.ids).toEqual(before.ids)
    const listed = (await ask(ann, sessionSubjects.list, {})).json.sessions[0]
    expect(listed).toMatchObject({ session, tokens: info.tokens, created: info.created, open: true })
  })

  it("close keeps it on disk; delete frees its disk entries", async () => {
    const root = await client("root")
    const parked = async () => (await ask(root, adminSubjects.stats, {})).json.batch.parked_session_lanes
    // The last test's question left its lane on the session, on the GPU; close lets it go.
    expect(await parked()).toBe(1)
    const closed = await ask(ann, sessionSubjects.close, { session })
    expect(closed.json).toEqual({ session, closed: true })
    expect(await parked()).toBe(0)
    const listed = (await ask(ann, sessionSubjects.list, {})).json.sessions[0]
    expect(listed).toMatchObject({ open: false, bytes: { host: 0 } })
    expect(listed.bytes.disk).toBeGreaterThan(0)
    expect(readdirSync(join(kvDir, "chunks"))).toContain(`${session}.seg`)
    expect((await ask(ann, sessionSubjects.delete, { session })).json).toEqual({ session, deleted: true })
    expect(existsSync(join(kvDir, "chunks", `${session}.seg`))).toBe(false)
    expect((await ask(ann, sessionSubjects.list, {})).json.sessions).toEqual([])
    expect((await ask(ann, sessionSubjects.generate, { session, ids: q1 })).json.error?.code).toBe("session_not_found")
  })

  it("a GPU-only policy refuses sessions (session_needs_tiered_policy)", async () => {
    const root = await client("root")
    const set = async (policy: string) => expect((await ask(root, adminSubjects.policySet, { policy })).status).toBe("")
    await set("full")
    expect((await ask(ann, sessionSubjects.open, { ids: doc })).json.error?.code).toBe("session_needs_tiered_policy")
    await set("leoam")
    expect((await ask(ann, sessionSubjects.open, { ids: doc })).status).toBe("")
  })

  it("--kv-disk-budget evicts the least recently used sessions, never the one in use; --session-quota per user", async () => {
    const mine = async () => (await ask(ann, sessionSubjects.list, {})).json.sessions.map((x: { session: string }) => x.session)
    const [p] = await mine() // the previous test's
    expect((await ask(ann, sessionSubjects.open, { ids: Array.from({ length: 400 }, () => 7) })).json.error?.code).toBe("budget_exceeded")
    // Documents unlike p's: one that began like it would share p's chunks, so p's eviction would free none of them.
    const docA = doc.map((x) => x + 2)
    const a = (await ask(ann, sessionSubjects.open, { ids: docA })).json.session
    expect(await mine()).toEqual([p, a])
    const b = (await ask(ann, sessionSubjects.open, { ids: doc.map((x) => x + 1) })).json.session
    expect(await mine()).toEqual([a, b]) // p was the least recently used
    const small = (await ask(ann, sessionSubjects.open, { ids: [5, 6, 7] })).json.session
    expect((await ask(ann, sessionSubjects.open, { ids: [5, 6, 7] })).json.error?.code).toBe("session_quota")
    expect((await ask(ben, sessionSubjects.open, { ids: [5, 6, 7] })).status).toBe("")
    expect(await mine()).toEqual([a, b, small])
    // A document that begins like one of the same user's stored ones lies on disk once and
    // counts once: nothing evicted (another user's would share nothing).
    expect((await ask(ann, sessionSubjects.delete, { session: small })).status).toBe("")
    const c = (await ask(ann, sessionSubjects.open, { ids: docA })).json
    expect(c.shared_tokens).toBe(128)
    expect(await mine()).toEqual([a, b, c.session])
    expect((await ask(ann, sessionSubjects.delete, { session: c.session })).status).toBe("")
  })

  it("a document that begins like a stored one shares its whole chunks: written once, freed with the last user", async () => {
    const seg = (id: string) => join(kvDir, "chunks", `${id}.seg`)
    const source = Array.from({ length: 150 }, (_, i) => 3000 + i)
    const extra = Array.from({ length: 40 }, (_, i) => 900 + i)
    const want = await fresh([...source, ...extra, ...q1]) // before anything stored begins like it
    const d1 = (await ask(ben, sessionSubjects.open, { ids: source })).json
    expect(d1.shared_tokens).toBeUndefined()
    expect(statSync(seg(d1.session)).size).toBe(4 * 8 * 16384) // 4 sealed chunks of 8 layers, 16 KiB each
    const x = (await ask(ben, sessionSubjects.open, { ids: [...source, ...extra] })).json
    expect(x).toMatchObject({ tokens: source.length + extra.length, shared_tokens: 128 })
    // Its own file holds only its fifth chunk; the first four stay in d1's, written once.
    expect(statSync(seg(x.session)).size).toBe(8 * 16384)
    expect((await ask(ben, sessionSubjects.delete, { session: d1.session })).status).toBe("")
    expect(existsSync(seg(d1.session))).toBe(true) // x still uses its bytes
    expect((await ask(ben, sessionSubjects.generate, { session: x.session, ids: q1, max_tokens: MAX })).json.ids).toEqual(want.ids)
    expect((await ask(ben, sessionSubjects.delete, { session: x.session })).status).toBe("")
    expect(existsSync(seg(d1.session))).toBe(false)
    expect(existsSync(seg(x.session))).toBe(false)
  })
})
