// Planning a compaction of the host arena: a pure function from the current layout to
// a list of moves. Movable extents only ever slide down, in address order, around the
// fixed (pinned) ones, and sliding stops as soon as a hole of the wanted size opens, so a
// compaction moves no more bytes than it must. Applying moves in order is memmove-safe.

import type { Extent } from "./free-list.ts"

export interface Placed<K> extends Extent {
  readonly key: K
}

export interface Move<K> {
  readonly key: K
  readonly from: number
  readonly to: number
  readonly length: number
}

export interface CompactionPlan<K> {
  readonly moves: ReadonlyArray<Move<K>>
  /** Where a hole of at least `need` bytes starts once the moves are applied. */
  readonly hole: number
}

/**
 * Moves that open a hole of `need` bytes in [0, capacity), or null when even sliding every
 * movable extent down leaves none (the fixed extents fragment the arena too much).
 * Extents within each list must be disjoint; the lists together too.
 */
export const planCompaction = <K>(
  movable: ReadonlyArray<Placed<K>>,
  fixed: ReadonlyArray<Extent>,
  capacity: number,
  need: number,
): CompactionPlan<K> | null => {
  const mov = [...movable].sort((a, b) => a.offset - b.offset)
  const fix = [...fixed].sort((a, b) => a.offset - b.offset)
  const moves: Move<K>[] = []
  let cursor = 0
  let fi = 0
  /** Steps the cursor past fixed extents that cover it, and fi to the first fixed extent after it. */
  const skipFixed = () => {
    while (fi < fix.length && fix[fi]!.offset <= cursor) {
      cursor = Math.max(cursor, fix[fi]!.offset + fix[fi]!.length)
      fi++
    }
  }
  for (const m of mov) {
    skipFixed()
    const obstacle = Math.min(m.offset, fi < fix.length ? fix[fi]!.offset : capacity)
    if (obstacle - cursor >= need) return { moves, hole: cursor }
    // The lowest place at or above the cursor that overlaps no fixed extent; at most m.offset.
    let to = cursor
    for (let j = fi; j < fix.length; j++) {
      const f = fix[j]!
      if (to + m.length <= f.offset) break
      if (to < f.offset + f.length) to = f.offset + f.length
    }
    if (to !== m.offset) moves.push({ key: m.key, from: m.offset, to, length: m.length })
    cursor = to + m.length
  }
  // Past the last movable extent: the gaps between the remaining fixed extents.
  for (;;) {
    skipFixed()
    const obstacle = fi < fix.length ? fix[fi]!.offset : capacity
    if (obstacle - cursor >= need) return { moves, hole: cursor }
    if (fi >= fix.length) return null
    cursor = obstacle
  }
}
