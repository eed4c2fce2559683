// Decode attention alone over fp16, int8 and int4 blocks, side by side on the same inputs (issue
// 13 §2: attention over compressed slots should cost no more than fp16, having 2-4x fewer bytes
// to read): kernels/attn_decode.wgsl (fp16 pools) and its QUANT variant in two forms, the first
// one (today's default) and the fold form (QFOLD, kernels/lib/attn_decode_quant.wgsl;
// LEOAM_QUANT_ATTN=fold), at Llama-3.1-8B heads (32 query, 8 KV, D 128) and LongChat-7B's
// (32/32, D 128), over N selected tokens.
//   npx tsx bench/attn-decode-quant.ts [--shapes 8b,longchat] [--tokens 4096,16384,65536]
//       [--bits 16,8,4] [--forms first,fold] [--layers 32] [--trials 5] [--targets 256]
//       [--distinct-mib 512] [--check-only] [--out FILE]
// First the correctness check: each QUANT form and attn_combine on small mixed lists (fp16 tail
// blocks, int8 and int4 chunks quantized by kv/quant.ts, shuffled) at both shapes and the test
// model's, against the CPU reference's softmax over the dequantized keys and values
// (bench/quant-attn-case.ts); a failure is printed and the exit status is 1.
// Then per shape and N: random fp16 K/V pools of N tokens (16-token blocks, one entry each, in
// order); kernels/quantize.wgsl (the seal's quantizer) turns them into int8 and int4 slots of 256
// tokens, so all three attend the same keys and values (the max difference of int8's and int4's
// output from fp16's is printed as a sanity check, not a test). Each is timed as the engine runs
// it: splits by the engine's rule (engine/kv/pool.ts: about --targets workgroups; more targets
// show what more splits would give), --layers dispatches of attn_decode per submit (32 layers'
// worth), rotating over copies of the pools that together exceed --distinct-mib (a layer's reads
// come from memory, not the L2), median of --trials submits; then the same with attn_combine
// after each. Prints µs per layer, ms per 32 layers and the bytes read per second; JSON with --out.
// On the CPU (lavapipe) times say little about a GPU; the check is what counts there.
import { writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { bind, readF32, storageBuffer, Uniform, upload } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { attnDecodeKey } from "../engine/model-resources.ts"
import { type PipelineKey, Pipelines } from "../engine/pipelines.ts"
import { blockWords, type KvShape } from "../kv/quant.ts"
import { dummyPresets } from "../models/config.ts"
import { fillRandom, timeKernel } from "./gpu-timing.ts"
import { quantAttnCase } from "./quant-attn-case.ts"

const { values: args } = parseArgs({
  options: {
    shapes: { type: "string", default: "8b,longchat" },
    tokens: { type: "string" },
    bits: { type: "string", default: "16,8,4" },
    forms: { type: "string", default: "first,fold" },
    layers: { type: "string", default: "32" },
    trials: { type: "string", default: "5" },
    targets: { type: "string", default: "256" },
    "distinct-mib": { type: "string", default: "512" },
    "check-only": { type: "boolean", default: false },
    out: { type: "string" },
  },
})

const gpu = await acquireGpu()
const dev = gpu.device
const pipelines = new Pipelines(gpu)
const small = gpu.kind === "cpu"
const BS = 16
const TILE = 256
const CHUNK = 256 // tokens per quantized slot (a quantize job)
const presets = { "8b": dummyPresets["llama-3.1-8b"]!, longchat: dummyPresets["longchat-7b-32k"]! }
type ShapeName = keyof typeof presets
const shapes = args.shapes!.split(",") as ShapeName[]
for (const s of shapes) if (!(s in presets)) throw new Error(`--shapes: ${s} is not one of ${Object.keys(presets).join(", ")}`)
const tokensList = (args.tokens ?? (small ? "1024" : "4096,16384,65536")).split(",").map(Number)
const bitsList = args.bits!.split(",").map(Number) as Array<16 | 8 | 4>
const layers = Number(args.layers)
const trials = Number(args.trials)
const targets = args.targets!.split(",").map(Number)
const distinctBytes = Number(args["distinct-mib"]) * 2 ** 20
console.log(`device: ${gpu.adapterName} (${gpu.kind}), subgroups ${gpu.hasSubgroups}, workgroup memory ${dev.limits.maxComputeWorkgroupStorageSize} B`)

const forms = args.forms!.split(",") as Form[]
type Form = "first" | "fold"
for (const f of forms) if (f !== "first" && f !== "fold") throw new Error(`--forms: ${f} is not first or fold`)

/** attn_decode's key: fp16 (form undefined), or QUANT in the first or the fold form (as engine/kv/tiered/select.ts builds it). */
const decodeKey = (G: number, D: number, form?: Form): PipelineKey => {
  const base = attnDecodeKey({ numHeads: G, numKvHeads: 1, headDim: D } as never)
  if (form === undefined) return base
  return form === "fold" ? { ...base, flags: { ...base.flags, QUANT: true, QFOLD: true }, constants: { ...base.constants, BS } } : { ...base, flags: { ...base.flags, QUANT: true } }
}

/** One attn_decode + attn_combine dispatch pair's buffers and bind groups over one pool copy. */
const attnBindings = async (H: number, KV: number, D: number, form: Form | undefined, pools: ReadonlyArray<{ k: GPUBuffer; v: GPUBuffer }>, entries: GPUBuffer, n: number, q: GPUBuffer, eps: number, slot: { qbase: number; slotBlocks: number; k: number; v: number }) => {
  const S = Math.ceil(n / eps)
  const attn = await pipelines.get(decodeKey(H / KV, D, form))
  const combine = await pipelines.get({ op: "attn_combine" })
  const seqs = upload(dev, "seqs", Uint32Array.of(0, n, 0, 0))
  const partO = storageBuffer(dev, "part o", H * S * D * 4)
  const partML = storageBuffer(dev, "part ml", H * S * 8)
  const out = storageBuffer(dev, "out", H * D * 4)
  const ua = new Uniform(dev, "attn", "uuuuufuuuuuu")
  ua.set(H, KV, BS, eps, S, 1 / Math.sqrt(D), 0, 0, slot.qbase, slot.slotBlocks, slot.k, slot.v)
  const uc = new Uniform(dev, "combine", "uuuu")
  uc.set(H, S, D, 0)
  const groups = pools.map((p) => bind(dev, attn, [[0, ua.buffer], [1, q], [2, p.k], [3, p.v], [4, entries], [5, seqs], [6, partO], [7, partML]]))
  const gc = bind(dev, combine, [[0, uc.buffer], [1, partO], [2, partML], [3, out]])
  const encode = (pass: GPUComputePassEncoder, r: number, withCombine: boolean) => {
    pass.setPipeline(attn)
    pass.setBindGroup(0, groups[r % groups.length])
    pass.dispatchWorkgroups(S, KV)
    if (withCombine) {
      pass.setPipeline(combine)
      pass.setBindGroup(0, gc)
      pass.dispatchWorkgroups(H)
    }
  }
  const free = () => {
    for (const b of [seqs, partO, partML, out, ua.buffer, uc.buffer]) b.destroy()
  }
  return { S, out, encode, free }
}

// --- 1. correctness ---------------------------------------------------------------------------
const checkCases: Array<[string, number, number, number, 8 | 4]> = [
  ["8b int8 slots", 4, 8, 128, 8],
  ["8b int4 slots", 4, 8, 128, 4],
  ["longchat int4 slots", 1, 32, 128, 4],
  ["test model int8 slots", 3, 2, 64, 8],
]
let failed = false
const checks: Array<{ form: Form; name: string; tokens: number; maxAbs: number; worst: number; pass: boolean }> = []
for (const form of forms) for (const [name, G, KV, D, slotBits] of checkCases) {
  const c = quantAttnCase(G, KV, D, slotBits)
  const k = upload(dev, "k", c.kpool)
  const v = upload(dev, "v", c.vpool)
  const entries = upload(dev, "entries", c.list)
  const q = upload(dev, "q", c.q)
  const eps = TILE / BS // one tile per split: several splits over the list
  const run = await attnBindings(c.H, KV, D, form, [{ k, v }], entries, c.entries, q, eps, { qbase: c.qbase, slotBlocks: c.slotBlocks, k: c.kSlotWords, v: c.vSlotWords })
  const enc = dev.createCommandEncoder()
  const pass = enc.beginComputePass()
  run.encode(pass, 0, true)
  pass.end()
  dev.queue.submit([enc.finish()])
  const got = await readF32(dev, run.out, 0, c.H * D)
  // The tolerance of test/kernels-quant.test.ts: |got - want| <= 2e-4 + 2e-4 |want|.
  let worst = 0
  let maxAbs = 0
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - c.want[i])
    maxAbs = Math.max(maxAbs, Number.isNaN(err) ? Infinity : err)
    worst = Math.max(worst, Number.isNaN(err) ? Infinity : err / (2e-4 + 2e-4 * Math.abs(c.want[i])))
  }
  const pass_ = worst <= 1
  failed ||= !pass_
  checks.push({ form, name, tokens: c.tokens, maxAbs, worst, pass: pass_ })
  console.log(`check ${form} ${name} (G ${G}, KV ${KV}, D ${D}, ${c.tokens} tokens): max |error| ${maxAbs.toExponential(2)}, ${worst.toFixed(3)}x the tolerance: ${pass_ ? "ok" : "FAILED"}`)
  run.free()
  for (const b of [k, v, entries, q]) b.destroy()
}

