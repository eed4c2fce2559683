// The gpu-executor actor: owns the WebGPU device, the model weights and the KV pool, and
// runs one generation at a time (its mailbox serialises runs). A run is one control
// message in (RunRequest) and, per decode step, one 8-byte token event out on the run's
// token subject; the reply carries the ids and timings. Cancel and describe bypass the
// mailbox so that they are answered while a run is in progress.
import type { NatsConnection } from "@nats-io/nats-core"
import { acquireGpu, type Gpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel, type KvOptions, KvRebuildError } from "../engine/model.ts"
import type { ModelConfig } from "../models/types.ts"
import type { WeightSource } from "../models/types.ts"
import type { DiskStore } from "../kv/disk-store.ts"
import type { HostArena } from "../kv/host-arena.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv-setup.ts"
import { parsePolicy, type ResolvedPolicy } from "../protocol/policy.ts"
import type { KvStats } from "../protocol/messages.ts"
import { leoamError } from "../protocol/errors.ts"
import { CancelRequest, type ModelDescription, PolicyChanged, PolicyCheck, RunRequest, type RunResult } from "../protocol/internal.ts"
import { internalSubjects } from "../protocol/subjects.ts"
import type { ActorDefinition } from "./actor.ts"
import { decodeAs } from "./nats.ts"

export interface GpuExecutorOptions {
  /** Opens the weights (called again when the actor restarts). */
  readonly openWeights: () => WeightSource
  readonly maxContext?: number
  readonly device?: "auto" | "gpu" | "cpu"
  /** The KV policy (default full) and its version, the GPU budget, and the host and disk tiers. */
  readonly kv?: ExecutorKv
}

export interface ExecutorKv {
  readonly policy: ResolvedPolicy
  /** The stored version of `policy` (0: not stored). */
  readonly version?: number
  readonly gpuBudgetBytes?: number
  readonly arena?: HostArena
  readonly store?: DiskStore
}

/** A policy version as the executor holds it: resolved, and as engine options. */
interface HeldPolicy {
  readonly version: number
  readonly resolved: ResolvedPolicy
  readonly engine: KvOptions
}

export interface GpuExecutorState {
  readonly gpu: Gpu
  /** Replaced when a policy change needs a new KV cache (between runs). */
  model: GpuModel
  readonly description: ModelDescription
  readonly cancelled: Set<string>
  current: string | undefined
  runs: number
  tokens: number
  /** The policy the engine runs, and one accepted but not yet applied. */
  policy: HeldPolicy
  pending: HeldPolicy | undefined
  readonly totals: ExecutorTotals
}

/** Totals over runs of the per-request KV counters. */
export interface KvTotals {
  gpu: { hits: number; misses: number; bytes_read: number }
  host: { hits: number; misses: number; bytes_read: number; bytes_written: number }
  disk: { hits: number; bytes_read: number; bytes_written: number }
  steps: number
  chunks_sealed: number
}

/** Everything the executor has done since it started (admin stats). */
export interface ExecutorTotals {
  readonly kv: KvTotals
  /** Decode steps and their wall time; the tiered cache's share of it by phase. */
  decodeSteps: number
  decodeMs: number
  readonly kvMs: { select: number; transfer: number; seal: number; attention: number }
  prefillTokens: number
  prefillMs: number
}

const emptyTotals = (): ExecutorTotals => ({
  kv: {
    gpu: { hits: 0, misses: 0, bytes_read: 0 },
    host: { hits: 0, misses: 0, bytes_read: 0, bytes_written: 0 },
    disk: { hits: 0, bytes_read: 0, bytes_written: 0 },
    steps: 0,
    chunks_sealed: 0,
  },
  decodeSteps: 0,
  decodeMs: 0,
  kvMs: { select: 0, transfer: 0, seal: 0, attention: 0 },
  prefillTokens: 0,
  prefillMs: 0,
})

/** Adds a request's KV counters; phase times only from `atDecode` on (decode steps, not prefill). */
const addKv = (t: ExecutorTotals, kv: KvStats, atDecode: KvStats["time_ms"] | undefined): void => {
  for (const tier of ["gpu", "host", "disk"] as const) {
    const into = t.kv[tier] as Record<string, number>
    const from = kv[tier] as Record<string, number>
    for (const k of Object.keys(into)) into[k] += from[k] ?? 0
  }
  t.kv.steps += kv.steps
  t.kv.chunks_sealed += kv.chunks_sealed
  for (const k of Object.keys(t.kvMs) as Array<keyof ExecutorTotals["kvMs"]>) t.kvMs[k] += kv.time_ms[k] - (atDecode?.[k] ?? kv.time_ms[k])
}

