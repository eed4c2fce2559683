// Decode lab (issue 2): where the time of one decode step goes at the shapes of a dummy
// model (default Llama-3.1-8B), and which decode setup is fastest, measured side by side on
// one copy of the weights in one run:
//   1. the cost of a dispatch boundary: chains of dependent dispatches of a tiny kernel;
//   2. in-place GEMV tuning: for each decode matrix in turn, candidate tunings timed inside
//      the whole decode step (not alone), the best kept (coordinate descent);
//   3. setups (run 9's tuning without and with the decode fusions, and the tuned one) timed
//      in alternating rounds;
//   4. per-kernel GPU time of each setup: one timed pass per dispatch.
// Prints a table and writes JSON (--out).
import { writeFileSync } from "node:fs"
import { Command } from "commander"
import { bind, type Dispatch, encodeAll, storageBuffer, Uniform } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu, type Gpu } from "../engine/gpu.ts"
import { defaultGemvTuning, type GemvOp, type GemvTuning, gemvKey, gemvRowsPerGroup, gemvShapes, resolveGemvTunings } from "../engine/gemv-tuning.ts"
import type { StepEncoder } from "../engine/kv/manager.ts"
import { type DecodeOptions, GpuModel } from "../engine/model.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { gemvUniform } from "../engine/model-resources.ts"
import { done, fillRandom, median, run9Tuning, TimedStep, timeKernel } from "./gpu-timing.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"

const label = (t: GemvTuning) => (t.kind === "sg" ? `sg ${t.wg}/${t.rows}/${t.rpw} u${t.unroll ?? 4}` : `wg ${t.wg}/${t.rows}`)

type Tunings = Record<GemvOp, GemvTuning>
interface Setup {
  readonly name: string
  readonly gemv: Tunings
  readonly decode: Required<DecodeOptions>
}

/** µs per dispatch of `count` dependent dispatches of `groups` workgroups (each writes what the next reads). */
const dispatchCost = async (gpu: Gpu, count: number, groups: number) => {
  const device = gpu.device
  const fill = await new Pipelines(gpu).get({ op: "fill" })
  const buf = storageBuffer(device, "chain", groups * 256 * 4)
  const u = new Uniform(device, "fill", "uufu")
  u.set(groups * 256, 1, 0.5, groups * 256)
  const group = bind(device, fill, [[0, u.buffer], [1, buf]])
  const sec = await timeKernel(device, count, 5, (pass) => {
    pass.setPipeline(fill)
    pass.setBindGroup(0, group)
    pass.dispatchWorkgroups(groups)
  })
  buf.destroy()
  return sec * 1e6
}

/**
 * µs of one GEMV (N x K, f16) alone with these fused flags: 4 weight matrices rotated (more
 * than any L2), 16 dispatches per submit, median of 7 submits.
 */
const timeGemv = async (gpu: Gpu, n: number, k: number, t: GemvTuning, flags: Record<string, boolean>) => {
  const dev = gpu.device
  const pipelines = new Pipelines(gpu)
  const mats = Array.from({ length: 4 }, (_, i) => storageBuffer(dev, `W ${i}`, n * k * 2))
  await fillRandom(gpu, mats, 7, 0.04)
  const x = storageBuffer(dev, "x", k * 4)
  dev.queue.writeBuffer(x, 0, Float32Array.from({ length: k }, (_, i) => Math.sin(i) * 0.5))
  const gamma = storageBuffer(dev, "gamma", k * 2)
  const y = storageBuffer(dev, "y", n * 4)
  const pipe = await pipelines.get(gemvKey(t, flags))
  const groups = Math.ceil(n / gemvRowsPerGroup(t))
  const u = gemvUniform(dev, "gemv")
  u.set(n, k, 1e-5, Math.min(groups, 65535))
  const binds = mats.map((m) => bind(dev, pipe, [[0, u.buffer], [1, m], [2, x], [3, y], ...(flags.NORM ? [[4, gamma] as const] : [])]))
  const sec = await timeKernel(dev, 16, 7, (pass, r) => {
    pass.setPipeline(pipe)
    pass.setBindGroup(0, binds[r % 4])
    pass.dispatchWorkgroups(Math.min(groups, 65535), Math.ceil(groups / 65535))
  })
  for (const b of [...mats, x, gamma, y]) b.destroy()
  return sec * 1e6
}

