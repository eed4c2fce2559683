// The scheduler actor: owns the public requests. It validates and tokenizes them, admits
// generate requests into its bounded mailbox only once they are valid (so a malformed
// request never takes a place; FIFO, first come first served; past the bound: `busy`),
// hands one run at a time to the gpu-executor, turns the executor's token events into text
// (streamed to the request's `stream` subject), applies stop strings (cancelling the run
// early) and replies. It never sees KV bytes.
import type { Msg, MsgHdrs, NatsConnection } from "@nats-io/nats-core"
import { nuid } from "@nats-io/nuid"
import { Context, Duration, Effect, Layer, Schedule, type Schema } from "effect"
import type { Tokenizer } from "../models/tokenizer.ts"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
import type { ActorStatus, ModelDescription, RunRequest, RunSession } from "../protocol/internal.ts"
import {
  EmptyRequest,
  GenerateReply,
  GenerateRequest,
  HealthReply,
  MAX_TOKENIZE_TEXT,
  ModelsReply,
  StreamCancelReply,
  StreamCancelRequest,
  type StreamEvent,
  TokenizeReply,
  TokenizeRequest,
} from "../protocol/messages.ts"
import { cancelSubject } from "../protocol/subjects.ts"
import { adminReplies } from "../protocol/admin.ts"
import type { adminSubjects } from "../protocol/subjects.ts"
import { decodeTokenEvent, type PrefillEvent } from "../protocol/token-event.ts"
import { adminHandlers } from "./admin.ts"
import { type ActorDefinition, type Endpoint, type Source, pingActors, serviceOf } from "./actor.ts"
import { startup } from "./errors.ts"
import { encodeJson } from "./nats.ts"
import { ask, decodeRequest, publish, replyBy } from "./rpc.ts"
import { refuseStream, requesterOf, STREAM_PREFIX } from "./access.ts"
import { askRun } from "./liveness.ts"
import { tokenizePool } from "./tokenize-pool.ts"
import { sessionHandlers } from "./sessions.ts"
import { internalSubjects, type SessionOp } from "../protocol/subjects.ts"

export interface SchedulerOptions {
  /** Absent for dummy weights: then only `ids` prompts are served and replies carry no text. */
  readonly loadTokenizer?: () => Tokenizer
  /** Generate requests waiting or running, at most. */
  readonly queueCapacity: number
  /** Generate requests served at once (the gpu-executor's batch); default 1. */
  readonly maxBatch?: number
  readonly version: string
  /** Where the public endpoints come from (NATS services endpoints). */
  readonly sources: { generate: Source; tokenize: Source; models: Source; health: Source }
  /** Where the admin endpoints come from (leoam.v1.admin.*); absent: no admin subjects on this node. */
  readonly adminSources?: Record<keyof typeof adminSubjects, Source>
  /** Queue depth of the scheduler's own mailbox (set once the actor runs). */
  readonly load: () => { queued: number; busy: boolean; capacity: number; serving?: number; queuedByKey?: Record<string, number> }
  readonly draining: () => boolean
  /** Silence (no heartbeat, no token) after which a run is lost: actor_unavailable (default RUN_SILENCE_MS, actors/liveness.ts). */
  readonly runSilenceMs?: number
  /** This node's id (session ids name it). */
  readonly node?: string
  /** Where the session subjects come from (public and this node's own: actors/sessions.ts); absent: no sessions. */
  readonly sessionSources?: ReadonlyArray<{ readonly op: SessionOp; readonly source: Source }>
  /** Sessions one user may hold (--session-quota). */
  readonly sessionQuota?: number
  /** Holds a request in this node's lease until its reply (actors/node-leases.ts): forwarded session requests. */
  readonly holdRequest?: (msg: Msg) => void
}

export interface SchedulerState {
  readonly tokenizer: Tokenizer | undefined
  readonly model: ModelDescription
  requests: number
  generated: number
  /** Generate streams ended early because an event could not be sent. */
  streamsCut: number
}

const DEFAULT_MAX_TOKENS = 256

