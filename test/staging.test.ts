// The staging rings on lavapipe: seeded random bytes go up through UploadRing into
// scattered, overlapping regions of a storage buffer and must come back byte-exact
// (checked against a host mirror applying the same copies in order); ReadbackRing must
// return scattered regions exactly. Slots are tiny so every test reuses them many times.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { readBack, storageBuffer, upload } from "../engine/buffers.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { Pipelines } from "../engine/pipelines.ts"
import { planReadback, ReadbackRing, type StagedCopy, UploadRing } from "../engine/staging.ts"
import { UploadScatter } from "../engine/staging-scatter.ts"
import { rng, type Rand } from "./kernel-rig.ts"

let device: GPUDevice
let gpu: Gpu

beforeAll(async () => {
  gpu = await acquireGpu()
  device = gpu.device
})

afterAll(async () => {
  await releaseGpu()
})

const randomBytes = (rand: Rand, n: number): Uint8Array => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256))
/** A multiple of 4 in [lo, hi]. */
const randomWords = (rand: Rand, lo: number, hi: number): number => 4 * (lo / 4 + Math.floor(rand() * ((hi - lo) / 4 + 1)))

const readBytes = async (buffer: GPUBuffer, bytes: number) => new Uint8Array(await readBack(device, buffer, 0, bytes))

/** Runs `body` inside a validation error scope and fails on any validation error. */
const noValidationErrors = async (body: () => Promise<void>) => {
  device.pushErrorScope("validation")
  await body()
  const error = await device.popErrorScope()
  expect(error?.message ?? null).toBeNull()
}

describe("UploadRing", () => {
  it("uploads many stages into scattered, overlapping regions byte-exactly", async () => {
    await noValidationErrors(async () => {
      const rand = rng(1)
      const dstBytes = 16384
      const dst = storageBuffer(device, "staging test dst", dstBytes)
      const mirror = new Uint8Array(dstBytes) // storage buffers start zeroed
      const ring = new UploadRing(device, { slotBytes: 4096, slots: 3 })
      let staged = 0
      const unawaited: Promise<void>[] = []
      for (let i = 0; i < 80; i++) {
        const bytes = randomWords(rand, 4, i % 10 === 0 ? 4096 : 1024)
        const data = randomBytes(rand, bytes)
        const copies: StagedCopy[] = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => {
          const size = randomWords(rand, 4, bytes)
          const from = randomWords(rand, 0, bytes - size)
          return { from, dst, dstOffset: randomWords(rand, 0, dstBytes - size), size }
        })
        for (const c of copies) mirror.set(data.subarray(c.from, c.from + c.size), c.dstOffset)
        const done = ring.stage(bytes, (view) => view.set(data), copies)
        staged += bytes
        // The first half awaits each stage; the second half never awaits between stages.
        if (i < 40) await done
        else unawaited.push(done)
      }
      await Promise.all(unawaited)
      ring.flush()
      expect(await readBytes(dst, dstBytes)).toEqual(mirror)
      expect(ring.bytesStaged).toBe(staged)
      expect(ring.submits).toBeGreaterThan(3) // more slots used than the ring has
      expect(ring.bytes).toBe(3 * 4096)
      ring.destroy()
      dst.destroy()
    })
  })

  it("keeps call order when the caller resumes while later stages still wait", async () => {
    const dst = storageBuffer(device, "staging test dst", 256)
    const ring = new UploadRing(device, { slotBytes: 256, slots: 2 })
    const word = (value: number) => ring.stage(4, (view) => view.fill(value), [{ from: 0, dst, dstOffset: 0, size: 4 }])
    await ring.stage(256, () => {}, []) // both slots full and in flight: the next stages wait
    await ring.stage(256, () => {}, [])
    const first = word(1)
    const second = word(2) // queued behind the first
    await first
    const third = word(3) // called before the second has run: must still land after it
    await Promise.all([second, third])
    ring.flush()
    expect(Array.from(await readBytes(dst, 4))).toEqual([3, 3, 3, 3])
    ring.destroy()
    dst.destroy()
  })

  it("write() splits an upload larger than a slot", async () => {
    await noValidationErrors(async () => {
      const src = randomBytes(rng(2), 4096 * 3 + 1000)
      const dst = storageBuffer(device, "staging test dst", 20000)
      const ring = new UploadRing(device, { slotBytes: 4096, slots: 2 })
      await ring.write(dst, 64, src)
      ring.flush()
      const got = await readBytes(dst, 20000)
      expect(got.subarray(64, 64 + src.length)).toEqual(src)
      expect(got.subarray(0, 64)).toEqual(new Uint8Array(64))
      ring.destroy()
      dst.destroy()
    })
  })

  it("fills mapped memory straight from a callback (the disk path)", async () => {
    const dst = storageBuffer(device, "staging test dst", 1024)
    const ring = new UploadRing(device, { slotBytes: 512, slots: 2 })
    const words = Uint32Array.from({ length: 256 }, (_, i) => i * 2654435761)
    const bytes = new Uint8Array(words.buffer)
    for (let at = 0; at < 1024; at += 256) {
      await ring.stage(256, (view) => view.set(bytes.subarray(at, at + 256)), [{ from: 0, dst, dstOffset: at, size: 256 }])
    }
    ring.flush()
    expect(await readBytes(dst, 1024)).toEqual(bytes)
    ring.destroy()
    dst.destroy()
  })

  it("rejects a stage larger than a slot and unaligned copies with a RangeError", async () => {
    const dst = storageBuffer(device, "staging test dst", 1024)
    const ring = new UploadRing(device, { slotBytes: 256, slots: 2 })
    await expect(ring.stage(260, () => {}, [])).rejects.toThrow(RangeError)
    await expect(ring.stage(16, () => {}, [{ from: 2, dst, dstOffset: 0, size: 8 }])).rejects.toThrow(RangeError)
    await expect(ring.stage(16, () => {}, [{ from: 0, dst, dstOffset: 0, size: 6 }])).rejects.toThrow(RangeError)
    await expect(ring.stage(16, () => {}, [{ from: 8, dst, dstOffset: 0, size: 12 }])).rejects.toThrow(RangeError)
    await expect(ring.write(dst, 2, new Uint8Array(8))).rejects.toThrow(RangeError)
    expect(() => new UploadRing(device, { slotBytes: 6, slots: 2 })).toThrow(RangeError)
    ring.destroy()
    dst.destroy()
  })

  it("rejects a stage whose fill throws and keeps going", async () => {
    const dst = storageBuffer(device, "staging test dst", 1024)
    const ring = new UploadRing(device, { slotBytes: 512, slots: 2 })
    const copy = (dstOffset: number) => [{ from: 0, dst, dstOffset, size: 256 }]
    const failed = ring.stage(256, () => { throw new Error("disk read failed") }, copy(0))
    const landed = ring.stage(256, (view) => view.fill(9), copy(256))
    await expect(failed).rejects.toThrow("disk read failed")
    await landed
    ring.flush()
    const got = await readBytes(dst, 512)
    expect(got.subarray(0, 256)).toEqual(new Uint8Array(256)) // the failed stage's copy was never recorded
    expect(got.subarray(256)).toEqual(new Uint8Array(256).fill(9))
    ring.destroy()
    dst.destroy()
  })

  it("destroys cleanly with copies in flight and a stage waiting for a slot", async () => {
    const dst = storageBuffer(device, "staging test dst", 1024)
    const ring = new UploadRing(device, { slotBytes: 256, slots: 1 })
    const copy = [{ from: 0, dst, dstOffset: 0, size: 256 }]
    await ring.stage(256, (view) => view.fill(7), copy) // fills the only slot: flushed, re-mapping
    const waiting = ring.stage(256, (view) => view.fill(8), copy)
    ring.destroy() // aborts the slot's re-map, which the waiting stage sees
    await expect(waiting).rejects.toThrow()
    await expect(ring.stage(4, () => {}, [])).rejects.toThrow(/destroyed/)
    await device.queue.onSubmittedWorkDone()
    dst.destroy()
  })
})

