// Where kernels/attn_prefill_mx.wgsl goes wrong on a device with subgroup matrices, in one
// run (issue 12 §3): it failed its device-open check on an H100 while the emulation passed.
//   npx tsx bench/flash-diag.ts [--micro] [--full] [--hybrid] [--variants] [--split] [--timing]   (all by default)
// 1. micro: one 16 x 32 by 32 x 16 product per subgroup (4 subgroups) through each load and
//    store form the kernel uses (left P from workgroup f16, right V row- or column-major from
//    workgroup f16, result to storage or through workgroup scratch, accumulator loaded from
//    workgroup, rescaled between two products, constant- or override-sized arrays, a
//    workgroupUniformLoad flag of 4 or 16 bytes declared first or last), each against the
//    exact product (inputs are multiples of 1/16).
// 2. full: the kernel in both forms at small shapes against the CPU reference (with every key
//    zero, one key, the device-open check's case), printing the worst element and a row.
// 3. hybrid: the register form with Q K^T emulated in plain WGSL (P V on the matrix units),
//    and with P V emulated (Q K^T on the matrix units): which half is wrong in place.
// 4. variants: the kernel with 549bf3c's 4-byte flag, fewer subgroups, rescales, KDIRECT.
// 6. split: attn_prefill_fa (the keys split among a workgroup's subgroups, LEOAM_MATRIX_ATTENTION=split)
//    against the CPU reference: 8, 4, 2 and 1 splits, 1, 2 and 4 row tiles, tiles of 64 and 32 keys, D 64 and 128, GQA,
//    WINDOW passes, keys zero, rescales; then its time on one chunk (as in 5) with parts taken
//    out, beside KDIRECT.
// 5. timing: where a tile's time goes: one 512-query chunk at position 7680 of 8B heads with
//    parts of the kernel taken out (results wrong, times comparable): no softmax, no Q K^T,
//    no P V, K/V straight from the pool (KDIRECT), staging alone.
// Results of the first run: bench/results/2026-12-07-night-flash-attention/.
import { parseArgs } from "node:util"
import { type AttnCase, attnInputs, attnReference, describeError, type KeyWindow, runPrefillAttention } from "../engine/attn-check.ts"
import { readF32, storageBuffer, Uniform, upload } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu, SUBGROUP_MATRIX_FEATURE } from "../engine/gpu.ts"
import { worstError } from "../engine/matrix-check.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { emulatePv, emulateQk, type Micro, microShader, u32Flag, without, withoutSplit } from "./flash-diag-kernels.ts"
import { fillRandom, timeKernel } from "./gpu-timing.ts"

const { values: args } = parseArgs({ options: { micro: { type: "boolean" }, full: { type: "boolean" }, hybrid: { type: "boolean" }, variants: { type: "boolean" }, timing: { type: "boolean" }, split: { type: "boolean" }, dry: { type: "string" } } })
const all = !args.micro && !args.full && !args.hybrid && !args.variants && !args.timing && !args.split

