// Who may run on the gpu-executor now: batched runs, each holding a place in the batch and
// the GPU KV bytes it reserved, admitted in arrival order while places and bytes last (the
// first of an empty batch always: a run too large for the budget alone is refused by its KV
// manager, not left waiting forever); and serial runs, each alone once the batch is empty,
// with new batched runs held back from the moment one waits (so a stream of batched runs
// cannot starve it). A run reserves either a number of bytes (all of its KV on the GPU) or a
// share of the budget (a tiered lane, whose layout is fixed when it is built): the free bytes
// split among the runs that can start now, each at least a lane's minimum, so a lone run gets
// the whole budget and a budget that cannot fit B lanes runs fewer. Pure bookkeeping with
// promises; the gpu-executor's batch (actors/executor-batch.ts) alone calls it. A tiered
// run's share may change while it runs (`resize`: actors/lane-reshare.ts moves lanes to give
// a run that waits for budget alone its share).

/** What a waiting run asks for: fixed bytes, or a share of at least `minBytes`. */
type Ask = { readonly bytes: number } | { readonly minBytes: number }

export class KvAdmission {
  /** Batched runs admitted and not yet released, and the GPU bytes they reserved. */
  private held = 0
  private reserved = 0
  private readonly waiting: Array<{ readonly ask: Ask; readonly wake: (bytes: number) => void }> = []
  private serialWaiting = 0
  private serialRunning = false
  private wakeSerial: Array<() => void> = []
  private wakeScheduled = false

  constructor(
    /** Most batched runs at once. */
    readonly places: number,
    /** GPU bytes the batched runs may reserve together (undefined: no limit). */
    readonly budgetBytes: number | undefined,
  ) {}

  /** Resolves when a batched run reserving `bytes` may start; `release(bytes)` when it ends. */
  admit(bytes: number): Promise<void> {
    return new Promise((wake) => {
      this.waiting.push({ ask: { bytes }, wake: () => wake() })
      this.wakeWaiting()
    })
  }

  /**
   * Resolves with the GPU bytes a batched run gets when it may start: the free budget split
   * evenly among the waiting runs that can start with it (places left, each at least
   * `minBytes`); the whole budget for a lone run; the free bytes, however few, for the first
   * run of an empty batch; undefined without a budget. `release(bytes)` with them when it ends.
   * Runs that arrive in the same turn of the event loop are split together.
   */
  admitShare(minBytes: number): Promise<number | undefined> {
    return new Promise((wake) => {
      this.waiting.push({ ask: { minBytes }, wake: (bytes) => wake(this.budgetBytes === undefined ? undefined : bytes) })
      if (this.wakeScheduled) return
      this.wakeScheduled = true
      setImmediate(() => {
        this.wakeScheduled = false
        this.wakeWaiting()
      })
    })
  }

  /** A running run's reservation changes from `from` to `to` bytes (a tiered lane moved to another share). */
  resize(from: number, to: number): void {
    this.reserved += to - from
    this.wakeWaiting()
  }

  /**
   * The least share the first waiting run asks for, where it waits for budget alone (a place
   * is free, no serial run holds the executor or waits, and the free budget is below its
   * minimum): what running lanes may give back. Else undefined.
   */
  get blockedShare(): number | undefined {
    const first = this.waiting[0]
    if (!first || !("minBytes" in first.ask) || this.budgetBytes === undefined) return undefined
    if (this.serialRunning || this.serialWaiting > 0 || this.held >= this.places || this.held === 0) return undefined
    return this.budgetBytes - this.reserved < first.ask.minBytes ? first.ask.minBytes : undefined
  }

  release(bytes: number | undefined): void {
    this.held--
    this.reserved -= bytes ?? 0
    if (this.held === 0) this.wakeSerials()
    this.wakeWaiting()
  }

  /** Resolves when a serial run may start: alone, the batch empty; `leaveSerial` when it ends. */
  async enterSerial(): Promise<void> {
    this.serialWaiting++
    try {
      while (this.serialRunning || this.held > 0) await new Promise<void>((r) => this.wakeSerial.push(r))
    } finally {
      this.serialWaiting--
    }
    this.serialRunning = true
  }

  leaveSerial(): void {
    this.serialRunning = false
    this.wakeSerials()
    this.wakeWaiting()
  }

  get stats(): { readonly running: number; readonly waiting: number; readonly reservedBytes: number } {
    return { running: this.held, waiting: this.waiting.length, reservedBytes: this.reserved }
  }

  /** The bytes the first waiting run gets now, or undefined while it must wait. */
  private grant(ask: Ask): number | undefined {
    if (this.serialRunning || this.serialWaiting > 0 || this.held >= this.places) return undefined
    const budget = this.budgetBytes
    if ("bytes" in ask) return this.held === 0 || budget === undefined || this.reserved + ask.bytes <= budget ? ask.bytes : undefined
    if (budget === undefined) return 0
    const free = budget - this.reserved
    if (this.held === 0 && free < ask.minBytes) return free
    const runs = Math.min(this.places - this.held, this.waiting.length, Math.floor(free / Math.max(1, ask.minBytes)))
    return runs >= 1 ? Math.floor(free / runs) : undefined
  }

  private wakeWaiting(): void {
    while (this.waiting.length > 0) {
      const bytes = this.grant(this.waiting[0].ask)
      if (bytes === undefined) return
      const w = this.waiting.shift()!
      this.held++
      this.reserved += bytes
      w.wake(bytes)
    }
  }

  private wakeSerials(): void {
    const wake = this.wakeSerial
    this.wakeSerial = []
    for (const w of wake) w()
  }
}