/** Asks the gpu-executor what it serves, waiting (up to 10 minutes) for it to come up. */
const describeModel = (nc: NatsConnection): Effect.Effect<ModelDescription> =>
  ask(nc, "executorDescribe", {}, 2000).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(250)).pipe(Schedule.upTo(Duration.minutes(10)))),
    Effect.orDieWith((e) => new Error(`the gpu-executor did not answer within the start-up timeout: ${e.message}`)),
  )

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

/** A generate request that passed admission: decoded, tokenized, and fitting the context. */
export interface Admitted {
  readonly req: GenerateRequest
  readonly ids: ReadonlyArray<number>
  readonly maxTokens: number
  /** A question to a stored session (actors/sessions.ts): the executor resumes it first. */
  readonly session?: RunSession
  /** The requester (RunRequest.user). */
  readonly user: string
}

export interface SchedulerService {
  /**
   * Checks a generate request before it takes a place in the mailbox (synchronous, but for
   * a long prompt, tokenized in a worker: actors/tokenize-pool.ts); `headers`
   * name the requester (Nats-Request-Info), whose space the stream must be in.
   */
  readonly admit: (body: unknown, headers?: MsgHdrs) => Effect.Effect<Admitted, LeoamError>
  readonly generate: (admitted: Admitted, receivedAt: number) => Effect.Effect<GenerateReply, LeoamError>
  readonly tokenize: (body: unknown) => Effect.Effect<TokenizeReply, LeoamError>
  readonly models: (body: unknown) => Effect.Effect<ModelsReply, LeoamError>
  readonly health: (body: unknown) => Effect.Effect<HealthReply, LeoamError>
  /** leoam.v1.cancel: stops the generate streaming to a subject the requester may use (its client left). */
  readonly cancel: (body: unknown, headers?: MsgHdrs) => Effect.Effect<StreamCancelReply, LeoamError>
  /** The admin subjects' handlers (actors/admin.ts), by subject key. */
  readonly admin: ReturnType<typeof adminHandlers>
  readonly sessions: ReturnType<typeof sessionHandlers>
  readonly stats: () => unknown
}

