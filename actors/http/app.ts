// The gateway's routes (hono): POST /v1/completions, POST /v1/chat/completions, GET /v1/models
// (and /v1/models/{id}), each answered from one NATS request to the scheduler's public
// subjects. Bodies are read with leoam's own limits (4 MiB, 32 levels of nesting, strict
// UTF-8 JSON: actors/nats.ts parseBody); every failure is OpenAI's error shape (errors.ts).
// A streamed answer starts only once the node has sent its first token, so a refused
// request still gets its own status; a client that leaves cancels its run.
import { Hono, type Context } from "hono"
import { bodyLimit } from "hono/body-limit"
import { streamSSE } from "hono/streaming"
import { nuid } from "@nats-io/nuid"
import { Effect } from "effect"
import type { GenerateReply, GenerateRequest, StreamEvent } from "../../protocol/messages.ts"
import { MAX_REQUEST_BYTES, parseBody } from "../nats.ts"
import { type Backend, type Caller, generate, models } from "./backend.ts"
import type { ChatTemplate } from "./chat-template.ts"
import { FieldError, fromUnknown, openAiError, type OpenAiError } from "./errors.ts"
import { completionToGenerate, decodeChat, decodeCompletion, samplingOf } from "./requests.ts"
import { chunkOf, type Ids, type Kind, modelListOf, modelOf, responseOf, usageChunkOf } from "./responses.ts"

export interface AppOptions {
  readonly backend: Backend
  readonly chatTemplate: ChatTemplate
  readonly generateTimeoutMs: number
  /** Counters for the gateway's stats. */
  readonly counters: GatewayCounters
}

export interface GatewayCounters {
  requests: number
  errors: number
  streams: number
  cancelled: number
}

const isOpenAiError = (e: unknown): e is OpenAiError => typeof e === "object" && e !== null && "status" in e && "body" in e && !(e instanceof Error)

const answerError = (c: Context, e: unknown, counters: GatewayCounters) => {
  counters.errors++
  const err = isOpenAiError(e) ? e : e instanceof FieldError ? e.toOpenAi() : fromUnknown(e)
  return c.json(err.body, err.status as 400)
}

const readJson = async (c: Context): Promise<unknown> => {
  const bytes = new Uint8Array(await c.req.arrayBuffer())
  if (bytes.length === 0) throw new FieldError(null, "the request has no body: send a JSON object")
  return parseBody(bytes)
}

/** A generate's token events, waited for one at a time by the streaming writer. */
class Events {
  private readonly items: StreamEvent[] = []
  private wake: (() => void) | undefined
  push = (e: StreamEvent) => {
    this.items.push(e)
    this.wake?.()
  }
  take = (): StreamEvent[] => this.items.splice(0)
  /** Resolves at the next event (or at once when one is waiting). */
  next = (): Promise<void> => (this.items.length > 0 ? Promise.resolve() : new Promise((r) => (this.wake = r)))
}

