// kernels/route.wgsl against its CPU reference: a layer's choice split into the entries of its
// resident chunks (in choice order, slotBlocks full blocks each), then the tail's blocks, and
// the count of chunks that are not resident; exactly, for choices longer than the workgroup.
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
}

/** The CPU reference: what GpuCache.writeEntries writes for a window of the choice's hits with the tail. */
const reference = (c: Case, choice: ReadonlyArray<number>, map: Uint32Array) => {
  const entries: number[] = []
  let misses = 0
  for (const ch of choice) {
    const block = map[c.layer * c.chunks + ch]
    if (block === NONE) {
      misses++
      continue
    }
    for (let j = 0; j < c.slotBlocks; j++) entries.push(block + j, c.BS)
  }
  for (let t = c.sealed; t < c.tokens; t += c.BS) entries.push(Math.floor(t / c.BS) % c.tailBlocks, Math.min(c.BS, c.tokens - t))
  return { entries, misses }
}

describe("route kernel", () => {
  const cases: Case[] = [
    { chunks: 40, count: 12, slotBlocks: 2, BS: 16, sealed: 640, tokens: 657, tailBlocks: 6, layer: 0, resident: 20 },
    { chunks: 900, count: 700, slotBlocks: 1, BS: 16, sealed: 14400, tokens: 14435, tailBlocks: 5, layer: 1, resident: 500 },
    { chunks: 64, count: 30, slotBlocks: 4, BS: 8, sealed: 2048, tokens: 2048, tailBlocks: 9, layer: 2, resident: 64 },
  ]
  for (const c of cases) {
    it(`routes ${c.count} of ${c.chunks} chunks (${c.resident} resident) and a tail of ${c.tokens - c.sealed} tokens`, async () => {
      const rand = rng(c.chunks + c.count)
      const layers = c.layer + 1
      const map = new Uint32Array(layers * c.chunks).fill(NONE)
      const residentChunks = shuffled(rand, Array.from({ length: c.chunks }, (_, i) => i)).slice(0, c.resident)
      residentChunks.forEach((ch, i) => (map[c.layer * c.chunks + ch] = 100 + i * c.slotBlocks))
      const choice = shuffled(rand, Array.from({ length: c.chunks }, (_, i) => i)).slice(0, c.count)
      const selection = new Uint32Array(c.count * 2)
      choice.forEach((ch, i) => selection.set([ch, c.BS], i * 2))
      const want = reference(c, choice, map)
      const maxEntries = c.count * c.slotBlocks + c.tailBlocks + 1
      const entries = rig.output(maxEntries * 8)
      const seqs = rig.output(16)
      const misses = rig.output(16)
      await rig.run(
        { op: "route" },
        { layout: "uuuuuuuu", values: [c.count, c.slotBlocks, c.BS, c.layer * c.chunks, c.sealed, c.tokens, c.tailBlocks, 0] },
        { 1: rig.input(selection), 2: rig.input(map), 3: entries, 4: seqs, 5: misses },
        [1],
      )
      const n = want.entries.length / 2
      expect(Array.from(await rig.u32(seqs, 2))).toEqual([0, n])
      expect(Array.from(await rig.u32(entries, n * 2))).toEqual(want.entries)
      expect((await rig.u32(misses, 1))[0]).toBe(want.misses)
      expect(want.misses).toBe(choice.filter((ch) => map[c.layer * c.chunks + ch] === NONE).length)
    })
  }
})
