// The OpenAI-compatible HTTP gateway (actors/http-gateway.ts) on a real node with client
// users on its embedded nats-server (`--users`), called through the official `openai` npm
// client and plain fetch: the same greedy text as leoam.v1.generate, streamed chat chunks
// that add up to the answer, the model list, OpenAI-shaped errors with their statuses, API
// keys as NATS users, and a client that leaves cancelling its run.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type HttpGateway, startHttpGateway } from "../actors/http-gateway.ts"
import { type LeoamNode, startNode } from "../actors/node.ts"
import { connectClient } from "../cli/connect.ts"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, cancelSubject, publicSubjects } from "../protocol/subjects.ts"
import { ask, modelDir } from "./support/server.ts"

const users = {
  users: [
    { user: "ann", password: "ann-secret", role: "client" as const },
    { user: "ben", password: "ben-secret", role: "client" as const },
    { user: "root", password: "root-secret", role: "admin" as const },
  ],
}
const MODEL = "tiny-leo-14m"

describe("the OpenAI-compatible HTTP gateway", () => {
  let node: LeoamNode
  let kvDir: string
  /** Keys required: USER:PASSWORD. */
  let keyed: HttpGateway
  /** No keys: one shared connection as the client user ben. */
  let open: HttpGateway
  const conns: NatsConnection[] = []
  const client = (gateway: HttpGateway, apiKey = "ann:ann-secret") => new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey, maxRetries: 0, timeout: 120_000 })
  const nats = async (user: string) => {
    const nc = await connectClient(node.url, user, { user, pass: `${user}-secret` })
    conns.push(nc)
    return nc
  }
  const post = (gateway: HttpGateway, path: string, body: string, key = "ann:ann-secret") =>
    fetch(`${gateway.url}${path}`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${key}` }, body })

  beforeAll(async () => {
    kvDir = mkdtempSync(join(tmpdir(), "leoam-gateway-"))
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
      metricsPort: 0,
      // The keyed gateway is one more actor of the node (as `leoam serve --http-port`).
      http: { users: new Set(["ann", "ben", "root"]), port: 0, modelDir },
    })
    keyed = node.http!()!
    open = await startHttpGateway({ natsUrl: node.url, auth: { user: "ben", pass: "ben-secret" }, inboxPrefix: "_INBOX_ben", port: 0, modelDir })
  }, 120_000)
  afterAll(async () => {
    for (const nc of conns) await nc.close().catch(() => undefined)
    await open?.stop()
    await node?.stop()
    rmSync(kvDir, { recursive: true, force: true })
  })

  it("lists the model, with the chat template in use (ChatML: the test model has none)", async () => {
    const list = await client(keyed).models.list()
    expect(list.data.map((m) => m.id)).toEqual([MODEL])
    expect(list.data[0]).toMatchObject({ object: "model", owned_by: "leoam", context_length: 256, chat_template: "default:chatml" })
    expect((await client(keyed).models.retrieve(MODEL)).id).toBe(MODEL)
  })

  it("completes a text prompt and a token-id prompt with leoam.v1.generate's greedy text", async () => {
    const ann = await nats("ann")
    const direct = await ask(ann, publicSubjects.generate, { prompt: "Once upon a time", max_tokens: 8, temperature: 0 })
    expect(direct.status).toBe("")
    const r = await client(keyed).completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 8, temperature: 0 })
    expect(r.object).toBe("text_completion")
    expect(r.choices[0].text).toBe(direct.json.text)
    expect(r.choices[0].finish_reason).toBe("length")
    expect(r.usage).toEqual({ prompt_tokens: 5, completion_tokens: 8, total_tokens: 13 })
    // As token ids, through the gateway without keys (a batch of one id array is one prompt).
    const ids = [3622, 347, 1407, 261, 577] // "Once upon a time"
    const byIds = await client(open, "unused").completions.create({ model: MODEL, prompt: [ids], max_tokens: 8, temperature: 0 })
    expect(byIds.choices[0].text).toBe(direct.json.text)
  })

  it("streams a chat completion whose chunks add up to the answer, with usage last", async () => {
    const messages = [
      { role: "system" as const, content: "You are terse." },
      { role: "user" as const, content: "Tell me a story." },
    ]
    const whole = await client(keyed).chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0 })
    expect(whole.choices[0].message.role).toBe("assistant")
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = []
    const stream = await client(keyed).chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } })
    for await (const chunk of stream) chunks.push(chunk)
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")
    expect(text).toBe(whole.choices[0].message.content)
    expect(chunks[0].choices[0].delta.role).toBe("assistant")
    expect(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason)).toEqual([whole.choices[0].finish_reason])
    expect(chunks.at(-1)!.choices).toEqual([])
    expect(chunks.at(-1)!.usage).toEqual(whole.usage)
    expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.id === chunks[0].id)).toBe(true)
  })

  it("ends a raw stream with data: [DONE]", async () => {
    const res = await post(keyed, "/v1/completions", JSON.stringify({ model: MODEL, prompt: "Once", max_tokens: 3, temperature: 0, stream: true }))
    expect(res.status).toBe(200)
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/)
    const events = (await res.text()).split("\n\n").filter(Boolean)
    expect(events.at(-1)).toBe("data: [DONE]")
    expect(events.every((e) => e.startsWith("data: "))).toBe(true)
  })

  it("answers bad requests with OpenAI-shaped errors and their statuses", async () => {
    const cases: Array<[string, string, number, string, string | null]> = [
      ["/v1/completions", "{not json", 400, "invalid_json", null],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: "a", max_tokens: "8" }), 400, "invalid_request", "max_tokens"],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: ["a", "b"] }), 400, "invalid_request", "prompt"],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: "a", n: 2 }), 400, "invalid_request", "n"],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: "a", logprobs: 2 }), 400, "invalid_request", "logprobs"],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: "a", junk: 1 }), 400, "invalid_request", "junk"],
      ["/v1/completions", JSON.stringify({ model: "gpt-4", prompt: "a" }), 404, "unknown_model", null],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: Array(300).fill(5) }), 400, "context_overflow", null],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: [99999999] }), 400, "invalid_ids", null],
      ["/v1/chat/completions", JSON.stringify({ model: MODEL, messages: [{ role: "wizard", content: "hi" }] }), 400, "invalid_request", "messages"],
      ["/v1/chat/completions", `{"model":"${MODEL}","messages":${"[".repeat(40)}${"]".repeat(40)}}`, 400, "invalid_request", null],
      ["/v1/completions", JSON.stringify({ model: MODEL, prompt: "x".repeat(5 * 1024 * 1024) }), 413, "payload_too_large", null],
      ["/v1/nothing", "{}", 404, "not_found", null],
    ]
    for (const [path, body, status, code, param] of cases) {
      const res = await post(keyed, path, body)
      const json = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string } }
      expect([res.status, json.error.code], `${path} ${body.slice(0, 80)}`).toEqual([status, code])
      expect(json.error.param).toBe(param)
      expect(typeof json.error.message).toBe("string")
      expect(json.error.type).toBe(status === 404 ? "not_found_error" : "invalid_request_error")
    }
    // Through the openai client: its APIError carries the status and the error object.
    const err = await client(keyed).completions.create({ model: "nope", prompt: "a" }).catch((e) => e)
    expect(err).toBeInstanceOf(OpenAI.NotFoundError)
    expect(err.error).toMatchObject({ code: "unknown_model", type: "not_found_error" })
  })

  it("runs a request as the key's NATS user; a bad or missing key is 401", async () => {
    for (const key of ["ann:wrong", "nobody:x", "ann-secret", ""]) {
      const err = await client(keyed, key || "-").models.list().catch((e) => e)
      expect(err, key).toBeInstanceOf(OpenAI.AuthenticationError)
      expect(err.error.code).toBe("invalid_api_key")
    }
    const res = await fetch(`${keyed.url}/v1/models`)
    expect(res.status).toBe(401)
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe("authentication_error")
    // ben's key works too, on his own connection.
    expect((await client(keyed, "ben:ben-secret").models.list()).data).toHaveLength(1)
  })

  it("cancels the run of a streaming client that leaves", async () => {
    const root = await nats("root")
    const stats = async () => (await ask(root, adminSubjects.stats, {})).json.requests as { completed: number; generated_tokens: number }
    const before = await stats()
    const res = await post(keyed, "/v1/completions", JSON.stringify({ model: MODEL, prompt: "Once upon a time", max_tokens: 200, temperature: 0, stream: true }))
    const reader = res.body!.getReader()
    await reader.read() // the first chunk: the run has started
    await reader.cancel()
    // The reply's tokens are counted when the run ends: at the cancel, well before 200.
    let after = before
    for (let i = 0; i < 600 && after.generated_tokens === before.generated_tokens; i++) {
      await new Promise((r) => setTimeout(r, 100))
      after = await stats()
    }
    expect(after.generated_tokens).toBeGreaterThan(before.generated_tokens)
    // Only the stream's owner may cancel: ben cannot stop ann's runs.
    const ben = await nats("ben")
    const refused = await ask(ben, cancelSubject, { stream: "leoam.v1.stream.ann.abc" })
    expect(refused.json.error.code).toBe("invalid_request")
    expect((await ask(ben, cancelSubject, { stream: "leoam.v1.stream.ben.abc" })).json).toEqual({ cancelled: false })
    expect(after.generated_tokens - before.generated_tokens).toBeLessThan(200)
  })

  it("is an actor of its node: in leoam.v1.health and in the metrics with its request counters", async () => {
    const ann = await nats("ann")
    const health = (await ask(ann, publicSubjects.health, {})).json
    expect(health.actors).toContainEqual({ name: "http-gateway", status: "running", restarts: 0 })
    const before = (await (await fetch(node.metricsUrl!)).text()).split("\n")
    const requests = (lines: string[]) => Number(lines.find((l) => l.startsWith('leoam_http_requests_total{kind="requests"'))?.split(" ").at(-1))
    expect(before).toContainEqual(expect.stringMatching(/^leoam_actor_up\{actor="http-gateway",pid="\d+"\} 1$/))
    expect(before).toContainEqual(expect.stringMatching(/^leoam_actor_up\{actor="gpu-executor",pid="\d+"\} 1$/))
    await client(keyed).models.list()
    const after = (await (await fetch(node.metricsUrl!)).text()).split("\n")
    expect(requests(after)).toBe(requests(before) + 1)
  })
})
