// Prefill attention's contract on the CPU (causal, GQA, paged pool, WINDOW passes) and the
// check that the matrix-unit kernel (kernels/attn_prefill_mx.wgsl) meets it on this device.
// Its Q and P are rounded to f16 (f32 accumulation), so it is held to ATTN_MATRIX_TOLERANCE,
// not to the f32 kernels' 1e-4; as with the matrix GEMM (matrix-check.ts), a device uses it
// only after a small case with partial tiles, GQA rows and a windowed pass matched.
import { attention } from "./cpu-reference.ts"
import { readF32, storageBuffer, Uniform, upload } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import { seededValues, toHalf, worstError } from "./matrix-check.ts"
import { type PipelineKey, Pipelines } from "./pipelines.ts"

export interface AttnCase {
  readonly G: number // query heads per kv head
  readonly KV: number
  readonly D: number
  readonly BS: number // tokens per block
  readonly pos0: number // position of the first query
  readonly M: number // queries
  /** Queries are uniform in [-qAmp, qAmp) (default 3; larger spreads the scores, moving the softmax's max). */
  readonly qAmp?: number
}

/** [k0, k1): k1 = 0 runs to the causal end (attn_prefill WINDOW). */
export type KeyWindow = readonly [k0: number, k1: number]

const FIRST = 1
const LAST = 2

/** Largest |got - want| / max(1, |want|) a correct f16-rounding kernel stays under (outputs are means of values in [-1, 1]). */
export const ATTN_MATRIX_TOLERANCE = 4e-3

/**
 * Keys and values of positions 0 .. pos0 + M - 1 in a pool of seeded f16 blocks stored in a
 * reversed physical order (logical block b is physical nb - 1 - b), queries (M, H, D) f32.
 */
export const attnInputs = (c: AttnCase, seed: number) => {
  const blocks = Math.ceil((c.pos0 + c.M) / c.BS)
  const halves = blocks * c.KV * c.BS * c.D
  const k = toHalf(seededValues(seed, halves))
  const v = toHalf(seededValues(seed + 1, halves))
  const q = seededValues(seed + 2, c.M * c.G * c.KV * c.D, c.qAmp ?? 3)
  const table = Uint32Array.from({ length: blocks }, (_, b) => blocks - 1 - b)
  return { k, v, q, table }
}

/** CPU causal attention of every (query, head): (M, H, D) f32. */
export const attnReference = (c: AttnCase, inputs: ReturnType<typeof attnInputs>): Float32Array => {
  const H = c.G * c.KV
  const keys = c.pos0 + c.M
  const out = new Float32Array(c.M * H * c.D)
  for (let kvh = 0; kvh < c.KV; kvh++) {
    const kk = new Float32Array(keys * c.D)
    const vv = new Float32Array(keys * c.D)
    for (let t = 0; t < keys; t++) {
      const at = ((inputs.table[Math.floor(t / c.BS)]! * c.KV + kvh) * c.BS + (t % c.BS)) * c.D
      kk.set(inputs.k.values.subarray(at, at + c.D), t * c.D)
      vv.set(inputs.v.values.subarray(at, at + c.D), t * c.D)
    }
    for (let i = 0; i < c.M; i++) {
      for (let g = 0; g < c.G; g++) {
        const h = kvh * c.G + g
        attention(out, (i * H + h) * c.D, inputs.q, (i * H + h) * c.D, kk, vv, c.D, 0, c.pos0 + i + 1, c.D, 1 / Math.sqrt(c.D))
      }
    }
  }
  return out
}

/**
 * Runs `pipeline` (an attn_prefill kernel; WINDOW when `windows` is given, each pass in order,
 * FIRST on the first and LAST on the last) with `rows` rows a workgroup; returns (M, H, D).
 */
export const runPrefillAttention = async (
  device: GPUDevice,
  pipeline: GPUComputePipeline,
  c: AttnCase,
  inputs: ReturnType<typeof attnInputs>,
  rows: number,
  windows?: ReadonlyArray<KeyWindow>,
): Promise<Float32Array> => {
  const H = c.G * c.KV
  const n = c.M * H * c.D
  const buffers = {
    q: upload(device, "attn check q", inputs.q),
    k: upload(device, "attn check k", inputs.k.bits),
    v: upload(device, "attn check v", inputs.v.bits),
    table: upload(device, "attn check table", inputs.table),
    out: storageBuffer(device, "attn check out", n * 4),
    state: storageBuffer(device, "attn check state", c.M * H * (c.D + 2) * 4),
  }
  const passes = windows ?? [undefined]
  const uniforms: Uniform[] = []
  try {
    const encoder = device.createCommandEncoder()
    for (const [i, w] of passes.entries()) {
      const u = new Uniform(device, "attn check", w ? "uuuuufuuuuuu" : "uuuuufuu")
      uniforms.push(u)
      const base = [c.M, H, c.KV, c.BS, c.pos0, 1 / Math.sqrt(c.D)]
      u.set(...(w ? [...base, w[0], w[1], (i === 0 ? FIRST : 0) | (i === passes.length - 1 ? LAST : 0)] : base))
      const entries: Array<[number, GPUBuffer]> = [[0, u.buffer], [1, buffers.q], [2, buffers.k], [3, buffers.v], [4, buffers.table], [5, buffers.out]]
      if (w) entries.push([6, buffers.state])
      const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) })
      const pass = encoder.beginComputePass()
      pass.setPipeline(pipeline)
      pass.setBindGroup(0, group)
      pass.dispatchWorkgroups(Math.ceil((c.M * c.G) / rows), c.KV)
      pass.end()
    }
    device.queue.submit([encoder.finish()])
    return await readF32(device, buffers.out, 0, n)
  } finally {
    for (const b of Object.values(buffers)) b.destroy()
    for (const u of uniforms) u.buffer.destroy()
  }
}

