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

/**
 * The tuning of each matrix, checked. `subgroupMaxSize` is the device's largest subgroup
 * (undefined: no subgroups): a subgroup kernel's workgroup must hold whole subgroups.
 */
export const resolveGemvTunings = (c: ModelConfig, t: GemvTuningOption, subgroupMaxSize: number | undefined): GemvTunings => {
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
    if (v.kind === "sg" && (subgroupMaxSize === undefined || gemvRowsPerGroup(v) % v.rows !== 0 || v.wg < subgroupMaxSize)) {
      throw new RangeError(`GEMV tuning for ${op}: the subgroup kernel needs subgroups, a workgroup of whole subgroups (${subgroupMaxSize ?? "none"} lanes) and rpw a multiple of rows`)
    }
  }
  return out
}

/**
 * Measured on the H200 inside the decode step (bench/decode-lab.ts, bench/results/
 * 2026-11-28-h200-run20-lab): the subgroup kernel, one 32-lane subgroup per workgroup, for
 * the QKV (rows in quads, so that it applies RoPE itself) and O matrices and the LM head;
 * 128 threads and 2 rows for gate/up and down. Without subgroups, or with subgroups wider
 * than 32 lanes, 128 threads and 2 rows (4 for QKV). The CPU (lavapipe): 64 threads, 4 rows.
 */
export const defaultGemvTuning = (gpu: Gpu): GemvTuningOption => {
  if (gpu.kind === "cpu") return { wg: 64, rows: 4 }
  const plain = { wg: 128, rows: 2 }
  if (!gpu.hasSubgroups || gpu.subgroupMaxSize > 32) return (op) => (op === "qkv" ? { wg: 128, rows: 4 } : plain)
  const measured: GemvTunings = {
    qkv: { kind: "sg", wg: 32, rows: 4, rpw: 4, unroll: 2 },
    o: { kind: "sg", wg: 32, rows: 2, rpw: 2, unroll: 8 },
    gu: plain,
    down: plain,
    head: { kind: "sg", wg: 256, rows: 2, rpw: 16 },
  }
  return (op) => measured[op]
}

/** A tuning for all matrices, or one per matrix. */
export type GemvTuningOption = GemvTuning | ((op: GemvOp, rows: number, cols: number) => GemvTuning)
