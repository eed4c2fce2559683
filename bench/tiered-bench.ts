// The tiered-KV decode benchmark (issue 4), one run, side by side on one device: decode
// ms/token of full (all KV on the GPU, no budget: the speed reference), offload-all (KV on
// host and disk, every step fetches all of it), quest (all KV on the GPU, top-k pages) and
// leoam (abstracts + selection + GPU/host/disk tiers) at the shapes of a dummy model and a
// long context. The tiered policies get --gpu-kv-budget (what a 24 GB card leaves after
// fp16 weights and workspace) and --host-kv-budget; the rest lives under --kv-dir.
// The context is filled with random KV (engine/synthetic-kv.ts), not prefilled: decode
// cost only. Prints a table and writes JSON (--out). `leoam+pipe` is leoam with the pipelined
// step (policy `pipeline`, --pipeline-depth) rewinding every layer that missed, as it was
// before the combine; `leoam+pipe+combine` completes a layer expected to miss by a combine;
// `leoam+prefetch` is leoam+pipe+combine with prefetch (--prefetch-layers, --prefetch-from,
// next-step prefetch on). --timeline PREFIX writes one more step of each
// policy as an SVG timeline (PREFIX-<policy>.svg: GPU compute and attention, choice waits,
// host->GPU staging, disk reads) and its spans into the JSON. `leoam+groups` scores group
// abstracts of --group-chunks chunks first, then only the kept groups' chunks; `leoam+budget`
// does so with the fine abstracts in a budgeted GPU cache filled from LMDB (issue 13 §4): each
// prints the abstracts' GPU bytes, the chunk slots the budget leaves, and per step the groups
// and chunks scored and the choice wait (which holds the scoring). --cold-disk times the steps
// again with the disk tier's files dropped from the page cache before each (bench/page-cache.ts),
// so that disk reads are reported cold beside warm. `leoam+all` is everything together (issue
// 13): compression (--all-compression, int4 by default: decode's compressed GPU slots, filled
// at the switch and taking newly sealed chunks from the GPU quantizer), the pipelined step with
// the combine, and prefetch (adaptive unless --prefetch-adaptive off); `leoam+all-fixed` is it
// with prefetch always on, `leoam+all-noprefetch` without prefetch. --cpu-profile PREFIX writes
// the host's CPU profile (node:inspector) of each policy's timed steps. A policy may carry its own compression as `name@bits` (e.g.
// `leoam@4`), which overrides --compression for it. Each tiered row prints GPU misses per timed
// step and, with compressed slots, the fill at the switch (chunks, MiB, host ms).
// `leoam+recompute` is leoam with recompute always on (issue 13 §5): the synthetic fill writes a
// random hidden-state record beside every sealed chunk (no prefill records them here), so each
// disk miss reads that and recomputes K/V on the GPU instead of reading K/V; its row prints the
// chunks recomputed and fetched per timed step.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { Session } from "node:inspector"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { parseSize } from "../cli/sizes.ts"
import { acquireGpu, releaseGpu, type Gpu } from "../engine/gpu.ts"
import { isTiered, kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { synthesizeKv } from "../engine/synthetic-kv.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { parsePolicy } from "../protocol/policy.ts"
import type { TieredManager } from "../engine/kv/tiered-manager.ts"
import { type Dropped, dropPageCache } from "./page-cache.ts"
import { HIDDEN_LAYER_BASE } from "../kv/recompute-cost.ts"
import type { TieredKv } from "../engine/kv/tiered/index.ts"
import { randomFillSync } from "node:crypto"
import { scoreTimes } from "./score-time.ts"
import { profileLine, profileStep, type StepProfile } from "./gpu-timing.ts"
import { type Span, stepSpans, TimelineEncoder, timelineSvg, traceHost } from "./step-timeline.ts"

const program = new Command()
  .option("--preset <name>", "dummy model preset", "longchat-7b-32k")
  .option("--context <n>", "tokens of (random) context before decoding", (v) => Number(v), 32768)
  .option("--policies <list>", "comma-separated policies (offload-all last: it is the slow one)", "full,quest,leoam,offload-all")
  .option("--budget-fraction <f>", "tokens attended per step by quest and leoam, as a fraction of the context", (v) => Number(v), 0.1)
  .option("--gpu-kv-budget <size>", "GPU KV budget of the tiered policies", "6GiB")
  .option("--host-kv-budget <size>", "host arena of the tiered policies", "8GiB")
  .option("--kv-dir <dir>", "disk tier (default: a temporary directory, removed after)")
  .option("--steps <n>", "timed decode steps per policy", (v) => Number(v), 8)
  .option("--max-seconds <s>", "stop timing a policy after this long (fewer steps)", (v) => Number(v), 90)
  .option("--compression <list>", "compression.bits of leoam and offload-all: 16, 8, 4 or importance; a comma-separated list runs each, side by side", "16")
  .option("--pipeline-depth <n>", "pipeline.depth of leoam+pipe, leoam+pipe+combine and leoam+prefetch", (v) => Number(v), 2)
  .option("--prefetch-layers <n>", "prefetch.layers of leoam+prefetch", (v) => Number(v), 1)
  .option("--prefetch-from <how>", "prefetch.from of leoam+prefetch: choice, query or hidden", "choice")
  .option("--prefetch-adaptive <on|off>", "prefetch.adaptive of leoam+prefetch and leoam+all (leoam+all-fixed: off; leoam+all-noprefetch: no prefetch)", "on")
  .option("--prefetch-probe-steps <n>", "prefetch.probe_steps of adaptive prefetch", (v) => Number(v), 16)
  .option("--all-compression <bits>", "compression.bits of leoam+all (16, 8, 4 or importance)", "4")
  .option("--group-chunks <n>", "abstracts.group_chunks of leoam+groups and leoam+budget", (v) => Number(v), 16)
  .option("--score-time", "also time one layer's scoring on the GPU at the context's chunk count: every chunk, against groups then the kept groups' chunks (bench/score-time.ts)")
  .option("--timeline <prefix>", "write one more step of each policy as PREFIX-<policy>.svg")
  .option("--profile", "one more step of each policy with every dispatch timed on the GPU (timestamp queries): GPU time per kernel")
  .option("--cold-disk", "after the timed steps of each tiered policy, time as many again with the disk tier's files dropped from the page cache before each (bench/page-cache.ts): disk reads cold, beside the warm ones")
  .option("--cpu-profile <prefix>", "write the host's CPU profile of each policy's timed steps as PREFIX-<policy>.cpuprofile (node:inspector; open in Chrome DevTools)")
  .option("--out <file>", "write the results as JSON")
  .parse()
const o = program.opts()

interface Row {
  policy: string
  /** compression.bits (16 for policies without tiers). */
  compression: string
  ms_per_token: number
  steps: number
  fill_ms: number
  kv?: unknown
  /**
   * --cold-disk: the same steps again, each after the disk tier's files were dropped from the page
   * cache (untimed): ms/token, disk bytes read per step, and what the first drop did.
   */
  cold?: { ms_per_token: number; steps: number; disk_bytes_per_step: number; warm_disk_bytes_per_step: number; dropped: Dropped }
  /** Per timed step, the upload ring (tiered policies): bytes staged, copies recorded, flushes (a submit and a re-map each), those scattered, host ms in flush(). */
  upload?: { bytes: number; copies: number; flushes: number; scattered: number; flush_ms: number }
  timeline?: { step_ms: number; spans: Span[] }
  /** --profile: one more step, every dispatch timed (its kernels' GPU time; not one of the timed steps). */
  profile?: StepProfile
  error?: string
}

// Every step decodes one token: two warm-up steps, the timed ones, as many again cold
// (--cold-disk) and the traced one (--timeline), with room to spare.
const decodeRoom = 2 + o.steps * (o.coldDisk ? 2 : 1) + (o.timeline ? 1 : 0) + (o.profile ? 1 : 0) + 8

const runPolicy = async (gpu: Gpu, name: string, kvDir: string, context: number, setting: string): Promise<Row> => {
  const config = resolveDummyConfig(o.preset)
  const maxContext = context + decodeRoom
  const bits = setting === "importance" ? "importance" : Number(setting)
  const compression = bits !== 16 ? { compression: { bits } } : {}
  const base = name.startsWith("leoam") ? "leoam" : name
  const prefetch = (adaptive: boolean) => ({ prefetch: { layers: o.prefetchLayers, from: o.prefetchFrom, steps: true, adaptive, probe_steps: o.prefetchProbeSteps } })
  const adaptive = o.prefetchAdaptive === "on"
  const variants: Record<string, object> = {
    "leoam+pipe": { pipeline: { enabled: true, depth: o.pipelineDepth, combine: false } },
    "leoam+pipe+combine": { pipeline: { enabled: true, depth: o.pipelineDepth } },
    "leoam+prefetch": { pipeline: { enabled: true, depth: o.pipelineDepth }, ...prefetch(adaptive) },
    "leoam+all": { pipeline: { enabled: true, depth: o.pipelineDepth }, ...prefetch(adaptive) },
    "leoam+all-fixed": { pipeline: { enabled: true, depth: o.pipelineDepth }, ...prefetch(false) },
    "leoam+all-noprefetch": { pipeline: { enabled: true, depth: o.pipelineDepth } },
    "leoam+groups": { abstracts: { group_chunks: o.groupChunks } },
    "leoam+budget": { abstracts: { gpu_resident: "budgeted", group_chunks: o.groupChunks } },
    "leoam+recompute": { recompute: { mode: "always" } },
  }
  if (base !== name && !(name in variants)) throw new RangeError(`unknown policy variant ${name}: ${Object.keys(variants).join(", ")}`)
  // The variant's pipeline, prefetch or abstracts. The bench's leoam and the variants of one
  // mechanism alone say the unpipelined step (leoam's default) explicitly, so their rows compare
  // with the earlier runs' whatever the default.
  const pipeline = { ...(base === "leoam" ? { pipeline: { enabled: false } } : {}), ...(variants[name] ?? {}) }
  const doc =
    base === "quest" || base === "leoam"
      ? { name: base, selection: { topk: { budget_fraction: o.budgetFraction } }, ...compression, ...pipeline }
      : { name: base, ...compression }
  const policy = parsePolicy(doc)
  const tiered = isTiered(policy)
  // A directory per run: reopening one LMDB index in the process after closing it is refused
  // as damaged (the second tiered policy of a run failed so, on main as well).
  const dir = join(kvDir, `${name}-${setting}`.replace(/[^a-z0-9-]/gi, "_"))
  if (tiered) mkdirSync(dir, { recursive: true })
  const store = tiered ? DiskStore.open({ kvDir: dir }) : undefined
  const arena = tiered ? new HostArena({ budgetBytes: parseSize(o.hostKvBudget) }) : undefined
  const session = `bench-${name}`
  let model: GpuModel | undefined
  try {
    const options = kvEngineOptions(policy, { gpuBudgetBytes: tiered ? parseSize(o.gpuKvBudget) : undefined, arena, store, session }, config, maxContext)
    model = await GpuModel.load(gpu, new DummyWeightSource(config), { maxContext, ...options })
    const f0 = performance.now()
    await synthesizeKv(model, context)
    if (name === "leoam+recompute") writeHiddenRecords(model, store!, session)
    const fillMs = performance.now() - f0
    const step = async (i: number) => model!.decode(0, { outSlot: 1 + (i % 8), temperature: 0, seed: 0, step: i })
    for (let i = 0; i < 2; i++) await step(i) // warm-up, immediately followed by the timed steps
    await gpu.device.queue.onSubmittedWorkDone()
    const statsBefore = model.tierStats()
    const ring = (model.kv as Partial<TieredManager>).uploadRing
    const ringAt = () => (ring ? { bytes: ring.bytesStaged, copies: ring.copies, flushes: ring.submits, scattered: ring.scattered, flush_ms: ring.flushMs } : undefined)
    const ring0 = ringAt()
    const cpuProfile = o.cpuProfile ? await startProfile() : undefined
    const t0 = performance.now()
    let steps = 0
    while (steps < o.steps && (steps === 0 || performance.now() - t0 < o.maxSeconds * 1000)) await step(2 + steps++)
    await gpu.device.queue.onSubmittedWorkDone()
    const ms = (performance.now() - t0) / steps
    if (cpuProfile) writeFileSync(`${o.cpuProfile}-${`${name}-${setting}`.replace(/[^a-z0-9-]/gi, "_")}.cpuprofile`, JSON.stringify(await cpuProfile()))
    const ring1 = ringAt()
    const upload = ring0 && ring1 ? (Object.fromEntries(Object.entries(ring1).map(([k, v]) => [k, (v - ring0[k as keyof typeof ring0]) / steps])) as Row["upload"]) : undefined
    const kv = model.tierStats()
    const cold = o.coldDisk && kv ? await coldSteps(gpu, dir, steps, (i) => step(2 + steps + i), () => model!.tierStats()!.disk.bytes_read, statsBefore!.disk.bytes_read) : undefined
    const timeline = o.timeline ? await traceStep(gpu, model, 2 + steps + (cold?.steps ?? 0), `${name}-${setting}`) : undefined
    const at = 2 + steps + (cold?.steps ?? 0) + (timeline ? 1 : 0)
    const profile = o.profile && gpu.device.features.has("timestamp-query") ? await profileStep(gpu.device, (timed) => model!.decode(0, { outSlot: 1 + (at % 8), temperature: 0, seed: 0, step: at }, undefined, timed)) : undefined
    return { policy: name, compression: setting, ms_per_token: ms, steps, fill_ms: fillMs, ...(kv ? { kv: { ...kv, warmup: statsBefore } } : {}), ...(cold ? { cold } : {}), ...(upload ? { upload } : {}), ...(timeline ? { timeline } : {}), ...(profile ? { profile } : {}) }
  } catch (e) {
    return { policy: name, compression: setting, ms_per_token: NaN, steps: 0, fill_ms: 0, error: `${(e as { code?: string }).code ?? "error"}: ${(e as Error).message}` }
  } finally {
    // Seals still on their way to host and disk must land before the store closes.
    await model?.settle().catch(() => undefined)
    model?.destroy()
    if (store) {
      store.dropSession(session)
      await store.close()
    }
  }
}

/** Starts the inspector's CPU profiler; the function returned stops it and gives the profile. */
const startProfile = async (): Promise<() => Promise<object>> => {
  const session = new Session()
  session.connect()
  const post = (method: string, params?: object) => new Promise<Record<string, unknown>>((resolve, reject) => session.post(method, params, (e, r) => (e ? reject(e) : resolve(r as Record<string, unknown>))))
  await post("Profiler.enable")
  await post("Profiler.setSamplingInterval", { interval: 200 })
  await post("Profiler.start")
  return async () => {
    const { profile } = await post("Profiler.stop")
    session.disconnect()
    return profile as object
  }
}

/** Random fp16 hidden-state records (magnitudes 0.5..1) beside every chunk the cache sealed, one buffer per chunk size. */
const writeHiddenRecords = (model: GpuModel, store: DiskStore, session: string): void => {
  const t = (model.kv as unknown as { t: TieredKv }).t
  const rows = new Map<number, Uint8Array>()
  const recordOf = (tokens: number) => {
    let r = rows.get(tokens)
    if (r === undefined) {
      const h = new Uint16Array(tokens * model.config.hiddenSize)
      randomFillSync(h)
      for (let i = 0; i < h.length; i++) h[i] = (h[i] & 0x83ff) | (14 << 10)
      rows.set(tokens, (r = new Uint8Array(h.buffer)))
    }
    return r
  }
  t.tables.layers.forEach((L, l) => {
    for (let ch = 0; ch < L.sizes.length; ch += 256) {
      const sizes = L.sizes.slice(ch, ch + 256)
      store.putChunks(sizes.map((tokens, i) => ({ key: [session, HIDDEN_LAYER_BASE + l, ch + i] as const, bytes: recordOf(tokens), meta: { tokens, dtype: "f16" } })))
    }
  })
}

/** --cold-disk: `steps` decode steps, each timed alone after the disk tier's files under `dir` left the page cache. */
const coldSteps = async (gpu: Gpu, dir: string, steps: number, step: (i: number) => Promise<unknown>, diskRead: () => number, warmupRead: number): Promise<Row["cold"]> => {
  const read0 = diskRead()
  let ms = 0
  let dropped: Dropped | undefined
  for (let i = 0; i < steps; i++) {
    await gpu.device.queue.onSubmittedWorkDone()
    const d = dropPageCache(dir)
    // The first drop shows the files were cached (by the fill's writes) and left; later ones only the last step's reads.
    dropped ??= d
    const t0 = performance.now()
    await step(i)
    await gpu.device.queue.onSubmittedWorkDone()
    ms += performance.now() - t0
  }
  return { ms_per_token: ms / steps, steps, disk_bytes_per_step: (diskRead() - read0) / steps, warm_disk_bytes_per_step: (read0 - warmupRead) / steps, dropped: dropped! }
}

/** One more decode step, traced: GPU passes by timestamp, host phases by their spans; written as an SVG. */
const traceStep = async (gpu: Gpu, model: GpuModel, i: number, name: string): Promise<Row["timeline"]> => {
  if (!gpu.device.features.has("timestamp-query")) return undefined
  const manager = model.kv as Partial<TieredManager>
  if ("keepStamps" in manager) manager.keepStamps = true
  const encoder = new TimelineEncoder(gpu.device)
  await gpu.device.queue.onSubmittedWorkDone()
  const host = traceHost()
  const start = performance.now()
  try {
    await model.decode(0, { outSlot: 1 + (i % 8), temperature: 0, seed: 0, step: i }, undefined, encoder.open())
    await gpu.device.queue.onSubmittedWorkDone()
  } finally {
    host.stop()
  }
  const stepMs = performance.now() - start
  await model.settle()
  const spans = stepSpans(start, encoder.firstSubmit ?? start, host.spans, [
    { lane: "GPU compute", passes: await encoder.passes() },
    { lane: "GPU attention", passes: manager.lastStamps ?? [] },
  ])
  encoder.destroy()
  const file = `${o.timeline}-${name.replace(/[^a-z0-9-]/gi, "_")}.svg`
  writeFileSync(file, timelineSvg(`${name}: one decode step, ${o.preset} shapes, ${stepMs.toFixed(2)} ms (GPU lanes placed by the first submit)`, spans, stepMs))
  return { step_ms: stepMs, spans }
}

/** The abstracts' GPU bytes and chunk slots, and per timed step (all layers) what scoring covered. */
const abstractsLine = (kv: { abstract_bytes: { gpu: number }; compression: { gpu_slots: number }; abstract_scoring: { resident: string; group_chunks: number; gpu_slots: number; fetched: number; groups_scored_per_step: number; chunks_scored_per_step: number }; steps: number; warmup: { abstract_scoring: { fetched: number; groups_scored_per_step: number; chunks_scored_per_step: number }; steps: number } }, steps: number): string => {
  const a = kv.abstract_scoring
  const w = kv.warmup.abstract_scoring
  // Per-step figures are averages since the fill: take the warm-up's share out.
  const timed = (now: number, before: number) => (now * kv.steps - before * kv.warmup.steps) / steps
  return (
    `; abstracts ${a.resident}${a.group_chunks > 0 ? ` in groups of ${a.group_chunks}` : ""}: ${(kv.abstract_bytes.gpu / 2 ** 20).toFixed(2)} MiB on the GPU, ${kv.compression.gpu_slots} chunk slots a layer` +
    `${a.resident === "budgeted" ? ` (${a.gpu_slots} abstract slots a layer, ${((a.fetched - w.fetched) / steps).toFixed(0)} fetched from LMDB per step)` : ""}, ` +
    `per timed step ${timed(a.groups_scored_per_step, w.groups_scored_per_step).toFixed(0)} groups + ${timed(a.chunks_scored_per_step, w.chunks_scored_per_step).toFixed(0)} chunks scored`
  )
}

const gpu = await acquireGpu()
const config = resolveDummyConfig(o.preset)
const kvDir = o.kvDir ?? mkdtempSync(join(tmpdir(), "leoam-tiered-bench-"))
// The decode steps must fit in the model's positions.
const context = Math.min(o.context, config.maxPositionEmbeddings - decodeRoom)
const kvGiB = (context * kvBytesPerToken(config)) / 2 ** 30
console.log(`tiered KV decode: ${o.preset} shapes (${config.numLayers} layers, ${config.numKvHeads} KV heads), ${context} tokens of random KV = ${kvGiB.toFixed(2)} GiB, on ${gpu.adapterName}`)
console.log(`tiered policies: GPU KV budget ${o.gpuKvBudget}, host ${o.hostKvBudget}, disk ${kvDir}; quest and leoam attend ${(o.budgetFraction * 100).toFixed(0)}% of the tokens per step`)
const rows: Row[] = []
const settings = String(o.compression).split(",")
// Compression applies to the tiered policies: each runs once per setting, the others once.
const variants = String(o.policies)
  .split(",")
  .flatMap((spec) => {
    // `name@bits` runs once at those bits; leoam+all once at --all-compression; other tiered policies at each setting.
    const [name, bits] = spec.split("@")
    if (bits !== undefined) return [{ name, setting: bits }]
    if (name.startsWith("leoam+all")) return [{ name, setting: String(o.allCompression) }]
    return name.startsWith("leoam") || name === "offload-all" ? settings.map((s) => ({ name, setting: s })) : [{ name, setting: "16" }]
  })
for (const { name: policy, setting } of variants) {
  const row = await runPolicy(gpu, policy, kvDir, context, setting)
  rows.push(row)
  const name = setting === "16" ? policy : `${policy}/${setting === "importance" ? "imp" : `int${setting}`}`
  type Kv = {
    gpu: { hits: number; misses: number; prefill_hits?: number; prefill_misses?: number }
    host: { bytes_read: number }
    disk: { bytes_read: number; bytes_written: number }
    time_ms: Record<string, number>
    staging_waits: number
    pipeline: { depth: number; layers_routed: number; rewinds: number; layers_rewound: number; layers_combined?: number }
    prefetch?: { chunks: number; bytes: number; hits: number; misses: number; wasted_bytes: number; late: number; ms: number; adaptive?: boolean; paused_steps?: number; pauses?: number; probes?: number; judged?: { precision: number; load_ms_per_chunk: number; miss_ms_per_chunk: number } }
    compression: { gpu_slots: number; slot_bits: number; warm: { chunks: number; bytes: number; ms: number }; admitted: number }
    abstract_bytes: { gpu: number; disk: number }
    abstract_scoring: { resident: string; group_chunks: number; gpu_slots: number; fetched: number; groups_scored_per_step: number; chunks_scored_per_step: number }
    recompute?: { active: boolean; chunks_recomputed: number; chunks_fetched_from_disk: number }
    steps: number
  }
  const kv = row.kv as (Kv & { warmup: Kv }) | undefined
  const perStep = (k: "select" | "transfer" | "attention") => (kv ? (kv.time_ms[k] - kv.warmup.time_ms[k]) / row.steps : 0)
  const timed = (now: number | undefined, before: number | undefined) => (((now ?? 0) - (before ?? 0)) / row.steps).toFixed(1)
  const pf = kv?.prefetch
  const pf0 = kv?.warmup.prefetch
  const extra = kv
    ? `  GPU hits ${kv.gpu.hits} misses ${kv.gpu.misses} of decode's choices (${timed(kv.gpu.misses, kv.warmup.gpu.misses)} misses per timed step), host read ${(kv.host.bytes_read / 2 ** 30).toFixed(2)} GiB, disk read ${(kv.disk.bytes_read / 2 ** 30).toFixed(2)} GiB (incl. warm-up), disk written ${(kv.disk.bytes_written / 2 ** 30).toFixed(2)} GiB; ` +
      `per timed step: select wait ${perStep("select").toFixed(1)} ms, transfer ${perStep("transfer").toFixed(1)} ms, attention (GPU) ${perStep("attention").toFixed(1)} ms; staging waits ${kv.staging_waits - kv.warmup.staging_waits}` +
      (kv.pipeline.depth > 0
        ? `; pipeline depth ${kv.pipeline.depth}: per timed step ${((kv.pipeline.layers_routed - kv.warmup.pipeline.layers_routed) / row.steps).toFixed(1)} layers routed, ${((kv.pipeline.rewinds - kv.warmup.pipeline.rewinds) / row.steps).toFixed(1)} rewinds, ${((kv.pipeline.layers_rewound - kv.warmup.pipeline.layers_rewound) / row.steps).toFixed(1)} layers recomputed, ${timed(kv.pipeline.layers_combined, kv.warmup.pipeline.layers_combined)} combined`
        : "") +
      (kv.recompute?.active ? `; recompute per timed step: ${timed(kv.recompute.chunks_recomputed, kv.warmup.recompute?.chunks_recomputed)} chunks recomputed, ${timed(kv.recompute.chunks_fetched_from_disk, kv.warmup.recompute?.chunks_fetched_from_disk)} fetched from disk` : "") +
      (pf && pf.chunks + pf.late > 0
        ? `; prefetch per timed step: ${timed(pf.chunks, pf0?.chunks)} chunks loaded (${timed(pf.bytes / 2 ** 20, (pf0?.bytes ?? 0) / 2 ** 20)} MiB, ${timed(pf.ms, pf0?.ms)} ms host), ${timed(pf.hits, pf0?.hits)} chosen, ${timed(pf.wasted_bytes / 2 ** 20, (pf0?.wasted_bytes ?? 0) / 2 ** 20)} MiB wasted, ${timed(pf.misses, pf0?.misses)} chosen still missing, ${timed(pf.late, pf0?.late)} late forecasts` +
          (pf.adaptive
            ? `; adaptive: ${(pf.paused_steps ?? 0) - (pf0?.paused_steps ?? 0)} of ${row.steps} timed steps sat out (${pf.pauses ?? 0} pauses, ${pf.probes ?? 0} probes in all)${pf.judged ? `, last judged: precision ${(pf.judged.precision * 100).toFixed(1)} %, ${pf.judged.load_ms_per_chunk.toFixed(3)} ms a chunk loaded against ${pf.judged.miss_ms_per_chunk.toFixed(3)} a chunk missed` : ""}`
            : "")
        : "") +
      (kv.compression.slot_bits < 16
        ? `; int${kv.compression.slot_bits} GPU slots filled at the switch: ${kv.compression.warm.chunks} chunks, ${(kv.compression.warm.bytes / 2 ** 20).toFixed(1)} MiB, ${kv.compression.warm.ms.toFixed(1)} ms host; ${kv.compression.admitted} sealed chunks admitted from the GPU quantizer`
        : "") +
      abstractsLine(kv, row.steps) +
      (row.upload
        ? `; upload ring per timed step: ${(row.upload.bytes / 2 ** 20).toFixed(1)} MiB staged, ${row.upload.copies.toFixed(0)} copies, ${row.upload.flushes.toFixed(1)} flushes (${row.upload.scattered.toFixed(1)} scattered), ${row.upload.flush_ms.toFixed(2)} ms in flush`
        : "")
    : ""
  const c = row.cold
  const coldLine = c
    ? `\n  ${`${name} (cold disk)`.padEnd(12)} ${c.ms_per_token.toFixed(2).padStart(9)} ms/token over ${c.steps} steps, disk read ${(c.disk_bytes_per_step / 2 ** 20).toFixed(1)} MiB per step (warm steps: ${(c.warm_disk_bytes_per_step / 2 ** 20).toFixed(1)} MiB); before each, ${c.dropped.files} files (${(c.dropped.bytes / 2 ** 30).toFixed(2)} GiB) dropped from the page cache (at the first drop, Cached fell ${c.dropped.cachedFellBytes === undefined ? "?" : `${(c.dropped.cachedFellBytes / 2 ** 30).toFixed(2)} GiB`})${c.dropped.failed > 0 ? `, dd failed on ${c.dropped.failed}` : ""}`
    : ""
  console.log(
    row.error
      ? `  ${name.padEnd(12)} FAILED ${row.error}`
      : `  ${name.padEnd(12)} ${row.ms_per_token.toFixed(2).padStart(9)} ms/token over ${row.steps} steps (fill ${(row.fill_ms / 1000).toFixed(1)} s)${extra}${coldLine}`,
  )
  if (row.profile) console.log(`  ${`${name} (profiled step)`.padEnd(12)} ${profileLine(row.profile, 14)}`)
}
const ref = rows.find((r) => r.policy === "offload-all" && !r.error)
if (ref) for (const r of rows) if (!r.error) console.log(`  ${`${r.policy} ${r.compression}`.padEnd(16)} ${(ref.ms_per_token / r.ms_per_token).toFixed(2)}x offload-all (${ref.compression})`)
const scoring = o.scoreTime ? await scoreTimes(gpu, config, { context, chunkTokens: 32, budgetFraction: o.budgetFraction, groupChunks: o.groupChunks, reps: 20 }) : undefined
if (scoring) {
  const s = scoring
  console.log(
    `  scoring one layer on the GPU, ${s.chunks} chunks of 32 tokens: every chunk ${s.plain_ms.toFixed(3)} ms; in groups of ${o.groupChunks}: ${s.groups} groups ${s.groups_ms.toFixed(3)} ms + ${s.kept} kept groups' chunks ${s.candidates_ms.toFixed(3)} ms, ` +
      `and one more read-back round trip ${s.round_trip_ms.toFixed(3)} ms (each a submit waited for; x${config.numLayers} layers a step)`,
  )
}
if (o.out) writeFileSync(o.out, JSON.stringify({ date: new Date().toISOString(), argv: process.argv.slice(2), device: gpu.adapterName, preset: o.preset, context, rows, ...(scoring ? { scoring } : {}) }, null, 2))
if (!o.kvDir) rmSync(kvDir, { recursive: true, force: true })
await releaseGpu()
