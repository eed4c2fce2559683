// Reads a Hugging Face config.json of the Llama family (llama, mistral, qwen2) into a
// ModelConfig, filling in the defaults transformers would, and refusing what the
// engine does not implement (other RoPE kinds, MLP biases, other activations).
// Also holds the named shapes the `dummy` weight source runs at.

import * as fs from "node:fs"
import * as path from "node:path"
import { modelError, shown } from "./errors.ts"
import type { ModelConfig, RopeScaling } from "./types.ts"

type Json = Record<string, unknown>

const supportedTypes = ["llama", "mistral", "qwen2"] as const
const architectureTypes: Record<string, string> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "mistral",
  Qwen2ForCausalLM: "qwen2",
}

/** Defaults of transformers' LlamaConfig / MistralConfig / Qwen2Config where config.json is silent. */
const defaults: Record<string, { readonly maxPositionEmbeddings: number; readonly rmsNormEps: number }> = {
  llama: { maxPositionEmbeddings: 2048, rmsNormEps: 1e-6 },
  mistral: { maxPositionEmbeddings: 4096 * 32, rmsNormEps: 1e-6 },
  qwen2: { maxPositionEmbeddings: 32768, rmsNormEps: 1e-6 },
}

// --- field readers: each names the file and the field in its error ---------------

class Fields {
  constructor(
    readonly json: Json,
    readonly file: string,
    readonly prefix = "",
  ) {}

  at(key: string): unknown {
    return this.json[key]
  }

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null
  }

  fieldName(key: string): string {
    return this.prefix + key
  }

  malformed(key: string, expected: string): never {
    throw modelError(
      "config_malformed",
      this.file,
      this.fieldName(key),
      `field "${this.fieldName(key)}" must be ${expected}, got ${shown(this.at(key))}`,
    )
  }

  positiveInt(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback
      throw modelError("config_malformed", this.file, this.fieldName(key), `field "${this.fieldName(key)}" is missing`)
    }
    const v = this.at(key)
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) this.malformed(key, "a positive integer")
    return v
  }

  positiveNumber(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback
      throw modelError("config_malformed", this.file, this.fieldName(key), `field "${this.fieldName(key)}" is missing`)
    }
    const v = this.at(key)
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) this.malformed(key, "a positive number")
    return v
  }

  boolean(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback
    const v = this.at(key)
    if (typeof v !== "boolean") this.malformed(key, "true or false")
    return v
  }

  optionalString(key: string): string | undefined {
    if (!this.has(key)) return undefined
    const v = this.at(key)
    if (typeof v !== "string") this.malformed(key, "a string")
    return v
  }

  tokenId(key: string): number | null {
    if (!this.has(key)) return null
    const v = this.at(key)
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) this.malformed(key, "a token id")
    return v
  }

  tokenIds(key: string): ReadonlyArray<number> {
    if (!this.has(key)) return []
    const v = this.at(key)
    if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return [v]
    if (Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) return v
    return this.malformed(key, "a token id or a list of token ids")
  }

  nested(key: string): Fields | undefined {
    if (!this.has(key)) return undefined
    const v = this.at(key)
    if (typeof v !== "object" || Array.isArray(v) || v === null) this.malformed(key, "an object")
    return new Fields(v as Json, this.file, `${this.fieldName(key)}.`)
  }

  unsupported(key: string, what: string): never {
    throw modelError(
      "unsupported_architecture",
      this.file,
      this.fieldName(key),
      `field "${this.fieldName(key)}" ${what}, got ${shown(this.at(key))}`,
    )
  }
}

// --- the pieces of a config -------------------------------------------------------

const modelTypeOf = (f: Fields): string => {
  const declared = f.optionalString("model_type")
  let archType: string | undefined
  if (f.has("architectures")) {
    const archs = f.at("architectures")
    if (!Array.isArray(archs) || archs.length === 0 || !archs.every((a) => typeof a === "string"))
      f.malformed("architectures", "a non-empty list of strings")
    archType = archs.map((a: string) => architectureTypes[a]).find((t) => t !== undefined)
    if (archType === undefined)
      f.unsupported("architectures", `must name one of ${Object.keys(architectureTypes).join(", ")}`)
  }
  const modelType = declared ?? archType
  if (modelType === undefined)
    throw modelError("config_malformed", f.file, "model_type", `field "model_type" is missing (and no "architectures")`)
  if (!(supportedTypes as ReadonlyArray<string>).includes(modelType))
    f.unsupported("model_type", `must be one of ${supportedTypes.join(", ")}`)
  return modelType
}

