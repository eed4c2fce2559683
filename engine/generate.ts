// The generation loop over a GpuModel: prefill, then decode steps. Greedy and pure
// temperature sampling choose tokens on the GPU (argmax / Gumbel-max), so steps are
// submitted ahead and each token costs a 4-byte read-back that overlaps the next step;
// top-k / top-p read the logits back and sample on the host with the same seed.
import { GpuModel } from "./model.ts"
import { TAIL_SLACK_TOKENS } from "./kv/tiered/index.ts"
import { sampleCandidates, sampleHost, type Sampling } from "./sampling.ts"

export type { Sampling } from "./sampling.ts"

export interface GenerateOptions extends Sampling {
  readonly maxTokens: number
  /** Token ids that end generation (included in the output), e.g. EOS. */
  readonly stopIds?: ReadonlyArray<number>
  /** Called with every new token; return true to stop after it (stop strings). */
  readonly onToken?: (id: number, index: number) => boolean | void
  /** Called before each decode step is issued (the step boundary where a live policy change applies). */
  readonly beforeStep?: () => void
  /** Called after each prefill chunk. */
  readonly onPrefill?: (done: number, total: number) => void
  /** Continue the sequence the model holds (a resumed session) instead of starting a fresh one. */
  readonly continue?: boolean
}

export interface GenerateResult {
  readonly ids: number[]
  readonly finishReason: "length" | "stop"
  readonly promptTokens: number
  readonly timings: {
    readonly prefillMs: number
    readonly decodeMsPerToken: number
    readonly totalMs: number
  }
}

/** Candidates read back for top-p sampling without top-k. */
const TOP_P_CANDIDATES = 1024

/** Steps in flight before the loop waits for the oldest token (the tiered tail holds that many past a stop). */
const LAG = Math.min(4, TAIL_SLACK_TOKENS)

export class NumericalFailure extends Error {
  readonly code = "numerical_failure"
}

/** Generates from a fresh sequence (the model's cache is reset first), or after the one it holds (`continue`). */
export const generate = async (model: GpuModel, prompt: ReadonlyArray<number>, options: GenerateOptions): Promise<GenerateResult> => {
  const t0 = performance.now()
  if (!options.continue) model.reset()
  const base = model.length
  await model.prefill(prompt, false, options.onPrefill)
  const onGpu = options.temperature <= 0 || ((options.topK ?? 0) <= 0 && (options.topP ?? 1) >= 1)
  const result = onGpu ? await decodeOnGpu(model, options) : await decodeOnHost(model, options)
  const tEnd = performance.now()
  const decoded = Math.max(0, result.ids.length - 1)
  // Tokens computed past a stop are dropped from the cache so the sequence is exact.
  await model.settle()
  model.truncate(base + prompt.length + result.ids.length - 1)
  return {
    ids: result.ids,
    finishReason: result.finishReason,
    promptTokens: prompt.length,
    timings: {
      prefillMs: result.firstTokenAt - t0,
      decodeMsPerToken: decoded > 0 ? (tEnd - result.firstTokenAt) / decoded : 0,
      totalMs: tEnd - t0,
    },
  }
}

interface LoopResult {
  ids: number[]
  finishReason: "length" | "stop"
  firstTokenAt: number
}

const makeAccept = (model: GpuModel, options: GenerateOptions, out: LoopResult) => (id: number): boolean => {
  if (!(id >= 0 && id < model.config.vocabSize)) throw new NumericalFailure(`the model produced no valid token (id ${id}): NaN or infinite logits`)
  if (out.ids.length === 0) out.firstTokenAt = performance.now()
  out.ids.push(id)
  const stop = options.onToken?.(id, out.ids.length - 1) === true || (options.stopIds?.includes(id) ?? false)
  if (stop) out.finishReason = "stop"
  return stop || out.ids.length >= options.maxTokens
}

