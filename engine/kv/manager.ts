// The one seam between the forward pass and its KV cache (STYLE 10). The drivers in
// engine/model.ts call a KvManager per layer and never learn which policy it runs; the
// registry (engine/kv/registry.ts) is the only place that picks a manager by name.
// A manager owns the sequence's KV (pools, lists, tiers) and everything it dispatches for
// attention; only its own methods change that state. Attention of a decode step writes
// partials into the activations and sets the combine's uniform; the model's combine
// dispatch (in the layer's post) merges them.
import type { ModelConfig } from "../../models/types.ts"
import type { Dispatch, Uniform } from "../buffers.ts"
import type { PipelineKey, Pipelines } from "../pipelines.ts"
import type { TierStats } from "./tiered/index.ts"
import type { RecomputeModel } from "./tiered/recompute-pass.ts"
import type { KvBlockStore } from "./block-store.ts"
import type { KvPool } from "./pool.ts"

/**
 * The command stream of one step, shared by the driver and the manager: an open command
 * encoder with (lazily) an open compute pass. Benchmarks supply their own (timed passes per
 * dispatch, filtered dispatches); the engine's is engine/step-encoder.ts.
 */
export interface StepEncoder {
  /** Encodes dispatches into the open compute pass (those with a zero dimension are skipped). */
  encode(dispatches: ReadonlyArray<Dispatch>): void
  /** Gives the open compute pass to `use` (kernels that set their own workgroup counts). */
  compute(use: (pass: GPUComputePassEncoder) => void): void
  /** Ends the open pass and gives the command encoder to `use` (copies, passes of its own). */
  record(use: (encoder: GPUCommandEncoder) => void): void
  /** Submits what was encoded so far; encoding continues in a new command encoder. */
  submit(): void
  /** Ends the step: `last` adds to the final command encoder, which is then submitted. */
  finish(last?: (encoder: GPUCommandEncoder) => void): void
}

/**
 * A decode step's layers from `layer` on must be computed again: a pipelined step ran them
 * ahead of a layer whose choice, read back later, missed the GPU cache. The driver restores
 * that layer's input (kept when `rewinds` is set) and continues from it.
 */
export interface Rewind {
  readonly rewind: number
}

/**
 * A layer-major prefill in progress (KvManager.layerPrefill): the driver runs every slice of
 * the prompt through layer l (`beginSlice; pre; attend; post`, one submit per slice), then
 * `endLayer(l)`, then layer l + 1; afterwards `finish`, or `abort` if anything failed.
 */
export interface LayerPrefill {
  /** Tokens of each slice, in order; they add up to the prompt. */
  readonly slices: ReadonlyArray<number>
  /** Reserves slice i's slots in layer l (written to `act.slot`) and writes its uniforms. */
  beginSlice(l: number, i: number): void
  /** Encodes layer l's attention of slice i's queries over everything before them into `act.attn`. */
  attend(l: number, i: number, step: StepEncoder): void | Promise<void>
  /** After layer l's last slice is submitted: its KV is sealed (and on its way to the tiers) before layer l + 1 runs. */
  endLayer(l: number): Promise<void>
  /** After the last layer. */
  finish(): void
  /** A failure mid-way: the sequence goes back to where the prefill began. */
  abort(): void
}

/** When a policy change would take effect. */
export type KvApplies = "next_step" | "next_request"

/** The activations attention reads and writes (shapes in engine/model-resources.ts). */
export interface AttentionBuffers {
  /** (chunk, H, D) f32, roped queries. */
  readonly q: GPUBuffer
  /** (chunk, H, D) f32, prefill attention output (decode: the combine writes it). */
  readonly attn: GPUBuffer
  /** (chunk) u32, the KV slot (block * BS + offset) each token's K and V are written to. */
  readonly slot: GPUBuffer
  /** (H, partials, D) f32 and (H, partials) vec2 (max, sum): decode attention partials. */
  readonly partO: GPUBuffer
  readonly partML: GPUBuffer
  /** (chunk, hidden) f32, the residual stream (a layer's input while its attention runs); recompute records it. */
  readonly x?: GPUBuffer
}

