// The KV policy document (DESIGN §4): data validated by Schema, never code. A policy names
// one of the registered KV managers and, optionally, its chunking, selection and eviction
// parameters; anything left out takes the manager's defaults (`resolvePolicy`). The CLI
// takes a name or a JSON file of this shape (`--kv-policy`); the admin subjects will take
// the same document.
import { JSONSchema, Schema } from "effect"
import { firstIssue } from "./schema-errors.ts"

export const policyNames = ["full", "offload-all", "h2o", "quest", "leoam"] as const
export type PolicyName = (typeof policyNames)[number]

export const evictionNames = ["lru", "lfu", "importance"] as const
export type EvictionName = (typeof evictionNames)[number]

/** Bits of KV chunks in the host and disk tiers (and the GPU chunk cache): fp16, int8, int4, or per chunk by importance. */
export type CompressionBits = 16 | 8 | 4 | "importance"
const CompressionBitsSchema = Schema.Union(Schema.Literal(16, 8, 4), Schema.Literal("importance"))

/** The most layers a pipelined step may run ahead of its last checked choice. */
export const MAX_PIPELINE_DEPTH = 8
const DEFAULT_PIPELINE_DEPTH = 2
/** The farthest layer a layer's query forecasts (prefetch.layers). */
export const MAX_PREFETCH_LAYERS = 4
/** Adaptive prefetch: steps it sits out, when its loads cost more than the misses they saved, before it probes again (prefetch.probe_steps). */
export const DEFAULT_PREFETCH_PROBE_STEPS = 16
export const MAX_PREFETCH_PROBE_STEPS = 4096

/** The most chunks one group abstract may cover. */
export const MAX_GROUP_CHUNKS = 4096

/** Recomputing K/V of disk-tier chunks from their stored hidden states (engine/kv/tiered/recompute.ts). */
export type RecomputeMode = "off" | "auto" | "always"
const RecomputeModeSchema = Schema.Literal("off", "auto", "always")
/**
 * The cost model's defaults: a disk (NVMe) read rate and the K/V projection's sustained rate.
 * 12 TFLOPS is what the recompute pass reached on an H100 at LongChat-7B shapes (7.7 at 16-token
 * chunks, 11.8 at 64, 13.9 at 256; bench/results/2026-12-07-late-gpu-session run 2): a chunk's
 * projection is a skinny GEMM bound by reading W_k and W_v, far from the card's peak, and at it
 * the model's crossover (1.47 GB/s) is the measured one (0.9-1.7 GB/s).
 */
export const RECOMPUTE_DISK_GB_PER_S = 3
export const RECOMPUTE_GEMM_TFLOPS = 12
const Rate = Schema.Number.pipe(Schema.greaterThan(0), Schema.lessThanOrEqualTo(1e6))

const Tokens = Schema.Int.pipe(Schema.between(1, 1 << 24))
const Count = Schema.Int.pipe(Schema.between(0, 1 << 24))

