// A plain float32 CPU forward pass of the Llama family, the reference every kernel and
// the GPU engine are tested against. Small models only: it holds all weights as f32.
// It follows Hugging Face transformers op by op (RMSNorm, rotate_half RoPE with HF's
// inv_freq scaling, GQA, causal softmax, SwiGLU), rounding to f32 where HF stores f32.
// CpuModel owns its KV cache; only forward() and reset() change it.

import { f16ToF32Array } from "../models/half.ts"
import { embedTokensName, finalNormName, layerTensorNames, lmHeadName, numElements, parameterCount } from "../models/layout.ts"
import type { ModelConfig, WeightSource } from "../models/types.ts"

const f32 = Math.fround

// --- pure pieces (also the references of kernel tests) ---------------------------

/** Dot product of a[aOff..aOff+n) and b[bOff..bOff+n), four f64 accumulators. */
export const dot = (a: Float32Array, aOff: number, b: Float32Array, bOff: number, n: number): number => {
  let s0 = 0
  let s1 = 0
  let s2 = 0
  let s3 = 0
  let i = 0
  for (; i + 3 < n; i += 4) {
    s0 += a[aOff + i]! * b[bOff + i]!
    s1 += a[aOff + i + 1]! * b[bOff + i + 1]!
    s2 += a[aOff + i + 2]! * b[bOff + i + 2]!
    s3 += a[aOff + i + 3]! * b[bOff + i + 3]!
  }
  for (; i < n; i++) s0 += a[aOff + i]! * b[bOff + i]!
  return s0 + s1 + (s2 + s3)
}

/** out (rows) = W (rows, cols) · x (cols) [+ bias (rows)]. */
export const matVec = (
  out: Float32Array,
  w: Float32Array,
  x: Float32Array,
  rows: number,
  cols: number,
  bias?: Float32Array,
  xOff = 0,
  outOff = 0,
): Float32Array => {
  for (let r = 0; r < rows; r++) out[outOff + r] = dot(w, r * cols, x, xOff, cols) + (bias === undefined ? 0 : bias[r]!)
  return out
}

/**
 * out (tokens, rows) = x (tokens, cols) · Wᵀ [+ bias]. Row-outer so each weight row is
 * read once for all tokens; each element is the same dot() as matVec, so a batch and
 * token-by-token decoding give identical numbers.
 */
export const matMul = (
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  tokens: number,
  rows: number,
  cols: number,
  bias?: Float32Array,
): Float32Array => {
  for (let r = 0; r < rows; r++) {
    const b = bias === undefined ? 0 : bias[r]!
    for (let t = 0; t < tokens; t++) out[t * rows + r] = dot(w, r * cols, x, t * cols, cols) + b
  }
  return out
}

/** out (n) = x (n) * rsqrt(mean(x²) + eps) * w (n), as HF's LlamaRMSNorm in f32. */
export const rmsNorm = (
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  eps: number,
  xOff = 0,
  outOff = 0,
): Float32Array => {
  const n = w.length
  const variance = f32(dot(x, xOff, x, xOff, n) / n)
  const r = f32(1 / Math.sqrt(f32(variance + eps)))
  for (let i = 0; i < n; i++) out[outOff + i] = f32(x[xOff + i]! * r) * w[i]!
  return out
}

export const silu = (x: number): number => x / (1 + Math.exp(-x))

/**
 * RoPE inverse frequencies (headDim / 2), as transformers computes them in f32:
 * 1 / theta^(2i/d), then the config's scaling (`_compute_linear_scaling_rope_parameters`,
 * `_compute_llama3_parameters`). All three kinds have attention scaling 1.
 */
export const ropeInvFreq = (config: ModelConfig): Float32Array => {
  const half = config.headDim / 2
  const inv = new Float32Array(half)
  for (let i = 0; i < half; i++) inv[i] = f32(1 / f32(config.ropeTheta ** f32((2 * i) / config.headDim)))
  const s = config.ropeScaling
  if (s.type === "linear") for (let i = 0; i < half; i++) inv[i] = inv[i]! / s.factor
  if (s.type === "llama3") {
    const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor
    const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor
    for (let i = 0; i < half; i++) {
      const f = inv[i]!
      const wavelen = f32((2 * Math.PI) / f)
      if (wavelen > lowFreqWavelen) inv[i] = f / s.factor
      else if (wavelen >= highFreqWavelen) {
        const smooth = f32((s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor))
        inv[i] = f32(f32(f32((1 - smooth) * f) / s.factor) + f32(smooth * f))
      }
    }
  }
  return inv
}

