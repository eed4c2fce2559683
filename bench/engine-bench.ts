// The engine benchmark (issue 2), one run, side by side on one device:
//   (a) a WGSL copy kernel's bandwidth (the ceiling) and the GEMV kernel's bandwidth at
//       8192x8192 fp16 for several tunings, as a fraction of the copy;
//   (b) decode ms/token at the shapes of a dummy model (default Llama-3.1-8B), 1K context,
//       batch 1, tokens chosen on the GPU and steps submitted back to back, with the engine's
//       default setup; side by side with the GEMV tunings of (a) and with run 9's setup;
//   (c) prefill time of a long prompt (default 8K tokens) at those shapes.
// Prints a table and writes JSON (--out). Timing starts right after warm-up (DESIGN §6).
import { writeFileSync } from "node:fs"
import { Command } from "commander"
import { bind, readBack, storageBuffer, Uniform } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu, type Gpu } from "../engine/gpu.ts"
import { type GemvOp, type GemvTuning, gemvKey, gemvRowsPerGroup, gemvShapes } from "../engine/gemv-tuning.ts"
import { fullKv } from "../engine/kv/registry.ts"
import { type DecodeOptions, GpuModel } from "../engine/model.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { gemvUniform } from "../engine/model-resources.ts"
import { done, FilteredStep, fillRandom, median, run9Tuning, timeKernel } from "./gpu-timing.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { parameterCount } from "../models/layout.ts"

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]

const benchKernels = async (gpu: Gpu, rowsN: number, colsK: number, quick: boolean) => {
  const device = gpu.device
  const pipelines = new Pipelines(gpu)
  // Copy ceiling: 4 pairs of 256 MiB buffers (larger than any L2) rotated.
  const copyBytes = quick ? 16 << 20 : Math.min(256 << 20, Math.floor(gpu.limits.maxStorageBufferBindingSize / 4096) * 4096)
  const pairs = Array.from({ length: 4 }, (_, i) => [storageBuffer(device, `copy src ${i}`, copyBytes), storageBuffer(device, `copy dst ${i}`, copyBytes)] as const)
  const copy = await pipelines.get({ op: "copy" })
  const copyU = new Uniform(device, "copy", "uuuu")
  const copyGroups = Math.min(65535, Math.ceil(copyBytes / 16 / 256))
  copyU.set(copyBytes / 16, copyGroups * 256)
  const copyBinds = pairs.map(([s, d]) => bind(device, copy, [[0, copyU.buffer], [1, s], [2, d]]))
  const copyT = await timeKernel(device, 8, 5, (pass, r) => {
    pass.setPipeline(copy)
    pass.setBindGroup(0, copyBinds[r % 4])
    pass.dispatchWorkgroups(copyGroups)
  })
  const copyGBs = (2 * copyBytes) / copyT / 1e9
  const read = await pipelines.get({ op: "copy", flags: { READ: true } })
  const readBinds = pairs.map(([s, d]) => bind(device, read, [[0, copyU.buffer], [1, s], [2, d]]))
  const readT = await timeKernel(device, 8, 5, (pass, r) => {
    pass.setPipeline(read)
    pass.setBindGroup(0, readBinds[r % 4])
    pass.dispatchWorkgroups(copyGroups)
  })
  const readGBs = copyBytes / readT / 1e9
  for (const [s, d] of pairs) {
    s.destroy()
    d.destroy()
  }
  return { copyGBs, readGBs, ...(await benchGemv(gpu, rowsN, colsK, quick)) }
}

