// Liveness of a run between the scheduler and the gpu-executor. The executor heartbeats
// every run it holds, from the moment the run reaches its mailbox until it is answered: an
// empty message on the run's token subject every HEARTBEAT_MS, beside the 8-byte token
// events. The scheduler's `askRun` waits as long as it hears from the run, however long
// the prefill or the queue, and gives up after `silenceMs` without a message (a killed
// executor, a message lost across a nats-server restart): the request is answered
// `actor_unavailable` and the scheduler's mailbox goes on. A run lost before any token
// event reached the scheduler is retried once under a new run id (nothing was streamed,
// so the client cannot see two); one that streamed is not.
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { createInbox } from "@nats-io/nats-core"
import { Data, Effect, Schema } from "effect"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
import { internalRpc, type RunRequest, type RunResult } from "../protocol/internal.ts"
import { decodePrefillEvent, type PrefillEvent, TOKEN_EVENT_BYTES } from "../protocol/token-event.ts"
import type { MailboxWatch } from "./actor.ts"
import { encodeJson, errorOf } from "./nats.ts"
import { decodeReply, publish } from "./rpc.ts"

export const HEARTBEAT_MS = 500
/** Silence after which a run is lost: ten heartbeats, so a busy event loop on either side is not mistaken for a dead executor. */
export const RUN_SILENCE_MS = 5000

const HEARTBEAT = new Uint8Array(0)

// --- gpu-executor side ---

/** The token subject of a run request body (as received: not yet decoded), if it has one. */
const tokensOf = (body: unknown): string | undefined => {
  const tokens = typeof body === "object" && body !== null ? (body as { tokens?: unknown }).tokens : undefined
  return typeof tokens === "string" ? tokens : undefined
}

/**
 * Heartbeats the token subject of every run in the gpu-executor's mailbox or being served
 * (the run endpoint's MailboxWatch). One timer for the process, running only while runs are held.
 */
export const runHeartbeats = (nc: NatsConnection, everyMs = HEARTBEAT_MS): MailboxWatch & { readonly held: () => number } => {
  const held = new Map<string, number>() // token subject -> runs holding it
  let timer: NodeJS.Timeout | undefined
  const beat = (subject: string) => {
    try {
      nc.publish(subject, HEARTBEAT)
    } catch {
      // A closed connection or a malformed subject: the run's own reply says what went wrong.
    }
  }
  return {
    queued: (body) => {
      const subject = tokensOf(body)
      if (subject === undefined) return
      held.set(subject, (held.get(subject) ?? 0) + 1)
      beat(subject)
      timer ??= setInterval(() => held.forEach((_, s) => beat(s)), everyMs).unref()
    },
    settled: (body) => {
      const subject = tokensOf(body)
      const n = subject === undefined ? undefined : held.get(subject)
      if (n === undefined) return
      if (n > 1) held.set(subject!, n - 1)
      else held.delete(subject!)
      if (held.size === 0 && timer) {
        clearInterval(timer)
        timer = undefined
      }
    },
    held: () => held.size,
  }
}

// --- scheduler side ---

/** A run that went silent; `streamed` when token events had reached the scheduler. */
class RunSilent extends Data.TaggedError("RunSilent")<{ readonly streamed: boolean; readonly silentMs: number }> {}

export interface RunWatch {
  /** Every token event of the run, with the run id of the attempt it belongs to (the one to cancel). */
  readonly onToken: (data: Uint8Array, runId: string) => void
  /** Prefill progress of the run (RunRequest.progress), before its first token. */
  readonly onPrefill?: (event: PrefillEvent) => void
  /** Default RUN_SILENCE_MS. */
  readonly silenceMs?: number
}

const subject = internalRpc.executorRun.subject

