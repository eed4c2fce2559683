// Who may run on the gpu-executor now: batched runs, each holding a place in the batch and
// the GPU KV bytes it reserved, admitted in arrival order while places and bytes last (the
// first of an empty batch always: a run too large for the budget alone is refused by its KV
// manager, not left waiting forever); and serial runs, each alone once the batch is empty,
// with new batched runs held back from the moment one waits (so a stream of batched runs
// cannot starve it). Pure bookkeeping with promises; the gpu-executor's batch
// (actors/executor-batch.ts) alone calls it.

export class KvAdmission {
  /** Batched runs admitted and not yet released, and the GPU bytes they reserved. */
  private held = 0
  private reserved = 0
  private readonly waiting: Array<{ readonly bytes: number; readonly wake: () => void }> = []
  private serialWaiting = 0
  private serialRunning = false
  private wakeSerial: Array<() => void> = []

  constructor(
    /** Most batched runs at once. */
    readonly places: number,
    /** GPU bytes the batched runs may reserve together (undefined: no limit). */
    readonly budgetBytes: number | undefined,
  ) {}

  /** Resolves when a batched run reserving `bytes` may start; `release(bytes)` when it ends. */
  admit(bytes: number): Promise<void> {
    return new Promise((wake) => {
      this.waiting.push({ bytes, wake })
      this.wakeWaiting()
    })
  }

  release(bytes: number): void {
    this.held--
    this.reserved -= bytes
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

  private fits(bytes: number): boolean {
    if (this.serialRunning || this.serialWaiting > 0 || this.held >= this.places) return false
    return this.held === 0 || this.budgetBytes === undefined || this.reserved + bytes <= this.budgetBytes
  }

  private wakeWaiting(): void {
    while (this.waiting.length > 0 && this.fits(this.waiting[0].bytes)) {
      const w = this.waiting.shift()!
      this.held++
      this.reserved += w.bytes
      w.wake()
    }
  }

  private wakeSerials(): void {
    const wake = this.wakeSerial
    this.wakeSerial = []
    for (const w of wake) w()
  }
}
