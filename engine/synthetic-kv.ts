// Random KV for decode benchmarks (the KV counterpart of dummy weights): fills a model's
// cache with `tokens` tokens of uniform random keys and values on the GPU, as if a prompt
// had been prefilled, without the quadratic prefill. Under a tiered policy every chunk
// goes through the real sealing path (abstracts, read-back, host arena, disk); under
// quest the page abstracts are computed as in prefill. Attention over random keys is
// nearly uniform, so selection has no locality to exploit: a pessimistic case for hit
// rates, and no measure of quality.
import { encodeAll } from "./buffers.ts"
import { gpuFiller, type GpuModel } from "./model.ts"

/** Appends `tokens` random tokens of KV to the model's (empty) cache. */
export const synthesizeKv = async (model: GpuModel, tokens: number, seed = 1, amplitude = 1): Promise<void> => {
  if (model.length !== 0) throw new RangeError("synthesizeKv wants an empty cache (reset the model first)")
  if (tokens > model.maxContext) throw new RangeError(`${tokens} tokens exceed the context of ${model.maxContext}`)
  const device = model.gpu.device
  const fill = await gpuFiller(model.gpu, model.pipelines)
  const fillBuffer = (buffer: GPUBuffer, bytes: number, s: number) => {
    // In pieces the binding size allows; halves (2 bytes) are the fill's unit.
    const piece = Math.floor(Math.min(bytes, 1 << 30) / 256) * 256
    for (let at = 0; at < bytes; at += piece) {
      const n = Math.min(piece, bytes - at)
      if (!fill(buffer, at / 2, n / 2, { kind: "random", seed: s + at / piece, amplitude })) throw new Error("synthesizeKv: unaligned fill")
    }
  }
  const t = model.tiered
  if (t) {
    const tailBytes = t.tailBlocks * (t.slotBytes / 2 / t.slotBlocks)
    for (let done = 0, batch = 0; done < tokens; batch++) {
      const n = Math.min(t.appendRoom, tokens - done)
      t.pools.forEach((p, l) => {
        fillBuffer(p.k, tailBytes, seed + batch * 7919 + l * 2)
        fillBuffer(p.v, tailBytes, seed + batch * 7919 + l * 2 + 1)
      })
      for (let i = 0; i < n; i++) t.append()
      t.seal()
      await t.settle()
      done += n
    }
    return
  }
  const kv = model.kv
  const poolBytes = model.kv.layers[0].k.size
  kv.layers.forEach((p, l) => {
    fillBuffer(p.k, poolBytes, seed + l * 2)
    fillBuffer(p.v, poolBytes, seed + l * 2 + 1)
  })
  for (let i = 0; i < tokens; i++) kv.append()
  const sparse = model.sparse
  if (sparse) {
    const full = Math.floor(tokens / kv.blockTokens)
    sparse.queueAbstracts(kv.blockList.slice(0, full))
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    encodeAll(pass, kv.layers.map((_, l) => sparse.abstractOf(l)))
    pass.end()
    device.queue.submit([encoder.finish()])
    sparse.queueAbstracts([])
    sparse.invalidate()
  }
  await device.queue.onSubmittedWorkDone()
}
