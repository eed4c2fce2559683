import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { dummyPresets, loadConfig, parseConfig, resolveDummyConfig } from "../models/config.ts"
import type { ModelError } from "../models/errors.ts"
import { parameterCount } from "../models/layout.ts"
import { modelErrorOf } from "./support/errors.ts"

const tinyDir = fileURLToPath(new URL("../models/tiny-leo-14m/", import.meta.url))

/** A Llama 3.1 8B config.json as published (rope_scaling, eos list). */
const llama31 = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  vocab_size: 128256,
}

const qwen2 = {
  architectures: ["Qwen2ForCausalLM"],
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: "silu",
  hidden_size: 896,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  use_sliding_window: false,
  vocab_size: 151936,
}

const expectError = (f: () => unknown, code: ModelError["code"], field: string | undefined, ...inMessage: string[]) => {
  const e = modelErrorOf(f)
  expect(e.code).toBe(code)
  expect(e.field).toBe(field)
  for (const s of inMessage) expect(e.message).toContain(s)
  return e
}

const withTempDir = <A>(f: (dir: string) => A): A => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-config-"))
  try {
    return f(dir)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

describe("loadConfig", () => {
  it("reads the test model, rope_theta from rope_parameters", () => {
    const c = loadConfig(tinyDir)
    expect(c).toEqual({
      name: "tiny-leo-14m",
      modelType: "llama",
      vocabSize: 4096,
      hiddenSize: 384,
      intermediateSize: 1024,
      numLayers: 8,
      numHeads: 6,
      numKvHeads: 2,
      headDim: 64,
      rmsNormEps: 1e-5,
      ropeTheta: 100000,
      ropeScaling: { type: "default" },
      maxPositionEmbeddings: 16384,
      tieWordEmbeddings: true,
      attentionBias: false,
      attentionOutputBias: false,
      bosTokenId: 0,
      eosTokenIds: [1],
    })
    expect(parameterCount(c)).toBe(14_162_304)
  })

  it("fails with config_missing naming the file", () => {
    withTempDir((dir) => {
      expectError(() => loadConfig(dir), "config_missing", undefined, path.join(dir, "config.json"))
    })
  })

  it("fails with config_malformed on bad JSON, naming the file", () => {
    withTempDir((dir) => {
      fs.writeFileSync(path.join(dir, "config.json"), "{ not json")
      expectError(() => loadConfig(dir), "config_malformed", undefined, path.join(dir, "config.json"), "not valid JSON")
    })
  })
})

describe("parseConfig", () => {
  it("reads Llama 3.1 llama3 rope_scaling and an eos list", () => {
    const c = parseConfig(llama31, "config.json", "llama31")
    expect(c.ropeTheta).toBe(500000)
    expect(c.ropeScaling).toEqual({
      type: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    })
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009])
    expect(c.headDim).toBe(128)
    expect(c.tieWordEmbeddings).toBe(false)
    const { name: _a, eosTokenIds: _b, ...shape } = c
    const { name: _c, eosTokenIds: _d, ...preset } = dummyPresets["llama-3.1-8b"]!
    expect(shape).toEqual(preset)
  })

  it("reads rope_parameters (transformers 5) and prefers it to rope_theta", () => {
    const { rope_scaling: _s, rope_theta: _t, ...rest } = llama31
    const c = parseConfig(
      {
        ...rest,
        rope_theta: 1,
        rope_parameters: {
          rope_type: "llama3",
          rope_theta: 500000,
          factor: 32,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 8192,
        },
      },
      "config.json",
      "x",
    )
    expect(c.ropeTheta).toBe(500000)
    expect(c.ropeScaling).toMatchObject({ type: "llama3", factor: 32 })
  })

  it("reads linear scaling under `type` and null rope_scaling as default", () => {
    const base = { ...llama31, num_key_value_heads: undefined }
    const linear = parseConfig({ ...base, rope_scaling: { type: "linear", factor: 8 } }, "config.json", "x")
    expect(linear.ropeScaling).toEqual({ type: "linear", factor: 8 })
    expect(linear.numKvHeads).toBe(32)
    expect(parseConfig({ ...base, rope_scaling: null }, "config.json", "x").ropeScaling).toEqual({ type: "default" })
  })

  it("derives head_dim, and defaults a missing rope_theta to 10000", () => {
    const { head_dim: _h, rope_theta: _t, rope_scaling: _s, ...rest } = { ...llama31, head_dim: 1 }
    const c = parseConfig({ ...rest, hidden_size: 2048 }, "config.json", "x")
    expect(c.headDim).toBe(64)
    expect(c.ropeTheta).toBe(10000)
    // hidden = heads * headDim is not required when head_dim is given.
    expect(parseConfig({ ...rest, head_dim: 256 }, "config.json", "x").headDim).toBe(256)
  })

  it("gives qwen2 q/k/v biases, and takes its tie_word_embeddings", () => {
    const c = parseConfig(qwen2, "config.json", "qwen")
    expect(c.attentionBias).toBe(true)
    expect(c.attentionOutputBias).toBe(false)
    expect(c.tieWordEmbeddings).toBe(true)
    expect(c.eosTokenIds).toEqual([151643])
    expect(parseConfig({ ...qwen2, tie_word_embeddings: undefined }, "config.json", "q").tieWordEmbeddings).toBe(false)
  })

  it("gives llama attention_bias biases on q/k/v and o", () => {
    const c = parseConfig({ ...llama31, attention_bias: true }, "config.json", "x")
    expect(c.attentionBias).toBe(true)
    expect(c.attentionOutputBias).toBe(true)
  })

  it("finds the model type from architectures when model_type is absent", () => {
    const { model_type: _m, ...rest } = llama31
    expect(parseConfig({ ...rest, architectures: ["MistralForCausalLM"] }, "c.json", "m").modelType).toBe("mistral")
  })

  it("names file and field of a wrong type", () => {
    const e = expectError(
      () => parseConfig({ ...llama31, num_attention_heads: "abc" }, "config.json", "x"),
      "config_malformed",
      "num_attention_heads",
    )
    expect(e.message).toBe(`config.json: field "num_attention_heads" must be a positive integer, got "abc"`)
    expectError(() => parseConfig({ ...llama31, hidden_size: 0 }, "a/config.json", "x"), "config_malformed", "hidden_size", "a/config.json")
    expectError(() => parseConfig({ ...llama31, rms_norm_eps: "1e-5" }, "config.json", "x"), "config_malformed", "rms_norm_eps")
    expectError(() => parseConfig({ ...llama31, eos_token_id: ["x"] }, "config.json", "x"), "config_malformed", "eos_token_id")
    expectError(() => parseConfig({ ...llama31, tie_word_embeddings: "no" }, "config.json", "x"), "config_malformed", "tie_word_embeddings")
    expectError(() => parseConfig([1, 2], "config.json", "x"), "config_malformed", undefined, "config.json")
  })

  it("names a missing field", () => {
    const { vocab_size: _v, ...rest } = llama31
    expectError(() => parseConfig(rest, "config.json", "x"), "config_malformed", "vocab_size", `"vocab_size" is missing`)
  })

  it("names missing llama3 rope fields with their path", () => {
    const scaling = { ...llama31.rope_scaling, low_freq_factor: undefined }
    expectError(
      () => parseConfig({ ...llama31, rope_scaling: scaling }, "config.json", "x"),
      "config_malformed",
      "rope_scaling.low_freq_factor",
    )
  })

  it("refuses unsupported model types, architectures and rope kinds", () => {
    expectError(
      () => parseConfig({ ...llama31, model_type: "gpt2" }, "config.json", "x"),
      "unsupported_architecture",
      "model_type",
      `config.json: field "model_type"`,
      "gpt2",
    )
    expectError(
      () => parseConfig({ ...llama31, architectures: ["OPTForCausalLM"] }, "config.json", "x"),
      "unsupported_architecture",
      "architectures",
    )
    expectError(
      () => parseConfig({ ...llama31, rope_scaling: { rope_type: "yarn", factor: 4 } }, "config.json", "x"),
      "unsupported_architecture",
      "rope_scaling.rope_type",
      "yarn",
    )
    expectError(
      () => parseConfig({ ...llama31, rope_scaling: { type: "dynamic", factor: 2 } }, "config.json", "x"),
      "unsupported_architecture",
      "rope_scaling.type",
    )
    expectError(() => parseConfig({ ...llama31, hidden_act: "gelu" }, "config.json", "x"), "unsupported_architecture", "hidden_act")
    expectError(() => parseConfig({ ...llama31, mlp_bias: true }, "config.json", "x"), "unsupported_architecture", "mlp_bias")
  })

  it("requires kv heads to divide heads", () => {
    expectError(
      () => parseConfig({ ...llama31, num_key_value_heads: 5 }, "config.json", "x"),
      "config_malformed",
      "num_key_value_heads",
      "config.json",
      "must divide",
    )
  })

  it("requires head_dim when hidden is not a multiple of heads", () => {
    const { head_dim: _h, ...rest } = { ...llama31, head_dim: 0, hidden_size: 4000, num_attention_heads: 48, num_key_value_heads: 8 }
    expectError(() => parseConfig(rest, "config.json", "x"), "config_malformed", "head_dim")
  })
})

