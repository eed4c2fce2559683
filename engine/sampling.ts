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

/**
 * The seeded draw shared by both host paths: `ids`/`logits` are candidates sorted by logit
 * (descending, ties by id), `total` the weight of the whole distribution they come from,
 * in units of exp((l - logits[0]) / T). Applies top-p against `total`; returns undefined
 * when the candidates hold less than top-p of the mass (the caller then needs them all).
 */
const drawSorted = (ids: ArrayLike<number>, logits: ArrayLike<number>, total: number, s: Sampling, step: number, complete: boolean): number | undefined => {
  const topP = s.topP ?? 1
  const weights = Array.from({ length: ids.length }, (_, i) => Math.exp((logits[i] - logits[0]) / s.temperature))
  let keep = ids.length
  if (topP < 1) {
    let acc = 0
    keep = -1
    for (let i = 0; i < ids.length; i++) {
      acc += weights[i] / total
      if (acc >= topP) {
        keep = i + 1
        break
      }
    }
    if (keep < 0) {
      if (!complete) return undefined
      keep = ids.length
    }
  } else if (!complete) {
    return undefined
  }
  let sum = 0
  for (let i = 0; i < keep; i++) sum += weights[i]
  let u = seededUniform(s.seed ?? 0, step) * sum
  for (let i = 0; i < keep; i++) {
    u -= weights[i]
    if (u < 0) return ids[i]
  }
  return ids[keep - 1]
}

const sortByLogit = (ids: number[], logit: (id: number) => number) => ids.sort((a, b) => logit(b) - logit(a) || a - b)

/** Chooses a token from logits under the sampling options. */
export const sampleHost = (logits: Float32Array, s: Sampling, step: number): number => {
  if (s.temperature <= 0) return argmaxHost(logits)
  const topK = s.topK && s.topK > 0 ? Math.min(s.topK, logits.length) : logits.length
  const cand = sortByLogit(Array.from({ length: logits.length }, (_, i) => i), (i) => logits[i]).slice(0, topK)
  const values = cand.map((i) => logits[i])
  let total = 0
  for (const v of values) total += Math.exp((v - values[0]) / s.temperature)
  return drawSorted(cand, values, total, s, step, true)!
}

/**
 * The same choice from GPU-chosen candidates (ids and raw logits, any order): with top-k,
 * the candidates are the top k; with top-p alone, `lse` = (max, sum of exp(l / T - max))
 * over the whole vocabulary tells whether they hold the nucleus. Undefined: read all logits.
 */
export const sampleCandidates = (
  ids: ArrayLike<number>,
  logits: ArrayLike<number>,
  lse: { readonly max: number; readonly sumExp: number },
  s: Sampling,
  step: number,
): number | undefined => {
  const value = new Map<number, number>()
  for (let i = 0; i < ids.length; i++) value.set(ids[i], logits[i])
  const order = sortByLogit([...value.keys()], (id) => value.get(id)!)
  const values = order.map((id) => value.get(id)!)
  if (order.length === 0) return undefined
  const topK = s.topK && s.topK > 0
  let total = 0
  if (topK) for (const v of values) total += Math.exp((v - values[0]) / s.temperature)
  else total = lse.sumExp * Math.exp(lse.max - values[0] / s.temperature)
  return drawSorted(order, values, total, s, step, topK === true)
}
