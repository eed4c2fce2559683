// The HTTP gateway's pure parts (OpenAI requests to leoam's, chat templates, error statuses)
// and a gateway with no node behind it (503, not a hang). No GPU: a nats-server at most.
import { execFile, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startHttpGateway, type HttpGateway } from "../actors/http-gateway.ts"
import { loadChatTemplate } from "../actors/http/chat-template.ts"
import { FieldError, fromLeoam } from "../actors/http/errors.ts"
import { completionToGenerate, decodeChat, decodeCompletion } from "../actors/http/requests.ts"
import { usageOf } from "../actors/http/responses.ts"
import type { EmbeddedNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { leoamError } from "../protocol/errors.ts"
import { modelDir } from "./support/server.ts"

const refusal = (f: () => unknown): FieldError => {
  try {
    f()
  } catch (e) {
    if (e instanceof FieldError) return e
    throw e
  }
  throw new Error("not refused")
}

describe("completion requests", () => {
  it("maps each prompt form and OpenAI's defaults to a generate", () => {
    expect(completionToGenerate(decodeCompletion({ model: "m", prompt: "hi" }))).toEqual({ prompt: "hi", model: "m", max_tokens: 16, temperature: 1, top_p: 1 })
    expect(completionToGenerate(decodeCompletion({ model: "m", prompt: ["hi"], max_tokens: 3, temperature: 0, seed: 7, stop: "\n" }))).toEqual({
      prompt: "hi",
      model: "m",
      max_tokens: 3,
      temperature: 0,
      top_p: 1,
      seed: 7,
      stop: ["\n"],
    })
    expect(completionToGenerate(decodeCompletion({ model: "m", prompt: [1, 2, 3] })).ids).toEqual([1, 2, 3])
    expect(completionToGenerate(decodeCompletion({ model: "m", prompt: [[4, 5]], n: 1, stream: false, logprobs: null })).ids).toEqual([4, 5])
  })

  it("refuses batches, n > 1, logprobs, penalties, unknown fields and wrong types, naming the field", () => {
    expect(refusal(() => completionToGenerate(decodeCompletion({ model: "m", prompt: [[1], [2]] }))).param).toBe("prompt")
    expect(refusal(() => decodeCompletion({ model: "m", prompt: "a", n: 3 })).param).toBe("n")
    expect(refusal(() => decodeCompletion({ model: "m", prompt: "a", logprobs: 1 })).param).toBe("logprobs")
    expect(refusal(() => decodeCompletion({ model: "m", prompt: "a", presence_penalty: 0.5 })).param).toBe("presence_penalty")
    expect(refusal(() => decodeCompletion({ model: "m", prompt: "a", tools: [] })).param).toBe("tools")
    expect(refusal(() => decodeCompletion({ model: "m", prompt: "a", frob: 1 })).param).toBe("frob")
    expect(refusal(() => decodeCompletion({ model: "m", prompt: "a", temperature: 3 })).param).toBe("temperature")
    expect(refusal(() => decodeCompletion({ prompt: "a" })).param).toBe("model")
    expect(refusal(() => decodeCompletion([1])).param).toBe(null)
    expect(refusal(() => decodeChat({ model: "m", messages: [] })).param).toBe("messages")
    expect(refusal(() => decodeChat({ model: "m", messages: [{ role: "user", content: [{ type: "image_url", image_url: "x" }] }] })).param).toBe("messages")
  })
})

describe("chat templates", () => {
  const messages = decodeChat({ model: "m", messages: [{ role: "system", content: "Be brief." }, { role: "user", content: [{ type: "text", text: "Hi" }] }] }).messages
  let dir: string
  beforeAll(() => void (dir = mkdtempSync(join(tmpdir(), "leoam-template-"))))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it("falls back to ChatML for the bundled model, with <|im_end|> as a stop string", () => {
    const t = loadChatTemplate(modelDir)
    expect(t.source).toBe("default:chatml")
    expect(t.stops).toEqual(["<|im_end|>"])
    expect(t.render(messages)).toBe("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  })

  it("uses the model's tokenizer_config.json chat_template with its special tokens, and --chat-template over it", () => {
    writeFileSync(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({
        bos_token: { content: "<s>" },
        eos_token: "</s>",
        chat_template: "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}",
      }),
    )
    const t = loadChatTemplate(dir)
    expect(t.source).toBe("model:tokenizer_config.json")
    expect(t.render(messages)).toBe("<s>[system] Be brief.</s>[user] Hi</s>[assistant] ")
    writeFileSync(join(dir, "mine.jinja"), "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages') }}{% endif %}{{ m.content }}{% endfor %}")
    const file = loadChatTemplate(dir, join(dir, "mine.jinja"))
    expect(file.source).toBe(`file:${join(dir, "mine.jinja")}`)
    const e = refusal(() => file.render(messages))
    expect([e.param, e.message]).toEqual(["messages", expect.stringContaining("no system messages")])
    expect(() => loadChatTemplate(dir, join(dir, "missing.jinja"))).toThrow(/no such file/)
  })
})

describe("usage", () => {
  it("counts a shared prefix's tokens as OpenAI's cached prompt tokens, only when there are some", () => {
    const reply = (usage: { prompt_tokens: number; completion_tokens: number; cached_tokens?: number }) => ({ model: "m", ids: [], text: "", finish_reason: "stop" as const, usage, timings: { queue_ms: 0, prefill_ms: 0, decode_ms_per_token: 0, total_ms: 0 } })
    expect(usageOf(reply({ prompt_tokens: 163, completion_tokens: 4, cached_tokens: 160 }))).toEqual({ prompt_tokens: 163, completion_tokens: 4, total_tokens: 167, prompt_tokens_details: { cached_tokens: 160 } })
    expect(usageOf(reply({ prompt_tokens: 163, completion_tokens: 4 }))).toEqual({ prompt_tokens: 163, completion_tokens: 4, total_tokens: 167 })
  })
})

describe("errors", () => {
  it("maps leoam codes to OpenAI's statuses and types", () => {
    const cases: Array<[Parameters<typeof leoamError>[0], number, string]> = [
      ["invalid_json", 400, "invalid_request_error"],
      ["context_overflow", 400, "invalid_request_error"],
      ["unknown_model", 404, "not_found_error"],
      ["permission_denied", 403, "permission_error"],
      ["payload_too_large", 413, "invalid_request_error"],
      ["busy", 429, "rate_limit_error"],
      ["shutting_down", 503, "server_error"],
      ["actor_unavailable", 503, "server_error"],
      ["timeout", 503, "server_error"],
      ["numerical_failure", 500, "server_error"],
      ["internal", 500, "server_error"],
    ]
    for (const [code, status, type] of cases) {
      const e = fromLeoam(leoamError(code, "m"))
      expect([e.status, e.body.error.type, e.body.error.code, e.body.error.message], code).toEqual([status, type, code, "m"])
    }
  })
})

describe("a gateway with no node behind it", () => {
  let nats: EmbeddedNats
  let gateway: HttpGateway
  beforeAll(async () => {
    nats = await startEmbeddedNats()
    gateway = await startHttpGateway({ natsUrl: nats.url, port: 0 })
  })
  afterAll(async () => {
    await gateway?.stop()
    await nats?.stop()
  })

  it("answers 503 at once (no responders), and 400 for a bad request before asking anyone", async () => {
    const t0 = performance.now()
    const res = await fetch(`${gateway.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "hi" }) })
    expect(res.status).toBe(503)
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("actor_unavailable")
    expect(performance.now() - t0).toBeLessThan(5000)
    const bad = await fetch(`${gateway.url}/v1/chat/completions`, { method: "POST", body: "{}" })
    expect(bad.status).toBe(400)
    expect((await fetch(`${gateway.url}/v1/models`)).status).toBe(503)
  })

  it("runs alone as `leoam actor http-gateway`: a ready line, 503 without a node, exit 0 on SIGTERM; a bad flag is exit 2", async () => {
    const bin = new URL("../bin/leoam.js", import.meta.url).pathname
    const child = spawn(process.execPath, [bin, "actor", "http-gateway", "--nats-url", nats.url, "--http-port", "0"], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    child.stdout.on("data", (d) => (out += d))
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)))
    for (let i = 0; i < 300 && !/ready on/.test(out); i++) await new Promise((r) => setTimeout(r, 100))
    const url = /ready on (http:\/\/\S+) for/.exec(out)?.[1]
    expect(out).toContain("chat template default:chatml")
    expect((await fetch(`${url}/v1/models`)).status).toBe(503)
    child.kill("SIGTERM")
    expect(await exited).toBe(0)
    expect(out).toContain("leoam: stopped")
    const bad = await new Promise<{ code: number | null; stderr: string }>((resolve) =>
      execFile(process.execPath, [bin, "actor", "http-gateway", "--nats-url", nats.url, "--chat-template", "/nonexistent.jinja"], (e, _o, stderr) =>
        resolve({ code: e ? (e as { code?: number }).code ?? 1 : 0, stderr }),
      ),
    )
    expect(bad).toEqual({ code: 2, stderr: "leoam: error [invalid_request]: --chat-template /nonexistent.jinja: no such file\n" })
  })

  it("refuses a port in use with invalid_request, naming the flags", async () => {
    await expect(startHttpGateway({ natsUrl: nats.url, port: gateway.port })).rejects.toMatchObject({ code: "invalid_request", message: expect.stringContaining("--http-port") })
  })
})
