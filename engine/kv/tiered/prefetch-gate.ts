// Adaptive prefetch (policy `prefetch.adaptive`): whether a step prefetches, judged from the
// last steps that did. A prefetched chunk that its layer then chooses is a miss saved, worth
// the miss path's host ms per chunk (transfer ms / misses, measured in the same steps); every
// chunk loaded costs prefetch's own host ms per chunk. Where the loads cost more than the
// misses they saved, prefetch sits out `probe_steps` steps and then probes one step again,
// whose figures alone decide whether it resumes. With random KV at 8B 128K (H100) one chunk
// in twelve it loaded was chosen: 1541 loads a step for 126 misses saved.

/** One prefetching step: chunks loaded, those chosen at their layer's visit, host ms of the loads; the miss path's misses and its transfer ms. */
export interface GateSample {
  readonly chunks: number
  readonly hits: number
  readonly ms: number
  readonly misses: number
  readonly missMs: number
}

/** Steps of figures the gate judges by (a probe alone after a pause). */
const WINDOW = 4
/** Fewer chunks loaded than this over the window decide nothing (prefetch goes on). */
const MIN_CHUNKS = 8

export class PrefetchGate {
  private window: GateSample[] = []
  /** Steps left to sit out before the next probe. */
  private pausedFor = 0
  /** Counters: steps sat out, pauses, probes. */
  pausedSteps = 0
  pauses = 0
  probes = 0
  /** The last judgement's figures (for the stats). */
  last: { precision: number; loadMs: number; missMs: number } | undefined

  /** Whether the coming step prefetches, given the last step's figures where it prefetched. */
  next(sample: GateSample | undefined, probeSteps: number): boolean {
    if (sample) this.window = [...this.window, sample].slice(-WINDOW)
    if (this.pausedFor > 0) {
      this.pausedFor--
      if (this.pausedFor > 0) {
        this.pausedSteps++
        return false
      }
      this.probes++
      return true
    }
    if (!this.pays()) {
      this.pauses++
      this.pausedSteps++
      this.window = []
      this.pausedFor = probeSteps
      return false
    }
    return true
  }

  /** Whether the window's loads saved at least their host time in misses (true where too few were loaded to say). */
  private pays(): boolean {
    const sum = (f: (s: GateSample) => number) => this.window.reduce((n, s) => n + f(s), 0)
    const chunks = sum((s) => s.chunks)
    if (chunks < MIN_CHUNKS) return true
    const ms = sum((s) => s.ms)
    const misses = sum((s) => s.misses)
    const loadMs = ms / chunks
    // No miss left to measure: a miss would have gone the same load path.
    const missMs = misses > 0 ? sum((s) => s.missMs) / misses : loadMs
    this.last = { precision: sum((s) => s.hits) / chunks, loadMs, missMs }
    return sum((s) => s.hits) * missMs >= ms
  }

  /** Forgets the figures and any pause (a new sequence, or adaptive switched off). */
  reset(): void {
    this.window = []
    this.pausedFor = 0
  }
}
