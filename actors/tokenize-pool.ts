// Tokenizing long prompts off the event loop: a worker thread with its own tokenizer
// (actors/tokenize-worker.ts), started on the first long text and stopped with the
// scheduler's scope. Short texts stay on the caller's thread (a message round trip costs
// more than encoding them). Texts wait for the worker in arrival order, at most
// MAX_WAITING at a time (each may be 4 MiB): past that, `busy`. A worker that dies fails
// only the text it was encoding (`actor_restarted`); the next text starts a new one.
import { dirname } from "node:path"
import { Worker } from "node:worker_threads"
import { Effect } from "effect"
import type { Tokenizer } from "../models/tokenizer.ts"
import { LeoamError, leoamError } from "../protocol/errors.ts"
import type { EncodeDone, EncodeJob } from "./tokenize-worker.ts"

/** UTF-16 code units above which a text goes to the worker (~30 ms of encoding at worst on the event loop). */
export const WORKER_TEXT_THRESHOLD = 8192
/** Long texts being encoded or waiting for the worker, at most. */
export const MAX_WAITING = 8

// The worker runs TypeScript: its entry registers tsx in the thread (as bin/leoam.js does), then imports the body.
const entry = new URL("./tokenize-thread.mjs", import.meta.url)

export interface TokenizePool {
  /** Encodes `text`: synchronously when short, in the worker when long. */
  readonly encode: (text: string) => Effect.Effect<ReadonlyArray<number>, LeoamError>
  readonly close: () => Promise<void>
  /** Texts handed to the worker so far. */
  readonly offloaded: () => number
  /** Workers started again after one died with texts waiting behind the one it was encoding. */
  readonly restarts: () => number
  /** The current worker thread, if one runs (stats and the fault tests). */
  readonly worker: () => Worker | undefined
}

export const tokenizePool = (tokenizer: Tokenizer, threshold = WORKER_TEXT_THRESHOLD): TokenizePool => {
  let worker: Worker | undefined
  let nextId = 0
  let offloaded = 0
  let restarts = 0
  let closed = false
  // In id order, which is the order the worker takes them in: the first is the one being encoded.
  const waiting = new Map<number, { readonly text: string; readonly resume: (done: EncodeDone | LeoamError) => void }>()

  /**
   * The worker died (crashed, ran out of memory, was terminated): the text it was encoding
   * gets `actor_restarted` (it may be what killed it), and the texts behind it go to a new worker.
   */
  const lost = (why: string) => {
    worker = undefined
    const first = waiting.keys().next()
    if (first.done) return
    const job = waiting.get(first.value)!
    waiting.delete(first.value)
    job.resume(leoamError("actor_restarted", `${why} while tokenizing this text; it was restarted: send the request again`))
    if (waiting.size === 0 || closed) return
    restarts++
    const w = started()
    for (const [id, { text }] of waiting) w.postMessage({ id, text } satisfies EncodeJob)
  }
  const started = (): Worker => {
    if (worker) return worker
    const w = new Worker(entry, { workerData: { dir: dirname(tokenizer.file) } })
    w.unref() // an idle worker does not keep the process alive
    w.on("message", (done: EncodeDone) => {
      const job = waiting.get(done.id)
      waiting.delete(done.id)
      job?.resume(done)
    })
    // 'error' (an uncaught exception in the thread) is followed by 'exit'; the first one seen counts.
    w.on("error", (e) => worker === w && lost(`the tokenizing worker failed: ${e.message}`))
    w.on("exit", (code) => worker === w && lost(`the tokenizing worker exited (${code})`))
    worker = w
    return w
  }

  const inWorker = (text: string) =>
    Effect.async<ReadonlyArray<number>, LeoamError>((resume) => {
      if (closed) return resume(Effect.fail(leoamError("shutting_down", "the scheduler is stopping")))
      if (waiting.size >= MAX_WAITING) return resume(Effect.fail(leoamError("busy", `${MAX_WAITING} long prompts are being tokenized; try again later`)))
      const id = nextId++
      offloaded++
      waiting.set(id, {
        text,
        resume: (done) =>
          resume(
            done instanceof LeoamError
              ? Effect.fail(done)
              : "ids" in done
                ? Effect.succeed(Array.from(done.ids))
                : Effect.fail(leoamError("internal", `tokenizing the prompt failed: ${done.error}`)),
          ),
      })
      started().postMessage({ id, text } satisfies EncodeJob)
    })

  return {
    encode: (text) => (text.length > threshold ? inWorker(text) : Effect.sync(() => tokenizer.encode(text))),
    close: async () => {
      closed = true
      const w = worker
      worker = undefined
      for (const job of waiting.values()) job.resume(leoamError("shutting_down", "the scheduler stopped while this text was being tokenized"))
      waiting.clear()
      await w?.terminate()
    },
    offloaded: () => offloaded,
    restarts: () => restarts,
    worker: () => worker,
  }
}
