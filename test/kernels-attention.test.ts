// The attention kernels against CPU softmax attention: attn_decode + attn_combine over a
// list of (block, tokens) entries (any order, any subset of blocks), and causal
// attn_prefill through a block table. The KV pool's blocks sit in a shuffled physical
// order, so a kernel that confuses logical and physical blocks reads the wrong tokens.
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

interface Shape {
  readonly G: number // query heads per kv head
  readonly KV: number
  readonly D: number
  readonly BS: number // tokens per block
}

/**
 * One sequence of `tokens` in a paged pool of random f16 keys and values. Logical block b
 * is physical block table[b]; two spare blocks are never used.
 */
interface Pool {
  readonly k: Half // (blocks, KV, BS, D) f16
  readonly v: Half // (blocks, KV, BS, D) f16
  readonly table: ReadonlyArray<number> // (logical blocks) physical block
  readonly tokens: number
}

const makePool = (rand: Rand, s: Shape, tokens: number): Pool => {
  const logical = Math.ceil(tokens / s.BS)
  const blocks = logical + 2
  const table = shuffled(rand, Array.from({ length: blocks }, (_, b) => b)).slice(0, logical)
  const halves = blocks * s.KV * s.BS * s.D
  return { k: randomHalf(rand, halves), v: randomHalf(rand, halves), table, tokens }
}

/** Keys and values of the given sequence positions as (positions, KV * D) f32 rows. */
const gather = (pool: Pool, s: Shape, positions: ReadonlyArray<number>) => {
  const row = s.KV * s.D
  const keys = new Float32Array(positions.length * row)
  const values = new Float32Array(positions.length * row)
  positions.forEach((t, j) => {
    for (let h = 0; h < s.KV; h++) {
      const at = ((pool.table[Math.floor(t / s.BS)]! * s.KV + h) * s.BS + (t % s.BS)) * s.D
      keys.set(pool.k.values.subarray(at, at + s.D), j * row + h * s.D)
      values.set(pool.v.values.subarray(at, at + s.D), j * row + h * s.D)
    }
  })
  return { keys, values }
}

/** out (H, D): every query head over the first `len` gathered positions. */
const cpuAttention = (s: Shape, q: Float32Array, qOff: number, kv: ReturnType<typeof gather>, len: number) => {
  const H = s.G * s.KV
  const out = new Float32Array(H * s.D)
  for (let h = 0; h < H; h++) {
    attention(out, h * s.D, q, qOff + h * s.D, kv.keys, kv.values, s.KV * s.D, Math.floor(h / s.G) * s.D, len, s.D, 1 / Math.sqrt(s.D))
  }
  return out
}

const poolBuffers = (pool: Pool) => ({ k: rig.input(pool.k.bits, "k pool"), v: rig.input(pool.v.bits, "v pool") })

// --- decode -------------------------------------------------------------------------

/** The tokens a list of logical blocks covers, in list order. */
const positionsOf = (pool: Pool, BS: number, blocks: ReadonlyArray<number>) =>
  blocks.flatMap((b) => Array.from({ length: Math.min(BS, pool.tokens - b * BS) }, (_, i) => b * BS + i))

/**
 * attn_decode then attn_combine for one query per list (query m attends over lists[m], a
 * list of logical blocks). Returns the GPU output and the CPU reference, (M, H, D) each.
 */
const decode = async (s: Shape, pool: Pool, lists: ReadonlyArray<ReadonlyArray<number>>, EPS: number, q: Float32Array, extraSplits = 0, tile = 256, flags: Record<string, boolean> = {}) => {
  const H = s.G * s.KV
  const M = lists.length
  const entries: number[] = [] // (E) vec2 (physical block, tokens used)
  const seqs: number[] = [] // (M) vec2 (first entry, count)
  for (const list of lists) {
    seqs.push(entries.length / 2, list.length)
    for (const b of list) entries.push(pool.table[b]!, Math.min(s.BS, pool.tokens - b * s.BS))
  }
  const S = Math.max(...lists.map((l) => Math.ceil(l.length / EPS))) + extraSplits
  const { k, v } = poolBuffers(pool)
  const partO = rig.output(M * H * S * s.D * 4) // (M, H, S, D) f32
  const partML = rig.output(M * H * S * 8) // (M, H, S) vec2 (max, sum)
  const out = rig.output(M * H * s.D * 4) // (M, H, D) f32
  await rig.run(
    { op: "attn_decode", flags, constants: { WG: tile, G: s.G, D: s.D } },
    { layout: "uuuuufuu", values: [H, s.KV, s.BS, EPS, S, 1 / Math.sqrt(s.D)] },
    { 1: rig.input(q), 2: k, 3: v, 4: rig.input(Uint32Array.from(entries)), 5: rig.input(Uint32Array.from(seqs)), 6: partO, 7: partML },
    [S, s.KV, M],
  )
  await rig.run({ op: "attn_combine" }, { layout: "uuuu", values: [H, S, s.D] }, { 1: partO, 2: partML, 3: out }, [H, M])
  const want = new Float32Array(M * H * s.D)
  lists.forEach((list, m) => {
    const positions = positionsOf(pool, s.BS, list)
    want.set(cpuAttention(s, q, m * H * s.D, gather(pool, s, positions), positions.length), m * H * s.D)
  })
  return { got: await rig.f32(out, M * H * s.D), want }
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i)

