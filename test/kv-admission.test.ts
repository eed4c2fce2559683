// The gpu-executor's admission (actors/kv-admission.ts): batched runs in arrival order while
// places and GPU KV bytes last, the first of an empty batch always; a serial run alone once
// the batch is empty, holding later batched runs back.
import { describe, expect, it } from "vitest"
import { KvAdmission } from "../actors/kv-admission.ts"

/** Lets every settled promise's callbacks run. */
const flush = () => new Promise((r) => setTimeout(r, 0))

describe("KvAdmission", () => {
  it("admits in arrival order while the bytes and places last", async () => {
    const a = new KvAdmission(3, 100)
    const started: string[] = []
    const run = (name: string, bytes: number) => a.admit(bytes).then(() => started.push(name))
    void run("a60", 60)
    void run("b30", 30)
    void run("c30", 30) // 120 > 100: waits
    void run("d5", 5) // fits, but behind c: arrival order
    await flush()
    expect(started).toEqual(["a60", "b30"])
    expect(a.stats).toEqual({ running: 2, waiting: 2, reservedBytes: 90 })
    a.release(60)
    await flush()
    expect(started).toEqual(["a60", "b30", "c30", "d5"])
    expect(a.stats).toEqual({ running: 3, waiting: 0, reservedBytes: 65 })
    void run("e1", 1) // no place left (3 running)
    await flush()
    expect(started).toHaveLength(4)
    a.release(5)
    await flush()
    expect(started.at(-1)).toBe("e1")
  })

  it("a run waiting for budget alone says what it asks (blockedShare), and gets what a running share gives back (resize)", async () => {
    const a = new KvAdmission(2, 100)
    const shares: Array<number | undefined> = []
    void a.admitShare(30).then((b) => shares.push(b))
    await flush()
    expect(shares).toEqual([100]) // alone: the whole budget
    expect(a.blockedShare).toBeUndefined()
    void a.admitShare(30).then((b) => shares.push(b))
    await flush()
    expect(a.blockedShare).toBe(30)
    a.resize(100, 50)
    await flush()
    expect(shares).toEqual([100, 50])
    expect(a.stats).toEqual({ running: 2, waiting: 0, reservedBytes: 100 })
    // No place left: nothing to give back for.
    void a.admitShare(30)
    await flush()
    expect(a.blockedShare).toBeUndefined()
    a.release(50)
    await flush()
    expect(a.stats).toEqual({ running: 2, waiting: 0, reservedBytes: 100 })
  })

  it("admits a run larger than the budget when the batch is empty (its KV manager refuses it if it cannot fit)", async () => {
    const a = new KvAdmission(4, 10)
    let started = false
    void a.admit(50).then(() => (started = true))
    await flush()
    expect(started).toBe(true)
  })

  it("runs a serial run alone once the batch empties, and holds batched runs back meanwhile", async () => {
    const a = new KvAdmission(4, undefined)
    const log: string[] = []
    await a.admit(0)
    log.push("batch 1")
    const serial = a.enterSerial().then(() => log.push("serial"))
    void a.admit(0).then(() => log.push("batch 2")) // arrives after the serial run: waits for it
    await flush()
    expect(log).toEqual(["batch 1"])
    a.release(0)
    await serial
    await flush()
    expect(log).toEqual(["batch 1", "serial"])
    a.leaveSerial()
    await flush()
    expect(log).toEqual(["batch 1", "serial", "batch 2"])
    // Two serial runs: one at a time.
    a.release(0)
    await a.enterSerial()
    let second = false
    void a.enterSerial().then(() => (second = true))
    await flush()
    expect(second).toBe(false)
    a.leaveSerial()
    await flush()
    expect(second).toBe(true)
  })

  it("gives a lone tiered lane the whole budget, and splits it among lanes that start together", async () => {
    const a = new KvAdmission(4, 300)
    const lone = await a.admitShare(70)
    expect(lone).toBe(300)
    const got: number[] = []
    // Three arrive while the lone lane holds everything: they wait, then split what it frees.
    for (let i = 0; i < 3; i++) void a.admitShare(70).then((b) => got.push(b!))
    await flush()
    expect(got).toEqual([])
    expect(a.stats).toEqual({ running: 1, waiting: 3, reservedBytes: 300 })
    a.release(300)
    await flush()
    expect(got).toEqual([100, 100, 100])
    expect(a.stats).toEqual({ running: 3, waiting: 0, reservedBytes: 300 })
  })

  it("runs fewer lanes than its places when the shares would fall below a lane's minimum", async () => {
    const a = new KvAdmission(4, 300)
    const got: number[] = []
    for (let i = 0; i < 4; i++) void a.admitShare(90).then((b) => got.push(b!))
    await flush()
    // 4 x 75 < 90: three lanes of 100; the fourth waits for one to end, then gets its share.
    expect(got).toEqual([100, 100, 100])
    expect(a.stats.waiting).toBe(1)
    a.release(100)
    await flush()
    expect(got).toEqual([100, 100, 100, 100])
  })

  it("starts the first lane of an empty batch even below the minimum (its KV manager refuses it), and shares nothing without a budget", async () => {
    const small = new KvAdmission(4, 50)
    expect(await small.admitShare(90)).toBe(50)
    const unbounded = new KvAdmission(2, undefined)
    expect(await unbounded.admitShare(90)).toBeUndefined()
    expect(await unbounded.admitShare(90)).toBeUndefined()
    expect(unbounded.stats).toEqual({ running: 2, waiting: 0, reservedBytes: 0 })
  })

  it("splits only what is free: a lane that joins a running one gets the rest, if it fits a lane", async () => {
    const a = new KvAdmission(4, 300)
    const first = a.admitShare(60)
    const second = a.admitShare(60)
    expect([await first, await second]).toEqual([150, 150])
    a.release(150)
    expect(await a.admitShare(60)).toBe(150)
    expect(a.stats).toEqual({ running: 2, waiting: 0, reservedBytes: 300 })
  })
})
