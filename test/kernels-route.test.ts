// kernels/route.wgsl against its CPU reference: a layer's choice split into the entries of its
// resident chunks (in choice order, slotBlocks full blocks each), then the tail's blocks, and
// the count of chunks that are not resident; exactly, for choices longer than the workgroup,
// and for a choice shorter than the host's bound (select.wgsl's length wins). And
// kernels/group_expand.wgsl against the host's listing of a grouped choice's candidates.
// Compressed slots: a map word is bits << 24 | slot * slotBlocks, and an entry's y tokens | bits << 16.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { KernelRig, rng, shuffled } from "./kernel-rig.ts"

const NONE = 0xffffffff

let rig: KernelRig

beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})

afterAll(async () => {
  rig.destroy()
  await releaseGpu()
})

interface Case {
  readonly chunks: number
  readonly count: number
  readonly slotBlocks: number
  readonly BS: number
  readonly sealed: number
  readonly tokens: number
  readonly tailBlocks: number
  readonly layer: number
  readonly resident: number
  /** The select pass's length of the choice, where below count (a grouped choice listed on the GPU). */
  readonly chosen?: number
  /** Compressed slots: resident chunks alternate between these bits (attn_decode's QUANT entries). */
  readonly bits?: ReadonlyArray<8 | 4>
}

/** The CPU reference: what GpuCache.writeEntries writes for a window of the choice's hits with the tail. */
const reference = (c: Case, choice: ReadonlyArray<number>, map: Uint32Array) => {
  const entries: number[] = []
  let misses = 0
  for (const ch of choice) {
    const word = map[c.layer * c.chunks + ch]
    if (word === NONE) {
      misses++
      continue
    }
    const block = word & 0xffffff
    for (let j = 0; j < c.slotBlocks; j++) entries.push(block + j, c.BS | ((word >>> 24) << 16))
  }
  for (let t = c.sealed; t < c.tokens; t += c.BS) entries.push(Math.floor(t / c.BS) % c.tailBlocks, Math.min(c.BS, c.tokens - t))
  return { entries, misses }
}

describe("route kernel", () => {
  const cases: Case[] = [
    { chunks: 40, count: 12, slotBlocks: 2, BS: 16, sealed: 640, tokens: 657, tailBlocks: 6, layer: 0, resident: 20 },
    { chunks: 900, count: 700, slotBlocks: 1, BS: 16, sealed: 14400, tokens: 14435, tailBlocks: 5, layer: 1, resident: 500 },
    { chunks: 64, count: 30, slotBlocks: 4, BS: 8, sealed: 2048, tokens: 2048, tailBlocks: 9, layer: 2, resident: 64 },
    { chunks: 300, count: 280, slotBlocks: 2, BS: 16, sealed: 4800, tokens: 4810, tailBlocks: 6, layer: 0, resident: 150, chosen: 263 },
    { chunks: 300, count: 280, slotBlocks: 2, BS: 16, sealed: 4800, tokens: 4811, tailBlocks: 4, layer: 1, resident: 200, bits: [4, 8] },
  ]
  for (const c of cases) {
    it(`routes ${c.chosen ?? c.count} of ${c.chunks} chunks (bound ${c.count}, ${c.resident} resident${c.bits ? `, compressed ${c.bits.join("/")}` : ""}) and a tail of ${c.tokens - c.sealed} tokens`, async () => {
      const rand = rng(c.chunks + c.count)
      const layers = c.layer + 1
      const map = new Uint32Array(layers * c.chunks).fill(NONE)
      const residentChunks = shuffled(rand, Array.from({ length: c.chunks }, (_, i) => i)).slice(0, c.resident)
      residentChunks.forEach((ch, i) => (map[c.layer * c.chunks + ch] = c.bits ? ((c.bits[i % c.bits.length] << 24) | (i * c.slotBlocks)) >>> 0 : 100 + i * c.slotBlocks))
      const choice = shuffled(rand, Array.from({ length: c.chunks }, (_, i) => i)).slice(0, c.count)
      const selection = new Uint32Array(c.count * 2)
      choice.forEach((ch, i) => selection.set([ch, c.BS], i * 2))
      const length = c.chosen ?? c.count
      const want = reference(c, choice.slice(0, length), map)
      const maxEntries = c.count * c.slotBlocks + c.tailBlocks + 1
      const entries = rig.output(maxEntries * 8)
      const seqs = rig.output(16)
      const misses = rig.output(16)
      await rig.run(
        { op: "route" },
        { layout: "uuuuuuuu", values: [c.count, c.slotBlocks, c.BS, c.layer * c.chunks, c.sealed, c.tokens, c.tailBlocks, 0] },
        { 1: rig.input(selection), 2: rig.input(map), 3: entries, 4: seqs, 5: misses, 6: rig.input(Uint32Array.from([0, length])) },
        [1],
      )
      const n = want.entries.length / 2
      expect(Array.from(await rig.u32(seqs, 2))).toEqual([0, n])
      expect(Array.from(await rig.u32(entries, n * 2))).toEqual(want.entries)
      expect(Array.from(await rig.u32(misses, 2))).toEqual([want.misses, length])
      expect(want.misses).toBe(choice.slice(0, length).filter((ch) => map[c.layer * c.chunks + ch] === NONE).length)
    })
  }
})