/** cos and sin (headDim / 2) of the angles pos * invFreq, the angle rounded to f32 as in HF. */
export const ropeAngles = (invFreq: Float32Array, pos: number, cos: Float32Array, sin: Float32Array): void => {
  for (let i = 0; i < invFreq.length; i++) {
    const angle = f32(pos * invFreq[i]!)
    cos[i] = Math.cos(angle)
    sin[i] = Math.sin(angle)
  }
}

/** Rotates one head vector x[off..off+headDim) in place, HF "rotate_half": pairs (i, i + headDim/2). */
export const applyRope = (x: Float32Array, off: number, cos: Float32Array, sin: Float32Array): void => {
  const half = cos.length
  for (let i = 0; i < half; i++) {
    const x1 = x[off + i]!
    const x2 = x[off + i + half]!
    x[off + i] = f32(x1 * cos[i]!) - f32(x2 * sin[i]!)
    x[off + i + half] = f32(x2 * cos[i]!) + f32(x1 * sin[i]!)
  }
}

/**
 * One query head over `len` cached positions: out = softmax(q·kⱼ · scale) · V.
 * keys, values: (position, rowStride) with this head's headDim values at `kvOff`.
 * scores: scratch of at least `len`.
 */
export const attention = (
  out: Float32Array,
  outOff: number,
  q: Float32Array,
  qOff: number,
  keys: Float32Array,
  values: Float32Array,
  rowStride: number,
  kvOff: number,
  len: number,
  headDim: number,
  scale: number,
  scores: Float32Array = new Float32Array(len),
): Float32Array => {
  let max = -Infinity
  for (let j = 0; j < len; j++) {
    const s = f32(dot(q, qOff, keys, j * rowStride + kvOff, headDim) * scale)
    scores[j] = s
    if (s > max) max = s
  }
  let sum = 0
  for (let j = 0; j < len; j++) {
    const e = f32(Math.exp(scores[j]! - max))
    scores[j] = e
    sum += e
  }
  for (let j = 0; j < len; j++) scores[j] = scores[j]! / sum
  for (let d = 0; d < headDim; d++) {
    let acc = 0
    for (let j = 0, at = kvOff + d; j < len; j++, at += rowStride) acc += scores[j]! * values[at]!
    out[outOff + d] = acc
  }
  return out
}

export const argmax = (x: Float32Array, off = 0, n = x.length - off): number => {
  let best = 0
  for (let i = 1; i < n; i++) if (x[off + i]! > x[off + best]!) best = i
  return best
}

// --- the model --------------------------------------------------------------------

interface LayerWeights {
  readonly inputNorm: Float32Array // (hidden)
  readonly q: Float32Array // (heads * headDim, hidden)
  readonly k: Float32Array // (kvHeads * headDim, hidden)
  readonly v: Float32Array // (kvHeads * headDim, hidden)
  readonly o: Float32Array // (hidden, heads * headDim)
  readonly qBias: Float32Array | undefined // (heads * headDim)
  readonly kBias: Float32Array | undefined // (kvHeads * headDim)
  readonly vBias: Float32Array | undefined // (kvHeads * headDim)
  readonly oBias: Float32Array | undefined // (hidden)
  readonly postNorm: Float32Array // (hidden)
  readonly gate: Float32Array // (ffn, hidden)
  readonly up: Float32Array // (ffn, hidden)
  readonly down: Float32Array // (hidden, ffn)
}

/** The largest model the reference agrees to hold (as f32, 4 bytes a parameter). */
export const cpuReferenceMaxParams = 200_000_000

const loadF32 = (src: WeightSource, name: string): Float32Array => {
  const info = src.tensors.get(name)
  if (info === undefined) throw new Error(`cpu reference: weights of ${src.config.name} lack tensor "${name}"`)
  const out = new Float32Array(numElements(info.shape))
  src.readF16(name, (piece, at) => f16ToF32Array(piece, out, at))
  return out
}

