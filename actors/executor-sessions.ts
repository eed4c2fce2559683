// The gpu-executor's side of persistent sessions: a run on a stored session resumes it in the
// tiered KV cache (chunk tables and abstracts from LMDB; the few document tokens past its last
// sealed chunk prefilled again from the stored ids), prefills what the run adds, generates
// when asked, and leaves it: the question's chunks dropped from every tier unless the run
// keeps them. Only the gpu-executor calls this: with --max-batch 1 one run at a time (its
// mailbox), else each session run in a lane of the batch; runs, closes and deletes of one
// session take turns (`exclusive`), and a session is never evicted while a run uses it.
import type { GenerateResult } from "../engine/generate.ts"
import type { GpuModel } from "../engine/model.ts"
import type { TierStats } from "../engine/kv/tiered/index.ts"
import { kvBytesPerToken } from "../engine/kv/registry.ts"
import type { HostArena } from "../kv/host-arena.ts"
import { SessionStore, type StoredSession } from "../kv/session-store.ts"
import { evictionPlan } from "../kv/session-eviction.ts"
import type { DiskStore } from "../kv/disk-store.ts"
import { linkSharedPrefix, prefixChunkKeys, type PrefixIndex } from "../kv/prefix-index.ts"
import { releaseHostEntry, releaseHostPlaces } from "../kv/tier-io.ts"
import { reportPhase, runPhase } from "../kv/run-phases.ts"
import { leoamError } from "../protocol/errors.ts"
import type { RunRequest, RunSession, SessionRecordWire } from "../protocol/internal.ts"

export interface SessionContext {
  readonly store: DiskStore
  readonly arena?: HostArena
  /** This node's id ("" without one). */
  readonly node: string
  /** The served model's name, and the chunk size and version of the policy the model runs now. */
  readonly modelName: string
  readonly policy: () => { readonly chunkTokens: number | undefined; readonly adaptive?: boolean; readonly version: number; readonly name: string }
  /** --kv-disk-budget: chunk bytes all sessions may hold on disk; past it the least recently used go (never the one in use). */
  readonly diskBudget?: number
  /** Who holds which document and prompt chunks: the stored sessions (kept here) and the batch's running lanes. */
  readonly prefixes: PrefixIndex
  /** GPU bytes of the lane parked on session `id` (actors/executor-batch.ts), else 0. */
  readonly gpuBytes?: (id: string) => number
}

/** What a session run did, for the run's reply. */
export interface SessionOutcome {
  readonly r: GenerateResult
  /** The run's tiered cache counters, read before it leaves the session (which starts new ones). */
  readonly kv?: TierStats
  readonly session: { readonly id: string; readonly tokens: number; readonly prompt_tokens: number }
}

/**
 * A lane of the batch that may stay on the session between its runs, on the GPU
 * (actors/executor-batch.ts): `warm` when it holds the session's first `length` tokens as
 * its last run left them (nothing to resume, nothing to upload that is still resident);
 * `park()` at the end of a run that left it so keeps it for the next.
 */
export interface SessionLane {
  readonly warm: boolean
  park(): void
}

/** Generates `maxTokens` at most after `prompt`, continuing the sequence the model holds (0: prefills only). */
export type Generator = (prompt: ReadonlyArray<number>, maxTokens: number) => Promise<GenerateResult>

/** A prefill of `prompt` after the sequence the model holds, settled (the serial runs' way to prefill a document). */
export const prefillOnly = (model: GpuModel): Generator => async (prompt) => {
  const t0 = performance.now()
  await model.prefill(prompt)
  await model.settle()
  const ms = performance.now() - t0
  return { ids: [], finishReason: "length", promptTokens: prompt.length, timings: { prefillMs: ms, decodeMsPerToken: 0, totalMs: ms } }
}

const notFound = (id: string) => leoamError("session_not_found", `no session "${id}" (it was deleted, belongs to another user, or never existed)`)

