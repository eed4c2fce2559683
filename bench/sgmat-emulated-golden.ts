// The tiny model's golden prompts with prefill's projections through kernels/gemm_sgmat.wgsl
// on a device without subgroup matrices (lavapipe): the kernel runs under the emulation of
// test/support/sgmat-emulation.ts, wired in exactly as on a GPU that has them (pipeline keys,
// dispatch widths, fused epilogues), so its f16 rounding of activations and the wiring are
// checked against Hugging Face's greedy ids and top-5 logits. The device is presented with
// 32-lane subgroups only for that choice (the emulation derives lanes from the invocation index).
//   npx tsx bench/sgmat-emulated-golden.ts [off]     (off: today's gemm, for the same table)
// Exits non-zero on a mismatch (the tolerance of bench/golden-check.ts). ~5 min on 2 cores.
import { readFileSync } from "node:fs"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { GpuModel } from "../engine/model.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { openHfModel } from "../models/safetensors.ts"
import { emulateSubgroupMatrices } from "../test/support/sgmat-emulation.ts"

interface Golden {
  prompt: string
  input_ids: number[]
  greedy_ids: number[]
  last_logits_top5: { ids: number[]; values: number[] }
}

const on = process.argv[2] !== "off"
const original = Pipelines.prototype.source
Pipelines.prototype.source = function (this: Pipelines, key) {
  const text = original.call(this, key)
  return key.op === "gemm_sgmat" ? emulateSubgroupMatrices(text, "xs", "w") : text
}
const real = await acquireGpu()
const gpu: Gpu = on ? { ...real, matrixF16: { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }, subgroupMinSize: 32, subgroupMaxSize: 32 } : real
const dir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const golden: Golden[] = JSON.parse(readFileSync(`${dir}/golden/hf-transformers-5.17-fp32.json`, "utf8"))
const source = openHfModel(dir)
const model = await GpuModel.load(gpu, source, { maxContext: 256 })
console.log(`prefill GEMMs: ${on ? "gemm_sgmat (emulated subgroup matrices)" : "gemm"} on ${real.adapterName}`)
let failures = 0
for (const g of golden) {
  model.reset()
  await model.prefill(g.input_ids)
  const logits = await model.readLogits()
  const rel = Math.max(...g.last_logits_top5.ids.map((id, k) => Math.abs(logits[id]! - g.last_logits_top5.values[k]!) / Math.abs(g.last_logits_top5.values[k]!)))
  const r = await generate(model, g.input_ids, { maxTokens: 32, temperature: 0 })
  const greedy = JSON.stringify(r.ids) === JSON.stringify(g.greedy_ids)
  const ok = greedy && rel <= 1e-2
  if (!ok) failures++
  console.log(`${ok ? "ok  " : "FAIL"} ${JSON.stringify(g.prompt)}: greedy ids ${greedy ? "equal" : "differ"}, top-5 max rel err ${rel.toExponential(2)}`)
}
model.destroy()
source.close()
await releaseGpu()
if (failures > 0) process.exit(1)