const benchGemv = async (gpu: Gpu, rowsN: number, colsK: number, quick: boolean) => {
  const device = gpu.device
  const pipelines = new Pipelines(gpu)
  // GEMV: 4 weight matrices rotated so that the L2 never holds the one being read.
  const wBytes = rowsN * colsK * 2
  const mats = Array.from({ length: 4 }, (_, i) => storageBuffer(device, `gemv W ${i}`, wBytes))
  await fillRandom(gpu, mats, 7, 0.04)
  const x = storageBuffer(device, "gemv x", colsK * 4)
  device.queue.writeBuffer(x, 0, Float32Array.from({ length: colsK }, (_, i) => Math.sin(i) * 0.5))
  const y = storageBuffer(device, "gemv y", rowsN * 4)
  const tunings: GemvTuning[] = quick
    ? [{ wg: 64, rows: 4 }]
    : [
        { wg: 256, rows: 4 }, { wg: 256, rows: 2 }, { wg: 256, rows: 8 }, { wg: 128, rows: 4 }, { wg: 128, rows: 8 },
        { wg: 128, rows: 2 }, { wg: 64, rows: 8 }, { wg: 512, rows: 4 }, { wg: 64, rows: 4 }, { wg: 64, rows: 2 }, { wg: 32, rows: 2 },
      ]
  if (gpu.hasSubgroups && !quick) {
    tunings.push(
      { kind: "sg", wg: 128, rows: 2, rpw: 8 }, { kind: "sg", wg: 128, rows: 2, rpw: 16 }, { kind: "sg", wg: 256, rows: 2, rpw: 16 },
      { kind: "sg", wg: 64, rows: 2, rpw: 4 }, { kind: "sg", wg: 128, rows: 4, rpw: 16 }, { kind: "sg", wg: 32, rows: 2, rpw: 2 },
      { kind: "sg", wg: 32, rows: 4, rpw: 4 }, { kind: "sg", wg: 256, rows: 4, rpw: 32 },
    )
  }
  const gemv = []
  for (const t of tunings) {
    const pipe = await pipelines.get(gemvKey(t))
    const groups = Math.ceil(rowsN / gemvRowsPerGroup(t))
    const u = gemvUniform(device, "gemv")
    u.set(rowsN, colsK, 1e-5, Math.min(groups, 65535))
    const binds = mats.map((m) => bind(device, pipe, [[0, u.buffer], [1, m], [2, x], [3, y]]))
    const sec = await timeKernel(device, 16, 7, (pass, r) => {
      pass.setPipeline(pipe)
      pass.setBindGroup(0, binds[r % 4])
      pass.dispatchWorkgroups(Math.min(groups, 65535), Math.ceil(groups / 65535))
    })
    // Correctness of the last matrix's product against the host, on a few rows.
    const got = new Float32Array(await readBack(device, y, 0, rowsN * 4))
    const gbs = (wBytes + colsK * 4 + rowsN * 4) / sec / 1e9
    gemv.push({ ...t, us: sec * 1e6, gbs, finite: got.every(Number.isFinite) })
  }
  for (const m of mats) m.destroy()
  x.destroy()
  y.destroy()
  const best = gemv.filter((g) => g.finite).sort((a, b) => b.gbs - a.gbs)[0]
  return { gemv, best }
}

/** The best GEMV tuning for each decode matrix of the model, measured here. */
const tuneModelGemvs = async (gpu: Gpu, config: ReturnType<typeof resolveDummyConfig>, quick: boolean) => {
  const shapes = gemvShapes(config)
  const out: Record<string, { rows: number; cols: number; best: GemvTuning & { gbs: number; us: number }; all: Array<GemvTuning & { gbs: number }> }> = {}
  for (const [op, [n, k]] of Object.entries(shapes)) {
    const r = await benchGemv(gpu, n, k, quick)
    out[op] = { rows: n, cols: k, best: r.best, all: r.gemv.map((g) => ({ kind: g.kind, wg: g.wg, rows: g.rows, rpw: g.rpw, gbs: g.gbs })) }
  }
  return out
}

/**
 * Decode ms/token of the model's own setup against others on the same weights, in
 * alternating rounds: `steps` pipelined steps at `context` tokens each time.
 */
const compareSetups = async (model: GpuModel, ids: number[], steps: number, others: Array<{ name: string; gemv?: (op: GemvOp) => GemvTuning; decode?: DecodeOptions }>) => {
  const device = model.gpu.device
  const runs = [{ name: "default", model }, ...(await Promise.all(others.map(async (o) => ({ name: o.name, model: await model.sibling(o) }))))]
  const times = runs.map(() => [] as number[])
  for (const r of runs) {
    r.model.reset()
    await r.model.prefill(ids)
    r.model.sample({ outSlot: 0, temperature: 0, seed: 0, step: 0 })
  }
  let slot = 0
  for (let round = 0; round < 3; round++) {
    for (const [i, r] of runs.entries()) {
      const at = r.model.length
      const step = () => {
        r.model.decode(slot, { outSlot: slot + 1, temperature: 0, seed: 0, step: slot + 1 })
        slot++
      }
      for (let k = 0; k < 8; k++) step()
      const t0 = performance.now()
      for (let k = 0; k < steps; k++) step()
      await done(device)
      times[i].push((performance.now() - t0) / steps)
      r.model.truncate(at)
    }
  }
  for (const r of runs.slice(1)) r.model.destroy()
  const base = median(times[0])
  return runs.map((r, i) => ({ name: r.name, msPerToken: times[i], median: median(times[i]), ratioToDefault: median(times[i]) / base }))
}