if (args.dry) {
  // The transformed texts, written to the folder given (checked by eye and by a compile on a
  // device with subgroup matrices; lavapipe cannot compile them).
  const { mkdirSync, writeFileSync } = await import("node:fs")
  mkdirSync(args.dry, { recursive: true })
  const p = new Pipelines({ hasSubgroups: true } as never)
  const src = (shared: boolean, window: boolean) => p.source({ op: "attn_prefill_mx", flags: { WINDOW: window, OSHARED: shared } })
  const k = { SG: 32, NSG: 4, PAD: 8, G: 4, D: 128 }
  writeFileSync(`${args.dry}/qk.wgsl`, emulateQk(src(false, false)))
  writeFileSync(`${args.dry}/pv.wgsl`, emulatePv(src(false, false)))
  writeFileSync(`${args.dry}/pv-window.wgsl`, emulatePv(src(false, true)))
  writeFileSync(`${args.dry}/u32.wgsl`, u32Flag(src(false, false)))
  writeFileSync(`${args.dry}/without.wgsl`, without(src(false, false), ["softmax", "qk", "pv"]))
  writeFileSync(`${args.dry}/without-direct.wgsl`, without(p.source({ op: "attn_prefill_mx", flags: { KDIRECT: true } }), ["softmax", "pv"]))
  writeFileSync(`${args.dry}/micro.wgsl`, microShader({ right: "row", store: "scratch", acc: "load", sizes: "override", rescale: true, flag: { type: "u32", first: false } }))
  writeFileSync(`${args.dry}/micro-loop.wgsl`, microShader({ right: "row", store: "scratch", acc: "zero", sizes: "override", loop: 3, flag: { type: "u32", first: false } }))
  void k
  process.exit(0)
}
const gpu = await acquireGpu()
const device = gpu.device
console.log(`flash-diag on ${gpu.adapterName}: subgroups ${gpu.subgroupMinSize}..${gpu.subgroupMaxSize}, workgroup memory ${gpu.limits.maxComputeWorkgroupStorageSize} B, matrix attention at open: ${gpu.matrixAttention ? (gpu.matrixAttentionSplit ? "split (attn_prefill_fa)" : gpu.matrixAttentionShared ? "OSHARED" : gpu.matrixAttentionDirect ? "KDIRECT" : "registers") : "refused"}; toggles ${process.env.LEOAM_DAWN_TOGGLES ?? "(none extra)"}`)
if (!device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)) {
  console.log("no subgroup matrices on this device: nothing to diagnose")
  await releaseGpu()
  process.exit(0)
}
const SG = gpu.subgroupMaxSize

// One pipeline per (text, constants): several cases share one (GPU compiles take about a second each).
const compiled = new Map<string, Promise<GPUComputePipeline | string>>()
const compile = (label: string, code: string, constants: Record<string, number> = {}): Promise<GPUComputePipeline | string> => {
  const key = `${JSON.stringify(constants)}\n${code}`
  let pipeline = compiled.get(key)
  if (pipeline === undefined) {
    pipeline = compileOnce(label, code, constants)
    compiled.set(key, pipeline)
  }
  return pipeline
}
const compileOnce = async (label: string, code: string, constants: Record<string, number>): Promise<GPUComputePipeline | string> => {
  const module = device.createShaderModule({ label, code })
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error")
  if (errors.length > 0) return `compile error: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; ").slice(0, 400)}`
  try {
    return await device.createComputePipelineAsync({ label, layout: "auto", compute: { module, entryPoint: "main", constants } })
  } catch (e) {
    return `pipeline error: ${(e as Error).message.slice(0, 400)}`
  }
}

// ---- 1. micro ----------------------------------------------------------------------------
/** A (16 x 32), B (32 x 16), C0 (16 x 16): multiples of 1/16 in [-2, 2), exact in f16 and in f32 sums. */
const microInputs = (() => {
  let s = 12345
  const next = () => {
    s = (s * 1103515245 + 12345) % 2147483648
    return (Math.floor((s / 2147483648) * 64) - 32) / 16
  }
  return Float32Array.from({ length: 1280 }, next)
})()

const microWant = (m: Micro): Float32Array => {
  const x = microInputs
  const ab = new Float32Array(256)
  for (let r = 0; r < 16; r++) for (let n = 0; n < 16; n++) for (let k = 0; k < 32; k++) ab[r * 16 + n]! += x[r * 32 + k]! * x[512 + k * 16 + n]!
  if (m.loop) return ab.map((v) => v * m.loop!)
  const o = ab.map((v, e) => v + (m.acc === "load" ? x[1024 + e]! : 0))
  return m.rescale ? o.map((v, e) => (v * (Math.floor(e / 16) + 1)) / 16 + ab[e]!) : o
}