export const KvPolicyDocument = Schema.Struct({
  name: Schema.Literal(...policyNames),
  /**
   * `fixed {tokens}`: chunk (page) size, a multiple of the engine's 16-token block;
   * `adaptive {min_tokens, max_tokens}` (leoam, offload-all; 16 and 256 when left out): chunk
   * sizes per layer from the skew of attention measured at prefill (kv/chunk-plan.ts).
   */
  chunking: Schema.optional(
    Schema.Union(
      Schema.Struct({ fixed: Schema.Struct({ tokens: Tokens }) }).annotations({ parseOptions: { onExcessProperty: "error" } }),
      Schema.Struct({ adaptive: Schema.Struct({ min_tokens: Schema.optional(Tokens), max_tokens: Schema.optional(Tokens) }) }).annotations({ parseOptions: { onExcessProperty: "error" } }),
    ),
  ),
  /** `topk`: most tokens attended per step (or a fraction of the context), sink and recent always kept. */
  selection: Schema.optional(
    Schema.Struct({
      topk: Schema.Struct({
        budget_tokens: Schema.optional(Tokens),
        budget_fraction: Schema.optional(Schema.Number.pipe(Schema.greaterThan(0), Schema.lessThanOrEqualTo(1))),
        sink_tokens: Schema.optional(Count),
        recent_tokens: Schema.optional(Count),
      }),
    }),
  ),
  /** Eviction of the GPU chunk cache and the host arena. */
  eviction: Schema.optional(Schema.Literal(...evictionNames)),
  /** `bits`: KV chunks sealed into the host and disk tiers as fp16 (16, the default), int8, int4, or "importance" (hot int8, cold int4); tiered policies only. */
  compression: Schema.optional(Schema.Struct({ bits: CompressionBitsSchema }).annotations({ parseOptions: { onExcessProperty: "error" } })),
  /**
   * The pipelined decode step (leoam only): `enabled` (default false; a `depth` alone turns it
   * on) lets a step attend each layer's resident chunks without waiting for the host to read
   * the layer's choice, running up to `depth` layers (1-8, default 2) ahead of the last choice
   * the host has checked; a checked layer that missed the GPU cache is computed again.
   * `combine` (default true): a layer expected to miss (it missed at its last visit) attends
   * its resident chunks at once and its misses once they are loaded, the two merged by
   * log-sum-exp, instead of waiting for its choice before attending anything. Exact: the same
   * tokens as off. Measured faster for one sequence on an H100 (8B 64K: 37.1 against 66.9
   * ms/token with the context on the GPU; 181.4 against 185.2 at 6 GiB, within noise), but a
   * decode batch's rows (every served request) cannot run ahead and only combine, which is
   * unmeasured on a GPU and 1.7x slower on lavapipe (the demo): so not the default.
   */
  pipeline: Schema.optional(
    Schema.Struct({
      enabled: Schema.optional(Schema.Boolean),
      depth: Schema.optional(Schema.Int.pipe(Schema.between(1, MAX_PIPELINE_DEPTH))),
      combine: Schema.optional(Schema.Boolean),
    }).annotations({
      parseOptions: { onExcessProperty: "error" },
    }),
  ),
  /**
   * Prefetch into the GPU chunk cache (leoam, fp16 chunks; off when left out): `layers` N
   * (0-4) forecasts layer l + N's choice from layer l's (consecutive layers choose alike) and
   * loads the forecast chunks not resident while the layers between compute; `from` says
   * how: "choice" (default) takes layer l's chosen chunks, "query" scores layer l + N's chunks
   * against layer l's query on the GPU, "hidden" (InfiniGen's) against layer l + N's query
   * projected from layer l's input (normed and multiplied by layer l + N's W_q on the GPU). `steps` (default false) loads each layer's last-step
   * choice back at the start of a step for the first N layers (all layers when N is 0), which
   * no earlier layer forecasts. `adaptive` (default false) judges each step by the last ones
   * that prefetched: where its loads cost more host time than the misses they saved (chunks
   * chosen x the miss path's ms per chunk, measured live), it sits out `probe_steps` steps
   * (default 16, 1-4096) and then probes one step; changed live, at the next step. Exact: it
   * changes only what is resident, never what is attended.
   */
  prefetch: Schema.optional(
    Schema.Struct({
      layers: Schema.optional(Schema.Int.pipe(Schema.between(0, MAX_PREFETCH_LAYERS))),
      from: Schema.optional(Schema.Literal("choice", "query", "hidden")),
      steps: Schema.optional(Schema.Boolean),
      adaptive: Schema.optional(Schema.Boolean),
      probe_steps: Schema.optional(Schema.Int.pipe(Schema.between(1, MAX_PREFETCH_PROBE_STEPS))),
    }).annotations({ parseOptions: { onExcessProperty: "error" } }),
  ),
  /**
   * The chunk abstracts' GPU copy (leoam only), counted in the GPU budget either way:
   * `gpu_resident` "all" (the default) keeps every abstract on the GPU; "budgeted" keeps a cache
   * of them, evicted like chunks and filled from LMDB, and needs groups. `group_chunks` (0, the
   * default: none; else 2-4096) adds a min/max abstract per group of that many chunks: a step
   * scores the groups first, then only the chunks of the best ones. A change applies at the next request.
   */
  abstracts: Schema.optional(
    Schema.Struct({
      gpu_resident: Schema.optional(Schema.Literal("all", "budgeted")),
      group_chunks: Schema.optional(Schema.Int.pipe(Schema.between(0, MAX_GROUP_CHUNKS))),
    }).annotations({ parseOptions: { onExcessProperty: "error" } }),
  ),
  /**
   * Recompute instead of fetch (ALISA; tiered policies with fp16 chunks): chunks sealed by a
   * layer-major prefill keep their layer's input hidden states (fp16) on disk beside their K/V,
   * and a GPU cache miss the host arena cannot serve reads those and recomputes K and V on the
   * GPU (RMSNorm, the K/V rows of the QKV projection, RoPE) into its slot. `mode` "off" (the
   * default), "always", or "auto": on where the cost model says a disk chunk's hidden states
   * read at `disk_gb_per_s` (default 3) plus their projection at `gemm_tflops` (default 12, measured)
   * take less time than its K/V read; for MHA models it does, for GQA models (hidden states
   * larger than K+V) never, nor with compressed chunks ("always" needs fp16 chunks). Changed
   * live: at the next step; chunks sealed while off are fetched.
   */
  recompute: Schema.optional(
    Schema.Struct({
      mode: RecomputeModeSchema,
      disk_gb_per_s: Schema.optional(Rate),
      gemm_tflops: Schema.optional(Rate),
    }).annotations({ parseOptions: { onExcessProperty: "error" } }),
  ),
}).annotations({ identifier: "KvPolicyDocument", parseOptions: { onExcessProperty: "error" } })
export type KvPolicyDocument = typeof KvPolicyDocument.Type

