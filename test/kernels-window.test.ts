// The WINDOW mode of attn_prefill, attn_prefill_sg and attn_prefill_reg against CPU softmax attention: one
// prefill chunk attends its history in several passes over key windows, the softmax state
// carried in a buffer. Each pass gets a block table whose entries outside its window point
// at a spare block of random keys, so a pass that reads outside its window is caught.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { attention } from "../engine/cpu-reference.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { expectClose, type Half, KernelRig, randomHalf, rng, type Rand, shuffled, TOL, uniformF32 } from "./kernel-rig.ts"

let rig: KernelRig

beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})

afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

type Op = "attn_prefill" | "attn_prefill_sg" | "attn_prefill_reg"

const FIRST = 1
const LAST = 2
const ROWS = 32 // rows (query, head-in-group) per workgroup

interface Case {
  readonly G: number // query heads per kv head
  readonly KV: number
  readonly D: number
  readonly BS: number // tokens per block
  readonly pos0: number // position of the first query
  readonly M: number // queries
}

/** [k0, k1): k1 = 0 runs to the causal end. */
type Window = readonly [k0: number, k1: number]

/**
 * Keys and values of positions 0 .. pos0 + M - 1 in a pool of random f16 blocks; logical
 * block b is physical block table[b], and physical block `spare` is never in the table.
 */
interface Pool {
  readonly k: Half // (blocks, KV, BS, D) f16
  readonly v: Half // (blocks, KV, BS, D) f16
  readonly table: ReadonlyArray<number> // (logical blocks) physical block
  readonly spare: number
}

const makePool = (rand: Rand, c: Case): Pool => {
  const logical = Math.ceil((c.pos0 + c.M) / c.BS)
  const order = shuffled(rand, Array.from({ length: logical + 1 }, (_, b) => b))
  const halves = (logical + 1) * c.KV * c.BS * c.D
  return { k: randomHalf(rand, halves), v: randomHalf(rand, halves), table: order.slice(0, logical), spare: order[logical]! }
}

/** The table one pass sees: blocks outside [k0, k1) point at the spare block. */
const windowTable = (pool: Pool, c: Case, [k0, k1]: Window) => {
  const end = k1 > 0 ? k1 : c.pos0 + c.M
  return Uint32Array.from(pool.table, (phys, b) => ((b + 1) * c.BS > k0 && b * c.BS < end ? phys : pool.spare))
}

/** Query i, head h over key positions [from, to): (D) f32. */
const cpuRow = (c: Case, pool: Pool, q: Float32Array, i: number, h: number, from: number, to: number) => {
  const len = to - from
  const keys = new Float32Array(len * c.D)
  const values = new Float32Array(len * c.D)
  const kvh = Math.floor(h / c.G)
  for (let t = from; t < to; t++) {
    const at = ((pool.table[Math.floor(t / c.BS)]! * c.KV + kvh) * c.BS + (t % c.BS)) * c.D
    keys.set(pool.k.values.subarray(at, at + c.D), (t - from) * c.D)
    values.set(pool.v.values.subarray(at, at + c.D), (t - from) * c.D)
  }
  const H = c.G * c.KV
  return attention(new Float32Array(c.D), 0, q, (i * H + h) * c.D, keys, values, c.D, 0, len, c.D, 1 / Math.sqrt(c.D))
}

/** Causal attention of every query: (M, H, D) f32. */
const cpuCausal = (c: Case, pool: Pool, q: Float32Array) => {
  const H = c.G * c.KV
  const want = new Float32Array(c.M * H * c.D)
  for (let i = 0; i < c.M; i++) {
    for (let h = 0; h < H; h++) want.set(cpuRow(c, pool, q, i, h, 0, c.pos0 + i + 1), (i * H + h) * c.D)
  }
  return want
}

/** The subgroup kernel needs subgroups of at least 8 lanes (as the engine checks). */
const runnable = (op: Op) => op !== "attn_prefill_sg" || (rig.gpu.hasSubgroups && rig.gpu.subgroupMinSize >= 8)

interface Setup {
  readonly c: Case
  readonly pool: Pool
  readonly q: Float32Array // (M, H, D) f32
  readonly k: GPUBuffer
  readonly v: GPUBuffer
  readonly qBuf: GPUBuffer
}

const setup = (seed: number, c: Case): Setup => {
  const rand = rng(seed)
  const pool = makePool(rand, c)
  const q = uniformF32(rand, c.M * c.G * c.KV * c.D, 3)
  return { c, pool, q, k: rig.input(pool.k.bits, "k pool"), v: rig.input(pool.v.bits, "v pool"), qBuf: rig.input(q, "q") }
}

const groups = (c: Case) => [Math.ceil((c.M * c.G) / ROWS), c.KV] as const

/** One pass without WINDOW (the engine's path): (M, H, D) f32. */
const plain = async (op: Op, s: Setup) => {
  const { c } = s
  const n = c.M * c.G * c.KV * c.D
  const out = rig.output(n * 4)
  await rig.run(
    { op, constants: { G: c.G, D: c.D } },
    { layout: "uuuuufuu", values: [c.M, c.G * c.KV, c.KV, c.BS, c.pos0, 1 / Math.sqrt(c.D)] },
    { 1: s.qBuf, 2: s.k, 3: s.v, 4: rig.input(Uint32Array.from(s.pool.table)), 5: out },
    groups(c),
  )
  return rig.f32(out, n)
}

