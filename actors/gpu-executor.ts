// The gpu-executor actor: owns the WebGPU device, the model weights and the KV pool, and
// runs one generation at a time (its mailbox serialises runs). A run is one control
// message in (RunRequest) and, per decode step, one 8-byte token event out on the run's
// token subject; the reply carries the ids and timings. Cancel and describe bypass the
// mailbox so that they are answered while a run is in progress.
import type { NatsConnection } from "@nats-io/nats-core"
import { acquireGpu, type Gpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import type { WeightSource } from "../models/types.ts"
import type { DiskStore } from "./disk-store/store.ts"
import type { HostArena } from "./host-cache/arena.ts"
import { kvEngineOptions } from "../engine/kv-setup.ts"
import type { ResolvedPolicy } from "../protocol/policy.ts"
import type { KvStats } from "../protocol/messages.ts"
import { leoamError } from "../protocol/errors.ts"
import { CancelRequest, type ModelDescription, RunRequest, type RunResult } from "../protocol/internal.ts"
import { internalSubjects } from "../protocol/subjects.ts"
import type { ActorDefinition } from "./actor.ts"
import { decodeAs } from "./nats.ts"

export interface GpuExecutorOptions {
  /** Opens the weights (called again when the actor restarts). */
  readonly openWeights: () => WeightSource
  readonly maxContext?: number
  readonly device?: "auto" | "gpu" | "cpu"
  /** The KV policy and, for the tiered ones, the GPU budget and the host and disk tiers. */
  readonly kv?: { readonly policy: ResolvedPolicy; readonly gpuBudgetBytes?: number; readonly arena?: HostArena; readonly store?: DiskStore }
}

export interface GpuExecutorState {
  readonly gpu: Gpu
  readonly model: GpuModel
  readonly description: ModelDescription
  readonly cancelled: Set<string>
  current: string | undefined
  runs: number
  tokens: number
  /** KV counters summed over every run (tiered policies). */
  readonly kvTotals: KvTotals
}

/** Totals over runs of the per-request KV counters. */
export interface KvTotals {
  gpu: { hits: number; misses: number; bytes_read: number }
  host: { hits: number; misses: number; bytes_read: number; bytes_written: number }
  disk: { hits: number; bytes_read: number; bytes_written: number }
  steps: number
  chunks_sealed: number
}

const emptyTotals = (): KvTotals => ({
  gpu: { hits: 0, misses: 0, bytes_read: 0 },
  host: { hits: 0, misses: 0, bytes_read: 0, bytes_written: 0 },
  disk: { hits: 0, bytes_read: 0, bytes_written: 0 },
  steps: 0,
  chunks_sealed: 0,
})

const addTotals = (t: KvTotals, kv: KvStats): void => {
  for (const tier of ["gpu", "host", "disk"] as const) {
    const into = t[tier] as Record<string, number>
    const from = kv[tier] as Record<string, number>
    for (const k of Object.keys(into)) into[k] += from[k] ?? 0
  }
  t.steps += kv.steps
  t.chunks_sealed += kv.chunks_sealed
}

/** A token event: (index, id) as two little-endian u32. */
export const encodeToken = (index: number, id: number): Uint8Array => new Uint8Array(Uint32Array.of(index, id).buffer)
export const decodeToken = (data: Uint8Array): { index: number; id: number } => {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  return { index: view.getUint32(0, true), id: view.getUint32(4, true) }
}

export const gpuExecutor = (nc: NatsConnection, options: GpuExecutorOptions): ActorDefinition<GpuExecutorState> => ({
  name: "gpu-executor",
  mailbox: 64,
  start: async () => {
    const gpu = await acquireGpu({ prefer: options.device ?? "auto" })
    const source = options.openWeights()
    try {
      const c = source.config
      const maxContext = Math.min(options.maxContext ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings)
      const kv = options.kv
      const kvOptions = kv
        ? kvEngineOptions(kv.policy, { gpuBudgetBytes: kv.gpuBudgetBytes, arena: kv.arena, store: kv.store, session: `executor-${process.pid}` }, c, maxContext)
        : {}
      const model = await GpuModel.load(gpu, source, { maxContext, ...kvOptions })
      const description: ModelDescription = {
        name: c.name,
        context_length: model.maxContext,
        vocab_size: c.vocabSize,
        layers: c.numLayers,
        hidden_size: c.hiddenSize,
        heads: c.numHeads,
        kv_heads: c.numKvHeads,
        eos_ids: [...c.eosTokenIds],
        device: gpu.adapterName,
      }
      return { gpu, model, description, cancelled: new Set(), current: undefined, runs: 0, tokens: 0, kvTotals: emptyTotals() }
    } finally {
      source.close()
    }
  },
  stop: async (s) => s.model.destroy(),
  stats: (s) => ({
    runs: s.runs,
    tokens: s.tokens,
    current_run: s.current ?? null,
    context_length: s.model.maxContext,
    kv_policy: options.kv?.policy.name ?? "full",
    ...(s.model.tiered ? { kv_totals: s.kvTotals } : {}),
  }),
  handlers: [
    [
      internalSubjects.executorRun,
      async (s, body): Promise<RunResult> => {
        const req = decodeAs(RunRequest, body)
        if (req.ids.length + 1 > s.model.maxContext) {
          throw leoamError("context_overflow", `the prompt has ${req.ids.length} tokens; the context holds ${s.model.maxContext}`)
        }
        if (req.ids.some((id) => id >= s.description.vocab_size)) throw leoamError("invalid_ids", `a token id is outside the vocabulary (0..${s.description.vocab_size - 1})`)
        s.current = req.run_id
        s.runs++
        try {
          const maxTokens = Math.min(req.max_tokens, s.model.maxContext - req.ids.length)
          const r = await generate(s.model, req.ids, {
            maxTokens,
            temperature: req.temperature,
            topP: req.top_p,
            topK: req.top_k,
            seed: req.seed,
            stopIds: req.stop_ids,
            onToken: (id, index) => {
              nc.publish(req.tokens, encodeToken(index, id))
              s.tokens++
              return s.cancelled.has(req.run_id)
            },
          })
          const cancelled = s.cancelled.has(req.run_id)
          const kv = s.model.tierStats()
          if (kv) addTotals(s.kvTotals, kv)
          return {
            run_id: req.run_id,
            ids: r.ids,
            finish_reason: cancelled ? "cancelled" : r.finishReason,
            prefill_ms: r.timings.prefillMs,
            decode_ms_per_token: r.timings.decodeMsPerToken,
            total_ms: r.timings.totalMs,
            ...(kv ? { kv } : {}),
          }
        } finally {
          s.cancelled.delete(req.run_id)
          s.current = undefined
        }
      },
    ],
  ],
  immediate: [
    [
      internalSubjects.executorCancel,
      async (s, body) => {
        const { run_id } = decodeAs(CancelRequest, body)
        s.cancelled.add(run_id)
        // Cancels of runs that never come would pile up: keep only recent ones.
        if (s.cancelled.size > 1024) s.cancelled.delete(s.cancelled.values().next().value!)
        return { ok: true }
      },
    ],
    [internalSubjects.executorDescribe, async (s) => s.description],
  ],
})
