// Recompute instead of fetch (issue 13 §5, ALISA; policy `recompute`). Chunks sealed by a
// layer-major prefill keep their layer's input hidden states (fp16, hidden-record.ts) on disk
// beside their K/V, under layer HIDDEN_LAYER_BASE + l of the chunk index. Beside, not instead:
// the K/V record stays the one every other reader uses (the host arena's promotion, resuming a
// session, prefix links, offload-all, compression), so nothing else changes and turning the
// policy off is exact at once; the cost is the hidden records' disk space, the cheap tier's.
// A GPU cache miss that the host arena cannot serve and that has a hidden record is read as
// hidden states (half the bytes of K/V for an MHA model) and recomputed on the GPU into its
// slot (recompute-pass.ts) instead of being fetched; recomputed chunks are not promoted into
// the host arena (they never pass through the host as K/V). `auto` decides per model by the
// cost model of kv/recompute-cost.ts. A chunk unsealed since its record was written (a
// truncate) is fetched: its record may describe other tokens than those sealed there next.
import type { DiskStore } from "../../../kv/disk-store.ts"
import { HIDDEN_LAYER_BASE, recomputesFor } from "../../../kv/recompute-cost.ts"
import type { Placed } from "../../../kv/plan.ts"
import { KvTierError, tierErrorOf } from "../../../kv/tier-errors.ts"
import type { TierIo } from "../../../kv/tier-io.ts"
import type { ModelConfig } from "../../../models/types.ts"
import type { Pipelines } from "../../pipelines.ts"
import type { ChunkTables } from "./chunks.ts"
import { HiddenRecorder } from "./hidden-record.ts"
import type { TieredPolicy } from "./layout.ts"
import { RECOMPUTE_ROWS, type RecomputeJob, type RecomputeModel, RecomputePass, hiddenRowsKey } from "./recompute-pass.ts"

/** Where the model's weights and kernel keys come from (the manager's KvContext): recompute needs all four keys. */
export interface RecomputeSource {
  readonly weights?: RecomputeModel["weights"]
  readonly keys: Partial<RecomputeModel["keys"]>
}

const modelOf = (s: RecomputeSource | undefined): RecomputeModel | undefined => {
  const k = s?.keys
  return s?.weights && k?.gemm && k.gemmBias && k.rmsnorm && k.rope ? { weights: s.weights, keys: { gemm: k.gemm, gemmBias: k.gemmBias, rmsnorm: k.rmsnorm, rope: k.rope } } : undefined
}
import type { TierCounters, TierStats } from "./stats.ts"

export class Recompute {
  private policy: TieredPolicy["recompute"]
  private pass: RecomputePass | undefined
  /** The policy's mode (the policy above is undefined where compression rules recompute out). */
  private mode: "off" | "auto" | "always" = "off"
  private readonly model: RecomputeModel | undefined
  /** "session/layer/chunk" of chunks unsealed since their hidden record was written. */
  private readonly stale = new Set<string>()

  /** The recompute's own kernels, compiled when a policy first turns it on (the others are the model's). */
  private compiled: Promise<void> | undefined

  constructor(
    private readonly device: GPUDevice,
    private readonly pipelines: Pipelines,
    private readonly c: ModelConfig,
    private readonly tables: ChunkTables,
    private readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>,
    private readonly io: TierIo,
    private readonly store: DiskStore,
    /** The model's weights and kernel keys; absent (a cache built without them): never on. */
    source: RecomputeSource | undefined,
    policy: TieredPolicy,
    private readonly counters: () => TierCounters,
  ) {
    this.model = modelOf(source)
    this.setPolicy(policy)
  }

  setPolicy(next: TieredPolicy): void {
    // Compressed chunks are never recomputed: the GPU slots of decode may hold them compressed, and their K/V are small already.
    this.policy = (next.compression ?? 16) === 16 ? next.recompute : undefined
    this.mode = next.recompute?.mode ?? "off"
    if (this.model !== undefined && recomputesFor(this.policy, this.c)) this.compiled ??= this.pipelines.prewarm([hiddenRowsKey(true), hiddenRowsKey(false)])
  }

  /** Resolves once the kernels of a policy that turned recompute on are compiled (the cache's settle waits for it). */
  async ready(): Promise<void> {
    await this.compiled
  }

  /** Whether the policy recomputes this model's disk chunks now (and keeps hidden records at layer-major prefill). */
  get on(): boolean {
    return this.model !== undefined && recomputesFor(this.policy, this.c)
  }

