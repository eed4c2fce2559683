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
 * No sort: where the entries needed are few against the candidates (a decode layer's misses
 * among a GPU cache's slots: ~48 of 3506 at 8B 128K), one pass keeps the k first in a
 * bounded max-heap, k the most entries `needBytes` can take (it over the smallest length);
 * a heap over all of them cost ~1 us an entry, twice a layer (plan and prefetch), ~5 ms a
 * layer on a loaded 2-core host. Otherwise a min-heap of all candidates: O(n) to build.
 */
export const takeInOrder = (
  view: ReadonlyArray<EntryView>,
  needBytes: number,
  pinned: ReadonlySet<Key>,
  primary: (e: EntryView) => number,
): Key[] | null => {
  if (needBytes <= 0) return []
  const n = view.length
  const { rank, candidates } = scratchFor(n)
  let count = 0
  let available = 0
  let shortest = Infinity
  for (let i = 0; i < n; i++) {
    const e = view[i]!
    if (pinned.size > 0 && pinned.has(e.key)) continue
    candidates[count++] = i
    rank[i] = primary(e)
    available += e.length
    if (e.length < shortest) shortest = e.length
  }
  if (available < needBytes) return null
  const before = (a: number, b: number): boolean => {
    if (rank[a]! !== rank[b]!) return rank[a]! < rank[b]!
    const x = view[a]!
    const y = view[b]!
    return x.lastAccess !== y.lastAccess ? x.lastAccess < y.lastAccess : x.key < y.key
  }
  const most = shortest > 0 ? Math.ceil(needBytes / shortest) : count
  const order = most * 4 < count ? firstInOrder(candidates, count, most, rank, before) : allInOrder(candidates, count, before)
  const out: Key[] = []
  let freed = 0
  for (let i = 0; freed < needBytes; i++) {
    const e = view[order(i)]!
    out.push(e.key)
    freed += e.length
  }
  return out
}

/** takeInOrder's scratch: (view index) primary key of candidates, and the candidates' view indices; reused (it runs to completion, never nested). */
let scratch = { rank: new Float64Array(1024), candidates: new Int32Array(1024) }
const scratchFor = (n: number) => {
  if (scratch.rank.length < n) scratch = { rank: new Float64Array(n * 2), candidates: new Int32Array(n * 2) }
  return scratch
}

/** A min-heap of all `count` candidates; the i-th call (i = 0, 1, ...) gives the i-th in order. */
const allInOrder = (candidates: Int32Array, count: number, before: (a: number, b: number) => boolean): ((i: number) => number) => {
  const heap = candidates
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
  for (let i = (count >> 1) - 1; i >= 0; i--) siftDown(i, count)
  let size = count
  return () => {
    const top = heap[0]!
    heap[0] = heap[--size]!
    siftDown(0, size)
    return top
  }
}

/** The first `k` of the candidates in order, kept in one pass by a bounded max-heap and sorted. */
const firstInOrder = (candidates: Int32Array, count: number, k: number, rank: Float64Array, before: (a: number, b: number) => boolean): ((i: number) => number) => {
  const heap = new Int32Array(k) // max-heap: the last in order on top
  let size = 0
  const siftDown = (i: number): void => {
    const item = heap[i]!
    for (;;) {
      let c = 2 * i + 1
      if (c >= size) break
      if (c + 1 < size && before(heap[c]!, heap[c + 1]!)) c++
      if (!before(item, heap[c]!)) break
      heap[i] = heap[c]!
      i = c
    }
    heap[i] = item
  }
  // Once the heap is full, most entries come after its top by their primary key alone: no call for those.
  for (let j = 0; j < count; j++) {
    const x = candidates[j]!
    if (size < k) {
      let i = size++
      while (i > 0) {
        const p = (i - 1) >> 1
        if (!before(heap[p]!, x)) break
        heap[i] = heap[p]!
        i = p
      }
      heap[i] = x
    } else if (rank[x]! < rank[heap[0]!]! || (rank[x]! === rank[heap[0]!]! && before(x, heap[0]!))) {
      heap[0] = x
      siftDown(0)
    }
  }
  const sorted = Array.from(heap.subarray(0, size)).sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0))
  return (i) => sorted[i]!
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
