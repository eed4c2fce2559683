// Prefill's GEMM side by side: kernels/gemm_sgmat.wgsl (the GPU's matrix units) in one or more
// tilings and today's kernels/gemm.wgsl, at 8192^3 and at Llama-3.1-8B's layer shapes (q/k/v
// fused, o with the residual, gate/up with SwiGLU, down with the residual) for M = 512 ...
// 16384, in one run. Every kernel is first checked against the CPU reference at K = 4096 (and
// each tiling at its own tile edges: checkMatrixGemm). Prints a table (TFLOPS, the ratio to
// gemm, and the fraction of PyTorch's bf16 GEMM on the H100/H200: 778-798 TFLOPS, issue 12)
// and writes JSON.
//   npx tsx bench/gemm-bench.ts [--small] [--m 512,2048,8192,16384] [--kernels sgmat,gemm]
//                               [--tilings global,44.22.32,42.24.32] [--max-seconds 240] [--pad 0|8] [--out FILE]
// --tilings: the matrix GEMMs to time, each "global" (kernels/gemm_sgmat.wgsl, W's tiles from
//   global memory) or TMTN.SGMSGN.BK (kernels/gemm_sgmat_staged.wgsl: 16 x 16 tiles a
//   subgroup, subgroups along M and N, K step), e.g. 44.22.32: 4 x 4 tiles a subgroup, 2 x 2
//   subgroups (a 128 x 128 tile), K steps of 32; "sgmat" in --kernels adds one kernel per
//   tiling (default: the engine's, LEOAM_MATRIX_GEMM_TILING or global).
// --pad: gemm_sgmat's row padding in halves (default: 8 where workgroup memory allows, else 0).
// --small (the default on a CPU adapter): shapes / 32 and M = 64, 128, so lavapipe finishes.
// Timing: a warm-up submit right before the timed ones (DESIGN §6), median of 5 submits of
// enough repetitions to last ~0.1 s each.
import { writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { acquireGpu, releaseGpu, SUBGROUP_MATRIX_FEATURE } from "../engine/gpu.ts"
import { Uniform } from "../engine/buffers.ts"
import { checkMatrixGemm, type GemmCase, gemmError, GEMM_TOLERANCE, matrixGemmConstants, matrixGemmKey, matrixGemmShapeFromEnv, matrixGemmShapeName, matrixGemmTilingProblem, type MatrixGemmTiling, parseMatrixGemmShape, GLOBAL_W_SHAPE } from "../engine/matrix-check.ts"
import { gemmColumnsPerGroup, gemmKey, gemmRowsPerGroup } from "../engine/model-resources.ts"
import { type PipelineKey, Pipelines } from "../engine/pipelines.ts"
import { fillRandom, timeKernel } from "./gpu-timing.ts"

const { values: args } = parseArgs({
  options: {
    small: { type: "boolean" },
    m: { type: "string" },
    kernels: { type: "string", default: "sgmat,gemm" },
    "max-seconds": { type: "string", default: "240" },
    pad: { type: "string" },
    tilings: { type: "string" },
    out: { type: "string" },
  },
})

const PYTORCH_BF16_TFLOPS = 788 // 778-798 measured on the same GPUs (issue 12)

const gpu = await acquireGpu()
const small = args.small ?? gpu.kind === "cpu"
const scale = small ? 32 : 1
const ms = args.m ? args.m.split(",").map(Number) : small ? [64, 128] : [512, 2048, 8192, 16384]
if (ms.some((m) => !(Number.isInteger(m) && m > 0))) throw new Error(`--m: positive integers, not ${args.m}`)
const maxSeconds = Number(args["max-seconds"])
const wanted = new Set(args.kernels!.split(","))
if (args.pad !== undefined && !["0", "8"].includes(args.pad)) throw new Error(`--pad: 0 or 8, not ${args.pad}`)
const maxBytes = gpu.limits.maxComputeWorkgroupStorageSize
const tilings = (args.tilings ? args.tilings.split(",") : [undefined]).map((text) => {
  const shape = text === undefined ? (matrixGemmShapeFromEnv() ?? GLOBAL_W_SHAPE) : parseMatrixGemmShape(text)
  const t = matrixGemmConstants(gpu.subgroupMaxSize, maxBytes, shape)
  const tiling = t && args.pad !== undefined ? { ...t, PAD: Number(args.pad) } : t
  const problem = tiling ? matrixGemmTilingProblem(tiling, maxBytes) : (matrixGemmTilingProblem({ SG: gpu.subgroupMaxSize, PAD: 0, ...shape }, maxBytes) ?? "subgroup size")
  return { name: `sgmat-${matrixGemmShapeName(shape)}`, tiling: problem === undefined ? tiling : undefined, problem }
})
// The device's feature, not gpu.matrixF16: that is cleared when the engine's own tiling fails
// its check at device open, and the other tilings are still worth timing (each is checked here).
const unavailable = gpu.device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)
  ? undefined
  : gpu.subgroupMatrixConfigs.length > 0
    ? `not used: no 16x16x16 f16 -> f32 configuration, no fixed subgroup size of 16..64, or the kernel's check failed (the "[leoam gpu]" line above says which); offered: ${JSON.stringify(gpu.subgroupMatrixConfigs)}`
    : `no subgroup-matrix configuration offered (LEOAM_MATRIX_UNITS=${process.env.LEOAM_MATRIX_UNITS ?? "0"}: set it to auto or 1 to ask for them)`
