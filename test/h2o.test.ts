// H2O decode attention (engine/kv/h2o.ts) on tiny shapes against the CPU: block_mass adds each
// listed block's softmax mass; below its budget H2O is full attention and accumulates the
// masses; past it, each step's kept set is the sink and recent blocks plus the heaviest
// candidates by the masses the GPU held before the step, and an evicted block never returns.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { bind, type Dispatch, encodeAll, readF32, storageBuffer, Uniform } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { H2oAttention, type H2oPolicy, h2oPipelineKeys } from "../engine/kv/h2o.ts"
import { KvPool } from "../engine/kv/pool.ts"
import { type PipelineKey, Pipelines } from "../engine/pipelines.ts"
import { dummyPresets } from "../models/config.ts"
import type { ModelConfig } from "../models/types.ts"
import { expectClose, type Half, KernelRig, randomHalf, rng, type Rand, shuffled, TOL, uniformF32 } from "./kernel-rig.ts"

const BS = 16
const config: ModelConfig = { ...dummyPresets.tiny!, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 }
const H = config.numHeads
const KV = config.numKvHeads
const G = H / KV
const D = config.headDim
const SCALE = 1 / Math.sqrt(D)
const attnKey: PipelineKey = { op: "attn_decode", constants: { G, D } }
const combineKey: PipelineKey = { op: "attn_combine" }

let rig: KernelRig

beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
  await rig.pipelines.prewarm([attnKey, combineKey, ...Object.values(h2oPipelineKeys(config))])
})

afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

// --- CPU reference ------------------------------------------------------------------

/** A layer's pool contents: (blocks, KV, BS, D) f16 keys and values. */
interface PoolData {
  readonly k: Half
  readonly v: Half
}

const rowOf = (block: number, kvh: number, off: number) => ((block * KV + kvh) * BS + off) * D

/**
 * Head h over the tokens of `blocks` ((physical block, tokens) pairs): softmax probabilities
 * summed per block, and the attention output (D).
 */
const cpuHead = (pool: PoolData, q: Float32Array, h: number, blocks: ReadonlyArray<readonly [number, number]>) => {
  const scores: number[] = []
  for (const [b, tokens] of blocks) {
    for (let t = 0; t < tokens; t++) {
      const at = rowOf(b, Math.floor(h / G), t)
      let s = 0
      for (let d = 0; d < D; d++) s += q[h * D + d]! * pool.k.values[at + d]!
      scores.push(s * SCALE)
    }
  }
  const max = Math.max(...scores)
  const e = scores.map((s) => Math.exp(s - max))
  const sum = e.reduce((a, x) => a + x, 0)
  const out = new Float64Array(D)
  const mass: number[] = []
  let i = 0
  for (const [b, tokens] of blocks) {
    let m = 0
    for (let t = 0; t < tokens; t++, i++) {
      const p = e[i]! / sum
      m += p
      const at = rowOf(b, Math.floor(h / G), t)
      for (let d = 0; d < D; d++) out[d] += p * pool.v.values[at + d]!
    }
    mass.push(m)
  }
  return { out, mass }
}

/** The heads of list j when a layer has `lists` lists. */
const headsOf = (j: number, lists: number) => Array.from({ length: H / lists }, (_, i) => j * (H / lists) + i)

// --- block_mass ---------------------------------------------------------------------

