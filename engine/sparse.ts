// Selection budgets shared by the managers that attend a part of the context (quest, h2o,
// the tiered cache): the policy's sink, recent and budget, and how many tokens the budget
// allows at a given length. Pure data and one pure function.

export interface SparsePolicy {
  /** Most tokens one KV head attends per step (sink and recent included)... */
  readonly budgetTokens?: number
  /** ... or this fraction of the context at each step. */
  readonly budgetFraction?: number
  /** The first tokens of the context, always attended. */
  readonly sinkTokens: number
  /** The last tokens, always attended (the partial last block always is). */
  readonly recentTokens: number
}

/**
 * Tokens a selection policy attends per step at `length` tokens of context: its fixed
 * budget, or its fraction of the context but at least `unit` (one block or chunk).
 */
export const budgetAt = (p: { readonly budgetTokens?: number; readonly budgetFraction?: number }, length: number, unit: number): number =>
  p.budgetTokens ?? Math.max(unit, Math.floor((p.budgetFraction ?? 1) * length))