  /** A recorder of the hidden states of a layer-major prefill of tokens [pos0, end), when on. */
  recorder(pos0: number, end: number, x: GPUBuffer | undefined): HiddenRecorder | undefined {
    if (!this.on || x === undefined) return undefined
    return new HiddenRecorder(this.device, this.pipelines, this.c, this.tables, this.store, this.io.session, x, pos0, end, (l, ch, bytes) => {
      this.stale.delete(this.keyOf(l, ch))
      this.counters().hiddenWritten += bytes
    })
  }

  /** Chunk ch of layer l leaves the sequence: a record under its index no longer describes what is sealed there next. */
  unsealed(l: number, ch: number): void {
    this.stale.add(this.keyOf(l, ch))
  }

  private keyOf(l: number, ch: number): string {
    return `${this.io.session}/${l}/${ch}`
  }

  /** The loads of layer l it recomputes: on, not in the host arena, with a current hidden record. */
  claims(l: number, loads: ReadonlyArray<Placed>): Placed[] {
    if (!this.on || loads.length === 0) return []
    const session = this.io.session
    return loads.filter(({ chunk }) => {
      if (this.io.hostHolds(l, chunk) || this.stale.has(this.keyOf(l, chunk))) return false
      try {
        return this.store.chunkEntry([session, HIDDEN_LAYER_BASE + l, chunk])?.tokens === this.tables.layers[l].sizes[chunk]
      } catch (e) {
        throw tierErrorOf(e)
      }
    })
  }

  /**
   * Reads the hidden records of `loads` (chunks of layer l, each in its slot `blockOf(slot)`)
   * from disk and recomputes their K and V into their slots, in batches of RECOMPUTE_ROWS
   * tokens (the reads of a batch in parallel). Resolves once the last batch is submitted.
   */
  async run(l: number, loads: ReadonlyArray<Placed>, blockOf: (slot: number) => number): Promise<void> {
    if (loads.length === 0) return
    const pass = (this.pass ??= new RecomputePass(this.device, this.pipelines, this.c, this.model!, this.pools, this.tables.blockTokens))
    const L = this.tables.layers[l]
    const rowBytes = this.c.hiddenSize * 2
    const k = this.counters()
    const t0 = performance.now()
    const host = new Uint8Array(RECOMPUTE_ROWS * rowBytes)
    for (let i = 0; i < loads.length; ) {
      const jobs: RecomputeJob[] = []
      let m = 0
      while (i < loads.length && m + L.sizes[loads[i].chunk] <= RECOMPUTE_ROWS) {
        const { chunk, slot } = loads[i++]
        jobs.push({ start: L.starts[chunk], tokens: L.sizes[chunk], block: blockOf(slot) })
        m += L.sizes[chunk]
      }
      if (jobs.length === 0) throw new RangeError(`recompute: a chunk of ${L.sizes[loads[i].chunk]} tokens exceeds a batch of ${RECOMPUTE_ROWS}`)
      const first = i - jobs.length
      let at = 0
      await Promise.all(
        jobs.map((j, n) => {
          const into = host.subarray(at, (at += j.tokens * rowBytes))
          return this.store.readChunkAsync([this.io.session, HIDDEN_LAYER_BASE + l, loads[first + n].chunk], into).then((got) => {
            if (got.length !== into.length) throw new KvTierError("chunk_corrupt", `hidden record ${l}/${loads[first + n].chunk} is ${got.length} bytes, want ${into.length}`)
          }, (e) => Promise.reject(tierErrorOf(e)))
        }),
      )
      pass.submit(l, jobs, host.subarray(0, at))
      k.recomputed += jobs.length
      k.hiddenBytesRead += at
      k.hostMisses += jobs.length
      k.diskHits += jobs.length
      k.diskBytesRead += at
    }
    k.recomputeMs += performance.now() - t0
  }

  /** GPU bytes of the recompute buffers (built at the first recompute). */
  get gpuBytes(): number {
    return this.pass?.bytes ?? 0
  }

  /** The reply's `kv` statistics with the recompute's. */
  stats(k: TierCounters, s: TierStats): TierStats {
    return {
      ...s,
      recompute: {
        mode: this.mode,
        active: this.on,
        chunks_recomputed: k.recomputed,
        chunks_fetched_from_disk: k.diskHits - k.recomputed,
        hidden_bytes_read: k.hiddenBytesRead,
        hidden_bytes_written: k.hiddenWritten,
        ms: k.recomputeMs,
      },
    }
  }

  destroy(): void {
    this.pass?.destroy()
  }
}
