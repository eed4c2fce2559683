// Batched decode's projections on the GPU's matrix units (kernels/gemm_skinny.wgsl): per
// projection, the rows of its input are rounded to f16 once (kernels/half_rows.wgsl, with
// the RMSNorm of QKV, gate/up and the head applied there), then one skinny GEMM reads every
// weight once per 16 rows, with the decode GEMVs' fused epilogues (bias, the residual add,
// SwiGLU pairs). The batch's activation buffers hold whole groups of 16 rows.
import { type Dispatch, dispatchOf, storageBuffer, Uniform } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import { type GemvOp, gemvShapes } from "./gemv-tuning.ts"
import type { ModelConfig } from "../models/types.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"
import type { ModelWeights } from "./weights.ts"

/** Rows per skinny GEMM workgroup (z): the matrix units' 16-row left operand. */
export const MMA_ROWS = 16

/**
 * gemm_skinny's form: SG lanes a subgroup, SPLIT subgroups a workgroup (each 1/SPLIT of K),
 * COLS output tiles of 16 columns a workgroup (1, 2 or 4; more share each left tile between
 * them; SwiGLU pairs take at most 2, whose gate and up are already 4 right tiles).
 */
export interface SkinnyConstants {
  readonly SG: number
  readonly SPLIT: number
  readonly COLS: 1 | 2 | 4
  /** K a pipeline constant (one pipeline per K) instead of a uniform. */
  readonly KFIX?: boolean
  /** W's tiles copied through workgroup memory with 16-byte loads instead of matrix loads from storage. */
  readonly WSTAGE?: boolean
}

/** A form: split of K, output tiles a workgroup, K fixed. */
export type SkinnyForm = Pick<SkinnyConstants, "SPLIT" | "COLS" | "KFIX" | "WSTAGE">

/**
 * The default form: 16 subgroups a workgroup, two output tiles each. On an H100 at 8B shapes
 * and 1K context it was the fastest of 8x1, 16x1 and 16x2 at every B: 16.09 / 18.71 / 30.60
 * ms/step at B = 1 / 4 / 16 against 8x1's 18.52 / 21.16 / 32.97
 * (bench/results/2026-12-07-evening-gpu-session/mma/batch-8b-1k.txt).
 */
export const SKINNY_FORM: SkinnyForm = { SPLIT: 16, COLS: 2 }

/** A form from its name, SPLITxCOLS with a trailing "k" for KFIX and "s" for WSTAGE (e.g. 16x2k, 8x4s). */
export const parseSkinnyForm = (name: string): SkinnyForm => {
  const m = /^(4|8|16)x([124])(k?)(s?)$/.exec(name)
  if (!m) throw new RangeError(`a matrix-unit form is SPLITxCOLS[k][s] with SPLIT 4, 8 or 16 and COLS 1, 2 or 4, not ${name}`)
  return { SPLIT: Number(m[1]), COLS: Number(m[2]) as 1 | 2 | 4, ...(m[3] ? { KFIX: true } : {}), ...(m[4] ? { WSTAGE: true } : {}) }
}

/** Output tiles a workgroup of form k for a projection with or without SwiGLU pairs. */
export const skinnyCols = (k: Pick<SkinnyConstants, "COLS">, swiglu: boolean): 1 | 2 | 4 => (swiglu && k.COLS === 4 ? 2 : k.COLS)

/**
 * gemm_skinny's constants for a model on a device, or undefined where it cannot run: the
 * device must have been opened with the f16 matrix configuration (engine/gpu.ts), a fixed
 * subgroup size, and every projection's rows (gate/up: per half) and K multiples of 16.
 */