/** One WINDOW pass over `w` with `flags`, into `state` (M, H, D + 2) f32 and `out` (M, H, D) f32. */
const pass = (op: Op, s: Setup, w: Window, flags: number, state: GPUBuffer, out: GPUBuffer) => {
  const { c } = s
  return rig.run(
    { op, flags: { WINDOW: true }, constants: { G: c.G, D: c.D } },
    { layout: "uuuuufuuuuuu", values: [c.M, c.G * c.KV, c.KV, c.BS, c.pos0, 1 / Math.sqrt(c.D), w[0], w[1], flags] },
    { 1: s.qBuf, 2: s.k, 3: s.v, 4: rig.input(windowTable(s.pool, c, w)), 5: out, 6: state },
    groups(c),
  )
}

/** The windows as passes in the given order, the first FIRST, the last LAST: (M, H, D) f32. */
const windowed = async (op: Op, s: Setup, windows: ReadonlyArray<Window>) => {
  const { c } = s
  const rows = c.M * c.G * c.KV
  const state = rig.output(rows * (c.D + 2) * 4)
  const out = rig.output(rows * c.D * 4)
  for (const [n, w] of windows.entries()) {
    await pass(op, s, w, (n === 0 ? FIRST : 0) | (n === windows.length - 1 ? LAST : 0), state, out)
  }
  return rig.f32(out, rows * c.D)
}

describe.each(["attn_prefill", "attn_prefill_sg", "attn_prefill_reg"] as const)("%s WINDOW", (op) => {
  const base: Case = { G: 2, KV: 2, D: 64, BS: 16, pos0: 70, M: 37 } // keys 0 .. 106, 7 blocks

  it.for([
    [64, 16],
    [128, 16],
    [128, 32],
  ] as const)("D %i, BS %i: windows [0, 32), [32, 80), [80, end) equal one causal pass", async ([D, BS], ctx) => {
    if (!runnable(op)) return ctx.skip()
    const s = setup(D + BS, { ...base, D, BS })
    const want = cpuCausal(s.c, s.pool, s.q)
    expectClose(await plain(op, s), want, TOL.f32, "one pass")
    expectClose(await windowed(op, s, [[0, 32], [32, 80], [80, 0]]), want, TOL.f32, "three windows")
    expectClose(await windowed(op, s, [[0, 0]]), want, TOL.f32, "one window, FIRST | LAST")
  })

  it("does not depend on the order of the windows", async (ctx) => {
    if (!runnable(op)) return ctx.skip()
    const s = setup(5, { ...base, G: 3, M: 29, pos0: 101 })
    const want = cpuCausal(s.c, s.pool, s.q)
    expectClose(await windowed(op, s, [[80, 0], [0, 32], [32, 80]]), want, TOL.f32, "last, first, middle")
    expectClose(await windowed(op, s, [[32, 80], [112, 0], [0, 32], [80, 112]]), want, TOL.f32, "four, shuffled")
  })

  it("rows before a window's start take nothing from it, whole workgroups included", async (ctx) => {
    if (!runnable(op)) return ctx.skip()
    // qpos 70 .. 106; [96, end) holds no key for queries 0 .. 25, and none at all for
    // workgroup 0 (queries 0 .. 15), which then runs no tile.
    const s = setup(6, base)
    const want = cpuCausal(s.c, s.pool, s.q)
    expectClose(await windowed(op, s, [[0, 96], [96, 0]]), want, TOL.f32, "empty window last")
    expectClose(await windowed(op, s, [[96, 0], [0, 96]]), want, TOL.f32, "empty window first")
    expectClose(await windowed(op, s, [[0, 48], [96, 0], [48, 96]]), want, TOL.f32, "empty window between")
  })

  it("a middle pass leaves the state of rows without keys bit for bit, and the others' in the documented layout", async (ctx) => {
    if (!runnable(op)) return ctx.skip()
    const s = setup(7, base)
    const { c } = s
    const H = c.G * c.KV
    const W = c.D + 2
    const rand = rng(8)
    const before = uniformF32(rand, c.M * H * W) // acc in [-1, 1), m in [-1, 1), l in [1, 3)
    for (let r = 0; r < c.M * H; r++) before[r * W + c.D + 1] = 2 + before[r * W + c.D + 1]!
    const state = rig.input(before, "state")
    const out = rig.output(c.M * H * c.D * 4)
    const k0 = 96
    await pass(op, s, [k0, 0], 0, state, out)
    const after = await rig.f32(state, c.M * H * W)
    for (let i = 0; i < c.M; i++) {
      const row = after.subarray(i * H * W, (i + 1) * H * W)
      if (c.pos0 + i < k0) expect(row, `query ${i}`).toEqual(before.subarray(i * H * W, (i + 1) * H * W))
    }
    // A FIRST pass alone: acc / l is attention over the window, m the largest scaled score.
    await pass(op, s, [k0, 0], FIRST, state, out)
    const fresh = await rig.f32(state, c.M * H * W)
    for (let i = c.pos0 < k0 ? k0 - c.pos0 : 0; i < c.M; i++) {
      for (let h = 0; h < H; h++) {
        const at = (i * H + h) * W
        const l = fresh[at + c.D + 1]!
        expect(l, `l of query ${i} head ${h}`).toBeGreaterThanOrEqual(1)
        const got = fresh.subarray(at, at + c.D).map((x) => x / l)
        expectClose(got, cpuRow(c, s.pool, s.q, i, h, k0, c.pos0 + i + 1), TOL.f32, `query ${i} head ${h}`)
      }
    }
    const empty = fresh.subarray(0, W)
    expect(empty.subarray(0, c.D).every((x) => x === 0) && empty[c.D]! < -1e38 && empty[c.D + 1] === 0, "empty row").toBe(true)
  })
})