/** A policy with every parameter filled in. */
export interface ResolvedPolicy {
  readonly name: PolicyName
  /** Tokens per chunk; with adaptive chunking, the largest chunk (a GPU cache slot's size). */
  readonly chunkTokens: number
  /** Adaptive chunking's smallest chunk (chunkTokens is its largest); undefined for fixed chunks. */
  readonly chunkMinTokens?: number
  readonly budgetTokens: number | undefined
  readonly budgetFraction: number | undefined
  readonly sinkTokens: number
  readonly recentTokens: number
  readonly eviction: EvictionName
  readonly compression: CompressionBits
  /** The pipelined step's depth; 0: off. */
  readonly pipelineDepth: number
  /** The pipelined step completes a layer expected to miss with a combine (true when left out). */
  readonly pipelineCombine?: boolean
  /** Prefetch: the layer distance of the query forecast (0: none) and the last step's choice. */
  readonly prefetchLayers?: number
  readonly prefetchFrom?: "choice" | "query" | "hidden"
  readonly prefetchSteps?: boolean
  /** Adaptive prefetch (off when left out) and the steps it sits out before a probe. */
  readonly prefetchAdaptive?: boolean
  readonly prefetchProbeSteps?: number
  /** The chunk abstracts' GPU copy: all or a budgeted cache; chunks per group abstract (0: no groups). */
  readonly abstractsResident: "all" | "budgeted"
  readonly groupChunks: number
  /** Recompute of disk chunks from hidden states, and the cost model's rates ("auto"); off when left out. */
  readonly recompute?: { readonly mode: RecomputeMode; readonly diskGBps: number; readonly gemmTflops: number }
}

/** Adaptive chunking's bounds when left out. */
export const ADAPTIVE_MIN_TOKENS = 16
export const ADAPTIVE_MAX_TOKENS = 256

/** Defaults: Quest's 16-token pages; leoam's 32-token chunks; a budget of 10 % of the context. */
const defaults: Record<PolicyName, Omit<ResolvedPolicy, "name" | "compression" | "pipelineDepth" | "pipelineCombine" | "prefetchLayers" | "prefetchFrom" | "prefetchSteps" | "prefetchAdaptive" | "prefetchProbeSteps" | "abstractsResident" | "groupChunks" | "recompute">> = {
  full: { chunkTokens: 16, budgetTokens: undefined, budgetFraction: undefined, sinkTokens: 0, recentTokens: 0, eviction: "lru" },
  "offload-all": { chunkTokens: 32, budgetTokens: undefined, budgetFraction: undefined, sinkTokens: 0, recentTokens: 0, eviction: "lru" },
  h2o: { chunkTokens: 16, budgetTokens: undefined, budgetFraction: 0.1, sinkTokens: 0, recentTokens: 64, eviction: "lru" },
  quest: { chunkTokens: 16, budgetTokens: undefined, budgetFraction: 0.1, sinkTokens: 16, recentTokens: 32, eviction: "lru" },
  leoam: { chunkTokens: 32, budgetTokens: undefined, budgetFraction: 0.1, sinkTokens: 32, recentTokens: 64, eviction: "lru" },
}

