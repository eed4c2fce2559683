// mulberry32: a seeded uniform [0, 1) generator, small and fast, for data that must be the same
// on every run (the device-open checks, the kernel tests and the benchmarks' random inputs).

/** The generator for `seed`: each call returns the next value in [0, 1). */
export const mulberry32 = (seed: number) => {
  let a = seed >>> 0
  return (): number => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
