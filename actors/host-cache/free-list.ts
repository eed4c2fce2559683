// The free space of the host arena: a sorted list of disjoint, coalesced holes in
// [0, capacity). Invariants: holes never touch or overlap (neighbours merge on release)
// and none is empty. Only HostArena changes it; planning works on clone()s.

/** A byte range of the arena. */
export interface Extent {
  readonly offset: number
  readonly length: number
}

export class FreeList {
  private constructor(
    readonly capacity: number,
    private readonly holes: Extent[],
  ) {}

  /** All of [0, capacity) free. */
  static empty(capacity: number): FreeList {
    return new FreeList(capacity, capacity > 0 ? [{ offset: 0, length: capacity }] : [])
  }

  /** The complement of `used` (disjoint extents, any order) in [0, capacity). */
  static around(capacity: number, used: ReadonlyArray<Extent>): FreeList {
    const sorted = [...used].sort((a, b) => a.offset - b.offset)
    const holes: Extent[] = []
    let cursor = 0
    for (const u of sorted) {
      if (u.offset > cursor) holes.push({ offset: cursor, length: u.offset - cursor })
      cursor = Math.max(cursor, u.offset + u.length)
    }
    if (cursor < capacity) holes.push({ offset: cursor, length: capacity - cursor })
    return new FreeList(capacity, holes)
  }

  clone(): FreeList {
    return new FreeList(this.capacity, [...this.holes])
  }

  get freeBytes(): number {
    let total = 0
    for (const h of this.holes) total += h.length
    return total
  }

  get largest(): number {
    let best = 0
    for (const h of this.holes) best = Math.max(best, h.length)
    return best
  }

  /** Holes in address order (a copy). */
  list(): Extent[] {
    return [...this.holes]
  }

  /** First-fit: takes `length` bytes from the front of the lowest hole that holds them; null if none does. */
  alloc(length: number): number | null {
    for (let i = 0; i < this.holes.length; i++) {
      const h = this.holes[i]!
      if (h.length < length) continue
      if (h.length === length) this.holes.splice(i, 1)
      else this.holes[i] = { offset: h.offset + length, length: h.length - length }
      return h.offset
    }
    return null
  }

  /** Returns an extent to the free space, merging it with the holes it touches. */
  release(extent: Extent): void {
    if (extent.length === 0) return
    // Index of the first hole past the extent.
    let lo = 0
    let hi = this.holes.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (this.holes[mid]!.offset < extent.offset) lo = mid + 1
      else hi = mid
    }
    let offset = extent.offset
    let end = extent.offset + extent.length
    let first = lo
    let count = 0
    const before = this.holes[lo - 1]
    if (before !== undefined && before.offset + before.length === offset) {
      offset = before.offset
      first = lo - 1
      count++
    }
    const after = this.holes[lo]
    if (after !== undefined && after.offset === end) {
      end = after.offset + after.length
      count++
    }
    this.holes.splice(first, count, { offset, length: end - offset })
  }
}
