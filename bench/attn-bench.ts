// Prefill attention alone, side by side in one run: kernels/attn_prefill_mx.wgsl (flash
// attention on the matrix units; O in registers, mx<NSG>, and in workgroup memory, mxs<NSG>; K and V
// straight from the pool, mxd<NSG>), kernels/attn_prefill_fa.wgsl (the keys split among a
// workgroup's NSG subgroups in RT row tiles, tiles of BK keys: fa<NSG>r<RT>[k32]) and the kernel prefill uses without them (attn_prefill_sg
// where subgroups allow, else attn_prefill), at Llama-3.1-8B's heads (32 query heads, 8 KV
// heads, head dim 128) over a paged f16 pool of N = 8K, 32K, 128K tokens.
//   npx tsx bench/attn-bench.ts [--tokens 8192,32768,131072] [--chunk 512] [--points 4]
//                               [--kernels mx,mxd,fa,base] [--nsg 4,2] [--fa 4x1,4x2,8x1x32] [--max-seconds 100] [--out FILE]
// Prefill attends in chunks of --chunk queries (the engine's prefill chunk), chunk c at
// positions c * chunk.. over keys 0 .. (c + 1) * chunk - 1. Each kernel is timed on --points
// chunks spread over the prompt (the last one included); a chunk's time is linear in its
// first position, so a least-squares line through those points gives the whole prompt's
// attention for one layer (x 32 layers for the model). FLOPs count the causal work only:
// 4 * H * D per (query, visible key). Correctness first: both kernels on the last chunk of
// the smallest N against the CPU reference on sampled rows, and against each other.
// Timing: warm-up submit, then the median of 3 submits (bench/gpu-timing.ts).
import { writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { readBack, readF32, storageBuffer, Uniform, upload } from "../engine/buffers.ts"
import { attention } from "../engine/cpu-reference.ts"
import { matrixAttnConstants, matrixAttnWorkgroupBytes, splitAttnKey, splitAttnWorkgroupBytes } from "../engine/attn-check.ts"
import { acquireGpu, releaseGpu, SUBGROUP_MATRIX_FEATURE } from "../engine/gpu.ts"
import { seededValues } from "../engine/matrix-check.ts"
import { attnPrefillKey, prefillRowsPerGroup, prefillWithSubgroups } from "../engine/model-resources.ts"
import { type PipelineKey, Pipelines } from "../engine/pipelines.ts"
import { dummyPresets } from "../models/config.ts"
import { f16ToF32 } from "../models/half.ts"
import { fillRandom, timeKernel } from "./gpu-timing.ts"

const { values: args } = parseArgs({
  options: {
    tokens: { type: "string" },
    chunk: { type: "string", default: "512" },
    points: { type: "string", default: "4" },
    kernels: { type: "string", default: "mx,base" },
    nsg: { type: "string", default: "4,2" },
    fa: { type: "string", default: "4x1,4x2,4x4,2x1,8x1x32" },
    "max-seconds": { type: "string", default: "100" },
    out: { type: "string" },
  },
})

const gpu = await acquireGpu()
const small = gpu.kind === "cpu"
const config = dummyPresets["llama-3.1-8b"]!
const H = config.numHeads
const KV = config.numKvHeads
const D = config.headDim
const G = H / KV
const BS = 16
const chunk = Number(args.chunk)
const tokens = (args.tokens ?? (small ? "1024" : "8192,32768,131072")).split(",").map(Number)
const points = Math.max(2, Number(args.points))
const maxSeconds = Number(args["max-seconds"])
const wanted = new Set(args.kernels!.split(","))
const started = performance.now()
const elapsed = () => (performance.now() - started) / 1000

interface Kernel {
  readonly name: string
  readonly key: PipelineKey
}
const kernels: Kernel[] = []
const base = attnPrefillKey(config, prefillWithSubgroups(gpu), false)
if (wanted.has("mx")) {
  const best = matrixAttnConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize, D)
  // Timed wherever the device has the matrix units, even if its check failed at device open
  // (the "[leoam gpu]" line above says why; the check below repeats it on 8B shapes).
  const has = gpu.device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)
  if (!has || !best) {
    console.log(`attn_prefill_mx: not run (${has ? "no room for its workgroup memory" : `the device has no f16 subgroup matrices: LEOAM_MATRIX_UNITS=${process.env.LEOAM_MATRIX_UNITS ?? "0"}`})`)
  } else {
    if (!gpu.matrixAttention) console.log("attn_prefill_mx: timed although its check at device open failed (its results are wrong there)")
    // Each asked-for subgroup count with the largest padding that fits the device, in both
    // forms (O in registers: mx<NSG>; O in workgroup memory, OSHARED: mxs<NSG>).
    for (const shared of [false, true]) {
      for (const NSG of args.nsg!.split(",").map(Number)) {
        const PAD = [8, 0].find((pad) => matrixAttnWorkgroupBytes({ NSG, PAD: pad }, D, shared) <= gpu.limits.maxComputeWorkgroupStorageSize)
        const name = `mx${shared ? "s" : ""}${NSG}`
        if (PAD === undefined) console.log(`${name}: no room for its workgroup memory`)
        else kernels.push({ name, key: attnPrefillKey(config, true, false, { constants: { ...best, NSG, PAD }, shared }) })
      }
    }
  }
}
// mxd<NSG>: the register form with K and V loaded as matrices straight from the pool (KDIRECT,
// no staging: Q, S and P only in workgroup memory).
if (wanted.has("mxd") && gpu.device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)) {
  const best = matrixAttnConstants(gpu.subgroupMaxSize, gpu.limits.maxComputeWorkgroupStorageSize, D)
  for (const NSG of args.nsg!.split(",").map(Number)) {
    const rows = 16 * NSG
    const PAD = [8, 0].find((pad) => matrixAttnWorkgroupBytes({ NSG, PAD: pad }, D) - 32 * (D + pad) * 2 * 2 <= gpu.limits.maxComputeWorkgroupStorageSize)
    if (!best || PAD === undefined) console.log(`mxd${NSG}: not run (${best ? "no room" : "no matrix attention constants"}; ${rows} rows)`)
    else {
      const key = attnPrefillKey(config, true, false, { constants: { ...best, NSG, PAD }, shared: false })
      kernels.push({ name: `mxd${NSG}`, key: { ...key, flags: { ...key.flags, KDIRECT: true } } })
    }
  }
}
// fa<NSG>r<RT>[k32]: attn_prefill_fa, NSG subgroups a workgroup in RT row tiles of 16 rows, each
// tile's keys split among NSG / RT of them (subgroups of 32 lanes), in tiles of 64 keys (k32: 32);
// --fa lists them as NSGxRT or NSGxRTxBK.
if (wanted.has("fa") && gpu.device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)) {
  for (const form of args.fa!.split(",")) {
    const [NSG, RT, BK = 64] = form.split("x").map(Number) as [number, number, number?]
    const name = `fa${NSG}r${RT}${BK === 32 ? "k32" : ""}`
    if (NSG % RT !== 0 || (BK !== 32 && BK !== 64) || gpu.subgroupMaxSize !== 32 || gpu.subgroupMinSize !== 32) console.log(`${name}: not run (${NSG % RT !== 0 ? "RT must divide NSG" : BK !== 32 && BK !== 64 ? "BK is 32 or 64" : "needs subgroups of 32 lanes"})`)
    else if (splitAttnWorkgroupBytes({ NSG, RT, BK }, D) > gpu.limits.maxComputeWorkgroupStorageSize) console.log(`${name}: no room for its workgroup memory`)
    else kernels.push({ name, key: splitAttnKey({ G, D }, { SG: 32, NSG, RT, BK }) })
  }
}
if (wanted.has("base")) kernels.push({ name: base.op, key: base })
console.log(`attn-bench on ${gpu.adapterName}: H ${H}, KV ${KV}, D ${D}, chunk ${chunk}; kernels ${kernels.map((k) => `${k.name} (${JSON.stringify({ ...k.key.flags, ...k.key.constants })})`).join(", ")}`)