/** The host's candidates for kept groups (GroupedChoice.encode, then Selector.encodeCandidates): sink, the groups' chunks in [S, n - R) ascending, recent. */
const listed = (n: number, S: number, R: number, size: number, groups: ReadonlyArray<number>) => {
  const mids: number[] = []
  for (const g of [...groups].sort((a, b) => a - b)) for (let ch = Math.max(S, g * size); ch < Math.min(n - R, (g + 1) * size); ch++) mids.push(ch)
  return { ids: [...Array.from({ length: S }, (_, i) => i), ...mids, ...Array.from({ length: R }, (_, i) => n - R + i)], mids: mids.length }
}

describe("group_expand kernel", () => {
  const cases = [
    // Edge groups partly in the sink and the recent window; groups kept in score order, not by id.
    { n: 37, S: 2, R: 3, K: 6, size: 4, kept: [8, 0, 5] },
    { n: 10, S: 1, R: 1, K: 2, size: 4, kept: [2] }, // the last group holds one candidate: fewer listed than K
    { n: 2000, S: 1, R: 4, K: 300, size: 2, kept: shuffled(rng(5), Array.from({ length: 1000 }, (_, g) => g)).slice(0, 300) }, // more groups than threads
  ]
  for (const c of cases) {
    it(`lists ${c.kept.length} kept groups of ${c.size} among ${c.n} chunks as the host does, and the uniforms of the passes after it`, async () => {
      const want = listed(c.n, c.S, c.R, c.size, c.kept)
      const cand = rig.output(c.n * 4)
      const [scoreP, selectP, count] = [rig.output(16), rig.output(32), rig.output(16)]
      const kept = Uint32Array.from(c.kept.flatMap((g) => [g, 7]))
      const scale = 0.125
      await rig.run(
        { op: "group_expand" },
        { layout: "uuuuuuuufuuu", values: [c.n, c.S, c.R, c.K, c.size, c.kept.length, 2, 64, scale, 16, 4096, 0] },
        { 1: rig.input(kept), 2: cand, 3: scoreP, 4: selectP, 5: count },
        [1],
      )
      expect(Array.from(await rig.u32(cand, want.ids.length))).toEqual(want.ids)
      const m = want.ids.length
      const sp = await rig.u32(scoreP, 4)
      expect([sp[0], sp[1], sp[2], new Float32Array(sp.buffer)[3]]).toEqual([m, 2, 64, scale])
      expect(Array.from(await rig.u32(selectP, 8))).toEqual([m, 1, c.S, c.R, c.K, 16, 4096, 0])
      expect((await rig.u32(count, 1))[0]).toBe(want.mids)
    })
  }
})