describe("block_mass", () => {
  it.each([1, 2])("adds each listed block's softmax mass (%i lists, shuffled entries, a partial block, empty splits)", async (lists) => {
    const rand = rng(90 + lists)
    const blocks = 9
    const pool: PoolData = { k: randomHalf(rand, blocks * KV * BS * D), v: randomHalf(rand, blocks * KV * BS * D) }
    const q = uniformF32(rand, H * D, 3)
    const MB = 12
    // Each list: some of the blocks in any order, the partial one (5 tokens) among them.
    const listOf = (j: number): Array<[number, number]> => shuffled(rand, [0, 2, 3, 5, 6, 8].map((b): [number, number] => [b, b === 8 ? 5 : BS])).slice(0, 5 - j)
    const perList = Array.from({ length: lists }, (_, j) => listOf(j))
    const stride = MB
    const entries = new Uint32Array(lists * stride * 2)
    const seqs = new Uint32Array(lists * 2)
    perList.forEach((l, j) => {
      seqs.set([j * stride, l.length], j * 2)
      l.forEach(([b, t], i) => entries.set([b, t], (j * stride + i) * 2))
    })
    // Split partials as attn_decode leaves them: S = 3, the last split empty; each list's
    // heads over that list's tokens.
    const S = 3
    const partML = new Float32Array(H * S * 2)
    const want = new Float32Array(lists * MB)
    for (let i = 0; i < want.length; i++) want[i] = i % 3 // earlier masses, added to
    const mass0 = Float32Array.from(want)
    perList.forEach((l, j) => {
      for (const h of headsOf(j, lists)) {
        const scores: number[] = []
        for (const [b, t] of l) for (let o = 0; o < t; o++) {
          let s = 0
          for (let d = 0; d < D; d++) s += q[h * D + d]! * pool.k.values[rowOf(b, Math.floor(h / G), o) + d]!
          scores.push(s * SCALE)
        }
        const half = Math.floor(scores.length / 2)
        ;[scores.slice(0, half), scores.slice(half)].forEach((part, s) => {
          const m = Math.max(...part)
          partML.set([m, part.reduce((a, x) => a + Math.exp(x - m), 0)], (h * S + s) * 2)
        })
        partML.set([-3e38, 0], (h * S + 2) * 2)
        const { mass } = cpuHead(pool, q, h, l)
        l.forEach(([b], i) => (want[j * MB + b] += mass[i]!))
      }
    })
    const massBuf = rig.input(mass0, "mass")
    await rig.run(
      h2oPipelineKeys(config).mass,
      { layout: "uuuuuufu", values: [H, KV, BS, S, lists, MB, SCALE, 0] },
      { 1: rig.input(q), 2: rig.input(pool.k.bits), 3: rig.input(entries), 4: rig.input(seqs), 5: rig.input(partML), 6: massBuf },
      [6, lists], // one workgroup more than the longest list: it must add nothing
    )
    expectClose(await rig.f32(massBuf, lists * MB), want, TOL.f32, "masses")
    // Each list's heads spread exactly their probability over its blocks.
    for (let j = 0; j < lists; j++) {
      const added = want.subarray(j * MB, (j + 1) * MB).reduce((a, x, i) => a + x - mass0[j * MB + i]!, 0)
      expect(added).toBeCloseTo(H / lists, 5)
    }
  })
})

// --- H2oAttention over a KV pool ------------------------------------------------------

/** A KV pool of random f16 keys and values (every slot written up front), H2O over it. */
class Harness {
  readonly kv: KvPool
  readonly h2o: H2oAttention
  readonly data: PoolData[] // per layer
  private readonly q: GPUBuffer // (H, D) f32
  private readonly attn: GPUBuffer // (H, D) f32
  private readonly outs: GPUBuffer[] // per layer (H, D) f32
  private readonly combine: Dispatch
  private readonly combineU: Uniform
  private readonly owned: GPUBuffer[]

  constructor(rand: Rand, policy: H2oPolicy, maxContext: number) {
    const device = rig.device
    this.kv = new KvPool(device, config, BS, maxContext)
    const halves = this.kv.maxBlocks * KV * BS * D
    this.data = this.kv.layers.map((l) => {
      const d = { k: randomHalf(rand, halves), v: randomHalf(rand, halves) }
      device.queue.writeBuffer(l.k, 0, d.k.bits)
      device.queue.writeBuffer(l.v, 0, d.v.bits)
      return d
    })
    this.q = storageBuffer(device, "q", H * D * 4)
    this.attn = storageBuffer(device, "attn", H * D * 4)
    const partO = storageBuffer(device, "part o", H * this.kv.maxSplits * D * 4)
    const partML = storageBuffer(device, "part ml", H * this.kv.maxSplits * 8)
    this.outs = this.data.map(() => storageBuffer(device, "out", H * D * 4))
    this.owned = [this.q, this.attn, partO, partML, ...this.outs]
    this.h2o = new H2oAttention(device, rig.pipelines, config, this.kv, { q: this.q, partO, partML }, attnKey, policy)
    this.combineU = new Uniform(device, "combine", "uuuu")
    const pipeline = rig.pipelines.now(combineKey)
    this.combine = { pipeline, bindGroup: bind(device, pipeline, [[0, this.combineU.buffer], [1, partO], [2, partML], [3, this.attn]]), x: H, y: 1, z: 1 }
  }