console.log(`gemm-bench on ${gpu.adapterName}: matrix units ${unavailable ? `off: ${unavailable}` : "on"}; ${tilings.map((t) => `${t.name}: ${t.tiling ? JSON.stringify(t.tiling) : t.problem}`).join("; ")}`)

interface Kernel {
  readonly name: string
  readonly tiling?: MatrixGemmTiling
  key(flags: Record<string, boolean>): PipelineKey
}
const kernels: Kernel[] = []
if (wanted.has("sgmat") && !unavailable) {
  for (const t of tilings) if (t.tiling) kernels.push({ name: t.name, tiling: t.tiling, key: (flags) => matrixGemmKey(flags, t.tiling!) })
}
if (wanted.has("gemm")) kernels.push({ name: "gemm", key: (flags) => gemmKey(flags, undefined) })

// Llama-3.1-8B: hidden 4096, 32 heads + 2 x 8 KV heads of 128, intermediate 14336.
const H = 4096 / scale
const shapes: ReadonlyArray<{ name: string; N: number; K: number; flags: Record<string, boolean> }> = [
  { name: "qkv", N: (4096 + 2 * 1024) / scale, K: H, flags: {} },
  { name: "o", N: H, K: H, flags: { ACC: true } },
  { name: "gate/up", N: (2 * 14336) / scale, K: H, flags: { SWIGLU: true } },
  { name: "down", N: H, K: 14336 / scale, flags: { ACC: true } },
]
const cube = 8192 / scale

const pipelines = new Pipelines(gpu)
const device = gpu.device
const started = performance.now()

// --- correctness first: every kernel against the CPU reference at the model's K -------------
const checks: Array<{ kernel: string; case: GemmCase | string; error: number; ok: boolean }> = []
const kernelBlock = (key: PipelineKey) => ({ rows: gemmRowsPerGroup(key), columns: gemmColumnsPerGroup(key) })
for (const k of kernels) {
  // The SwiGLU case's plain product on the same data (same seed) tells how much of its error
  // is the product's own and how much SwiGLU adds (measured against swigluErrorScale).
  const n = 288
  const cases: GemmCase[] = [
    { M: 96, N: 256, K: H, flags: {} },
    { M: 70, N: n, K: H, flags: {} },
    { M: 70, N: n, K: H, flags: { SWIGLU: true, ACC: true } },
  ]
  for (const c of cases) {
    let error = Number.NaN
    try {
      error = await gemmError(device, await pipelines.get(k.key(c.flags)), c, kernelBlock(k.key(c.flags)), 5)
    } catch (e) {
      console.log(`check ${k.name}: ${(e as Error).message}`)
    }
    checks.push({ kernel: k.name, case: c, error, ok: error <= GEMM_TOLERANCE })
    console.log(`check ${k.name} ${JSON.stringify(c)}: relative error ${error.toExponential(2)} ${error <= GEMM_TOLERANCE ? "ok" : "WRONG"}`)
  }
  if (k.tiling) {
    const why = await checkMatrixGemm(gpu, k.tiling)
    checks.push({ kernel: k.name, case: "tile edges (checkMatrixGemm)", error: why === undefined ? 0 : Number.NaN, ok: why === undefined })
    console.log(`check ${k.name} tile edges: ${why ?? "ok"}`)
  }
}
const failed = new Set(checks.filter((c) => !c.ok).map((c) => c.kernel))

// --- timing ------------------------------------------------------------------------------
interface Row {
  shape: string
  M: number
  N: number
  K: number
  kernel: string
  seconds?: number
  tflops?: number
  skipped?: string
}
const rows: Row[] = []

