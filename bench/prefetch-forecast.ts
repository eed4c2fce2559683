// How well each prefetch forecast predicts a layer's choice (issue 13 §1), on the bundled test
// model's real attention (random-KV benchmarks cannot say: their layers share no likeness):
// greedy decoding after pass-key prompts under the default `leoam` policy, unpipelined (pipeline enabled false, so that
// every forecast lands before its layer), once without prefetch and once per forecast, `from`
// "choice" (layer l's chosen chunks), "query" (layer l + N's chunks scored against layer l's
// query) and "hidden" (InfiniGen's: against layer l + N's query projected from layer l's input).
// Per forecast: precision (forecast chunks the layer then chose) and recall (chosen chunks that
// were forecast), both over the chunks a layer scores (sink and recent, always chosen, left
// out); chunks loaded ahead and of them chosen, and whether the tokens are those without
// prefetch. The variants share one prefill and decode from the same state in turn (the GPU
// cache's content carries over, so misses are not compared). Prints a markdown table; --out
// writes JSON.
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

const list = (v: string) => v.split(",").map(Number)
const o = new Command()
  .option("--model <dir>", "model directory", new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  .option("--contexts <list>", "pass-key prompt lengths (tokens)", list, [2048, 6144, 11264])
  .option("--tokens <n>", "tokens generated per prompt and variant", Number, 16)
  .option("--layers <list>", "forecast distances N (prefetch.layers)", list, [1])
  .option("--from <list>", "forecasts", (v: string) => v.split(","), ["choice", "query", "hidden"])
  .option("--gpu-fraction <f>", "GPU KV budget as a fraction of the request's KV", Number, 0.25)
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts()

const gpu = await acquireGpu()
const tok = loadTokenizer(o.model)
const rows: Array<Record<string, unknown>> = []
const pct = (a: number, b: number) => (b > 0 ? `${((100 * a) / b).toFixed(1)} %` : "-")
console.log("| context | forecast | N | precision | recall | forecast / chosen chunks | loaded ahead (chosen) | late | tokens |")
console.log("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
// One prefill per prompt (all but its last token), then per variant: back to that length, the
// policy swapped live (prefetch applies at the next step), the last token and o.tokens decoded.
const fields = ["forecasts", "late", "visits", "chunks", "hits", "forecast_chunks", "chosen_chunks", "forecast_chosen"] as const
for (const context of o.contexts as number[]) {
  const p = passKeyPrompt(tok, context, passKey(context), 0.5)
  const variants: Array<{ from: string; layers: number }> = [{ from: "off", layers: 0 }]
  for (const layers of o.layers as number[]) for (const from of o.from as string[]) variants.push({ from, layers })
  const weights = openHfModel(o.model)
  const c = weights.config
  const tokens = p.ids.length + o.tokens + 8
  const kvBytes = tokens * kvBytesPerToken(c)
  const dir = mkdtempSync(join(tmpdir(), "leoam-prefetch-forecast-"))
  const store = DiskStore.open({ kvDir: dir })
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * 0.5) })
  const tiers = { gpuBudgetBytes: Math.floor(kvBytes * o.gpuFraction), arena, store, session: "f" }
  const options = (v: { from: string; layers: number }) => kvEngineOptions(parsePolicy({ name: "leoam", pipeline: { enabled: false }, ...(v.from === "off" ? {} : { prefetch: { layers: v.layers, from: v.from } }) }), tiers, c, tokens)
  const model = await GpuModel.load(gpu, weights, { maxContext: tokens, ...options(variants[0]) })
  try {
    const t0 = performance.now()
    await model.prefill(p.ids.slice(0, -1))
    await model.settle()
    const prefillS = (performance.now() - t0) / 1000
    let base: number[] | undefined
    for (const v of variants) {
      model.truncate(p.ids.length - 1)
      if (!model.swapKvPolicy(options(v))) throw new Error(`prefetch ${v.from} did not apply live`)
      const before = model.tierStats()!
      const got = await generate(model, p.ids.slice(-1), { maxTokens: o.tokens, temperature: 0, continue: true })
      await model.settle()
      const after = model.tierStats()!
      if (process.env.DEBUG) console.log(JSON.stringify(after.prefetch), after.steps, got.ids.length, model.kv.stats().selectiveSteps, model.length)
      const f = Object.fromEntries(fields.map((k) => [k, after.prefetch![k] - before.prefetch![k]])) as Record<(typeof fields)[number], number>
      base ??= got.ids
      const row = {
        context: p.ids.length,
        from: v.from,
        layers: v.layers,
        key_found: tok.decode(got.ids).includes(p.key),
        same_ids: JSON.stringify(got.ids) === JSON.stringify(base),
        gpu_misses: after.gpu.misses - before.gpu.misses,
        precision: f.forecast_chunks > 0 ? f.forecast_chosen / f.forecast_chunks : null,
        recall: f.chosen_chunks > 0 ? f.forecast_chosen / f.chosen_chunks : null,
        prefetch: f,
        prefill_s: prefillS,
      }
      rows.push(row)
      if (v.from === "off") continue
      console.log(
        `| ${row.context} | ${v.from} | ${v.layers} | ${pct(f.forecast_chosen, f.forecast_chunks)} | ${pct(f.forecast_chosen, f.chosen_chunks)} | ${f.forecast_chunks} / ${f.chosen_chunks} | ` +
          `${f.chunks} (${f.hits}) | ${f.late} of ${f.forecasts} | ${row.same_ids ? "same" : "DIFFER"}${row.key_found ? ", key found" : ", key missed"} |`,
      )
    }
  } finally {
    await model.settle().catch(() => undefined)
    model.destroy()
    await store.close()
    rmSync(dir, { recursive: true, force: true })
  }
}
if (o.out) writeFileSync(o.out, JSON.stringify({ date: new Date().toISOString(), argv: process.argv.slice(2), device: gpu.adapterName, gpu_fraction: o.gpuFraction, tokens: o.tokens, rows }, null, 2))
await releaseGpu()
