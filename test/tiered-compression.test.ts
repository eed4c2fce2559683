// The tiered cache with compressed chunks on the test model (lavapipe): int8 in the host and
// disk tiers still finds a 2K-token pass key, and a live policy change of compression.bits
// mid-generation applies at the next step: chunks sealed after it are stored at the new bits,
// those before keep theirs, and both are read back in the same run.
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { generate } from "../engine/generate.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { chunkBytesAt } from "../kv/quant.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { useBundledModel } from "./support/bundled-model.ts"

const bundled = useBundledModel()

const tiered = async (policy: unknown, fractions: { gpu: number; host: number }, tokens: number) => {
  const c = bundled.config
  const kvBytes = tokens * kvBytesPerToken(c)
  const store = DiskStore.open({ kvDir: mkdtempSync(join(tmpdir(), "leoam-tierq-")) })
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * fractions.host) })
  const tiers = { gpuBudgetBytes: Math.floor(kvBytes * fractions.gpu), arena, store, session: "q" }
  const options = (p: unknown) => kvEngineOptions(parsePolicy(p), tiers, c, tokens + 64)
  const model = await bundled.load({ maxContext: tokens + 64, ...options(policy) })
  return { model, store, options, close: async () => (model.destroy(), await store.close()) }
}

describe("tiered KV cache with compressed chunks", () => {
  it("int8 in the host and disk tiers finds a 2K-token pass key with the GPU holding a fifth of the KV", async () => {
    const p = passKeyPrompt(bundled.tok, 2048, passKey(7), 0.6)
    const policy = { name: "leoam", chunking: { fixed: { tokens: 16 } }, selection: { topk: { budget_tokens: 256, sink_tokens: 16, recent_tokens: 32 } }, compression: { bits: 8 } }
    const t = await tiered(policy, { gpu: 0.2, host: 0.25 }, p.ids.length + 6)
    try {
      const got = await generate(t.model, p.ids, { maxTokens: 6, temperature: 0 })
      expect(bundled.tok.decode(got.ids)).toContain(p.key)
      const kv = t.model.tierStats()!
      expect(kv.disk.bytes_read).toBeGreaterThan(0)
      const dtypes = new Set(t.store.chunksOf("q", 0).map((c) => c.entry.dtype))
      expect([...dtypes]).toEqual(["int8"])
      // Every chunk written at int8: the bytes written are the int8 size of the sealed chunks.
      const c = t.model.config
      const perChunk = chunkBytesAt({ kvHeads: c.numKvHeads, blockTokens: 16, headDim: c.headDim }, 16, 8)
      expect(kv.disk.bytes_written).toBe(kv.chunks_sealed * perChunk)
      // Decode's GPU slots hold int8 chunks: more of them than fp16 slots in the same bytes, and uploads move int8 bytes.
      expect(kv.compression.slot_bits).toBe(8)
      expect(kv.compression.upload_bytes).toBeGreaterThan(0)
    } finally {
      await t.close()
    }
  }, 300_000)

  it("switches compression live within the slot bits: importance-mixed chunks before the change, int8 after it, both read back in the run", async () => {
    const ids = passKeyPrompt(bundled.tok, 700, passKey(5), 0.3).ids
    const policy = (bits: 16 | 8 | 4 | "importance") => ({ name: "leoam", selection: { topk: { budget_fraction: 1 } }, compression: { bits } })
    // The change comes before step 4; the chunk [704, 736) seals at step 35, after it, and is
    // read back by the steps after that (every chunk is attended). The tiers are sized for 72
    // steps (the least GPU budget is more than 30 % of 748 tokens' KV).
    const steps = 48
    const t = await tiered(policy("importance"), { gpu: 0.3, host: 0.3 }, ids.length + 72)
    try {
      // Another slot format (fp16 or int4 slots) is a new layout: it waits for the next request.
      expect(t.model.swapKvPolicy(t.options(policy(16)), true)).toBe(false)
      expect(t.model.checkKv(t.options(policy(4)))).toBe("next_request")
      let step = 0
      let swapped: boolean | undefined
      const got = await generate(t.model, ids, {
        maxTokens: steps,
        temperature: 0,
        beforeStep: () => {
          if (step++ === 4) swapped = t.model.swapKvPolicy(t.options(policy(8)))
        },
      })
      expect(swapped).toBe(true)
      expect(got.ids.length).toBe(steps)
      const layers = t.model.config.numLayers
      const prefill = Math.floor(ids.length / 32)
      const all = Array.from({ length: layers }, (_, l) => t.store.chunksOf("q", l).map((c) => c.entry.dtype))
      // Prefill's chunks by importance: the sink hot, the others hot or cold by their bound.
      const before = all.flatMap((d) => d.slice(0, prefill))
      expect(new Set(before)).toEqual(new Set(["int8", "int4"]))
      expect(all.every((d) => d[0] === "int8")).toBe(true)
      // Chunks sealed after the change: int8.
      expect(all.every((d) => d.at(-1) === "int8")).toBe(true)
      const kv = t.model.tierStats()!
      expect(kv.compression.slot_bits).toBe(8)
      expect(kv.compression.sealed.int4).toBeGreaterThan(0)
      expect(kv.host.hits + kv.disk.hits).toBeGreaterThan(0)
    } finally {
      await t.close()
    }
  }, 300_000)
})
