// The tiny model's golden prompts with prefill's projections through kernels/gemm_sgmat.wgsl (or
// gemm_sgmat_staged.wgsl where LEOAM_MATRIX_GEMM_TILING names a staged tiling, e.g. 22.22.32)
// and/or its attention through kernels/attn_prefill_mx.wgsl on a device without subgroup
// matrices (lavapipe): the kernels run under the emulations of test/support/, wired in exactly
// as on a GPU that has them (pipeline keys, dispatch widths, fused epilogues, rows per
// workgroup), so their f16 rounding and the wiring are checked against Hugging Face's greedy
// ids and top-5 logits. The device is presented with 32-lane subgroups only for that choice
// (the emulations derive lanes from the invocation index).
//   npx tsx bench/sgmat-emulated-golden.ts [gemm|attn|attn-shared|attn-direct|attn-split|both|off]   (default gemm; off: today's kernels;
//   attn-shared: attention in its OSHARED form; attn-direct: in its KDIRECT form; attn-split:
//   kernels/attn_prefill_fa.wgsl, the keys split among subgroups)
// Exits non-zero on a mismatch (the tolerance of bench/golden-check.ts). ~5 min on 2 cores.
import { readFileSync } from "node:fs"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { GpuModel } from "../engine/model.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { openHfModel } from "../models/safetensors.ts"
import { emulateFlashAttention } from "../test/support/flash-emulation.ts"
import { emulateSubgroupMatrices } from "../test/support/sgmat-emulation.ts"

interface Golden {
  prompt: string
  input_ids: number[]
  greedy_ids: number[]
  last_logits_top5: { ids: number[]; values: number[] }
}

const mode = process.argv[2] ?? "gemm"
if (!["gemm", "attn", "attn-shared", "attn-direct", "attn-split", "both", "off"].includes(mode)) throw new Error(`mode: gemm, attn, attn-shared, attn-direct, attn-split, both or off, not ${mode}`)
const gemmOn = mode === "gemm" || mode === "both"
const attnOn = mode === "attn" || mode === "attn-shared" || mode === "attn-direct" || mode === "attn-split" || mode === "both"
const original = Pipelines.prototype.source
Pipelines.prototype.source = function (this: Pipelines, key) {
  const text = original.call(this, key)
  if (key.op === "gemm_sgmat" || key.op === "gemm_sgmat_staged") return emulateSubgroupMatrices(text, "xs", key.op === "gemm_sgmat" ? "w" : "ws")
  return key.op === "attn_prefill_mx" || key.op === "attn_prefill_fa" ? emulateFlashAttention(text) : text
}
const real = await acquireGpu()
const f16 = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }
const gpu: Gpu = mode === "off" ? real : { ...real, matrixF16: gemmOn ? f16 : undefined, matrixAttention: attnOn ? f16 : undefined, matrixAttentionShared: mode === "attn-shared", matrixAttentionDirect: mode === "attn-direct", matrixAttentionSplit: mode === "attn-split", subgroupMinSize: 32, subgroupMaxSize: 32 }
const dir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
const golden: Golden[] = JSON.parse(readFileSync(`${dir}/golden/hf-transformers-5.17-fp32.json`, "utf8"))
const source = openHfModel(dir)
const model = await GpuModel.load(gpu, source, { maxContext: 256 })
console.log(`prefill GEMMs: ${model.keys.gemm.op}, attention: ${model.keys.attnPrefill.op} (${JSON.stringify({ ...model.keys.attnPrefill.flags, ...model.keys.attnPrefill.constants })}; sgmat and mx emulated) on ${real.adapterName}`)
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
