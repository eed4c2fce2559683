// A tiered KV cache on the bundled model for one test run: a disk store in a fresh temporary
// directory, a host arena and a GPU budget as fractions of the run's fp16 KV, and the model
// loaded with `policy`; then greedy generation with a hook before each step (live policy
// changes go through `options`). The tiered-* tests differ in their policies, budgets and
// what they read from the stats, not in this set-up.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { generate } from "../../engine/generate.ts"
import { kvBytesPerToken, kvEngineOptions } from "../../engine/kv/registry.ts"
import type { GpuModel } from "../../engine/model.ts"
import { DiskStore } from "../../kv/disk-store.ts"
import { HostArena } from "../../kv/host-arena.ts"
import { parsePolicy } from "../../protocol/policy.ts"
import type { BundledModel } from "./bundled-model.ts"

/** A policy document resolved into engine options for this run's tiers (a live swap passes these to swapKvPolicy). */
export type TieredOptions = (policy: unknown) => ReturnType<typeof kvEngineOptions>

export interface TieredBudgets {
  /** The GPU KV budget and the host arena, as fractions of the run's fp16 KV. */
  readonly gpu: number
  readonly host: number
  /** The temporary directory's prefix and the sequence's session name. */
  readonly name: string
}

export interface TieredModel {
  readonly model: GpuModel
  readonly store: DiskStore
  readonly options: TieredOptions
  /** Destroys the model, then closes the store. */
  close(): Promise<void>
}

/** The bundled model under `policy` with room for `tokens` tokens, on tiers sized by `b`. */
export const openTiered = async (bundled: BundledModel, policy: unknown, tokens: number, b: TieredBudgets): Promise<TieredModel> => {
  const c = bundled.config
  const kvBytes = tokens * kvBytesPerToken(c)
  const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), `leoam-${b.name}-`)) })
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * b.host) })
  const tiers = { gpuBudgetBytes: Math.floor(kvBytes * b.gpu), arena, store, session: b.name }
  const options: TieredOptions = (p) => kvEngineOptions(parsePolicy(p), tiers, c, tokens)
  const model = await bundled.load({ maxContext: tokens, ...options(policy) })
  return {
    model,
    store,
    options,
    close: async () => {
      model.destroy()
      await store.close()
    },
  }
}

/**
 * Greedy ids and tier stats of `policy` on `ids` then `maxTokens` decoded tokens (room for 8
 * more), `beforeStep` called before each decode step with its index; `keep` leaves the model
 * and store open for the caller to inspect and close.
 */
export const runTiered = async (
  bundled: BundledModel,
  policy: unknown,
  ids: ReadonlyArray<number>,
  maxTokens: number,
  b: TieredBudgets,
  beforeStep?: (model: GpuModel, step: number, options: TieredOptions) => void,
  keep = false,
) => {
  const t = await openTiered(bundled, policy, ids.length + maxTokens + 8, b)
  try {
    let step = 0
    const got = await generate(t.model, ids, { maxTokens, temperature: 0, beforeStep: () => beforeStep?.(t.model, step++, t.options) })
    return { ids: got.ids, kv: t.model.tierStats()!, ...t }
  } finally {
    if (!keep) await t.close()
  }
}
