// Every non-attention kernel in kernels/*.wgsl against the CPU reference on small seeded
// shapes (attention: kernels-attention.test.ts). f16 inputs are generated as f16 values so
// both sides see the same numbers; outputs are compared with the tolerance of their dtype.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { applyRope, argmax, matVec, rmsNorm, ropeAngles, ropeInvFreq, silu } from "../engine/cpu-reference.ts"
import { UNIFORM } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import type { PipelineKey } from "../engine/pipelines.ts"
import { dummyPresets } from "../models/config.ts"
import { f16ToF32, f32ToF16Bits } from "../models/half.ts"
import { expectClose, halfOf, KernelRig, randomHalf, rng, shuffled, TOL, uniformF32 } from "./kernel-rig.ts"

let rig: KernelRig
let plainRig: KernelRig // the same device, kernels compiled without subgroups

beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
  plainRig = rig.withoutSubgroups()
})

afterAll(async () => {
  rig?.destroy()
  plainRig?.destroy()
  await releaseGpu()
})

const EPS = 1e-5

// --- gemv -----------------------------------------------------------------------------

interface GemvCase {
  readonly N: number // rows of W (logical outputs before SWIGLU)
  readonly K: number
  readonly M: number
  readonly flags: Readonly<Record<string, boolean>>
  readonly wg: number
  readonly rows: number
  /** gemv_sg.wgsl with this many rows per workgroup (else gemv.wgsl). */
  readonly rpw?: number
  /** Workgroups along x; the rest of the row groups go along y. */
  readonly groupsX?: number
  /** gemv_sg.wgsl: loads in flight per row and lane. */
  readonly unroll?: number
}

/**
 * y (M, N or N/2) as gemv.wgsl and gemm.wgsl define it, from f32 copies of the f16
 * inputs; with SWIGLU, W's rows are [gate; up]. Bias is indexed like W's rows. SWIGLU with
 * BIAS is left out: both kernels index bias by the interleaved (gate, up) row instead, and
 * no model has MLP biases (config.ts rejects mlp_bias).
 */
const linearReference = (
  c: Pick<GemvCase, "N" | "K" | "M" | "flags">,
  w: Float32Array, // (N, K)
  x: Float32Array, // (M, K)
  gamma: Float32Array, // (K)
  bias: Float32Array, // (N)
  y0: Float32Array, // (M, outputs)
): Float32Array => {
  const { N, K, M, flags } = c
  const outs = flags.SWIGLU ? N / 2 : N
  const y = new Float32Array(M * outs)
  const xin = new Float32Array(K)
  const z = new Float32Array(N)
  for (let m = 0; m < M; m++) {
    if (flags.NORM) rmsNorm(xin, x, gamma, EPS, m * K, 0)
    else xin.set(x.subarray(m * K, (m + 1) * K))
    matVec(z, w, xin, N, K, flags.BIAS ? bias : undefined)
    for (let n = 0; n < outs; n++) {
      const v = flags.SWIGLU ? silu(z[n]!) * z[N / 2 + n]! : z[n]!
      y[m * outs + n] = (flags.ACC ? y0[m * outs + n]! : 0) + v
    }
  }
  return y
}

const runGemv = async (r: KernelRig, c: GemvCase, seed: number): Promise<void> => {
  const rand = rng(seed)
  const { N, K, M, flags } = c
  const outs = flags.SWIGLU ? N / 2 : N
  const w = randomHalf(rand, N * K) // (N, K) f16
  const x = uniformF32(rand, M * K, 2) // (M, K) f32
  const gamma = randomHalf(rand, K, 1.5) // (K) f16
  const bias = uniformF32(rand, N) // (N) f32
  const y0 = uniformF32(rand, M * outs) // (M, outs) f32, the residual for ACC
  const groups = Math.ceil(N / (c.rpw ?? c.rows))
  const gx = c.groupsX ?? groups
  const y = r.input(y0, "y (M, outs) f32")
  const key: PipelineKey = c.rpw
    ? { op: "gemv_sg", flags, constants: { WG: c.wg, ROWS: c.rows, RPW: c.rpw, ...(c.unroll ? { UNROLL: c.unroll } : {}) } }
    : { op: "gemv", flags, constants: { WG: c.wg, ROWS: c.rows } }
  await r.run(
    key,
    { layout: "uufuuuuu", values: [N, K, EPS, gx, 0, 0, 0, 0] },
    {
      1: r.input(w.bits),
      2: r.input(x),
      3: y,
      4: flags.NORM ? r.input(gamma.bits) : undefined,
      5: flags.BIAS ? r.input(bias) : undefined,
    },
    [gx, Math.ceil(groups / gx), M],
  )
  const want = linearReference(c, w.values, x, gamma.values, bias, y0)
  expectClose(await r.f32(y, M * outs), want, TOL.f32, `gemv ${JSON.stringify(c)}`)
}

