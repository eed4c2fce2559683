// Batched decode's streamed projections (kernels/half_rows.wgsl + gemm_stream.wgsl,
// engine/batch-stream.ts): the kernel pair against the CPU reference for 1 to 19 rows, odd N
// and a K that is not a multiple of 16, in f16 and f32 arithmetic, with subgroups and
// without; where the batch takes them; and a decode batch on them against each row alone.
import { afterAll, describe, expect, it } from "vitest"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { halfRowsKey } from "../engine/batch-mma.ts"
import { parseStreamForm, STREAM_FORM, streamFor, streamFormName, streamFormOf, streamGrid, streamKey, streamRowCounts, streamRows } from "../engine/batch-stream.ts"
import { GEMM_TOLERANCE } from "../engine/matrix-check.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { type SkinnyCase, skinnyError } from "../engine/skinny-check.ts"
import { dummyPresets } from "../models/config.ts"
import { DecodeBatch, defaultProjections, streamWanted } from "../engine/batch.ts"
import { readBack } from "../engine/buffers.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"

const gpu: Gpu = await acquireGpu()
afterAll(async () => {
  await releaseGpu()
})

// K = 8 * 43: not a multiple of 16, and with 8- or 32-lane teams a partial last step group.
// Passes of 1, 4, 8 and 16 rows; 16 and 19 rows share a pipeline (lavapipe compiles each
// pipeline at its first dispatch, ~10-20 s for 16 rows a pass, so the file compiles one).
const K = 8 * 43
const cases: SkinnyCase[] = [
  { M: 1, N: 37, K, flags: { NORM: true, BIAS: true } },
  { M: 3, N: 2 * 19, K, flags: { NORM: true, SWIGLU: true, ACC: true } },
  { M: 8, N: 150, K, flags: { BIAS: true, ACC: true } },
  { M: 16, N: 2 * 37, K, flags: { NORM: true, SWIGLU: true, BIAS: true } },
  { M: 19, N: 2 * 37, K, flags: { NORM: true, SWIGLU: true, BIAS: true } },
]

// The same device, its kernels compiled without subgroups (a team is the whole workgroup).
const plain = new Pipelines(gpu)
const noSubgroups = new Pipelines({ ...gpu, hasSubgroups: false })

const check = async (subgroups: boolean, form: string, c: SkinnyCase, seed: number) => {
  const k = streamFor({ ...gpu, hasSubgroups: subgroups }, dummyPresets.tiny!, parseStreamForm(form))!
  const pipelines = subgroups ? plain : noSubgroups
  const { NORM, ...flags } = c.flags
  const gemm = await pipelines.get(streamKey(flags, k, streamRows(c.M)))
  const outs = flags.SWIGLU ? c.N / 2 : c.N
  return skinnyError(gpu.device, await pipelines.get(halfRowsKey(NORM === true, k.X32)), gemm, c, seed, 1, streamGrid(k, outs, flags.SWIGLU === true, c.M), k.X32 !== true)
}

describe("gemm_stream", () => {
  it("RMSNorm, bias, SwiGLU pairs and the residual for 1 to 19 rows match the CPU reference (the default form)", async () => {
    const form = streamFormName(STREAM_FORM)
    for (const [i, c] of cases.entries()) expect(await check(true, form, c, 60 + i), JSON.stringify(c)).toBeLessThan(GEMM_TOLERANCE)
  })

  it("the other forms (a few rows a pass): 2 and 8 rows of W a team, 1 step in flight, a workgroup of 64, without subgroups, f32 rows of x; f16 pieces within their looser bound", async () => {
    const forms: Array<[boolean, string, SkinnyCase]> = [
      [true, "8x1/64", cases[1]!],
      [false, "4x2", cases[1]!],
      [true, "2x1f", { ...cases[2]!, M: 2 }],
    ]
    for (const [i, [subgroups, form, c]] of forms.entries()) {
      expect(await check(subgroups, form, c, 70 + i), `${form}${subgroups ? "" : " without subgroups"} ${JSON.stringify(c)}`).toBeLessThan(GEMM_TOLERANCE)
    }
    // Each 8-term piece rounded to f16: about 2^-11 of a piece, summed over K / 8 pieces.
    if (gpu.hasF16) expect(await check(true, "4x2h", cases[1]!, 80)).toBeLessThan(2e-2)
  })
})

