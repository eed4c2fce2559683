// Tokenizing long prompts off the event loop: a worker thread with its own tokenizer
// (actors/tokenize-worker.ts), started on the first long text and stopped with the
// scheduler's scope. Short texts stay on the caller's thread (a message round trip costs
// more than encoding them). Texts wait for the worker in arrival order, at most
// MAX_WAITING at a time (each may be 4 MiB): past that, `busy`.
import { dirname } from "node:path"
import { Worker } from "node:worker_threads"
import { Effect } from "effect"
import type { Tokenizer } from "../models/tokenizer.ts"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
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
}

export const tokenizePool = (tokenizer: Tokenizer, threshold = WORKER_TEXT_THRESHOLD): TokenizePool => {
  let worker: Worker | undefined
  let nextId = 0
  let offloaded = 0
  const waiting = new Map<number, (done: EncodeDone) => void>()

  /** Fails every waiting text; the next long text starts a new worker. */
  const lost = (why: string) => {
    worker = undefined
    for (const [id, resume] of waiting) resume({ id, error: why })
    waiting.clear()
  }
  const started = (): Worker => {
    if (worker) return worker
    const w = new Worker(entry, { workerData: { dir: dirname(tokenizer.file) } })
    w.unref() // an idle worker does not keep the process alive
    w.on("message", (done: EncodeDone) => {
      const resume = waiting.get(done.id)
      waiting.delete(done.id)
      resume?.(done)
    })
    w.on("error", (e) => worker === w && lost(`the tokenizing worker failed: ${e.message}`))
    w.on("exit", (code) => worker === w && lost(`the tokenizing worker exited (${code})`))
    worker = w
    return w
  }

  const inWorker = (text: string) =>
    Effect.async<ReadonlyArray<number>, LeoamError>((resume) => {
      if (waiting.size >= MAX_WAITING) return resume(Effect.fail(leoamError("busy", `${MAX_WAITING} long prompts are being tokenized; try again later`)))
      const id = nextId++
      offloaded++
      waiting.set(id, (done) =>
        resume("ids" in done ? Effect.succeed(Array.from(done.ids)) : Effect.fail(leoamError("internal", `tokenizing the prompt failed: ${done.error}`))),
      )
      started().postMessage({ id, text } satisfies EncodeJob)
    })

  return {
    encode: (text) => (text.length > threshold ? inWorker(text) : Effect.sync(() => tokenizer.encode(text))),
    close: async () => {
      const w = worker
      worker = undefined
      lost("the scheduler stopped")
      await w?.terminate()
    },
    offloaded: () => offloaded,
  }
}