/**
 * µs per layer of decode attention alone at `context` tokens (random KV, 16-token blocks),
 * split as the engine splits it (engine/kv/pool.ts) into tiles of `tile` tokens: attn_decode and
 * attn_combine, 32 layers per submit (each its own dispatches), median of 7 submits.
 */
const timeAttention = async (gpu: Gpu, c: { numHeads: number; numKvHeads: number; headDim: number }, context: number, tile: number, flags: Record<string, boolean>) => {
  const dev = gpu.device
  const pipelines = new Pipelines(gpu)
  const [H, KV, D, BS] = [c.numHeads, c.numKvHeads, c.headDim, 16]
  const n = Math.ceil(context / BS)
  const poolBytes = n * KV * BS * D * 2
  const k = storageBuffer(dev, "k", poolBytes)
  const v = storageBuffer(dev, "v", poolBytes)
  await fillRandom(gpu, [k, v], 3, 0.5)
  const entries = storageBuffer(dev, "entries", n * 8)
  dev.queue.writeBuffer(entries, 0, Uint32Array.from({ length: 2 * n }, (_, i) => (i % 2 === 0 ? i / 2 : BS)))
  const seqs = storageBuffer(dev, "seqs", 16)
  dev.queue.writeBuffer(seqs, 0, Uint32Array.of(0, n, 0, 0))
  const q = storageBuffer(dev, "q", H * D * 4)
  dev.queue.writeBuffer(q, 0, Float32Array.from({ length: H * D }, (_, i) => Math.sin(i)))
  const tileE = tile / BS
  const eps = Math.max(tileE, Math.ceil(Math.ceil(n / Math.floor(256 / KV)) / tileE) * tileE)
  const S = Math.ceil(n / eps)
  const partO = storageBuffer(dev, "part o", H * S * D * 4)
  const partML = storageBuffer(dev, "part ml", H * S * 8)
  const out = storageBuffer(dev, "out", H * D * 4)
  const attn = await pipelines.get({ op: "attn_decode", flags, constants: { WG: tile, G: H / KV, D } })
  const combine = await pipelines.get({ op: "attn_combine" })
  const ua = new Uniform(dev, "attn", "uuuuufuu")
  ua.set(H, KV, BS, eps, S, 1 / Math.sqrt(D), 0, 0)
  const uc = new Uniform(dev, "combine", "uuuu")
  uc.set(H, S, D, 0)
  const ga = bind(dev, attn, [[0, ua.buffer], [1, q], [2, k], [3, v], [4, entries], [5, seqs], [6, partO], [7, partML]])
  const gc = bind(dev, combine, [[0, uc.buffer], [1, partO], [2, partML], [3, out]])
  // 32 layers' attention (and combine) per submit; µs per layer.
  const time = async (withCombine: boolean) =>
    1e6 *
    (await timeKernel(dev, 32, 7, (pass) => {
      pass.setPipeline(attn)
      pass.setBindGroup(0, ga)
      pass.dispatchWorkgroups(S, KV)
      if (withCombine) {
        pass.setPipeline(combine)
        pass.setBindGroup(0, gc)
        pass.dispatchWorkgroups(H)
      }
    }))
  const result = { splits: S, attnUs: await time(false), withCombineUs: await time(true) }
  for (const b of [k, v, entries, seqs, q, partO, partML, out]) b.destroy()
  return result
}

const program = new Command()
  .name("decode-lab")
  .description("Where a decode step's time goes, and the fastest decode setup, side by side on one device.")
  .option("--model <preset>", "dummy model preset", "llama-3.1-8b")
  .option("--context <n>", "context length", (v) => parseInt(v, 10), 1024)
  .option("--steps <n>", "timed steps per measurement", (v) => parseInt(v, 10), 96)
  .option("--rounds <n>", "alternating rounds of the final comparison", (v) => parseInt(v, 10), 3)
  .option("--quick", "few candidates (a smoke test on the CPU)")
  .option("--out <file>", "write the results as JSON")
  .parse()
const o = program.opts()

const gpu = await acquireGpu()
const device = gpu.device
console.log(`device: ${gpu.adapterName} (${gpu.kind}), subgroups ${gpu.hasSubgroups} (min ${gpu.subgroupMinSize}), timestamps ${device.features.has("timestamp-query")}`)

