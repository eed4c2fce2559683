// The gpu-executor's batched runs (continuous batching, issue 14): each run gets a lane, a
// sibling of the executor's model on its weights with a KV cache of its own sized for the
// run, and joins the engine's batch loop (engine/batch-loop.ts). A run is admitted when its
// KV fits: lanes of a policy that keeps all KV on the GPU reserve (prompt + max_tokens)
// tokens of KV against the GPU budget; a tiered lane gets a share of the GPU budget when it
// is built, the free bytes split among the lanes that start together (the whole budget for
// a lone request; fewer lanes than B when B shares would fall below a lane's minimum); a
// request that then waits for budget alone gets a share that running lanes give back at the
// next step boundary (actors/lane-reshare.ts: they move to smaller shares, and grow back
// when a lane ends); and
// the lanes share the host arena, whose overflow goes to disk (actors/kv-admission.ts:
// arrival order; serial runs alone once the batch is empty). A plain request under a tiered
// policy with fixed chunks links the whole chunks of its prompt's longest prefix that a
// running request or a stored session holds (kv/prefix-index.ts; disk entries pointing at
// the same bytes, written once and freed with their last user) and prefills only the rest;
// a lane that ends while such a request waits for KV room keeps its prompt's chunks for it
// (kv/prefix-holds.ts); on the GPU a lane copies such chunks from the slots of a lane running
// beside it that holds them instead of uploading them (engine/kv/tiered/peers.ts). Under a
// GPU budget, lanes of a policy that keeps all KV on the GPU take their blocks from one store
// of the budget's size (engine/kv/block-store.ts), so that a
// batch of full-attention lanes attends all of them in one dispatch a layer
// (engine/batch-attention.ts); admission keeps their blocks within it. A session run's lane
// stays on the GPU after it, on the session, while no other run wants the GPU (`parked`):
// the session's next question goes on in it. Only this module's functions change the lanes.
import { BatchLoop } from "../engine/batch-loop.ts"
import type { GenerateOptions, GenerateResult } from "../engine/generate.ts"
import { isTiered, kvBytesPerToken, kvEngineOptions, kvMinimumBytes, type KvTiers } from "../engine/kv/registry.ts"
import type { GpuModel } from "../engine/model.ts"
import { KvBlockStore } from "../engine/kv/block-store.ts"
import { TierPeers, type TierStats } from "../engine/kv/tiered/index.ts"
import { laneTierStats } from "../engine/kv/tiered/reshare.ts"
import { runPhase } from "../kv/run-phases.ts"
import type { ResolvedPolicy } from "../protocol/policy.ts"
import type { SessionLane } from "./executor-sessions.ts"
import { linkSharedPrefix, prefixChunkKeys, type PrefixIndex } from "../kv/prefix-index.ts"
import { PrefixHolds } from "../kv/prefix-holds.ts"
import { KvAdmission } from "./kv-admission.ts"
import { LaneReshare } from "./lane-reshare.ts"

export interface BatchDeps {
  /** The executor's model now (the lanes' weights; replaced by a policy change). */
  readonly model: () => GpuModel
  /** The policy new lanes are built with. */
  readonly policy: () => ResolvedPolicy
  readonly tiers: Omit<KvTiers, "session">
  /** Key prefix of the lanes' chunks in the host arena and LMDB. */
  readonly session: string
  readonly maxBatch: number
  /** Prompt tokens prefilled between two decode steps. */
  readonly prefillSlice: number
  /** Who holds which prompt and document chunks: the lanes running here and the stored sessions (shared with actors/executor-sessions.ts). */
  readonly prefixes: PrefixIndex
  /** Before each batched decode step (a live policy change applies there). */
  readonly beforeStep: () => void
}

/** Extra tokens a lane holds beyond prompt + max_tokens (the tiered tail's slack). */
const LANE_SLACK = 16
/** Extra tokens a session run's lane holds, so that it can stay for the session's next questions (parked). */
const SESSION_ROOM = 4096

