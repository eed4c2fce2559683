// The actor runtime: an actor is an Effect service (its state and handlers, built from its
// layer) behind a bounded mailbox and the subjects it listens on. Mailbox messages are
// checked by their endpoint's `admit` before they take a place (a malformed request is
// answered at once, never queued behind a running one), then served `concurrency` at a time
// (default one), in turns across the keys of `fairKey` (NATS users: actors/fair-queue.ts);
// `immediate` endpoints (cancel, stats, ping) bypass the mailbox. Supervision: a
// handler that fails with a LeoamError answers that code and the actor goes on; anything
// else (a defect, whatever its `code`) is a crash: that request gets `actor_restarted`, the
// service's scope is closed and the service rebuilt (with backoff) once the messages served
// beside it are done, and the mailbox goes on.
// Only this module changes the running service. Draining refuses new messages with
// `shutting_down` and waits (bounded) for the mailbox.
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core"
import { Cause, Context, Duration, Effect, Exit, Fiber, Layer, Option, Queue, Runtime, Schedule, Schema, Scope } from "effect"
import { FairQueue } from "./fair-queue.ts"
import { LeoamError, leoamError } from "../protocol/errors.ts"
import { ActorStatus, internalRpc } from "../protocol/internal.ts"
import { parseBody, respondError, respondJson } from "./nats.ts"

/** The node's actors, and the HTTP gateway (beside them with --http-port, or alone). */
export type ActorName = NodeActorName | "http-gateway"
export type NodeActorName = "scheduler" | "gpu-executor" | "host-cache" | "disk-store"
export const actorNames: ReadonlyArray<NodeActorName> = ["scheduler", "gpu-executor", "host-cache", "disk-store"]

/** `receivedAt` is when the message reached the actor (performance.now()), before any queueing. Succeeds with the JSON reply. */
export type Handler<S> = (service: S, body: unknown, msg: Msg, receivedAt: number) => Effect.Effect<unknown, LeoamError>

/**
 * Where a handler's messages come from: a subject (one actor of a queue group gets each
 * message), a broadcast subject (every actor gets each), or a NATS services endpoint.
 */
export type Source = string | { readonly broadcast: string } | ((callback: (err: Error | null, msg: Msg) => void) => void)

export interface Endpoint<S> {
  readonly source: Source
  readonly handler: Handler<S>
  /** For mailbox endpoints: told of a message from when it is queued until it is answered (the gpu-executor heartbeats the runs it holds). */
  readonly watch?: MailboxWatch
  /**
   * For mailbox endpoints: checks a message before it takes a mailbox place; its value is
   * what the handler gets as `body`. It runs in the NATS callback and should finish there
   * (decode, validate, tokenize a short prompt); one that goes async (a long prompt
   * tokenized in a worker) takes its place when it finishes, after those admitted meanwhile.
   */
  readonly admit?: (service: S, body: unknown, msg: Msg) => Effect.Effect<unknown, LeoamError>
  /** For mailbox endpoints: whose turn a message waits for (round robin across keys); absent: one FIFO. */
  readonly fairKey?: (msg: Msg) => string
}

/** `settled` follows every `queued` body once: after its reply, or when it is refused at drain. */
export interface MailboxWatch {
  readonly queued: (body: unknown) => void
  readonly settled: (body: unknown) => void
}

export interface ActorDefinition<S> {
  readonly name: ActorName
  /**
   * The actor's service, built at start and again after every crash; its scope closes
   * (finalizers run) on restart and stop. A build that fails is final (bad configuration);
   * one that dies is retried with backoff for 30 s (a device or file not ready yet).
   */
  readonly service: Effect.Effect<S, unknown, Scope.Scope>
  /** Served in the mailbox, `concurrency` at a time. */
  readonly handlers?: ReadonlyArray<Endpoint<S>>
  /** Served at once, beside the mailbox (must not block). */
  readonly immediate?: ReadonlyArray<Endpoint<S>>
  readonly stats?: (service: S) => unknown
  /** Mailbox bound: past it, messages get `busy`. */
  readonly mailbox?: number
  /** Mailbox messages served at once (default 1: one at a time). */
  readonly concurrency?: number
}

/** The service of a tag, built from its layer in the caller's scope (an actor's `service`). */
export const serviceOf = <I, S, E>(tag: Context.Tag<I, S>, layer: Layer.Layer<I, E>): Effect.Effect<S, E, Scope.Scope> =>
  Effect.map(Layer.build(layer), (context) => Context.get(context, tag))

