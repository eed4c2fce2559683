// A timeline of one decode step (issue 13 §1), so that overlap is seen: GPU lanes from
// timestamp queries (every compute pass the step encoder opens, and the tiered manager's
// attention passes), host lanes from the KV phases' spans (kv/step-trace.ts: waiting for a
// choice, staging chunks to the GPU, disk reads). GPU time is placed on the host's clock by
// the step's first submit: the GPU is idle before it (the benchmark waits for it), so the
// first pass starts right after that submit; the error is the launch latency (microseconds).
import { type Dispatch, encodeAll } from "../engine/buffers.ts"
import type { StepEncoder } from "../engine/kv/manager.ts"
import { setStepTrace, type TraceLane } from "../kv/step-trace.ts"

const QUERIES = 4096

export interface Span {
  readonly lane: string
  /** ms from the step's start (host clock). */
  readonly t0: number
  readonly t1: number
  readonly label: string
}

/** A StepEncoder that times every compute pass it opens (the engine's PassEncoder plus timestamps). */
export class TimelineEncoder implements StepEncoder {
  private encoder: GPUCommandEncoder | undefined
  private pass: GPUComputePassEncoder | undefined
  private readonly querySet: GPUQuerySet
  private readonly resolve: GPUBuffer
  private readonly readBuffer: GPUBuffer
  private queries = 0
  /** Host time of the step's first submit (performance.now() ms). */
  firstSubmit: number | undefined

