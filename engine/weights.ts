// Moves a WeightSource onto the GPU, tensor by tensor in pieces (never a whole model in
// host memory), fusing what the kernels read together: q, k and v rows into one matrix,
// gate and up rows into one matrix. Owns the weight buffers; nothing else writes them.
import { embedTokensName, finalNormName, layerTensorNames, lmHeadName, numElements } from "../models/layout.ts"
import type { ModelConfig, WeightSource } from "../models/types.ts"
import { f16ToF32 } from "../models/half.ts"
import { STORAGE } from "./buffers.ts"

export interface LayerWeights {
  readonly attnNorm: GPUBuffer // (hidden) f16 packed
  readonly wqkv: GPUBuffer // (H*D + 2*KV*D, hidden) f16 packed: q rows, k rows, v rows
  readonly bqkv: GPUBuffer | undefined // (H*D + 2*KV*D) f32 (Qwen2)
  readonly wo: GPUBuffer // (hidden, H*D) f16 packed
  readonly bo: GPUBuffer | undefined // (hidden) f32
  readonly mlpNorm: GPUBuffer // (hidden) f16 packed
  readonly wgu: GPUBuffer // (2*F, hidden) f16 packed: gate rows, then up rows
  readonly wdown: GPUBuffer // (hidden, F) f16 packed
}

export interface ModelWeights {
  readonly embed: GPUBuffer // (vocab, hidden) f16 packed
  readonly layers: ReadonlyArray<LayerWeights>
  readonly finalNorm: GPUBuffer // (hidden) f16 packed
  readonly lmHead: GPUBuffer // (vocab, hidden) f16 packed; the embedding when tied
  readonly bytes: number
}

export class WeightShapeError extends Error {
  readonly code = "unsupported_shape"
}

/** Shape constraints of the kernels, checked before anything is allocated. */
export const checkKernelShapes = (c: ModelConfig, maxBinding: number): void => {
  const fail = (what: string) => {
    throw new WeightShapeError(`${c.name}: ${what}`)
  }
  if (c.hiddenSize % 16 !== 0) fail(`hidden_size ${c.hiddenSize} must be a multiple of 16`)
  if (c.intermediateSize % 16 !== 0) fail(`intermediate_size ${c.intermediateSize} must be a multiple of 16`)
  if ((c.numHeads * c.headDim) % 16 !== 0) fail(`num_heads * head_dim must be a multiple of 16`)
  // Decode attention: D/2 divides its 256-token tile (and the 64 of the window kernels).
  if (![16, 32, 64, 128].includes(c.headDim)) fail(`head_dim ${c.headDim} must be 16, 32, 64 or 128`)
  if (c.numHeads / c.numKvHeads > 8) fail(`more than 8 query heads per kv head (${c.numHeads}/${c.numKvHeads})`)
  const biggest = Math.max(c.vocabSize * c.hiddenSize, 2 * c.intermediateSize * c.hiddenSize) * 2
  if (biggest > maxBinding) {
    fail(`a weight matrix of ${biggest} bytes exceeds this GPU's storage binding limit of ${maxBinding} bytes`)
  }
}

/** Fills `count` f16 elements of `buffer` from element `at` on the GPU (dummy weights). */
export type GpuFill = (
  buffer: GPUBuffer,
  at: number,
  count: number,
  spec: { readonly kind: "ones" } | { readonly kind: "random"; readonly seed: number; readonly amplitude: number },
) => boolean