export const skinnyFor = (gpu: Pick<Gpu, "matrixF16" | "subgroupMinSize" | "subgroupMaxSize">, c: ModelConfig, form: SkinnyForm = SKINNY_FORM): SkinnyConstants | undefined => {
  if (!gpu.matrixF16 || gpu.subgroupMinSize !== gpu.subgroupMaxSize || gpu.subgroupMaxSize === undefined) return undefined
  const shapes = gemvShapes(c)
  const fits = (Object.keys(shapes) as GemvOp[]).every((op) => {
    const [n, k] = shapes[op]
    return (op === "gu" ? n / 2 : n) % (16 * skinnyCols(form, op === "gu")) === 0 && k % 16 === 0
  })
  return fits ? { SG: gpu.subgroupMaxSize, ...form } : undefined
}

/** The key of gemm_skinny with `flags` (ACC, BIAS, SWIGLU) in form k for K (KFIX forms); R2 / R4: right tiles per left tile. */
export const skinnyKey = (flags: Record<string, boolean>, k: SkinnyConstants, K = 0): PipelineKey => {
  const swiglu = flags.SWIGLU === true
  const cols = skinnyCols(k, swiglu)
  const fixed = k.KFIX === true
  const [cols2, cols4] = [cols === 2, cols === 4]
  return { op: "gemm_skinny", flags: { ...flags, COLS2: cols2, COLS4: cols4, R2: cols2 || cols4 || swiglu, R4: (cols2 && swiglu) || cols4, KFIX: fixed, WSTAGE: k.WSTAGE === true }, constants: { SG: k.SG, SPLIT: k.SPLIT, ...(fixed ? { KF: K } : {}) } }
}
/** half_rows with NORM where `norm`; `f32`: its rows as f32, not rounded, for gemm_stream's X32. */
export const halfRowsKey = (norm: boolean, f32 = false): PipelineKey => ({ op: "half_rows", flags: { NORM: norm, ...(f32 ? { F32: true } : {}) } })

/** Every pipeline the matrix-unit projections of a model need (prewarm them before building). */
export const mmaPipelineKeys = (k: SkinnyConstants, bias: boolean, c: ModelConfig): PipelineKey[] => {
  const shapes = gemvShapes(c)
  return [
    halfRowsKey(true),
    halfRowsKey(false),
    ...(Object.keys(shapes) as GemvOp[]).flatMap((op) => projectionFlags(op, bias).map((flags) => skinnyKey(flags, k, shapes[op][1]))),
  ]
}

/** gemm_skinny's flags for a projection (with and without a bias where the model may have one). */
const projectionFlags = (op: GemvOp, bias: boolean): Array<Record<string, boolean>> =>
  op === "qkv" ? [{}, ...(bias ? [{ BIAS: true }] : [])] : op === "o" ? [{ ACC: true }, ...(bias ? [{ ACC: true, BIAS: true }] : [])] : op === "gu" ? [{ SWIGLU: true }] : op === "down" ? [{ ACC: true }] : [{}]

/** What the batch's row projections read: the device, its pipelines (prewarmed), the model. */
export interface RowInputs {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  readonly config: ModelConfig
  readonly weights: ModelWeights
}

export interface MmaInputs extends RowInputs {
  readonly skinny: SkinnyConstants
}

export interface MmaBuffers {
  readonly x: GPUBuffer
  readonly qkv: GPUBuffer
  readonly attn: GPUBuffer
  readonly ffn: GPUBuffer
  readonly logits: GPUBuffer
}

/** The bindings of one projection's product: xh (rows, K) f16, W, y, the bias where there is one. */
export interface ProductBindings {
  readonly xh: GPUBuffer
  readonly w: GPUBuffer
  readonly y: GPUBuffer
  readonly bias?: GPUBuffer
}

/** One projection's product xh . W^T into y: its dispatch, and what a step of m rows sets (uniforms, workgroups, the pipeline). */
export interface RowProduct {
  readonly dispatch: Dispatch
  readonly resize: (m: number) => void
}

/** Builds the product of projection `op` with `flags` (ACC, BIAS, SWIGLU). */
export type ProductOf = (op: GemvOp, flags: Record<string, boolean>, b: ProductBindings) => RowProduct