const gemvVariants: ReadonlyArray<Record<string, boolean>> = [
  {},
  { NORM: true },
  { ACC: true },
  { BIAS: true },
  { NORM: true, BIAS: true },
  { ACC: true, BIAS: true },
  { NORM: true, SWIGLU: true },
  { NORM: true, SWIGLU: true, ACC: true },
]

describe.each([
  ["with subgroups", () => rig],
  ["without subgroups", () => plainRig],
])("gemv %s", (_, rigOf) => {
  it.each([
    [64, 4],
    [256, 4],
    [128, 8],
    [32, 2],
  ])("WG %i ROWS %i: every fused variant, N not a multiple of ROWS, M = 3 along z", async (wg, rows) => {
    for (const [i, flags] of gemvVariants.entries()) {
      // SWIGLU needs N even: 38 rows are 19 (gate, up) pairs.
      const N = flags.SWIGLU ? 38 : 37
      await runGemv(rigOf(), { N, K: 520, M: 3, flags, wg, rows }, 100 * wg + 10 * rows + i)
    }
  })

  it("splits row groups over x and y (groups_x < groups)", async () => {
    await runGemv(rigOf(), { N: 61, K: 64, M: 2, flags: { NORM: true }, wg: 64, rows: 4, groupsX: 3 }, 7)
    await runGemv(rigOf(), { N: 62, K: 64, M: 1, flags: { NORM: true, SWIGLU: true }, wg: 64, rows: 4, groupsX: 5 }, 8)
  })

  it("K smaller than one pass of the workgroup (most threads idle)", async () => {
    await runGemv(rigOf(), { N: 9, K: 16, M: 2, flags: { NORM: true }, wg: 256, rows: 4 }, 9)
  })
})

describe("gemv_sg (one subgroup per row group)", () => {
  it.each([
    [128, 2, 8],
    [32, 4, 12],
  ])("WG %i ROWS %i RPW %i: every fused variant, N not a multiple of RPW, M = 3 along z", async (wg, rows, rpw) => {
    for (const [i, flags] of gemvVariants.entries()) {
      const N = flags.SWIGLU ? 38 : 37
      await runGemv(rig, { N, K: 520, M: 3, flags, wg, rows, rpw }, 1000 + 100 * wg + 10 * rows + i)
    }
  })
  it("UNROLL 1, 8 and 16 (loads in flight per row and lane), K not a multiple of a pass", async () => {
    for (const unroll of [1, 8, 16]) {
      await runGemv(rig, { N: 37, K: 1048, M: 2, flags: { NORM: true }, wg: 64, rows: 2, rpw: 4, unroll }, 40 + unroll)
      await runGemv(rig, { N: 38, K: 1048, M: 1, flags: { NORM: true, SWIGLU: true, ACC: true }, wg: 32, rows: 2, rpw: 2, unroll }, 60 + unroll)
    }
  })
  it("K below one subgroup pass, and row groups over x and y", async () => {
    await runGemv(rig, { N: 9, K: 16, M: 2, flags: { NORM: true }, wg: 128, rows: 2, rpw: 4 }, 21)
    await runGemv(rig, { N: 62, K: 64, M: 1, flags: { NORM: true, SWIGLU: true }, wg: 64, rows: 2, rpw: 4, groupsX: 5 }, 22)
  })
})

// --- gemv with RoPE fused (the decode QKV projection) ----------------------------------

/**
 * The QKV GEMV with ROPE: the CPU reference is RMSNorm, the projection (+ bias), then
 * rotate_half RoPE on q and k heads; q comes out as f32, k and v in the f16 pools at each
 * query's slot, and nothing else in the pools changes.
 */