/** Where and how a result is wrong: the worst element as (query, head, dim), and how many are not finite. */
export const describeError = (c: AttnCase, got: Float32Array, at: number, error: number): string => {
  const H = c.G * c.KV
  const bad = got.reduce((n, x) => n + (Number.isFinite(x) ? 0 : 1), 0)
  const where = at < 0 ? "" : ` at query ${Math.floor(at / (H * c.D))}, head ${Math.floor(at / c.D) % H}, dim ${at % c.D} (${got[at]})`
  return `error ${error}${where}; ${bad} of ${got.length} values not finite`
}

/** attn_prefill_mx's override constants: SG lanes a subgroup, NSG subgroups (16 rows each), PAD halves after each staged row. */
export interface MatrixAttnConstants {
  readonly SG: number
  readonly NSG: number
  readonly PAD: number
}

/** The kernel's constants and form (`split`: attn_prefill_fa instead): `shared` is OSHARED (O in workgroup memory), else O in registers; `direct` is KDIRECT (K/V loaded from the pool, not staged). */
export interface MatrixAttn {
  readonly constants: MatrixAttnConstants
  readonly shared: boolean
  readonly direct?: boolean
  /** attn_prefill_fa's constants where LEOAM_MATRIX_ATTENTION=split chose it (it is used instead of attn_prefill_mx). */
  readonly split?: SplitAttnConstants
}

/**
 * Workgroup memory of attn_prefill_mx: Q (16 NSG rows), K and V (32 keys each) of D + pad halves;
 * S, P and per-row factors; the 16-byte rescale flag; with OSHARED also O (16 NSG rows of D f32).
 */
export const matrixAttnWorkgroupBytes = (k: Pick<MatrixAttnConstants, "NSG" | "PAD">, D: number, shared = false): number => {
  const rows = 16 * k.NSG
  return (rows + 64) * (D + k.PAD) * 2 + rows * 32 * 4 + rows * (32 + k.PAD) * 2 + rows * 4 + 16 + (shared ? rows * D * 4 : 0)
}

/** The largest configuration (4 then 2 subgroups, pad 8 then 0) of a form that fits; undefined if none. */
export const matrixAttnConstants = (lanes: number, maxWorkgroupBytes: number, D: number, shared = false): MatrixAttnConstants | undefined => {
  if (!(lanes >= 16 && lanes <= 64 && (lanes & (lanes - 1)) === 0) || D % 16 !== 0 || D > 128) return undefined
  for (const NSG of [4, 2]) {
    for (const PAD of [8, 0]) if (matrixAttnWorkgroupBytes({ NSG, PAD }, D, shared) <= maxWorkgroupBytes) return { SG: lanes, NSG, PAD }
  }
  return undefined
}

/**
 * Cases that isolate a failing kernel's parts, for its refusal message: every key zero (all
 * scores 0: only P V and the output path matter) and one query over one key (its output is
 * that key's value whatever the scores).
 */
const narrowDown = async (device: GPUDevice, pipeline: GPUComputePipeline, c: AttnCase, rows: number, windows?: ReadonlyArray<KeyWindow>): Promise<string> => {
  const one: AttnCase = { ...c, pos0: 0, M: 1 }
  const zero = attnInputs(c, 31)
  zero.k.bits.fill(0)
  zero.k.values.fill(0)
  const parts: string[] = []
  try {
    for (const [name, cc, inputs, w] of [["keys all zero", c, zero, windows], ["one key", one, attnInputs(one, 41), windows && [[0, 0] as const]]] as const) {
      const got = await runPrefillAttention(device, pipeline, cc, inputs, rows, w)
      const { at, error } = worstError(got, attnReference(cc, inputs))
      parts.push(`${name}: ${describeError(cc, got, at, error)}`)
    }
  } catch (e) {
    parts.push(`narrowing down failed: ${(e as Error).message}`)
  }
  return parts.join("; ")
}

