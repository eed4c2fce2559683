// Adaptive chunks per layer (issue 13 §3) on the test model (lavapipe): chunk sizes cut from
// the attention each prefill pass measures (kv/chunk-plan.ts) find a 2K-token pass key at a
// 5 % selection budget with at most a third of the abstracts that 16-token chunks need, and a
// live policy change between fixed and adaptive chunking applies at the next request.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import type { GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { useBundledModel } from "./support/bundled-model.ts"

const bundled = useBundledModel()

const adaptive = { name: "leoam", chunking: { adaptive: { min_tokens: 16, max_tokens: 256 } }, selection: { topk: { budget_fraction: 0.05, sink_tokens: 16, recent_tokens: 32 } } }
const fixed16 = { ...adaptive, chunking: { fixed: { tokens: 16 } } }

const tiered = async (policy: unknown, tokens: number) => {
  const c = bundled.config
  const kvBytes = tokens * kvBytesPerToken(c)
  const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-adaptive-")) })
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * 0.25) })
  // GPU room for the whole KV: an adaptive cache's slots each hold a largest (256-token) chunk.
  const tiers = { gpuBudgetBytes: Math.floor(kvBytes * 1.25), arena, store, session: "a" }
  const options = (p: unknown) => kvEngineOptions(parsePolicy(p), tiers, c, tokens + 64)
  const model = await bundled.load({ maxContext: tokens + 64, prefillChunk: 512, ...options(policy) })
  return { model, store, options, close: async (m: GpuModel) => (m.destroy(), await store.close()) }
}

describe("tiered KV cache with adaptive chunks", () => {
  it("finds a 2K-token pass key at a 5 % budget; a live change from 16-token chunks to adaptive ones applies at the next request, with at most a third of the abstracts", async () => {
    const p = passKeyPrompt(bundled.tok, 2048, passKey(11), 0.5)
    const t = await tiered(fixed16, p.ids.length + 6)
    let model = t.model
    try {
      const fixedGot = await generate(model, p.ids, { maxTokens: 6, temperature: 0 })
      const fixedKv = model.tierStats()!
      // Chunking is the cache's layout: the change waits for the next request (a new cache).
      expect(model.swapKvPolicy(t.options(adaptive))).toBe(false)
      expect(model.checkKv(t.options(adaptive))).toBe("next_request")
      model = await model.withKv(t.options(adaptive))
      const got = await generate(model, p.ids, { maxTokens: 6, temperature: 0 })
      const kv = model.tierStats()!
      console.log(
        `fixed 16: ${JSON.stringify(bundled.tok.decode(fixedGot.ids))} abstracts ${fixedKv.abstracts}, tokens/step ${fixedKv.tokens_selected_per_step.toFixed(1)}, read ${fixedKv.host.bytes_read + fixedKv.disk.bytes_read}; ` +
          `adaptive: ${JSON.stringify(bundled.tok.decode(got.ids))} abstracts ${kv.abstracts}, tokens/step ${kv.tokens_selected_per_step.toFixed(1)}, read ${kv.host.bytes_read + kv.disk.bytes_read}`,
      )
      expect(bundled.tok.decode(got.ids)).toContain(p.key)
      // Chunk sizes vary within the bounds, per layer.
      const sizes = Array.from({ length: model.config.numLayers }, (_, l) => t.store.chunksOf("a", l).map((c) => c.entry.tokens))
      for (const s of sizes.flat()) {
        expect(s % 16).toBe(0)
        expect(s).toBeGreaterThanOrEqual(16)
        expect(s).toBeLessThanOrEqual(256)
      }
      expect(new Set(sizes.flat()).size).toBeGreaterThan(1)
      expect(kv.abstracts).toBe(sizes.flat().length)
      expect(kv.abstracts * 3).toBeLessThanOrEqual(fixedKv.abstracts)
      expect(kv.bytes_stored.disk).toBeGreaterThan(0)
    } finally {
      await t.close(model)
    }
  }, 600_000)
})