const benchModel = async (gpu: Gpu, preset: string, context: number, steps: number, prefillTokens: number, isolatedBest: (op: GemvOp) => GemvTuning) => {
  const config = resolveDummyConfig(preset)
  const source = new DummyWeightSource(config)
  const t0 = performance.now()
  const maxContext = Math.max(context + 2 * steps + 4 * 72 + 64, prefillTokens) + 16
  // The engine's defaults: GEMV tunings measured inside the decode step, both decode fusions.
  const model = await GpuModel.load(gpu, source, { maxContext, prefillChunk: 1024 })
  await done(gpu.device)
  const loadS = (performance.now() - t0) / 1000
  const device = gpu.device
  const rand = (n: number) => Array.from({ length: n }, (_, i) => (i * 7919 + 13) % config.vocabSize)

  // (b) decode at `context`: prefill, then warm-up steps immediately followed by timed steps.
  await model.prefill(rand(context))
  model.sample({ outSlot: 0, temperature: 0, seed: 0, step: 0 })
  let slot = 0
  /** Breakdowns: the step without some kernels (undefined: the engine's own step). */
  let filtered: FilteredStep | undefined
  const step = () => {
    model.decode(slot, { outSlot: slot + 1, temperature: 0, seed: 0, step: slot + 1 }, undefined, filtered?.open())
    slot++
  }
  for (let i = 0; i < 16; i++) step()
  await done(device)
  for (let i = 0; i < 4; i++) step() // keep the clocks up across the gap
  const tStart = performance.now()
  let cpuMs = 0
  for (let i = 0; i < steps; i++) {
    const c0 = performance.now()
    step()
    cpuMs += performance.now() - c0
  }
  await done(device)
  const pipelinedMs = (performance.now() - tStart) / steps
  // Synchronous steps (read the token back every step): the latency a client sees.
  const lat: number[] = []
  for (let i = 0; i < Math.min(steps, 48); i++) {
    const s0 = performance.now()
    step()
    await readBack(device, model.tokenIds, (slot % GpuModel.idSlots) * 4, 4)
    lat.push(performance.now() - s0)
  }
  const tokenCheck = new Uint32Array(await readBack(device, model.tokenIds, 0, 64))
  // Breakdown: the same pipelined steps with some kernels left out (timing only).
  const timeSteps = async (keep: ((kernel: string) => boolean) | undefined) => {
    filtered = keep ? new FilteredStep(device, keep) : undefined
    for (let i = 0; i < 8; i++) step()
    const s0 = performance.now()
    for (let i = 0; i < 64; i++) step()
    await done(device)
    filtered = undefined
    return (performance.now() - s0) / 64
  }
  const breakdown = {
    all: await timeSteps(undefined),
    withoutAttention: await timeSteps((k) => !k.startsWith("attn_")),
    gemvOnly: await timeSteps((k) => k.startsWith("gemv")),
  }
  const weightBytes = model.weights.bytes
  const setups = await compareSetups(model, rand(context), steps, [
    { name: "GEMVs tuned alone (a), fusions on", gemv: isolatedBest },
    { name: "run 9 setup (RoPE apart)", gemv: (op) => run9Tuning[op], decode: { fuseRope: false } },
  ])

  // (c) prefill of `prefillTokens` (0: skipped) from an empty cache, warmed by a short prefill first.
  let prefillMs = NaN
  if (prefillTokens > 0) {
    model.reset()
    await model.prefill(rand(256))
    await done(device)
    model.reset()
    const p0 = performance.now()
    await model.prefill(rand(prefillTokens))
    await done(device)
    prefillMs = performance.now() - p0
  }
  model.destroy()
  return {
    model: preset,
    params: parameterCount(config),
    weightBytes,
    loadS,
    context,
    steps,
    decodeMsPerToken: pipelinedMs,
    cpuEncodeMsPerToken: cpuMs / steps,
    syncStepMsP50: median(lat),
    syncStepMsP99: percentile(lat, 0.99),
    weightGBsAtDecode: weightBytes / (pipelinedMs / 1000) / 1e9,
    tokensValid: [...tokenCheck].every((t) => t < config.vocabSize),
    breakdown,
    setups,
    prefillTokens,
    prefillMs,
    prefillTokensPerS: prefillTokens / (prefillMs / 1000),
  }
}