const make = (nc: NatsConnection, options: SchedulerOptions) =>
  Effect.gen(function* () {
    // A tokenizer that cannot be loaded is a bad configuration (final); the executor may still be starting.
    const tokenizer = yield* startup()(async () => options.loadTokenizer?.())
    // Long prompts are tokenized in a worker thread, never on the event loop every subject shares.
    const pool = tokenizer && (yield* Effect.acquireRelease(Effect.sync(() => tokenizePool(tokenizer)), (p) => Effect.promise(() => p.close())))
    const s: SchedulerState = { tokenizer, model: yield* describeModel(nc), requests: 0, generated: 0, streamsCut: 0 }
    // Generates by their stream subject, for leoam.v1.cancel: the running ones' cancel, and
    // the streams cancelled while their request waited in the mailbox (bounded, oldest dropped).
    const running = new Map<string, () => void>()
    const cancelledEarly = new Set<string>()
    const admin = adminHandlers({ nc, load: options.load, counters: () => ({ requests: s.requests, generated: s.generated }) })

    /**
     * Validates a generate request against the served model (its ids and token budget) before
     * it is queued: cheap checks first, tokenizing last.
     */
    const admit = Effect.fn("Scheduler.admit")(function* (body: unknown, headers?: MsgHdrs) {
      const req = yield* decodeRequest(GenerateRequest, body)
      if ((req.prompt === undefined) === (req.ids === undefined)) return yield* leoamError("invalid_request", "give exactly one of `prompt` and `ids`")
      if (req.model !== undefined && req.model !== s.model.name) return yield* leoamError("unknown_model", `no model "${req.model}"; this server has "${s.model.name}"`)
      if (req.prompt !== undefined && !s.tokenizer) return yield* leoamError("invalid_request", `${s.model.name} has no tokenizer: send \`ids\``)
      if (req.stream !== undefined && !streamAllowed(req.stream)) {
        return yield* leoamError("invalid_request", `stream subject "${req.stream}" is reserved: use _INBOX.*, ${STREAM_PREFIX}* or a subject outside leoam.* and $*`)
      }
      // Against the requester, before tokenizing: a stream outside the caller's space never takes a place.
      const refused = refuseStream(headers, req.stream)
      if (refused) return yield* refused
      const ids = req.prompt !== undefined ? yield* pool!.encode(req.prompt) : [...req.ids!]
      if (ids.length === 0) return yield* leoamError("invalid_request", "the prompt is empty")
      const bad = ids.find((id) => id >= s.model.vocab_size)
      if (bad !== undefined) return yield* leoamError("invalid_ids", `token id ${bad} is outside the vocabulary (0..${s.model.vocab_size - 1})`)
      const room = s.model.context_length - ids.length
      if (room < 1) return yield* leoamError("context_overflow", `the prompt has ${ids.length} tokens; the context holds ${s.model.context_length} (prompt plus at least one new token)`)
      if (req.max_tokens !== undefined && req.max_tokens > room) {
        return yield* leoamError("context_overflow", `max_tokens ${req.max_tokens} does not fit: the prompt has ${ids.length} tokens of a ${s.model.context_length}-token context`)
      }
      return { req, ids, maxTokens: req.max_tokens ?? Math.min(DEFAULT_MAX_TOKENS, room), user: requesterOf(headers).user } satisfies Admitted
    })

    const generate = Effect.fn("Scheduler.generate")(function* ({ req, ids, maxTokens, session, user }: Admitted, receivedAt: number) {
      const started = performance.now()
      const stops = req.stop ?? []
      const longestStop = stops.reduce((n, x) => Math.max(n, x.length), 0)
      s.requests++

      const runId = nuid.next()
      let attempt = runId // the run id to cancel (askRun retries a lost run under a new one)
      const tokensSubject = `_INBOX.leoam.tokens.${runId}`
      const decoder = s.tokenizer?.streamDecoder()
      let text = ""
      let emitted = 0 // characters of `text` already streamed
      let cancelled = false
      // The stream is a preview and the reply the truth: an event that cannot be sent (the
      // connection closing, a server refusal) ends the stream there, never the request. The
      // client sees the events up to it, no `done` event, then the reply as usual.
      let streaming = req.stream !== undefined
      const stream = (event: StreamEvent) => {
        if (!streaming) return
        try {
          nc.publish(req.stream!, encodeJson(event))
        } catch {
          streaming = false
          s.streamsCut++
        }
      }
      if (req.stream !== undefined && cancelledEarly.delete(req.stream)) {
        // Its client left while it waited: answered without a run.
        stream({ index: 0, text: "", done: true })
        return { model: s.model.name, ids: [], text: "", finish_reason: "stop", usage: { prompt_tokens: ids.length, completion_tokens: 0 }, timings: { queue_ms: started - receivedAt, prefill_ms: 0, decode_ms_per_token: 0, total_ms: performance.now() - receivedAt } } satisfies GenerateReply
      }
      // Prefill progress, monotone across a retried attempt (which starts again from 0).
      let prefillDone = -1
      const onPrefill = (e: PrefillEvent) => {
        if (cancelled || e.done <= prefillDone) return
        prefillDone = e.done
        stream({ prefill: { done: e.done, total: e.total } })
      }
      const onToken = (data: Uint8Array, attemptId: string) => {
        attempt = attemptId
        const event = decodeTokenEvent(data)
        if (cancelled || !event) return
        const delta = decoder ? decoder.push(event.id) : ""
        text += delta
        // A new match ends inside this delta: search only the tail it can start in.
        if (stops.length > 0 && firstStop(text.slice(Math.max(0, text.length - delta.length - longestStop + 1)), stops) >= 0) {
          cancelled = true
          // Best effort: a cancel that cannot be sent lets the run end at max_tokens; the reply is cut at the stop all the same.
          Effect.runFork(Effect.ignore(publish(nc, "executorCancel", { run_id: attemptId })))
          return
        }
        // Text that may turn out to be the start of a stop string is held back.
        const safe = text.length - pendingStop(text, stops)
        stream({ index: event.index, id: event.id, text: text.slice(emitted, safe), done: false })
        emitted = Math.max(emitted, safe)
      }
      const run: RunRequest = {
        run_id: runId,
        ids: [...ids],
        max_tokens: maxTokens,
        temperature: req.temperature ?? 0,
        top_p: req.top_p ?? 1,
        top_k: req.top_k ?? 0,
        seed: req.seed ?? 0,
        stop_ids: s.model.eos_ids,
        tokens: tokensSubject,
        ...(req.stream !== undefined ? { progress: true } : {}),
        ...(session ? { session } : {}),
        user,
      }
      // Waits as long as the executor heartbeats the run; a lost run is actor_unavailable (or retried before any token).
      if (req.stream !== undefined) {
        running.set(req.stream, () => {
          if (cancelled) return
          cancelled = true
          Effect.runFork(Effect.ignore(publish(nc, "executorCancel", { run_id: attempt })))
        })
      }
      const result = yield* askRun(nc, run, { onToken, onPrefill, silenceMs: options.runSilenceMs }).pipe(Effect.ensuring(Effect.sync(() => req.stream !== undefined && running.delete(req.stream))))
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
      const reply: GenerateReply = {
        model: s.model.name,
        ids: outIds,
        text: outText,
        finish_reason: finish,
        usage: { prompt_tokens: result.session?.prompt_tokens ?? ids.length, completion_tokens: outIds.length, ...(result.shared_tokens ? { cached_tokens: result.shared_tokens } : {}) },
        timings: {
          queue_ms: started - receivedAt,
          prefill_ms: result.prefill_ms,
          decode_ms_per_token: result.decode_ms_per_token,
          total_ms: performance.now() - receivedAt,
        },
        ...(result.kv ? { kv: result.kv } : {}),
      }
      return reply
    })

    const sessions = sessionHandlers({
      nc,
      node: options.node,
      model: () => s.model,
      admitGenerate: admit,
      encode: (text) => (pool ? pool.encode(text) : Effect.fail(leoamError("invalid_request", `${s.model.name} has no tokenizer: send \`ids\``))),
      generate,
      runSilenceMs: options.runSilenceMs,
      quota: options.sessionQuota,
    })

    const service: SchedulerService = {
      admit,
      generate,
      sessions,
      tokenize: Effect.fn("Scheduler.tokenize")(function* (body: unknown) {
        // Refused before decoding or tokenizing: the reply of a longer text may not fit one NATS message.
        const text = typeof body === "object" && body !== null ? (body as { text?: unknown }).text : undefined
        if (typeof text === "string" && text.length > MAX_TOKENIZE_TEXT) {
          return yield* leoamError("payload_too_large", `the text has ${text.length} UTF-16 code units; tokenize takes at most ${MAX_TOKENIZE_TEXT} (its reply must fit one NATS message): split it`)
        }
        const req = yield* decodeRequest(TokenizeRequest, body)
        if (!s.tokenizer) return yield* leoamError("invalid_request", `${s.model.name} has no tokenizer`)
        if (req.model !== undefined && req.model !== s.model.name) return yield* leoamError("unknown_model", `no model "${req.model}"; this server has "${s.model.name}"`)
        const ids = [...(yield* pool!.encode(req.text))]
        return { model: s.model.name, ids, count: ids.length }
      }),
      models: Effect.fn("Scheduler.models")(function* (body: unknown) {
        yield* decodeRequest(EmptyRequest, body)
        const m = s.model
        return {
          models: [{ name: m.name, default: true, context_length: m.context_length, vocab_size: m.vocab_size, layers: m.layers, hidden_size: m.hidden_size, heads: m.heads, kv_heads: m.kv_heads }],
        }
      }),
      health: Effect.fn("Scheduler.health")(function* (body: unknown) {
        yield* decodeRequest(EmptyRequest, body)
        const actors = yield* Effect.promise(() => pingActors(nc))
        const load = options.load()
        return {
          status: options.draining() ? "draining" : "ok",
          version: options.version,
          device: s.model.device,
          actors: actors.map((a: ActorStatus) => ({ name: a.name, status: a.status, restarts: a.restarts })),
          queue: { depth: load.queued, capacity: load.capacity, in_flight: load.serving ?? (load.busy ? 1 : 0) },
        }
      }),
      cancel: Effect.fn("Scheduler.cancel")(function* (body: unknown, headers?: MsgHdrs) {
        const req = yield* decodeRequest(StreamCancelRequest, body)
        // Only a requester who may use the stream may stop its run (with --users: its owner).
        const refused = refuseStream(headers, req.stream)
        if (refused) return yield* refused
        const stop = running.get(req.stream)
        if (stop) {
          stop()
          return { cancelled: true }
        }
        cancelledEarly.add(req.stream)
        if (cancelledEarly.size > 1024) cancelledEarly.delete(cancelledEarly.values().next().value!)
        return { cancelled: false }
      }),
      admin,
      stats: () => ({ requests: s.requests, generated_tokens: s.generated, streams_cut: s.streamsCut, prompts_tokenized_in_worker: pool?.offloaded() ?? 0, queue: options.load() }),
    }
    return service
  })