export class PolicyError extends Error {
  constructor(
    readonly code: "unknown_policy" | "invalid_policy",
    message: string,
  ) {
    super(message)
  }
}

/** Fills a validated document's defaults and checks what the schema cannot. */
export const resolvePolicy = (doc: KvPolicyDocument): ResolvedPolicy => {
  const d = defaults[doc.name]
  const topk = doc.selection?.topk
  const adaptive = doc.chunking && "adaptive" in doc.chunking ? doc.chunking.adaptive : undefined
  const fixed = doc.chunking && "fixed" in doc.chunking ? doc.chunking.fixed : undefined
  const chunkTokens = adaptive ? (adaptive.max_tokens ?? ADAPTIVE_MAX_TOKENS) : (fixed?.tokens ?? d.chunkTokens)
  const chunkMinTokens = adaptive ? (adaptive.min_tokens ?? ADAPTIVE_MIN_TOKENS) : undefined
  if (adaptive) {
    if (doc.name !== "leoam" && doc.name !== "offload-all") throw new PolicyError("invalid_policy", `chunking.adaptive needs a tiered policy (leoam, offload-all), not ${doc.name}`)
    if (chunkMinTokens! % 16 !== 0 || chunkTokens % 16 !== 0) throw new PolicyError("invalid_policy", `chunking.adaptive bounds ${chunkMinTokens}..${chunkTokens} must be multiples of 16 (the KV block size)`)
    if (chunkMinTokens! > chunkTokens) throw new PolicyError("invalid_policy", `chunking.adaptive.min_tokens ${chunkMinTokens} exceeds max_tokens ${chunkTokens}`)
  }
  if (chunkTokens % 16 !== 0) throw new PolicyError("invalid_policy", `chunking.fixed.tokens ${chunkTokens} is not a multiple of 16 (the KV block size)`)
  if (doc.name === "quest" && chunkTokens !== 16) throw new PolicyError("invalid_policy", "quest uses fixed 16-token pages")
  if (doc.name === "h2o" && chunkTokens !== 16) throw new PolicyError("invalid_policy", "h2o works on 16-token blocks")
  if (topk?.budget_tokens !== undefined && topk.budget_fraction !== undefined) {
    throw new PolicyError("invalid_policy", "selection.topk takes budget_tokens or budget_fraction, not both")
  }
  const budgetTokens = topk?.budget_tokens ?? (topk?.budget_fraction === undefined ? d.budgetTokens : undefined)
  const budgetFraction = topk?.budget_fraction ?? (topk?.budget_tokens === undefined ? d.budgetFraction : undefined)
  const sinkTokens = topk?.sink_tokens ?? d.sinkTokens
  const recentTokens = topk?.recent_tokens ?? d.recentTokens
  if (budgetTokens !== undefined && budgetTokens < sinkTokens + recentTokens) {
    throw new PolicyError("invalid_policy", `selection.topk.budget_tokens ${budgetTokens} is less than sink_tokens + recent_tokens (${sinkTokens + recentTokens})`)
  }
  const compression = doc.compression?.bits ?? 16
  if (compression !== 16 && doc.name !== "leoam" && doc.name !== "offload-all") {
    throw new PolicyError("invalid_policy", `compression.bits ${JSON.stringify(compression)} needs a tiered policy (leoam, offload-all); ${doc.name} keeps fp16 KV on the GPU`)
  }
  const pipeline = doc.pipeline
  if (pipeline !== undefined && doc.name !== "leoam" && (pipeline.enabled === true || pipeline.depth !== undefined)) {
    throw new PolicyError("invalid_policy", `pipeline needs leoam (its GPU chunk cache); ${doc.name} has no choice to pipeline`)
  }
  if (pipeline?.enabled === false && pipeline.depth !== undefined) throw new PolicyError("invalid_policy", "pipeline.depth with pipeline.enabled false")
  // Off unless asked for: a served request decodes in a batch, whose rows cannot run layers ahead
  // (only the combine applies there), and that has not been measured on a GPU.
  const pipelineDepth = pipeline?.enabled === true || (pipeline?.enabled === undefined && pipeline?.depth !== undefined) ? (pipeline.depth ?? DEFAULT_PIPELINE_DEPTH) : 0
  const prefetch = doc.prefetch
  if (prefetch !== undefined && doc.name !== "leoam" && ((prefetch.layers ?? 0) > 0 || prefetch.steps === true)) {
    throw new PolicyError("invalid_policy", `prefetch needs leoam (its GPU chunk cache); ${doc.name} has no choice to forecast`)
  }
  const fetching = { pipelineCombine: pipeline?.combine ?? true, prefetchLayers: prefetch?.layers ?? 0, prefetchFrom: prefetch?.from ?? "choice", prefetchSteps: prefetch?.steps ?? false, prefetchAdaptive: prefetch?.adaptive ?? false, prefetchProbeSteps: prefetch?.probe_steps ?? DEFAULT_PREFETCH_PROBE_STEPS }
  const abstractsResident = doc.abstracts?.gpu_resident ?? "all"
  const groupChunks = doc.abstracts?.group_chunks ?? 0
  if ((abstractsResident !== "all" || groupChunks !== 0) && doc.name !== "leoam") throw new PolicyError("invalid_policy", `abstracts needs leoam (its selection scores them); ${doc.name} keeps none on the GPU to budget or group`)
  if (groupChunks === 1) throw new PolicyError("invalid_policy", "abstracts.group_chunks 1 is no group: 0 (none) or 2 or more")
  if (abstractsResident === "budgeted" && groupChunks === 0) {
    throw new PolicyError("invalid_policy", "abstracts.gpu_resident budgeted needs group_chunks (2 or more): every step would otherwise score every chunk, so all abstracts would be needed at once")
  }
  const recompute = { mode: doc.recompute?.mode ?? "off", diskGBps: doc.recompute?.disk_gb_per_s ?? RECOMPUTE_DISK_GB_PER_S, gemmTflops: doc.recompute?.gemm_tflops ?? RECOMPUTE_GEMM_TFLOPS } as const
  if (recompute.mode !== "off" && doc.name !== "leoam" && doc.name !== "offload-all") throw new PolicyError("invalid_policy", `recompute needs a tiered policy (leoam, offload-all); ${doc.name} has no disk tier`)
  // auto with compressed chunks resolves but stays inactive (recompute.ts): their K/V are already small.
  if (recompute.mode === "always" && compression !== 16) throw new PolicyError("invalid_policy", `recompute always writes fp16 K/V into the GPU cache: it needs compression.bits 16, not ${JSON.stringify(compression)}`)
  return {
    name: doc.name,
    chunkTokens,
    ...(chunkMinTokens !== undefined ? { chunkMinTokens } : {}),
    budgetTokens,
    budgetFraction,
    sinkTokens,
    recentTokens,
    eviction: doc.eviction ?? d.eviction,
    compression,
    pipelineDepth,
    ...fetching,
    abstractsResident,
    groupChunks,
    recompute,
  }
}