export class CpuModel {
  readonly invFreq: Float32Array // (headDim / 2)
  // KV cache, per layer: (capacity, kvHeads * headDim) f32, rows [0, length) valid.
  private keys: Array<Float32Array> = []
  private values: Array<Float32Array> = []
  private capacity = 0
  private length = 0

  private constructor(
    readonly config: ModelConfig,
    private readonly embed: Float32Array, // (vocab, hidden)
    private readonly layers: ReadonlyArray<LayerWeights>,
    private readonly finalNorm: Float32Array, // (hidden)
    private readonly lmHead: Float32Array, // (vocab, hidden); the embedding when tied
  ) {
    this.invFreq = ropeInvFreq(config)
  }

  static load(src: WeightSource): CpuModel {
    const c = src.config
    const params = parameterCount(c)
    if (params > cpuReferenceMaxParams)
      throw new RangeError(
        `cpu reference: ${c.name} has ${(params / 1e6).toFixed(0)}M parameters; ` +
          `it holds f32 weights and takes at most ${cpuReferenceMaxParams / 1e6}M`,
      )
    const optional = (name: string, present: boolean) => (present ? loadF32(src, name) : undefined)
    const layers: Array<LayerWeights> = []
    for (let l = 0; l < c.numLayers; l++) {
      const n = layerTensorNames(l)
      layers.push({
        inputNorm: loadF32(src, n.inputNorm),
        q: loadF32(src, n.q),
        k: loadF32(src, n.k),
        v: loadF32(src, n.v),
        o: loadF32(src, n.o),
        qBias: optional(n.qBias, c.attentionBias),
        kBias: optional(n.kBias, c.attentionBias),
        vBias: optional(n.vBias, c.attentionBias),
        oBias: optional(n.oBias, c.attentionOutputBias === true),
        postNorm: loadF32(src, n.postNorm),
        gate: loadF32(src, n.gate),
        up: loadF32(src, n.up),
        down: loadF32(src, n.down),
      })
    }
    const embed = loadF32(src, embedTokensName)
    const lmHead = c.tieWordEmbeddings ? embed : loadF32(src, lmHeadName)
    return new CpuModel(c, embed, layers, loadF32(src, finalNormName), lmHead)
  }

  /** Tokens in the KV cache: the next forward() starts at or before this position. */
  get cachedTokens(): number {
    return this.length
  }

  reset(): void {
    this.length = 0
  }

  /**
   * Runs `ids` at positions startPos.. and returns logits (ids.length, vocab), or only
   * the last position's (vocab) with `which = "last"`. startPos may be below the cached
   * length (the cache is cut back to it), never above.
   */
  forward(ids: ReadonlyArray<number>, startPos: number, which: "all" | "last" = "all"): Float32Array {
    const c = this.config
    const T = ids.length
    if (T === 0) throw new RangeError("cpu reference: forward of no tokens")
    if (!(Number.isInteger(startPos) && startPos >= 0 && startPos <= this.length))
      throw new RangeError(`cpu reference: startPos ${startPos} but ${this.length} tokens are cached`)
    for (const id of ids)
      if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) throw new RangeError(`cpu reference: token id ${id} out of range`)
    this.length = startPos
    this.ensureCapacity(startPos + T)

    const H = c.hiddenSize
    const x = new Float32Array(T * H) // (T, hidden) residual stream
    for (let t = 0; t < T; t++) x.set(this.embed.subarray(ids[t]! * H, (ids[t]! + 1) * H), t * H)
    for (let l = 0; l < c.numLayers; l++) this.layer(l, x, T, startPos)
    this.length = startPos + T