const runGemvRope = async (r: KernelRig, c: { wg: number; rows: number; rpw?: number; bias: boolean; unroll?: number }, seed: number) => {
  const [H, KV, D, BS, K, M, blocks] = [4, 2, 64, 16, 136, 3, 4]
  const N = (H + 2 * KV) * D
  const half = D / 2
  const rand = rng(seed)
  const w = randomHalf(rand, N * K)
  const x = uniformF32(rand, M * K, 2)
  const gamma = randomHalf(rand, K, 1.5)
  const bias = uniformF32(rand, N)
  const slots = Uint32Array.from([37, 3, 50]) // any slots of the pool, one per query
  const pos = [29, 4, 1000]
  const rope = new Float32Array(M * D)
  const invFreq = ropeInvFreq({ ...dummyPresets["llama-2-7b"]!, headDim: D })
  const cos = new Float32Array(half)
  const sin = new Float32Array(half)
  const flags = { NORM: true, ROPE: true, BIAS: c.bias }
  const want = linearReference({ N, K, M, flags: { NORM: true, BIAS: c.bias } }, w.values, x, gamma.values, bias, new Float32Array(M * N))
  for (let t = 0; t < M; t++) {
    ropeAngles(invFreq, pos[t]!, cos, sin)
    for (let i = 0; i < half; i++) rope.set([cos[i]!, sin[i]!], (t * half + i) * 2)
    for (let h = 0; h < H + KV; h++) applyRope(want, (t * (H + 2 * KV) + h) * D, cos, sin)
  }
  const poolWords = (blocks * KV * BS * D) / 2
  const SENTINEL = 0xdeadbeef
  const kpool = r.input(new Uint32Array(poolWords).fill(SENTINEL))
  const vpool = r.input(new Uint32Array(poolWords).fill(SENTINEL))
  const q = r.output(M * H * D * 4)
  const rpw = c.rpw ?? c.rows
  const key: PipelineKey = c.rpw
    ? { op: "gemv_sg", flags, constants: { WG: c.wg, ROWS: c.rows, RPW: c.rpw, ...(c.unroll ? { UNROLL: c.unroll } : {}) } }
    : { op: "gemv", flags, constants: { WG: c.wg, ROWS: c.rows } }
  const groups = Math.ceil(N / rpw)
  await r.run(
    key,
    { layout: "uufuuuuu", values: [N, K, EPS, groups, H, KV, D, BS] },
    { 1: r.input(w.bits), 2: r.input(x), 3: q, 4: r.input(gamma.bits), 5: c.bias ? r.input(bias) : undefined, 6: r.input(rope), 7: r.input(slots), 8: kpool, 9: vpool },
    [groups, 1, M],
  )
  const label = `gemv rope ${JSON.stringify(c)}`
  const wantQ = new Float32Array(M * H * D)
  for (let t = 0; t < M; t++) wantQ.set(want.subarray(t * N, t * N + H * D), t * H * D)
  expectClose(await r.f32(q, M * H * D), wantQ, TOL.f32, `${label}: q`)
  const pools = { k: await r.u32(kpool, poolWords), v: await r.u32(vpool, poolWords) }
  const written = new Set<number>()
  for (const [name, first] of [["k", H], ["v", H + KV]] as const) {
    const got: number[] = []
    const expected: number[] = []
    const halves = new Uint16Array(pools[name].buffer)
    for (let t = 0; t < M; t++) {
      for (let h = 0; h < KV; h++) {
        const at = ((Math.floor(slots[t]! / BS) * KV + h) * BS + (slots[t]! % BS)) * D
        for (let d = 0; d < D; d++) {
          got.push(f16ToF32(halves[at + d]!))
          expected.push(want[t * N + (first + h) * D + d]!)
          if (d % 2 === 0) written.add((at + d) / 2)
        }
      }
    }
    // f16 storage: within one f16 rounding of the f32 reference (plus the f32 sum's own error).
    expectClose(Float32Array.from(got), Float32Array.from(expected), { abs: 1e-4, rel: 2 ** -10 }, `${label}: ${name}`)
    const stray = pools[name].findIndex((word, i) => !written.has(i) && word !== SENTINEL)
    expect(stray, `${label}: ${name} pool word ${stray} written outside the slots`).toBe(-1)
  }
}

