// Host-side sampling for top-k / top-p (the GPU handles greedy and plain temperature):
// temperature scaling, top-k, then nucleus (top-p) over the sorted candidates, drawn with a
// seeded generator so that (seed, step) reproduces a choice exactly.

export interface Sampling {
  /** 0 = greedy. */
  readonly temperature: number
  /** 0 = no top-k limit. */
  readonly topK?: number
  /** 1 = no nucleus limit. */
  readonly topP?: number
  readonly seed?: number
}

/** mulberry32 over a 32-bit state: small, fast and good enough for sampling. */
export const seededUniform = (seed: number, step: number): number => {
  let a = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(step + 1, 0x85ebca6b)) >>> 0
  a = (a + 0x6d2b79f5) >>> 0
  let t = Math.imul(a ^ (a >>> 15), 1 | a)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

export const argmaxHost = (logits: Float32Array): number => {
  let best = 0
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i
  return best
}

/** Chooses a token from logits under the sampling options. */
export const sampleHost = (logits: Float32Array, s: Sampling, step: number): number => {
  if (s.temperature <= 0) return argmaxHost(logits)
  const topK = s.topK && s.topK > 0 ? Math.min(s.topK, logits.length) : logits.length
  const topP = s.topP ?? 1
  // Candidates sorted by logit (descending, ties by id), cut to top-k.
  const order = Array.from({ length: logits.length }, (_, i) => i)
  order.sort((a, b) => logits[b] - logits[a] || a - b)
  const cand = order.slice(0, topK)
  const max = logits[cand[0]]
  const weights = cand.map((i) => Math.exp((logits[i] - max) / s.temperature))
  const total = weights.reduce((a, b) => a + b, 0)
  // Nucleus: the smallest prefix whose probability reaches top_p.
  let keep = cand.length
  if (topP < 1) {
    let acc = 0
    for (let i = 0; i < cand.length; i++) {
      acc += weights[i] / total
      if (acc >= topP) {
        keep = i + 1
        break
      }
    }
  }
  const kept = weights.slice(0, keep)
  const sum = kept.reduce((a, b) => a + b, 0)
  let u = seededUniform(s.seed ?? 0, step) * sum
  for (let i = 0; i < keep; i++) {
    u -= kept[i]
    if (u < 0) return cand[i]
  }
  return cand[keep - 1]
}