// 1. Dispatch boundaries.
const chains = []
for (const groups of [1, 132, 2048]) {
  const us = await dispatchCost(gpu, o.quick ? 50 : 1000, groups)
  chains.push({ groups, usPerDispatch: us })
  console.log(`dispatch chain: ${groups} workgroups of 256 threads: ${us.toFixed(2)} us per dependent dispatch`)
}

const config = resolveDummyConfig(o.model)

// 1d. Decode attention alone at the context, per tile size and kernel variant.
const attention: Array<{ tile: number; flags: string; splits: number; attnUs: number; withCombineUs: number }> = []
for (const tile of [64, 256]) {
  const variants: Array<Record<string, boolean>> = o.quick ? [{}] : [{}, { V16: true }]
  for (const flags of variants) {
    const r = await timeAttention(gpu, config, o.context, tile, flags)
    const name = Object.keys(flags).join("+") || "as is"
    attention.push({ tile, flags: name, ...r })
    console.log(`attention alone, ${o.context} tokens, tiles of ${tile} (${r.splits} splits), ${name.padEnd(8)}: ${r.attnUs.toFixed(2)} us, with combine ${r.withCombineUs.toFixed(2)} us per layer`)
  }
}

// 1c. Fixed cost versus bytes: the same GEMV alone at growing row counts (K = hidden size);
// a line through the points gives the bandwidth (slope) and the cost of a dispatch (intercept).
const sizes: Array<{ rows: number; us: number }> = []
for (const rows of o.quick ? [] : [2048, 4096, 8192, 16384, 32768, 65536]) {
  const us = await timeGemv(gpu, rows, config.hiddenSize, { kind: "sg", wg: 32, rows: 2, rpw: 2, unroll: 8 }, {})
  sizes.push({ rows, us })
  console.log(`alone: ${rows} x ${config.hiddenSize} (${((rows * config.hiddenSize * 2) / 1e6).toFixed(0)} MB): ${us.toFixed(1)} us, ${((rows * config.hiddenSize * 2) / us / 1e3).toFixed(0)} GB/s`)
}
if (sizes.length > 1) {
  const n = sizes.length
  const xs = sizes.map((p) => (p.rows * config.hiddenSize * 2) / 1e6)
  const mx = xs.reduce((a, b) => a + b) / n
  const my = sizes.reduce((a, p) => a + p.us, 0) / n
  const slope = xs.reduce((a, x, i) => a + (x - mx) * (sizes[i].us - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0)
  console.log(`  fit: ${(1e3 / slope / 1e3).toFixed(2)} TB/s, ${(my - slope * mx).toFixed(1)} us per GEMV besides its bytes`)
}

// 1b. What the fused flags cost, each matrix alone (the engine benchmark times plain GEMVs).
const flagStudy: Array<{ op: string; tuning: string; flags: string; us: number; gbs: number }> = []
{
  const shapes = gemvShapes(config)
  const studies: Array<[GemvOp, GemvTuning, Array<Record<string, boolean>>]> = [
    ["gu", { wg: 256, rows: 2 }, [{}, { NORM: true }, { SWIGLU: true }, { NORM: true, SWIGLU: true }]],
    ["gu", { kind: "sg", wg: 32, rows: 2, rpw: 2 }, [{}, { NORM: true }, { SWIGLU: true }, { NORM: true, SWIGLU: true }]],
    ["qkv", { kind: "sg", wg: 32, rows: 4, rpw: 4 }, [{}, { NORM: true }]],
    ["o", { wg: 128, rows: 2 }, [{}, { ACC: true }]],
    ["down", { wg: 128, rows: 2 }, [{}, { ACC: true }]],
  ]
  for (const [op, t, variants] of o.quick ? [] : studies) {
    const [n, k] = shapes[op]
    for (const flags of variants) {
      const us = await timeGemv(gpu, n, k, t, flags)
      const names = Object.keys(flags).join("+") || "plain"
      flagStudy.push({ op, tuning: label(t), flags: names, us, gbs: (n * k * 2) / us / 1e3 })
      console.log(`alone: ${op.padEnd(5)} ${label(t).padEnd(16)} ${names.padEnd(12)} ${us.toFixed(1).padStart(7)} us ${((n * k * 2) / us / 1e3).toFixed(0).padStart(6)} GB/s`)
    }
  }
}
const steps: number = o.steps
const context: number = o.context
const run9: Tunings = { ...run9Tuning }
const sg = (wg: number, rows: number, rpw: number, unroll = 4): GemvTuning => ({ kind: "sg", wg, rows, rpw, unroll })
const wg = (w: number, rows: number): GemvTuning => ({ wg: w, rows })
const candidates: Record<GemvOp, GemvTuning[]> = o.quick
  ? { qkv: [wg(64, 4)], o: [wg(64, 2)], gu: [wg(64, 2)], down: [wg(64, 2)], head: [wg(64, 2)] }
  : {
      qkv: [sg(32, 4, 4), sg(32, 4, 4, 2), sg(32, 4, 4, 8), wg(128, 4), sg(128, 4, 32), sg(128, 4, 64), sg(256, 4, 64)],
      o: [sg(32, 2, 2, 8), wg(128, 2), sg(32, 2, 2, 16), sg(64, 2, 16, 8), sg(128, 2, 16, 8), sg(128, 2, 32, 8)],
      gu: [wg(128, 2), sg(32, 2, 2), wg(64, 2), sg(64, 2, 16), sg(128, 2, 32), sg(128, 2, 64), sg(256, 2, 64)],
      down: [wg(128, 2), wg(64, 2), sg(32, 2, 2, 8), sg(128, 2, 16, 8), sg(128, 2, 32, 8), sg(64, 2, 16, 8)],
      head: [sg(256, 2, 16), wg(256, 2), sg(128, 2, 64), sg(256, 2, 128)],
    }

const t0 = performance.now()
const base = await GpuModel.load(gpu, new DummyWeightSource(config), {
  maxContext: context + 4096,
  prefillChunk: 1024,
  gemv: (op) => run9[op],
  decode: { fuseRope: false },
})
await done(device)
console.log(`loaded ${o.model} (${(base.weights.bytes / 1e9).toFixed(2)} GB) in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
const ids = Array.from({ length: context }, (_, i) => (i * 7919 + 13) % config.vocabSize)

/** A model of the setup with `context` tokens prefilled and its step function. */
const open = async (s: Setup) => {
  const model = await base.sibling({ gemv: (op) => s.gemv[op], decode: s.decode })
  await model.prefill(ids)
  model.sample({ outSlot: 0, temperature: 0, seed: 0, step: 0 })
  let slot = 0
  const step = (encoder?: StepEncoder) => {
    model.decode(slot, { outSlot: slot + 1, temperature: 0, seed: 0, step: slot + 1 }, undefined, encoder)
    slot++
  }
  /** ms per pipelined step; the context grows by 8 + n. Rewound afterwards so rounds compare. */
  const time = async (n: number) => {
    const at = model.length
    for (let i = 0; i < 8; i++) step()
    const s0 = performance.now()
    for (let i = 0; i < n; i++) step()
    await done(device)
    const ms = (performance.now() - s0) / n
    model.truncate(at)
    return ms
  }
  return { model, step, time }
}

/**
 * Per-kernel GPU time of a model's decode step: one timed pass per dispatch over `rounds`
 * steps. Returns the span (first begin to last end) and the time inside kernels per step.
 */
const profileSteps = async (step: (encoder: StepEncoder) => void, rounds = 4) => {
  const maxQ = 4096
  const querySet = device.createQuerySet({ type: "timestamp", count: maxQ })
  const resolve = device.createBuffer({ size: maxQ * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC })
  const read = device.createBuffer({ size: maxQ * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  const perKernel = new Map<string, { us: number; count: number }>()
  let span = 0
  let busy = 0
  for (let r = 0; r < rounds; r++) {
    const timed = new TimedStep(device, querySet, resolve, read)
    step(timed)
    const labels = timed.labels
    await read.mapAsync(GPUMapMode.READ)
    const stamps = new BigUint64Array(read.getMappedRange().slice(0, labels.length * 16))
    read.unmap()
    labels.forEach((name, i) => {
      const us = Number(stamps[2 * i + 1] - stamps[2 * i]) / 1000
      const k = perKernel.get(name) ?? { us: 0, count: 0 }
      k.us += us
      k.count++
      perKernel.set(name, k)
      busy += us
    })
    span += Number(stamps[2 * labels.length - 1] - stamps[0]) / 1000
  }
  querySet.destroy()
  resolve.destroy()
  read.destroy()
  const kernels = [...perKernel.entries()]
    .map(([name, k]) => ({ name, usPerStep: k.us / rounds, dispatchesPerStep: k.count / rounds, usPerDispatch: k.us / k.count }))
    .sort((a, b) => b.usPerStep - a.usPerStep)
  return { spanMs: span / rounds / 1000, busyMs: busy / rounds / 1000, kernels }
}

// 2. In-place GEMV tuning with both fusions on: each candidate judged by the GPU time inside
// the step's kernels (per-pass timestamps; less noisy than the wall time, which is also kept).
const timestamps = device.features.has("timestamp-query")
// The engine's default tunings on this device, the starting point of the descent.
const defaults: Tunings = { ...resolveGemvTunings(config, defaultGemvTuning(gpu), gpu.hasSubgroups ? gpu.subgroupMaxSize : undefined) }
const tuned: Tunings = { ...defaults }
const tuning: Array<{ op: GemvOp; tuning: string; ms: number; busyMs: number }> = []
for (const op of ["qkv", "o", "gu", "down", "head"] as const) {
  let best = { t: tuned[op], ms: Infinity }
  for (const t of candidates[op]) {
    const m = await open({ name: "", gemv: { ...tuned, [op]: t }, decode: { fuseRope: true } })
    const wallMs = Math.min(await m.time(steps / 2), await m.time(steps / 2))
    const busyMs = timestamps ? (await profileSteps(m.step)).busyMs : wallMs
    m.model.destroy()
    tuning.push({ op, tuning: label(t), ms: wallMs, busyMs })
    console.log(`tune ${op.padEnd(5)} ${label(t).padEnd(18)} ${wallMs.toFixed(3)} ms/token, ${busyMs.toFixed(3)} ms in kernels`)
    if (busyMs < best.ms) best = { t, ms: busyMs }
  }
  tuned[op] = best.t
}
console.log(`tuned: ${Object.entries(tuned).map(([op, t]) => `${op} ${label(t)}`).join(", ")}`)

// 3. Setups side by side, alternating.
const setups: Setup[] = [
  { name: "run 9 (RoPE apart)", gemv: run9, decode: { fuseRope: false } },
  { name: "run 9 + fused RoPE (qkv sg 32/4/4)", gemv: { ...run9, qkv: sg(32, 4, 4) }, decode: { fuseRope: true } },
  { name: "default tunings + fused RoPE", gemv: defaults, decode: { fuseRope: true } },
  { name: "tuned + fused RoPE", gemv: tuned, decode: { fuseRope: true } },
]
const opened: Array<{ s: Setup; m: Awaited<ReturnType<typeof open>>; ms: number[] }> = []
for (const s of setups) opened.push({ s, m: await open(s), ms: [] })
for (let r = 0; r < o.rounds; r++) for (const x of opened) x.ms.push(await x.m.time(steps))
console.log(`\ndecode ${o.model}, context ${context}, ${steps} pipelined steps, ${o.rounds} alternating rounds (ms/token):`)
for (const x of opened) console.log(`  ${x.s.name.padEnd(30)} ${x.ms.map((v) => v.toFixed(3)).join(" / ")}  median ${median(x.ms).toFixed(3)}`)

// 4. Per-kernel GPU time of each setup.
const profiles = []
for (const x of timestamps ? opened : []) {
  const p = await profileSteps(x.m.step)
  profiles.push({ setup: x.s.name, ...p })
  console.log(`\nper-kernel GPU time, ${x.s.name} (one timed pass per dispatch; 4 steps):`)
  console.log(`  span first begin .. last end ${p.spanMs.toFixed(3)} ms/step; inside kernels ${p.busyMs.toFixed(3)} ms/step`)
  for (const k of p.kernels) console.log(`  ${k.name.padEnd(44)} ${k.dispatchesPerStep.toFixed(0).padStart(4)} x ${k.usPerDispatch.toFixed(2).padStart(8)} us = ${(k.usPerStep / 1000).toFixed(3)} ms`)
}

const result = {
  date: new Date().toISOString(),
  device: gpu.adapterName,
  argv: process.argv.slice(2),
  model: o.model,
  context,
  steps,
  chains,
  attention,
  sizes,
  flagStudy,
  tuning,
  tuned,
  setups: opened.map((x) => ({ name: x.s.name, gemv: x.s.gemv, decode: x.s.decode, msPerToken: x.ms, median: median(x.ms) })),
  profiles,
}
if (o.out) writeFileSync(o.out, JSON.stringify(result, null, 2))
for (const x of opened) x.m.model.destroy()
base.destroy()
await releaseGpu()
