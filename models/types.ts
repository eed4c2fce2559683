// The model-facing types every part of leoam shares: a Llama-family config, resolved to
// the numbers the kernels need, and a source of weight tensors that streams bytes
// (a Hugging Face directory or random "dummy" weights). Nothing here touches the GPU.

/** RoPE frequency scaling, resolved from `rope_scaling` / `rope_parameters`. */
export type RopeScaling =
  | { readonly type: "default" }
  | { readonly type: "linear"; readonly factor: number }
  | {
      readonly type: "llama3"
      readonly factor: number
      readonly lowFreqFactor: number
      readonly highFreqFactor: number
      readonly originalMaxPositionEmbeddings: number
    }

export interface ModelConfig {
  /** Human name: the directory's basename, or the dummy preset's name. */
  readonly name: string
  /** "llama" | "mistral" | "qwen2" (from config.json `model_type`). */
  readonly modelType: string
  readonly vocabSize: number
  readonly hiddenSize: number
  readonly intermediateSize: number
  readonly numLayers: number
  readonly numHeads: number
  readonly numKvHeads: number
  readonly headDim: number
  readonly rmsNormEps: number
  readonly ropeTheta: number
  readonly ropeScaling: RopeScaling
  readonly maxPositionEmbeddings: number
  readonly tieWordEmbeddings: boolean
  /** Qwen2 has biases on q/k/v projections. */
  readonly attentionBias: boolean
  /**
   * Llama with `attention_bias: true` also has a bias on o_proj (Qwen2 has none there).
   * Absent means false.
   */
  readonly attentionOutputBias?: boolean
  readonly bosTokenId: number | null
  readonly eosTokenIds: ReadonlyArray<number>
}

export type TensorDtype = "F16" | "BF16" | "F32"

export interface TensorInfo {
  /** Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight". */
  readonly name: string
  readonly dtype: TensorDtype
  /** Row-major shape as in the file, e.g. [out_features, in_features]. */
  readonly shape: ReadonlyArray<number>
}

/**
 * A source of weights. Tensors are delivered as IEEE half-precision bits (Uint16Array,
 * row-major), converted from BF16/F32 when the file holds those, in pieces of at most
 * `maxElements` so that a large model is never held whole in a JS array.
 */
export interface WeightSource {
  readonly config: ModelConfig
  /** Every tensor the source holds, by name. */
  readonly tensors: ReadonlyMap<string, TensorInfo>
  /**
   * Streams one tensor as f16 bits: `sink(piece, elementOffset)` is called with
   * consecutive pieces covering the whole tensor in order. `piece` may be reused after
   * the call returns. Throws ModelError (models/errors.ts) when the tensor is missing or unreadable.
   */
  readF16(name: string, sink: (piece: Uint16Array, elementOffset: number) => void, maxElements?: number): void
  /**
   * For synthetic sources: how the GPU may generate a tensor itself instead of receiving
   * its bytes (random dummy weights at 7B/8B shapes load in seconds this way).
   */
  readonly gpuFill?: (name: string) => { readonly kind: "ones" } | { readonly kind: "random"; readonly seed: number; readonly amplitude: number }
  close(): void
}
