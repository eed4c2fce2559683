// GEMV tunings (pure): what resolveGemvTunings accepts and refuses, and the defaults.
import { describe, expect, it } from "vitest"
import { defaultGemvTuning, type GemvTuning, resolveGemvTunings } from "../engine/gemv-tuning.ts"
import type { Gpu } from "../engine/gpu.ts"
import { dummyPresets } from "../models/config.ts"

const c = dummyPresets["llama-3.1-8b"]!

describe("resolveGemvTunings", () => {
  it("takes one tuning for all matrices or one per matrix", () => {
    expect(resolveGemvTunings(c, { wg: 128, rows: 2 }, undefined).down).toEqual({ wg: 128, rows: 2 })
    const per = resolveGemvTunings(c, (op) => (op === "qkv" ? { wg: 64, rows: 4 } : { wg: 256, rows: 2 }), undefined)
    expect([per.qkv.rows, per.o.wg]).toEqual([4, 256])
  })

  it.each<[string, GemvTuning, number | undefined]>([
    ["odd rows", { wg: 128, rows: 3 }, undefined],
    ["a workgroup that is not a power of two", { wg: 96, rows: 2 }, undefined],
    ["the subgroup kernel without subgroups", { kind: "sg", wg: 32, rows: 2, rpw: 2 }, undefined],
    ["a workgroup smaller than a subgroup", { kind: "sg", wg: 32, rows: 2, rpw: 2 }, 64],
    ["rpw not a multiple of rows", { kind: "sg", wg: 64, rows: 4, rpw: 6 }, 32],
    ["unroll past 16", { kind: "sg", wg: 64, rows: 2, rpw: 2, unroll: 17 }, 32],
  ])("refuses %s", (_, t, sgMax) => {
    expect(() => resolveGemvTunings(c, t, sgMax)).toThrow(RangeError)
  })

  it("the defaults are valid on the CPU, on a GPU without subgroups, and with 32- and 64-lane subgroups", () => {
    const gpu = (kind: string, hasSubgroups: boolean, subgroupMaxSize: number) => ({ kind, hasSubgroups, subgroupMaxSize }) as unknown as Gpu
    for (const g of [gpu("cpu", true, 8), gpu("discrete", false, 0), gpu("discrete", true, 32), gpu("discrete", true, 64)]) {
      const t = resolveGemvTunings(c, defaultGemvTuning(g), g.hasSubgroups ? g.subgroupMaxSize : undefined)
      // The QKV rows come in quads, so that the decode GEMV can apply RoPE itself.
      expect(t.qkv.rows % 4).toBe(0)
    }
  })
})
