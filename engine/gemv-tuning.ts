// GEMV tunings: which decode GEMV kernel (gemv.wgsl or gemv_sg.wgsl) and shape of
// workgroup each of the five decode matrices uses. Pure data and functions; the engine
// benchmark measures them per device and matrix (bench/results/).
import type { ModelConfig } from "../models/types.ts"
import type { Gpu } from "./gpu.ts"
import type { PipelineKey } from "./pipelines.ts"

export interface GemvTuning {
  readonly wg: number
  readonly rows: number
  /**
   * "sg": kernels/gemv_sg.wgsl, one subgroup per `rows` rows and `rpw` rows per workgroup
   * (devices with subgroups); otherwise kernels/gemv.wgsl, `rows` rows per workgroup.
   */
  readonly kind?: "wg" | "sg"
  readonly rpw?: number
  /** "sg" only: weight loads in flight per row and lane (default 4, at most 16). */
  readonly unroll?: number
}

/** Rows one GEMV workgroup covers. */
export const gemvRowsPerGroup = (t: GemvTuning): number => (t.kind === "sg" ? (t.rpw ?? t.rows) : t.rows)

/** The pipeline key of a GEMV with its flags under a tuning. */
export const gemvKey = (t: GemvTuning, flags: Record<string, boolean> = {}): PipelineKey =>
  t.kind === "sg"
    ? { op: "gemv_sg", flags, constants: { WG: t.wg, ROWS: t.rows, RPW: gemvRowsPerGroup(t), ...(t.unroll ? { UNROLL: t.unroll } : {}) } }
    : { op: "gemv", flags, constants: { WG: t.wg, ROWS: t.rows } }
export type GemvOp = "qkv" | "o" | "gu" | "down" | "head"
export type GemvTunings = Readonly<Record<GemvOp, GemvTuning>>

/** The matrix (rows, cols) of each decode GEMV. */
export const gemvShapes = (c: ModelConfig): Record<GemvOp, readonly [number, number]> => ({
  qkv: [(c.numHeads + 2 * c.numKvHeads) * c.headDim, c.hiddenSize],
  o: [c.hiddenSize, c.numHeads * c.headDim],
  gu: [2 * c.intermediateSize, c.hiddenSize],
  down: [c.hiddenSize, c.intermediateSize],
  head: [c.vocabSize, c.hiddenSize],
})

export const resolveGemvTunings = (c: ModelConfig, t: GemvTuningOption, subgroups: boolean): GemvTunings => {
  const shapes = gemvShapes(c)
  const pick = (op: GemvOp) => (typeof t === "function" ? t(op, shapes[op][0], shapes[op][1]) : t)
  const out = { qkv: pick("qkv"), o: pick("o"), gu: pick("gu"), down: pick("down"), head: pick("head") }
  for (const [op, v] of Object.entries(out)) {
    if (!(v.wg >= 32 && v.wg <= 1024 && (v.wg & (v.wg - 1)) === 0 && v.rows >= 1 && v.rows <= 8 && v.rows % 2 === 0)) {
      throw new RangeError(`GEMV tuning for ${op}: wg must be a power of two in [32, 1024] and rows even in [2, 8]`)
    }
    if (v.unroll !== undefined && !(Number.isInteger(v.unroll) && v.unroll >= 1 && v.unroll <= 16)) {
      throw new RangeError(`GEMV tuning for ${op}: unroll must be an integer in [1, 16]`)
    }
    if (v.kind === "sg" && (!subgroups || gemvRowsPerGroup(v) % v.rows !== 0)) {
      throw new RangeError(`GEMV tuning for ${op}: the subgroup kernel needs subgroups and rpw a multiple of rows`)
    }
  }
  return out
}

/**
 * Measured on the H200 (bench/results/2026-11-28-h200-*): 128 threads, 2 rows; the QKV
 * GEMV takes rows in quads so that it can apply RoPE itself (DecodeOptions.fuseRope).
 */
export const defaultGemvTuning = (gpu: Gpu): GemvTuningOption =>
  gpu.kind === "cpu" ? { wg: 64, rows: 4 } : (op) => (op === "qkv" ? { wg: 128, rows: 4 } : { wg: 128, rows: 2 })

/** A tuning for all matrices, or one per matrix. */
export type GemvTuningOption = GemvTuning | ((op: GemvOp, rows: number, cols: number) => GemvTuning)