describe("attn_combine", () => {
  // Partials as attn_decode writes them, merged on the CPU: S past one 256-split chunk of
  // workgroup memory and not a multiple of the 16 loads in flight, stride > S, M = 2.
  it.each([
    [1, 64, 1, 0],
    [3, 128, 37, 40],
    [2, 64, 300, 301],
  ])("H %i, D %i, S %i, stride %i", async (H, D, S, stride) => {
    const rand = rng(H * 10 + S)
    const M = 2
    const st = stride || S
    const partO = uniformF32(rand, M * H * st * D, 2)
    const partML = new Float32Array(M * H * st * 2)
    for (let i = 0; i < M * H * st; i++) partML.set([(rand() - 0.5) * 20, 0.5 + rand() * 4], 2 * i)
    const out = rig.output(M * H * D * 4)
    await rig.run({ op: "attn_combine" }, { layout: "uuuu", values: [H, S, D, stride] }, { 1: rig.input(partO), 2: rig.input(partML), 3: out }, [H, M])
    const want = new Float32Array(M * H * D)
    for (let row = 0; row < M * H; row++) {
      let mx = -Infinity
      for (let s = 0; s < S; s++) mx = Math.max(mx, partML[2 * (row * st + s)]!)
      let den = 0
      for (let s = 0; s < S; s++) den += Math.exp(partML[2 * (row * st + s)]! - mx) * partML[2 * (row * st + s) + 1]!
      for (let d = 0; d < D; d++) {
        let num = 0
        for (let s = 0; s < S; s++) num += Math.exp(partML[2 * (row * st + s)]! - mx) * partO[(row * st + s) * D + d]!
        want[row * D + d] = num / den
      }
    }
    expectClose(await rig.f32(out, M * H * D), want, TOL.f32, "combine")
  })
})

