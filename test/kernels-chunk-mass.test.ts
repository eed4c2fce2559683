// chunk_mass.wgsl (adaptive chunking's measure of a prefill pass's attention) against a CPU
// reference: per sampled query row and KV head, the softmax of each query head over the
// unsealed tokens it sees, summed per block over the group's heads; keys in a wrapping ring.
import { afterAll, beforeAll, describe, it } from "vitest"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { expectClose, KernelRig, randomHalf, rng, uniformF32 } from "./kernel-rig.ts"

let rig: KernelRig
beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})
afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

describe("chunk_mass.wgsl", () => {
  // One shape (lavapipe compiles this kernel slowly: about a minute under load).
  it.each([[2, 2, 64, 1]])("G %i, KV %i, D %i: block masses of sampled rows over the unsealed tokens (seed %i)", async (G, KV, D, seed) => {
    const BS = 16
    const H = G * KV
    const rand = rng(seed)
    const wrap = 7 // ring blocks
    const start = 5 * BS // first unsealed token (logical block 5: physical 5, 6, then 0, 1, ...)
    const pos0 = start + 24 // the pass begins 24 tokens after it
    const m = 40 // pass rows: positions pos0 .. pos0 + 39
    const R = 4
    const skip = 5 // tokens before a row left out of its masses
    const end = pos0 + m
    const NB = Math.floor(end / BS) - start / BS + 1
    const keys = randomHalf(rand, wrap * KV * BS * D, 2)
    const q = uniformF32(rand, m * H * D, 1)
    const scale = 1 / Math.sqrt(D)
    const key = (t: number, kvh: number, c: number) => keys.values[((((Math.floor(t / BS) % wrap) * KV + kvh) * BS) + (t % BS)) * D + c]
    const want = new Float32Array(R * KV * NB)
    for (let i = 0; i < R; i++) {
      const r = Math.floor(((i + 1) * m) / R) - 1
      const last = pos0 + r
      for (let kvh = 0; kvh < KV; kvh++) {
        for (let g = 0; g < G; g++) {
          const h = kvh * G + g
          const s: number[] = []
          for (let t = start; t <= last; t++) {
            let dot = 0
            for (let c = 0; c < D; c++) dot += q[(r * H + h) * D + c] * scale * key(t, kvh, c)
            s.push(dot)
          }
          const mx = Math.max(...s)
          const den = s.reduce((a, x) => a + Math.exp(x - mx), 0)
          s.forEach((x, j) => {
            if (start + j + skip <= last) want[(i * KV + kvh) * NB + Math.floor((start + j) / BS) - start / BS] += Math.exp(x - mx) / den
          })
        }
      }
    }
    const mass = rig.output(R * KV * NB * 4)
    await rig.run(
      { op: "chunk_mass", constants: { G, D, BS } },
      { layout: "uuuuuuuufuuu", values: [m, R, H, KV, pos0, start, wrap, NB, scale, skip, 0, 0] },
      { 1: rig.input(q), 2: rig.input(keys.bits), 3: mass },
      [R, KV],
    )
    expectClose(await rig.f32(mass, R * KV * NB), want, { abs: 1e-5, rel: 1e-4 }, "block mass")
  }, 300_000)
})