/**
 * (d) Decode at a long context: full attention versus sparse (top-k blocks per KV head), two
 * models on one copy of the weights, the same prompt prefilled into both.
 */
const benchLongContext = async (gpu: Gpu, preset: string, context: number, budget: number, steps: number, gemvTuning: (op: GemvOp) => GemvTuning) => {
  const config = resolveDummyConfig(preset)
  const policy = { budgetTokens: budget, sinkTokens: 64, recentTokens: 256 }
  const sparse = await GpuModel.load(gpu, new DummyWeightSource(config), { maxContext: context + 4 * steps + 64, prefillChunk: 1024, gemv: gemvTuning, kv: { kind: "quest", policy } })
  const full = await sparse.sibling({ kv: fullKv })
  const device = gpu.device
  const ids = Array.from({ length: context }, (_, i) => (i * 7919 + 13) % config.vocabSize)
  const p0 = performance.now()
  await sparse.prefill(ids)
  await done(device)
  const prefillMs = performance.now() - p0
  await full.prefill(ids)
  const slots = new Map<GpuModel, number>()
  for (const model of [full, sparse]) {
    model.sample({ outSlot: 0, temperature: 0, seed: 0, step: 0 })
    slots.set(model, 0)
  }
  const time = async (model: GpuModel) => {
    let slot = slots.get(model)!
    for (let i = 0; i < 8; i++) model.decode(slot, { outSlot: ++slot, temperature: 0, seed: 0, step: slot })
    const t0 = performance.now()
    for (let i = 0; i < steps; i++) model.decode(slot, { outSlot: ++slot, temperature: 0, seed: 0, step: slot })
    await done(device)
    slots.set(model, slot)
    return (performance.now() - t0) / steps
  }
  const full1 = await time(full)
  const sparse1 = await time(sparse)
  const full2 = await time(full)
  const sparse2 = await time(sparse)
  full.destroy()
  sparse.destroy()
  return { context, policy, prefillMs, fullMsPerToken: [full1, full2], sparseMsPerToken: [sparse1, sparse2], speedup: (full1 + full2) / (sparse1 + sparse2) }
}

const program = new Command()
  .name("engine-bench")
  .description("Kernel bandwidth, decode latency and prefill time of the leoam engine on this machine's GPU.")
  .option("--model <preset>", "dummy model preset or config.json", "llama-3.1-8b")
  .option("--context <n>", "context length for decode", (v) => parseInt(v, 10), 1024)
  .option("--steps <n>", "timed decode steps", (v) => parseInt(v, 10), 128)
  .option("--prefill <n>", "prefill length (0: skip (c))", (v) => parseInt(v, 10), 8192)
  .option("--gemv-n <n>", "GEMV rows", (v) => parseInt(v, 10), 8192)
  .option("--gemv-k <n>", "GEMV columns", (v) => parseInt(v, 10), 8192)
  .option("--long-context <n>", "context of the full-vs-sparse decode comparison (0: skip)", (v) => parseInt(v, 10), 16384)
  .option("--sparse-budget <n>", "tokens per KV head per step in the sparse decode", (v) => parseInt(v, 10), 2048)
  .option("--quick", "tiny sizes (a smoke test on the CPU)")
  .option("--out <file>", "write the results as JSON")
  .parse()