interface Envelope<S> {
  readonly handler: Handler<S>
  readonly watch?: MailboxWatch
  readonly body: unknown
  /** Set when the message could not be admitted on arrival (the actor was restarting): it is admitted when served. */
  readonly admit?: Endpoint<S>["admit"]
  readonly msg: Msg
  readonly receivedAt: number
  readonly key: string
}

interface Built<S> {
  readonly service: S
  readonly scope: Scope.CloseableScope
}

export interface RunningActor {
  readonly name: ActorName
  status(): ActorStatus
  /** Messages waiting in the mailbox (also per fair key), and whether one is being served (how many). */
  load(): { readonly queued: number; readonly busy: boolean; readonly capacity: number; readonly serving: number; readonly queuedByKey: Record<string, number> }
  /** Refuses new messages, waits up to `timeoutMs` for the mailbox to empty, then stops. */
  drain(timeoutMs: number): Promise<void>
}

// Never throws: a reply too large for the server goes out as payload_too_large (nats.ts).
const replyJson = (msg: Msg, value: unknown) => void respondJson(msg, value)

/** Builds a service in a fresh scope; retries defects with backoff, a failure is final. */
const buildService = <S>(def: ActorDefinition<S>): Effect.Effect<Built<S>, Cause.Cause<unknown>> =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    return yield* Scope.extend(def.service, scope).pipe(
      Effect.map((service): Built<S> => ({ service, scope })),
      Effect.onExit((exit) => (Exit.isFailure(exit) ? Scope.close(scope, exit) : Effect.void)),
    )
  }).pipe(
    Effect.sandbox,
    Effect.retry({
      schedule: Schedule.exponential(Duration.millis(100)).pipe(Schedule.upTo(Duration.seconds(30))),
      while: (cause) => Option.isNone(Cause.failureOption(cause)),
    }),
  )

/** The coded error of a failed handler, or undefined when the failure is a crash. */
const codedOf = (cause: Cause.Cause<LeoamError>): LeoamError | undefined => {
  const failure = Cause.failureOption(cause)
  return Option.isSome(failure) && failure.value instanceof LeoamError && !Cause.isDie(cause) ? failure.value : undefined
}

const describeCause = (cause: Cause.Cause<unknown>): string => {
  const e = Cause.squash(cause)
  return e instanceof Error ? e.message : String(e)
}