/**
 * What prefetch's hidden-state forecast (InfiniGen's; engine/kv/tiered/forecast-query.ts) needs
 * of the model: the decode row's residual input, its RoPE, each layer's attention norm and QKV
 * weights, and the model's QKV GEMV (with its attention norm fused) and its rows per workgroup.
 */
export interface ForecastInputs {
  /** (chunk, hidden) f32: row 0 is layer l's input while layer l attends (decode). */
  readonly x: GPUBuffer
  /** (chunk, D/2) vec2 (cos, sin): row 0 is the decode position's. */
  readonly rope: GPUBuffer
  readonly layers: ReadonlyArray<{ readonly attnNorm: GPUBuffer; readonly wqkv: GPUBuffer; readonly bqkv?: GPUBuffer }>
  readonly gemv: { readonly key: PipelineKey; readonly biasKey: PipelineKey; readonly rowsPerGroup: number }
}

/** What every manager is built from (besides its policy). */
export interface KvContext {
  readonly device: GPUDevice
  readonly pipelines: Pipelines
  readonly config: ModelConfig
  /** Tokens per KV block (page) of the pools. */
  readonly blockTokens: number
  readonly maxContext: number
  /** Most tokens of one prefill pass. */
  readonly prefillChunk: number
  readonly act: AttentionBuffers
  /** The combine's uniform (H, S, D, stride): the manager sets S (and stride) per step or layer. */
  readonly combine: Uniform
  /** The model's attention kernels (the managers' dispatches use the same pipelines); the tiered cache's recompute reuses its GEMM, RMSNorm and RoPE. */
  readonly keys: { readonly attnDecode: PipelineKey; readonly attnPrefill: PipelineKey } & Partial<RecomputeModel["keys"]>
  /** The model's layer weights (the tiered cache's recompute projects K and V with them). */
  readonly weights?: RecomputeModel["weights"]
  /** Where a manager that keeps all KV in a paged pool takes its blocks: a store shared by a batch's sequences; absent: its own. */
  readonly blockStore?: KvBlockStore
  /** The model's side of prefetch's hidden-state forecast (GpuModel always gives it); absent: that forecast is off. */
  readonly forecast?: ForecastInputs
}

/**
 * A manager that attends every token of a pool whose blocks live in a shared store: a decode
 * batch (engine/batch-attention.ts) reserves its token and attends it with the other rows in
 * one dispatch, instead of the manager's own decode.
 */
export interface BatchedKv {
  readonly pool: KvPool
  /** Reserves the step's token slot (block * BS + offset) and returns it; nothing else. */
  reserveBatched(): number
}

export interface KvStats {
  /** Decode steps since the manager was built that attended a selection of the context, not all of it. */
  readonly selectiveSteps: number
  /** The tiered cache's counters since the last reset (managers with host and disk tiers only). */
  readonly tiers?: TierStats
}

/**
 * Per layer, the drivers call: decode `beginDecode; for l: attendDecode(l); endLayers;
 * endDecode; (submit); afterDecode` (a Rewind from attendDecode or endLayers sends the loop
 * back to an earlier layer), prefill `settle; prefillRoom; beginPrefill(m); for l:
 * attendPrefill(l); (submit); afterPrefill` per pass, or where the manager offers one, a
 * layer-major prefill (`settle; layerPrefill(n)`, then LayerPrefill's own order). `attend*` return a promise only when they
 * must wait for the GPU or the tiers (the driver then continues when it resolves);
 * otherwise the step is encoded synchronously into one command stream.
 * `P` is the manager's own kind of policy (the registry only hands it its own).
 */
