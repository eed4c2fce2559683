// Chunk selection (the `topk` selection policy of DESIGN §4): from per-chunk scores, keep
// the first `sinkTokens` and the last `recentTokens` of the context always, then the
// highest-scoring chunks while the token budget allows. A pure function over a snapshot:
// the tiered cache turns its result into the block list of attn_decode.

export interface ChunkView {
  /** Position of the chunk's first token. */
  readonly start: number
  readonly tokens: number
  /** Upper bound of the chunk's attention logits (score.wgsl), or -Infinity if unknown. */
  readonly score: number
}

export interface TopK {
  /** Most tokens to attend; a fraction of the context when `budgetFraction` is given instead. */
  readonly budgetTokens?: number
  readonly budgetFraction?: number
  readonly sinkTokens: number
  readonly recentTokens: number
}

export interface Selection {
  /** Indices into the chunk list, in position order. */
  readonly chunks: number[]
  readonly tokens: number
  /** True when sink + recent alone exceed the budget (they are kept anyway). */
  readonly overBudget: boolean
}

export const selectTopK = (chunks: ReadonlyArray<ChunkView>, policy: TopK): Selection => {
  const total = chunks.reduce((n, c) => n + c.tokens, 0)
  const end = chunks.length > 0 ? chunks[chunks.length - 1].start + chunks[chunks.length - 1].tokens : 0
  const budget = Math.floor(policy.budgetTokens ?? (policy.budgetFraction ?? 1) * total)
  const chosen = new Set<number>()
  let tokens = 0
  chunks.forEach((c, i) => {
    const sink = c.start < policy.sinkTokens
    const recent = c.start + c.tokens > end - policy.recentTokens
    if (sink || recent) {
      chosen.add(i)
      tokens += c.tokens
    }
  })
  const overBudget = tokens > budget
  // Highest score first; ties to the later chunk (closer to the query).
  const rest = chunks.map((_, i) => i).filter((i) => !chosen.has(i))
  rest.sort((a, b) => chunks[b].score - chunks[a].score || b - a)
  for (const i of rest) {
    if (tokens + chunks[i].tokens > budget) continue
    chosen.add(i)
    tokens += chunks[i].tokens
  }
  return { chunks: [...chosen].sort((a, b) => a - b), tokens, overBudget }
}