export const startActor = <S>(nc: NatsConnection, def: ActorDefinition<S>): Effect.Effect<RunningActor, unknown> =>
  Effect.gen(function* () {
    const capacity = def.mailbox ?? 256
    const concurrency = Math.max(1, def.concurrency ?? 1)
    // Messages in their serving order; `arrived` holds one token per message (the loop waits on it).
    const mailbox = new FairQueue<Envelope<S>>(capacity)
    const arrived = yield* Queue.unbounded<void>()
    // A mailbox message takes one permit, a restart all of them (after the messages being served).
    const lock = yield* Effect.makeSemaphore(concurrency)
    // Closed while a restart waits for its permits: no new message starts on the crashed service.
    const ready = yield* Effect.makeLatch(true)
    const first = yield* Effect.mapError(buildService(def), Cause.squash)
    let current: Built<S> | undefined = first
    let restarts = 0
    let restarting = false
    let draining = false
    const serving = new Set<Envelope<S>>()
    const subs: Subscription[] = []

    /** Closes the crashed service's scope and builds a new one (unless it was rebuilt already). */
    const restart = (crashed: Built<S>, cause: Cause.Cause<unknown>) =>
      Effect.gen(function* () {
        if (current !== crashed) return
        restarting = true
        restarts++
        current = undefined
        yield* Scope.close(crashed.scope, Exit.failCause(cause))
        const rebuilt = yield* Effect.exit(buildService(def))
        if (Exit.isSuccess(rebuilt)) current = rebuilt.value
        else process.stderr.write(`leoam ${def.name}: could not restart: ${describeCause(rebuilt.cause)}\n`)
        restarting = false
      })

    /** Restarts a crashed service once every message served beside it is done. */
    const restartAfter = (crashed: Built<S>, cause: Cause.Cause<unknown>) =>
      Effect.gen(function* () {
        restarting = true
        yield* ready.close
        yield* lock.withPermits(concurrency)(restart(crashed, cause))
        restarting = false
        yield* ready.open
      })

    /** A permit to serve one message, taken only while no restart is pending. */
    const permit: Effect.Effect<void> = Effect.gen(function* () {
      for (;;) {
        yield* ready.await
        yield* lock.take(1)
        if (!restarting) return
        yield* lock.release(1)
      }
    })

    /** Answers a handler's outcome; a crash answers actor_restarted and says so. */
    const settle = (msg: Msg, exit: Exit.Exit<unknown, LeoamError>): boolean => {
      if (Exit.isSuccess(exit)) {
        replyJson(msg, exit.value)
        return false
      }
      if (Cause.isInterruptedOnly(exit.cause)) return false // drain answers it
      const coded = codedOf(exit.cause)
      if (coded) {
        respondError(msg, coded)
        return false
      }
      respondError(msg, leoamError("actor_restarted", `${def.name} failed while serving this request and was restarted: ${describeCause(exit.cause)}`))
      return true
    }

    /** Serves one message under a permit the caller took (released here); a crash restarts the service after. */
    const serveOne = (env: Envelope<S>) =>
      Effect.gen(function* () {
        const built = current
        if (!built) return void respondError(env.msg, leoamError("actor_unavailable", `${def.name} could not be restarted`))
        serving.add(env)
        const admit = env.admit
        const handle = admit
          ? Effect.flatMap(Effect.suspend(() => admit(built.service, env.body, env.msg)), (body) => env.handler(built.service, body, env.msg, env.receivedAt))
          : Effect.suspend(() => env.handler(built.service, env.body, env.msg, env.receivedAt))
        const exit = yield* Effect.exit(handle)
        serving.delete(env)
        return settle(env.msg, exit) && Exit.isFailure(exit) ? { built, cause: exit.cause } : undefined
      }).pipe(
        Effect.ensuring(Effect.zipRight(lock.release(1), Effect.sync(() => env.watch?.settled(env.body)))),
        Effect.flatMap((crash) => (crash ? restartAfter(crash.built, crash.cause) : Effect.void)),
      )

    /** Takes the next message in its turn (one per token in `arrived`), once a permit is free. */
    const next = Effect.gen(function* () {
      yield* Queue.take(arrived)
      yield* permit
      const env = mailbox.take()
      if (!env) return yield* lock.release(1) // taken by drain meanwhile
      // One at a time: served in the loop's fiber (as before concurrency); more: each in its own.
      if (concurrency === 1) yield* serveOne(env)
      else yield* Effect.forkDaemon(serveOne(env))
    })

    // Interruptible even when started inside an uninterruptible region (acquireRelease): drain interrupts it.
    const loop = yield* Effect.forkDaemon(Effect.interruptible(Effect.forever(next)))

    /** An admission's outcome: the admitted body, or undefined when it was answered instead (refused, or a crash). */
    const admitted = (built: Built<S>, msg: Msg, exit: Exit.Exit<unknown, LeoamError>): { body: unknown } | undefined => {
      if (Exit.isSuccess(exit)) return { body: exit.value }
      if (settle(msg, exit)) Effect.runFork(restartAfter(built, exit.cause))
      return undefined
    }

    /** Admits a mailbox message: at once when admission finishes synchronously, else (a promise) when it does. */
    const admitNow = (admit: NonNullable<Endpoint<S>["admit"]>, built: Built<S>, body: unknown, msg: Msg) => {
      const exit = Effect.runSyncExit(Effect.suspend(() => admit(built.service, body, msg)))
      const async = Exit.isFailure(exit) ? Option.filter(Cause.dieOption(exit.cause), Runtime.isAsyncFiberException) : Option.none()
      // runSyncExit leaves an admission that went async running: wait for its fiber.
      if (Option.isSome(async)) return Effect.runPromise(Fiber.await(async.value.fiber as Fiber.Fiber<unknown, LeoamError>)).then((e) => admitted(built, msg, e))
      return admitted(built, msg, exit)
    }

    const accept = (handler: Handler<S>, viaMailbox: boolean, admit?: Endpoint<S>["admit"], watch?: MailboxWatch, fairKey?: Endpoint<S>["fairKey"]) => (err: Error | null, msg: Msg) => {
      if (err) return
      const receivedAt = performance.now()
      if (draining) return respondError(msg, leoamError("shutting_down", `${def.name} is shutting down`))
      let body: unknown
      try {
        body = parseBody(msg.data)
      } catch (e) {
        return respondError(msg, e instanceof LeoamError ? e : leoamError("invalid_json", String(e)))
      }
      if (!viaMailbox) {
        const built = current
        if (!built || restarting) return respondError(msg, leoamError("actor_unavailable", `${def.name} is restarting`))
        Effect.runFork(
          Effect.exit(Effect.suspend(() => handler(built.service, body, msg, receivedAt))).pipe(
            // A crash beside the mailbox restarts the actor once the message being served is done.
            Effect.flatMap((exit) => (settle(msg, exit) && Exit.isFailure(exit) ? restartAfter(built, exit.cause) : Effect.void)),
          ),
        )
        return
      }
      // While the actor restarts there is no service to admit with: the message is admitted when served.
      const built = current
      const admitNowOk = admit !== undefined && built !== undefined && !restarting
      const enqueue = (admission: { body: unknown } | undefined) => {
        if (!admission) return
        if (draining) return respondError(msg, leoamError("shutting_down", `${def.name} is shutting down`))
        const envelope: Envelope<S> = { handler, body: admission.body, msg, receivedAt, admit: admitNowOk ? undefined : admit, watch, key: fairKey?.(msg) ?? "" }
        if (mailbox.offer(envelope.key, envelope)) {
          Effect.runSync(Queue.offer(arrived, undefined))
          watch?.queued(envelope.body)
        } else respondError(msg, leoamError("busy", `${def.name} has ${capacity} requests queued; try again later`))
      }
      const admission = admitNowOk ? admitNow(admit, built, body, msg) : { body }
      if (admission instanceof Promise) void admission.then(enqueue)
      else enqueue(admission)
    }

    const listen = (source: Source, callback: (err: Error | null, msg: Msg) => void) => {
      if (typeof source === "string") subs.push(nc.subscribe(source, { queue: `leoam-${def.name}`, callback }))
      else if (typeof source === "object") subs.push(nc.subscribe(source.broadcast, { callback }))
      else source(callback)
    }
    for (const e of def.handlers ?? []) listen(e.source, accept(e.handler, true, e.admit, e.watch, e.fairKey))
    for (const e of def.immediate ?? []) listen(e.source, accept(e.handler, false))

    const status = (): ActorStatus => ({
      name: def.name,
      pid: process.pid,
      status: restarting || !current ? "restarting" : "running",
      restarts,
      stats: current && def.stats ? def.stats(current.service) : undefined,
    })
    // Every actor answers pings (no queue group: the caller gathers all replies).
    subs.push(nc.subscribe(internalRpc.ping.subject, { callback: (_err, msg) => replyJson(msg, status()) }))

    const size = () => mailbox.size
    return {
      name: def.name,
      status,
      load: () => ({ queued: size(), busy: serving.size > 0, capacity, serving: serving.size, queuedByKey: mailbox.queuedByKey() }),
      drain: async (timeoutMs) => {
        draining = true
        const deadline = Date.now() + timeoutMs
        while ((size() > 0 || serving.size > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
        for (const sub of subs) sub.unsubscribe()
        await Effect.runPromise(Fiber.interrupt(loop))
        // Whatever is still queued is refused rather than dropped silently.
        for (const env of mailbox.takeAll()) {
          respondError(env.msg, leoamError("shutting_down", `${def.name} shut down before serving this request`))
          env.watch?.settled(env.body)
        }
        for (const env of serving) respondError(env.msg, leoamError("shutting_down", `${def.name} shut down while serving this request`))
        const built = current
        current = undefined
        if (built) await Effect.runPromise(Scope.close(built.scope, Exit.void))
      },
    }
  })

/** Starts an actor from promise-land: rejects with the original start-up error (its `code` intact). */
export const runActor = async <S>(nc: NatsConnection, def: ActorDefinition<S>): Promise<RunningActor> => {
  const exit = await Effect.runPromiseExit(startActor(nc, def))
  if (Exit.isSuccess(exit)) return exit.value
  const error = Cause.squash(exit.cause)
  throw error instanceof Error ? error : new Error(`${def.name} failed to start: ${String(error)}`)
}

/** Gathers the status of every actor reachable on the bus (within `waitMs`). */
export const pingActors = async (nc: NatsConnection, waitMs = 250): Promise<ActorStatus[]> => {
  const out: ActorStatus[] = []
  const replies = await nc.requestMany(internalRpc.ping.subject, new Uint8Array(0), { maxWait: waitMs }).catch(() => undefined)
  if (!replies) return out
  for await (const m of replies) {
    // A reply that is not JSON or not an ActorStatus is not an actor.
    const status = Effect.runSync(Effect.option(Effect.try(() => m.json<unknown>()).pipe(Effect.flatMap(Schema.decodeUnknown(ActorStatus)))))
    if (status._tag === "Some") out.push(status.value)
  }
  return out
}
