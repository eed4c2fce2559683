// Random KV for decode benchmarks (the KV counterpart of dummy weights): fills a model's
// cache with `tokens` tokens of uniform random keys and values on the GPU, as if a prompt
// had been prefilled, without the quadratic prefill. The KV manager appends them its own
// way: under a tiered policy every chunk goes through the real sealing path (abstracts,
// read-back, host arena, disk); under quest the page abstracts are computed as in
// prefill. Attention over random keys is nearly uniform, so selection has no locality to
// exploit: a pessimistic case for hit rates, and no measure of quality.
import { gpuFiller } from "./gpu-fill.ts"
import type { GpuModel } from "./model.ts"

/** Appends `tokens` random tokens of KV to the model's (empty) cache. */
export const synthesizeKv = async (model: GpuModel, tokens: number, seed = 1, amplitude = 1): Promise<void> => {
  if (model.length !== 0) throw new RangeError("synthesizeKv wants an empty cache (reset the model first)")
  if (tokens > model.maxContext) throw new RangeError(`${tokens} tokens exceed the context of ${model.maxContext}`)
  const fill = await gpuFiller(model.gpu, model.pipelines)
  const fillBuffer = (buffer: GPUBuffer, bytes: number, s: number, from: number) => {
    // In pieces the binding size allows; halves (2 bytes) are the fill's unit.
    const piece = Math.floor(Math.min(bytes, 1 << 30) / 256) * 256
    for (let at = from; at < bytes; at += piece) {
      const n = Math.min(piece, bytes - at)
      if (!fill(buffer, at / 2, n / 2, { kind: "random", seed: s + Math.floor((at - from) / piece), amplitude })) throw new Error("synthesizeKv: unaligned fill")
    }
  }
  await model.kv.appendSynthetic(tokens, (bytes, batch, from = 0) =>
    model.kv.pools.forEach((p, l) => {
      fillBuffer(p.k, bytes, seed + batch * 7919 + l * 2, from)
      fillBuffer(p.v, bytes, seed + batch * 7919 + l * 2 + 1, from)
    }),
  )
  await model.gpu.device.queue.onSubmittedWorkDone()
}
