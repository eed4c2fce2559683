import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { parseConfig } from "../models/config.ts"
import { bf16ToF16Bits, f32ToF16Bits } from "../models/half.ts"
import { expectedTensors, numElements } from "../models/layout.ts"
import { HfWeightSource, SafetensorsFiles, readSafetensorsHeader } from "../models/safetensors.ts"
import { modelErrorOf } from "./support/errors.ts"

const tinyDir = fileURLToPath(new URL("../models/tiny-leo-14m/", import.meta.url))

// --- writing synthetic files --------------------------------------------------------

interface RawTensor {
  readonly name: string
  readonly dtype: string
  readonly shape: ReadonlyArray<number>
  readonly bytes: Uint8Array
}

/** Deterministic values in [-2, 2) with a few specials mixed in. */
const values = (n: number, seed: number): number[] =>
  Array.from({ length: n }, (_, i) => {
    const k = (i * 2654435761 + seed * 40503) >>> 0
    if (k % 97 === 0) return [0, -0, 65504, 1e-6, -3e-8][k % 5]!
    return ((k % 4001) / 1000 - 2) * (1 + (k % 3) / 7)
  })

const f16Tensor = (name: string, shape: ReadonlyArray<number>, seed = 1): RawTensor => {
  const bits = Uint16Array.from(values(numElements(shape), seed), f32ToF16Bits)
  return { name, dtype: "F16", shape, bytes: new Uint8Array(bits.buffer) }
}
const bf16Tensor = (name: string, shape: ReadonlyArray<number>, seed = 2): RawTensor => {
  const f = new Float32Array(values(numElements(shape), seed))
  const bits = Uint16Array.from(new Uint32Array(f.buffer), (b) => b >>> 16)
  return { name, dtype: "BF16", shape, bytes: new Uint8Array(bits.buffer) }
}
const f32Tensor = (name: string, shape: ReadonlyArray<number>, seed = 3): RawTensor => {
  const f = new Float32Array(values(numElements(shape), seed))
  return { name, dtype: "F32", shape, bytes: new Uint8Array(f.buffer) }
}

/** The f16 bits a reader must produce for a synthetic tensor. */
const expectedBits = (t: RawTensor): number[] => {
  if (t.dtype === "F16") return [...new Uint16Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.length / 2)]
  if (t.dtype === "BF16") return [...new Uint16Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.length / 2)].map(bf16ToF16Bits)
  return [...new Float32Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.length / 4)].map(f32ToF16Bits)
}

const writeSafetensors = (file: string, tensors: ReadonlyArray<RawTensor>, headerLenOverride?: number): void => {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } }
  let offset = 0
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] }
    offset += t.bytes.length
  }
  let json = JSON.stringify(header)
  json += " ".repeat((8 - (json.length % 8)) % 8)
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(headerLenOverride ?? json.length))
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.bytes))]))
}

const readAll = (read: (sink: (p: Uint16Array, at: number) => void, max?: number) => void, maxElements?: number) => {
  const out: number[] = []
  const pieces: Array<[number, number]> = []
  read((piece, at) => {
    expect(at).toBe(out.length)
    if (maxElements !== undefined) expect(piece.length).toBeLessThanOrEqual(maxElements)
    pieces.push([at, piece.length])
    for (const bits of piece) out.push(bits)
  }, maxElements)
  return { out, pieces }
}

let dir = ""
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-st-"))
})
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

// --- tests --------------------------------------------------------------------------