export class Scheduler extends Context.Tag("leoam/actors/Scheduler")<Scheduler, SchedulerService>() {
  /** Loads the tokenizer and waits for the gpu-executor's description of the model. */
  static readonly layer = (nc: NatsConnection, options: SchedulerOptions) => Layer.scoped(Scheduler, make(nc, options))
}

export const scheduler = (nc: NatsConnection, options: SchedulerOptions): ActorDefinition<SchedulerService> => {
  const adminEndpoints: Array<Endpoint<SchedulerService>> = options.adminSources
    ? (Object.keys(options.adminSources) as Array<keyof typeof adminSubjects>).map((k) => ({
        source: options.adminSources![k],
        handler: (s: SchedulerService, body: unknown, msg: Msg) => replyBy(adminReplies[k] as Schema.Schema<unknown, unknown>)(s.admin[k](body, msg)),
      }))
    : []
  return {
    name: "scheduler",
    mailbox: options.queueCapacity,
    // As many runs at once as the gpu-executor batches; waiting ones take turns across NATS users.
    concurrency: Math.max(1, options.maxBatch ?? 1),
    service: serviceOf(Scheduler, Scheduler.layer(nc, options)),
    stats: (s) => s.stats(),
    handlers: [
      {
        source: options.sources.generate,
        admit: (s, body, msg) => s.admit(body, msg.headers),
        fairKey: (msg) => requesterOf(msg.headers).user,
        handler: (s, admitted, _msg, receivedAt) => replyBy(GenerateReply)(s.generate(admitted as Admitted, receivedAt)),
      },
      ...(options.sessionSources
        ? [
            {
              // Session requests routed here by any node's front (actors/sessions.ts), in the same FIFO as generate.
              // Held in the node's lease: if this node dies, a peer answers the forwarding node.
              source: options.holdRequest
                ? (callback: (err: Error | null, msg: Msg) => void) =>
                    void nc.subscribe(internalSubjects.sessionForward, { queue: "leoam-scheduler", callback: (err, msg) => (err || options.holdRequest!(msg), callback(err, msg)) })
                : internalSubjects.sessionForward,
              admit: (s: SchedulerService, body: unknown) => s.sessions.admit(body),
              handler: (s: SchedulerService, admitted: unknown, _msg: Msg, receivedAt: number) => s.sessions.handle(admitted as never, receivedAt),
            },
          ]
        : []),
    ],
    immediate: [
      ...adminEndpoints,
      ...(options.sessionSources ?? []).map(({ op, source }) => ({ source, handler: (s: SchedulerService, body: unknown, msg: Msg) => s.sessions.front(op)(body, msg) })),
      { source: options.sources.tokenize, handler: (s, body) => replyBy(TokenizeReply)(s.tokenize(body)) },
      { source: options.sources.models, handler: (s, body) => replyBy(ModelsReply)(s.models(body)) },
      { source: options.sources.health, handler: (s, body) => replyBy(HealthReply)(s.health(body)) },
      // Every node hears a cancel (no queue group): the one running that stream stops it.
      { source: { broadcast: cancelSubject }, handler: (s, body, msg) => replyBy(StreamCancelReply)(s.cancel(body, msg.headers)) },
    ],
  }
}