describe("gemv with ROPE (QKV projection, RoPE and the KV append in one kernel)", () => {
  it.each([
    [64, 4, false],
    [128, 8, true],
  ])("gemv.wgsl WG %i ROWS %i, bias %s", async (wg, rows, bias) => {
    await runGemvRope(rig, { wg, rows, bias }, 300 + rows)
    await runGemvRope(plainRig, { wg, rows, bias }, 310 + rows)
  })
  it.each([
    [32, 4, 4, false, undefined],
    [128, 4, 16, true, 8],
    [64, 8, 8, false, 2],
  ])("gemv_sg.wgsl WG %i ROWS %i RPW %i, bias %s, unroll %s", async (wg, rows, rpw, bias, unroll) => {
    await runGemvRope(rig, { wg, rows, rpw, bias, unroll }, 320 + rows + rpw)
  })
})

// --- gemm -----------------------------------------------------------------------------

const runGemm = async (c: { M: number; N: number; K: number; flags: Readonly<Record<string, boolean>> }, seed: number, op: "gemm" | "gemm_reg" = "gemm") => {
  const rand = rng(seed)
  const { M, N, K, flags } = c
  const outs = flags.SWIGLU ? N / 2 : N
  const w = randomHalf(rand, N * K) // (N, K) f16
  const x = uniformF32(rand, M * K, 2) // (M, K) f32
  const bias = uniformF32(rand, N) // (N) f32
  const y0 = uniformF32(rand, M * outs) // (M, outs) f32
  const y = rig.input(y0, "Y (M, outs) f32")
  await rig.run(
    { op, flags },
    { layout: "uuuu", values: [M, N, K, 0] },
    { 1: rig.input(x), 2: rig.input(w.bits), 3: y, 5: flags.BIAS ? rig.input(bias) : undefined },
    [Math.ceil(N / 64), Math.ceil(M / 64)],
  )
  const want = linearReference({ ...c, flags: { ...flags, NORM: false } }, w.values, x, new Float32Array(K), bias, y0)
  expectClose(await rig.f32(y, M * outs), want, TOL.f32, `${op} ${JSON.stringify(c)}`)
}

describe.each(["gemm", "gemm_reg"] as const)("%s", (op) => {
  const variants: ReadonlyArray<Record<string, boolean>> = [
    {},
    { ACC: true },
    { BIAS: true },
    { ACC: true, BIAS: true },
    { SWIGLU: true },
    { SWIGLU: true, ACC: true },
  ]

  it("every fused variant with M and N not multiples of the 64x64 tile (M 70, N 100, K 48)", async () => {
    for (const [i, flags] of variants.entries()) await runGemm({ M: 70, N: 100, K: 48, flags }, 200 + i, op)
  })

  it("one row, exact tiles, and a single K step", async () => {
    await runGemm({ M: 1, N: 36, K: 32, flags: {} }, 210, op)
    await runGemm({ M: 64, N: 128, K: 16, flags: { ACC: true } }, 211, op)
    await runGemm({ M: 3, N: 130, K: 16, flags: { SWIGLU: true } }, 212, op)
  })
})

// --- rmsnorm, embed -----------------------------------------------------------------

describe("rmsnorm", () => {
  it.each([
    [36, 3, 256],
    [1028, 2, 256], // more than 4 * WG columns: threads stride
    [200, 4, 64],
  ])("H %i, M %i rows along y, WG %i", async (H, M, wg) => {
    const rand = rng(H + M)
    const x = uniformF32(rand, M * H, 3) // (M, H) f32
    const gamma = randomHalf(rand, H, 2) // (H) f16
    const y = rig.output(M * H * 4)
    await rig.run({ op: "rmsnorm", constants: { WG: wg } }, { layout: "ufuu", values: [H, EPS] }, { 1: rig.input(x), 2: rig.input(gamma.bits), 3: y }, [1, M])
    const want = new Float32Array(M * H)
    for (let m = 0; m < M; m++) rmsNorm(want, x, gamma.values, EPS, m * H, m * H)
    expectClose(await rig.f32(y, M * H), want, TOL.f32, "rmsnorm")
  })
})