// --- 2. timing --------------------------------------------------------------------------------
interface Row {
  shape: string
  tokens: number
  bits: number
  /** QUANT's form; "-" for fp16. */
  form: string
  target: number
  splits: number
  bytesPerLayer: number
  attnUs: number
  withCombineUs: number
  msPer32: number
  gbPerS: number
  maxDiffFromFp16?: number
}
const rows: Row[] = []
for (const shapeName of args["check-only"] ? [] : shapes) {
  const c = presets[shapeName]
  const [H, KV, D] = [c.numHeads, c.numKvHeads, c.headDim]
  const shape: KvShape = { kvHeads: KV, blockTokens: BS, headDim: D }
  for (const tokens of tokensList) {
    const nb = Math.ceil(tokens / BS)
    const fp16Bytes = nb * KV * BS * D * 2 // one pool (K or V)
    const copies = Math.max(1, Math.min(layers, Math.ceil(distinctBytes / (2 * fp16Bytes))))
    const q = upload(dev, "q", Float32Array.from({ length: H * D }, (_, i) => Math.sin(i * 0.37)))
    // fp16 pools (random, a seed per copy) and, per bits, their quantized slots.
    const fp16 = Array.from({ length: copies }, () => ({ k: storageBuffer(dev, "k f16", fp16Bytes), v: storageBuffer(dev, "v f16", fp16Bytes) }))
    for (let i = 0; i < copies; i++) await fillRandom(gpu, [fp16[i].k, fp16[i].v], 11 + i, 1)
    const outs: Record<number, Float32Array> = {}
    for (const bits of bitsList) {
      const slotBlocks = CHUNK / BS
      const slots = Math.ceil(nb / slotBlocks)
      let pools = fp16
      let slot = { qbase: 0, slotBlocks, k: 0, v: 0 }
      let bytesPerLayer = 2 * fp16Bytes
      let entriesData = Uint32Array.from({ length: 2 * nb }, (_, i) => (i % 2 === 0 ? i / 2 : BS))
      if (bits !== 16) {
        const w = blockWords(shape, bits)
        slot = { qbase: 0, slotBlocks, k: slotBlocks * w.k, v: slotBlocks * w.v }
        bytesPerLayer = nb * (w.k + w.v) * 4
        entriesData = Uint32Array.from({ length: 2 * nb }, (_, i) => (i % 2 === 0 ? i / 2 : BS | (bits << 16)))
        const quantize = await pipelines.get({ op: "quantize", constants: { D, GV: Math.min(32, D), BS } })
        const jobs = Array.from({ length: slots }, (_, j) => [j * slotBlocks, Math.min(CHUNK, (nb - j * slotBlocks) * BS), j * slotBlocks * (w.k + w.v), bits]).flat()
        const jobBuf = upload(dev, "jobs", Uint32Array.from(jobs))
        const staging = storageBuffer(dev, "quantized", nb * (w.k + w.v) * 4)
        const uq = new Uniform(dev, "quantize", "uuuu")
        uq.set(KV, 0, 0, 0)
        pools = []
        for (const f of fp16) {
          const k = storageBuffer(dev, `k int${bits}`, slots * slot.k * 4)
          const v = storageBuffer(dev, `v int${bits}`, slots * slot.v * 4)
          const enc = dev.createCommandEncoder()
          const pass = enc.beginComputePass()
          pass.setPipeline(quantize)
          pass.setBindGroup(0, bind(dev, quantize, [[0, uq.buffer], [1, f.k], [2, f.v], [3, jobBuf], [4, staging]]))
          pass.dispatchWorkgroups(slots, KV)
          pass.end()
          // A job's chunk is its K parts then its V parts; the slots keep K and V in their pools.
          for (let j = 0; j < slots; j++) {
            const jb = Math.min(slotBlocks, nb - j * slotBlocks)
            const at = j * slotBlocks * (w.k + w.v) * 4
            enc.copyBufferToBuffer(staging, at, k, j * slot.k * 4, jb * w.k * 4)
            enc.copyBufferToBuffer(staging, at + jb * w.k * 4, v, j * slot.v * 4, jb * w.v * 4)
          }
          dev.queue.submit([enc.finish()])
          pools.push({ k, v })
        }
        await dev.queue.onSubmittedWorkDone()
        for (const b of [jobBuf, staging, uq.buffer]) b.destroy()
      }
      const entries = upload(dev, "entries", entriesData)
      for (const form of bits === 16 ? [undefined] : forms) for (const target of targets) {
        const eps = Math.max(TILE / BS, Math.ceil(Math.ceil(nb / Math.floor(target / KV)) / (TILE / BS)) * (TILE / BS))
        const run = await attnBindings(H, KV, D, form, pools, entries, nb, q, eps, slot)
        const attnUs = 1e6 * (await timeKernel(dev, layers, trials, (pass, r) => run.encode(pass, r, false)))
        const withCombineUs = 1e6 * (await timeKernel(dev, layers, trials, (pass, r) => run.encode(pass, r, true)))
        const got = await readF32(dev, run.out, 0, H * D)
        if (target === targets[0] && bits === 16) outs[bits] = got
        const ref = outs[16]
        let maxDiff: number | undefined
        if (bits !== 16 && ref !== undefined) {
          maxDiff = 0
          for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i] - ref[i]))
        }
        const row: Row = { shape: shapeName, tokens, bits, form: form ?? "-", target, splits: run.S, bytesPerLayer, attnUs, withCombineUs, msPer32: (withCombineUs * 32) / 1000, gbPerS: bytesPerLayer / attnUs / 1e3, maxDiffFromFp16: maxDiff }
        rows.push(row)
        console.log(
          `${shapeName.padEnd(8)} ${String(tokens).padStart(6)} tokens ${(bits === 16 ? "fp16" : `int${bits} ${form}`).padEnd(10)} ${String(run.S).padStart(4)} splits x ${KV} heads: ` +
            `${attnUs.toFixed(1).padStart(8)} us, with combine ${withCombineUs.toFixed(1).padStart(8)} us per layer = ${row.msPer32.toFixed(3)} ms per 32 layers, ` +
            `${(bytesPerLayer / 2 ** 20).toFixed(1)} MiB per layer at ${row.gbPerS.toFixed(1)} GB/s${maxDiff === undefined ? "" : `, max |out - fp16's| ${maxDiff.toExponential(2)}`}`,
        )
        run.free()
      }
      entries.destroy()
      if (bits !== 16) for (const p of pools) for (const b of [p.k, p.v]) b.destroy()
    }
    for (const p of fp16) for (const b of [p.k, p.v]) b.destroy()
    q.destroy()
    // Side by side: int8's and int4's time against fp16's at the same shape and N.
    const at = (b: number, form: string) => rows.find((r) => r.shape === shapeName && r.tokens === tokens && r.bits === b && r.form === form && r.target === targets[0])
    const f = at(16, "-")
    for (const b of [8, 4]) {
      for (const form of forms) {
        const r = at(b, form)
        if (f && r) console.log(`  ${shapeName} ${tokens}: int${b} ${form} / fp16 = ${(r.withCombineUs / f.withCombineUs).toFixed(2)} (with combine)`)
      }
    }
  }
}

if (args.out) writeFileSync(args.out, JSON.stringify({ date: new Date().toISOString(), device: gpu.adapterName, layers, trials, checks, rows }, null, 2))
await releaseGpu()
if (failed) {
  console.log("correctness check FAILED")
  process.exit(1)
}
