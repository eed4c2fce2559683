// Which stored sessions to evict for the disk budget (--kv-disk-budget) when sessions share
// chunks: a chunk linked by several sessions (a shared prefix, DiskStore.linkChunks) lies on
// disk once, so it is counted once and freed only with the last session holding it. Counting
// it in each session instead made a shared document look several times its size and evicted
// sessions to free bytes their eviction did not free. Pure: the caller reads where each
// session's chunks lie and drops the sessions named.

export interface SessionChunks {
  readonly id: string
  /** ISO time of its last use (least recently used go first). */
  readonly lastUsed: string
  /** Where its chunks lie ("file@offset", as DiskStore entries say) and their lengths. */
  readonly places: ReadonlyMap<string, number>
}

/**
 * The sessions to evict until the bytes left fit `budget`, never a `pinned` one: the least
 * recently used whose eviction frees bytes now (a chunk no other session holds), else the
 * least recently used holding bytes that no pinned session holds (freed together with a
 * later one); none that could free nothing. May leave the total over the budget.
 */
export const evictionPlan = (sessions: ReadonlyArray<SessionChunks>, budget: number, pinned: (id: string) => boolean): string[] => {
  const holders = new Map<string, number>()
  const lengths = new Map<string, number>()
  const pinnedPlaces = new Set<string>()
  for (const s of sessions) {
    for (const [place, n] of s.places) {
      holders.set(place, (holders.get(place) ?? 0) + 1)
      lengths.set(place, n)
      if (pinned(s.id)) pinnedPlaces.add(place)
    }
  }
  let total = 0
  for (const n of lengths.values()) total += n
  const left = sessions.filter((s) => !pinned(s.id)).sort((x, y) => (x.lastUsed < y.lastUsed ? -1 : x.lastUsed > y.lastUsed ? 1 : 0))
  const freesNow = (s: SessionChunks) => [...s.places.keys()].some((place) => holders.get(place) === 1)
  const freesLater = (s: SessionChunks) => [...s.places.keys()].some((place) => !pinnedPlaces.has(place))
  const gone: string[] = []
  while (total > budget) {
    let at = left.findIndex(freesNow)
    if (at < 0) at = left.findIndex(freesLater)
    if (at < 0) break
    const [s] = left.splice(at, 1)
    for (const [place, n] of s.places) {
      const h = holders.get(place)! - 1
      holders.set(place, h)
      if (h === 0) total -= n
    }
    gone.push(s.id)
  }
  return gone
}