const pipelines = new Pipelines(gpu)
const device = gpu.device
const scale = 1 / Math.sqrt(D)

/** Visible (query, key) pairs of the chunk starting at pos0 (causal). */
const pairs = (pos0: number, m: number) => m * pos0 + (m * (m + 1)) / 2
const flopsOf = (pos0: number, m: number) => 4 * H * D * pairs(pos0, m)

interface Row {
  tokens: number
  kernel: string
  pos0: number
  ms: number
  tflops: number
}
const rows: Row[] = []
const totals: Array<{ tokens: number; kernel: string; layerMs: number; modelS: number; tflops: number }> = []
const checks: Array<{ tokens: number; kernel: string; cpuError: number; vsBase: number; nonFinite: number }> = []

for (const [ti, n] of tokens.entries()) {
  if (elapsed() > maxSeconds) {
    console.log(`${n} tokens: skipped (past --max-seconds ${maxSeconds})`)
    continue
  }
  const blocks = Math.ceil(n / BS)
  const k = storageBuffer(device, "k pool", blocks * KV * BS * D * 2)
  const v = storageBuffer(device, "v pool", blocks * KV * BS * D * 2)
  await fillRandom(gpu, [k, v], 7 + ti, 1)
  const table = upload(device, "table", Uint32Array.from({ length: blocks }, (_, b) => b))
  const qHost = seededValues(11 + ti, chunk * H * D, 1)
  const q = upload(device, "q", qHost)
  const outs = new Map(kernels.map((kr) => [kr.name, storageBuffer(device, `out ${kr.name}`, chunk * H * D * 4)]))
  const u = new Uniform(device, "attn bench", "uuuuufuu")
  const spots = Array.from({ length: points }, (_, i) => Math.floor(((n / chunk - 1) * (i + 1)) / points) * chunk)
  for (const kr of kernels) {
    const pipeline = await pipelines.get(kr.key)
    const group = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [u.buffer, q, k, v, table, outs.get(kr.name)!].map((buffer, binding) => ({ binding, resource: { buffer } })),
    })
    const groups = Math.ceil((chunk * G) / prefillRowsPerGroup(kr.key))
    const timed: Array<[number, number]> = []
    for (const pos0 of spots) {
      u.set(chunk, H, KV, BS, pos0, scale)
      const encode = (pass: GPUComputePassEncoder) => {
        pass.setPipeline(pipeline)
        pass.setBindGroup(0, group)
        pass.dispatchWorkgroups(groups, KV)
      }
      const once = await timeKernel(device, 1, 1, encode)
      const reps = Math.max(1, Math.min(50, Math.ceil(0.05 / once)))
      const s = await timeKernel(device, reps, 3, encode)
      timed.push([pos0, s])
      const row = { tokens: n, kernel: kr.name, pos0, ms: s * 1e3, tflops: flopsOf(pos0, chunk) / s / 1e12 }
      rows.push(row)
      console.log(`${n} tokens, ${kr.name}, chunk at ${pos0}: ${row.ms.toFixed(3)} ms, ${row.tflops.toFixed(2)} TFLOPS`)
    }
    // Least squares t = a + b * pos0, summed over every chunk of the prompt.
    const mx = timed.reduce((s, [x]) => s + x, 0) / timed.length
    const my = timed.reduce((s, [, y]) => s + y, 0) / timed.length
    const sxx = timed.reduce((s, [x]) => s + (x - mx) ** 2, 0)
    const b = sxx > 0 ? timed.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0) / sxx : 0
    const a = my - b * mx
    let layer = 0
    let flops = 0
    for (let p0 = 0; p0 < n; p0 += chunk) {
      layer += Math.max(0, a + b * p0)
      flops += flopsOf(p0, Math.min(chunk, n - p0))
    }
    totals.push({ tokens: n, kernel: kr.name, layerMs: layer * 1e3, modelS: layer * config.numLayers, tflops: flops / layer / 1e12 })
    console.log(`${n} tokens, ${kr.name}: whole prompt ${(layer * 1e3).toFixed(1)} ms per layer, ${(layer * config.numLayers).toFixed(2)} s for ${config.numLayers} layers, ${(flops / layer / 1e12).toFixed(2)} TFLOPS`)
  }
  // Correctness on the last timed chunk of the first length: CPU reference on sampled rows.
  if (ti === 0) {
    const pos0 = spots[spots.length - 1]!
    u.set(chunk, H, KV, BS, pos0, scale)
    const keys = pos0 + chunk
    const bytes = Math.ceil(keys / BS) * KV * BS * D * 2
    const kHost = new Uint16Array(await readBack(device, k, 0, bytes))
    const vHost = new Uint16Array(await readBack(device, v, 0, bytes))
    const sample = [0, 1, chunk / 2, chunk - 1].flatMap((i) => [0, G - 1, H - 1].map((h) => [i, h] as const))
    const want = sample.map(([i, h]) => {
      const kvh = Math.floor(h / G)
      const len = pos0 + i + 1
      const kk = new Float32Array(len * D)
      const vv = new Float32Array(len * D)
      for (let t = 0; t < len; t++) {
        const at = ((Math.floor(t / BS) * KV + kvh) * BS + (t % BS)) * D
        for (let d = 0; d < D; d++) {
          kk[t * D + d] = f16ToF32(kHost[at + d]!)
          vv[t * D + d] = f16ToF32(vHost[at + d]!)
        }
      }
      return attention(new Float32Array(D), 0, qHost, (i * H + h) * D, kk, vv, D, 0, len, D, scale)
    })
    const results = new Map<string, Float32Array>()
    for (const kr of kernels) {
      const pipeline = await pipelines.get(kr.key)
      const enc = device.createCommandEncoder()
      const pass = enc.beginComputePass()
      pass.setPipeline(pipeline)
      pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [u.buffer, q, k, v, table, outs.get(kr.name)!].map((buffer, binding) => ({ binding, resource: { buffer } })) }))
      pass.dispatchWorkgroups(Math.ceil((chunk * G) / prefillRowsPerGroup(kr.key)), KV)
      pass.end()
      device.queue.submit([enc.finish()])
      results.set(kr.name, await readF32(device, outs.get(kr.name)!, 0, chunk * H * D))
    }
    const baseOut = results.get(base.op)
    for (const kr of kernels) {
      const got = results.get(kr.name)!
      let cpuError = 0
      sample.forEach(([i, h], j) => {
        for (let d = 0; d < D; d++) cpuError = Math.max(cpuError, Math.abs(got[(i * H + h) * D + d]! - want[j]![d]!))
      })
      let vsBase = 0
      if (baseOut) for (let x = 0; x < got.length; x++) vsBase = Math.max(vsBase, Math.abs(got[x]! - baseOut[x]!))
      const nonFinite = got.reduce((c, x) => c + (Number.isFinite(x) ? 0 : 1), 0)
      checks.push({ tokens: n, kernel: kr.name, cpuError, vsBase, nonFinite })
      console.log(`check at ${n} tokens, chunk at ${pos0}: ${kr.name} max |error| against the CPU on ${sample.length} rows ${cpuError.toExponential(2)}, against ${base.op} on the whole chunk ${vsBase.toExponential(2)}; ${nonFinite} of ${got.length} values not finite`)
    }
  }
  for (const b of [k, v, table, q, u.buffer, ...outs.values()]) b.destroy()
}

console.log("\n| tokens | kernel | attention, one layer (ms) | 32 layers (s) | TFLOPS |\n| --- | --- | --- | --- | --- |")
for (const t of totals) console.log(`| ${t.tokens} | ${t.kernel} | ${t.layerMs.toFixed(1)} | ${t.modelS.toFixed(2)} | ${t.tflops.toFixed(2)} |`)
if (args.out) writeFileSync(args.out, JSON.stringify({ device: gpu.adapterName, H, KV, D, chunk, kernels: kernels.map((k) => k.key), rows, totals, checks }, null, 1))
await releaseGpu()
