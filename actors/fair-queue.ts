// An actor's mailbox order: one FIFO per key (a NATS user) and a round robin over the keys
// that have messages, under one bound on the total. With a single key it is a plain FIFO.
// Pure and synchronous; the actor runtime (actors/actor.ts) alone changes it.

export class FairQueue<T> {
  private readonly byKey = new Map<string, T[]>()
  /** Keys with messages, in the order they are served; the head is served next. */
  private readonly turn: string[] = []
  private count = 0

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.count
  }

  /** Appends `item` to its key's FIFO; false (nothing changed) when the queue is full. */
  offer(key: string, item: T): boolean {
    if (this.count >= this.capacity) return false
    const fifo = this.byKey.get(key)
    if (fifo) fifo.push(item)
    else {
      this.byKey.set(key, [item])
      this.turn.push(key)
    }
    this.count++
    return true
  }

  /** The oldest message of the key whose turn it is; that key goes to the back of the turn. */
  take(): T | undefined {
    const key = this.turn.shift()
    if (key === undefined) return undefined
    const fifo = this.byKey.get(key)!
    const item = fifo.shift()!
    if (fifo.length > 0) this.turn.push(key)
    else this.byKey.delete(key)
    this.count--
    return item
  }

  /** Everything queued, in serving order, leaving the queue empty. */
  takeAll(): T[] {
    const out: T[] = []
    for (let item = this.take(); item !== undefined; item = this.take()) out.push(item)
    return out
  }

  /** Messages waiting per key. */
  queuedByKey(): Record<string, number> {
    return Object.fromEntries([...this.byKey].map(([k, fifo]) => [k, fifo.length]))
  }
}