const runMicro = async (m: Micro): Promise<string> => {
  const pipeline = await compile("micro", microShader(m), { SG })
  if (typeof pipeline === "string") return pipeline
  const inp = upload(device, "micro in", microInputs)
  const res = storageBuffer(device, "micro out", 1024 * 4)
  const enc = device.createCommandEncoder()
  const pass = enc.beginComputePass()
  pass.setPipeline(pipeline)
  pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [inp, res].map((buffer, binding) => ({ binding, resource: { buffer } })) }))
  pass.dispatchWorkgroups(1)
  pass.end()
  device.queue.submit([enc.finish()])
  const got = await readF32(device, res, 0, 1024)
  inp.destroy()
  res.destroy()
  const want = microWant(m)
  const parts: string[] = []
  let worst = 0
  for (let sg = 0; sg < 4; sg++) {
    let e = 0
    let at = 0
    for (let i = 0; i < 256; i++) {
      const d = Math.abs(got[sg * 256 + i]! - want[i]!)
      if (!(d <= e)) [e, at] = [Number.isNaN(d) ? Infinity : d, i]
    }
    worst = Math.max(worst, e)
    if (e > 1e-3) parts.push(`subgroup ${sg}: ${e.toPrecision(3)} at (${Math.floor(at / 16)}, ${at % 16}); row 0 got [${Array.from(got.subarray(sg * 256, sg * 256 + 6), (v) => v.toFixed(3)).join(", ")}] want [${Array.from(want.subarray(0, 6), (v) => v.toFixed(3)).join(", ")}]`)
  }
  // What a wrong result equals instead, if it is one of the usual mistakes.
  if (worst > 1e-3) {
    const x = microInputs
    const guesses: Record<string, (r: number, n: number) => number> = {
      transposed: (r, n) => want[n * 16 + r]!,
      "A B without C0": (r, n) => { let s = 0; for (let k = 0; k < 32; k++) s += x[r * 32 + k]! * x[512 + k * 16 + n]!; return s },
      "only keys 0..15": (r, n) => { let s = 0; for (let k = 0; k < 16; k++) s += x[r * 32 + k]! * x[512 + k * 16 + n]!; return s },
      "B transposed (B^T read)": (r, n) => { let s = 0; for (let k = 0; k < 16; k++) s += x[r * 32 + k]! * x[512 + n * 16 + k]! + x[r * 32 + 16 + k]! * x[512 + 256 + n * 16 + k]!; return s },
      zero: () => 0,
    }
    for (const [name, f] of Object.entries(guesses)) {
      let e = 0
      for (let i = 0; i < 256; i++) e = Math.max(e, Math.abs(got[i]! - f(Math.floor(i / 16), i % 16)))
      if (e < 1e-3) parts.push(`subgroup 0 equals ${name}`)
    }
  }
  return `${worst <= 1e-3 ? "ok" : "WRONG"} ${worst.toPrecision(3)}${parts.length ? `; ${parts.join("; ")}` : ""}`
}