describe("embed", () => {
  it("gathers rows of its shard only, reading ids from id_offset", async () => {
    const rand = rng(31)
    const H = 520 // 260 half pairs: two workgroups along x
    const rowStart = 20
    const rows = 16 // the shard holds ids [20, 36)
    const table = randomHalf(rand, rows * H) // (rows, H) f16
    const ids = Uint32Array.of(99, 99, 3, 21, 35, 36, 20, 27, 19) // id_offset 2: the first two are not ours
    const M = 6
    const sentinel = 1234.5
    const x = rig.input(new Float32Array(M * H).fill(sentinel))
    await rig.run(
      { op: "embed" },
      { layout: "uuuuuuuu", values: [H, rowStart, rows, M, 2] },
      { 1: rig.input(table.bits), 2: rig.input(ids), 3: x },
      [Math.ceil(H / 2 / 256), M],
    )
    const got = await rig.f32(x, M * H)
    for (let m = 0; m < M; m++) {
      const id = ids[2 + m]!
      const row = got.subarray(m * H, (m + 1) * H)
      if (id >= rowStart && id < rowStart + rows) {
        expect([...row], `row ${m} (id ${id})`).toEqual([...table.values.subarray((id - rowStart) * H, (id - rowStart + 1) * H)])
      } else {
        expect(row.every((v) => v === sentinel), `row ${m} (id ${id}) is another shard's`).toBe(true)
      }
    }
  })
})

// --- rope_kv ------------------------------------------------------------------------

describe("rope_kv", () => {
  const [H, KV, D, BS, M, blocks] = [4, 2, 64, 16, 5, 4]
  const pos0 = 29 // positions 29 .. 33 cross from logical block 1 into block 2
  const heads = H + 2 * KV
  const half = D / 2
  const poolWords = (blocks * KV * BS * D) / 2 // (blocks, KV, BS, D) f16 in u32 pairs
  const SENTINEL = 0xdeadbeef
  const rand = rng(41)
  const physical = shuffled(rand, [0, 1, 2, 3]) // logical block -> physical block
  const slots = Uint32Array.from({ length: M }, (_, t) => physical[Math.floor((pos0 + t) / BS)]! * BS + ((pos0 + t) % BS))
  /** Half index of token slot s, kv head h, element 0 in a (blocks, KV, BS, D) pool. */
  const poolAt = (s: number, h: number) => ((Math.floor(s / BS) * KV + h) * BS + (s % BS)) * D
  // qkv (M, heads, D) f32: q and k any f32, v f16 values (the pool must hold them exactly).
  const qkv = uniformF32(rand, M * heads * D, 2)
  for (let t = 0; t < M; t++) qkv.set(halfOf(qkv.subarray((t * heads + H + KV) * D, (t + 1) * heads * D)).values, (t * heads + H + KV) * D)
  // rope (M, D/2) vec2 (cos, sin) of the positions; want: qkv with q and k heads rotated on the CPU.
  const rope = new Float32Array(M * D)
  const want = qkv.slice()
  const invFreq = ropeInvFreq({ ...dummyPresets["llama-2-7b"]!, headDim: D })
  const cos = new Float32Array(half)
  const sin = new Float32Array(half)
  for (let t = 0; t < M; t++) {
    ropeAngles(invFreq, pos0 + t, cos, sin)
    for (let i = 0; i < half; i++) rope.set([cos[i]!, sin[i]!], (t * half + i) * 2)
    for (let h = 0; h < H + KV; h++) applyRope(want, (t * heads + h) * D, cos, sin)
  }
  let q: Float32Array // (M, H, D) f32
  let k: Uint16Array // (blocks, KV, BS, D) f16
  let v: Uint16Array // (blocks, KV, BS, D) f16

  beforeAll(async () => {
    const kpool = rig.input(new Uint32Array(poolWords).fill(SENTINEL))
    const vpool = rig.input(new Uint32Array(poolWords).fill(SENTINEL))
    const qOut = rig.output(M * H * D * 4)
    await rig.run(
      { op: "rope_kv" },
      { layout: "uuuuuuuu", values: [M, H, KV, D, BS] },
      { 1: rig.input(qkv), 2: rig.input(rope), 3: rig.input(slots), 4: qOut, 5: kpool, 6: vpool },
      [Math.ceil((heads * D) / 2 / 64), M],
    )
    q = await rig.f32(qOut, M * H * D)
    k = new Uint16Array((await rig.u32(kpool, poolWords)).buffer)
    v = new Uint16Array((await rig.u32(vpool, poolWords)).buffer)
  })

  it("rotates q like applyRope (rotate_half pairs, cos and sin per position)", () => {
    const wantQ = new Float32Array(M * H * D)
    for (let t = 0; t < M; t++) wantQ.set(want.subarray(t * heads * D, (t * heads + H) * D), t * H * D)
    expectClose(q, wantQ, TOL.f32, "q")
  })

  it("writes rotated k within one f16 rounding and v with exact f16 bits at each token's slot", () => {
    const gotK = new Float32Array(M * KV * D)
    const wantK = new Float32Array(M * KV * D)
    for (let t = 0; t < M; t++) {
      for (let h = 0; h < KV; h++) {
        const at = poolAt(slots[t]!, h)
        const src = (t * heads + H + h) * D // k head h in qkv; v head h is KV * D further
        for (let d = 0; d < D; d++) {
          gotK[(t * KV + h) * D + d] = f16ToF32(k[at + d]!)
          wantK[(t * KV + h) * D + d] = want[src + d]!
        }
        const wantV = Array.from({ length: D }, (_, d) => f32ToF16Bits(qkv[src + KV * D + d]!)) // exact: v holds f16 values
        expect([...v.subarray(at, at + D)], `v of token ${t}, head ${h}`).toEqual(wantV)
      }
    }
    expectClose(gotK, wantK, TOL.f16, "k (f16)")
  })

  it("writes nothing else in the pools", () => {
    const written = new Set<number>() // u32 words
    for (const s of slots) for (let h = 0; h < KV; h++) for (let d = 0; d < D; d += 2) written.add((poolAt(s, h) + d) / 2)
    for (const [name, pool] of [["k", k], ["v", v]] as const) {
      const words = new Uint32Array(pool.buffer)
      const stray = words.findIndex((w, i) => !written.has(i) && w !== SENTINEL)
      expect(stray, `${name} pool word ${stray} written outside the given slots`).toBe(-1)
    }
  })
})