const o = program.opts()
const gpu = await acquireGpu()
console.log(`device: ${gpu.adapterName} (${gpu.kind}), subgroups ${gpu.hasSubgroups}, max binding ${gpu.limits.maxStorageBufferBindingSize}`)
const kernels = await benchKernels(gpu, o.gemvN, o.gemvK, !!o.quick)
console.log(`\n(a) copy kernel: ${kernels.copyGBs.toFixed(0)} GB/s (read + write); read-only kernel: ${kernels.readGBs.toFixed(0)} GB/s`)
console.log(`    GEMV ${o.gemvN}x${o.gemvK} fp16:`)
console.log("    kernel   wg  rows  rpw      us     GB/s of copy of read")
for (const g of kernels.gemv) {
  const pct = (ceiling: number) => `${((100 * g.gbs) / ceiling).toFixed(1)}%`.padStart(7)
  console.log(`    ${(g.kind === "sg" ? "gemv_sg" : "gemv").padEnd(7)} ${String(g.wg).padStart(4)} ${String(g.rows).padStart(5)} ${String(gemvRowsPerGroup(g)).padStart(4)} ${g.us.toFixed(1).padStart(7)} ${g.gbs.toFixed(0).padStart(8)} ${pct(kernels.copyGBs)} ${pct(kernels.readGBs)}${g.finite ? "" : " (non-finite output!)"}`)
}
const tunings = await tuneModelGemvs(gpu, resolveDummyConfig(o.model), !!o.quick)
console.log(`\n    best GEMV tuning per matrix of ${o.model}:`)
for (const [op, t] of Object.entries(tunings)) {
  console.log(`    ${op.padEnd(5)} ${String(t.rows).padStart(6)}x${String(t.cols).padEnd(6)} ${t.best.kind === "sg" ? `gemv_sg wg ${t.best.wg} rows ${t.best.rows} rpw ${t.best.rpw}` : `gemv wg ${t.best.wg} rows ${t.best.rows}`}: ${t.best.us.toFixed(1)} us, ${t.best.gbs.toFixed(0)} GB/s`)
}
const tuning = (op: GemvOp): GemvTuning => ({ kind: tunings[op].best.kind, wg: tunings[op].best.wg, rows: tunings[op].best.rows, rpw: tunings[op].best.rpw })
const model = await benchModel(gpu, o.model, o.context, o.steps, o.prefill, tuning)
console.log(`\n(b) decode ${model.model} (dummy fp16, ${(model.weightBytes / 1e9).toFixed(2)} GB of weights), context ${model.context}, batch 1, the engine's default setup:`)
console.log(`    ${model.decodeMsPerToken.toFixed(3)} ms/token pipelined (${model.weightGBsAtDecode.toFixed(0)} GB/s of weights); host encode ${model.cpuEncodeMsPerToken.toFixed(3)} ms/token`)
console.log(`    synchronous step (token read back each step): p50 ${model.syncStepMsP50.toFixed(3)} ms, p99 ${model.syncStepMsP99.toFixed(3)} ms`)
const bd = model.breakdown
console.log(`    breakdown (ms/token): all ${bd.all.toFixed(3)}, without attention ${bd.withoutAttention.toFixed(3)}, GEMVs only ${bd.gemvOnly.toFixed(3)}`)
console.log(`    side by side, 3 alternating rounds of ${model.steps} steps (ms/token, median, ratio to the default):`)
for (const x of model.setups) console.log(`      ${x.name.padEnd(36)} ${x.msPerToken.map((v) => v.toFixed(3)).join(" / ")}  ${x.median.toFixed(3)}  ${x.ratioToDefault.toFixed(3)}`)
console.log(`    weight-bytes floor at the read-only ceiling: ${(model.weightBytes / kernels.readGBs / 1e6).toFixed(3)} ms/token`)
if (model.prefillTokens > 0) console.log(`(c) prefill ${model.prefillTokens} tokens: ${model.prefillMs.toFixed(0)} ms (${model.prefillTokensPerS.toFixed(0)} tokens/s)`)
const long = o.longContext > 0 ? await benchLongContext(gpu, o.model, o.longContext, o.sparseBudget, 64, tuning) : undefined
if (long) {
  console.log(`(d) decode at ${long.context} tokens of context (prefill ${long.prefillMs.toFixed(0)} ms), full attention vs sparse (budget ${long.policy.budgetTokens} tokens per KV head, sink ${long.policy.sinkTokens}, recent ${long.policy.recentTokens}), alternating:`)
  console.log(`    full ${long.fullMsPerToken.map((v) => v.toFixed(3)).join(" / ")} ms/token; sparse ${long.sparseMsPerToken.map((v) => v.toFixed(3)).join(" / ")} ms/token; speedup ${long.speedup.toFixed(2)}x`)
}
const result = { date: new Date().toISOString(), device: gpu.adapterName, argv: process.argv.slice(2), kernels, tunings, model, long }
if (o.out) writeFileSync(o.out, JSON.stringify(result, null, 2))
await releaseGpu()