if (all || args.micro) {
  console.log("\n== micro: a 16x32 P by a 32x16 V per subgroup, 4 subgroups")
  const cases: Array<[string, Micro]> = [
    ["right row-major, result to storage", { right: "row", store: "storage", acc: "zero", sizes: "const" }],
    ["right col-major, result to storage", { right: "col", store: "storage", acc: "zero", sizes: "const" }],
    ["right row-major, through scratch", { right: "row", store: "scratch", acc: "zero", sizes: "const" }],
    ["right col-major, through scratch", { right: "col", store: "scratch", acc: "zero", sizes: "const" }],
    ["right col-major, two statements", { right: "col", store: "storage", acc: "zero", sizes: "const", chain: false }],
    ["right col-major, accumulator loaded", { right: "col", store: "scratch", acc: "load", sizes: "const" }],
    ["right col-major, override sizes", { right: "col", store: "scratch", acc: "zero", sizes: "override" }],
    ["right col-major, override sizes, loaded, rescaled", { right: "col", store: "scratch", acc: "load", sizes: "override", rescale: true }],
    ["right row-major, override sizes, loaded, rescaled", { right: "row", store: "scratch", acc: "load", sizes: "override", rescale: true }],
    ["right row-major, const sizes, loaded, rescaled", { right: "row", store: "scratch", acc: "load", sizes: "const", rescale: true }],
    ["+ u32 flag declared last", { right: "row", store: "scratch", acc: "load", sizes: "override", rescale: true, flag: { type: "u32", first: false } }],
    ["+ u32 flag declared first", { right: "row", store: "scratch", acc: "load", sizes: "override", rescale: true, flag: { type: "u32", first: true } }],
    ["+ vec4<u32> flag declared last", { right: "row", store: "scratch", acc: "load", sizes: "override", rescale: true, flag: { type: "vec4<u32>", first: false } }],
    ["+ vec4<u32> flag declared first", { right: "row", store: "scratch", acc: "load", sizes: "override", rescale: true, flag: { type: "vec4<u32>", first: true } }],
    ["col-major + u32 flag declared last", { right: "col", store: "scratch", acc: "zero", sizes: "const", flag: { type: "u32", first: false } }],
    ["3-tile loop, owners' branch", { right: "row", store: "scratch", acc: "zero", sizes: "override", loop: 3 }],
    ["3-tile loop, owners' branch, u32 flag last", { right: "row", store: "scratch", acc: "zero", sizes: "override", loop: 3, flag: { type: "u32", first: false } }],
    ["3-tile loop, owners' branch, vec4<u32> flag last", { right: "row", store: "scratch", acc: "zero", sizes: "override", loop: 3, flag: { type: "vec4<u32>", first: false } }],
  ]
  for (const [name, m] of cases) console.log(`${name}: ${await runMicro(m).catch((e: Error) => `failed: ${e.message}`)}`)
}

// ---- 2. full kernel ----------------------------------------------------------------------
const pipelines = new Pipelines(gpu)
const kernelSource = (shared: boolean, window: boolean) => pipelines.source({ op: "attn_prefill_mx", flags: { WINDOW: window, OSHARED: shared } })
const constantsFor = (c: AttnCase, shared: boolean) => ({ SG, NSG: shared ? 2 : 4, PAD: shared ? 0 : 8, G: c.G, D: c.D })

const runCase = (...a: Parameters<typeof runCaseOnce>) => runCaseOnce(...a).catch((e: Error) => console.log(`${a[0]}: failed: ${e.message}`))
const runCaseOnce = async (label: string, code: string, c: AttnCase, nsg: number, constants: Record<string, number>, opts: { zeroKeys?: boolean; windows?: ReadonlyArray<KeyWindow>; seed?: number } = {}) => {
  const pipeline = await compile(label, code, constants)
  if (typeof pipeline === "string") return console.log(`${label}: ${pipeline}`)
  const inputs = attnInputs(c, opts.seed ?? 21)
  if (opts.zeroKeys) {
    inputs.k.bits.fill(0)
    inputs.k.values.fill(0)
  }
  const want = attnReference(c, inputs)
  const got = await runPrefillAttention(device, pipeline, c, inputs, 16 * nsg, opts.windows)
  const { at, error } = worstError(got, want)
  const H = c.G * c.KV
  const row = at < 0 ? 0 : Math.floor(at / c.D) * c.D
  const show = (a: Float32Array) => Array.from(a.subarray(row, row + 6), (v) => v.toFixed(3)).join(", ")
  // How many (query, head) rows are wrong, and which row indices (query * G + g of its kv head) first.
  const badRows: number[] = []
  for (let r = 0; r < c.M * H; r++) {
    let e = 0
    for (let d = 0; d < c.D; d++) e = Math.max(e, Math.abs(got[r * c.D + d]! - want[r * c.D + d]!))
    if (!(e <= 4e-3)) badRows.push(r)
  }
  const rowsOf = badRows.slice(0, 8).map((r) => `q${Math.floor(r / H)}h${r % H}`).join(" ")
  console.log(`${label} ${JSON.stringify(c)}${opts.zeroKeys ? " keys zero" : ""}${opts.windows ? ` windows ${JSON.stringify(opts.windows)}` : ""}: ${error <= 4e-3 ? "ok" : "WRONG"} ${describeError(c, got, at, error)}; ${badRows.length}/${c.M * H} rows wrong ${rowsOf}; that row got [${show(got)}] want [${show(want)}]`)
}

