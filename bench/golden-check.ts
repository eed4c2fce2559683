// Correctness on whatever GPU this runs on (the H200 included): the tiny test model's four
// golden prompts (input ids, 32 greedy ids, top-5 logits) and a ~2K-token pass key. Exits
// non-zero on a mismatch, so a device run checks the kernels before timing them.
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { parsePolicy } from "../protocol/policy.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import type { GemvTuning } from "../engine/gemv-tuning.ts"
import { GpuModel } from "../engine/model.ts"
import { sampleCandidates, sampleHost } from "../engine/sampling.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer } from "../models/tokenizer.ts"
import { passKey, passKeyPrompt } from "./passkey.ts"

interface Golden {
  prompt: string
  input_ids: number[]
  greedy_ids: number[]
  last_logits_top5: { ids: number[]; values: number[] }
}

const [modelDir = "models/tiny-leo-14m", goldenFile = `${modelDir}/golden/hf-transformers-5.17-fp32.json`] = process.argv.slice(2)
const golden: Golden[] = JSON.parse(readFileSync(goldenFile, "utf8"))
const gpu = await acquireGpu()
console.log(`golden check on ${gpu.adapterName} (subgroups ${gpu.hasSubgroups}, matrix units for the GEMMs ${gpu.matrixF16 ? "on" : "off"}, for prefill attention ${gpu.matrixAttention ? (gpu.matrixAttentionSplit ? "on, split (attn_prefill_fa)" : gpu.matrixAttentionShared ? "on, OSHARED" : gpu.matrixAttentionDirect ? "on, KDIRECT" : "on") : "off"})`)
const tok = loadTokenizer(modelDir)
let failures = 0
// The default GEMV and, where the device has subgroups, the subgroup GEMV the benchmark may pick.
const tunings: Array<GemvTuning | undefined> = [undefined, ...(gpu.hasSubgroups ? [{ kind: "sg", wg: 128, rows: 2, rpw: 8 } as const, { kind: "sg", wg: 32, rows: 4, rpw: 4, unroll: 8 } as const] : [])]
let model!: GpuModel
for (const tuning of tunings) {
  model?.destroy()
  model = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 4096, gemv: tuning })
  console.log(`GEMV ${tuning ? JSON.stringify(tuning) : "default"}:`)
  for (const g of golden) {
    const ids = tok.encode(g.prompt)
    const idsOk = JSON.stringify(ids) === JSON.stringify(g.input_ids)
    model.reset()
    await model.prefill(ids)
    const logits = await model.readLogits()
    const rel = Math.max(...g.last_logits_top5.ids.map((id, k) => Math.abs(logits[id] - g.last_logits_top5.values[k]) / Math.abs(g.last_logits_top5.values[k])))
    const r = await generate(model, ids, { maxTokens: 32, temperature: 0 })
    const greedyOk = JSON.stringify(r.ids) === JSON.stringify(g.greedy_ids)
    const ok = idsOk && greedyOk && rel <= 1e-2
    if (!ok) failures++
    console.log(`${ok ? "ok  " : "FAIL"} ${JSON.stringify(g.prompt)}: input ids ${idsOk ? "equal" : "differ"}, greedy ids ${greedyOk ? "equal" : "differ"}, top-5 max rel err ${rel.toExponential(2)}`)
  }
}
const p = passKeyPrompt(tok, 2048, passKey(7), 0.5)
const r = await generate(model, p.ids, { maxTokens: 6, temperature: 0 })
const answer = tok.decode(r.ids)
const pkOk = answer.trim().startsWith(p.key)
if (!pkOk) failures++
console.log(`${pkOk ? "ok  " : "FAIL"} pass key at ${p.ids.length} tokens: expected ${p.key}, got ${JSON.stringify(answer)} (prefill ${r.timings.prefillMs.toFixed(1)} ms)`)
// Top-k / top-p from GPU candidates (select.wgsl VALUES, lse.wgsl) choose as sampling from all logits.
model.reset()
await model.prefill(golden[0].input_ids)
const all = await model.readLogits()
let sameChoice = true
for (const s of [{ temperature: 0.8, topK: 40 }, { temperature: 1.2, topP: 0.9 }]) {
  const cand = await model.topCandidates(s.topK ?? 1024, s.temperature)
  for (let seed = 0; seed < 16; seed++) sameChoice &&= sampleCandidates(cand.ids, cand.logits, cand, { ...s, seed }, seed) === sampleHost(all, { ...s, seed }, seed)
}
if (!sameChoice) failures++
console.log(`${sameChoice ? "ok  " : "FAIL"} top-k / top-p from GPU candidates equal sampling from all logits`)
model.destroy()
// Sparse decode attention (score/select kernels): the same pass key at a 256-token budget.
const sparse = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 4096, kv: { kind: "quest", policy: { budgetTokens: 256, sinkTokens: 16, recentTokens: 64 } } })
const rs = await generate(sparse, p.ids, { maxTokens: 6, temperature: 0 })
const sparseAnswer = tok.decode(rs.ids)
const sparseOk = sparseAnswer.trim().startsWith(p.key) && sparse.kvStats().selectiveSteps === 5
if (!sparseOk) failures++
console.log(`${sparseOk ? "ok  " : "FAIL"} sparse decode (256-token budget): expected ${p.key}, got ${JSON.stringify(sparseAnswer)} in ${sparse.kvStats().selectiveSteps} sparse steps`)
sparse.destroy()
// The tiered cache (windowed prefill, chunk sealing, staging, windows in decode): offload-all
// with a quarter of the KV on the GPU gives the same tokens as full attention; leoam at a
// 256-token budget finds the pass key.
for (const [name, doc] of [
  ["offload-all", { name: "offload-all" }],
  ["leoam", { name: "leoam", selection: { topk: { budget_tokens: 256, sink_tokens: 32, recent_tokens: 64 } } }],
] as const) {
  const kvDir = mkdtempSync(join(tmpdir(), "leoam-golden-kv-"))
  const store = DiskStore.open({ kvDir })
  const kvBytes = (p.ids.length + 8) * kvBytesPerToken(model.config)
  const arena = new HostArena({ budgetBytes: Math.floor(kvBytes / 4) })
  const options = kvEngineOptions(parsePolicy(doc), { gpuBudgetBytes: Math.floor(kvBytes / 4), arena, store, session: "golden" }, model.config, p.ids.length + 8)
  const t = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: p.ids.length + 8, ...options })
  const rt = await generate(t, p.ids, { maxTokens: 6, temperature: 0 })
  const ok = name === "offload-all" ? rt.ids.join() === r.ids.join() : tok.decode(rt.ids).trim().startsWith(p.key)
  if (!ok) failures++
  const kv = t.tierStats()!
  console.log(`${ok ? "ok  " : "FAIL"} tiered ${name} (GPU and host budgets 1/4 of the KV): got ${JSON.stringify(tok.decode(rt.ids))}; disk read ${kv.disk.bytes_read} B, ${kv.windows} windows`)
  t.destroy()
  await store.close()
  rmSync(kvDir, { recursive: true, force: true })
}
await releaseGpu()
process.exit(failures === 0 ? 0 : 1)