describe("one safetensors file", () => {
  const tensors = [f16Tensor("a", [7, 5]), bf16Tensor("b", [3, 11]), f32Tensor("c", [2, 2, 9]), f16Tensor("empty", [0, 4])]

  it("streams F16, BF16 and F32 in small pieces as f16 bits", () => {
    writeSafetensors(path.join(dir, "model.safetensors"), tensors)
    const files = SafetensorsFiles.open(dir)
    try {
      for (const t of tensors) {
        for (const max of [1, 3, 8, 1000]) {
          const { out, pieces } = readAll((sink, m) => files.readF16(t.name, sink, m), max)
          expect(out).toEqual(expectedBits(t))
          expect(pieces.length).toBe(Math.ceil(numElements(t.shape) / max))
        }
      }
    } finally {
      files.close()
    }
  })

  it("reads the header and metadata", () => {
    const file = path.join(dir, "model.safetensors")
    writeSafetensors(file, tensors)
    const h = readSafetensorsHeader(file)
    expect(h.metadata).toEqual({ format: "pt" })
    expect([...h.entries.keys()]).toEqual(["a", "b", "c", "empty"])
    expect(h.entries.get("b")).toMatchObject({ dtype: "BF16", shape: [3, 11], byteLength: 66 })
  })

  it("rejects a header length larger than the file", () => {
    const file = path.join(dir, "model.safetensors")
    writeSafetensors(file, tensors, 1 << 20)
    const e = modelErrorOf(() => readSafetensorsHeader(file))
    expect(e.code).toBe("safetensors_malformed")
    expect(e.message).toContain(file)
    expect(e.message).toContain("header length")
  })

  it("rejects a truncated file, naming the tensor past the end", () => {
    const file = path.join(dir, "model.safetensors")
    writeSafetensors(file, tensors)
    fs.truncateSync(file, fs.statSync(file).size - 10)
    const e = modelErrorOf(() => readSafetensorsHeader(file))
    expect(e.code).toBe("safetensors_malformed")
    expect(e.field).toBe("c")
    expect(e.message).toContain(file)
    fs.truncateSync(file, 5)
    expect(modelErrorOf(() => readSafetensorsHeader(file)).code).toBe("safetensors_malformed")
  })

  it("rejects offsets that disagree with shape and dtype", () => {
    const file = path.join(dir, "model.safetensors")
    writeSafetensors(file, [{ ...f16Tensor("a", [4, 4]), shape: [4, 3] }])
    const e = modelErrorOf(() => readSafetensorsHeader(file))
    expect(e.code).toBe("safetensors_malformed")
    expect(e.field).toBe("a")
  })

  it("refuses to read an I8 tensor, naming file and tensor", () => {
    const file = path.join(dir, "model.safetensors")
    writeSafetensors(file, [{ name: "q", dtype: "I8", shape: [4], bytes: new Uint8Array(4) }, f16Tensor("a", [2])])
    const files = SafetensorsFiles.open(dir)
    try {
      const e = modelErrorOf(() => files.readF16("q", () => {}))
      expect(e.code).toBe("tensor_dtype")
      expect(e.field).toBe("q")
      expect(e.message).toContain(file)
      expect(e.message).toContain("I8")
      expect(modelErrorOf(() => files.readF16("nope", () => {})).code).toBe("tensor_missing")
    } finally {
      files.close()
    }
  })

  it("reports no weights at all as shard_missing", () => {
    const e = modelErrorOf(() => SafetensorsFiles.open(dir))
    expect(e.code).toBe("shard_missing")
    expect(e.message).toContain("model.safetensors")
  })
})

describe("sharded safetensors", () => {
  const shard1 = [f16Tensor("x.a", [5, 3]), f32Tensor("x.b", [10])]
  const shard2 = [bf16Tensor("y.c", [9])]
  const writeIndex = (map: Record<string, string>) =>
    fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: map }))
  const standardIndex = { "x.a": "m-1.safetensors", "x.b": "m-1.safetensors", "y.c": "m-2.safetensors" }

  it("routes tensors to their shards", () => {
    writeSafetensors(path.join(dir, "m-1.safetensors"), shard1)
    writeSafetensors(path.join(dir, "m-2.safetensors"), shard2)
    writeIndex(standardIndex)
    const files = SafetensorsFiles.open(dir)
    try {
      for (const t of [...shard1, ...shard2]) expect(readAll((s, m) => files.readF16(t.name, s, m), 4).out).toEqual(expectedBits(t))
      expect(files.located.get("y.c")!.file).toBe(path.join(dir, "m-2.safetensors"))
    } finally {
      files.close()
    }
  })

  it("names a missing shard and a tensor it should hold", () => {
    writeSafetensors(path.join(dir, "m-1.safetensors"), shard1)
    writeIndex(standardIndex)
    const e = modelErrorOf(() => SafetensorsFiles.open(dir))
    expect(e.code).toBe("shard_missing")
    expect(e.file).toBe(path.join(dir, "m-2.safetensors"))
    expect(e.field).toBe("y.c")
    expect(e.message).toContain("m-2.safetensors")
    expect(e.message).toContain(`"y.c"`)
  })

  it("names a tensor the index maps to a shard that lacks it", () => {
    writeSafetensors(path.join(dir, "m-1.safetensors"), shard1)
    writeSafetensors(path.join(dir, "m-2.safetensors"), shard2)
    writeIndex({ ...standardIndex, "y.d": "m-2.safetensors" })
    const e = modelErrorOf(() => SafetensorsFiles.open(dir))
    expect(e.code).toBe("tensor_missing")
    expect(e.field).toBe("y.d")
    expect(e.message).toContain("m-2.safetensors")
  })

  it("rejects a malformed index", () => {
    fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: ["a"] }))
    const e = modelErrorOf(() => SafetensorsFiles.open(dir))
    expect(e.code).toBe("safetensors_malformed")
    expect(e.field).toBe("weight_map")
  })
})

