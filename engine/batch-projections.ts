// The shares of a batched decode step that the batch owns (engine/batch.ts): the rows'
// projections of every layer and the head, one builder per kind of projections (the prefill
// GEMMs, the decode GEMVs, gemv_multi, the matrix units, gemm_stream).
import { type Dispatch, dispatchOf, Uniform } from "./buffers.ts"
import { createUniforms, gemmColumnsPerGroup, gemmRowsPerGroup, gemvUniform } from "./model-resources.ts"
import { type GemvOp, gemvShapes } from "./gemv-tuning.ts"
import type { PipelineKey } from "./pipelines.ts"
import type { GpuModel } from "./model.ts"
import { gemvLayers, rowLayers } from "./program.ts"
import { mmaProjections, rowProjections, type SkinnyConstants, type SkinnyForm, skinnyFor } from "./batch-mma.ts"
import { type StreamConstants, type StreamForm, streamFor, streamFormOf, streamProduct, streamRowCounts } from "./batch-stream.ts"

/** The batch's share of a step: its projections over m rows. */
export interface Shared {
  readonly layers: ReadonlyArray<{ readonly pre: ReadonlyArray<Dispatch>; readonly post: ReadonlyArray<Dispatch> }>
  readonly head: ReadonlyArray<Dispatch>
  /** Sets the dispatches' and uniforms' rows. */
  readonly resize: (m: number) => void
  /** Frees buffers of its own. */
  readonly destroy?: () => void
}

/** Rows of x per gemv_multi workgroup. */
export const MULTI_ROWS = 8

export type SharedInputs = Parameters<typeof gemvLayers>[0]
type SharedBuffers = Parameters<typeof rowLayers>[1] & { readonly logits: GPUBuffer }
type Uniforms = ReturnType<typeof createUniforms>

// The prefill GEMMs over m rows (gemmRowsPerGroup-row tiles), and the head as one more GEMM after the final norm.
export const gemmShared = (i: SharedInputs, a: SharedBuffers, u: Uniforms): Shared => {
  const c = i.config
  const g = rowLayers(i, a, u)
  const P = i.pipelines.now.bind(i.pipelines)
  const uHead = new Uniform(i.device, "batch gemm head", "uuuu")
  const finalNorm = dispatchOf(i.device, P(i.keys.rmsnorm), [[0, u.rmsnorm.buffer], [1, a.x], [2, i.weights.finalNorm], [3, a.xn]], 1)
  const headGemm = dispatchOf(i.device, P(i.keys.gemm), [[0, uHead.buffer], [1, a.xn], [2, i.weights.lmHead], [3, a.logits]], Math.ceil(c.vocabSize / gemmColumnsPerGroup(i.keys.gemm)), 1)
  return {
    layers: g.layers,
    head: [finalNorm, headGemm],
    resize: (m) => {
      u.setGemmRows(m)
      uHead.set(m, c.vocabSize, c.hiddenSize)
      for (const d of [...g.rows, finalNorm]) d.y = m
      for (const d of [...g.gemms, headGemm]) d.y = Math.ceil(m / gemmRowsPerGroup(i.keys.gemm))
    },
  }
}

// The decode GEMVs, one row of x per workgroup z.
export const gemvShared = (i: SharedInputs, a: SharedBuffers, u: Uniforms): Shared => {
  const g = gemvLayers(i, a, u)
  return {
    layers: g.layers.map((l) => ({ pre: [l.qkv], post: l.post })),
    head: [g.head],
    resize: (m) => {
      for (const d of g.all) d.z = m
    },
  }
}

