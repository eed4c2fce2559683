// The errors of the tiered KV cache that its callers tell apart by `code`: a budget or
// layout that cannot hold what a policy needs (kv_budget_too_small), and a tier that
// cannot give back a chunk's bytes (chunk_corrupt, chunk_missing, disk_full, ...).

export class KvBudgetError extends Error {
  readonly code = "kv_budget_too_small"
}

export class KvTierError extends Error {
  constructor(
    readonly code: "chunk_corrupt" | "chunk_missing" | "disk_full" | "kv_dir_unavailable" | "io_failed",
    message: string,
  ) {
    super(message)
  }
}

/** Disk-store failures as tier errors with stable codes; anything else passes through. */
export const tierErrorOf = (e: unknown): Error => {
  const code = (e as { code?: string }).code
  const message = (e as Error).message ?? String(e)
  switch (code) {
    case "chunk_corrupt":
    case "disk_full":
    case "kv_dir_unavailable":
    case "io_failed":
      return new KvTierError(code, message)
    case "chunk_missing":
    case "abstract_missing":
      return new KvTierError("chunk_missing", message)
    default:
      return e instanceof Error ? e : new Error(message)
  }
}