  /** Appends `tokens` without attending (their KV is already in the pool): a prefill. */
  prefill(tokens: number): void {
    for (let t = 0; t < tokens; t++) this.kv.append()
  }

  /** One decode step with query q: appends a token, runs every layer; returns (layer) (H, D) outputs. */
  async step(q: Float32Array): Promise<Float32Array[]> {
    const device = rig.device
    this.kv.append()
    device.queue.writeBuffer(this.q, 0, q)
    this.combineU.set(H, this.h2o.prepareStep(), D)
    const encoder = device.createCommandEncoder()
    this.outs.forEach((out, l) => {
      const pass = encoder.beginComputePass()
      encodeAll(pass, [...this.h2o.attentionOf(l), this.combine])
      pass.end()
      encoder.copyBufferToBuffer(this.attn, 0, out, 0, H * D * 4)
    })
    device.queue.submit([encoder.finish()])
    return Promise.all(this.outs.map((o) => readF32(device, o, 0, H * D)))
  }

  /** (physical block, tokens) of logical blocks. */
  entriesOf(blocks: ReadonlyArray<number>): Array<[number, number]> {
    const n = this.kv.length
    return blocks.map((i) => [this.kv.blockList[i]!, Math.min(BS, n - i * BS)])
  }

  destroy(): void {
    this.h2o.destroy()
    this.kv.destroy()
    for (const b of this.owned) b.destroy()
    this.combineU.buffer.destroy()
  }
}

/**
 * The policy's plan at the current length: which logical blocks list j attends given the
 * masses before the step (-1: evicted; blocks past `known` are new, mass 0), and which
 * candidates it evicts. Mirrors prepareStep's arithmetic; the choice is by (mass, index).
 */
const plan = (policy: H2oPolicy, n: number, mass: ArrayLike<number>, known: number) => {
  const full = Math.floor(n / BS)
  const partial = n % BS
  const total = full + (partial > 0 ? 1 : 0)
  const sink = Math.ceil(policy.sinkTokens / BS)
  const recent = Math.max(partial > 0 ? 0 : 1, Math.ceil(Math.max(0, policy.recentTokens - partial) / BS))
  const K = Math.max(0, Math.floor(policy.budgetTokens! / BS) - sink - recent - (partial > 0 ? 1 : 0))
  const m = (i: number) => (i >= known ? 0 : mass[i]!)
  const lo = Math.min(sink, full)
  const hi = Math.max(lo, full > recent ? full - recent : 0)
  const candidates = Array.from({ length: hi - lo }, (_, i) => lo + i).filter((i) => m(i) >= 0)
  const kept = [...candidates].sort((a, b) => m(b) - m(a) || b - a).slice(0, K)
  const evicts = candidates.filter((i) => !kept.includes(i))
  const attend = Array.from({ length: total }, (_, i) => i).filter((i) => m(i) >= 0 && (i < lo || i >= hi || kept.includes(i)))
  return { attend, evicts }
}

/** The CPU's step for one layer: output (H, D) and the mass each list adds per attended block. */
const cpuStep = (hs: Harness, l: number, q: Float32Array, attend: ReadonlyArray<ReadonlyArray<number>>) => {
  const lists = attend.length
  const out = new Float32Array(H * D)
  const added = attend.map(() => new Map<number, number>())
  attend.forEach((blocks, j) => {
    for (const h of headsOf(j, lists)) {
      const r = cpuHead(hs.data[l]!, q, h, hs.entriesOf(blocks))
      out.set(r.out, h * D)
      blocks.forEach((b, i) => added[j]!.set(b, (added[j]!.get(b) ?? 0) + r.mass[i]!))
    }
  })
  return { out, added }
}

