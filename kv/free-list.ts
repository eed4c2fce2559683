// The free space of the host arena: a sorted list of disjoint holes in [0, capacity),
// cut into slabs of `slabBytes` (one ArrayBuffer each). Invariants: no hole is empty or
// crosses a slab boundary, and holes within a slab never touch (neighbours merge on
// release), so first-fit never hands out a range split across two buffers. Only
// HostArena changes it; planning works on clone()s.

/** A byte range of the arena. */
export interface Extent {
  readonly offset: number
  readonly length: number
}

export class FreeList {
  private constructor(
    readonly capacity: number,
    readonly slabBytes: number,
    private readonly holes: Extent[],
  ) {}

  /** All of [0, capacity) free. */
  static empty(capacity: number, slabBytes = capacity): FreeList {
    return FreeList.around(capacity, [], slabBytes)
  }

  /** The complement of `used` (disjoint extents, any order) in [0, capacity), cut at slab boundaries. */
  static around(capacity: number, used: ReadonlyArray<Extent>, slabBytes = capacity): FreeList {
    const sorted = [...used].sort((a, b) => a.offset - b.offset)
    const holes: Extent[] = []
    const add = (from: number, to: number) => {
      for (let at = from; at < to; ) {
        const end = Math.min(to, (Math.floor(at / slabBytes) + 1) * slabBytes)
        holes.push({ offset: at, length: end - at })
        at = end
      }
    }
    let cursor = 0
    for (const u of sorted) {
      add(cursor, u.offset)
      cursor = Math.max(cursor, u.offset + u.length)
    }
    add(cursor, capacity)
    return new FreeList(capacity, slabBytes, holes)
  }

  clone(): FreeList {
    return new FreeList(this.capacity, this.slabBytes, [...this.holes])
  }

  get freeBytes(): number {
    let total = 0
    for (const h of this.holes) total += h.length
    return total
  }

  /** Holes in address order (a copy). */
  list(): Extent[] {
    return [...this.holes]
  }

  /** Whether some hole holds `length` bytes (what alloc would find, without taking it). */
  fits(length: number): boolean {
    for (const h of this.holes) if (h.length >= length) return true
    return false
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

  /** Returns an extent (within one slab) to the free space, merging it with the holes it touches in its slab. */
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
    if (before !== undefined && before.offset + before.length === offset && offset % this.slabBytes !== 0) {
      offset = before.offset
      first = lo - 1
      count++
    }
    const after = this.holes[lo]
    if (after !== undefined && after.offset === end && end % this.slabBytes !== 0) {
      end = after.offset + after.length
      count++
    }
    this.holes.splice(first, count, { offset, length: end - offset })
  }
}
