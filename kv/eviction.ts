// Eviction policies of the host arena (and of any tier that keeps chunks by key): data
// plus a pure function. Contract, as vLLM's `evict(n, protected)`: select() returns keys
// whose bytes add up to at least `needBytes`, none of them pinned, or null, in which case
// the caller evicts nothing. Policies never mutate the view; ties break by key so the
// order is deterministic.

/** A chunk key as the arena keys it, e.g. chunkKey("doc", 3, 17) = "doc/3/17". */
export type Key = string

export const chunkKey = (session: string, layer: number, chunk: number): Key => `${session}/${layer}/${chunk}`

/** What a policy sees of one entry. Times are ticks of the arena's logical clock. */
export interface EntryView {
  readonly key: Key
  readonly length: number
  /** Tick of the store or the latest load. */
  readonly lastAccess: number
  /** 1 for the store plus 1 per load. */
  readonly accesses: number
  /** The caller's importance of the chunk (>= 0; negative counts as 0), set at `scoredAt`. */
  readonly score: number
  readonly scoredAt: number
}

export interface EvictionPolicy {
  readonly name: string
  readonly select: (view: ReadonlyArray<EntryView>, needBytes: number, pinned: ReadonlySet<Key>) => ReadonlyArray<Key> | null
}

/**
 * Unpinned entries taken in eviction order (lowest `primary` first, then least recently
 * used, then by key) until they free `needBytes`; null if all of them together cannot.
 * A heap, not a sort: a store that evicts one chunk from n costs O(n), not O(n log n).
 */
export const takeInOrder = (
  view: ReadonlyArray<EntryView>,
  needBytes: number,
  pinned: ReadonlySet<Key>,
  primary: (e: EntryView) => number,
): Key[] | null => {
  if (needBytes <= 0) return []
  const entries: EntryView[] = []
  let available = 0
  for (const e of view) {
    if (pinned.size > 0 && pinned.has(e.key)) continue
    entries.push(e)
    available += e.length
  }
  if (available < needBytes) return null
  const n = entries.length
  const rank = new Float64Array(n) // (candidate) primary key
  const last = new Float64Array(n) // (candidate) lastAccess
  const heap = new Int32Array(n) // min-heap of candidate indices
  for (let i = 0; i < n; i++) {
    rank[i] = primary(entries[i]!)
    last[i] = entries[i]!.lastAccess
    heap[i] = i
  }
  const before = (a: number, b: number): boolean =>
    rank[a]! !== rank[b]! ? rank[a]! < rank[b]! : last[a]! !== last[b]! ? last[a]! < last[b]! : entries[a]!.key < entries[b]!.key
  const siftDown = (i: number, size: number): void => {
    const item = heap[i]!
    for (;;) {
      let c = 2 * i + 1
      if (c >= size) break
      if (c + 1 < size && before(heap[c + 1]!, heap[c]!)) c++
      if (!before(heap[c]!, item)) break
      heap[i] = heap[c]!
      i = c
    }
    heap[i] = item
  }
  for (let i = (n >> 1) - 1; i >= 0; i--) siftDown(i, n)
  const out: Key[] = []
  let freed = 0
  for (let size = n; freed < needBytes; ) {
    const top = entries[heap[0]!]!
    out.push(top.key)
    freed += top.length
    heap[0] = heap[--size]!
    siftDown(0, size)
  }
  return out
}

/** Least recently used first. */
export const lru: EvictionPolicy = {
  name: "lru",
  select: (view, needBytes, pinned) => takeInOrder(view, needBytes, pinned, (e) => e.lastAccess),
}

/** Least frequently used first; among equals, least recently used. */
export const lfu: EvictionPolicy = {
  name: "lfu",
  select: (view, needBytes, pinned) => takeInOrder(view, needBytes, pinned, (e) => e.accesses),
}

/**
 * Lowest decayed importance first: score * 2^(-(now - scoredAt) / halfLifeTicks). Every
 * entry decays by the same factor per tick, so the order needs no `now`: it ranks by
 * log2(score) + scoredAt / halfLifeTicks. Among equals, least recently used.
 */
export const importancePolicy = (options: { readonly halfLifeTicks: number }): EvictionPolicy => ({
  name: "importance",
  select: (view, needBytes, pinned) =>
    takeInOrder(view, needBytes, pinned, (e) => (e.score > 0 ? Math.log2(e.score) : -Infinity) + e.scoredAt / options.halfLifeTicks),
})

export const importance: EvictionPolicy = importancePolicy({ halfLifeTicks: 1024 })

/** The policies a PolicySpec may name. */
export const evictionPolicies = { lru, lfu, importance } as const satisfies Record<string, EvictionPolicy>
export type EvictionPolicyName = keyof typeof evictionPolicies

export const isEvictionPolicyName = (name: string): name is EvictionPolicyName => Object.hasOwn(evictionPolicies, name)