/** Streams tensors into GPU buffers; `progress(bytesDone)` is called as pieces land. */
export const uploadWeights = (
  device: GPUDevice,
  source: WeightSource,
  progress: (bytes: number) => void = () => {},
  fill?: GpuFill,
): ModelWeights => {
  const c = source.config
  let bytes = 0
  const create = (label: string, size: number) => {
    bytes += size
    return device.createBuffer({ label, size: Math.ceil(size / 16) * 16, usage: STORAGE })
  }
  const shapeOf = (name: string) => {
    const info = source.tensors.get(name)
    if (info === undefined) throw new WeightShapeError(`${c.name}: tensor "${name}" is missing`)
    return numElements(info.shape)
  }
  // Writes tensor `name` as f16 at element offset `at` of `buffer`.
  const put = (buffer: GPUBuffer, name: string, at = 0) => {
    const spec = source.gpuFill?.(name)
    if (spec && fill && fill(buffer, at, shapeOf(name), spec)) {
      progress(shapeOf(name) * 2)
      return
    }
    source.readF16(name, (piece, offset) => {
      // writeBuffer needs a size that is a multiple of 4 bytes: pad an odd tail.
      const even = piece.length % 2 === 0 ? piece : padded(piece)
      device.queue.writeBuffer(buffer, (at + offset) * 2, even.buffer, even.byteOffset, even.byteLength)
      progress(piece.byteLength)
    })
  }
  // Biases are small: read whole, converted to f32.
  const putF32 = (buffer: GPUBuffer, name: string, at = 0) => {
    source.readF16(name, (piece, offset) => {
      const f = new Float32Array(piece.length)
      for (let i = 0; i < piece.length; i++) f[i] = f16ToF32(piece[i])
      device.queue.writeBuffer(buffer, (at + offset) * 4, f)
      progress(piece.byteLength)
    })
  }

  const hidden = c.hiddenSize
  const qRows = c.numHeads * c.headDim
  const kvRows = c.numKvHeads * c.headDim
  const embed = create("embed (vocab, hidden) f16", c.vocabSize * hidden * 2)
  put(embed, embedTokensName)
  const layers: LayerWeights[] = []
  for (let l = 0; l < c.numLayers; l++) {
    const n = layerTensorNames(l)
    const attnNorm = create(`L${l} attn_norm (hidden) f16`, hidden * 2)
    put(attnNorm, n.inputNorm)
    const wqkv = create(`L${l} wqkv (q+k+v rows, hidden) f16`, (qRows + 2 * kvRows) * hidden * 2)
    put(wqkv, n.q, 0)
    put(wqkv, n.k, qRows * hidden)
    put(wqkv, n.v, (qRows + kvRows) * hidden)
    let bqkv: GPUBuffer | undefined
    if (c.attentionBias) {
      bqkv = create(`L${l} bqkv (q+k+v rows) f32`, (qRows + 2 * kvRows) * 4)
      putF32(bqkv, n.qBias, 0)
      putF32(bqkv, n.kBias, qRows)
      putF32(bqkv, n.vBias, qRows + kvRows)
    }
    const wo = create(`L${l} wo (hidden, H*D) f16`, hidden * qRows * 2)
    put(wo, n.o)
    let bo: GPUBuffer | undefined
    if (source.tensors.has(n.oBias)) {
      bo = create(`L${l} bo (hidden) f32`, hidden * 4)
      putF32(bo, n.oBias)
    }
    const mlpNorm = create(`L${l} mlp_norm (hidden) f16`, hidden * 2)
    put(mlpNorm, n.postNorm)
    const f = c.intermediateSize
    const wgu = create(`L${l} wgu (gate+up rows, hidden) f16`, 2 * f * hidden * 2)
    put(wgu, n.gate, 0)
    put(wgu, n.up, f * hidden)
    const wdown = create(`L${l} wdown (hidden, F) f16`, hidden * f * 2)
    put(wdown, n.down)
    layers.push({ attnNorm, wqkv, bqkv, wo, bo, mlpNorm, wgu, wdown })
  }
  const finalNorm = create("final_norm (hidden) f16", hidden * 2)
  put(finalNorm, finalNormName)
  let lmHead = embed
  if (!c.tieWordEmbeddings) {
    lmHead = create("lm_head (vocab, hidden) f16", shapeOf(lmHeadName) * 2)
    put(lmHead, lmHeadName)
  }
  return { embed, layers, finalNorm, lmHead, bytes }
}

const padded = (piece: Uint16Array): Uint16Array => {
  const out = new Uint16Array(piece.length + 1)
  out.set(piece)
  return out
}

export const destroyWeights = (w: ModelWeights): void => {
  const all = new Set<GPUBuffer>([w.embed, w.finalNorm, w.lmHead])
  for (const l of w.layers) {
    for (const b of [l.attnNorm, l.wqkv, l.bqkv, l.wo, l.bo, l.mlpNorm, l.wgu, l.wdown]) if (b) all.add(b)
  }
  for (const b of all) b.destroy()
}