describe("HfWeightSource", () => {
  const config = {
    model_type: "llama",
    vocab_size: 16,
    hidden_size: 8,
    intermediate_size: 12,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 4,
    tie_word_embeddings: true,
  }
  const layout = expectedTensors(parseConfig(config, "config.json", "t"))
  const writeModel = (tensors: ReadonlyArray<RawTensor>, cfg: object = config) => {
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg))
    writeSafetensors(path.join(dir, "model.safetensors"), tensors)
  }
  const make = [f16Tensor, bf16Tensor, f32Tensor]

  it("opens a complete model of mixed dtypes and ignores a tied lm_head", () => {
    const tensors = layout.map((t, i) => make[i % 3]!(t.name, t.shape, i))
    writeModel([...tensors, f16Tensor("lm_head.weight", [16, 8])])
    const src = HfWeightSource.open(dir)
    try {
      expect(src.config.name).toBe(path.basename(dir))
      expect([...src.tensors.keys()].sort()).toEqual(layout.map((t) => t.name).sort())
      for (const t of tensors) expect(readAll((s, m) => src.readF16(t.name, s, m), 5).out).toEqual(expectedBits(t))
      expect(modelErrorOf(() => src.readF16("lm_head.weight", () => {})).code).toBe("tensor_missing")
    } finally {
      src.close()
    }
  })

  it("names a tensor of the wrong shape", () => {
    writeModel(layout.map((t) => f16Tensor(t.name, t.name.endsWith("k_proj.weight") ? [8, 8] : t.shape)))
    const e = modelErrorOf(() => HfWeightSource.open(dir))
    expect(e.code).toBe("tensor_shape")
    expect(e.field).toBe("model.layers.0.self_attn.k_proj.weight")
    expect(e.message).toContain(path.join(dir, "model.safetensors"))
    expect(e.message).toContain("[4,8]")
  })

  it("names a missing tensor", () => {
    writeModel(layout.filter((t) => t.name !== "model.norm.weight").map((t) => f16Tensor(t.name, t.shape)))
    const e = modelErrorOf(() => HfWeightSource.open(dir))
    expect(e.code).toBe("tensor_missing")
    expect(e.field).toBe("model.norm.weight")
  })

  it("requires lm_head when untied", () => {
    writeModel(
      layout.map((t) => f16Tensor(t.name, t.shape)),
      { ...config, tie_word_embeddings: false },
    )
    expect(modelErrorOf(() => HfWeightSource.open(dir)).field).toBe("lm_head.weight")
  })

  it("names a required tensor of an unreadable dtype", () => {
    writeModel(
      layout.map((t) =>
        t.name === "model.embed_tokens.weight"
          ? { name: t.name, dtype: "I8", shape: t.shape, bytes: new Uint8Array(numElements(t.shape)) }
          : f16Tensor(t.name, t.shape),
      ),
    )
    const e = modelErrorOf(() => HfWeightSource.open(dir))
    expect(e.code).toBe("tensor_dtype")
    expect(e.field).toBe("model.embed_tokens.weight")
    expect(e.message).toContain("model.safetensors")
  })

  it("opens the sharded test model and streams it piece-size independently", () => {
    const src = HfWeightSource.open(tinyDir)
    try {
      expect(src.tensors.size).toBe(2 + 9 * 8)
      const whole = readAll((s, m) => src.readF16("model.layers.7.mlp.down_proj.weight", s, m)).out
      const pieces = readAll((s, m) => src.readF16("model.layers.7.mlp.down_proj.weight", s, m), 1000)
      expect(whole.length).toBe(384 * 1024)
      expect(pieces.out).toEqual(whole)
      expect(pieces.pieces.length).toBe(Math.ceil((384 * 1024) / 1000))
    } finally {
      src.close()
    }
  })
})