export interface KvManager<P = unknown> {
  /** Tokens in the sequence's cache. */
  readonly length: number
  /** Per layer, the pools the QKV dispatches write K and V into at `act.slot`: (blocks, KV, BS, D) f16 each. */
  readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>
  /** GPU bytes the manager holds for KV (pools, lists, staging). */
  readonly gpuBytes: number
  /** Set where a batch may attend for the manager (BatchedKv). */
  readonly batched?: BatchedKv

  /**
   * Reserves the step's token slot (written to `act.slot`) and writes the step's uniforms.
   * `rewindable`: the driver keeps layer inputs this step, so the manager may rewind.
   */
  beginDecode(rewindable?: boolean): void | Promise<void>
  /**
   * Whether this step may rewind (read after beginDecode): the driver then keeps each layer's
   * input, the residual stream before its pre, to restore it.
   */
  readonly rewinds?: boolean
  /** Encodes layer l's attention of the step's query into the partials and sets the combine's uniform. */
  attendDecode(l: number, step: StepEncoder): void | Promise<void | Rewind>
  /** After the last layer's post, before the head: settles what the step left unchecked (may rewind). */
  endLayers?(step: StepEncoder): void | Promise<void | Rewind>
  /** Adds to the step's last command encoder, before its submit (e.g. timestamp resolves). */
  endDecode(encoder: GPUCommandEncoder): void
  /** After the step's last submit (e.g. sealing what the step completed). */
  afterDecode(): void

  /** Most tokens the next prefill pass may take (a tiered tail's room); call after `settle`. */
  prefillRoom(): number
  /** Reserves slots for the pass's m tokens (written to `act.slot`) and writes the pass's uniforms. */
  beginPrefill(m: number): void
  /** Encodes layer l's attention of the pass's queries over the whole sequence into `act.attn`. */
  attendPrefill(l: number, step: StepEncoder): void | Promise<void>
  /** After the pass's last submit. */
  afterPrefill(): void
  /**
   * Layer-major prefill of the next n tokens (call after `settle`), where the manager prefills
   * that way: one whose token-major passes would re-read the history from slower tiers. The
   * sequence holds the n tokens from here on (`abort` takes them back). Undefined: token-major.
   */
  layerPrefill?(n: number): LayerPrefill | undefined

  /** When `next` would take effect; throws KvBudgetError when it cannot fit this manager. */
  applies(next: P): KvApplies
  /** Makes `next` the policy from the next step on (after `applies` said "next_step"). */
  swap(next: P): void
  /** Keeps the first `length` tokens. */
  truncate(length: number): void
  /** Forgets the sequence. */
  reset(): void
  /** Waits for work a step left in flight. */
  settle(): Promise<void>
  /** Resumes the sequence the tiers hold for this manager's session; returns its length. */
  resume(): number
  /**
   * Persistent sessions (managers with host and disk tiers only): forgets the current
   * sequence and works on the stored session `id` from now on, resumed from what the tiers
   * hold of it; returns that length (its sealed tokens).
   */
  openSession?(id: string): number
  /**
   * Leaves the stored session (after `settle`): its sealed chunks past `keepTokens` are dropped
   * from every tier, the rest stay; the manager is back on its own sequence, empty. With
   * `stay` it stays on the session instead, holding its first `keepTokens` tokens (at most
   * the sequence) where they are, GPU cache included, for the session's next run to go on
   * from (a RangeError where the tail no longer holds its last tokens: close without then).
   */
  closeSession?(keepTokens: number, stay?: boolean): void
  stats(): KvStats
  /**
   * Benchmarks: appends `tokens` tokens without their prefill. Before each batch of appends
   * `fill(bytes, batch, from)` must write K and V into bytes [from (default 0), bytes) of every pool.
   */
  appendSynthetic(tokens: number, fill: (bytes: number, batch: number, from?: number) => void): Promise<void>
  destroy(): void
}

/** What a manager that cannot resume answers. */
export const cannotResume = (): never => {
  throw new RangeError("resume needs a KV manager with host and disk tiers (leoam or offload-all)")
}
