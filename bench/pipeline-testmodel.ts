// The pipelined step on the bundled test model (real weights, so that choices persist from
// step to step as they do in a trained model, unlike tiered-bench's random weights): greedy
// decoding after a pass-key prompt under leoam, the pipeline off and on side by side at each
// GPU budget; prints ms/token, the GPU cache's hits and misses, the pipeline's counters and
// whether the ids are the same, and writes JSON (--out). --variants compares the combine and
// prefetch (issue 13 §1) instead: each against the first variant.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
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

const o = new Command()
  .option("--model <dir>", "model directory", new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  .option("--context <n>", "prompt tokens (a pass-key prompt)", (v) => Number(v), 2048)
  .option("--tokens <n>", "tokens generated", (v) => Number(v), 32)
  .option("--gpu-fractions <list>", "GPU KV budgets as fractions of the request's KV", "0.25,0.6")
  .option("--depths <list>", "pipeline depths (0: off), rewinding every miss as before the combine", "0,2")
  .option("--variants <list>", "instead of --depths: off, pipe, combine, prefetch, prefetch-query, prefetch-hidden, prefetch-only (pipelined ones at --depth)")
  .option("--depth <n>", "pipeline.depth of --variants", (v) => Number(v), 2)
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts()

const gpu = await acquireGpu()
const tok = loadTokenizer(o.model)
const p = passKeyPrompt(tok, o.context, passKey(11), 0.5)
const rows: Array<Record<string, unknown>> = []
const pipe = (combine: boolean) => ({ pipeline: { enabled: true, depth: o.depth, combine } })
// off and prefetch-only say pipeline enabled false (leoam's default) explicitly.
const unpiped = { pipeline: { enabled: false } }
const named: Record<string, object> = {
  off: unpiped,
  pipe: pipe(false),
  combine: pipe(true),
  prefetch: { ...pipe(true), prefetch: { layers: 1, from: "choice", steps: true } },
  "prefetch-query": { ...pipe(true), prefetch: { layers: 1, from: "query", steps: true } },
  "prefetch-hidden": { ...pipe(true), prefetch: { layers: 1, from: "hidden", steps: true } },
  "prefetch-only": { ...unpiped, prefetch: { layers: 1, from: "choice", steps: true } },
}
const variants: Array<{ label: string; depth: number; extra: object }> = o.variants
  ? String(o.variants)
      .split(",")
      .map((v) => {
        if (!(v in named)) throw new RangeError(`unknown variant ${v}: ${Object.keys(named).join(", ")}`)
        return { label: v, depth: (named[v] as { pipeline: { enabled: boolean } }).pipeline.enabled ? o.depth : 0, extra: named[v] }
      })
  : String(o.depths)
      .split(",")
      .map(Number)
      .map((depth) => ({ label: `depth ${depth}`, depth, extra: depth > 0 ? pipe(false) : unpiped }))
for (const fraction of String(o.gpuFractions).split(",").map(Number)) {
  for (const { label, depth, extra } of variants) {
    const weights = openHfModel(o.model)
    const c = weights.config
    const tokens = p.ids.length + o.tokens + 8
    const kvBytes = tokens * kvBytesPerToken(c)
    const dir = mkdtempSync(join(tmpdir(), "leoam-pipeline-testmodel-"))
    const store = DiskStore.open({ kvDir: dir })
    const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * 0.5) })
    const tiers = { gpuBudgetBytes: Math.floor(kvBytes * fraction), arena, store, session: "m" }
    const policy = { name: "leoam", chunking: { fixed: { tokens: 16 } }, selection: { topk: { budget_fraction: 0.1 } }, ...extra }
    const model = await GpuModel.load(gpu, weights, { maxContext: tokens, ...kvEngineOptions(parsePolicy(policy), tiers, c, tokens) })
    try {
      const got = await generate(model, p.ids, { maxTokens: o.tokens, temperature: 0 })
      const kv = model.tierStats()!
      const row = { gpu_fraction: fraction, variant: label, depth, ms_per_token: got.timings.decodeMsPerToken, key_found: tok.decode(got.ids).includes(p.key), ids: got.ids, gpu: { hits: kv.gpu.hits, misses: kv.gpu.misses }, pipeline: kv.pipeline, prefetch: kv.prefetch, layer_visits: kv.steps * c.numLayers }
      rows.push(row)
      const first = rows.find((r) => r.gpu_fraction === fraction)!
      const f = kv.prefetch
      console.log(
        `GPU ${fraction} of the KV, ${label}: ${row.ms_per_token.toFixed(1)} ms/token, GPU hits ${kv.gpu.hits} misses ${kv.gpu.misses} (decode; prefill windows ${kv.gpu.prefill_hits}/${kv.gpu.prefill_misses}), ` +
          `${kv.pipeline.layers_routed} of ${row.layer_visits} layer visits routed, ${kv.pipeline.rewinds} rewinds (${kv.pipeline.layers_rewound} layers recomputed), ${kv.pipeline.layers_combined ?? 0} combined; ` +
          (f && f.forecasts > 0 ? `prefetch ${f.chunks} chunks loaded, ${f.hits} chosen, ${f.wasted_bytes} bytes wasted, ${f.late} of ${f.forecasts} forecasts late; ` : "") +
          `key ${row.key_found ? "found" : "missed"}; ids ${first === row ? "-" : JSON.stringify(first.ids) === JSON.stringify(got.ids) ? `= ${first.variant}` : `DIFFER from ${first.variant}`}`,
      )
    } finally {
      await model.settle().catch(() => undefined)
      model.destroy()
      await store.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
if (o.out) writeFileSync(o.out, JSON.stringify({ date: new Date().toISOString(), argv: process.argv.slice(2), device: gpu.adapterName, context: p.ids.length, rows }, null, 2))
await releaseGpu()
