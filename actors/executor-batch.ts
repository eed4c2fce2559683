// The gpu-executor's batched runs (continuous batching, issue 14): each run gets a lane, a
// sibling of the executor's model on its weights with a KV cache of its own sized for the
// run, and joins the engine's batch loop (engine/batch-loop.ts). A run is admitted when its
// KV fits: lanes of a policy that keeps all KV on the GPU reserve (prompt + max_tokens)
// tokens of KV against the GPU budget; tiered lanes get an equal share of the GPU budget
// each (budget / max batch) and share the host arena, whose overflow goes to disk
// (actors/kv-admission.ts: arrival order; serial runs, sessions, alone once the batch is
// empty). Only this module's functions change the lanes.
import { BatchLoop } from "../engine/batch-loop.ts"
import type { GenerateOptions, GenerateResult } from "../engine/generate.ts"
import { isTiered, kvBytesPerToken, kvEngineOptions, type KvTiers } from "../engine/kv/registry.ts"
import type { GpuModel } from "../engine/model.ts"
import type { TierStats } from "../engine/kv/tiered/index.ts"
import type { ResolvedPolicy } from "../protocol/policy.ts"
import { KvAdmission } from "./kv-admission.ts"

export interface BatchDeps {
  /** The executor's model now (the lanes' weights; replaced by a policy change). */
  readonly model: () => GpuModel
  /** The policy new lanes are built with. */
  readonly policy: () => ResolvedPolicy
  readonly tiers: Omit<KvTiers, "session">
  /** Key prefix of the lanes' chunks in the host arena and LMDB. */
  readonly session: string
  readonly maxBatch: number
  /** Prompt tokens prefilled between two decode steps. */
  readonly prefillSlice: number
  /** Before each batched decode step (a live policy change applies there). */
  readonly beforeStep: () => void
}

/** Extra tokens a lane holds beyond prompt + max_tokens (the tiered tail's slack). */
const LANE_SLACK = 16

export const executorBatch = (deps: BatchDeps) => {
  let loop: BatchLoop | undefined
  /** The lanes built, by run id. */
  const lanes = new Map<string, GpuModel>()
  let laneCount = 0
  const admission = new KvAdmission(deps.maxBatch, deps.tiers.gpuBudgetBytes)

  /** GPU bytes a run's lane reserves: all of its KV for a policy that keeps it on the GPU; a tiered lane's share is fixed. */
  const laneBytes = (policy: ResolvedPolicy, tokens: number): number => (isTiered(policy) ? 0 : Math.ceil(tokens / 16) * 16 * kvBytesPerToken(deps.model().config))

  return {
    /** Runs `prompt` in the batch once its KV is admitted; its lane is freed when it ends. */
    run: async (runId: string, prompt: ReadonlyArray<number>, options: GenerateOptions): Promise<{ r: GenerateResult; kv: TierStats | undefined }> => {
      const policy = deps.policy()
      const tokens = Math.min(prompt.length + options.maxTokens + LANE_SLACK, deps.model().maxContext)
      const bytes = laneBytes(policy, tokens)
      await admission.admit(bytes)
      try {
        const main = deps.model()
        const gpuBudgetBytes = isTiered(policy) && deps.tiers.gpuBudgetBytes !== undefined ? Math.floor(deps.tiers.gpuBudgetBytes / deps.maxBatch) : deps.tiers.gpuBudgetBytes
        const kv = kvEngineOptions(policy, { ...deps.tiers, gpuBudgetBytes, session: `${deps.session}-lane-${laneCount++}` }, main.config, tokens)
        const model = await main.sibling({ maxContext: tokens, ...kv })
        lanes.set(runId, model)
        loop ??= new BatchLoop(main, { capacity: deps.maxBatch, prefillSlice: deps.prefillSlice }, deps.beforeStep)
        try {
          const r = await loop.generate(model, prompt, options)
          return { r, kv: model.tierStats() }
        } finally {
          lanes.delete(runId)
          model.reset()
          model.destroy()
        }
      } finally {
        admission.release(bytes)
      }
    },

    /** Takes the executor alone (a serial run): once the batch is empty, holding new lanes back meanwhile. */
    enterSerial: (): Promise<void> => admission.enterSerial(),
    leaveSerial: (): void => admission.leaveSerial(),

    /** The batch for admin stats. */
    stats: () => ({
      max: deps.maxBatch,
      decoding: loop?.sizes.decoding ?? 0,
      prefilling: loop?.sizes.prefilling ?? 0,
      waiting_for_kv: admission.stats.waiting,
      kv_reserved_bytes: admission.stats.reservedBytes,
    }),

    /** The lanes' models (a live policy change swaps their selection too). */
    models: (): GpuModel[] => [...lanes.values()],

    destroy: () => loop?.destroy(),
  }
}

export type ExecutorBatch = ReturnType<typeof executorBatch>
