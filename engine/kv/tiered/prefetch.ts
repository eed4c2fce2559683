// Prefetch into the GPU chunk cache (issue 13 §1, policy `prefetch`): a layer's choice is
// forecast before the layer runs, and the forecast chunks it does not hold are loaded while
// earlier layers compute, so that the layer finds them as hits (and a pipelined step runs it
// ahead instead of waiting for its choice). The forecasts:
// - layers N, from "choice" (the default): layer l's chosen chunks, once the host has them,
//   for layer l + N (consecutive layers choose alike; chunks cover the same tokens in every
//   layer with fixed chunking);
// - layers N, from "query": layer l + N's chunks scored against layer l's query, on the GPU
//   right after layer l's own select, read back off the critical path (a layer's query meets
//   the next layer's keys);
// - layers N, from "hidden" (InfiniGen's): scored as "query", but against layer l + N's query
//   projected from layer l's input (forecast-query.ts; needs the model's inputs, else off);
// - steps: for the first N layers (all of them when N is 0), which no earlier layer of the
//   step forecasts, the layer's choice at the last step.
// On the test model (lavapipe) "choice" loaded 38 chunks of which 13 were chosen, "query"
// 26 of which 1, and most query forecasts came back too late for a pipelined layer.
// Prefetch changes only what is resident, never what a layer attends: the tokens are those
// of no prefetch. It evicts none of the layer's last choice: a wrong forecast pushing out
// chunks the layer goes on choosing cost more misses than it saved (test model, lavapipe). Loads go through the cache's one load path (host arena, else disk with
// reads in flight, staged into the upload ring and flushed), one forecast after another and
// only between plans: the manager awaits `idle()` before it plans, and a layer's own
// forecast (`enter`) before it selects, so no layer's slots change while its route is on
// the GPU unchecked. The counters say what the forecasts were worth, at each forecast
// layer's visit: prefetched chunks chosen (hits), prefetched and not chosen (wasted bytes),
// chosen chunks still missing (misses), and the forecast's precision and recall over the chunks
// the layer scores (sink and recent, always chosen, left out), whether loaded or not.
import type { ModelConfig } from "../../../models/types.ts"
import { DEFAULT_PREFETCH_PROBE_STEPS } from "../../../protocol/policy.ts"
import type { Pipelines } from "../../pipelines.ts"
import type { ForecastInputs } from "../manager.ts"
import { ForecastQuery } from "./forecast-query.ts"
import { type GateSample, PrefetchGate } from "./prefetch-gate.ts"
import { choicePlan, Selector } from "./select.ts"
import type { FetchStats, TierStats } from "./stats.ts"
import type { TieredKv } from "./tiered-kv.ts"

/** A forecast of one layer's choice: on its way back, landed, or its load started. */
interface Forecast {
  readonly layer: number
  chosen?: number[]
  started?: Promise<void>
}

const emptyCounters = () => ({ forecasts: 0, late: 0, visits: 0, chunks: 0, bytes: 0, hits: 0, misses: 0, wastedBytes: 0, failed: 0, ms: 0, forecastChunks: 0, chosenChunks: 0, forecastChosen: 0 })

export class Prefetcher {
  /** Scores the forecast layer (its own uniforms, scores and selection: it runs in the same pass as the layer's select), by forecast. */
  private readonly selectors: { query?: Selector; hidden?: Selector } = {}
  /** "hidden": the forecast query's projection (built at first use). */
  private projection: ForecastQuery | undefined
  private readonly free: GPUBuffer[] = []
  private readonly all: GPUBuffer[] = []
  /** The forecast encoded in the current pass: its copy recorded after the pass, mapped after the submit. */
  private encoded: { layer: number; count: number; selection: GPUBuffer; buffer?: GPUBuffer } | undefined
  /** This step's forecasts, by the layer they forecast. */
  private forecasts: Array<Forecast | undefined>
  /** Per layer: what a prefetch loaded for its next visit. */
  private readonly loaded: Array<{ readonly chunks: number[]; readonly bytes: number } | undefined>
  /** Per layer: its choice at its last visit (the steps forecast; a prefetch evicts none of it). */
  private readonly lastChoice: Array<ReadonlyArray<number> | undefined>
  /** Prefetch loads, one after another. */
  private chain: Promise<void> = Promise.resolve()
  private maps: Array<Promise<void>> = []
  /** Whether this step prefetches (leoam, a choosing step, a forecast on; fp16 or compressed GPU slots alike). */
  private on = false
  private k = emptyCounters()
  /** Adaptive prefetch: whether the coming step prefetches (prefetch-gate.ts). */
  private readonly gate = new PrefetchGate()
  /** At the start of a step that prefetched: its counters and the miss path's, to judge it by at the next step. */
  private stepStart: { readonly chunks: number; readonly hits: number; readonly ms: number; readonly misses: number; readonly missMs: number } | undefined