/** The executor's view for admin stats: residency and budgets, totals, the policy versions. */
export const executorStats = (s: GpuExecutorState, gpuBudget: number | undefined) => {
  const kv = s.model.tierStats()
  const m = s.model
  return {
    policy: { name: s.policy.resolved.name, active_version: s.policy.version, pending_version: s.pending?.version ?? null },
    gpu: kv ? { budget_bytes: kv.gpu.budget_bytes, resident_bytes: kv.gpu.resident_bytes } : { budget_bytes: gpuBudget ?? null, resident_bytes: m.length * kvBytesPerToken(m.config) },
    host: kv ? { budget_bytes: kv.host.budget_bytes, resident_bytes: kv.host.resident_bytes } : undefined,
    runs: s.runs,
    tokens: s.tokens,
    current_run: s.current ?? null,
    totals: s.totals,
  }
}
export type ExecutorStats = ReturnType<typeof executorStats>

/** A token event: (index, id) as two little-endian u32. */
export const encodeToken = (index: number, id: number): Uint8Array => new Uint8Array(Uint32Array.of(index, id).buffer)
export const decodeToken = (data: Uint8Array): { index: number; id: number } => {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  return { index: view.getUint32(0, true), id: view.getUint32(4, true) }
}

export const gpuExecutor = (nc: NatsConnection, options: GpuExecutorOptions): ActorDefinition<GpuExecutorState> => {
  const kv = options.kv
  const session = `executor-${process.pid}`
  /** Engine options of a policy for this executor's model and tiers (throws kv_budget_too_small and the like). */
  const engineOf = (policy: ResolvedPolicy, config: ModelConfig, maxContext: number): KvOptions =>
    kvEngineOptions(policy, { gpuBudgetBytes: kv?.gpuBudgetBytes, arena: kv?.arena, store: kv?.store, session }, config, maxContext)

  /** At a step boundary: applies the pending policy if it is a live swap (same KV manager and chunk size). */
  const applyAtStep = (s: GpuExecutorState): boolean => {
    const next = s.pending
    if (!next) return false
    try {
      if (!s.model.swapKvPolicy(next.engine)) return false
    } catch (e) {
      // Checked when it was set; a refusal now (another node's check) drops the change.
      process.stderr.write(`leoam gpu-executor: policy v${next.version} refused (${(e as Error).message}); staying on v${s.policy.version}\n`)
      s.pending = undefined
      return false
    }
    s.policy = next
    s.pending = undefined
    return true
  }

  /** At a request boundary: applies the pending policy, building a new KV cache if it needs one. */
  const applyAtRequest = async (s: GpuExecutorState): Promise<void> => {
    const next = s.pending
    if (!next || applyAtStep(s) || !s.pending) return
    try {
      s.model = await s.model.withKv(next.engine)
      s.policy = next
    } catch (e) {
      // Checked when it was set, so this is rare (e.g. GPU memory that went elsewhere): the
      // old setup is rebuilt and the change dropped; the request goes on under the old policy.
      if (!(e instanceof KvRebuildError)) throw e
      s.model = e.fallback
      process.stderr.write(`leoam gpu-executor: policy v${next.version} could not be applied (${e.message}); staying on v${s.policy.version}\n`)
    }
    s.pending = undefined
  }

  /** Validates a policy document against this executor (fit and when it would apply). */
  const check = (s: GpuExecutorState, document: unknown): { held: Omit<HeldPolicy, "version">; applies: "next_step" | "next_request" } => {
    const resolved = parsePolicy(document) // a PolicyError's code goes into the error reply as is
    const engine = engineOf(resolved, s.model.config, s.model.maxContext)
    return { held: { resolved, engine }, applies: s.model.checkKv(engine) }
  }

  return {
    name: "gpu-executor",
    mailbox: 64,
    start: async () => {
      const gpu = await acquireGpu({ prefer: options.device ?? "auto" })
      const source = options.openWeights()
      try {
        const c = source.config
        const maxContext = Math.min(options.maxContext ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings)
        let resolved = kv?.policy ?? parsePolicy("full")
        let version = kv?.version ?? 0
        // After a restart of this actor, the policy is the latest stored one, not the one it started with.
        const stored = kv?.store?.latestPolicy()
        if (stored && stored.version > version) {
          try {
            resolved = parsePolicy(stored.policy)
            version = stored.version
          } catch (e) {
            process.stderr.write(`leoam gpu-executor: stored policy v${stored.version} is not valid here (${(e as Error).message}); using v${version}\n`)
          }
        }
        const engine = engineOf(resolved, c, maxContext)
        const model = await GpuModel.load(gpu, source, { maxContext, ...engine })
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
        return {
          gpu,
          model,
          description,
          cancelled: new Set(),
          current: undefined,
          runs: 0,
          tokens: 0,
          policy: { version, resolved, engine },
          pending: undefined,
          totals: emptyTotals(),
        }
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
      kv_policy: s.policy.resolved.name,
      policy_version: s.policy.version,
      ...(s.model.tiered ? { kv_totals: s.totals.kv } : {}),
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
          await applyAtRequest(s)
          s.current = req.run_id
          s.runs++
          const model = s.model
          // The tiered cache's phase times at the end of prefill: the decode steps' share is what comes after.
          let atDecode: KvStats["time_ms"] | undefined
          // Decode steps issued (some may run past a stop and be dropped) and when the first began.
          let issued = 0
          let firstStepAt: number | undefined
          try {
            const maxTokens = Math.min(req.max_tokens, model.maxContext - req.ids.length)
            const r = await generate(model, req.ids, {
              maxTokens,
              temperature: req.temperature,
              topP: req.top_p,
              topK: req.top_k,
              seed: req.seed,
              stopIds: req.stop_ids,
              // A live policy change (selection, eviction) takes effect between decode steps.
              beforeStep: () => {
                if (issued++ === 0) {
                  firstStepAt = performance.now()
                  if (model.tiered) atDecode = model.tierStats()?.time_ms
                }
                if (s.pending) applyAtStep(s)
              },
              onToken: (id, index) => {
                nc.publish(req.tokens, encodeToken(index, id))
                s.tokens++
                return s.cancelled.has(req.run_id)
              },
            })
            const cancelled = s.cancelled.has(req.run_id)
            const stats = model.tierStats()
            const t = s.totals
            t.decodeSteps += issued
            t.decodeMs += firstStepAt === undefined ? 0 : performance.now() - firstStepAt
            t.prefillTokens += req.ids.length
            t.prefillMs += r.timings.prefillMs
            if (stats) addKv(t, stats, atDecode)
            return {
              run_id: req.run_id,
              ids: r.ids,
              finish_reason: cancelled ? "cancelled" : r.finishReason,
              prefill_ms: r.timings.prefillMs,
              decode_ms_per_token: r.timings.decodeMsPerToken,
              total_ms: r.timings.totalMs,
              ...(stats ? { kv: stats } : {}),
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
      [
        internalSubjects.executorPolicyCheck,
        async (s, body) => {
          const { policy } = decodeAs(PolicyCheck, body)
          return { applies: check(s, policy).applies }
        },
      ],
      [
        { broadcast: internalSubjects.policyChanged },
        async (s, body) => {
          const { version, policy } = decodeAs(PolicyChanged, body)
          // Versions only go up; a late or repeated broadcast changes nothing.
          if (version <= Math.max(s.policy.version, s.pending?.version ?? 0)) return { ok: true, version: s.policy.version }
          let held: Omit<HeldPolicy, "version">
          try {
            held = check(s, policy).held
          } catch (e) {
            // Accepted elsewhere (another node's check) but not here: this executor stays on its policy.
            process.stderr.write(`leoam gpu-executor: policy v${version} refused here (${(e as Error).message}); staying on v${s.policy.version}\n`)
            throw e
          }
          s.pending = { version, ...held }
          // Idle: a live swap applies now; a new KV cache waits for the next request.
          if (s.current === undefined) applyAtStep(s)
          return { ok: true, version }
        },
      ],
      [internalSubjects.executorStats, async (s) => executorStats(s, kv?.gpuBudgetBytes)],
    ],
  }
}