describe("UploadScatter", () => {
  let pipelines: Pipelines | undefined
  /** A ring whose flushes scatter, and its scatter (the pass compiled once for the tests). */
  const scatterRing = async (slotBytes: number, slots: number) => {
    pipelines ??= new Pipelines(gpu)
    await pipelines.prewarm([{ op: "scatter" }])
    const scatter = new UploadScatter(device, pipelines.now({ op: "scatter" }), slotBytes)
    return { ring: new UploadRing(device, { slotBytes, slots }, scatter), scatter }
  }

  it("moves disjoint copies into two buffers byte-exactly in one copy and a pass per buffer", async () => {
    await noValidationErrors(async () => {
      const rand = rng(7)
      const dstBytes = 1 << 17
      const dsts = [storageBuffer(device, "scatter test k", dstBytes), storageBuffer(device, "scatter test v", dstBytes)]
      const mirrors = dsts.map(() => new Uint8Array(dstBytes))
      const { ring, scatter } = await scatterRing(1 << 16, 2)
      // Chunk-like stages: a K half and a V half each, into slots of 4 KiB (some halves shorter, as the
      // last chunk's); the last stage's halves (20 KiB) are cut into two pieces each, at 16 KiB past the slots.
      const slots = Array.from({ length: 16 }, (_, i) => i).sort(() => rand() - 0.5)
      for (let i = 0; i <= 12; i++) {
        const half = i < 12 ? randomWords(rand, 4, 4096) : 20480
        const data = randomBytes(rand, 2 * half)
        const at = i < 12 ? slots[i] * 4096 : 1 << 16
        const copies: StagedCopy[] = [
          { from: 0, dst: dsts[0], dstOffset: at, size: half },
          { from: half, dst: dsts[1], dstOffset: at, size: half },
        ]
        mirrors[0].set(data.subarray(0, half), at)
        mirrors[1].set(data.subarray(half), at)
        await ring.stage(2 * half, (view) => view.set(data), copies)
      }
      ring.flush()
      // The first differing byte (-1: none); toEqual walks 128 KiB element by element, slowly.
      const firstDiff = (a: Uint8Array, b: Uint8Array) => (a.length !== b.length ? 0 : a.findIndex((x, i) => x !== b[i]))
      for (let b = 0; b < 2; b++) expect(firstDiff(await readBytes(dsts[b], dstBytes), mirrors[b])).toBe(-1)
      expect(ring.scattered).toBe(ring.submits)
      expect(scatter.dispatches).toBe(2 * ring.submits)
      ring.destroy()
      scatter.destroy()
      for (const d of dsts) d.destroy()
    })
  })

  it("copies one by one, in order, where destinations overlap", async () => {
    await noValidationErrors(async () => {
      const dst = storageBuffer(device, "scatter test overlap", 256)
      const { ring, scatter } = await scatterRing(1024, 2)
      const first = Uint8Array.from({ length: 64 }, (_, i) => i + 1)
      const second = Uint8Array.from({ length: 64 }, (_, i) => 200 - i)
      await ring.stage(64, (view) => view.set(first), [{ from: 0, dst, dstOffset: 0, size: 64 }])
      await ring.stage(64, (view) => view.set(second), [{ from: 0, dst, dstOffset: 32, size: 64 }])
      ring.flush()
      const want = new Uint8Array(256)
      want.set(first, 0)
      want.set(second, 32)
      expect(await readBytes(dst, 256)).toEqual(want)
      expect(ring.scattered).toBe(0)
      expect(scatter.dispatches).toBe(0)
      ring.destroy()
      scatter.destroy()
      dst.destroy()
    })
  })
})