const checkCase: AttnCase = { G: 4, KV: 2, D: 128, BS: 16, pos0: 37, M: 45 }
if (all || args.full) {
  console.log("\n== full kernel against the CPU reference")
  for (const shared of [false, true]) {
    const name = shared ? "OSHARED" : "registers"
    const tiny: AttnCase[] = [
      { G: 1, KV: 1, D: 64, BS: 16, pos0: 0, M: 1 },
      { G: 3, KV: 2, D: 64, BS: 16, pos0: 0, M: 45 },
      { G: 1, KV: 1, D: 128, BS: 16, pos0: 0, M: 1 },
      { G: 1, KV: 1, D: 128, BS: 16, pos0: 0, M: 32 },
      { G: 4, KV: 1, D: 128, BS: 16, pos0: 0, M: 16 },
    ]
    for (const c of tiny) await runCase(name, kernelSource(shared, false), c, shared ? 2 : 4, constantsFor(c, shared))
    const small: AttnCase = { G: 1, KV: 1, D: 64, BS: 16, pos0: 0, M: 16 }
    await runCase(name, kernelSource(shared, false), small, shared ? 2 : 4, constantsFor(small, shared), { zeroKeys: true })
    await runCase(name, kernelSource(shared, false), checkCase, shared ? 2 : 4, constantsFor(checkCase, shared), { zeroKeys: true })
    await runCase(name, kernelSource(shared, false), checkCase, shared ? 2 : 4, constantsFor(checkCase, shared))
    await runCase(`${name} WINDOW`, kernelSource(shared, true), checkCase, shared ? 2 : 4, constantsFor(checkCase, shared), { windows: [[0, 32], [32, 64], [64, 0]] })
  }
}

// ---- 3. hybrid ---------------------------------------------------------------------------
if (all || args.hybrid) {
  console.log("\n== hybrid: one half emulated, the other on the matrix units (registers form)")
  const k = constantsFor(checkCase, false)
  for (const [name, f] of [["Q K^T emulated, P V real", emulateQk], ["P V emulated, Q K^T real", emulatePv]] as const) {
    await runCase(name, f(kernelSource(false, false)), checkCase, 4, k)
    await runCase(name, f(kernelSource(false, false)), checkCase, 4, k, { zeroKeys: true })
    await runCase(`${name} WINDOW`, f(kernelSource(false, true)), checkCase, 4, k, { windows: [[0, 32], [32, 64], [64, 0]] })
  }
}

// ---- 4. variants -------------------------------------------------------------------------
if (all || args.variants) {
  console.log("\n== variants of the kernel text")
  const k = constantsFor(checkCase, false)
  const ks = constantsFor(checkCase, true)
  const variants: Array<[string, string, Record<string, number>, number]> = [
    ["u32 flag (as 549bf3c)", u32Flag(kernelSource(false, false)), k, 4],
    ["u32 flag (as 549bf3c) OSHARED", u32Flag(kernelSource(true, false)), ks, 2],
    ["2 subgroups, no pad", kernelSource(false, false), { ...k, NSG: 2, PAD: 0 }, 2],
    ["1 subgroup", kernelSource(false, false), { ...k, NSG: 1 }, 1],
  ]
  for (const [name, code, constants, nsg] of variants) await runCase(name, code, checkCase, nsg, constants)
  await runCase("qAmp 24 (the max moves: rescales)", kernelSource(false, false), { ...checkCase, qAmp: 24 }, 4, k)
  // K and V straight from the pool as matrices (KDIRECT).
  const direct = (shared: boolean, window: boolean) => pipelines.source({ op: "attn_prefill_mx", flags: { WINDOW: window, OSHARED: shared, KDIRECT: true } })
  await runCase("KDIRECT", direct(false, false), checkCase, 4, k)
  await runCase("KDIRECT qAmp 24", direct(false, false), { ...checkCase, qAmp: 24 }, 4, k)
  await runCase("KDIRECT WINDOW", direct(false, true), checkCase, 4, k, { windows: [[0, 32], [32, 64], [64, 0]] })
  await runCase("KDIRECT WINDOW BS 32", direct(false, true), { ...checkCase, BS: 32 }, 4, k, { windows: [[64, 0], [0, 64]] })
  await runCase("KDIRECT D 64", direct(false, false), { G: 3, KV: 2, D: 64, BS: 16, pos0: 70, M: 37 }, 4, { ...k, G: 3, D: 64 })
  await runCase("KDIRECT OSHARED", direct(true, false), checkCase, 2, ks)
  await runCase("qAmp 24 OSHARED", kernelSource(true, false), { ...checkCase, qAmp: 24 }, 2, ks)
}