export const gatewayApp = (o: AppOptions): Hono => {
  const app = new Hono()
  const { backend, counters } = o
  const created = Math.floor(Date.now() / 1000)

  app.use("/v1/*", bodyLimit({ maxSize: MAX_REQUEST_BYTES, onError: (c) => answerError(c, openAiError(413, "payload_too_large", `the request body is over ${MAX_REQUEST_BYTES} bytes`), counters) }))

  const serveGenerate = async (c: Context, kind: Kind) => {
    counters.requests++
    const abort = c.req.raw.signal
    try {
      const caller = await backend.callerOf(c.req.header("authorization"))
      const body = await readJson(c)
      const { request, stream, includeUsage, model } = kind === "completion" ? completion(body) : chat(body, o.chatTemplate)
      const ids: Ids = { id: `${kind === "completion" ? "cmpl" : "chatcmpl"}-${nuid.next()}`, created: Math.floor(Date.now() / 1000), model }
      const events = new Events()
      const call = generate(caller, request, stream ? events.push : () => undefined, o.generateTimeoutMs)
      const onAbort = () => {
        counters.cancelled++
        call.cancel()
      }
      abort.addEventListener("abort", onAbort, { once: true })
      if (abort.aborted) onAbort() // it left while its body was read
      void call.reply.finally(() => abort.removeEventListener("abort", onAbort)).catch(() => undefined)
      if (!stream) return c.json(responseOf(kind, ids, await call.reply))
      // The first event or the reply (an error, or an answer without events) decides the status.
      const first = await Promise.race([events.next().then(() => undefined), call.reply])
      counters.streams++
      return streamSSE(c, async (sse) => {
        const write = (value: unknown) => sse.writeSSE({ data: JSON.stringify(value) })
        let sent = ""
        if (kind === "chat") await write(chunkOf(kind, ids, { role: true, text: "" }, includeUsage))
        let reply: GenerateReply | undefined = first
        let failure: unknown
        const done = call.reply.then(
          (r) => void (reply = r),
          (e) => void (failure = e),
        )
        while (reply === undefined && failure === undefined && !abort.aborted) {
          for (const e of events.take()) {
            if (!("text" in e) || e.text === "") continue // prefill progress, or nothing new
            sent += e.text
            await write(chunkOf(kind, ids, { text: e.text }, includeUsage))
          }
          await Promise.race([events.next(), done])
        }
        if (abort.aborted) return
        if (reply === undefined) {
          const err = isOpenAiError(failure) ? failure : fromUnknown(failure)
          counters.errors++
          await write(err.body)
        } else {
          // The reply is the truth: whatever the events did not carry goes out now.
          const rest = reply.text.startsWith(sent) ? reply.text.slice(sent.length) : ""
          if (rest) await write(chunkOf(kind, ids, { text: rest }, includeUsage))
          await write(chunkOf(kind, ids, { finish: reply.finish_reason }, includeUsage))
          if (includeUsage) await write(usageChunkOf(kind, ids, reply))
        }
        await sse.writeSSE({ data: "[DONE]" })
      })
    } catch (e) {
      return answerError(c, e, counters)
    }
  }

  app.post("/v1/completions", (c) => serveGenerate(c, "completion"))
  app.post("/v1/chat/completions", (c) => serveGenerate(c, "chat"))

  const listModels = async (c: Context) => {
    const caller: Caller = await backend.callerOf(c.req.header("authorization"))
    return Effect.runPromise(Effect.either(models(caller))).then((r) => {
      if (r._tag === "Left") throw r.left
      return r.right
    })
  }
  app.get("/v1/models", async (c) => {
    counters.requests++
    try {
      return c.json(modelListOf(await listModels(c), created, o.chatTemplate.source))
    } catch (e) {
      return answerError(c, e, counters)
    }
  })
  app.get("/v1/models/:id{.+}", async (c) => {
    counters.requests++
    try {
      const id = c.req.param("id")
      const m = (await listModels(c)).models.find((x) => x.name === id)
      if (!m) throw openAiError(404, "unknown_model", `no model "${id}" on this server`, "model")
      return c.json(modelOf(m, created, o.chatTemplate.source))
    } catch (e) {
      return answerError(c, e, counters)
    }
  })

  for (const path of ["/v1/completions", "/v1/chat/completions", "/v1/models"]) {
    app.all(path, (c) => answerError(c, openAiError(405, "method_not_allowed", `${c.req.method} ${path}: use ${path === "/v1/models" ? "GET" : "POST"}`), counters))
  }
  app.notFound((c) => answerError(c, openAiError(404, "not_found", `no route ${c.req.method} ${c.req.path}: this server has POST /v1/completions, POST /v1/chat/completions, GET /v1/models`), counters))
  app.onError((e, c) => answerError(c, e, counters))
  return app
}

interface Planned {
  readonly request: Omit<GenerateRequest, "stream">
  readonly stream: boolean
  readonly includeUsage: boolean
  readonly model: string
}

const completion = (body: unknown): Planned => {
  const r = decodeCompletion(body)
  return { request: completionToGenerate(r), stream: r.stream === true, includeUsage: r.stream_options?.include_usage === true, model: r.model }
}

const chat = (body: unknown, template: ChatTemplate): Planned => {
  const r = decodeChat(body)
  const prompt = template.render(r.messages)
  const maxTokens = r.max_completion_tokens ?? r.max_tokens ?? undefined
  return { request: { prompt, ...samplingOf(r, maxTokens, template.stops) }, stream: r.stream === true, includeUsage: r.stream_options?.include_usage === true, model: r.model }
}
