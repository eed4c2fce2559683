// The scheduler actor: owns the public requests. It validates and tokenizes them, admits
// generate requests into its bounded mailbox (FIFO, so first come first served; past the
// bound: `busy`), hands one run at a time to the gpu-executor, turns the executor's token
// events into text (streamed to the request's `stream` subject), applies stop strings
// (cancelling the run early) and replies. It never sees KV bytes.
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { nuid } from "@nats-io/nuid"
import type { Tokenizer } from "../models/tokenizer.ts"
import { leoamError } from "../protocol/errors.ts"
import type { ActorStatus, ModelDescription, RunRequest, RunResult } from "../protocol/internal.ts"
import { EmptyRequest, GenerateRequest, type GenerateReply, type StreamEvent, TokenizeRequest } from "../protocol/messages.ts"
import { type adminSubjects, internalSubjects } from "../protocol/subjects.ts"
import { adminHandlers } from "./admin.ts"
import { type ActorDefinition, type Source, pingActors } from "./actor.ts"
import { decodeToken } from "./gpu-executor.ts"
import { decodeAs, encodeJson, errorOf } from "./nats.ts"
import { STREAM_PREFIX } from "./access.ts"

export interface SchedulerOptions {
  /** Absent for dummy weights: then only `ids` prompts are served and replies carry no text. */
  readonly loadTokenizer?: () => Tokenizer
  /** Generate requests waiting or running, at most. */
  readonly queueCapacity: number
  readonly version: string
  /** Where the public endpoints come from (NATS services endpoints). */
  readonly sources: { generate: Source; tokenize: Source; models: Source; health: Source }
  /** Where the admin endpoints come from (leoam.v1.admin.*); absent: no admin subjects on this node. */
  readonly adminSources?: Record<keyof typeof adminSubjects, Source>
  /** Queue depth of the scheduler's own mailbox (set once the actor runs). */
  readonly load: () => { queued: number; busy: boolean; capacity: number }
  readonly draining: () => boolean
  /** Longest a run may take before the scheduler gives up on the executor. */
  readonly runTimeoutMs?: number
}

export interface SchedulerState {
  readonly tokenizer: Tokenizer | undefined
  readonly model: ModelDescription
  requests: number
  generated: number
}

const DEFAULT_MAX_TOKENS = 256

/** Asks the gpu-executor what it serves, waiting for it to come up. */
const describeModel = async (nc: NatsConnection, waitMs = 600_000): Promise<ModelDescription> => {
  const deadline = Date.now() + waitMs
  for (;;) {
    try {
      const m = await nc.request(internalSubjects.executorDescribe, new Uint8Array(0), { timeout: 2000 })
      const body = m.json<ModelDescription & { error?: unknown }>()
      if (!body.error) return body
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error("the gpu-executor did not answer within the start-up timeout")
    await new Promise((r) => setTimeout(r, 250))
  }
}

/** The first occurrence of any stop string, or -1. */
const firstStop = (text: string, stops: ReadonlyArray<string>): number => {
  let at = -1
  for (const s of stops) {
    const i = text.indexOf(s)
    if (i >= 0 && (at < 0 || i < at)) at = i
  }
  return at
}

/** Length of the longest suffix of `text` that is a proper prefix of a stop string. */
const pendingStop = (text: string, stops: ReadonlyArray<string>): number => {
  let best = 0
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n
        break
      }
    }
  }
  return best
}

/** A stream subject must not reach the actors' or the admin subjects (the scheduler publishes with full rights). */
const streamAllowed = (subject: string) => subject.startsWith(STREAM_PREFIX) || !(subject.startsWith("leoam.") || subject.startsWith("$"))

