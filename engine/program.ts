// The model's dispatch lists, built once per model (bind groups included) and replayed by
// the drivers in engine/model.ts: decode (one token, GEMVs with fused RMSNorm / residual /
// SwiGLU), prefill (a chunk of tokens, GEMMs), the last row's head after a prefill, and
// sampling. Per layer a list is split where attention goes: `pre` ends with the query in
// `q` and the token's K and V in the manager's pools, `post` starts with the combine of
// the decode partials (decode) or with the output projection (prefill). Attention itself
// belongs to the KV manager. Only the drivers change the dispatches' workgroup counts.
import type { ModelConfig } from "../models/types.ts"
import { type Dispatch, dispatchOf, encodeAll, readF32 } from "./buffers.ts"
import { type GemvOp, type GemvTunings, gemvRowsPerGroup, gemvShapes } from "./gemv-tuning.ts"
import { type allocateActivations, ARGMAX_GROUPS, type createUniforms, gemmColumnsPerGroup, type pipelineKeys } from "./model-resources.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"
import type { ModelWeights } from "./weights.ts"

export interface LayerProgram {
  readonly pre: ReadonlyArray<Dispatch>
  readonly post: ReadonlyArray<Dispatch>
}

export interface Program {
  readonly decode: { readonly embed: ReadonlyArray<Dispatch>; readonly layers: ReadonlyArray<LayerProgram>; readonly head: ReadonlyArray<Dispatch> }
  readonly prefill: {
    readonly embed: ReadonlyArray<Dispatch>
    readonly layers: ReadonlyArray<LayerProgram>
    /** The last row's logits through the decode head (the row copied to xlast first). */
    readonly headLast: ReadonlyArray<Dispatch>
    /** Dispatches with one workgroup row per token (y = m). */
    readonly rows: ReadonlyArray<Dispatch>
    /** The GEMMs (y = m / gemmRowsPerGroup, x = n / gemmColumnsPerGroup: by the kernel). */
    readonly gemms: ReadonlyArray<Dispatch>
  }
  readonly sample: { readonly argmax: ReadonlyArray<Dispatch>; readonly gumbel: ReadonlyArray<Dispatch> }
}

export interface ProgramInputs {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  readonly config: ModelConfig
  readonly weights: ModelWeights
  readonly act: ReturnType<typeof allocateActivations>
  readonly u: ReturnType<typeof createUniforms>
  readonly keys: ReturnType<typeof pipelineKeys>
  readonly gemv: GemvTunings
  /** The KV manager's pools, per layer (blocks, KV, BS, D) f16 K and V. */
  readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>
  /** (slots) u32: the decode step's input token and the sampled output. */
  readonly tokenIds: GPUBuffer
  /** The decode QKV GEMV applies RoPE and appends k, v itself. */
  readonly fuseRope: boolean
}