/** One attempt: the reply message, or RunSilent once nothing was heard for `silenceMs` (twice in a row, so a stalled event loop here reads the messages waiting for it first). */
const attempt = (nc: NatsConnection, run: RunRequest, data: Uint8Array, watch: RunWatch, silenceMs: number) =>
  Effect.async<Msg, LeoamError | RunSilent>((resume) => {
    let heard = performance.now()
    let streamed = false
    let silentTicks = 0
    const tokens = nc.subscribe(run.tokens, {
      callback: (_err, m) => {
        heard = performance.now()
        const prefill = decodePrefillEvent(m.data)
        if (prefill) return watch.onPrefill?.(prefill)
        if (m.data.length !== TOKEN_EVENT_BYTES) return
        streamed = true
        watch.onToken(m.data, run.run_id)
      },
    })
    const inbox = createInbox()
    const replies = nc.subscribe(inbox, {
      max: 1,
      callback: (err, m) => {
        stop()
        if (err) resume(Effect.fail(leoamError("actor_unavailable", `no reply on ${subject}: ${err.message}`)))
        else if (m.headers?.code === 503 && m.data.length === 0) resume(Effect.fail(leoamError("actor_unavailable", "no gpu-executor is running: start one (`leoam actor gpu-executor`) or `leoam serve`")))
        else resume(Effect.succeed(m))
      },
    })
    const timer = setInterval(() => {
      const silent = performance.now() - heard
      silentTicks = silent > silenceMs ? silentTicks + 1 : 0
      if (silentTicks < 2) return
      stop()
      resume(Effect.fail(new RunSilent({ streamed, silentMs: Math.round(silent) })))
    }, Math.max(20, silenceMs / 10))
    const stop = () => {
      clearInterval(timer)
      tokens.unsubscribe()
      replies.unsubscribe()
    }
    try {
      nc.publish(subject, data, { reply: inbox })
    } catch (e) {
      stop()
      resume(Effect.fail(leoamError("actor_unavailable", `cannot send the run on ${subject}: ${(e as Error).message}`)))
    }
    return Effect.sync(stop)
  })

const encodeRun = (run: RunRequest) =>
  Schema.encode(internalRpc.executorRun.request)(run).pipe(
    Effect.orDie,
    Effect.map((encoded) => encodeJson(encoded)),
  )

const decodeRun = (m: Msg): Effect.Effect<RunResult, LeoamError> => {
  const failure = errorOf(m)
  return failure ? Effect.fail(failure) : decodeReply(internalRpc.executorRun.reply, subject, m)
}

/** Asks the gpu-executor for a run and waits as long as the run is heard from (heartbeats or tokens). */
export const askRun = (nc: NatsConnection, run: RunRequest, watch: RunWatch): Effect.Effect<RunResult, LeoamError> => {
  const silenceMs = watch.silenceMs ?? RUN_SILENCE_MS
  const once = (r: RunRequest) => Effect.flatMap(encodeRun(r), (data) => attempt(nc, r, data, watch, silenceMs))
  // The executor may still hold a lost run (NATS lost only its messages): cancel it, so it stops at its next token.
  // Best effort: a cancel that cannot be sent leaves the run to end by itself.
  const cancel = (r: RunRequest) => Effect.ignore(publish(nc, "executorCancel", { run_id: r.run_id }))
  const lost = (e: RunSilent, retried: boolean) =>
    leoamError(
      "actor_unavailable",
      `the gpu-executor went silent for ${e.silentMs} ms during this run (killed, or NATS restarted)${
        retried ? "; it was retried once and the retry was lost too" : e.streamed ? "; tokens had been streamed, so it was not retried" : ""
      }`,
    )
  const retry: RunRequest = { ...run, run_id: `${run.run_id}.retry`, tokens: `${run.tokens}.retry` }
  return once(run).pipe(
    Effect.catchTag("RunSilent", (first) =>
      Effect.zipRight(
        cancel(run),
        first.streamed
          ? Effect.fail(lost(first, false))
          : once(retry).pipe(
              Effect.catchAll((e) =>
                e._tag === "RunSilent"
                  ? Effect.zipRight(cancel(retry), Effect.fail(lost(e, true)))
                  : Effect.fail(e.code === "actor_unavailable" ? leoamError("actor_unavailable", `${lost(first, false).message}; retried once: ${e.message}`) : e),
              ),
            ),
      ),
    ),
    Effect.flatMap(decodeRun),
  )
}
