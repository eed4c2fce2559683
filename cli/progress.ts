// A progress bar on stderr for loading and prefill, only when stderr is a terminal. With a
// unit (prefill: tokens), it also shows the rate so far and the time left at that rate.
import cliProgress from "cli-progress"

/** "42s", "3m 05s", "1h 02m"; "?" before anything is known. */
export const formatDuration = (seconds: number | undefined): string => {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "?"
  const s = Math.round(seconds)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`
}

/** Units a second since the start, and seconds left at that rate (undefined until something is done). */
export const rateAndLeft = (done: number, total: number, elapsedMs: number): { rate: number | undefined; leftS: number | undefined } => {
  if (!(done > 0 && elapsedMs > 0)) return { rate: undefined, leftS: undefined }
  const rate = (done * 1000) / elapsedMs
  return { rate, leftS: Math.max(0, total - done) / rate }
}

/** The payload fields of a bar with a unit: rate and time left. */
export const ratePayload = (done: number, total: number, elapsedMs: number): { rate: string; left: string } => {
  const { rate, leftS } = rateAndLeft(done, total, elapsedMs)
  return { rate: rate === undefined ? "?" : rate >= 100 ? rate.toFixed(0) : rate.toPrecision(3), left: formatDuration(leftS) }
}

export class Progress {
  private bar: cliProgress.SingleBar | undefined
  private value = 0
  private startedAt = 0
  private unit: string | undefined

  constructor(private readonly enabled: boolean) {}

  /** `unit` (e.g. "tokens"): show the rate in units/s and the time left. */
  start(label: string, total: number, unit?: string): void {
    this.stop()
    if (!this.enabled) return
    this.value = 0
    this.unit = unit
    this.startedAt = performance.now()
    const rate = unit ? ` ${unit} | {rate} ${unit}/s | {left} left` : ""
    this.bar = new cliProgress.SingleBar(
      { format: `${label.padEnd(8)} [{bar}] {percentage}% {value}/{total}${rate}`, stream: process.stderr, hideCursor: true, clearOnComplete: true },
      cliProgress.Presets.shades_classic,
    )
    this.bar.start(total, 0, unit ? ratePayload(0, total, 0) : {})
  }

  /** Adds to the total as well when it grows past it (bytes of weights of unknown size). */
  add(n: number): void {
    if (!this.bar) return
    this.value += n
    if (this.value > this.bar.getTotal()) this.bar.setTotal(this.value)
    this.bar.update(this.value)
  }

  update(value: number): void {
    if (!this.bar) return
    this.value = value
    this.bar.update(value, this.unit ? ratePayload(value, this.bar.getTotal(), performance.now() - this.startedAt) : {})
  }

  stop(): void {
    this.bar?.stop()
    this.bar = undefined
  }
}