// kernels/gemv_multi.wgsl: each weight read once per MULTI_ROWS rows, RMSNorm, SwiGLU and the residual fused.
export const multiShared = (i: SharedInputs, a: SharedBuffers): Shared => {
  const c = i.config
  const ROWS = 2
  const key = (flags: Record<string, boolean>): PipelineKey => ({ op: "gemv_multi", flags, constants: { WG: 128, ROWS, MR: MULTI_ROWS } })
  const all: Dispatch[] = []
  const g = (op: GemvOp, flags: Record<string, boolean>, entries: Array<readonly [number, GPUBuffer]>) => {
    const [n, k] = gemvShapes(c)[op]
    const groups = Math.ceil(n / ROWS)
    const u = gemvUniform(i.device, `batch gemv_multi ${op}`)
    u.set(n, k, c.rmsNormEps, Math.min(groups, 65535))
    const d = dispatchOf(i.device, i.pipelines.now(key(flags)), [[0, u.buffer], ...entries], Math.min(groups, 65535), Math.ceil(groups / 65535))
    all.push(d)
    return d
  }
  const layers = i.weights.layers.map((w) => ({
    pre: [g("qkv", { NORM: true, BIAS: w.bqkv !== undefined }, [[1, w.wqkv], [2, a.x], [3, a.qkv], [4, w.attnNorm], ...(w.bqkv ? [[5, w.bqkv] as const] : [])])],
    post: [
      g("o", { ACC: true, BIAS: w.bo !== undefined }, [[1, w.wo], [2, a.attn], [3, a.x], ...(w.bo ? [[5, w.bo] as const] : [])]),
      g("gu", { NORM: true, SWIGLU: true }, [[1, w.wgu], [2, a.x], [3, a.ffn], [4, w.mlpNorm]]),
      g("down", { ACC: true }, [[1, w.wdown], [2, a.ffn], [3, a.x]]),
    ],
  }))
  const head = g("head", { NORM: true }, [[1, i.weights.lmHead], [2, a.x], [3, a.logits], [4, i.weights.finalNorm]])
  return {
    layers,
    head: [head],
    resize: (m) => {
      for (const d of all) d.z = Math.ceil(m / MULTI_ROWS)
    },
  }
}

// The matrix units (engine/batch-mma.ts): each weight read once per 16 rows.
export const mmaShared = (i: SharedInputs, a: SharedBuffers, capacity: number, skinny: SkinnyConstants): Shared => {
  const p = mmaProjections({ ...i, skinny }, a, capacity)
  return { layers: p.layers.map((l) => ({ pre: l.pre, post: l.post })), head: p.head, resize: p.resize, destroy: p.destroy }
}

// gemm_stream (engine/batch-stream.ts): each weight read once per 16 rows at GEMV speed.
export const streamShared = (i: SharedInputs, a: SharedBuffers, capacity: number, k: StreamConstants, minRows: number): Shared => {
  const p = rowProjections(i, a, capacity, streamProduct(i, k, streamRowCounts(capacity, minRows)), k.X32 === true)
  return { layers: p.layers.map((l) => ({ pre: l.pre, post: l.post })), head: p.head, resize: p.resize, destroy: p.destroy }
}

export const streamOf = (lead: GpuModel, form: StreamForm = streamFormOf()): StreamConstants => {
  const k = streamFor(lead.gpu, lead.config, form)
  if (!k) throw new RangeError("streamed projections need every projection's K a multiple of 8")
  return k
}

export const skinnyOf = (lead: GpuModel, form: SkinnyForm): SkinnyConstants => {
  const k = skinnyFor(lead.gpu, lead.config, form)
  if (!k) throw new RangeError(`matrix-unit projections need f16 subgroup matrices (LEOAM_MATRIX_UNITS) and a model whose rows and K are multiples of 16 (${lead.gpu.adapterName})`)
  return k
}

/** The pipelines gemv_multi needs for a model (prewarm them before a batch with "multi" projections). */
const multiFlags: ReadonlyArray<Record<string, boolean>> = [{ NORM: true }, { NORM: true, BIAS: true }, { ACC: true }, { ACC: true, BIAS: true }, { NORM: true, SWIGLU: true }]
export const multiPipelineKeys = (): PipelineKey[] => multiFlags.map((flags) => ({ op: "gemv_multi", flags, constants: { WG: 128, ROWS: 2, MR: MULTI_ROWS } }))
