// The cost model of recompute against fetch (ALISA; policy `recompute`): a chunk missing
// from the GPU cache and the host arena is either read from disk as K and V, or as its
// tokens' hidden states at that layer (the residual stream entering it) from which the GPU
// recomputes K = RoPE(W_k rmsnorm(h)) and V = W_v rmsnorm(h). Per token and layer that is
// 2·KV·D·2 bytes against hidden·2 bytes plus 2·hidden·2·KV·D flops. The weights W_k, W_v
// are read once per layer visit for all of its chunks; at a window of many chunks their read
// is small beside the chunks' and is left out here. Per token, so the choice does not depend
// on the chunk size; the benchmark (bench/recompute-bench.ts) measures where it really lies.

/** The shapes the cost depends on (a ModelConfig has them). */
export interface RecomputeShape {
  readonly hiddenSize: number
  readonly numKvHeads: number
  readonly headDim: number
}

/** The hidden-state records of layer l are stored under layer HIDDEN_LAYER_BASE + l of the chunk index. */
export const HIDDEN_LAYER_BASE = 1 << 20

export interface RecomputeCost {
  /** Bytes per token and layer: K and V (fp16), the hidden state (fp16). */
  readonly kvBytes: number
  readonly hiddenBytes: number
  /** Flops per token and layer of the K and V projections. */
  readonly flops: number
  /** Microseconds per token and layer: reading K/V, reading the hidden state, recomputing. */
  readonly fetchUs: number
  readonly readUs: number
  readonly gemmUs: number
  /** Whether reading the hidden state and recomputing takes less time than reading K/V. */
  readonly pays: boolean
  /** The disk rate (GB/s) below which recompute pays at this GEMM rate (Infinity: always; 0: never). */
  readonly crossoverGBps: number
}

export const recomputeCost = (c: RecomputeShape, diskGBps: number, gemmTflops: number): RecomputeCost => {
  const kvBytes = 2 * c.numKvHeads * c.headDim * 2
  const hiddenBytes = c.hiddenSize * 2
  const flops = 2 * c.hiddenSize * 2 * c.numKvHeads * c.headDim
  const fetchUs = kvBytes / (diskGBps * 1e3)
  const readUs = hiddenBytes / (diskGBps * 1e3)
  const gemmUs = flops / (gemmTflops * 1e6)
  const saved = kvBytes - hiddenBytes
  // saved / rate = gemm time: the rate (bytes per µs = GB/s / 1e3) where both ways take as long.
  const crossoverGBps = saved <= 0 ? 0 : gemmUs === 0 ? Number.POSITIVE_INFINITY : saved / gemmUs / 1e3
  return { kvBytes, hiddenBytes, flops, fetchUs, readUs, gemmUs, pays: readUs + gemmUs < fetchUs, crossoverGBps }
}

/** Whether a policy's recompute setting recomputes this model's disk chunks. */
export const recomputesFor = (p: { readonly mode: "off" | "auto" | "always"; readonly diskGBps: number; readonly gemmTflops: number } | undefined, c: RecomputeShape): boolean =>
  p !== undefined && (p.mode === "always" || (p.mode === "auto" && recomputeCost(c, p.diskGBps, p.gemmTflops).pays))
