// The mailbox order (actors/fair-queue.ts): one FIFO per key, turns across keys, one bound.
import { describe, expect, it } from "vitest"
import { FairQueue } from "../actors/fair-queue.ts"

describe("FairQueue", () => {
  it("takes turns across keys, each key in its own order", () => {
    const q = new FairQueue<string>(10)
    for (const [k, v] of [["a", "a1"], ["a", "a2"], ["a", "a3"], ["b", "b1"], ["c", "c1"], ["b", "b2"]]) q.offer(k, v)
    expect(q.queuedByKey()).toEqual({ a: 3, b: 2, c: 1 })
    expect(q.takeAll()).toEqual(["a1", "b1", "c1", "a2", "b2", "a3"])
    expect(q.size).toBe(0)
    expect(q.take()).toBeUndefined()
  })

  it("is a FIFO under one key and refuses past its bound, changing nothing", () => {
    const q = new FairQueue<number>(3)
    expect([1, 2, 3, 4].map((n) => q.offer("", n))).toEqual([true, true, true, false])
    expect(q.take()).toBe(1)
    expect(q.offer("x", 9)).toBe(true)
    expect(q.takeAll()).toEqual([2, 9, 3])
  })
})
