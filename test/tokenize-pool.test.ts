// The scheduler's tokenizing worker (actors/tokenize-pool.ts) killed mid-request: the text
// it was encoding gets exactly one `actor_restarted` within seconds, a text waiting behind it
// is encoded by a new worker, and the next text is served; the ids match the event loop's.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { loadTokenizer } from "../models/tokenizer.ts"
import { tokenizePool } from "../actors/tokenize-pool.ts"
import { modelDir } from "./support/server.ts"

const tokenizer = loadTokenizer(modelDir)

describe("the tokenizing worker", () => {
  it.scopedLive("killed while encoding: that text gets one actor_restarted, the one behind it and the next are served by a new worker", () =>
    Effect.gen(function* () {
      const pool = yield* Effect.acquireRelease(Effect.sync(() => tokenizePool(tokenizer, 64)), (p) => Effect.promise(() => p.close()))
      const short = "Once upon a time, there was a little girl named Lily. She liked to play outside."
      expect(yield* pool.encode(short.repeat(2))).toEqual(tokenizer.encode(short.repeat(2))) // the worker is up, its tokenizer loaded
      const first = pool.worker()!
      expect(first).toBeDefined()

      const long = short.repeat(12_000) // ~1 MB: long enough to be mid-encode when the worker dies
      const settled: Array<Either.Either<ReadonlyArray<number>, { code: string; message: string }>> = []
      const victim = yield* Effect.fork(Effect.tap(Effect.either(pool.encode(long)), (e) => Effect.sync(() => settled.push(e))))
      const behind = yield* Effect.fork(Effect.either(pool.encode(short.repeat(3))))
      yield* Effect.sleep(100)
      const killedAt = performance.now()
      yield* Effect.promise(() => first.terminate())
      const lost = yield* victim
      const lostMs = performance.now() - killedAt
      expect(Either.isLeft(lost) && lost.left).toMatchObject({ code: "actor_restarted", message: expect.stringMatching(/tokenizing worker exited \(1\) while tokenizing this text; it was restarted/) })
      expect(lostMs).toBeLessThan(10_000)
      const queued = yield* behind
      expect(queued).toEqual(Either.right(tokenizer.encode(short.repeat(3))))
      expect(pool.restarts()).toBe(1)
      expect(pool.worker()).toBeDefined()
      expect(pool.worker()).not.toBe(first)
      expect(yield* pool.encode(short.repeat(4))).toEqual(tokenizer.encode(short.repeat(4)))
      yield* Effect.sleep(200)
      expect(settled).toHaveLength(1) // one answer, never a second
      process.stderr.write(`tokenize-pool: the killed worker's text answered actor_restarted ${lostMs.toFixed(0)} ms after the kill\n`)
    }),
  )
})
