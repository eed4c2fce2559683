// Random weights at a given config, as vLLM's `--load-format dummy`: for speed work at
// 7B/8B shapes without the files. Element e of a tensor is pool[(start + e) mod P]:
// a fixed pool of P (prime) random halves, with `start` drawn from (seed, tensor name).
// Values so depend only on seed, name and index, never on piece size or read order, and
// pieces are filled by copying (GB/s), not by generating. Norms are exactly 1.0.

import { modelError } from "./errors.ts"
import { f32ToF16Bits } from "./half.ts"
import { defaultMaxElements, expectedTensors, numElements } from "./layout.ts"
import type { ModelConfig, TensorInfo, WeightSource } from "./types.ts"

/** Pool length: prime, so that no row length lines rows up with the pool's period. */
const poolSize = 1_048_573
const one = 0x3c00

/** FNV-1a of the text, mixed with the seed; never zero (xorshift's fixed point). */
const hash = (seed: number, text: string): number => {
  let h = (0x811c9dc5 ^ seed) >>> 0
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193)
  return h >>> 0 || 0x9e3779b9
}

/** poolSize halves uniform over [-0.04, 0.04] (4096 levels), from xorshift32. */
const makePool = (seed: number): Uint16Array => {
  const levels = new Uint16Array(4096)
  for (let i = 0; i < 4096; i++) levels[i] = f32ToF16Bits(((i + 0.5) / 4096 - 0.5) * 0.08)
  const pool = new Uint16Array(poolSize)
  let s = hash(seed, "pool")
  for (let i = 0; i < poolSize; i++) {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    pool[i] = levels[(s >>> 8) & 0xfff]!
  }
  return pool
}

const isNorm = (name: string): boolean => name.endsWith("norm.weight")

export class DummyWeightSource implements WeightSource {
  readonly tensors: ReadonlyMap<string, TensorInfo>
  private pool: Uint16Array | undefined // (poolSize) f16 bits, made on first read

  constructor(
    readonly config: ModelConfig,
    readonly seed = 1,
  ) {
    this.tensors = new Map(
      expectedTensors(config).map((t) => [t.name, { name: t.name, dtype: "F16" as const, shape: t.shape }]),
    )
  }

  readF16(name: string, sink: (piece: Uint16Array, elementOffset: number) => void, maxElements = defaultMaxElements): void {
    const info = this.tensors.get(name)
    if (info === undefined) throw modelError("tensor_missing", undefined, name, `dummy ${this.config.name}: no tensor "${name}"`)
    const count = numElements(info.shape)
    const pieceLen = Math.min(maxElements, count)
    const piece = new Uint16Array(pieceLen)
    const norm = isNorm(name)
    if (norm) piece.fill(one)
    const pool = (this.pool ??= makePool(this.seed))
    let p = hash(this.seed, name) % poolSize // pool index of the next element
    for (let at = 0; at < count; at += pieceLen) {
      const n = Math.min(pieceLen, count - at)
      for (let i = 0; !norm && i < n; ) {
        const run = Math.min(n - i, poolSize - p)
        piece.set(pool.subarray(p, p + run), i)
        i += run
        p = (p + run) % poolSize
      }
      sink(n === pieceLen ? piece : piece.subarray(0, n), at)
    }
  }

  /** On a GPU the same kind of values are generated in place (see kernels/fill.wgsl). */
  gpuFill = (name: string) =>
    isNorm(name) ? ({ kind: "ones" } as const) : ({ kind: "random", seed: hash(this.seed, name), amplitude: 0.04 } as const)

  close(): void {}
}