describe("H2oAttention", () => {
  it("is full attention while the context fits the budget, and accumulates every block's mass", async () => {
    const rand = rng(7)
    const policy: H2oPolicy = { budgetTokens: 1024, sinkTokens: 0, recentTokens: 64 }
    const hs = new Harness(rand, policy, 512)
    hs.prefill(150)
    const sums = [0, 1].map(() => new Float64Array(hs.kv.maxBlocks))
    for (let s = 0; s < 24; s++) {
      const q = uniformF32(rand, H * D, 3)
      const got = await hs.step(q)
      const all = Array.from({ length: Math.ceil(hs.kv.length / BS) }, (_, i) => i)
      for (let l = 0; l < 2; l++) {
        const want = cpuStep(hs, l, q, [all])
        expectClose(got[l]!, want.out, TOL.f32, `step ${s} layer ${l}`)
        for (const [b, m] of want.added[0]!) sums[l]![b] += m
      }
    }
    for (let l = 0; l < 2; l++) {
      const mass = await hs.h2o.readMass(l)
      expectClose(mass, sums[l]!.subarray(0, mass.length), { abs: 1e-4, rel: 1e-4 }, `masses of layer ${l}`)
      expect(mass.reduce((a, x) => a + x, 0)).toBeCloseTo(24 * H, 3) // every step spreads H heads' probability
    }
    expect((await hs.h2o.stats()).evictedBlocks).toEqual([0, 0])
    hs.destroy()
  })

  it.each([false, true])("past the budget keeps recent + heaviest blocks by the GPU's masses; evicted never return (perKvHead %s)", async (perKvHead) => {
    const rand = rng(perKvHead ? 12 : 11)
    const policy: H2oPolicy = { budgetTokens: 96, sinkTokens: 16, recentTokens: 32, perKvHead }
    const lists = perKvHead ? KV : 1
    const hs = new Harness(rand, policy, 512)
    const evicted = [0, 1].map(() => Array.from({ length: lists }, () => new Set<number>())) // (layer, list) logical blocks
    const evictions = [0, 0] // per layer, summed over lists
    let known = 0 // logical blocks the GPU's masses cover
    /** `count` steps, each checked against the plan from the masses read before it. */
    const steps = async (count: number) => {
      for (let s = 0; s < count; s++) {
        const masses = [await hs.h2o.readMass(0), await hs.h2o.readMass(1)]
        const q = uniformF32(rand, H * D, 3)
        const before = hs.kv.blockList.length
        const got = await hs.step(q)
        const total = hs.kv.blockList.length
        for (let l = 0; l < 2; l++) {
          const plans = Array.from({ length: lists }, (_, j) => plan(policy, hs.kv.length, masses[l]!.subarray(j * before, (j + 1) * before), known))
          const want = cpuStep(hs, l, q, plans.map((p) => p.attend))
          expectClose(got[l]!, want.out, TOL.f32, `step ${s} layer ${l}`)
          const after = await hs.h2o.readMass(l)
          plans.forEach((p, j) => {
            const gone = evicted[l]![j]!
            expect(hs.entriesOf(p.attend).reduce((a, [, t]) => a + t, 0)).toBeLessThanOrEqual(policy.budgetTokens!)
            for (const b of p.attend) expect(gone.has(b), `evicted block ${b} attended`).toBe(false)
            for (const b of p.evicts) gone.add(b)
            evictions[l] += p.evicts.length
            // Evicted: -1 for good; the others: the step's mass added to what they had.
            for (let i = 0; i < total; i++) {
              const now = after[j * total + i]!
              if (gone.has(i)) expect(now, `layer ${l} list ${j} block ${i}`).toBe(-1)
              else expect(now).toBeCloseTo((i >= known ? 0 : masses[l]![j * before + i]!) + (want.added[j]!.get(i) ?? 0), 4)
            }
          })
        }
        known = total
      }
    }
    hs.prefill(60) // under the budget: no seeding, masses start at 0
    await steps(100)
    // 160 tokens, 96 attended: the sink, 2-3 recent blocks and the partial, and a few heavy hitters.
    expect(evictions[0]).toBeGreaterThan(3 * lists)
    // Each layer keeps its own masses (the plans above were per layer). Their kept sets may
    // still agree: accumulated sums favour the blocks attended longest, the oldest ones.
    expect(await hs.h2o.readMass(0)).not.toEqual(await hs.h2o.readMass(1))
    // A truncation keeps the masses and evictions of the whole blocks before the cut; the
    // block holding it starts afresh.
    hs.kv.truncate(hs.kv.length - 37)
    hs.h2o.invalidate()
    known = Math.floor(hs.kv.length / BS)
    for (const s of evicted.flat()) for (const b of [...s]) if (b >= known) s.delete(b)
    await steps(30)
    const stats = await hs.h2o.stats()
    expect(stats.evictedBlocks).toEqual(evictions)
    expect(stats.seededSteps).toBe(0)
    hs.destroy()
  })

  it("without seeding, prompt blocks tie at zero mass: the most recent candidates are kept", async () => {
    const rand = rng(31)
    const policy: H2oPolicy = { budgetTokens: 96, sinkTokens: 0, recentTokens: 32, seed: false }
    const hs = new Harness(rand, policy, 512)
    hs.prefill(200)
    const q = uniformF32(rand, H * D, 3)
    const got = await hs.step(q) // 201 tokens: candidates 0-9, K = 3 (2 recent blocks and the partial)
    const kept = [7, 8, 9, 10, 11, 12]
    for (let l = 0; l < 2; l++) {
      const want = cpuStep(hs, l, q, [kept])
      expectClose(got[l]!, want.out, TOL.f32, `layer ${l}`)
      const mass = await hs.h2o.readMass(l)
      expect(Array.from(mass.subarray(0, 7))).toEqual([-1, -1, -1, -1, -1, -1, -1])
      expectClose(mass.subarray(7), kept.map((b) => want.added[0]!.get(b)!), { abs: 1e-5, rel: 1e-4 }, "masses")
    }
    expect((await hs.h2o.stats()).seededSteps).toBe(0)
    hs.destroy()
  })

  it("a prompt past the budget: the first step seeds the masses with its query over every block, then evicts", async () => {
    const rand = rng(21)
    const policy: H2oPolicy = { budgetTokens: 96, sinkTokens: 0, recentTokens: 32 }
    const hs = new Harness(rand, policy, 512)
    hs.prefill(200)
    const q = uniformF32(rand, H * D, 3)
    const got = await hs.step(q)
    const n = hs.kv.length // 201 tokens: 12 full blocks and a partial one
    const all = Array.from({ length: Math.ceil(n / BS) }, (_, i) => i)
    for (let l = 0; l < 2; l++) {
      const seeded = cpuStep(hs, l, q, [all]).added[0]!
      const masses = all.map((i) => seeded.get(i)!)
      const p = plan(policy, n, masses, all.length)
      // The choice is not decided by float noise: a clear gap at the K-th heaviest candidate.
      const cands = [...p.attend, ...p.evicts].filter((i) => i < 12 - 2).map((i) => masses[i]!).sort((a, b) => b - a)
      const K = 96 / BS - 2 - 1
      expect(cands[K - 1]! - cands[K]!).toBeGreaterThan(1e-4)
      expect(p.evicts.length).toBe(10 - K)
      expectClose(got[l]!, cpuStep(hs, l, q, [p.attend]).out, TOL.f32, `layer ${l}`)
      // The seed counted this step once: kept blocks hold their seeded mass, evicted ones -1.
      const after = await hs.h2o.readMass(l)
      all.forEach((i) => expect(after[i]).toBeCloseTo(p.evicts.includes(i) ? -1 : masses[i]!, 4))
    }
    const stats = await hs.h2o.stats()
    expect(stats.seededSteps).toBe(1)
    expect(stats.evictedBlocks).toEqual([7, 7])
    // A reset forgets masses and evictions: the same blocks come back with no mass.
    hs.kv.reset()
    hs.h2o.invalidate()
    expect((await hs.h2o.stats()).evictedBlocks).toEqual([0, 0])
    hs.prefill(40)
    const q2 = uniformF32(rand, H * D, 3)
    const again = await hs.step(q2)
    const blocks = [0, 1, 2]
    for (let l = 0; l < 2; l++) {
      const want = cpuStep(hs, l, q2, [blocks])
      expectClose(again[l]!, want.out, TOL.f32, `after reset, layer ${l}`)
      expectClose(await hs.h2o.readMass(l), blocks.map((b) => want.added[0]!.get(b)!), { abs: 1e-5, rel: 1e-4 }, "masses after reset")
    }
    hs.destroy()
  })
})