/**
 * Undefined when attn_prefill_mx with these constants computes this device's attention
 * correctly (a plain pass and three WINDOW passes, GQA, partial tiles); else why not.
 */
export const checkMatrixAttention = (gpu: Gpu, constants: MatrixAttnConstants, shared = false, direct = false): Promise<string | undefined> =>
  checkAttnKernel(
    gpu,
    (window) => ({ op: "attn_prefill_mx", flags: { WINDOW: window, OSHARED: shared, KDIRECT: direct }, constants: { ...constants, G: ATTN_CHECK_CASE.G, D: ATTN_CHECK_CASE.D } }),
    16 * constants.NSG,
    `attn_prefill_mx${shared ? " OSHARED" : ""}${direct ? " KDIRECT" : ""}`,
  )

/** The same check for attn_prefill_fa (the keys split among subgroups) with these constants. */
export const checkSplitAttention = (gpu: Gpu, constants: SplitAttnConstants): Promise<string | undefined> =>
  checkAttnKernel(gpu, (window) => splitAttnKey(ATTN_CHECK_CASE, constants, window), 16 * constants.RT, "attn_prefill_fa")

/** The case a device checks a matrix attention kernel on: partial tiles, GQA rows, a causal offset. */
const ATTN_CHECK_CASE: AttnCase = { G: 4, KV: 2, D: 128, BS: 16, pos0: 37, M: 45 }

const checkAttnKernel = async (gpu: Gpu, keyOf: (window: boolean) => PipelineKey, rows: number, name: string): Promise<string | undefined> => {
  const pipelines = new Pipelines(gpu)
  const c = ATTN_CHECK_CASE
  const inputs = attnInputs(c, 21)
  const want = attnReference(c, inputs)
  try {
    for (const windows of [undefined, [[0, 32], [32, 64], [64, 0]] as const]) {
      const pipeline = await pipelines.get(keyOf(windows !== undefined))
      const got = await runPrefillAttention(gpu.device, pipeline, c, inputs, rows, windows)
      const { at, error } = worstError(got, want)
      if (!(error <= ATTN_MATRIX_TOLERANCE)) {
        return `${name} ${windows ? "WINDOW" : "plain"} differs from the CPU reference: ${describeError(c, got, at, error)}; ${await narrowDown(gpu.device, pipeline, c, rows, windows)}`
      }
    }
    return undefined
  } catch (e) {
    return `${name} failed: ${(e as Error).message}`
  }
}

/**
 * attn_prefill_fa's form: subgroups of SG (32) lanes, NSG of them a workgroup in RT row tiles of
 * 16 rows, so NSG / RT subgroups split each tile's keys; tiles of BK keys (64, or 32: the flag
 * BK32; not an override constant).
 */
export interface SplitAttnConstants {
  readonly SG: number
  readonly NSG: number
  readonly RT: number
  readonly BK?: 32 | 64
}

/** attn_prefill_fa's key (K and V read from the pool as halves: KDIRECT's bindings). */
export const splitAttnKey = (shape: { readonly G: number; readonly D: number }, k: SplitAttnConstants, window = false): PipelineKey => ({
  op: "attn_prefill_fa",
  flags: { KDIRECT: true, ...(window ? { WINDOW: true } : {}), ...(k.BK === 32 ? { BK32: true } : {}) },
  constants: { G: shape.G, D: shape.D, SG: k.SG, NSG: k.NSG, RT: k.RT },
})

/**
 * Workgroup memory of attn_prefill_fa: the 16-byte flag; Q (16 RT rows of D + 8 halves); per
 * subgroup its scores (16 x (BK + 4) f32) and probabilities (16 x (BK + 8) f16); two f32 per subgroup row.
 */
export const splitAttnWorkgroupBytes = (k: Pick<SplitAttnConstants, "NSG" | "RT" | "BK">, D: number): number => {
  const bk = k.BK ?? 64
  return 16 + 16 * k.RT * (D + 8) * 2 + k.NSG * 16 * (bk + 4) * 4 + k.NSG * 16 * (bk + 8) * 2 + k.NSG * 16 * 4 * 2
}

/** The first of 4 key splits, then 2, then 1 (one row tile) that fits; undefined off 32-lane subgroups or D past 128. */
export const splitAttnConstants = (lanes: number, maxWorkgroupBytes: number, D: number): SplitAttnConstants | undefined => {
  if (lanes !== 32 || D % 16 !== 0 || D > 128) return undefined
  const NSG = [4, 2, 1].find((n) => splitAttnWorkgroupBytes({ NSG: n, RT: 1 }, D) <= maxWorkgroupBytes)
  return NSG === undefined ? undefined : { SG: 32, NSG, RT: 1 }
}