const decodeDocument = Schema.decodeUnknownEither(KvPolicyDocument, { errors: "all", onExcessProperty: "error" })

/** A policy from a name or a parsed JSON document; errors say what is wrong. */
export const parsePolicy = (input: unknown): ResolvedPolicy => parsePolicyDocument(input).resolved

/** The validated document (a bare name becomes `{name}`) and its resolved parameters. */
export const parsePolicyDocument = (input: unknown): { readonly document: KvPolicyDocument; readonly resolved: ResolvedPolicy } => {
  if (typeof input === "string") {
    if (!(policyNames as ReadonlyArray<string>).includes(input)) {
      throw new PolicyError("unknown_policy", `unknown KV policy "${input}": expected one of ${policyNames.join(", ")} or a JSON policy file`)
    }
    const document: KvPolicyDocument = { name: input as PolicyName }
    return { document, resolved: resolvePolicy(document) }
  }
  const result = decodeDocument(input)
  if (result._tag === "Left") {
    const name = (input as { name?: unknown } | null)?.name
    if (typeof name === "string" && !(policyNames as ReadonlyArray<string>).includes(name)) {
      throw new PolicyError("unknown_policy", `unknown KV policy "${name}": expected one of ${policyNames.join(", ")}`)
    }
    throw new PolicyError("invalid_policy", `invalid KV policy: ${firstIssue(result.left)}`)
  }
  return { document: result.right, resolved: resolvePolicy(result.right) }
}

