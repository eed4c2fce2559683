// The KV registry (engine/kv/registry.ts) without a GPU: each policy name maps to its
// manager spec, the GPU budget refuses a policy that keeps all KV on the GPU when the
// context's KV does not fit, the tiered kind asks for the tiered partials and the windowed
// prefill, and a policy change is put to the running manager only within its own kind.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { kvApplies, kvBytesPerToken, kvEngineOptions, kvKindOf, type KvSpec, kvSwap } from "../engine/kv/registry.ts"
import type { KvApplies, KvManager } from "../engine/kv/manager.ts"
import { TIER_PARTIALS } from "../engine/kv/tiered/index.ts"
import { dummyPresets } from "../models/config.ts"
import { parsePolicy } from "../protocol/policy.ts"

const config = dummyPresets["llama-3.2-1b"]
const dir = mkdtempSync(join(tmpdir(), "leoam-registry-"))
const store = DiskStore.open({ kvDir: dir })
const arena = new HostArena({ budgetBytes: 1 << 20 })
const tiers = { arena, store, session: "s" }

afterAll(async () => {
  await store.close()
  rmSync(dir, { recursive: true, force: true })
})

describe("kvEngineOptions", () => {
  it("maps every policy name to its manager and mode", () => {
    const kindOf = (name: string) => {
      const spec = kvEngineOptions(parsePolicy(name), tiers, config, 1024).kv
      return spec.kind === "tiered" ? `tiered/${spec.policy.mode}` : spec.kind
    }
    expect(["full", "quest", "h2o", "leoam", "offload-all"].map(kindOf)).toEqual(["full", "quest", "h2o", "tiered/leoam", "tiered/offload-all"])
  })

  it("hands quest and h2o the policy's selection", () => {
    const spec = kvEngineOptions(parsePolicy({ name: "quest", selection: { topk: { budget_tokens: 256, sink_tokens: 16, recent_tokens: 64 } } }), tiers, config, 1024).kv
    expect(spec).toEqual({ kind: "quest", policy: { budgetTokens: 256, budgetFraction: undefined, sinkTokens: 16, recentTokens: 64 } })
  })

  it("refuses a policy that keeps all KV on the GPU when the context's KV exceeds the budget, and accepts it at the budget", () => {
    const need = 1024 * kvBytesPerToken(config)
    for (const name of ["full", "quest", "h2o"]) {
      expect(() => kvEngineOptions(parsePolicy(name), { ...tiers, gpuBudgetBytes: need - 1 }, config, 1024)).toThrow(expect.objectContaining({ code: "kv_budget_too_small" }))
      expect(kvEngineOptions(parsePolicy(name), { ...tiers, gpuBudgetBytes: need }, config, 1024).kv.kind).toBe(name === "full" ? "full" : name)
    }
  })

  it("wants the host arena and the disk store for the tiered policies", () => {
    expect(() => kvEngineOptions(parsePolicy("leoam"), { session: "s" }, config, 1024)).toThrow(/needs the host arena and the disk store/)
  })
})

describe("kvKindOf", () => {
  const sizes = { blockTokens: 16, maxContext: 1024, prefillChunk: 256 }
  const attnPrefill = { op: "attn_prefill" } as const
  it("sizes the partials for the whole context, or the tiered windows' shared partials", () => {
    const full = kvKindOf({ kind: "full" }, config, sizes, attnPrefill)
    expect(full.partials).toBe(Math.ceil(1024 / 16 / (256 / 16)))
    expect(full.pipelineKeys).toEqual([])
    const tiered = kvKindOf(kvEngineOptions(parsePolicy("leoam"), tiers, config, 1024).kv, config, sizes, attnPrefill)
    expect(tiered.partials).toBe(TIER_PARTIALS)
    expect(tiered.pipelineKeys).toContainEqual({ op: "attn_prefill", flags: { WINDOW: true } })
  })
})

describe("kvApplies", () => {
  /** A manager that only answers policy changes, recording what it was asked. */
  const fake = (answer: KvApplies) => {
    const asked: unknown[] = []
    const swapped: unknown[] = []
    const manager = { applies: (p: unknown) => (asked.push(p), answer), swap: (p: unknown) => void swapped.push(p) } as unknown as KvManager
    return { manager, asked, swapped }
  }
  const quest = (budgetTokens: number): KvSpec => ({ kind: "quest", policy: { budgetTokens, sinkTokens: 0, recentTokens: 0 } })

  it("puts a change within the same kind to the manager, and swaps in its policy", () => {
    const f = fake("next_step")
    expect(kvApplies(f.manager, quest(256), quest(512))).toBe("next_step")
    expect(f.asked).toEqual([{ budgetTokens: 512, sinkTokens: 0, recentTokens: 0 }])
    kvSwap(f.manager, quest(512))
    expect(f.swapped).toEqual([{ budgetTokens: 512, sinkTokens: 0, recentTokens: 0 }])
  })

  it("says next_request for another kind without asking the manager, and passes the manager's own answer on", () => {
    const f = fake("next_step")
    expect(kvApplies(f.manager, quest(256), { kind: "full" })).toBe("next_request")
    expect(f.asked).toEqual([])
    expect(kvApplies(fake("next_request").manager, quest(256), quest(512))).toBe("next_request")
  })
})