// ---- 6. split ---------------------------------------------------------------------------
if (all || args.split) {
  console.log("\n== split: attn_prefill_fa (keys split among subgroups) against the CPU reference")
  const split = (window: boolean, bk32 = false) => pipelines.source({ op: "attn_prefill_fa", flags: { WINDOW: window, KDIRECT: true, BK32: bk32 } })
  const forms: Array<[number, number, boolean]> = [[4, 1, false], [4, 2, false], [4, 4, false], [2, 1, false], [8, 1, true]]
  for (const [NSG, RT, bk32] of forms) {
    const name = `SPLIT NSG ${NSG} RT ${RT}${bk32 ? " BK 32" : ""}`
    const k = { SG, NSG, RT, G: checkCase.G, D: checkCase.D }
    await runCase(name, split(false, bk32), checkCase, RT, k)
    await runCase(`${name} qAmp 24`, split(false, bk32), { ...checkCase, qAmp: 24 }, RT, k)
    await runCase(`${name} WINDOW`, split(true, bk32), checkCase, RT, k, { windows: [[0, 32], [32, 64], [64, 0]] })
  }
  const k = { SG, NSG: 4, RT: 1, G: checkCase.G, D: checkCase.D }
  await runCase("SPLIT keys zero", split(false), checkCase, 1, k, { zeroKeys: true })
  await runCase("SPLIT one query", split(false), { G: 1, KV: 1, D: 128, BS: 16, pos0: 0, M: 1 }, 1, { ...k, G: 1 })
  await runCase("SPLIT long", split(false), { G: 4, KV: 2, D: 128, BS: 16, pos0: 900, M: 70 }, 1, k)
  await runCase("SPLIT WINDOW BS 32 qAmp 24", split(true), { ...checkCase, BS: 32, qAmp: 24 }, 1, k, { windows: [[64, 0], [0, 64]] })
  await runCase("SPLIT D 64", split(false), { G: 3, KV: 2, D: 64, BS: 16, pos0: 70, M: 37 }, 1, { ...k, G: 3, D: 64 })
  await runCase("SPLIT D 64 WINDOW", split(true), { G: 3, KV: 2, D: 64, BS: 16, pos0: 70, M: 37 }, 1, { ...k, G: 3, D: 64 }, { windows: [[80, 0], [0, 32], [32, 80]] })
  await timeParts("split timing: a 512-query chunk at position 7680, 8B heads, attn_prefill_fa; parts taken out (results wrong, times comparable)", [
    ["KDIRECT (attn_prefill_mx, 4 subgroups, 64 rows)", pipelines.source({ op: "attn_prefill_mx", flags: { KDIRECT: true } }), { SG, NSG: 4, PAD: 8 }, 64],
    ...([[4, 1, false], [4, 4, false], [8, 1, true]] as const).flatMap(([NSG, RT, bk32]): Array<[string, string, Record<string, number>, number]> => {
      const name = `fa${NSG}r${RT}${bk32 ? "k32" : ""}`
      const code = split(false, bk32)
      return [
        [`${name} whole`, code, { SG, NSG, RT }, 16 * RT],
        [`${name} no softmax`, withoutSplit(code, ["softmax"]), { SG, NSG, RT }, 16 * RT],
        [`${name} no Q K^T`, withoutSplit(code, ["qk"]), { SG, NSG, RT }, 16 * RT],
        [`${name} no P V`, withoutSplit(code, ["pv"]), { SG, NSG, RT }, 16 * RT],
        [`${name} loads and merge alone`, withoutSplit(code, ["softmax", "qk", "pv"]), { SG, NSG, RT }, 16 * RT],
      ]
    }),
  ])
}