/** A resolved policy in the wire's snake_case. */
export const policyView = (p: ResolvedPolicy) => ({
  name: p.name,
  chunk_tokens: p.chunkTokens,
  chunk_min_tokens: p.chunkMinTokens ?? null,
  budget_tokens: p.budgetTokens ?? null,
  budget_fraction: p.budgetFraction ?? null,
  sink_tokens: p.sinkTokens,
  recent_tokens: p.recentTokens,
  eviction: p.eviction,
  compression_bits: p.compression,
  pipeline_depth: p.pipelineDepth,
  pipeline_combine: p.pipelineCombine ?? true,
  prefetch_layers: p.prefetchLayers ?? 0,
  prefetch_from: p.prefetchFrom ?? "choice",
  prefetch_steps: p.prefetchSteps ?? false,
  prefetch_adaptive: p.prefetchAdaptive ?? false,
  prefetch_probe_steps: p.prefetchProbeSteps ?? DEFAULT_PREFETCH_PROBE_STEPS,
  abstracts_gpu_resident: p.abstractsResident,
  group_chunks: p.groupChunks,
  recompute_mode: p.recompute?.mode ?? "off",
  recompute_disk_gb_per_s: p.recompute?.diskGBps ?? RECOMPUTE_DISK_GB_PER_S,
  recompute_gemm_tflops: p.recompute?.gemmTflops ?? RECOMPUTE_GEMM_TFLOPS,
})

/** A resolved policy on the wire (snake_case, every parameter filled in), decoded to a ResolvedPolicy. */
export const ResolvedPolicyWire = Schema.Struct({
  name: Schema.Literal(...policyNames),
  chunk_tokens: Schema.Int.pipe(Schema.positive()),
  /** Adaptive chunking's smallest chunk (chunk_tokens the largest); null for fixed chunks, left out by older senders. */
  chunk_min_tokens: Schema.optional(Schema.NullOr(Schema.Int)),
  budget_tokens: Schema.NullOr(Schema.Int),
  budget_fraction: Schema.NullOr(Schema.Number),
  sink_tokens: Schema.Int,
  recent_tokens: Schema.Int,
  eviction: Schema.Literal(...evictionNames),
  /** Left out by senders older than compression: 16. */
  compression_bits: Schema.optional(CompressionBitsSchema),
  /** The pipelined step's depth, 0: off; left out by senders older than the pipeline: 0. */
  pipeline_depth: Schema.optional(Schema.Int.pipe(Schema.between(0, MAX_PIPELINE_DEPTH))),
  /** Left out by senders older than the combine: true; older than prefetch: 0 and false. */
  pipeline_combine: Schema.optional(Schema.Boolean),
  prefetch_layers: Schema.optional(Schema.Int.pipe(Schema.between(0, MAX_PREFETCH_LAYERS))),
  prefetch_from: Schema.optional(Schema.Literal("choice", "query", "hidden")),
  prefetch_steps: Schema.optional(Schema.Boolean),
  /** Left out by senders older than adaptive prefetch: off, 16. */
  prefetch_adaptive: Schema.optional(Schema.Boolean),
  prefetch_probe_steps: Schema.optional(Schema.Int.pipe(Schema.between(1, MAX_PREFETCH_PROBE_STEPS))),
  /** The abstracts' GPU copy and group size; left out by senders older than them: all, 0. */
  abstracts_gpu_resident: Schema.optional(Schema.Literal("all", "budgeted")),
  group_chunks: Schema.optional(Schema.Int.pipe(Schema.between(0, MAX_GROUP_CHUNKS))),
  /** Recompute from hidden states and its cost model's rates; left out by senders older than it: off. */
  recompute_mode: Schema.optional(RecomputeModeSchema),
  recompute_disk_gb_per_s: Schema.optional(Schema.Number),
  recompute_gemm_tflops: Schema.optional(Schema.Number),
})

