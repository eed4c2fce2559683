// The model's dispatch lists, built once per model (bind groups included) and replayed by
// the drivers in engine/model.ts: decode (one token, GEMVs with fused RMSNorm / residual /
// SwiGLU), prefill (a chunk of tokens, GEMMs), the last row's head after a prefill, and
// sampling. Per layer a list is split where attention goes: `pre` ends with the query in
// `q` and the token's K and V in the manager's pools, `post` starts with the combine of
// the decode partials (decode) or with the output projection (prefill). Attention itself
// belongs to the KV manager. Only the drivers change the dispatches' workgroup counts.
import type { ModelConfig } from "../models/types.ts"
import { type Dispatch, dispatchOf } from "./buffers.ts"
import { type GemvOp, type GemvTunings, gemvRowsPerGroup } from "./gemv-tuning.ts"
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
    /** The GEMMs (y = m / 64; x by the kernel, gemmColumnsPerGroup). */
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

  const decodeLayers: LayerProgram[] = weights.layers.map((w, l) => {
    const kvl = i.pools[l]
    const bias = w.bqkv ? [[5, w.bqkv] as const] : []
    const pre = i.fuseRope
      ? [d(P(w.bqkv ? keys.gemvQkvRopeBias : keys.gemvQkvRope), [[0, u.gemvQkv.buffer], [1, w.wqkv], [2, a.x], [3, a.q], [4, w.attnNorm], ...bias, [6, a.rope], [7, a.slot], [8, kvl.k], [9, kvl.v]], gx("qkv", qkvRows), gy("qkv", qkvRows))]
      : [
          d(P(w.bqkv ? keys.gemvQkvBias : keys.gemvQkv), [[0, u.gemvQkv.buffer], [1, w.wqkv], [2, a.x], [3, a.qkv], [4, w.attnNorm], ...bias], gx("qkv", qkvRows), gy("qkv", qkvRows)),
          d(P(keys.rope), [[0, u.ropeDecode.buffer], [1, a.qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], ropeRows, 1),
        ]
    const post = [
      d(P(keys.combine), [[0, u.combine.buffer], [1, a.partO], [2, a.partML], [3, a.attn]], c.numHeads, 1),
      d(P(w.bo ? keys.gemvOBias : keys.gemvO), [[0, u.gemvO.buffer], [1, w.wo], [2, a.attn], [3, a.x], ...(w.bo ? [[5, w.bo] as const] : [])], gx("o", c.hiddenSize), gy("o", c.hiddenSize)),
      d(P(keys.gemvGu), [[0, u.gemvGu.buffer], [1, w.wgu], [2, a.x], [3, a.ffn], [4, w.mlpNorm]], gx("gu", 2 * c.intermediateSize), gy("gu", 2 * c.intermediateSize)),
      d(P(keys.gemvDown), [[0, u.gemvDown.buffer], [1, w.wdown], [2, a.ffn], [3, a.x]], gx("down", c.hiddenSize), gy("down", c.hiddenSize)),
    ]
    return { pre, post }
  })

  const gemms: Dispatch[] = []
  const gemm = (key: PipelineKey, uniform: GPUBuffer, wbuf: GPUBuffer, xbuf: GPUBuffer, ybuf: GPUBuffer, n: number, bias?: GPUBuffer) => {
    const g = d(P(key), [[0, uniform], [1, xbuf], [2, wbuf], [3, ybuf], ...(bias ? [[5, bias] as const] : [])], Math.ceil(n / gemmColumnsPerGroup(key)), 1)
    gemms.push(g)
    return g
  }
  const embedPrefill = embed(u.embedPrefill.buffer, a.promptIds)
  const rows: Dispatch[] = [embedPrefill]
  const prefillLayers: LayerProgram[] = weights.layers.map((w, l) => {
    const kvl = i.pools[l]
    const norm1 = d(P(keys.rmsnorm), [[0, u.rmsnorm.buffer], [1, a.x], [2, w.attnNorm], [3, a.xn]], 1)
    const rope = d(P(keys.rope), [[0, u.ropePrefill.buffer], [1, a.qkv], [2, a.rope], [3, a.slot], [4, a.q], [5, kvl.k], [6, kvl.v]], ropeRows, 1)
    const norm2 = d(P(keys.rmsnorm), [[0, u.rmsnorm.buffer], [1, a.x], [2, w.mlpNorm], [3, a.xn]], 1)
    rows.push(norm1, norm2, rope)
    const pre = [norm1, gemm(w.bqkv ? keys.gemmBias : keys.gemm, u.gemmQkv.buffer, w.wqkv, a.xn, a.qkv, qkvRows, w.bqkv), rope]
    const post = [
      gemm(w.bo ? keys.gemmAccBias : keys.gemmAcc, u.gemmO.buffer, w.wo, a.attn, a.x, c.hiddenSize, w.bo),
      norm2,
      gemm(keys.gemmSwiglu, u.gemmGu.buffer, w.wgu, a.xn, a.ffn, 2 * c.intermediateSize),
      gemm(keys.gemmAcc, u.gemmDown.buffer, w.wdown, a.ffn, a.x, c.hiddenSize),
    ]
    return { pre, post }
  })

  const argmax = (gumbel: boolean) => [
    d(P(gumbel ? keys.gumbel : keys.argmax), [[0, u.sample.buffer], [1, a.logits], [2, a.samplePart]], ARGMAX_GROUPS),
    d(P(keys.argmaxFinal), [[0, u.sample.buffer], [2, a.samplePart], [3, i.tokenIds]], 1),
  ]
  return {
    decode: { embed: [embed(u.embedDecode.buffer, i.tokenIds)], layers: decodeLayers, head: [headOf(a.x)] },
    prefill: { embed: [embedPrefill], layers: prefillLayers, headLast: [headOf(a.xlast)], rows, gemms },
    sample: { argmax: argmax(false), gumbel: argmax(true) },
  }
}