export const scheduler = (nc: NatsConnection, options: SchedulerOptions): ActorDefinition<SchedulerState> => {
  const generateHandler = async (s: SchedulerState, body: unknown, _msg: Msg, receivedAt: number): Promise<GenerateReply> => {
    const started = performance.now()
    const req = decodeAs(GenerateRequest, body)
    if ((req.prompt === undefined) === (req.ids === undefined)) throw leoamError("invalid_request", "give exactly one of `prompt` and `ids`")
    if (req.model !== undefined && req.model !== s.model.name) throw leoamError("unknown_model", `no model "${req.model}"; this server has "${s.model.name}"`)
    if (req.prompt !== undefined && !s.tokenizer) throw leoamError("invalid_request", `${s.model.name} has no tokenizer: send \`ids\``)
    const ids = req.prompt !== undefined ? s.tokenizer!.encode(req.prompt) : [...req.ids!]
    if (req.stream !== undefined && !streamAllowed(req.stream)) {
      throw leoamError("invalid_request", `stream subject "${req.stream}" is reserved: use _INBOX.*, ${STREAM_PREFIX}* or a subject outside leoam.* and $*`)
    }
    if (ids.length === 0) throw leoamError("invalid_request", "the prompt is empty")
    const bad = ids.find((id) => id >= s.model.vocab_size)
    if (bad !== undefined) throw leoamError("invalid_ids", `token id ${bad} is outside the vocabulary (0..${s.model.vocab_size - 1})`)
    const room = s.model.context_length - ids.length
    if (room < 1) throw leoamError("context_overflow", `the prompt has ${ids.length} tokens; the context holds ${s.model.context_length} (prompt plus at least one new token)`)
    if (req.max_tokens !== undefined && req.max_tokens > room) {
      throw leoamError("context_overflow", `max_tokens ${req.max_tokens} does not fit: the prompt has ${ids.length} tokens of a ${s.model.context_length}-token context`)
    }
    const maxTokens = req.max_tokens ?? Math.min(DEFAULT_MAX_TOKENS, room)
    const stops = req.stop ?? []
    const longestStop = stops.reduce((n, x) => Math.max(n, x.length), 0)
    s.requests++

    const runId = nuid.next()
    const tokensSubject = `_INBOX.leoam.tokens.${runId}`
    const decoder = s.tokenizer?.streamDecoder()
    let text = ""
    let emitted = 0 // characters of `text` already streamed
    let cancelled = false
    const stream = (event: StreamEvent) => {
      if (req.stream) nc.publish(req.stream, encodeJson(event))
    }
    const sub = nc.subscribe(tokensSubject, {
      callback: (_e, m) => {
        if (cancelled) return
        const { index, id } = decodeToken(m.data)
        const delta = decoder ? decoder.push(id) : ""
        text += delta
        // A new match ends inside this delta: search only the tail it can start in.
        if (stops.length > 0 && firstStop(text.slice(Math.max(0, text.length - delta.length - longestStop + 1)), stops) >= 0) {
          cancelled = true
          nc.publish(internalSubjects.executorCancel, encodeJson({ run_id: runId }))
          return
        }
        // Text that may turn out to be the start of a stop string is held back.
        const safe = text.length - pendingStop(text, stops)
        stream({ index, id, text: text.slice(emitted, safe), done: false })
        emitted = Math.max(emitted, safe)
      },
    })
    const run: RunRequest = {
      run_id: runId,
      ids,
      max_tokens: maxTokens,
      temperature: req.temperature ?? 0,
      top_p: req.top_p ?? 1,
      top_k: req.top_k ?? 0,
      seed: req.seed ?? 0,
      stop_ids: s.model.eos_ids,
      tokens: tokensSubject,
    }
    let reply: Msg
    try {
      reply = await nc.request(internalSubjects.executorRun, encodeJson(run), { timeout: options.runTimeoutMs ?? 30 * 60_000 })
    } catch (e) {
      throw leoamError("actor_unavailable", `the gpu-executor did not answer: ${(e as Error).message}`)
    } finally {
      sub.unsubscribe()
    }
    const failure = errorOf(reply)
    if (failure) throw failure
    const result = reply.json<RunResult>()
    // The reply is the truth: text and stop strings are applied to its ids.
    let outIds = result.ids
    const decode = (xs: ReadonlyArray<number>) => (s.tokenizer ? s.tokenizer.decode([...xs]) : "")
    let outText = decode(outIds)
    let finish: "length" | "stop" = result.finish_reason === "length" ? "length" : "stop"
    const at = stops.length > 0 ? firstStop(outText, stops) : -1
    if (at >= 0) {
      // Keep the fewest ids whose text reaches the stop string (decoded length grows with
      // the ids, so a binary search: O(log n) decodes rather than n).
      let lo = 1
      let hi = outIds.length
      while (lo < hi) {
        const mid = (lo + hi) >> 1
        if (decode(outIds.slice(0, mid)).length < at + 1) lo = mid + 1
        else hi = mid
      }
      outIds = outIds.slice(0, lo)
      outText = outText.slice(0, at)
      finish = "stop"
    }
    // The last event carries what was held back (up to a stop string, which is never sent).
    stream({ index: outIds.length, text: outText.slice(Math.min(emitted, outText.length)), done: true })
    s.generated += outIds.length
    return {
      model: s.model.name,
      ids: outIds,
      text: outText,
      finish_reason: finish,
      usage: { prompt_tokens: ids.length, completion_tokens: outIds.length },
      timings: {
        queue_ms: started - receivedAt,
        prefill_ms: result.prefill_ms,
        decode_ms_per_token: result.decode_ms_per_token,
        total_ms: performance.now() - receivedAt,
      },
      ...(result.kv ? { kv: result.kv } : {}),
    }
  }

  let current: SchedulerState | undefined
  const admin = adminHandlers({ nc, load: options.load, counters: () => ({ requests: current?.requests ?? 0, generated: current?.generated ?? 0 }) })
  const adminEndpoints = options.adminSources
    ? (Object.keys(admin) as Array<keyof typeof adminSubjects>).map(
        (k) => [options.adminSources![k], (_s: SchedulerState, body: unknown, msg: Msg) => admin[k](body, msg)] as const,
      )
    : []

  return {
    name: "scheduler",
    mailbox: options.queueCapacity,
    start: async () => (current = { tokenizer: options.loadTokenizer?.(), model: await describeModel(nc), requests: 0, generated: 0 }),
    stats: (s) => ({ requests: s.requests, generated_tokens: s.generated, queue: options.load() }),
    handlers: [[options.sources.generate, generateHandler]],
    immediate: [
      ...adminEndpoints,
      [
        options.sources.tokenize,
        async (s, body) => {
          const req = decodeAs(TokenizeRequest, body)
          if (!s.tokenizer) throw leoamError("invalid_request", `${s.model.name} has no tokenizer`)
          if (req.model !== undefined && req.model !== s.model.name) throw leoamError("unknown_model", `no model "${req.model}"; this server has "${s.model.name}"`)
          const ids = s.tokenizer.encode(req.text)
          return { model: s.model.name, ids, count: ids.length }
        },
      ],
      [
        options.sources.models,
        async (s, body) => {
          decodeAs(EmptyRequest, body)
          const m = s.model
          return {
            models: [{ name: m.name, default: true, context_length: m.context_length, vocab_size: m.vocab_size, layers: m.layers, hidden_size: m.hidden_size, heads: m.heads, kv_heads: m.kv_heads }],
          }
        },
      ],
      [
        options.sources.health,
        async (s, body) => {
          decodeAs(EmptyRequest, body)
          const actors = await pingActors(nc)
          const load = options.load()
          return {
            status: options.draining() ? "draining" : "ok",
            version: options.version,
            device: s.model.device,
            actors: actors.map((a: ActorStatus) => ({ name: a.name, status: a.status, restarts: a.restarts })),
            queue: { depth: load.queued, capacity: load.capacity, in_flight: load.busy ? 1 : 0 },
          }
        },
      ],
    ],
  }
}

