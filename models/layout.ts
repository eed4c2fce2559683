// The Hugging Face tensor layout of a Llama-family model: every tensor a config
// implies, by name and row-major shape. The HF loader checks files against it, the
// dummy source generates it, and engines load by it.

import type { ModelConfig } from "./types.ts"

export interface ExpectedTensor {
  readonly name: string
  readonly shape: ReadonlyArray<number>
}

export const layerPrefix = (layer: number): string => `model.layers.${layer}.`

/** Names of one layer's tensors; biases are present only when the config has them. */
export const layerTensorNames = (layer: number) => {
  const p = layerPrefix(layer)
  return {
    inputNorm: `${p}input_layernorm.weight`,
    q: `${p}self_attn.q_proj.weight`,
    k: `${p}self_attn.k_proj.weight`,
    v: `${p}self_attn.v_proj.weight`,
    o: `${p}self_attn.o_proj.weight`,
    qBias: `${p}self_attn.q_proj.bias`,
    kBias: `${p}self_attn.k_proj.bias`,
    vBias: `${p}self_attn.v_proj.bias`,
    oBias: `${p}self_attn.o_proj.bias`,
    postNorm: `${p}post_attention_layernorm.weight`,
    gate: `${p}mlp.gate_proj.weight`,
    up: `${p}mlp.up_proj.weight`,
    down: `${p}mlp.down_proj.weight`,
  } as const
}

export const embedTokensName = "model.embed_tokens.weight"
export const finalNormName = "model.norm.weight"
export const lmHeadName = "lm_head.weight"

/** Every tensor the config implies, in file order (embeddings, layers, norm, head). */
export const expectedTensors = (c: ModelConfig): ReadonlyArray<ExpectedTensor> => {
  const q = c.numHeads * c.headDim
  const kv = c.numKvHeads * c.headDim
  const out: Array<ExpectedTensor> = [{ name: embedTokensName, shape: [c.vocabSize, c.hiddenSize] }]
  for (let l = 0; l < c.numLayers; l++) {
    const n = layerTensorNames(l)
    out.push(
      { name: n.inputNorm, shape: [c.hiddenSize] },
      { name: n.q, shape: [q, c.hiddenSize] },
      { name: n.k, shape: [kv, c.hiddenSize] },
      { name: n.v, shape: [kv, c.hiddenSize] },
      { name: n.o, shape: [c.hiddenSize, q] },
    )
    if (c.attentionBias) out.push({ name: n.qBias, shape: [q] }, { name: n.kBias, shape: [kv] }, { name: n.vBias, shape: [kv] })
    if (c.attentionOutputBias === true) out.push({ name: n.oBias, shape: [c.hiddenSize] })
    out.push(
      { name: n.postNorm, shape: [c.hiddenSize] },
      { name: n.gate, shape: [c.intermediateSize, c.hiddenSize] },
      { name: n.up, shape: [c.intermediateSize, c.hiddenSize] },
      { name: n.down, shape: [c.hiddenSize, c.intermediateSize] },
    )
  }
  out.push({ name: finalNormName, shape: [c.hiddenSize] })
  if (!c.tieWordEmbeddings) out.push({ name: lmHeadName, shape: [c.vocabSize, c.hiddenSize] })
  return out
}

/** Default piece size of WeightSource.readF16, in elements (8 MiB of f16). */
export const defaultMaxElements = 4 * 1024 * 1024

export const numElements = (shape: ReadonlyArray<number>): number => shape.reduce((a, b) => a * b, 1)

/** Parameter count of the config (tied embeddings counted once). */
export const parameterCount = (c: ModelConfig): number =>
  expectedTensors(c).reduce((sum, t) => sum + numElements(t.shape), 0)