/**
 * RoPE parameters live in `rope_parameters` (transformers >= 5: theta and scaling
 * together) or in top-level `rope_theta` plus `rope_scaling` (older files). Where both
 * are given, `rope_parameters` wins, as in transformers.
 */
const ropeOf = (f: Fields): { theta: number; scaling: RopeScaling } => {
  const params = f.nested("rope_parameters")
  const theta = params?.has("rope_theta") ? params.positiveNumber("rope_theta") : f.positiveNumber("rope_theta", 10000)
  const scaling = params ?? f.nested("rope_scaling")
  return { theta, scaling: scaling === undefined ? { type: "default" } : ropeScalingOf(scaling) }
}

const ropeScalingOf = (s: Fields): RopeScaling => {
  const key = s.has("rope_type") ? "rope_type" : "type"
  const kind = s.optionalString(key) ?? "default"
  switch (kind) {
    case "default":
      return { type: "default" }
    case "linear":
      return { type: "linear", factor: s.positiveNumber("factor") }
    case "llama3": {
      const lowFreqFactor = s.positiveNumber("low_freq_factor")
      const highFreqFactor = s.positiveNumber("high_freq_factor")
      if (highFreqFactor <= lowFreqFactor) s.malformed("high_freq_factor", `greater than low_freq_factor (${lowFreqFactor})`)
      return {
        type: "llama3",
        factor: s.positiveNumber("factor"),
        lowFreqFactor,
        highFreqFactor,
        originalMaxPositionEmbeddings: s.positiveInt("original_max_position_embeddings"),
      }
    }
    default:
      return s.unsupported(key, `must be "default", "linear" or "llama3"`)
  }
}

const refuseUnimplemented = (f: Fields, modelType: string): void => {
  const act = f.optionalString("hidden_act") ?? f.optionalString("hidden_activation")
  if (act !== undefined && act !== "silu") f.unsupported(f.has("hidden_act") ? "hidden_act" : "hidden_activation", `must be "silu"`)
  if (f.boolean("mlp_bias", false)) f.unsupported("mlp_bias", "must be false (MLP biases are not implemented)")
  if (modelType === "qwen2" && f.boolean("use_sliding_window", false))
    f.unsupported("use_sliding_window", "must be false (sliding-window attention is not implemented)")
}

// --- public -----------------------------------------------------------------------