const decodeOnGpu = async (model: GpuModel, options: GenerateOptions): Promise<LoopResult> => {
  const out: LoopResult = { ids: [], finishReason: "length", firstTokenAt: 0 }
  const accept = makeAccept(model, options, out)
  const params = (step: number) => ({ outSlot: step, temperature: Math.max(0, options.temperature), seed: options.seed ?? 0, step })
  const reads = new ReadbackRing(model.gpu.device, LAG + 2)
  const pending: Array<Promise<number>> = []
  model.sample(params(0), reads.next(model.tokenIds, 0))
  pending.push(reads.take())
  let submitted = 1 // tokens whose computation is queued
  let stopped = false
  try {
    while (pending.length > 0 && !stopped) {
      // Queue ahead: step s consumes token s-1 and produces token s.
      while (submitted < options.maxTokens && pending.length < LAG && model.length < model.maxContext) {
        options.beforeStep?.()
        const issued = Promise.resolve(model.decode(submitted - 1, params(submitted), reads.next(model.tokenIds, submitted)))
        // The first token goes out while the first step's host work runs, not after it: a tiered
        // cache fills its compressed GPU slots there (GpuCache.warm). The GPU's order is unchanged.
        const first = out.ids.length === 0 ? pending.shift() : undefined
        if (first) {
          issued.catch(() => undefined) // awaited below: a failure while the first token is read is not left unhandled
          try {
            stopped = accept(await first)
          } catch (e) {
            await issued.catch(() => undefined) // the step ends before the error goes up
            throw e
          }
        }
        await issued
        pending.push(reads.take())
        submitted++
        if (stopped) break
      }
      if (stopped) break
      const id = await pending.shift()!
      if (accept(id)) break
      if (pending.length === 0 && submitted < options.maxTokens) break // context full
    }
  } finally {
    await Promise.allSettled(pending)
    reads.destroy()
  }
  return out
}

const decodeOnHost = async (model: GpuModel, options: GenerateOptions): Promise<LoopResult> => {
  const out: LoopResult = { ids: [], finishReason: "length", firstTokenAt: 0 }
  const accept = makeAccept(model, options, out)
  // Top-k reads back the k best logits; top-p alone the best 1024 and the softmax mass,
  // falling back to all logits when those do not hold the nucleus.
  const count = options.topK && options.topK > 0 ? options.topK : TOP_P_CANDIDATES
  for (let step = 0; ; step++) {
    const cand = await model.topCandidates(count, options.temperature)
    const id = sampleCandidates(cand.ids, cand.logits, cand, options, step) ?? sampleHost(await model.readLogits(), options, step)
    if (accept(id)) break
    if (model.length >= model.maxContext) break
    model.writeToken(step, id)
    options.beforeStep?.()
    await model.decode(step)
  }
  return out
}

/** A ring of small MAP_READ buffers for reading chosen token ids back without stalls. */
class ReadbackRing {
  private readonly buffers: GPUBuffer[]
  private index = 0
  private last: GPUBuffer | undefined

  constructor(device: GPUDevice, size: number) {
    this.buffers = Array.from({ length: size }, (_, i) =>
      device.createBuffer({ label: `token readback ${i}`, size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
    )
  }

  /** The copy to add after the step that writes tokenIds[slot]. */
  next(src: GPUBuffer, slot: number): { readonly src: GPUBuffer; readonly offset: number; readonly dst: GPUBuffer } {
    this.last = this.buffers[this.index++ % this.buffers.length]
    return { src, offset: (slot % GpuModel.idSlots) * 4, dst: this.last }
  }

  /** Maps the buffer of the last `next` (call after the submit) and resolves its id. */
  async take(): Promise<number> {
    const b = this.last!
    await b.mapAsync(GPUMapMode.READ)
    const id = new Uint32Array(b.getMappedRange())[0]
    b.unmap()
    return id
  }

  destroy(): void {
    for (const b of this.buffers) b.destroy()
  }
}
