// The actor runtime: an actor owns a state, a bounded mailbox and the subjects it
// listens on. Mailbox messages are handled one at a time by one fiber; `immediate`
// handlers (cancel, ping, stats) bypass the mailbox. Supervision: a handler that fails
// with a LeoamError answers that error and the actor goes on; anything else is a crash —
// the message being served gets `actor_restarted`, the state is rebuilt (with backoff)
// and the mailbox continues. Draining refuses new messages with `shutting_down` and
// waits (bounded) for the mailbox to empty.
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core"
import { Deferred, Duration, Effect, Exit, Fiber, Queue, Schedule } from "effect"
import { asLeoamError, LeoamError, leoamError } from "../protocol/errors.ts"
import type { ActorStatus } from "../protocol/internal.ts"
import { internalSubjects } from "../protocol/subjects.ts"
import { encodeJson, parseBody, respondError } from "./nats.ts"

export type ActorName = "scheduler" | "gpu-executor" | "host-cache" | "disk-store"
export const actorNames: ReadonlyArray<ActorName> = ["scheduler", "gpu-executor", "host-cache", "disk-store"]

/** `receivedAt` is when the message reached the actor (performance.now()), before any queueing. */
export type Handler<S> = (state: S, body: unknown, msg: Msg, receivedAt: number) => Promise<unknown>

/**
 * Where a handler's messages come from: a subject (one actor of a queue group gets each
 * message), a broadcast subject (every actor gets each), or a NATS services endpoint.
 */
export type Source = string | { readonly broadcast: string } | ((callback: (err: Error | null, msg: Msg) => void) => void)

export interface ActorDefinition<S> {
  readonly name: ActorName
  /** Builds the state; runs at start and after every crash. */
  readonly start: () => Promise<S>
  readonly stop?: (state: S) => Promise<void>
  /** Handled in the mailbox, one at a time. */
  readonly handlers?: ReadonlyArray<readonly [Source, Handler<S>]>
  /** Handled at once, beside the mailbox (must not block). */
  readonly immediate?: ReadonlyArray<readonly [Source, Handler<S>]>
  readonly stats?: (state: S) => unknown
  /** Mailbox bound: past it, messages get `busy`. */
  readonly mailbox?: number
}

interface Envelope<S> {
  readonly handler: Handler<S>
  readonly body: unknown
  readonly msg: Msg
  readonly receivedAt: number
}

export interface RunningActor {
  readonly name: ActorName
  status(): ActorStatus
  /** Messages waiting in the mailbox, and whether one is being served. */
  load(): { readonly queued: number; readonly busy: boolean; readonly capacity: number }
  /** Refuses new messages, waits up to `timeoutMs` for the mailbox to empty, then stops. */
  drain(timeoutMs: number): Promise<void>
}

const replyJson = (msg: Msg, value: unknown) => {
  if (msg.reply) msg.respond(encodeJson(value))
}