// --- argmax ---------------------------------------------------------------------------

const ID_SLOTS = 8

/** Runs both argmax passes; returns the chosen id (and leaves the other slots alone). */
const choose = async (logits: Float32Array, o: { groups: number; outSlot?: number; gumbel?: { seed: number; step: number; invTemp: number } }) => {
  const V = logits.length
  const outSlot = o.outSlot ?? 0
  const g = o.gumbel ?? { seed: 0, step: 0, invTemp: 1 }
  const uniform = { layout: "uuuuufuu", values: [V, o.groups, outSlot, g.seed, g.step, g.invTemp] }
  const part = rig.output(o.groups * 8) // (groups) vec2 (value, bitcast index)
  const ids = rig.input(new Uint32Array(ID_SLOTS).fill(0xffff)) // (slots) u32
  await rig.run({ op: "argmax", flags: { GUMBEL: o.gumbel !== undefined } }, uniform, { 1: rig.input(logits), 2: part }, [o.groups])
  await rig.run({ op: "argmax", flags: { FINAL: true } }, uniform, { 2: part, 3: ids }, [1])
  const got = await rig.u32(ids, ID_SLOTS)
  expect([...got].filter((_, i) => i !== outSlot).every((id) => id === 0xffff), "other id slots untouched").toBe(true)
  return got[outSlot]!
}

describe("argmax", () => {
  it("equals the CPU argmax for V not a multiple of anything, any number of groups", async () => {
    const logits = uniformF32(rng(51), 1001, 10)
    for (const groups of [64, 7, 3, 1]) expect(await choose(logits, { groups, outSlot: 5 }), `groups ${groups}`).toBe(argmax(logits))
  })

  it("breaks ties to the lowest index, within and across workgroups", async () => {
    const logits = uniformF32(rng(52), 1001, 1)
    // 130 and 131 share a workgroup of 64; with one group, 386 and 642 share 130's thread.
    for (const i of [900, 642, 500, 386, 131, 130]) logits[i] = 3
    for (const groups of [64, 7, 1]) expect(await choose(logits, { groups }), `groups ${groups}`).toBe(130)
    logits.fill(0)
    expect(await choose(logits, { groups: 64 }), "all equal").toBe(0)
    expect(argmax(logits)).toBe(0)
  })

  it("works with fewer logits than workgroups (empty slices)", async () => {
    const logits = uniformF32(rng(53), 37, 1)
    expect(await choose(logits, { groups: 64, outSlot: 7 })).toBe(argmax(logits))
  })
})