describe("ReadbackRing", () => {
  const fillSource = (seed: number, bytes: number) => {
    const data = randomBytes(rng(seed), bytes)
    return { data, buffer: upload(device, "staging test src", data) }
  }

  const scattered = (rand: Rand, src: GPUBuffer, srcBytes: number, n: number) =>
    Array.from({ length: n }, () => {
      const size = randomWords(rand, 4, 3000) // some larger than a slot: split across two
      return { src, srcOffset: randomWords(rand, 0, srcBytes - size), size }
    })

  const readAll = async (ring: ReadbackRing, copies: ReadonlyArray<{ src: GPUBuffer; srcOffset: number; size: number }>) => {
    const parts: Uint8Array[] = []
    await ring.read(copies, (view) => parts.push(view.slice()))
    return Buffer.concat(parts)
  }

  it("reads scattered regions back exactly, concurrent reads sharing the pool", async () => {
    await noValidationErrors(async () => {
      const srcBytes = 32768
      const { data, buffer } = fillSource(3, srcBytes)
      const ring = new ReadbackRing(device, { slotBytes: 2048, slots: 2 })
      const rand = rng(4)
      const reads = [scattered(rand, buffer, srcBytes, 12), scattered(rand, buffer, srcBytes, 9), scattered(rand, buffer, srcBytes, 5)]
      const got = await Promise.all(reads.map((copies) => readAll(ring, copies)))
      for (let r = 0; r < reads.length; r++) {
        const want = Buffer.concat(reads[r]!.map((c) => data.subarray(c.srcOffset, c.srcOffset + c.size)))
        expect(new Uint8Array(got[r]!)).toEqual(new Uint8Array(want))
      }
      const total = reads.flat().reduce((s, c) => s + c.size, 0)
      expect(ring.bytesRead).toBe(total)
      expect(ring.bytes).toBe(4096)
      ring.destroy()
      buffer.destroy()
    })
  })

  it("plans groups that split copies at slot boundaries, in order", () => {
    const src = {} as GPUBuffer
    const groups = planReadback(
      [
        { src, srcOffset: 0, size: 12 },
        { src, srcOffset: 100, size: 8 },
        { src, srcOffset: 200, size: 20 },
      ],
      16,
    )
    expect(groups.map((g) => [g.bytes, g.pieces.map((p) => [p.srcOffset, p.size])])).toEqual([
      [16, [[0, 12], [100, 4]]],
      [16, [[104, 4], [200, 12]]],
      [8, [[212, 8]]],
    ])
  })

  it("releases its buffers when a sink throws, and destroys cleanly", async () => {
    const { buffer } = fillSource(5, 8192)
    const ring = new ReadbackRing(device, { slotBytes: 1024, slots: 2 })
    const copies = [{ src: buffer, srcOffset: 0, size: 8192 }]
    await expect(ring.read(copies, () => { throw new Error("sink failed") })).rejects.toThrow("sink failed")
    expect((await readAll(ring, copies)).length).toBe(8192) // the pool is whole again
    ring.destroy()
    await expect(ring.read(copies, () => {})).rejects.toThrow(/destroyed/)
    buffer.destroy()
  })
})