    const first = which === "last" ? T - 1 : 0
    const rows = T - first
    const xn = new Float32Array(rows * H) // (rows, hidden)
    for (let t = 0; t < rows; t++) rmsNorm(xn, x, this.finalNorm, c.rmsNormEps, (first + t) * H, t * H)
    return matMul(new Float32Array(rows * c.vocabSize), xn, this.lmHead, rows, c.vocabSize, H)
  }

  private layer(l: number, x: Float32Array, T: number, startPos: number): void {
    const c = this.config
    const w = this.layers[l]!
    const H = c.hiddenSize
    const hd = c.headDim
    const qDim = c.numHeads * hd
    const kvDim = c.numKvHeads * hd

    // Attention block.
    const xn = new Float32Array(T * H)
    for (let t = 0; t < T; t++) rmsNorm(xn, x, w.inputNorm, c.rmsNormEps, t * H, t * H)
    const q = matMul(new Float32Array(T * qDim), xn, w.q, T, qDim, H, w.qBias) // (T, heads, headDim)
    const k = matMul(new Float32Array(T * kvDim), xn, w.k, T, kvDim, H, w.kBias) // (T, kvHeads, headDim)
    const v = matMul(new Float32Array(T * kvDim), xn, w.v, T, kvDim, H, w.vBias) // (T, kvHeads, headDim)
    const cos = new Float32Array(hd / 2)
    const sin = new Float32Array(hd / 2)
    for (let t = 0; t < T; t++) {
      ropeAngles(this.invFreq, startPos + t, cos, sin)
      for (let h = 0; h < c.numHeads; h++) applyRope(q, t * qDim + h * hd, cos, sin)
      for (let h = 0; h < c.numKvHeads; h++) applyRope(k, t * kvDim + h * hd, cos, sin)
    }
    this.keys[l]!.set(k, startPos * kvDim)
    this.values[l]!.set(v, startPos * kvDim)

    const attn = new Float32Array(T * qDim) // (T, heads, headDim)
    const scores = new Float32Array(startPos + T)
    const group = c.numHeads / c.numKvHeads
    const scale = 1 / Math.sqrt(hd)
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < c.numHeads; h++) {
        const kvOff = Math.floor(h / group) * hd
        const off = t * qDim + h * hd
        attention(attn, off, q, off, this.keys[l]!, this.values[l]!, kvDim, kvOff, startPos + t + 1, hd, scale, scores)
      }
    }
    const o = matMul(new Float32Array(T * H), attn, w.o, T, H, qDim, w.oBias)
    for (let i = 0; i < x.length; i++) x[i] = x[i]! + o[i]!

    // MLP block: down(silu(gate(x)) * up(x)).
    const F = c.intermediateSize
    for (let t = 0; t < T; t++) rmsNorm(xn, x, w.postNorm, c.rmsNormEps, t * H, t * H)
    const gate = matMul(new Float32Array(T * F), xn, w.gate, T, F, H) // (T, ffn)
    const up = matMul(new Float32Array(T * F), xn, w.up, T, F, H) // (T, ffn)
    for (let i = 0; i < gate.length; i++) gate[i] = f32(silu(gate[i]!)) * up[i]!
    const down = matMul(new Float32Array(T * H), gate, w.down, T, H, F)
    for (let i = 0; i < x.length; i++) x[i] = x[i]! + down[i]!
  }

  private ensureCapacity(tokens: number): void {
    if (tokens <= this.capacity) return
    const capacity = Math.max(tokens, this.capacity * 2, 64)
    const kvDim = this.config.numKvHeads * this.config.headDim
    const grow = (old: Float32Array | undefined) => {
      const next = new Float32Array(capacity * kvDim)
      if (old !== undefined) next.set(old.subarray(0, this.length * kvDim))
      return next
    }
    this.keys = this.layers.map((_, l) => grow(this.keys[l]))
    this.values = this.layers.map((_, l) => grow(this.values[l]))
    this.capacity = capacity
  }
}

/**
 * Greedy decoding from a fresh cache: prefill `ids`, then `n` tokens one at a time
 * through the KV cache. Stops early after a token in `stopAt` (which is included).
 */
export const greedyGenerate = (
  model: CpuModel,
  ids: ReadonlyArray<number>,
  n: number,
  stopAt: ReadonlyArray<number> = [],
): number[] => {
  model.reset()
  const out: number[] = []
  let logits = model.forward(ids, 0, "last")
  for (let i = 0; i < n; i++) {
    const next = argmax(logits)
    out.push(next)
    if (stopAt.includes(next) || i === n - 1) break
    logits = model.forward([next], ids.length + i, "last")
  }
  return out
}