  constructor(
    private readonly device: GPUDevice,
    private readonly pipelines: Pipelines,
    private readonly config: ModelConfig,
    private readonly t: TieredKv,
    /** (chunk, H, D) f32, the roped queries of the step. */
    private readonly q: GPUBuffer,
    /** The model's side of the "hidden" forecast; absent: that forecast is off. */
    private readonly forecast?: ForecastInputs,
  ) {
    this.forecasts = Array.from({ length: config.numLayers }, () => undefined)
    this.loaded = Array.from({ length: config.numLayers }, () => undefined)
    this.lastChoice = Array.from({ length: config.numLayers }, () => undefined)
  }

  private get distance(): number {
    return this.t.policy.prefetchLayers ?? 0
  }

  /** At a step's start: whether it prefetches, and the steps forecast. */
  beginStep(selecting: boolean): void {
    const p = this.t.policy
    this.forecasts = this.forecasts.map(() => undefined) // forecasts still on their way land in the old array
    this.drop()
    const wanted = selecting && p.mode === "leoam" && (this.distance > 0 || p.prefetchSteps === true)
    this.on = wanted && this.judged(p.prefetchAdaptive === true, p.prefetchProbeSteps ?? DEFAULT_PREFETCH_PROBE_STEPS)
    if (!this.on || p.prefetchSteps !== true) return
    const upTo = this.distance > 0 ? Math.min(this.distance, this.config.numLayers) : this.config.numLayers
    for (let l = 0; l < upTo; l++) {
      const chosen = this.lastChoice[l]
      if (chosen) this.forecasts[l] = { layer: l, chosen: [...chosen] }
    }
  }

  /** Adaptive: the last step's figures (where it prefetched) given to the gate, which says whether this one does; always true when not adaptive. */
  private judged(adaptive: boolean, probeSteps: number): boolean {
    const at = this.stepStart
    const now = this.figures()
    this.stepStart = undefined
    if (!adaptive) {
      this.gate.reset()
      return true
    }
    const d = at && { chunks: now.chunks - at.chunks, hits: now.hits - at.hits, ms: now.ms - at.ms, misses: now.misses - at.misses, missMs: now.missMs - at.missMs }
    // Counters reset between requests: a step across a reset says nothing.
    const sample: GateSample | undefined = d && Object.values(d).every((v) => v >= 0) ? d : undefined
    const on = this.gate.next(sample, probeSteps)
    if (on) this.stepStart = now
    return on
  }

  /** Prefetch's counters and the miss path's (misses, transfer ms) now. */
  private figures() {
    const c = this.t.counters
    return { chunks: this.k.chunks, hits: this.k.hits, ms: this.k.ms, misses: c.gpuMisses, missMs: c.transferMs }
  }

  /** Encodes layer l + N's forecast (its chunks scored against layer l's query, or "hidden" the query projected for it) into the pass of layer l's select. */
  encode(l: number, pass: GPUComputePassEncoder): void {
    const m = l + this.distance
    const from = this.t.policy.prefetchFrom ?? "choice"
    if (from === "choice" || !this.on || m === l || m >= this.config.numLayers || this.forecasts[m] !== undefined) return
    if (from === "hidden" && this.forecast === undefined) return
    // Budgeted abstracts are not all on the GPU: no query forecast scores them (choice forecasts still run).
    if (this.t.abstracts.layout.resident !== "all") return
    const L = this.t.tables.layers[m]
    if (L.starts.length === 0) return
    const selector = this.selectorOf(from)
    if (from === "hidden") this.projection!.encode(m, pass)
    const count = selector.encode(m, pass, L, this.t.tables.tokens, this.t.policy, this.t.slotTokens)
    this.drop()
    this.encoded = count > 0 ? { layer: m, count, selection: selector.selection } : undefined
  }