/** Parses the contents of a config.json; `file` is used in messages, `name` becomes `config.name`. */
export const parseConfig = (json: unknown, file: string, name: string): ModelConfig => {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw modelError("config_malformed", file, undefined, `must hold a JSON object, got ${shown(json)}`)
  const f = new Fields(json as Json, file)
  const modelType = modelTypeOf(f)
  refuseUnimplemented(f, modelType)
  const d = defaults[modelType]!

  const hiddenSize = f.positiveInt("hidden_size")
  const numHeads = f.positiveInt("num_attention_heads")
  const numKvHeads = f.positiveInt("num_key_value_heads", numHeads)
  if (numHeads % numKvHeads !== 0)
    throw modelError(
      "config_malformed",
      file,
      "num_key_value_heads",
      `field "num_key_value_heads" (${numKvHeads}) must divide "num_attention_heads" (${numHeads})`,
    )
  if (!f.has("head_dim") && hiddenSize % numHeads !== 0)
    throw modelError(
      "config_malformed",
      file,
      "head_dim",
      `field "head_dim" is missing and "hidden_size" (${hiddenSize}) is not a multiple of "num_attention_heads" (${numHeads})`,
    )
  const headDim = f.positiveInt("head_dim", hiddenSize / numHeads)
  if (headDim % 2 !== 0) f.malformed("head_dim", "even (RoPE rotates pairs)")

  const rope = ropeOf(f)
  // Qwen2 always has q/k/v biases; Llama's `attention_bias` also puts one on o_proj.
  const llamaBias = modelType === "llama" && f.boolean("attention_bias", false)
  return {
    name,
    modelType,
    vocabSize: f.positiveInt("vocab_size"),
    hiddenSize,
    intermediateSize: f.positiveInt("intermediate_size"),
    numLayers: f.positiveInt("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: f.positiveNumber("rms_norm_eps", d.rmsNormEps),
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    maxPositionEmbeddings: f.positiveInt("max_position_embeddings", d.maxPositionEmbeddings),
    tieWordEmbeddings: f.boolean("tie_word_embeddings", false),
    attentionBias: modelType === "qwen2" || llamaBias,
    attentionOutputBias: llamaBias,
    bosTokenId: f.tokenId("bos_token_id"),
    eosTokenIds: f.tokenIds("eos_token_id"),
  }
}

/** Reads `<dir>/config.json`; the config is named after the directory. */
export const loadConfig = (dir: string): ModelConfig => {
  const file = path.join(dir, "config.json")
  let text: string
  try {
    text = fs.readFileSync(file, "utf8")
  } catch (e) {
    throw modelError("config_missing", file, undefined, `cannot read the model config (${(e as Error).message})`)
  }
  return parseConfig(parseJson(text, file), file, path.basename(path.resolve(dir)))
}

const parseJson = (text: string, file: string): unknown => {
  try {
    return JSON.parse(text)
  } catch (e) {
    throw modelError("config_malformed", file, undefined, `is not valid JSON (${(e as Error).message})`)
  }
}

// --- dummy presets ----------------------------------------------------------------

const llama = (name: string, c: Partial<ModelConfig>): ModelConfig => ({
  name,
  modelType: "llama",
  vocabSize: 32000,
  hiddenSize: 4096,
  intermediateSize: 11008,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 32,
  headDim: 128,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: { type: "default" },
  maxPositionEmbeddings: 4096,
  tieWordEmbeddings: false,
  attentionBias: false,
  attentionOutputBias: false,
  bosTokenId: 1,
  eosTokenIds: [2],
  ...c,
})

const llama3Scaling = (factor: number): RopeScaling => ({
  type: "llama3",
  factor,
  lowFreqFactor: 1,
  highFreqFactor: 4,
  originalMaxPositionEmbeddings: 8192,
})

/** Named model shapes for the dummy weight source (vLLM's `--load-format dummy`). */
export const dummyPresets: Readonly<Record<string, ModelConfig>> = {
  "llama-3.1-8b": llama("llama-3.1-8b", {
    vocabSize: 128256,
    intermediateSize: 14336,
    numKvHeads: 8,
    ropeTheta: 500000,
    ropeScaling: llama3Scaling(8),
    maxPositionEmbeddings: 131072,
    bosTokenId: 128000,
    eosTokenIds: [128001, 128009],
  }),
  "llama-3.2-1b": llama("llama-3.2-1b", {
    vocabSize: 128256,
    hiddenSize: 2048,
    intermediateSize: 8192,
    numLayers: 16,
    numKvHeads: 8,
    headDim: 64,
    ropeTheta: 500000,
    ropeScaling: llama3Scaling(32),
    maxPositionEmbeddings: 131072,
    tieWordEmbeddings: true,
    bosTokenId: 128000,
    eosTokenIds: [128001, 128008, 128009],
  }),
  "llama-2-7b": llama("llama-2-7b", {}),
  "longchat-7b-32k": llama("longchat-7b-32k", {
    ropeScaling: { type: "linear", factor: 8 },
    maxPositionEmbeddings: 32768,
  }),
  "mistral-7b": llama("mistral-7b", {
    modelType: "mistral",
    intermediateSize: 14336,
    numKvHeads: 8,
    ropeTheta: 1e6,
    maxPositionEmbeddings: 32768,
  }),
  "qwen2-0.5b": llama("qwen2-0.5b", {
    modelType: "qwen2",
    vocabSize: 151936,
    hiddenSize: 896,
    intermediateSize: 4864,
    numLayers: 24,
    numHeads: 14,
    numKvHeads: 2,
    headDim: 64,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    maxPositionEmbeddings: 32768,
    tieWordEmbeddings: true,
    attentionBias: true,
    bosTokenId: null,
    eosTokenIds: [151643],
  }),
  tiny: llama("tiny", {
    vocabSize: 512,
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 32,
    maxPositionEmbeddings: 2048,
    tieWordEmbeddings: true,
    bosTokenId: 0,
    eosTokenIds: [1],
  }),
}

/** A preset name, a model directory, or a config.json file. */
export const resolveDummyConfig = (spec: string): ModelConfig => {
  const preset = dummyPresets[spec]
  if (preset !== undefined) return preset
  const stat = fs.statSync(spec, { throwIfNoEntry: false })
  if (stat?.isDirectory()) return loadConfig(spec)
  if (stat?.isFile()) {
    let text: string
    try {
      text = fs.readFileSync(spec, "utf8")
    } catch (e) {
      throw modelError("config_missing", spec, undefined, `cannot read the model config (${(e as Error).message})`)
    }
    return parseConfig(parseJson(text, spec), spec, path.basename(path.dirname(path.resolve(spec))))
  }
  throw modelError(
    "unknown_model",
    undefined,
    undefined,
    `"${spec}" is neither a dummy preset (${Object.keys(dummyPresets).join(", ")}) nor a config.json or model directory`,
  )
}