export const startActor = async <S>(nc: NatsConnection, def: ActorDefinition<S>): Promise<RunningActor> => {
  const capacity = def.mailbox ?? 256
  // A dropping queue: offer answers false when full (a bounded one would suspend the caller).
  const mailbox = Effect.runSync(Queue.dropping<Envelope<S>>(capacity))
  let state: S | undefined
  let restarts = 0
  let restarting = false
  let draining = false
  let serving: Envelope<S> | undefined
  const subs: Subscription[] = []

  // A start that fails with a code (bad configuration) is final; others are retried with
  // backoff for 30 s (a device or file that is not ready yet).
  const build = Effect.tryPromise({ try: () => def.start(), catch: (e) => e }).pipe(
    Effect.retry({
      schedule: Schedule.exponential(Duration.millis(100)).pipe(Schedule.upTo(Duration.seconds(30))),
      while: (e) => typeof (e as { code?: unknown })?.code !== "string",
    }),
  )
  const first = await Effect.runPromiseExit(build)
  if (Exit.isFailure(first)) {
    const cause = first.cause
    const error = cause._tag === "Fail" ? cause.error : cause
    throw error instanceof Error ? error : new Error(`${def.name} failed to start: ${String(error)}`)
  }
  state = first.value

  // One message: its reply, or a crash that rebuilds the state.
  const handle = (env: Envelope<S>) =>
    Effect.gen(function* () {
      serving = env
      const exit = yield* Effect.exit(Effect.tryPromise({ try: () => env.handler(state as S, env.body, env.msg, env.receivedAt), catch: (e) => e }))
      serving = undefined
      if (Exit.isSuccess(exit)) return replyJson(env.msg, exit.value)
      const cause = exit.cause
      const error = cause._tag === "Fail" ? cause.error : cause
      // A failure with a code is the request's fault or a known condition: answer it.
      if (error instanceof LeoamError || typeof (error as { code?: unknown })?.code === "string") {
        return respondError(env.msg, asLeoamError(error))
      }
      respondError(env.msg, leoamError("actor_restarted", `${def.name} failed while serving this request and was restarted: ${String((error as Error)?.message ?? error)}`))
      restarting = true
      restarts++
      if (def.stop && state !== undefined) yield* Effect.promise(() => def.stop!(state as S).catch(() => undefined))
      state = yield* build
      restarting = false
    })

  const loop = Effect.runFork(Effect.forever(Effect.flatMap(Queue.take(mailbox), handle)))

  const accept = (handler: Handler<S>, viaMailbox: boolean) => (err: Error | null, msg: Msg) => {
    if (err) return
    const receivedAt = performance.now()
    if (draining) return respondError(msg, leoamError("shutting_down", `${def.name} is shutting down`))
    let body: unknown
    try {
      body = parseBody(msg.data)
    } catch (e) {
      return respondError(msg, asLeoamError(e))
    }
    if (!viaMailbox) {
      if (state === undefined || restarting) return respondError(msg, leoamError("actor_unavailable", `${def.name} is restarting`))
      handler(state, body, msg, receivedAt).then(
        (v) => replyJson(msg, v),
        (e) => respondError(msg, asLeoamError(e)),
      )
      return
    }
    const offered = Effect.runSync(Queue.offer(mailbox, { handler, body, msg, receivedAt }))
    if (!offered) respondError(msg, leoamError("busy", `${def.name} has ${capacity} requests queued; try again later`))
  }

  const listen = (source: Source, callback: (err: Error | null, msg: Msg) => void) => {
    if (typeof source === "string") subs.push(nc.subscribe(source, { queue: `leoam-${def.name}`, callback }))
    else if (typeof source === "object") subs.push(nc.subscribe(source.broadcast, { callback }))
    else source(callback)
  }
  for (const [source, handler] of def.handlers ?? []) listen(source, accept(handler, true))
  for (const [source, handler] of def.immediate ?? []) listen(source, accept(handler, false))

  const status = (): ActorStatus => ({
    name: def.name,
    pid: process.pid,
    status: restarting ? "restarting" : "running",
    restarts,
    stats: state !== undefined && def.stats ? def.stats(state) : undefined,
  })
  // Every actor answers pings (no queue group: the caller gathers all replies).
  subs.push(nc.subscribe(internalSubjects.ping, { callback: (_err, msg) => replyJson(msg, status()) }))

  return {
    name: def.name,
    status,
    // Queue.size goes negative while the loop waits in take: that is an empty mailbox.
    load: () => ({ queued: Math.max(0, Effect.runSync(Queue.size(mailbox))), busy: serving !== undefined, capacity }),
    drain: async (timeoutMs) => {
      draining = true
      const deadline = Date.now() + timeoutMs
      while ((Effect.runSync(Queue.size(mailbox)) > 0 || serving) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
      for (const sub of subs) sub.unsubscribe()
      await Effect.runPromise(Fiber.interrupt(loop))
      // Whatever is still queued is refused rather than dropped silently.
      const left = Effect.runSync(Queue.takeAll(mailbox))
      for (const env of left) respondError(env.msg, leoamError("shutting_down", `${def.name} shut down before serving this request`))
      if (serving) respondError(serving.msg, leoamError("shutting_down", `${def.name} shut down while serving this request`))
      if (def.stop && state !== undefined) await def.stop(state).catch(() => undefined)
    },
  }
}

/** Gathers the status of every actor reachable on the bus (within `waitMs`). */
export const pingActors = async (nc: NatsConnection, waitMs = 250): Promise<ActorStatus[]> => {
  const out: ActorStatus[] = []
  const replies = await nc.requestMany(internalSubjects.ping, new Uint8Array(0), { maxWait: waitMs }).catch(() => undefined)
  if (!replies) return out
  for await (const m of replies) {
    try {
      out.push(m.json<ActorStatus>())
    } catch {
      // a malformed ping reply is not an actor
    }
  }
  return out
}

export { Deferred }