describe("where the batch streams its projections", () => {
  it("passes of 1, 2, 4, 8 or 16 rows; from STREAM_MIN_ROWS rows on a GPU without the matrix units, or any GPU with LEOAM_SKINNY_GEMM=stream", () => {
    expect([1, 2, 3, 5, 8, 9, 16, 17, 40].map(streamRows)).toEqual([1, 2, 4, 8, 8, 16, 16, 16, 16])
    expect(streamRowCounts(16, 2)).toEqual([2, 4, 8, 16])
    expect(streamRowCounts(3, 1)).toEqual([1, 2, 4])
    expect(streamRowCounts(40, 4)).toEqual([4, 8, 16])
    const c = dummyPresets["llama-3.1-8b"]!
    const h100 = { kind: "discrete" as const, hasF16: true, hasSubgroups: true, matrixF16: { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 }, subgroupMinSize: 32, subgroupMaxSize: 32 }
    expect(streamFor(h100, c)).toEqual({ ...STREAM_FORM, teams: 4 })
    expect(streamFor({ ...h100, hasSubgroups: false }, c)).toEqual({ ...STREAM_FORM, teams: 1 })
    expect(streamFor({ ...h100, hasF16: false }, c, parseStreamForm("8x1h/256"))).toEqual({ WG: 256, R: 8, UNROLL: 1, F16: false, teams: 8 })
    expect(streamFor(h100, { ...c, hiddenSize: c.hiddenSize + 4 })).toBeUndefined()
    expect(defaultProjections(h100, c, 16, "auto")).toBe("mma")
    expect(defaultProjections(h100, c, 16, "stream")).toBe("stream")
    expect(defaultProjections(h100, c, 2, "stream")).toBe("stream")
    expect(defaultProjections({ ...h100, matrixF16: undefined }, c, 2, "auto")).toBe("stream")
    expect(defaultProjections(h100, c, 1, "auto")).toBe("gemv")
    expect(defaultProjections(h100, c, 16, "old")).toBe("mma")
    expect(defaultProjections({ ...h100, matrixF16: undefined }, c, 16, "auto")).toBe("stream")
    expect(defaultProjections({ ...h100, kind: "cpu" }, c, 16, "auto")).toBe("gemm")
    expect(() => streamWanted("fast")).toThrow(/stream, old or auto/)
    expect(streamFormOf(undefined)).toEqual(STREAM_FORM)
    expect(streamFormOf(" 2x2 ")).toEqual({ R: 2, UNROLL: 2, F16: false, WG: 128 })
    expect(streamFormOf("4x1f/256")).toEqual({ R: 4, UNROLL: 1, F16: false, X32: true, WG: 256 })
    expect(streamFormName(parseStreamForm("4x1f/256"))).toBe("4x1f/256")
    expect(() => streamFormOf("3x2")).toThrow(/RxUNROLL/)
  })
})

describe("a decode batch on the streamed projections", () => {
  it("gives each sequence of the bundled model the greedy ids it gets alone, as rows join and leave", async () => {
    const dir = new URL("../models/tiny-leo-14m", import.meta.url).pathname
    const source = openHfModel(dir)
    const lead = await GpuModel.load(gpu, source, { maxContext: 256 })
    const models = [lead, await lead.sibling({ maxContext: 256 }), await lead.sibling({ maxContext: 256 })]
    const prompts = [[1, 5, 9, 200, 31], Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 4000), [7, 7, 300, 12]]
    const tokens = 5
    try {
      const alone = []
      for (const [i, m] of models.entries()) alone.push((await generate(m, prompts[i]!, { maxTokens: tokens, temperature: 0 })).ids)
      // The default form (X32's scratch of f32 rows is left to the kernel checks above: each
      // form compiles a dozen pipelines, seconds each on lavapipe without its shader cache).
      const batch = await DecodeBatch.open(lead, 3, "stream")
      try {
        const greedy = (step: number) => ({ outSlot: step, temperature: 0, seed: 0, step })
        for (const [i, m] of models.entries()) {
          m.reset()
          await m.prefill(prompts[i]!)
          m.sample(greedy(0))
        }
        // Steps 1-2: three rows (a pass of 4); step 3: rows 0 and 1 (a pass of 2), row 2 alone;
        // step 4: row 2 (one row: the GEMVs), rows 0 and 1 alone.
        for (let s = 1; s < tokens; s++) {
          const inBatch = s < 3 ? models : s === 3 ? models.slice(0, 2) : models.slice(2)
          for (const m of models) if (!inBatch.includes(m)) await m.decode(s - 1, greedy(s))
          await batch.step(inBatch.map((model) => ({ model, inSlot: s - 1, sample: greedy(s) })))
        }
        const batched = await Promise.all(models.map(async (m) => [...new Uint32Array(await readBack(gpu.device, m.tokenIds, 0, tokens * 4))]))
        expect(batched).toEqual(alone)
      } finally {
        batch.destroy()
      }
    } finally {
      for (const m of models.slice(1)) m.destroy()
      lead.destroy()
      source.close()
    }
  }, 120_000)
})