  private selectorOf(from: "query" | "hidden"): Selector {
    const s = this.selectors[from]
    if (s) return s
    const c = this.config
    if (from === "hidden") this.projection = new ForecastQuery(this.device, this.pipelines, c, this.forecast!, this.t.blockTokens)
    const q = from === "hidden" ? this.projection!.q : this.q
    return (this.selectors[from] = new Selector(this.device, this.pipelines, c, this.t.abstracts, q, this.t.maxChunks, this.t.blockTokens))
  }

  /** Forgets a forecast encoded and never mapped (a rewind discarded its layer's selection). */
  private drop(): void {
    if (this.encoded?.buffer) this.free.push(this.encoded.buffer)
    this.encoded = undefined
  }

  /** Records the copy of the forecast just encoded (after its pass). */
  record(encoder: GPUCommandEncoder): void {
    const e = this.encoded
    if (!e || e.buffer) return
    e.buffer = this.free.pop() ?? this.newBuffer()
    encoder.copyBufferToBuffer(e.selection, 0, e.buffer, 0, e.count * 8)
  }

  /** Maps the forecast recorded (after the submit that carries its copy); it lands on its own. */
  map(): void {
    const e = this.encoded
    if (!e?.buffer) return
    this.encoded = undefined
    const f: Forecast = { layer: e.layer }
    this.forecasts[e.layer] = f
    this.k.forecasts++
    const buffer = e.buffer
    const mapped = buffer.mapAsync(GPUMapMode.READ, 0, e.count * 8).then(() => {
      const view = new Uint32Array(buffer.getMappedRange(0, e.count * 8))
      f.chosen = Array.from({ length: e.count }, (_, i) => view[i * 2])
      buffer.unmap()
      this.free.push(buffer)
    })
    this.maps.push(mapped.catch(() => undefined))
  }

  /**
   * At layer l's entry (no layer from l on is routed this step): drops l's forecast if it has
   * not landed (late), starts the loads of every landed forecast from l on, and returns l's
   * own loads to await before l selects (later layers' go on meanwhile).
   */
  enter(l: number): Promise<void> | undefined {
    if (!this.on) return undefined
    const own = this.forecasts[l]
    if (own && own.chosen === undefined) {
      this.k.late++
      this.forecasts[l] = undefined
    }
    for (let m = l; m < this.config.numLayers; m++) {
      const f = this.forecasts[m]
      if (f?.chosen !== undefined && f.started === undefined) f.started = this.start(m, f.chosen)
    }
    return this.forecasts[l]?.started
  }

  private start(l: number, chunks: ReadonlyArray<number>): Promise<void> {
    this.chain = this.chain.then(async () => {
      const t0 = performance.now()
      try {
        const n = this.t.tables.layers[l].starts.length // a forecast names only chunks the layer has
        const got = await this.t.prefetch(l, chunks.filter((ch) => ch < n), this.lastChoice[l] ?? [])
        this.loaded[l] = got
        this.k.chunks += got.chunks.length
        this.k.bytes += got.bytes
      } catch {
        // Speculative: the layer's own load meets the same error and reports it.
        this.k.failed++
      }
      this.k.ms += performance.now() - t0
    })
    return this.chain
  }

  /** Resolves once no prefetch load is in flight (before the cache plans or loads anything). */
  idle(): Promise<void> {
    return this.chain
  }