/** The kernel's hash (PCG-RXS-M-XS 32) and Gumbel-max score, for the CPU reference. */
const pcg = (v: number): number => {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0
  return ((word >>> 22) ^ word) >>> 0
}
const gumbelHash = (seed: number, step: number, i: number) => pcg((pcg((pcg(seed) ^ step) >>> 0) ^ i) >>> 0)
const gumbelBits = (seed: number, step: number, i: number) => gumbelHash(seed, step, i) >>> 9
const gumbelU = (bits: number) => Math.fround(Math.fround(bits + 0.5) / 8388608) // as f32 math rounds it
const gumbelChoice = (logits: Float32Array, seed: number, step: number, invTemp: number): number => {
  const scores = Float32Array.from(logits, (l, i) => Math.fround(l * invTemp) - Math.log(-Math.log(gumbelU(gumbelBits(seed, step, i)))))
  return argmax(scores)
}

describe("argmax GUMBEL", () => {
  it("picks what the CPU Gumbel-max reference picks, step by step", async () => {
    const logits = uniformF32(rng(54), 37, 2)
    const o = { seed: 77, steps: 64, groups: 4, invTemp: 1 / 0.7 }
    const ids = await sampleSteps(logits, o)
    const want = Array.from({ length: o.steps }, (_, step) => gumbelChoice(logits, o.seed, step, o.invTemp))
    expect([...ids]).toEqual(want)
    expect(new Set(want).size, "the steps do not all agree").toBeGreaterThan(5)
  })

  it("is reproducible for a seed and step, and varies with the seed and the step", async () => {
    const flat = new Float32Array(1000)
    const pick = (seed: number, step: number) => choose(flat, { groups: 16, gumbel: { seed, step, invTemp: 1 } })
    expect(await pick(7, 3)).toBe(await pick(7, 3))
    const bySeed = new Set<number>()
    const byStep = new Set<number>()
    for (let i = 0; i < 8; i++) {
      bySeed.add(await pick(100 + i, 3))
      byStep.add(await pick(7, 10 + i))
    }
    expect(bySeed.size).toBeGreaterThanOrEqual(6)
    expect(byStep.size).toBeGreaterThanOrEqual(6)
  })

  it("samples softmax(logits) at temperature 1: frequencies of log([0.5, 0.3, 0.2]) padded with -inf", async () => {
    const probs = [0.5, 0.3, 0.2]
    const V = 37
    const logits = new Float32Array(V).fill(-Infinity)
    probs.forEach((p, i) => (logits[i] = Math.log(p)))
    const ids = await sampleSteps(logits, { seed: 1234, steps: 2000, groups: 4, invTemp: 1 })
    const counts = new Array<number>(V).fill(0)
    for (const id of ids) counts[id]!++
    expect(counts.slice(3).every((c) => c === 0), "padded tokens never chosen").toBe(true)
    probs.forEach((p, i) => expect(Math.abs(counts[i]! / ids.length - p), `token ${i}: ${counts[i]} of ${ids.length}`).toBeLessThan(0.03))
  })
})

// Regression: with 24 hash bits, (2^24 - 1 + 0.5) / 2^24 rounded to 1 in f32, the noise
// -log(-log(u)) became +inf and that token won whatever its logit (2^-24 per token and step,
// ~0.76% of steps at a 128K vocabulary). The hash of (seed 1234, step 47848, token 0) had
// all 24 top bits set. The kernel now takes 23 bits, so u < 1 always.
describe("argmax GUMBEL noise stays finite", () => {
  it("the largest draw maps strictly below 1 (the old trigger: seed 1234, step 47848, token 0)", () => {
    expect(gumbelHash(1234, 47848, 0) >>> 8).toBe(0xffffff)
    expect(gumbelU(0x7fffff)).toBeLessThan(1)
  })

  it("never picks a token of probability 3e-14 (seed 1234, step 47848)", async () => {
    const logits = Float32Array.of(-30, 0, 0, 0)
    expect(await choose(logits, { groups: 4, gumbel: { seed: 1234, step: 47848, invTemp: 1 } })).not.toBe(0)
  })
})

/**
 * `steps` Gumbel samples (steps 0 ..) in one submission: per step a uniform at a 256-byte
 * offset of one buffer and an id slot of its own; the partials buffer is reused (dispatches
 * in a pass are ordered).
 */
