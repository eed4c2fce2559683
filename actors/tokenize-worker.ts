// The body of the scheduler's tokenizing worker thread (actors/tokenize-pool.ts): it loads
// its own tokenizer from the model directory it is given and encodes the texts posted to
// it, one at a time, so a long prompt never holds the scheduler's event loop.
import { parentPort, workerData } from "node:worker_threads"
import { loadTokenizer } from "../models/tokenizer.ts"

export interface EncodeJob {
  readonly id: number
  readonly text: string
}
export type EncodeDone = { readonly id: number; readonly ids: Int32Array } | { readonly id: number; readonly error: string }

const tokenizer = loadTokenizer((workerData as { dir: string }).dir)
parentPort!.on("message", ({ id, text }: EncodeJob) => {
  let done: EncodeDone
  try {
    done = { id, ids: Int32Array.from(tokenizer.encode(text)) }
  } catch (e) {
    done = { id, error: (e as Error)?.message ?? String(e) }
  }
  parentPort!.postMessage(done, "ids" in done ? [done.ids.buffer as ArrayBuffer] : [])
})
