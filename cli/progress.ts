// A progress bar on stderr for loading and prefill, only when stderr is a terminal.
import cliProgress from "cli-progress"

export class Progress {
  private bar: cliProgress.SingleBar | undefined
  private value = 0

  constructor(private readonly enabled: boolean) {}

  start(label: string, total: number): void {
    this.stop()
    if (!this.enabled) return
    this.value = 0
    this.bar = new cliProgress.SingleBar(
      { format: `${label.padEnd(8)} [{bar}] {percentage}% {value}/{total}`, stream: process.stderr, hideCursor: true, clearOnComplete: true },
      cliProgress.Presets.shades_classic,
    )
    this.bar.start(total, 0)
  }

  /** Adds to the total as well when it grows past it (bytes of weights of unknown size). */
  add(n: number): void {
    if (!this.bar) return
    this.value += n
    if (this.value > this.bar.getTotal()) this.bar.setTotal(this.value)
    this.bar.update(this.value)
  }

  update(value: number): void {
    this.bar?.update(value)
  }

  stop(): void {
    this.bar?.stop()
    this.bar = undefined
  }
}