const sampleSteps = async (logits: Float32Array, o: { seed: number; steps: number; groups: number; invTemp: number }): Promise<Uint32Array> => {
  const device = rig.device
  const stride = 256
  const params = new ArrayBuffer(o.steps * stride)
  for (let s = 0; s < o.steps; s++) {
    const u32 = new Uint32Array(params, s * stride, 8)
    u32.set([logits.length, o.groups, s, o.seed, s])
    new Float32Array(params, s * stride, 8)[5] = o.invTemp
  }
  const ubuf = device.createBuffer({ label: "sample params (steps) 256-byte strided", size: params.byteLength, usage: UNIFORM })
  device.queue.writeBuffer(ubuf, 0, params)
  const part = rig.output(o.groups * 8)
  const ids = rig.output(o.steps * 4)
  const scores = await rig.pipelines.get({ op: "argmax", flags: { GUMBEL: true } })
  const final = await rig.pipelines.get({ op: "argmax", flags: { FINAL: true } })
  const group = (pipeline: GPUComputePipeline, s: number, entries: ReadonlyArray<readonly [number, GPUBuffer]>) =>
    device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: ubuf, offset: s * stride, size: 32 } }, ...entries.map(([binding, buffer]) => ({ binding, resource: { buffer } }))],
    })
  const logitsBuf = rig.input(logits)
  const encoder = device.createCommandEncoder()
  const pass = encoder.beginComputePass()
  for (let s = 0; s < o.steps; s++) {
    pass.setPipeline(scores)
    pass.setBindGroup(0, group(scores, s, [[1, logitsBuf], [2, part]]))
    pass.dispatchWorkgroups(o.groups)
    pass.setPipeline(final)
    pass.setBindGroup(0, group(final, s, [[2, part], [3, ids]]))
    pass.dispatchWorkgroups(1)
  }
  pass.end()
  device.queue.submit([encoder.finish()])
  const got = await rig.u32(ids, o.steps)
  ubuf.destroy()
  return got
}

// --- fill, copy -----------------------------------------------------------------------

describe("fill", () => {
  const SENTINEL = 0x5a5a5a5a
  const runFill = async (flags: Record<string, boolean>, n: number, seed: number, amp: number, groups: number) => {
    const dst = rig.input(new Uint32Array(n + 8).fill(SENTINEL)) // (n + 8) u32, two f16 each
    await rig.run({ op: "fill", flags }, { layout: "uufu", values: [n, seed, amp, groups * 256] }, { 1: dst }, [groups])
    const words = await rig.u32(dst, n + 8)
    expect(words.subarray(n).every((w) => w === SENTINEL), "words past n untouched").toBe(true)
    return new Uint16Array(words.buffer, 0, 2 * n)
  }

  it("ONES writes exact 1.0 halves, grid-stride past the dispatch", async () => {
    const halves = await runFill({ ONES: true }, 1000, 0, 0, 2)
    expect(halves.every((h) => h === 0x3c00)).toBe(true)
  })

  it("random values lie in [-amp, amp], spread over it, and depend on the seed only", async () => {
    const amp = 0.05
    const bound = f16ToF32(f32ToF16Bits(amp))
    const halves = await runFill({}, 3000, 9, amp, 3)
    const values = Array.from(halves, f16ToF32)
    expect(values.every((v) => Math.abs(v) <= bound)).toBe(true)
    expect(Math.min(...values)).toBeLessThan(-0.9 * amp)
    expect(Math.max(...values)).toBeGreaterThan(0.9 * amp)
    expect(Math.abs(values.reduce((a, b) => a + b, 0) / values.length)).toBeLessThan(amp / 20)
    expect(new Set(halves).size).toBeGreaterThan(100)
    expect([...(await runFill({}, 3000, 9, amp, 1))]).toEqual([...halves]) // another grid, same values
    const other = await runFill({}, 3000, 10, amp, 3)
    expect(other.filter((h, i) => h === halves[i]).length).toBeLessThan(halves.length / 10)
  })
})

describe("copy", () => {
  it("copies n vec4 words, grid-stride, and nothing past them", async () => {
    const n = 1000 // vec4<u32>
    const src = new Uint32Array((n + 4) * 4)
    const rand = rng(61)
    for (let i = 0; i < src.length; i++) src[i] = Math.floor(rand() * 2 ** 32)
    const dst = rig.input(new Uint32Array((n + 4) * 4).fill(7))
    await rig.run({ op: "copy" }, { layout: "uuuu", values: [n, 2 * 256] }, { 1: rig.input(src), 2: dst }, [2])
    const got = await rig.u32(dst, (n + 4) * 4)
    expect([...got.subarray(0, n * 4)]).toEqual([...src.subarray(0, n * 4)])
    expect(got.subarray(n * 4).every((w) => w === 7)).toBe(true)
  })
})