describe("attn_decode + attn_combine", () => {
  // Every (G, D, BS) with 1, 2 or 3 splits of EPS = 1 or 2 tiles (256 / BS entries each);
  // the last block holds 1 .. BS - 1 tokens.
  const cases: Array<[G: number, D: number, BS: number, EPS: number, S: number, tokens: number]> = []
  for (const G of [1, 3, 4]) {
    for (const D of [64, 128]) {
      for (const BS of [16, 32]) {
        const i = cases.length
        const S = 1 + (i % 3)
        const EPS = (256 / BS) * (S === 3 ? 1 : 1 + (i % 2))
        const blocks = (S - 1) * EPS + 1 + ((7 * i + 5) % EPS)
        cases.push([G, D, BS, EPS, S, (blocks - 1) * BS + 1 + ((5 * i) % (BS - 1))])
      }
    }
  }

  it.each(cases)("G %i, D %i, BS %i, EPS %i, S %i: every block of a shuffled pool, %i tokens", async (G, D, BS, EPS, S, tokens) => {
    const rand = rng(G * 1000 + D + BS)
    const s: Shape = { G, KV: 2, D, BS }
    const pool = makePool(rand, s, tokens)
    const blocks = Math.ceil(tokens / BS)
    expect(Math.ceil(blocks / EPS)).toBe(S)
    const q = uniformF32(rand, G * s.KV * D, 3)
    // 8 value loads in flight per thread, and 16 (V16: what the engine runs for these D).
    for (const flags of [{ V16: false }, { V16: true }]) {
      const { got, want } = await decode(s, pool, [range(blocks)], EPS, q, 0, 256, flags)
      expectClose(got, want, TOL.f32, `decode ${JSON.stringify(flags)}`)
    }
  })

  // Another tile size (the workgroup size is an override): 64-token tiles, splits of one or
  // several tiles, the last block partly filled.
  it.each([
    [4, 128, 16, 4, 1000],
    [3, 64, 16, 8, 777],
    [1, 64, 32, 2, 450],
  ])("64-token tiles: G %i, D %i, BS %i, EPS %i, %i tokens", async (G, D, BS, EPS, tokens) => {
    const rand = rng(G * 100 + D + BS + 5)
    const s: Shape = { G, KV: 2, D, BS }
    const pool = makePool(rand, s, tokens)
    const q = uniformF32(rand, G * s.KV * D, 3)
    const { got, want } = await decode(s, pool, [range(Math.ceil(tokens / BS))], EPS, q, 0, 64, { V16: true })
    expectClose(got, want, TOL.f32, "decode, 64-token tiles")
  })

  it("does not depend on the order of the entries", async () => {
    const rand = rng(71)
    const s: Shape = { G: 3, KV: 2, D: 64, BS: 16 }
    const pool = makePool(rand, s, 333)
    const q = uniformF32(rand, 6 * 64, 3)
    const inOrder = await decode(s, pool, [range(21)], 16, q)
    const mixed = await decode(s, pool, [shuffled(rand, range(21))], 16, q)
    expectClose(inOrder.got, inOrder.want, TOL.f32, "in order")
    expectClose(mixed.got, inOrder.want, TOL.f32, "shuffled")
  })

  it("attends over exactly the blocks of a sparse list, one list per query (M = 3 along z)", async () => {
    const rand = rng(72)
    const s: Shape = { G: 4, KV: 2, D: 64, BS: 16 }
    const pool = makePool(rand, s, 300) // 19 blocks, the last holds 12 tokens
    const lists = [[11, 2, 7, 5], [18, 0, 3], shuffled(rand, range(19)).slice(0, 17)]
    const q = uniformF32(rand, lists.length * 8 * 64, 3)
    const { got, want } = await decode(s, pool, lists, 16, q)
    expectClose(got, want, TOL.f32, "sparse lists")
    // A different list gives a different answer: the reference is not vacuous.
    const full = await decode(s, pool, [range(19)], 16, q.subarray(0, 8 * 64))
    expect(Math.max(...full.want.map((x, i) => Math.abs(x - want[i]!)))).toBeGreaterThan(1e-2)
  })

  it("one token: every head returns that token's value", async () => {
    const rand = rng(74)
    const s: Shape = { G: 3, KV: 2, D: 64, BS: 16 }
    const pool = makePool(rand, s, 1)
    const { got, want } = await decode(s, pool, [[0]], 16, uniformF32(rand, 6 * 64, 3))
    expectClose(got, want, TOL.f32, "one token")
    const value = gather(pool, s, [0]).values // (1, KV * D)
    for (let h = 0; h < 6; h++) {
      const kvh = Math.floor(h / s.G)
      expectClose(got.subarray(h * 64, (h + 1) * 64), value.subarray(kvh * 64, (kvh + 1) * 64), TOL.f32, `head ${h}`)
    }
  })

  it("G 8, the most query heads per kv head the engine allows", async () => {
    const rand = rng(75)
    const s: Shape = { G: 8, KV: 1, D: 128, BS: 16 }
    const pool = makePool(rand, s, 250)
    const q = uniformF32(rand, 8 * 128, 3)
    const { got, want } = await decode(s, pool, [shuffled(rand, range(16))], 16, q)
    expectClose(got, want, TOL.f32, "G 8")
  })

  it("combine ignores empty splits (S larger than the list needs)", async () => {
    const rand = rng(73)
    const s: Shape = { G: 1, KV: 1, D: 128, BS: 32 }
    const pool = makePool(rand, s, 100)
    const q = uniformF32(rand, 128, 3)
    const { got, want } = await decode(s, pool, [range(4)], 8, q, 2)
    expectClose(got, want, TOL.f32, "empty splits")
  })
})

// --- prefill ------------------------------------------------------------------------

describe.each(["attn_prefill", "attn_prefill_sg", "attn_prefill_reg"] as const)("%s", (op) => {
  it.each([
    // G, D, BS, pos0, M: rows M * G are never a multiple of the 32-row tile
    [3, 64, 16, 0, 45],
    [4, 128, 32, 37, 23],
    [1, 64, 32, 100, 19],
    [1, 128, 16, 0, 1],
    [2, 64, 16, 70, 30],
    [4, 64, 32, 300, 41],
    [8, 128, 16, 20, 13],
  ])("G %i, D %i, BS %i: causal over keys 0 .. pos0 + m from pos0 %i, M %i", async (G, D, BS, pos0, M) => {
    const rand = rng(G * 7 + D + BS + pos0 + M)
    const s: Shape = { G, KV: 2, D, BS }
    const H = G * s.KV
    const pool = makePool(rand, s, pos0 + M)
    const q = uniformF32(rand, M * H * D, 3) // (M, H, D) f32
    const { k, v } = poolBuffers(pool)
    const out = rig.output(M * H * D * 4)
    await rig.run(
      { op, constants: { G, D } },
      { layout: "uuuuufuu", values: [M, H, s.KV, BS, pos0, 1 / Math.sqrt(D)] },
      { 1: rig.input(q), 2: k, 3: v, 4: rig.input(Uint32Array.from(pool.table)), 5: out },
      [Math.ceil((M * G) / 32), s.KV],
    )
    const kv = gather(pool, s, range(pos0 + M))
    const want = new Float32Array(M * H * D)
    for (let i = 0; i < M; i++) want.set(cpuAttention(s, q, i * H * D, kv, pos0 + i + 1), i * H * D)
    expectClose(await rig.f32(out, M * H * D), want, TOL.f32, op)
  })
})