const timeOne = async (k: Kernel, shape: string, M: number, N: number, K: number, flags: Record<string, boolean>): Promise<Row> => {
  const row: Row = { shape, M, N, K, kernel: k.name }
  if ((performance.now() - started) / 1000 > maxSeconds) return { ...row, skipped: "time (--max-seconds)" }
  if (failed.has(k.name) && k.name !== "gemm") return { ...row, skipped: "failed its check" }
  const outs = flags.SWIGLU ? N / 2 : N
  const sizes = { x: M * K * 4, w: N * K * 2, y: M * outs * 4 }
  if (Object.values(sizes).some((b) => b > gpu.limits.maxStorageBufferBindingSize)) return { ...row, skipped: "a buffer exceeds maxStorageBufferBindingSize" }
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST
  const x = device.createBuffer({ label: "x (M, K) f32", size: sizes.x, usage })
  const w = device.createBuffer({ label: "w (N, K) f16", size: sizes.w, usage })
  const y = device.createBuffer({ label: "y (M, outs) f32", size: sizes.y, usage })
  try {
    // Random halves of at most 0.5 in X's two halves make finite f32 values (exponents 2^-15..2^-8).
    await fillRandom(gpu, [x, w], 7, 0.5)
    const key = k.key(flags)
    const pipeline = await pipelines.get(key)
    const u = new Uniform(device, "gemm params", "uuuu")
    u.set(M, N, K, 0)
    const group = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: u.buffer } },
        { binding: 1, resource: { buffer: x } },
        { binding: 2, resource: { buffer: w } },
        { binding: 3, resource: { buffer: y } },
      ],
    })
    const gx = Math.ceil(N / gemmColumnsPerGroup(key))
    const gy = Math.ceil(M / gemmRowsPerGroup(key))
    const encode = (pass: GPUComputePassEncoder) => {
      pass.setPipeline(pipeline)
      pass.setBindGroup(0, group)
      pass.dispatchWorkgroups(gx, gy)
    }
    const once = await timeKernel(device, 1, 1, encode)
    const reps = Math.max(1, Math.min(50, Math.ceil(0.1 / once)))
    const seconds = await timeKernel(device, reps, 5, encode)
    u.buffer.destroy()
    return { ...row, seconds, tflops: (2 * M * N * K) / seconds / 1e12 }
  } finally {
    x.destroy()
    w.destroy()
    y.destroy()
  }
}

for (const k of kernels) rows.push(await timeOne(k, `${cube}^3`, cube, cube, cube, {}))
for (const M of ms) {
  for (const s of shapes) for (const k of kernels) rows.push(await timeOne(k, s.name, M, s.N, s.K, s.flags))
}

// --- report ------------------------------------------------------------------------------
const pad = (s: string | number, n: number) => String(s).padStart(n)
console.log(`\n${"shape".padEnd(9)}${pad("M", 7)}${pad("N", 7)}${pad("K", 7)}  ${"kernel".padEnd(16)}${pad("ms", 10)}${pad("TFLOPS", 9)}${pad("of bf16", 9)}`)
for (const r of rows) {
  const cells = r.seconds === undefined ? `  skipped: ${r.skipped}` : `${pad((r.seconds * 1000).toFixed(3), 10)}${pad(r.tflops!.toPrecision(3), 9)}${pad(`${((100 * r.tflops!) / PYTORCH_BF16_TFLOPS).toFixed(1)}%`, 9)}`
  console.log(`${r.shape.padEnd(9)}${pad(r.M, 7)}${pad(r.N, 7)}${pad(r.K, 7)}  ${r.kernel.padEnd(16)}${cells}`)
}
const speedups = rows
  .filter((r) => r.kernel.startsWith("sgmat") && r.tflops)
  .map((r) => {
    const base = rows.find((b) => b.kernel === "gemm" && b.shape === r.shape && b.M === r.M && b.tflops)
    return base ? { kernel: r.kernel, shape: r.shape, M: r.M, speedup: r.tflops! / base.tflops! } : undefined
  })
  .filter((s) => s !== undefined)
for (const name of new Set(speedups.map((s) => s.kernel))) {
  console.log(`\n${name} / gemm: ${speedups.filter((s) => s.kernel === name).map((s) => `${s.shape}@${s.M} ${s.speedup.toFixed(2)}x`).join(", ")}`)
}

const report = {
  device: gpu.adapterName,
  small,
  matrix: { on: unavailable === undefined, tilings, why_not: unavailable ?? null, configs: gpu.subgroupMatrixConfigs },
  pytorch_bf16_tflops: PYTORCH_BF16_TFLOPS,
  checks,
  rows,
}
if (args.out) writeFileSync(args.out, `${JSON.stringify(report, null, 2)}\n`)
await releaseGpu()
if (checks.some((c) => !c.ok)) {
  console.error("gemm-bench: a kernel differs from the CPU reference")
  process.exit(1)
}