export const executorSessions = (ctx: SessionContext) => {
  const store = new SessionStore(ctx.store)
  /** A stored session of this model holds its document's whole chunks for requests and sessions that begin alike. */
  const holdPrefix = (s: StoredSession) => {
    if (s.model === ctx.modelName) ctx.prefixes.add(s.id, prefixChunkKeys(s.ids, s.chunkTokens, s.owner))
  }
  for (const s of store.list()) holdPrefix(s)
  /** Sessions whose chunks this process holds in its host arena (opened or used since start or their close). */
  const open = new Set<string>()
  /** Sessions a run, close or delete is using now, and the end of the last one queued on each. */
  const busy = new Map<string, Promise<unknown>>()

  /** Runs `use` once every earlier run, close or delete of session `id` has ended. */
  const exclusive = <T>(id: string, use: () => Promise<T> | T): Promise<T> => {
    const before = busy.get(id) ?? Promise.resolve()
    const mine = before.then(use, use)
    const done = mine.then(
      () => undefined,
      () => undefined,
    )
    busy.set(id, done)
    void done.then(() => {
      if (busy.get(id) === done) busy.delete(id)
    })
    return mine
  }

  /** The session as its owner may see it; anyone else gets session_not_found. */
  const owned = (id: string, owner: string): StoredSession => {
    const s = store.get(id)
    if (!s || s.owner !== owner) throw notFound(id)
    return s
  }

  const hostBytes = (id: string): number => {
    if (!ctx.arena) return 0
    let bytes = 0
    for (const e of ctx.arena.layout()) if (typeof e.key === "string" && e.key.startsWith(`${id}/`)) bytes += e.length
    return bytes
  }

  const wire = (s: StoredSession): SessionRecordWire => ({
    session: s.id,
    owner: s.owner,
    tokens: s.ids.length,
    model: s.model,
    node: s.node,
    created: s.created,
    last_used: s.lastUsed,
    open: open.has(s.id),
    // A session is on the GPU while a run uses it, and after one in the lane parked on it (its cache's slots).
    bytes: { gpu: ctx.gpuBytes?.(s.id) ?? 0, host: hostBytes(s.id), disk: store.diskBytes(s.id) },
  })

  /** Refuses a session under a policy that cannot hold it: GPU-only policies, another model or chunk size. */
  const check = (model: GpuModel, s?: StoredSession): number => {
    const p = ctx.policy()
    if (!model.hasSessions || p.chunkTokens === undefined) {
      throw leoamError("session_needs_tiered_policy", `sessions live in the tiered KV cache: the policy now is ${p.name}; set leoam or offload-all (leoam.v1.admin.policy.set)`)
    }
    // A session's stored prefix is shared and resumed by fixed chunk counts (sharePrefix).
    if (p.adaptive) throw leoamError("session_incompatible", `sessions need fixed chunks; the policy now cuts adaptive chunks (set chunking.fixed, leoam.v1.admin.policy.set)`)
    if (s && (s.model !== ctx.modelName || s.chunkTokens !== p.chunkTokens)) {
      throw leoamError("session_incompatible", `session "${s.id}" was cut for ${s.model} in chunks of ${s.chunkTokens} tokens; this node serves ${ctx.modelName} in chunks of ${p.chunkTokens}`)
    }
    return p.chunkTokens
  }

  /** The session's chunk bytes on disk at most, as f16 KV (compression only makes them fewer). */
  const bytesFor = (model: GpuModel, tokens: number) => tokens * kvBytesPerToken(model.config)

  /**
   * Keeps the sessions' disk bytes within the budget (a chunk several sessions link counted
   * once, kv/session-eviction.ts): the least recently used go first, never `inUse` (the
   * session of the run that just grew) nor one a run is using. Returns the ids evicted.
   */
  const evict = (inUse: string): string[] => {
    const budget = ctx.diskBudget
    if (budget === undefined) return []
    const all = store.list().map((s) => ({ id: s.id, lastUsed: s.lastUsed, places: store.places(s.id) }))
    const gone = evictionPlan(all, budget, (id) => id === inUse || busy.has(id))
    for (const id of gone) drop(id)
    evictions += gone.length
    return gone
  }

  /** Lets go of the session's host entries: each stays while a sequence sharing it uses it, and goes with the last. */
  const releaseHost = (id: string) => {
    if (ctx.arena) for (const key of ctx.arena.keys()) if (typeof key === "string" && key.startsWith(`${id}/`)) releaseHostEntry(ctx.arena, key)
    open.delete(id)
  }

  const drop = (id: string) => {
    ctx.prefixes.remove(id)
    releaseHost(id)
    if (ctx.arena) releaseHostPlaces(ctx.arena, id)
    store.drop(id)
  }
  let evictions = 0

  /**
   * For a new session `id`: links the most whole chunks of `ids` that a stored session of
   * this model or a running request has sealed (kv/prefix-index.ts: fixed chunking, chunk i
   * is tokens [iC, (i+1)C), whose KV depends on those tokens and the ones before only).
   * Returns the tokens shared.
   */
  const sharePrefix = (id: string, owner: string, ids: ReadonlyArray<number>, chunkTokens: number, layers: number): number =>
    (linkSharedPrefix(ctx.prefixes, ctx.store, id, prefixChunkKeys(ids, chunkTokens, owner), layers)?.chunks ?? 0) * chunkTokens

  /** Resumes the stored session: its sealed length (never past its document: a question left behind by a failure is dropped first). */
  const resume = (model: GpuModel, id: string, tokens: number): number => {
    model.reset()
    const sealed = model.openSession(id)
    if (sealed <= tokens) return sealed
    model.closeSession(tokens)
    return model.openSession(id)
  }

  /** Leaves the run's tokens past `keep` (a question's) and stays on the session; false where the tail lost tokens it needs (then close). */
  const stay = (model: GpuModel, keep: number): boolean => {
    try {
      model.closeSession(keep, true)
      return true
    } catch (e) {
      if (e instanceof RangeError) return false
      throw e
    }
  }

  /** One run on a session (inside `exclusive`): see RunSession. `prefill` prefills a document (open, append). */
  const run = async (model: GpuModel, req: RunRequest, rs: RunSession, generate: Generator, prefill: Generator = prefillOnly(model), lane?: SessionLane): Promise<SessionOutcome> => {
    let t = performance.now()
    const existing = rs.op === "open" ? store.get(rs.id) : owned(rs.id, rs.owner)
    if (rs.op === "open" && existing) throw leoamError("invalid_request", `session "${rs.id}" exists`)
    const chunkTokens = check(model, existing)
    const doc = existing?.ids ?? []
    const total = doc.length + req.ids.length
    const grows = rs.op !== "generate" || rs.keep
    if (grows && ctx.diskBudget !== undefined && bytesFor(model, total) > ctx.diskBudget) {
      throw leoamError("budget_exceeded", `the session would hold up to ${bytesFor(model, total)} bytes of KV on disk, more than --kv-disk-budget ${ctx.diskBudget}`)
    }
    if (total + (rs.op === "generate" ? 1 : 0) > model.maxContext) {
      throw leoamError("context_overflow", `the session has ${doc.length} tokens and the request ${req.ids.length}; the context holds ${model.maxContext}${rs.op === "generate" ? " (with at least one new token)" : ""}`)
    }
    // A new document that begins like a stored one shares its whole chunks (written once, on disk).
    const shared = rs.op === "open" ? sharePrefix(rs.id, rs.owner, req.ids, chunkTokens, model.config.numLayers) : 0
    t = runPhase("find", t)
    const sealed = lane?.warm && model.length <= doc.length + shared ? model.length : resume(model, rs.id, doc.length + shared)
    t = runPhase("resume", t)
    const prompt = [...doc, ...req.ids].slice(sealed)
    let keep = doc.length
    let ids = doc
    let parked = false
    try {
      let r: GenerateResult
      if (rs.op === "generate") {
        r = await generate(prompt, Math.min(req.max_tokens, model.maxContext - total))
      } else if (prompt.length > 0) r = await prefill(prompt, 0)
      else r = { ids: [], finishReason: "length", promptTokens: 0, timings: { prefillMs: 0, decodeMsPerToken: 0, totalMs: 0 } }
      reportPhase("first token", r.timings.prefillMs)
      t = runPhase("decode", t + r.timings.prefillMs)
      const kv = model.tierStats()
      if (rs.op !== "generate" || rs.keep) {
        ids = [...doc, ...req.ids, ...r.ids]
        keep = ids.length
      }
      // A lane the batch may keep stays on the session, on the GPU, for its next run.
      const stays = lane !== undefined && stay(model, keep)
      if (!stays) model.closeSession(keep)
      // The record follows its chunks: durable only once they are.
      if (ids !== doc) await ctx.store.flush()
      const p = ctx.policy()
      holdPrefix(store.put({ id: rs.id, owner: rs.owner, node: ctx.node, model: ctx.modelName, ids, chunkTokens, policyVersion: p.version }))
      open.add(rs.id)
      if (grows) {
        const gone = evict(rs.id)
        if (gone.length > 0) process.stderr.write(`leoam gpu-executor: --kv-disk-budget ${ctx.diskBudget}: evicted ${gone.length} least recently used session(s): ${gone.join(", ")}\n`)
      }
      runPhase("close", t)
      if (stays) {
        lane!.park()
        parked = true
      }
      return { r, ...(kv ? { kv } : {}), session: { id: rs.id, tokens: ids.length, prompt_tokens: total, ...(shared > 0 ? { shared_tokens: shared } : {}) } }
    } finally {
      // Idempotent: after a failure the question's chunks go, the document's stay (and the lane leaves the session).
      if (!parked) model.closeSession(keep)
    }
  }

  /** Tokens a run's model must hold: the session's document, the run's prompt and the tokens it may generate. */
  const tokensFor = (req: RunRequest, rs: RunSession): number => {
    const doc = rs.op === "open" ? 0 : owned(rs.id, rs.owner).ids.length
    return doc + req.ids.length + (rs.op === "generate" ? req.max_tokens : 0)
  }

  return {
    /** One run on a session, after the earlier ones on it; `model` builds (or is) the model it runs in, for `tokensFor` tokens. */
    run: (req: RunRequest, rs: RunSession, use: (tokens: number, run: (model: GpuModel, generate: Generator, prefill?: Generator, lane?: SessionLane) => Promise<SessionOutcome>) => Promise<SessionOutcome>) =>
      exclusive(rs.id, () => use(tokensFor(req, rs), (model, generate, prefill, lane) => run(model, req, rs, generate, prefill, lane))),
    exclusive,
    info: (id: string, owner: string): SessionRecordWire => wire(owned(id, owner)),
    /** Frees the session's host memory; its chunks and record stay on disk. */
    close: (id: string, owner: string): SessionRecordWire => {
      owned(id, owner)
      releaseHost(id)
      return wire(owned(id, owner))
    },
    delete: (id: string, owner: string): void => {
      owned(id, owner)
      drop(id)
    },
    list: (): SessionRecordWire[] => store.list().map(wire),
    /** Sessions evicted for the disk budget since start. */
    evictions: () => evictions,
  }
}

export type ExecutorSessions = ReturnType<typeof executorSessions>