const ResolvedPolicyType = Schema.Struct({
  name: Schema.Literal(...policyNames),
  chunkTokens: Schema.Number,
  chunkMinTokens: Schema.optional(Schema.Number),
  budgetTokens: Schema.UndefinedOr(Schema.Number),
  budgetFraction: Schema.UndefinedOr(Schema.Number),
  sinkTokens: Schema.Number,
  recentTokens: Schema.Number,
  eviction: Schema.Literal(...evictionNames),
  compression: CompressionBitsSchema,
  pipelineDepth: Schema.Number,
  pipelineCombine: Schema.optional(Schema.Boolean),
  prefetchLayers: Schema.optional(Schema.Number),
  prefetchFrom: Schema.optional(Schema.Literal("choice", "query", "hidden")),
  prefetchSteps: Schema.optional(Schema.Boolean),
  prefetchAdaptive: Schema.optional(Schema.Boolean),
  prefetchProbeSteps: Schema.optional(Schema.Number),
  abstractsResident: Schema.Literal("all", "budgeted"),
  groupChunks: Schema.Number,
  recompute: Schema.optional(Schema.Struct({ mode: RecomputeModeSchema, diskGBps: Schema.Number, gemmTflops: Schema.Number })),
})

export const ResolvedPolicyFromWire: Schema.Schema<ResolvedPolicy, typeof ResolvedPolicyWire.Encoded> = Schema.transform(ResolvedPolicyWire, ResolvedPolicyType, {
  strict: true,
  decode: (w) => ({
    name: w.name,
    chunkTokens: w.chunk_tokens,
    ...(w.chunk_min_tokens != null ? { chunkMinTokens: w.chunk_min_tokens } : {}),
    budgetTokens: w.budget_tokens ?? undefined,
    budgetFraction: w.budget_fraction ?? undefined,
    sinkTokens: w.sink_tokens,
    recentTokens: w.recent_tokens,
    eviction: w.eviction,
    compression: w.compression_bits ?? 16,
    pipelineDepth: w.pipeline_depth ?? 0,
    pipelineCombine: w.pipeline_combine ?? true,
    prefetchLayers: w.prefetch_layers ?? 0,
    prefetchFrom: w.prefetch_from ?? "choice",
    prefetchSteps: w.prefetch_steps ?? false,
    prefetchAdaptive: w.prefetch_adaptive ?? false,
    prefetchProbeSteps: w.prefetch_probe_steps ?? DEFAULT_PREFETCH_PROBE_STEPS,
    abstractsResident: w.abstracts_gpu_resident ?? "all",
    groupChunks: w.group_chunks ?? 0,
    recompute: { mode: w.recompute_mode ?? "off", diskGBps: w.recompute_disk_gb_per_s ?? RECOMPUTE_DISK_GB_PER_S, gemmTflops: w.recompute_gemm_tflops ?? RECOMPUTE_GEMM_TFLOPS },
  }),
  encode: (p) => policyView(p),
})

const descriptions: Record<PolicyName, string> = {
  full: "all KV on the GPU, exact attention (the quality reference)",
  "offload-all": "KV on host and disk; every step fetches all of it to the GPU (FlexGen-style, exact)",
  h2o: "all KV on the GPU; attention over recent and heavy-hitter blocks by accumulated attention, the rest evicted",
  quest: "all KV on the GPU; per KV head, the top-k 16-token pages by min/max abstracts",
  leoam: "chunks with min/max abstracts in LMDB; the top chunks per layer under a budget moved from host or disk to a GPU chunk cache",
}

/** The JSON Schema of a document naming one policy (its parameters: the shared fields). */
const schemaOf = (name: PolicyName) => JSONSchema.make(Schema.Struct({ ...KvPolicyDocument.fields, name: Schema.Literal(name) }).annotations({ identifier: `KvPolicyDocument.${name}` }))

/** Every registered policy with its description, defaults and parameter schema (admin.policy.list). */
export const policyCatalog = () =>
  policyNames.map((name) => ({ name, description: descriptions[name], defaults: policyView(resolvePolicy({ name })), schema: schemaOf(name) }))
