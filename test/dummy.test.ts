import { describe, expect, it } from "vitest"
import { dummyPresets } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { f16ToF32 } from "../models/half.ts"
import { expectedTensors } from "../models/layout.ts"

const readAll = (src: DummyWeightSource, name: string, maxElements?: number): Uint16Array => {
  const info = src.tensors.get(name)!
  const out = new Uint16Array(info.shape.reduce((a, b) => a * b, 1))
  src.readF16(name, (piece, at) => out.set(piece, at), maxElements)
  return out
}

describe("DummyWeightSource", () => {
  const tiny = dummyPresets.tiny!

  it("holds the Hugging Face layout of its config", () => {
    const src = new DummyWeightSource(tiny)
    expect([...src.tensors.values()].map((t) => [t.name, t.shape])).toEqual(expectedTensors(tiny).map((t) => [t.name, t.shape]))
    expect(src.tensors.has("lm_head.weight")).toBe(false)
    expect(new DummyWeightSource(dummyPresets["llama-3.1-8b"]!).tensors.get("lm_head.weight")!.shape).toEqual([128256, 4096])
  })

  it("is deterministic, independent of piece size, and differs by tensor and seed", () => {
    const src = new DummyWeightSource(tiny)
    const name = "model.layers.1.mlp.down_proj.weight"
    const whole = readAll(src, name)
    for (const max of [1, 7, 1000]) expect(readAll(src, name, max)).toEqual(whole)
    expect(readAll(new DummyWeightSource(tiny), name)).toEqual(whole)
    expect(readAll(src, "model.layers.0.mlp.down_proj.weight")).not.toEqual(whole)
    expect(readAll(new DummyWeightSource(tiny, 2), name)).not.toEqual(whole)
  })

  it("gives small centred values and unit norms", () => {
    const src = new DummyWeightSource(tiny)
    const values = [...readAll(src, "model.embed_tokens.weight")].map(f16ToF32)
    expect(Math.max(...values.map(Math.abs))).toBeLessThanOrEqual(0.04)
    expect(Math.abs(values.reduce((a, b) => a + b, 0) / values.length)).toBeLessThan(1e-3)
    expect(new Set(values).size).toBeGreaterThan(1000)
    expect([...readAll(src, "model.layers.0.input_layernorm.weight")].every((b) => b === 0x3c00)).toBe(true)
    expect([...readAll(src, "model.norm.weight")].every((b) => b === 0x3c00)).toBe(true)
  })
})