  constructor(private readonly device: GPUDevice) {
    this.querySet = device.createQuerySet({ type: "timestamp", count: QUERIES })
    this.resolve = device.createBuffer({ size: QUERIES * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC })
    this.readBuffer = device.createBuffer({ size: QUERIES * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  }

  open(): this {
    this.encoder = this.device.createCommandEncoder()
    this.queries = 0
    this.firstSubmit = undefined
    return this
  }

  encode(dispatches: ReadonlyArray<Dispatch>): void {
    encodeAll(this.openPass(), dispatches)
  }

  compute(use: (pass: GPUComputePassEncoder) => void): void {
    use(this.openPass())
  }

  record(use: (encoder: GPUCommandEncoder) => void): void {
    this.endPass()
    use(this.encoder!)
  }

  submit(): void {
    this.endPass()
    this.firstSubmit ??= performance.now()
    this.device.queue.submit([this.encoder!.finish()])
    this.encoder = this.device.createCommandEncoder()
  }

  finish(last?: (encoder: GPUCommandEncoder) => void): void {
    this.endPass()
    const e = this.encoder!
    last?.(e)
    if (this.queries > 0) {
      e.resolveQuerySet(this.querySet, 0, this.queries, this.resolve, 0)
      e.copyBufferToBuffer(this.resolve, 0, this.readBuffer, 0, this.queries * 8)
    }
    this.firstSubmit ??= performance.now()
    this.device.queue.submit([e.finish()])
    this.encoder = undefined
  }

  /** The (begin, end) GPU timestamps (ns) of the passes it timed, after the step's work is done. */
  async passes(): Promise<Array<readonly [bigint, bigint]>> {
    if (this.queries === 0) return []
    await this.readBuffer.mapAsync(GPUMapMode.READ, 0, this.queries * 8)
    const stamps = new BigUint64Array(this.readBuffer.getMappedRange(0, this.queries * 8).slice(0))
    this.readBuffer.unmap()
    const out: Array<readonly [bigint, bigint]> = []
    for (let i = 0; i + 1 < stamps.length; i += 2) out.push([stamps[i], stamps[i + 1]])
    return out
  }

  destroy(): void {
    this.querySet.destroy()
    this.resolve.destroy()
    this.readBuffer.destroy()
  }

  private openPass(): GPUComputePassEncoder {
    if (this.pass) return this.pass
    const timed = this.queries + 2 <= QUERIES
    const q = this.queries
    if (timed) this.queries += 2
    this.pass = this.encoder!.beginComputePass(timed ? { timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: q, endOfPassWriteIndex: q + 1 } } : {})
    return this.pass
  }

  private endPass(): void {
    this.pass?.end()
    this.pass = undefined
  }
}

/** Collects the host spans of a step while it runs (kv/step-trace.ts). */
export const traceHost = (): { spans: Array<{ lane: TraceLane; t0: number; t1: number; label: string }>; stop: () => void } => {
  const spans: Array<{ lane: TraceLane; t0: number; t1: number; label: string }> = []
  setStepTrace({ span: (lane, t0, t1, label) => spans.push({ lane, t0, t1, label }) })
  return { spans, stop: () => setStepTrace(undefined) }
}

/**
 * The step's spans on one clock, ms from `start` (host time): host spans as measured, GPU
 * passes shifted so that the first one begins at the first submit.
 */
export const stepSpans = (
  start: number,
  firstSubmit: number,
  host: ReadonlyArray<{ lane: string; t0: number; t1: number; label: string }>,
  gpu: ReadonlyArray<{ lane: string; passes: ReadonlyArray<readonly [bigint, bigint]> }>,
): Span[] => {
  const valid = gpu.flatMap((g) => g.passes.filter(([a, b]) => b >= a && a > 0n))
  const origin = valid.reduce((m, [a]) => (a < m ? a : m), valid[0]?.[0] ?? 0n)
  const at = (ns: bigint) => firstSubmit - start + Number(ns - origin) / 1e6
  const spans: Span[] = host.map((h) => ({ lane: h.lane, t0: h.t0 - start, t1: h.t1 - start, label: h.label }))
  for (const g of gpu) g.passes.forEach(([a, b], i) => b >= a && a > 0n && spans.push({ lane: g.lane, t0: at(a), t1: at(b), label: `${i}` }))
  return spans
}

const LANES = ["GPU compute", "GPU attention", "choice wait", "host->GPU", "disk read"]
const COLORS: Record<string, string> = { "GPU compute": "#4c78a8", "GPU attention": "#f58518", "choice wait": "#e45756", "host->GPU": "#54a24b", "disk read": "#b279a2" }

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

/** The spans as an SVG timeline: one row per lane, time left to right, a tick every nice interval. */
export const timelineSvg = (title: string, spans: ReadonlyArray<Span>, stepMs: number): string => {
  const width = 1400
  const left = 120
  const row = 34
  const top = 40
  const end = Math.max(stepMs, ...spans.map((s) => s.t1), 1e-3)
  const x = (t: number) => left + (Math.max(0, t) / end) * (width - left - 20)
  const lanes = [...LANES, ...new Set(spans.map((s) => s.lane).filter((l) => !LANES.includes(l)))]
  const height = top + lanes.length * row + 40
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<text x="10" y="18" font-size="13">${esc(title)}</text>`,
  ]
  const tick = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].find((t) => end / t <= 20) ?? 2000
  for (let t = 0; t <= end; t += tick) {
    out.push(`<line x1="${x(t)}" y1="${top - 6}" x2="${x(t)}" y2="${height - 30}" stroke="#ddd"/>`, `<text x="${x(t)}" y="${height - 16}" text-anchor="middle">${+t.toFixed(1)} ms</text>`)
  }
  lanes.forEach((lane, i) => {
    const y = top + i * row
    out.push(`<text x="10" y="${y + row / 2 + 4}">${esc(lane)}</text>`)
    for (const s of spans.filter((s) => s.lane === lane)) {
      const w = Math.max(0.5, x(s.t1) - x(s.t0))
      out.push(`<rect x="${x(s.t0).toFixed(1)}" y="${y + 4}" width="${w.toFixed(1)}" height="${row - 8}" fill="${COLORS[lane] ?? "#888"}" opacity="0.85"><title>${esc(`${lane} ${s.label}: ${s.t0.toFixed(3)}-${s.t1.toFixed(3)} ms`)}</title></rect>`)
      if (w > 28) out.push(`<text x="${(x(s.t0) + 3).toFixed(1)}" y="${y + row / 2 + 4}" fill="#fff">${esc(s.label)}</text>`)
    }
  })
  out.push("</svg>")
  return out.join("\n")
}