export const executorBatch = (deps: BatchDeps) => {
  let loop: BatchLoop | undefined
  /** The lanes built, by run id. */
  const lanes = new Map<string, GpuModel>()
  let laneCount = 0
  const admission = new KvAdmission(deps.maxBatch, deps.tiers.gpuBudgetBytes)

  /** GPU budget shares of the tiered lanes running, by run id. */
  const shares = new Map<string, number>()
  /** Prompt tokens requests took from a shared prefix since start. */
  let sharedTokens = 0
  /** Ended lanes' prompt chunks kept for the requests waiting to start that begin alike. */
  const holds = deps.tiers.store ? new PrefixHolds(deps.prefixes, deps.tiers.store) : undefined
  /** The tiered lanes running, which copy the shared prefix chunks a peer holds on the GPU from its slots instead of uploading them (LEOAM_PEER_COPIES=0: not, to compare). */
  const peers = deps.tiers.store && process.env.LEOAM_PEER_COPIES !== "0" ? new TierPeers(deps.tiers.store) : undefined
  /** The GPU budget as one store of KV blocks for the lanes that keep all KV on the GPU, on the weights it was made for. */
  let blocks: { readonly store: KvBlockStore; readonly weights: GpuModel["weights"] } | undefined
  /** Stores of earlier weights, freed once their lanes gave every block back. */
  const retired: KvBlockStore[] = []
  /** Moves running tiered lanes to other budget shares at step boundaries (a newcomer's share; a lane ended; LEOAM_RESHARE=0: not, to compare). */
  const reshare = new LaneReshare({
    admission,
    shares,
    lanes,
    main: deps.model,
    loop: () => loop,
    stores: (gpuBudgetBytes, session) => ({ gpuBudgetBytes, arena: deps.tiers.arena!, store: deps.tiers.store!, session, peers }),
  })

  /**
   * The block store of a lane that keeps all KV on the GPU, where a GPU budget sizes it (and a
   * layer's pool of it is a buffer the device can bind): made at the first such lane.
   */
  /**
   * Frees the store once no lane holds its blocks and the policy's lanes no longer use it (a
   * tiered policy: its lanes have budget shares of their own). Across a live change between a
   * tiered policy and one that keeps all KV on the GPU, the store and tiered shares may both be
   * allocated until the old policy's lanes end (up to twice the budget).
   */
  const freeIdleStore = (): void => {
    if (blocks && blocks.store.available === blocks.store.blocks && isTiered(deps.policy())) {
      blocks.store.destroy()
      blocks = undefined
    }
  }

  const sharedBlocks = (main: GpuModel): KvBlockStore | undefined => {
    const budget = deps.tiers.gpuBudgetBytes
    if (budget === undefined) return undefined
    for (const old of retired.filter((r) => r.available === r.blocks)) {
      retired.splice(retired.indexOf(old), 1)
      old.destroy()
    }
    if (blocks?.weights === main.weights) return blocks.store
    const c = main.config
    const count = Math.floor(budget / (main.blockTokens * kvBytesPerToken(c)))
    const layerBytes = count * main.blockTokens * c.numKvHeads * c.headDim * 2
    if (count < 1 || layerBytes > main.gpu.limits.maxStorageBufferBindingSize) return undefined
    if (blocks) retired.push(blocks.store)
    blocks = { store: new KvBlockStore(main.gpu.device, c, main.blockTokens, count), weights: main.weights }
    return blocks.store
  }

  /**
   * A lane's first prefill turn under a tiered policy with fixed chunks: links the whole
   * chunks of the longest prefix of `prompt` that another running lane or a stored session
   * holds on disk (all layers sealed) into this lane's session and resumes them; resolves
   * to the prompt tokens held. The lane then holds its prompt's chunks for later lanes and
   * sessions (once its prefill seals them).
   */
  const sharePrefix = (runId: string, lane: GpuModel, session: string, prompt: ReadonlyArray<number>, chunkTokens: number, user: string) => async (): Promise<number> => {
    const keys = prefixChunkKeys(prompt, chunkTokens, user)
    // The last prompt token is prefilled by the lane (its logits choose the first token).
    const linked = linkSharedPrefix(deps.prefixes, deps.tiers.store!, session, keys.slice(0, Math.floor((prompt.length - 1) / chunkTokens)), lane.config.numLayers)
    holds?.settle(runId)
    const held = linked ? lane.openSession(session) : 0
    sharedTokens += held
    deps.prefixes.add(session, keys)
    return held
  }

  /** The least GPU budget a tiered lane of `tokens` tokens accepts (its sink, recent, one chosen chunk, the tail and staging). */
  const laneMinBytes = (policy: ResolvedPolicy, tokens: number): number => {
    const main = deps.model()
    const spec = kvEngineOptions(policy, { ...deps.tiers, session: deps.session }, main.config, tokens).kv
    return kvMinimumBytes(spec, main.config, { blockTokens: main.blockTokens, maxContext: tokens, prefillChunk: main.prefillChunk })
  }

  /** GPU bytes a lane of a policy that keeps all KV on the GPU reserves: all of it. */
  const laneBytes = (tokens: number): number => Math.ceil(tokens / 16) * 16 * kvBytesPerToken(deps.model().config)

  /** Admission of a lane for `tokens` tokens: its GPU bytes reserved, and the budget its KV manager is built with. */
  const admit = async (policy: ResolvedPolicy, tokens: number): Promise<{ reserved: number | undefined; gpuBudgetBytes: number | undefined }> => {
    if (!isTiered(policy)) {
      const bytes = laneBytes(tokens)
      await admission.admit(bytes)
      return { reserved: bytes, gpuBudgetBytes: deps.tiers.gpuBudgetBytes }
    }
    const share = await admission.admitShare(laneMinBytes(policy, tokens))
    return { reserved: share, gpuBudgetBytes: share }
  }

  /**
   * The lane of the last session run, kept with its admission (its GPU budget share) while no
   * other run wants one: that session's next run goes on in it (no lane to build, no chunk
   * tables and abstracts to resume from LMDB, the chunks its GPU slots hold not uploaded
   * again; a 16-token question to a 32K document paid all three). Any other run, a serial
   * one, a policy or weights change, or the session's close or delete lets it go first.
   */
  let parked: { readonly stored: string; readonly lane: GpuModel; readonly session: string; readonly reserved: number | undefined; readonly gpuBudgetBytes: number | undefined; readonly main: GpuModel; readonly policy: ResolvedPolicy } | undefined
  /** Serial runs waiting for the executor: no lane is parked for a session meanwhile. */
  let serialWaiting = 0
  /** Session runs that went on in a parked lane, since start. */
  let warmRuns = 0

  /** Lets the parked lane go (only where it is stored session `stored`, if given). */
  const unpark = (stored?: string): void => {
    const p = parked
    if (!p || (stored !== undefined && p.stored !== stored)) return
    parked = undefined
    try {
      p.lane.reset()
      p.lane.destroy()
    } finally {
      admission.release(p.reserved)
      freeIdleStore()
    }
  }

  /** The parked lane for a run on stored session `stored` of `tokens` tokens, if it can go on there; any other lets the parked one go. */
  const takeParked = (stored: string | undefined, tokens: number, policy: ResolvedPolicy) => {
    const p = parked
    if (p && p.stored === stored && p.policy === policy && p.main === deps.model() && p.lane.maxContext >= tokens) {
      parked = undefined
      warmRuns++
      return p
    }
    unpark()
    return undefined
  }

  /**
   * Builds a lane for `tokens` tokens once its KV is admitted, hands it to `use` (which runs
   * it through the loop), and frees it when `use` ends. A run on stored session `stored`
   * takes the lane parked on it, if any, and parks its own where `use` calls park().
   */
  const withLane = async <T>(runId: string, tokens: number, use: (lane: GpuModel, loop: BatchLoop, session: string, parking: SessionLane) => Promise<T>, movable = false, stored?: string): Promise<T> => {
    const policy = deps.policy()
    let t = performance.now()
    const reuse = takeParked(stored, tokens, policy)
    // A session's lane is built with room for its next questions, so that it can stay for them.
    if (stored !== undefined && !reuse) tokens = Math.min(tokens + SESSION_ROOM, deps.model().maxContext)
    const { reserved, gpuBudgetBytes } = reuse ?? (await admit(policy, tokens))
    t = runPhase("admit", t)
    let parks = false
    try {
      if (isTiered(policy) && gpuBudgetBytes !== undefined) shares.set(runId, gpuBudgetBytes)
      const main = deps.model()
      const session = reuse?.session ?? `${deps.session}-lane-${laneCount++}`
      const kv = kvEngineOptions(policy, { ...deps.tiers, gpuBudgetBytes, session, peers }, main.config, tokens)
      const model = reuse?.lane ?? (await main.sibling({ maxContext: tokens, ...kv, ...(isTiered(policy) ? {} : { kvBlocks: sharedBlocks(main) }) }))
      lanes.set(runId, model)
      runPhase("lane", t)
      if (movable && shares.has(runId)) reshare.add(runId, { session, minBytes: laneMinBytes(policy, tokens) })
      loop ??= new BatchLoop(main, { capacity: deps.maxBatch, prefillSlice: deps.prefillSlice, ...(process.env.LEOAM_RESHARE === "0" ? {} : { between: () => reshare.atBoundary(), betweenWaits: () => reshare.wanted() }) }, deps.beforeStep)
      // LEOAM_SESSION_PARK=0: no lane stays (every session run resumes from the tiers, to compare).
      const parking = { warm: reuse !== undefined, park: () => (parks = stored !== undefined && process.env.LEOAM_SESSION_PARK !== "0") }
      try {
        return await use(model, loop, session, parking)
      } finally {
        try {
          // Runs waiting to start that begin like this one take its prompt's chunks from a hold.
          holds?.holdFor(session, model.config.numLayers, runId)
        } catch (e) {
          process.stderr.write(`leoam gpu-executor: no hold for the prefix of ${session} (${(e as Error).message}); runs waiting for it prefill theirs\n`)
        }
        deps.prefixes.remove(session)
        // The lane now: another if it moved to another share; none left if a move lost it.
        const now = lanes.get(runId) ?? model
        lanes.delete(runId)
        // Parked only where nothing waits for the executor's budget or the executor itself.
        const moved = reshare.remove(runId)
        parks &&= !moved && admission.stats.waiting === 0 && serialWaiting === 0 && deps.policy() === policy && deps.model() === main
        if (parks) parked = { stored: stored!, lane: now, session, reserved: shares.get(runId) ?? reserved, gpuBudgetBytes, main, policy }
        else if (!moved) {
          now.reset()
          now.destroy()
        }
        freeIdleStore()
      }
    } finally {
      const held = shares.get(runId) ?? reserved
      shares.delete(runId)
      if (!parks) admission.release(held)
    }
  }

  return {
    /** Runs `prompt` in the batch once its KV is admitted; its lane is freed when it ends. */
    /** `user` scopes prefix sharing: the requester's own requests and sessions only. */
    run: (runId: string, prompt: ReadonlyArray<number>, options: GenerateOptions, user: string): Promise<{ r: GenerateResult; kv: TierStats | undefined; shared: number }> => {
      const sharable = (policy: ResolvedPolicy) => isTiered(policy) && policy.chunkMinTokens === undefined && deps.tiers.store !== undefined
      const now = deps.policy()
      if (sharable(now)) holds?.wait(runId, prefixChunkKeys(prompt, now.chunkTokens, user).slice(0, Math.floor((prompt.length - 1) / now.chunkTokens)))
      return withLane(runId, Math.min(prompt.length + options.maxTokens + LANE_SLACK, deps.model().maxContext), async (lane, loop, session) => {
        const policy = deps.policy()
        let shared = 0
        const prepare = sharable(policy) && lane.hasSessions ? sharePrefix(runId, lane, session, prompt, policy.chunkTokens, user) : undefined
        const r = await loop.generate(lane, prompt, options, prepare && (async () => (shared = await prepare())))
        // The whole request's counters, also where its lane was moved to another share (reshare.ts).
        return { r, kv: laneTierStats(lanes.get(runId) ?? lane), shared }
      }, true).finally(() => holds?.settle(runId))
    },

    /**
     * A session run in the batch: a lane of `tokens` tokens (the session's document, the
     * run's prompt and its tokens; room for later questions besides) where `use` resumes
     * stored session `stored` (or goes on in the lane parked on it: `parking.warm`) and
     * generates through the loop (`generate` with `continue`; `maxTokens` 0 only prefills).
     */
    session: <T>(runId: string, stored: string, tokens: number, use: (lane: GpuModel, generate: (prompt: ReadonlyArray<number>, options: GenerateOptions) => Promise<GenerateResult>, parking: SessionLane) => Promise<T>): Promise<T> =>
      withLane(runId, Math.min(tokens + LANE_SLACK, deps.model().maxContext), (lane, loop, _, parking) => use(lane, (prompt, options) => loop.generate(lane, prompt, { ...options, continue: true }), parking), false, stored),

    /** Chunk bytes the GPU slots of the lane parked on stored session `stored` hold, else 0. */
    parkedBytes: (stored: string): number => (parked?.stored === stored ? (parked.lane.tierStats()?.bytes_stored.gpu ?? 0) : 0),

    /** Lets the lane parked on stored session `stored` go (its close or delete). */
    leaveSession: (stored: string): void => unpark(stored),

    /** Takes the executor alone (a serial run): once the batch is empty, holding new lanes back meanwhile. */
    enterSerial: async (): Promise<void> => {
      serialWaiting++
      try {
        unpark()
        await admission.enterSerial()
      } finally {
        serialWaiting--
      }
    },
    leaveSerial: (): void => admission.leaveSerial(),

    /** The batch for admin stats. */
    stats: () => ({
      max: deps.maxBatch,
      decoding: loop?.sizes.decoding ?? 0,
      prefilling: loop?.sizes.prefilling ?? 0,
      waiting_for_kv: admission.stats.waiting,
      kv_reserved_bytes: admission.stats.reservedBytes,
      shared_prefix_tokens: sharedTokens,
      warm_session_runs: warmRuns,
      parked_session_lanes: parked ? 1 : 0,
      attended_together_steps: loop?.attendedTogether ?? 0,
      steps_ahead: loop?.stepsAhead ?? 0,
      ...(peers ? { gpu_peer_copies: { chunks: peers.copies, bytes: peers.bytes, lanes: peers.size } } : {}),
      // How the GPU budget is split among the tiered lanes running, and how often lanes moved to another share.
      ...(isTiered(deps.policy()) && deps.tiers.gpuBudgetBytes !== undefined
        ? { gpu_shares: { budget_bytes: deps.tiers.gpuBudgetBytes, lane_min_bytes: laneMinBytes(deps.policy(), deps.model().maxContext), lanes: [...shares.values()], reshares: { shrunk: reshare.shrunk, grown: reshare.grown, ms: reshare.ms } } }
        : {}),
    }),

    /** The lane of a run, while it runs. */
    laneOf: (runId: string): GpuModel | undefined => lanes.get(runId),

    /** The lanes' models (a live policy change swaps their selection too). */
    models: (): GpuModel[] => [...lanes.values()],

    destroy: () => {
      unpark()
      loop?.destroy()
      blocks?.store.destroy()
      for (const old of retired) old.destroy()
    },
  }
}

export type ExecutorBatch = ReturnType<typeof executorBatch>
