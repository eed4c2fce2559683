// Adaptive chunks against fixed ones (issue 13 §3) on the bundled model: pass-key prompts at
// a selection budget, per chunking variant (fixed N tokens, or adaptive MIN..MAX), whether the
// key is found, the chunk abstracts the cache holds, tokens attended and bytes moved into the
// GPU chunk cache per decode step. The GPU budget holds the whole KV (GPU_FRACTION) so that
// what moves is what selection and the slot layout make move, not a budget squeeze. Prints a
// table, writes JSON (--json).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { generate } from "../engine/generate.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer } from "../models/tokenizer.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { passKey, passKeyPrompt } from "./passkey.ts"

const MODEL_DIR = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const GPU_FRACTION = 1.25
const HOST_FRACTION = 0.25
const list = <T>(f: (s: string) => T) => (v: string) => v.split(",").map((x) => f(x.trim()))

const o = new Command()
  .option("--contexts <list>", "pass-key prompt lengths in tokens", list(Number), [2048])
  .option("--depths <list>", "needle depths", list(Number), [0.2, 0.5, 0.8])
  .option("--budget <f>", "selection budget, a fraction of the context", Number, 0.05)
  .option("--variants <list>", "fixed<N> or adaptive<MIN>-<MAX>", list(String), ["fixed16", "fixed32", "adaptive16-256"])
  .option("--prefill-chunk <n>", "tokens per prefill pass (adaptive chunks are measured per pass)", Number, 512)
  .option("--json <file>", "write the results as JSON")
  .parse()
  .opts()

const chunkingOf = (v: string) => {
  const a = /^adaptive(\d+)-(\d+)$/.exec(v)
  if (a) return { adaptive: { min_tokens: Number(a[1]), max_tokens: Number(a[2]) } }
  const f = /^fixed(\d+)$/.exec(v)
  if (f) return { fixed: { tokens: Number(f[1]) } }
  throw new Error(`variant ${v}: fixed<N> or adaptive<MIN>-<MAX>`)
}

const gpu = await acquireGpu()
const tok = loadTokenizer(MODEL_DIR)
const rows: Array<Record<string, unknown>> = []
console.log(`adaptive chunks: tiny-leo-14m, budget ${(o.budget * 100).toFixed(0)} %, GPU ${GPU_FRACTION}x the KV, host ${HOST_FRACTION}x, on ${gpu.adapterName}, ${cpus().length} cores`)
for (const context of o.contexts as number[]) {
  for (const variant of o.variants as string[]) {
    const policy = parsePolicy({ name: "leoam", chunking: chunkingOf(variant), selection: { topk: { budget_fraction: o.budget, sink_tokens: 16, recent_tokens: 32 } } })
    const weights = openHfModel(MODEL_DIR)
    const tokens = context + 16
    const kvBytes = tokens * kvBytesPerToken(weights.config)
    const dir = mkdtempSync(join(tmpdir(), "leoam-adaptive-bench-"))
    const store = DiskStore.open({ kvDir: dir })
    const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * HOST_FRACTION) })
    const tiers = { gpuBudgetBytes: Math.floor(kvBytes * GPU_FRACTION), arena, store, session: "bench" }
    const model = await GpuModel.load(gpu, weights, { maxContext: tokens + 64, prefillChunk: o.prefillChunk, ...kvEngineOptions(policy, tiers, weights.config, tokens + 64) })
    try {
      for (const [i, depth] of (o.depths as number[]).entries()) {
        const p = passKeyPrompt(tok, context, passKey(100 + i), depth)
        const t0 = performance.now()
        const got = await generate(model, p.ids, { maxTokens: 6, temperature: 0 })
        const kv = model.tierStats()!
        const steps = Math.max(1, kv.steps)
        const row = {
          context,
          depth,
          variant,
          found: tok.decode(got.ids).includes(p.key),
          answer: tok.decode(got.ids),
          abstracts: kv.abstracts,
          tokens_per_step: +kv.tokens_selected_per_step.toFixed(1),
          upload_bytes_per_step: Math.round(kv.compression.upload_bytes / steps),
          tier_bytes_read_per_step: Math.round((kv.host.bytes_read + kv.disk.bytes_read) / steps),
          gpu_hits: kv.gpu.hits,
          gpu_misses: kv.gpu.misses,
          disk_bytes_stored: kv.bytes_stored.disk,
          ms: Math.round(performance.now() - t0),
        }
        rows.push(row)
        console.log(
          `  ${context} depth ${depth} ${variant.padEnd(16)} ${row.found ? "found " : "MISSED"} ${JSON.stringify(row.answer).padEnd(12)} abstracts ${String(row.abstracts).padStart(5)}, ` +
            `${row.tokens_per_step} tokens/step, ${row.upload_bytes_per_step} B uploaded/step, ${row.tier_bytes_read_per_step} B read from host+disk/step, GPU hits ${row.gpu_hits} misses ${row.gpu_misses}`,
        )
      }
    } finally {
      model.destroy()
      await store.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
if (o.json) writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), argv: process.argv.slice(2), device: gpu.adapterName, cores: cpus().length, rows }, null, 2))
await releaseGpu()