/** Times each (label, code, constants, rows a workgroup) on one 512-query chunk at position 7680 of 8B heads. */
async function timeParts(title: string, cases: ReadonlyArray<readonly [string, string, Record<string, number>, number]>): Promise<void> {
  console.log(`\n== ${title}`)
  const [H, KV, D, BS, chunk, pos0] = [32, 8, 128, 16, 512, 7680]
  const blocks = (pos0 + chunk) / BS
  const kp = storageBuffer(device, "k pool", blocks * KV * BS * D * 2)
  const vp = storageBuffer(device, "v pool", blocks * KV * BS * D * 2)
  await fillRandom(gpu, [kp, vp], 3, 1)
  const table = upload(device, "table", Uint32Array.from({ length: blocks }, (_, b) => b))
  const q = storageBuffer(device, "q", chunk * H * D * 4)
  await fillRandom(gpu, [q], 4, 1)
  const out = storageBuffer(device, "out", chunk * H * D * 4)
  const u = new Uniform(device, "timing", "uuuuufuu")
  u.set(chunk, H, KV, BS, pos0, 1 / Math.sqrt(D))
  const flops = 4 * H * D * (chunk * pos0 + (chunk * (chunk + 1)) / 2)
  for (const [name, code, constants, rows] of cases) {
    try {
      const pipeline = await compile(name, code, { ...constants, G: H / KV, D })
      if (typeof pipeline === "string") {
        console.log(`${name}: ${pipeline}`)
        continue
      }
      const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [u.buffer, q, kp, vp, table, out].map((buffer, binding) => ({ binding, resource: { buffer } })) })
      const seconds = await timeKernel(device, 5, 3, (pass) => {
        pass.setPipeline(pipeline)
        pass.setBindGroup(0, group)
        pass.dispatchWorkgroups((chunk * (H / KV)) / rows, KV)
      })
      console.log(`${name}: ${(seconds * 1e3).toFixed(3)} ms (${(flops / seconds / 1e12).toFixed(2)} TFLOPS-equivalent)`)
    } catch (e) {
      console.log(`${name}: failed: ${(e as Error).message}`)
    }
  }
  for (const b of [kp, vp, table, q, out, u.buffer]) b.destroy()
}

if (all || args.timing) {
  const staged = kernelSource(false, false)
  const direct = pipelines.source({ op: "attn_prefill_mx", flags: { KDIRECT: true } })
  const k = { SG, NSG: 4, PAD: 8 }
  await timeParts("timing: a 512-query chunk at position 7680, 8B heads (32 query, 8 KV, D 128), 4 subgroups; parts taken out", [
    ["whole kernel", staged, k, 64],
    ["no softmax", without(staged, ["softmax"]), k, 64],
    ["no Q K^T", without(staged, ["qk"]), k, 64],
    ["no P V", without(staged, ["pv"]), k, 64],
    ["staging alone", without(staged, ["softmax", "qk", "pv"]), k, 64],
    ["KDIRECT", direct, k, 64],
    ["KDIRECT, no softmax", without(direct, ["softmax"]), k, 64],
    ["KDIRECT, no P V", without(direct, ["pv"]), k, 64],
  ])
}

await releaseGpu()
