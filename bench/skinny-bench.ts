// Batched decode's projections alone, at Llama-3.1-8B's shapes, for M = 1 to 16 rows, side by
// side in one run: the streamed projections (kernels/half_rows.wgsl + gemm_stream.wgsl,
// engine/batch-stream.ts; forms RxUNROLL[h][/WG], --stream-forms), the matrix units (half_rows
// + gemm_skinny.wgsl, engine/batch-mma.ts; forms SPLITxCOLS[k][s]: SPLIT subgroups a
// workgroup, each 1/SPLIT of K; COLS output tiles of 16 columns a workgroup; k: K a pipeline
// constant; s: W staged through workgroup memory; --forms), kernels/gemv_multi.wgsl (8 rows a
// pass, and 16: multi16) and the decode GEMVs (gemv: the device's default tuning, one pass
// per row), as ms per projection and the bandwidth of the weights it reads (once per pass:
// per 16 rows for the streamed and matrix-unit ones, per 8 or 16 for multi, per row for the
// GEMVs). Four copies of each weight are cycled so that repeats do not hit the L2 cache.
// Every form is checked first against the CPU reference at K = 4096 (RMSNorm, SwiGLU and the
// residual fused; bias and the residual); a streamed form with f16 pieces ("h") is reported
// against its looser bound (1e-2), and is not the default for that reason.
//   LEOAM_MATRIX_UNITS=auto npx tsx bench/skinny-bench.ts [--m 1,2,4,8,16] [--forms 16x2] [--stream-forms 4x2,4x2h] [--preset llama-3.1-8b] [--out FILE]
import { writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { dispatchOf, type Dispatch, Uniform } from "../engine/buffers.ts"
import { halfRowsKey, parseSkinnyForm, skinnyCols, skinnyFor, skinnyKey } from "../engine/batch-mma.ts"
import { parseStreamForm, streamFor, streamGrid, streamKey, streamRows } from "../engine/batch-stream.ts"
import { defaultGemvTuning, gemvKey, gemvRowsPerGroup, gemvShapes, type GemvOp, resolveGemvTunings } from "../engine/gemv-tuning.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { GEMM_TOLERANCE } from "../engine/matrix-check.ts"
import { gemvUniform } from "../engine/model-resources.ts"
import { type PipelineKey, Pipelines } from "../engine/pipelines.ts"
import { skinnyError } from "../engine/skinny-check.ts"
import { dummyPresets } from "../models/config.ts"
import { fillRandom, timeKernel } from "./gpu-timing.ts"

const { values: args } = parseArgs({
  options: {
    m: { type: "string", default: "1,2,4,8,16" },
    forms: { type: "string", default: "16x2" },
    "stream-forms": { type: "string", default: "4x2,4x2f,2x2,4x1,4x2h" },
    preset: { type: "string", default: "llama-3.1-8b" },
    out: { type: "string" },
  },
})
const gpu = await acquireGpu()
// --preset: another dummy model's shapes (a smaller one for a quick run on a CPU adapter).
const c = dummyPresets[args.preset!]
if (!c) throw new RangeError(`--preset: one of ${Object.keys(dummyPresets).join(", ")}`)
const base = skinnyFor(gpu, c)
console.log(`skinny-bench on ${gpu.adapterName}: matrix units ${base ? `on (SG ${base.SG})` : "off (LEOAM_MATRIX_UNITS=auto, an f16 configuration and a fixed subgroup size are needed)"}`)
const device = gpu.device
const pipelines = new Pipelines(gpu)
const ms = args.m!.split(",").map(Number)
if (ms.some((m) => !(m >= 1 && m <= 16))) throw new RangeError("--m: rows from 1 to 16")
const forms = args.forms!.split(",").filter((f) => f.length > 0).map((f) => ({ ...parseSkinnyForm(f), name: f }))
const streams = args["stream-forms"]!.split(",").filter((f) => f.length > 0).map((f) => ({ k: streamFor(gpu, c, parseStreamForm(f)), name: f }))
const gemvs = resolveGemvTunings(c, defaultGemvTuning(gpu), gpu.hasSubgroups ? gpu.subgroupMaxSize : undefined)
/** Forms whose pipelines failed to build on this device (reported, then skipped). */
const failed = new Set<string>()

const checks: Array<{ form: string; flags: Record<string, boolean>; error: number; ok: boolean }> = []
if (base) {
  for (const form of forms) {
    const variants: Array<Record<string, boolean>> = [{ NORM: true, SWIGLU: true, ACC: true }, { BIAS: true, ACC: true }]
    for (const flags of variants) {
      const { NORM, ...rest } = flags
      const k = { ...base, SPLIT: form.SPLIT, COLS: form.COLS, KFIX: form.KFIX, WSTAGE: form.WSTAGE }
      try {
        const error = await skinnyError(device, await pipelines.get(halfRowsKey(NORM === true)), await pipelines.get(skinnyKey(rest, k, 4096)), { M: 16, N: 128, K: 4096, flags }, 7, skinnyCols(form, flags.SWIGLU === true))
        checks.push({ form: form.name, flags, error, ok: error <= GEMM_TOLERANCE })
        console.log(`check ${form.name} ${JSON.stringify(flags)}: relative error ${error.toExponential(2)} ${error <= GEMM_TOLERANCE ? "ok" : "WRONG"}`)
      } catch (e) {
        failed.add(form.name)
        console.log(`check ${form.name} ${JSON.stringify(flags)}: FAILED to build or run: ${(e as Error).message}`)
      }
    }
  }
}

/** A streamed form's bound: GEMM_TOLERANCE, or 1e-2 with f16 pieces (engine/batch-stream.ts). */
const streamBound = (k: { F16: boolean }) => (k.F16 ? 1e-2 : GEMM_TOLERANCE)
for (const { k, name } of streams) {
  if (!k) continue
  for (const flags of [{ NORM: true, SWIGLU: true, ACC: true }, { BIAS: true, ACC: true }] as Array<Record<string, boolean>>) {
    const { NORM, ...rest } = flags
    const M = 16
    const outs = flags.SWIGLU ? 64 : 128
    try {
      const gemm = await pipelines.get(streamKey(rest, k, streamRows(M)))
      const error = await skinnyError(device, await pipelines.get(halfRowsKey(NORM === true, k.X32)), gemm, { M, N: 128, K: 4096, flags }, 7, 1, streamGrid(k, outs, flags.SWIGLU === true, M), k.X32 !== true)
      const ok = error <= streamBound(k)
      checks.push({ form: `stream/${name}`, flags, error, ok: ok || k.F16 })
      console.log(`check stream/${name} ${JSON.stringify(flags)}: relative error ${error.toExponential(2)} ${ok ? "ok" : "WRONG"}${k.F16 ? ` (f16 pieces: bound ${streamBound(k)})` : ""}`)
    } catch (e) {
      failed.add(`stream/${name}`)
      console.log(`check stream/${name} ${JSON.stringify(flags)}: FAILED to build or run: ${(e as Error).message}`)
    }
  }
}

interface Row { op: GemvOp; M: number; kernel: string; ms: number; gbps: number }
const rows: Row[] = []
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST
// The GPU's clocks ramp up under load: half a second of work before the first timing.
if (gpu.kind !== "cpu") {
  const b = device.createBuffer({ size: 256 << 20, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST })
  const t0 = performance.now()
  while (performance.now() - t0 < 500) await fillRandom(gpu, [b], 1, 1)
  b.destroy()
}
const ops: Array<[GemvOp, Record<string, boolean>]> = [["qkv", { NORM: true }], ["o", { ACC: true }], ["gu", { NORM: true, SWIGLU: true }], ["down", { ACC: true }], ["head", { NORM: true }]]
// Every streamed pipeline the timings take, compiled in parallel first (one at a time they
// would take much of a short run).
await pipelines.prewarm(
  ops.flatMap(([, { NORM, ...rest }]) =>
    streams.flatMap(({ k, name }) => (k && !failed.has(`stream/${name}`) ? [...new Set(ms.map(streamRows))].map((mr) => streamKey(rest, k, mr)) : [])),
  ),
)
for (const [op, flags] of ops) {
  const [n, k] = gemvShapes(c)[op]
  const outs = flags.SWIGLU ? n / 2 : n
  const ws = Array.from({ length: 4 }, (_, i) => device.createBuffer({ label: `w ${op} ${i}`, size: n * k * 2, usage }))
  const x = device.createBuffer({ label: "x (16, K) f32", size: 16 * k * 4, usage })
  const gamma = device.createBuffer({ label: "gamma", size: k * 2, usage })
  const xh = device.createBuffer({ label: "xh (16, K) f16, or f32 for X32", size: 16 * k * 4, usage })
  const y = device.createBuffer({ label: "y (16, outs) f32", size: 16 * outs * 4, usage })
  await fillRandom(gpu, [...ws, x, gamma], 3, 0.5)
  const time = async (M: number, kernel: string, make: (w: GPUBuffer) => Dispatch[]) => {
    const sets = ws.map(make)
    const s = await timeKernel(device, 40, 5, (pass, rep) => {
      for (const d of sets[rep % sets.length]!) {
        pass.setPipeline(d.pipeline)
        pass.setBindGroup(0, d.bindGroup)
        pass.dispatchWorkgroups(d.x, d.y, d.z)
      }
    })
    // Passes over the weights: one per row (gemv), per 8 rows (multi), per 16 (the others).
    const passes = kernel === "gemv" ? M : Math.ceil(M / (kernel === "multi" ? 8 : 16))
    const row = { op, M, kernel, ms: s * 1000, gbps: (n * k * 2 * passes) / s / 1e9 }
    rows.push(row)
    console.log(`${op.padEnd(5)} M=${String(M).padStart(2)} ${kernel.padEnd(9)} ${row.ms.toFixed(4)} ms  ${row.gbps.toFixed(0)} GB/s of weights`)
  }
  for (const M of ms) {
    if (base) {
      for (const form of forms) {
        if (failed.has(form.name)) continue
        const { NORM, ...rest } = flags
        const uh = new Uniform(device, "uh", "uufu")
        uh.set(M, k, 1e-5, 0)
        const ug = new Uniform(device, "ug", "uuuu")
        ug.set(M, n, k, 0)
        const half = await pipelines.get(halfRowsKey(NORM === true))
        const gemm = await pipelines.get(skinnyKey(rest, { ...base, SPLIT: form.SPLIT, COLS: form.COLS, KFIX: form.KFIX, WSTAGE: form.WSTAGE }, k))
        const rowsPadded = Math.ceil(M / 16) * 16
        await time(M, `mma/${form.name}`, (w) => [
          dispatchOf(device, half, [[0, uh.buffer], [1, x], [2, xh], ...(NORM ? [[4, gamma] as const] : [])], rowsPadded),
          dispatchOf(device, gemm, [[0, ug.buffer], [1, xh], [2, w], [3, y]], outs / (16 * skinnyCols(form, flags.SWIGLU === true)), 1, rowsPadded / 16),
        ])
      }
    }
    const { NORM, ...rest } = flags
    for (const { k: sk, name } of streams) {
      if (!sk || failed.has(`stream/${name}`)) continue
      const ug = new Uniform(device, "ug", "uuuu")
      ug.set(M, n, k, 0)
      const uh = new Uniform(device, "uh", "uufu")
      uh.set(M, k, 1e-5, 0)
      const half = await pipelines.get(halfRowsKey(NORM === true, sk.X32))
      const gemm = await pipelines.get(streamKey(rest, sk, streamRows(M)))
      const rowsPadded = Math.ceil(M / 16) * 16
      const [gx, gy, gz] = streamGrid(sk, outs, flags.SWIGLU === true, M)
      await time(M, `stream/${name}`, (w) => [
        dispatchOf(device, half, [[0, uh.buffer], [1, x], [2, xh], ...(NORM ? [[4, gamma] as const] : [])], rowsPadded),
        dispatchOf(device, gemm, [[0, ug.buffer], [1, xh], [2, w], [3, y]], gx, gy, gz),
      ])
    }
    {
      // The decode GEMV as the model runs it alone (RoPE of QKV left out), once per row.
      const t = gemvs[op]
      const groups = Math.ceil(n / gemvRowsPerGroup(t))
      const u = gemvUniform(device, "gemv")
      u.set(n, k, 1e-5, Math.min(groups, 65535))
      const gemv = await pipelines.get(gemvKey(t, flags))
      await time(M, "gemv", (w) => [dispatchOf(device, gemv, [[0, u.buffer], [1, w], [2, x], [3, y], ...(flags.NORM ? [[4, gamma] as const] : [])], Math.min(groups, 65535), Math.ceil(groups / 65535), M)])
    }
    for (const MR of [8, 16]) {
      const key: PipelineKey = { op: "gemv_multi", flags: { ...flags, MR16: MR === 16 }, constants: { WG: MR === 16 ? 64 : 128, ROWS: 2, MR } }
      const groups = Math.ceil(n / 2)
      const u = gemvUniform(device, "multi")
      u.set(n, k, 1e-5, Math.min(groups, 65535))
      const multi = await pipelines.get(key)
      await time(M, MR === 8 ? "multi" : "multi16", (w) => [dispatchOf(device, multi, [[0, u.buffer], [1, w], [2, x], [3, y], ...(flags.NORM ? [[4, gamma] as const] : [])], Math.min(groups, 65535), Math.ceil(groups / 65535), Math.ceil(M / MR))])
    }
  }
  for (const b of [...ws, x, gamma, xh, y]) b.destroy()
}

// One decode step's projections: 32 layers of qkv, o, gu, down, and the head.
const step = (M: number, kernel: string) => {
  const t = (op: GemvOp) => rows.find((r) => r.op === op && r.M === M && r.kernel === kernel)?.ms ?? NaN
  return c.numLayers * (t("qkv") + t("o") + t("gu") + t("down")) + t("head")
}
const kernels = [...new Set(rows.map((r) => r.kernel))]
for (const M of ms) console.log(`projections of one step, M=${M}: ${kernels.map((k) => `${k} ${step(M, k).toFixed(2)} ms`).join(", ")}`)
if (args.out) writeFileSync(args.out, `${JSON.stringify({ device: gpu.adapterName, checks, rows, step: ms.map((M) => ({ M, ...Object.fromEntries(kernels.map((k) => [k, step(M, k)])) })) }, null, 2)}\n`)
await releaseGpu()
if (checks.some((x) => !x.ok)) process.exit(1)