describe("dummy presets", () => {
  it("have the published shapes", () => {
    const count = (name: string) => parameterCount(dummyPresets[name]!)
    expect(count("llama-3.1-8b")).toBe(8_030_261_248)
    expect(count("llama-2-7b")).toBe(6_738_415_616)
    expect(count("mistral-7b")).toBe(7_241_732_096)
    expect(count("llama-3.2-1b")).toBe(1_235_814_400)
    expect(count("qwen2-0.5b")).toBe(494_032_768)
    expect(dummyPresets["longchat-7b-32k"]!.ropeScaling).toEqual({ type: "linear", factor: 8 })
    for (const [name, c] of Object.entries(dummyPresets)) {
      expect(c.name).toBe(name)
      expect(c.numHeads % c.numKvHeads).toBe(0)
    }
  })

  it("resolve by name, directory or config.json, else unknown_model", () => {
    expect(resolveDummyConfig("tiny")).toBe(dummyPresets.tiny)
    expect(resolveDummyConfig(tinyDir).name).toBe("tiny-leo-14m")
    expect(resolveDummyConfig(path.join(tinyDir, "config.json")).name).toBe("tiny-leo-14m")
    expectError(() => resolveDummyConfig("llama-9000"), "unknown_model", undefined, "llama-9000", "llama-3.1-8b")
  })
})