/** gemm_skinny (the matrix units) as a batch's product: one pass over the weights for every 16 rows. */
export const skinnyProduct =
  (i: MmaInputs): ProductOf =>
  (op, flags, b) => {
    const [n, k] = gemvShapes(i.config)[op]
    const ug = new Uniform(i.device, `batch gemm_skinny ${op}`, "uuuu")
    const key = skinnyKey(flags, i.skinny, k)
    const outs = flags.SWIGLU ? n / 2 : n
    const dispatch = dispatchOf(i.device, i.pipelines.now(key), [[0, ug.buffer], [1, b.xh], [2, b.w], [3, b.y], ...(b.bias ? [[5, b.bias] as const] : [])], outs / (16 * skinnyCols(i.skinny, flags.SWIGLU === true)), 1, 1)
    return {
      dispatch,
      resize: (m) => {
        ug.set(m, n, k, 0)
        dispatch.z = Math.ceil(m / MMA_ROWS)
      },
    }
  }

/** The matrix-unit projections (rowProjections with gemm_skinny). */
export const mmaProjections = (i: MmaInputs, a: MmaBuffers, capacity: number) => rowProjections(i, a, capacity, skinnyProduct(i))

/**
 * The batch's projections of every layer and the head over the rows rounded to f16, for
 * `capacity` rows: `layers[l].pre` = QKV (before RoPE), `post` = O (+ residual), gate/up
 * (SwiGLU), down (+ residual); `resize(m)` sets the rows of a step. `product` builds each
 * projection's product (gemm_skinny, gemm_stream). Owns one scratch buffer (rows, K) f16
 * (`f32Rows`: as f32, not rounded), rows a multiple of 16 whose rows past a step's m are zeros.
 */
export const rowProjections = (i: RowInputs, a: MmaBuffers, capacity: number, product: ProductOf, f32Rows = false) => {
  const c = i.config
  const device = i.device
  const rows = Math.ceil(capacity / MMA_ROWS) * MMA_ROWS
  const maxK = Math.max(...Object.values(gemvShapes(c)).map(([, k]) => k))
  const xh = storageBuffer(device, `batch xh (rows, K) ${f32Rows ? "f32" : "f16"}`, rows * maxK * (f32Rows ? 4 : 2))
  const resizers: Array<(m: number) => void> = []
  // x (rows, k) f32 -> xh, normalized by `gamma` where given; then xh . W^T into y.
  const project = (op: GemvOp, flags: Record<string, boolean>, w: GPUBuffer, x: GPUBuffer, y: GPUBuffer, gamma?: GPUBuffer, bias?: GPUBuffer): Dispatch[] => {
    const [, k] = gemvShapes(c)[op]
    const uh = new Uniform(device, `batch half_rows ${op}`, "uufu")
    const half = dispatchOf(device, i.pipelines.now(halfRowsKey(gamma !== undefined, f32Rows)), [[0, uh.buffer], [1, x], [2, xh], ...(gamma ? [[4, gamma] as const] : [])], rows)
    const gemm = product(op, { ...flags, ...(bias ? { BIAS: true } : {}) }, { xh, w, y, ...(bias ? { bias } : {}) })
    resizers.push((m) => {
      uh.set(m, k, c.rmsNormEps, 0)
      half.x = Math.ceil(m / MMA_ROWS) * MMA_ROWS
      gemm.resize(m)
    })
    return [half, gemm.dispatch]
  }
  const layers = i.weights.layers.map((w) => ({
    pre: project("qkv", {}, w.wqkv, a.x, a.qkv, w.attnNorm, w.bqkv),
    post: [
      ...project("o", { ACC: true }, w.wo, a.attn, a.x, undefined, w.bo),
      ...project("gu", { SWIGLU: true }, w.wgu, a.x, a.ffn, w.mlpNorm),
      ...project("down", { ACC: true }, w.wdown, a.ffn, a.x),
    ],
  }))
  const head = project("head", {}, i.weights.lmHead, a.x, a.logits, i.weights.finalNorm)
  return {
    layers,
    head,
    resize: (m: number) => {
      for (const r of resizers) r(m)
    },
    destroy: () => xh.destroy(),
  }
}