  /** Layer l's visit with its choice and the GPU cache's misses: what its forecast was worth. */
  visit(l: number, chosen: ReadonlyArray<number>, misses: number): void {
    this.lastChoice[l] = chosen
    const m = l + this.distance
    // Adaptive chunks are cut per layer: a chunk number names other tokens in another layer.
    if ((this.t.policy.prefetchFrom ?? "choice") === "choice" && this.on && this.t.adaptive === undefined && m > l && m < this.config.numLayers && this.forecasts[m] === undefined) {
      this.forecasts[m] = { layer: m, chosen: [...chosen] }
      this.k.forecasts++
    }
    const f = this.forecasts[l]
    if (f?.started === undefined) return
    this.forecasts[l] = undefined // counted once (a rewound layer is visited again)
    this.k.visits++
    this.k.misses += misses
    this.judge(l, f.chosen!, chosen)
    const got = this.loaded[l]
    this.loaded[l] = undefined
    if (!got) return
    const wanted = new Set(chosen)
    for (const ch of got.chunks) {
      if (wanted.has(ch)) this.k.hits++
      else this.k.wastedBytes += this.t.tables.chunkBytes(l, ch)
    }
  }

  /** Counts a landed forecast's precision and recall at its layer's visit, over the chunks the layer scores. */
  private judge(l: number, forecast: ReadonlyArray<number>, chosen: ReadonlyArray<number>): void {
    const { n, S, R } = choicePlan(this.t.tables.layers[l], this.t.tables.tokens, this.t.policy, this.t.slotTokens)
    const scored = (ch: number) => ch >= S && ch < n - R
    const forecastSet = new Set(forecast.filter(scored))
    const picked = chosen.filter(scored)
    this.k.forecastChunks += forecastSet.size
    this.k.chosenChunks += picked.length
    for (const ch of picked) if (forecastSet.has(ch)) this.k.forecastChosen++
  }

  /** The tier stats with prefetch's counters and the pipeline's combined layers. */
  stats(tiers: TierStats, combined: number): TierStats {
    const k = this.k
    const p = this.t.policy
    const prefetch: FetchStats = {
      layers: p.prefetchLayers ?? 0,
      from: p.prefetchFrom ?? "choice",
      steps: p.prefetchSteps ?? false,
      forecasts: k.forecasts,
      late: k.late,
      visits: k.visits,
      chunks: k.chunks,
      bytes: k.bytes,
      hits: k.hits,
      misses: k.misses,
      wasted_bytes: k.wastedBytes,
      failed: k.failed,
      ms: k.ms,
      forecast_chunks: k.forecastChunks,
      chosen_chunks: k.chosenChunks,
      forecast_chosen: k.forecastChosen,
      adaptive: p.prefetchAdaptive ?? false,
      paused_steps: this.gate.pausedSteps,
      pauses: this.gate.pauses,
      probes: this.gate.probes,
      ...(this.gate.last ? { judged: { precision: this.gate.last.precision, load_ms_per_chunk: this.gate.last.loadMs, miss_ms_per_chunk: this.gate.last.missMs } } : {}),
    }
    return { ...tiers, pipeline: { ...tiers.pipeline, layers_combined: combined }, prefetch }
  }

  /** Forgets the sequence: forecasts, loads still counted as pending, last choices, counters. */
  reset(): void {
    this.forecasts = this.forecasts.map(() => undefined)
    this.drop()
    this.loaded.fill(undefined)
    this.lastChoice.fill(undefined)
    this.k = emptyCounters()
    this.stepStart = undefined
    // A pause stays (the forecasts' worth is the workload's); its counters start again with the others.
    this.gate.pausedSteps = this.gate.pauses = this.gate.probes = 0
  }

  /** Waits for loads and forecast read-backs in flight. */
  async settle(): Promise<void> {
    await this.chain
    const maps = this.maps
    this.maps = []
    await Promise.all(maps)
  }

  private newBuffer(): GPUBuffer {
    const b = this.device.createBuffer({ label: "tier forecast read-back", size: Math.max(16, this.t.maxChunks * 8), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    this.all.push(b)
    return b
  }

  destroy(): void {
    for (const s of Object.values(this.selectors)) s.destroy()
    this.projection?.destroy()
    for (const b of this.all) b.destroy()
  }
}