export const buildProgram = (i: ProgramInputs): Program => {
  const { device, config: c, weights, act: a, u, keys, gemv } = i
  const P = (key: PipelineKey) => i.pipelines.now(key)
  const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim
  const gx = (op: GemvOp, n: number) => Math.min(Math.ceil(n / gemvRowsPerGroup(gemv[op])), 65535)
  const gy = (op: GemvOp, n: number) => Math.ceil(Math.ceil(n / gemvRowsPerGroup(gemv[op])) / 65535)
  const d = (pipeline: GPUComputePipeline, entries: Array<readonly [number, GPUBuffer]>, x: number, y = 1, z = 1): Dispatch => dispatchOf(device, pipeline, entries, x, y, z)
  const embed = (uniform: GPUBuffer, ids: GPUBuffer) => d(P(keys.embed), [[0, uniform], [1, weights.embed], [2, ids], [3, a.x]], Math.ceil(c.hiddenSize / 2 / 256), 1)
  const ropeRows = Math.ceil(qkvRows / 2 / 64)
  const headOf = (x: GPUBuffer) => d(P(keys.gemvHead), [[0, u.gemvHead.buffer], [1, weights.lmHead], [2, x], [3, a.logits], [4, weights.finalNorm]], gx("head", c.vocabSize), gy("head", c.vocabSize))

  const gemvs = gemvLayers(i, a, u)
  const decodeLayers: LayerProgram[] = gemvs.layers.map((g, l) => {
    const kvl = i.pools[l]
    const w = weights.layers[l]
    const bias = w.bqkv ? [[5, w.bqkv] as const] : []
    const pre = i.fuseRope
      ? [d(P(w.bqkv ? keys.gemvQkvRopeBias : keys.gemvQkvRope), [[0, u.gemvQkv.buffer], [1, w.wqkv], [2, a.x], [3, a.q], [4, w.attnNorm], ...bias, [6, a.rope], [7, a.slot], [8, kvl.k], [9, kvl.v]], gx("qkv", qkvRows), gy("qkv", qkvRows))]
      : [g.qkv, d(P(keys.rope), [[0, u.ropeDecode.buffer], [1, a.qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], ropeRows, 1)]
    const post = [d(P(keys.combine), [[0, u.combine.buffer], [1, a.partO], [2, a.partML], [3, a.attn]], c.numHeads, 1), ...g.post]
    return { pre, post }
  })

  const embedPrefill = embed(u.embedPrefill.buffer, a.promptIds)
  const gemmRows = rowLayers(i, a, u)
  const rows: Dispatch[] = [embedPrefill, ...gemmRows.rows]
  const prefillLayers: LayerProgram[] = gemmRows.layers.map((g, l) => {
    const kvl = i.pools[l]
    const rope = d(P(keys.rope), [[0, u.ropePrefill.buffer], [1, a.qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], ropeRows, 1)
    rows.push(rope)
    return { pre: [...g.pre, rope], post: g.post }
  })

  const argmax = (gumbel: boolean) => [
    d(P(gumbel ? keys.gumbel : keys.argmax), [[0, u.sample.buffer], [1, a.logits], [2, a.samplePart]], ARGMAX_GROUPS),
    d(P(keys.argmaxFinal), [[0, u.sample.buffer], [2, a.samplePart], [3, i.tokenIds]], 1),
  ]
  return {
    decode: { embed: [embed(u.embedDecode.buffer, i.tokenIds)], layers: decodeLayers, head: [gemvs.head] },
    prefill: { embed: [embedPrefill], layers: prefillLayers, headLast: [headOf(a.xlast)], rows, gemms: gemmRows.gemms },
    sample: { argmax: argmax(false), gumbel: argmax(true) },
  }
}

/** What the GEMM half of a layer over m rows reads and writes (a prefill pass's or a decode batch's activations). */
export interface RowBuffers {
  /** (rows, hidden) f32 residual stream, and its RMS-normed copy. */
  readonly x: GPUBuffer
  readonly xn: GPUBuffer
  /** (rows, q+k+v) f32, before RoPE. */
  readonly qkv: GPUBuffer
  /** (rows, H, D) f32 attention output. */
  readonly attn: GPUBuffer
  /** (rows, F) f32 SwiGLU output. */
  readonly ffn: GPUBuffer
}

/**
 * The projections of every layer over m rows, weights read once per pass: `pre` = [norm,
 * QKV GEMM] (RoPE and the KV append follow per sequence), `post` = [O GEMM (+ residual),
 * norm, gate/up GEMM (SwiGLU), down GEMM (+ residual)]. Prefill's layers and the batched
 * decode step (engine/batch.ts) are both built on it; the caller sets y of `rows` (= m)
 * and of `gemms` (= m / gemmRowsPerGroup) and the GEMM uniforms' rows.
 */
export const rowLayers = (
  i: Pick<ProgramInputs, "device" | "pipelines" | "config" | "weights" | "keys">,
  a: RowBuffers,
  u: Pick<ReturnType<typeof createUniforms>, "rmsnorm" | "gemmQkv" | "gemmO" | "gemmGu" | "gemmDown">,
): { readonly layers: ReadonlyArray<LayerProgram>; readonly rows: ReadonlyArray<Dispatch>; readonly gemms: ReadonlyArray<Dispatch> } => {
  const { device, config: c, keys } = i
  const P = (key: PipelineKey) => i.pipelines.now(key)
  const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim
  const gemms: Dispatch[] = []
  const rows: Dispatch[] = []
  const gemm = (key: PipelineKey, uniform: GPUBuffer, wbuf: GPUBuffer, xbuf: GPUBuffer, ybuf: GPUBuffer, n: number, bias?: GPUBuffer) => {
    const g = dispatchOf(device, P(key), [[0, uniform], [1, xbuf], [2, wbuf], [3, ybuf], ...(bias ? [[5, bias] as const] : [])], Math.ceil(n / gemmColumnsPerGroup(key)), 1)
    gemms.push(g)
    return g
  }
  const norm = (weight: GPUBuffer) => {
    const n = dispatchOf(device, P(keys.rmsnorm), [[0, u.rmsnorm.buffer], [1, a.x], [2, weight], [3, a.xn]], 1)
    rows.push(n)
    return n
  }
  const layers = i.weights.layers.map((w) => ({
    pre: [norm(w.attnNorm), gemm(w.bqkv ? keys.gemmBias : keys.gemm, u.gemmQkv.buffer, w.wqkv, a.xn, a.qkv, qkvRows, w.bqkv)],
    post: [
      gemm(w.bo ? keys.gemmAccBias : keys.gemmAcc, u.gemmO.buffer, w.wo, a.attn, a.x, c.hiddenSize, w.bo),
      norm(w.mlpNorm),
      gemm(keys.gemmSwiglu, u.gemmGu.buffer, w.wgu, a.xn, a.ffn, 2 * c.intermediateSize),
      gemm(keys.gemmAcc, u.gemmDown.buffer, w.wdown, a.ffn, a.x, c.hiddenSize),
    ],
  }))
  return { layers, rows, gemms }
}

/**
 * The decode GEMVs (RMSNorm, SwiGLU and residual fused) of every layer over the rows of x
 * (one row per workgroup z: each row reads the weights again): `qkv` before RoPE into
 * `qkv`, `post` = [O (+ residual), gate/up (SwiGLU), down (+ residual)], and the head into
 * `logits`. A model's own decode step (one row) and a decode batch's GEMV projections are
 * built on it; the caller sets z of `all` to the rows.
 */
export const gemvLayers = (
  i: Pick<ProgramInputs, "device" | "pipelines" | "config" | "weights" | "keys" | "gemv">,
  a: Pick<RowBuffers, "x" | "qkv" | "attn" | "ffn"> & { readonly logits: GPUBuffer },
  u: Pick<ReturnType<typeof createUniforms>, "gemvQkv" | "gemvO" | "gemvGu" | "gemvDown" | "gemvHead">,
) => {
  const { config: c, keys, gemv } = i
  const P = (key: PipelineKey) => i.pipelines.now(key)
  const all: Dispatch[] = []
  const g = (op: GemvOp, key: PipelineKey, entries: Array<readonly [number, GPUBuffer]>) => {
    const [n] = gemvShapes(c)[op]
    const groups = Math.ceil(n / gemvRowsPerGroup(gemv[op]))
    const dispatch = dispatchOf(i.device, P(key), entries, Math.min(groups, 65535), Math.ceil(groups / 65535))
    all.push(dispatch)
    return dispatch
  }
  const layers = i.weights.layers.map((w) => ({
    qkv: g("qkv", w.bqkv ? keys.gemvQkvBias : keys.gemvQkv, [[0, u.gemvQkv.buffer], [1, w.wqkv], [2, a.x], [3, a.qkv], [4, w.attnNorm], ...(w.bqkv ? [[5, w.bqkv] as const] : [])]),
    post: [
      g("o", w.bo ? keys.gemvOBias : keys.gemvO, [[0, u.gemvO.buffer], [1, w.wo], [2, a.attn], [3, a.x], ...(w.bo ? [[5, w.bo] as const] : [])]),
      g("gu", keys.gemvGu, [[0, u.gemvGu.buffer], [1, w.wgu], [2, a.x], [3, a.ffn], [4, w.mlpNorm]]),
      g("down", keys.gemvDown, [[0, u.gemvDown.buffer], [1, w.wdown], [2, a.ffn], [3, a.x]]),
    ],
  }))
  const head = g("head", keys.gemvHead, [[0, u.gemvHead.buffer], [1, i.weights.lmHead], [2, a.x], [3, a.logits], [4, i.weights.finalNorm]])
  return { layers, head, all: all as ReadonlyArray<Dispatch> }
}

/** Logits of rows 0 .. m-1 of act.x (every position of a prefill pass: tests), one decode-head GEMV per row. */
export const rowLogits = async (device: GPUDevice, headLast: ReadonlyArray<Dispatch>, act: Pick<ProgramInputs["act"], "x" | "xlast" | "logits">, c: ModelConfig, m: number): Promise<Float32Array> => {
  const out = new Float32Array(m * c.vocabSize)
  const rowBytes = c.hiddenSize * 4
  for (let t = 0; t < m; t++) {
    const encoder = device.createCommandEncoder()
    encoder.copyBufferToBuffer(act.x, t * rowBytes, act.xlast, 0, rowBytes)
    const pass = encoder.beginComputePass()
    encodeAll(pass, headLast)
    pass.end()
    device.queue.submit([encoder.finish()])
    out.set(await readF32(device, act.logits, 0, c.vocabSize), t * c.vocabSize)
  }
  return out
}
