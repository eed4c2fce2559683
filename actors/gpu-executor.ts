// The gpu-executor actor: owns the WebGPU device, the model weights and the KV cache. With
// --max-batch 1 it runs one generation at a time (its mailbox serialises runs); with more,
// its mailbox serves up to that many runs at once and each joins the continuous batch
// (actors/executor-batch.ts) while session runs still take the executor alone. A run is one control
// message in (RunRequest) and, per decode step, one 8-byte token event out on the run's
// token subject (protocol/token-event.ts), and a heartbeat there while the run is held
// (actors/liveness.ts); the reply carries the ids and timings. Cancel,
// describe, policy check and stats bypass the mailbox so that they are answered while a
// run is in progress. It alone decides when a policy change applies to every tier: the KV
// manager switches the GPU cache and the host arena's eviction together. In every mode
// this process holds the host arena and a DiskStore handle its tiered cache uses in memory.
import type { NatsConnection } from "@nats-io/nats-core"
import { Context, Effect, Layer } from "effect"
import { acquireGpu, type Gpu, GpuUnavailable } from "../engine/gpu.ts"
import { generate, type GenerateOptions, NumericalFailure } from "../engine/generate.ts"
import { ContextOverflow, GpuModel, type KvOptions, KvRebuildError } from "../engine/model.ts"
import type { ModelConfig } from "../models/types.ts"
import type { WeightSource } from "../models/types.ts"
import type { DiskStore } from "../kv/disk-store.ts"
import type { HostArena } from "../kv/host-arena.ts"
import { PrefixIndex } from "../kv/prefix-index.ts"
import { kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { laneTierStats } from "../engine/kv/tiered/reshare.ts"
import { parsePolicy, type ResolvedPolicy } from "../protocol/policy.ts"
import type { KvStats } from "../protocol/messages.ts"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
import type { ExecutorStats, ModelDescription, ReplyOf, RunRequest, RunResult } from "../protocol/internal.ts"
import { encodePrefillEvent, encodeTokenEvent, prefillThrottle } from "../protocol/token-event.ts"
import { type ActorDefinition, serviceOf } from "./actor.ts"
import { attempt, attemptPromise, codedBy, type ErrorRow, libraryErrors, startup } from "./errors.ts"
import { addKv, addPrefill, emptyTotals, executorStats, type ExecutorTotals } from "./executor-stats.ts"
import { runHeartbeats } from "./liveness.ts"
import { serve } from "./rpc.ts"
import { internalSubjects } from "../protocol/subjects.ts"
import { executorSessions, type SessionOutcome } from "./executor-sessions.ts"
import { executorBatch } from "./executor-batch.ts"

export interface GpuExecutorOptions {
  /** Opens the weights (called again when the actor restarts). */
  readonly openWeights: () => WeightSource
  readonly maxContext?: number
  readonly device?: "auto" | "gpu" | "cpu"
  /** The KV policy (default full) and its version, the GPU budget, and the host and disk tiers. */
  readonly kv?: ExecutorKv
  /** This node's id (sessions name it). */
  readonly node?: string
  /** --kv-disk-budget: chunk bytes the sessions may hold on disk (least recently used evicted past it). */
  readonly sessionDiskBudget?: number
  /** --max-batch: runs decoding together (1: one run at a time). */
  readonly maxBatch?: number
  /** Prompt tokens prefilled between two batched decode steps (default 256). */
  readonly prefillSlice?: number
}

export interface ExecutorKv {
  readonly policy: ResolvedPolicy
  /** The stored version of `policy` (0: not stored). */
  readonly version?: number
  readonly gpuBudgetBytes?: number
  readonly arena?: HostArena
  readonly store?: DiskStore
}

/** A policy version as the executor holds it: resolved, and as engine options. */
interface HeldPolicy {
  readonly version: number
  readonly resolved: ResolvedPolicy
  readonly engine: KvOptions
}

/** The executor's state: changed only by the service's own methods. */
interface State {
  readonly gpu: Gpu
  /** Replaced when a policy change needs a new KV cache (between runs). */
  model: GpuModel
  readonly description: ModelDescription
  readonly cancelled: Set<string>
  /** The serial run being served, and the batched runs. */
  current: string | undefined
  readonly batched: Set<string>
  runs: number
  tokens: number
  /** The policy the engine runs, and one accepted but not yet applied. */
  policy: HeldPolicy
  pending: HeldPolicy | undefined
  readonly totals: ExecutorTotals
}

/** Engine conditions answered with their code (the rest of the engine's errors are bugs: a crash). */
const engineErrors: ReadonlyArray<ErrorRow> = [
  ...libraryErrors,
  [NumericalFailure, () => "numerical_failure"],
  [ContextOverflow, () => "context_overflow"],
]
const coded = codedBy(engineErrors)
const engine = attempt(coded)
const enginePromise = attemptPromise(coded)
/** At start, a missing GPU is as final as a bad configuration. */
const starting = startup((e) => e instanceof GpuUnavailable || coded(e) !== undefined)

export interface GpuExecutorService {
  readonly run: (req: RunRequest) => Effect.Effect<RunResult, LeoamError>
  readonly cancel: (runId: string) => Effect.Effect<void>
  readonly describe: () => Effect.Effect<ModelDescription>
  readonly policyCheck: (resolved: ResolvedPolicy) => Effect.Effect<ReplyOf<"executorPolicyCheck">, LeoamError>
  /** A broadcast policy version: held as pending, applied at the next step (live swap) or request (new KV cache). */
  readonly policyChanged: (version: number, resolved: ResolvedPolicy) => Effect.Effect<ReplyOf<"policyChanged">, LeoamError>
  readonly stats: () => Effect.Effect<ExecutorStats>
  /** Stored sessions (actors/executor-sessions.ts): info and list beside the mailbox, close and delete in it. */
  readonly session: (op: "info" | "close" | "delete", id: string, owner: string) => Effect.Effect<ReplyOf<"executorSessionInfo">, LeoamError>
  readonly sessionList: () => Effect.Effect<ReplyOf<"sessionList">, LeoamError>
  /** The short view for pings. */
  readonly summary: () => unknown
}

const make = (nc: NatsConnection, options: GpuExecutorOptions) =>
  Effect.gen(function* () {
    const kv = options.kv
    const session = `executor-${process.pid}`
    /** Engine options of a policy for this executor's model and tiers (throws kv_budget_too_small and the like). */
    const engineOf = (policy: ResolvedPolicy, config: ModelConfig, maxContext: number): KvOptions =>
      kvEngineOptions(policy, { gpuBudgetBytes: kv?.gpuBudgetBytes, arena: kv?.arena, store: kv?.store, session }, config, maxContext)

    const gpu = yield* starting(() => acquireGpu({ prefer: options.device ?? "auto" }))
    const s: State = yield* Effect.acquireRelease(
      starting(() => load(gpu)),
      (st) => Effect.sync(() => st.model.destroy()),
    )

    async function load(gpu: Gpu): Promise<State> {
      const source = options.openWeights()
      try {
        const c = source.config
        const maxContext = Math.min(options.maxContext ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings)
        let resolved = kv?.policy ?? parsePolicy("full")
        let version = kv?.version ?? 0
        // After a restart of this actor, the policy is the latest stored one, not the one it started with.
        const stored = kv?.store?.latestPolicy()
        if (stored && stored.version > version) {
          try {
            resolved = parsePolicy(stored.policy)
            version = stored.version
          } catch (e) {
            process.stderr.write(`leoam gpu-executor: stored policy v${stored.version} is not valid here (${(e as Error).message}); using v${version}\n`)
          }
        }
        const engine = engineOf(resolved, c, maxContext)
        const model = await GpuModel.load(gpu, source, { maxContext, ...engine })
        const description: ModelDescription = {
          name: c.name,
          context_length: model.maxContext,
          vocab_size: c.vocabSize,
          layers: c.numLayers,
          hidden_size: c.hiddenSize,
          heads: c.numHeads,
          kv_heads: c.numKvHeads,
          eos_ids: [...c.eosTokenIds],
          device: gpu.adapterName,
        }
        return { gpu, model, description, cancelled: new Set(), current: undefined, batched: new Set(), runs: 0, tokens: 0, policy: { version, resolved, engine }, pending: undefined, totals: emptyTotals() }
      } finally {
        source.close()
      }
    }

    /** At a step boundary: applies the pending policy if it is a live swap (same KV manager and chunk size). */
    const applyAtStep = (): boolean => {
      const next = s.pending
      if (!next) return false
      try {
        if (!s.model.swapKvPolicy(next.engine)) return false
      } catch (e) {
        // Checked when it was set; a refusal now (another node's check) drops the change.
        process.stderr.write(`leoam gpu-executor: policy v${next.version} refused (${(e as Error).message}); staying on v${s.policy.version}\n`)
        s.pending = undefined
        return false
      }
      s.policy = next
      s.pending = undefined
      return true
    }

    /** At a request boundary: applies the pending policy, building a new KV cache if it needs one. */
    const applyAtRequest = Effect.fn("GpuExecutor.applyAtRequest")(function* () {
      const next = s.pending
      if (!next || applyAtStep() || !s.pending) return
      const rebuilt = yield* Effect.tryPromise({ try: () => s.model.withKv(next.engine), catch: (e) => e }).pipe(
        Effect.catchAll((e) => {
          // Checked when it was set, so this is rare (e.g. GPU memory that went elsewhere): the
          // old setup is rebuilt and the change dropped; the request goes on under the old policy.
          if (!(e instanceof KvRebuildError)) return Effect.die(e)
          s.model = e.fallback
          process.stderr.write(`leoam gpu-executor: policy v${next.version} could not be applied (${e.message}); staying on v${s.policy.version}\n`)
          return Effect.succeed(undefined)
        }),
      )
      if (rebuilt) {
        s.model = rebuilt
        s.policy = next
      }
      s.pending = undefined
    })

    /** Validates a resolved policy against this executor (fit and when it would apply). */
    const check = (resolved: ResolvedPolicy) =>
      engine(() => {
        const engineOptions = engineOf(resolved, s.model.config, s.model.maxContext)
        return { held: { resolved, engine: engineOptions }, applies: s.model.checkKv(engineOptions) }
      })

    // Prefix sharing (issue 14 §2): the stored sessions' documents and the running lanes' prompts, one index for both.
    const prefixes = new PrefixIndex()
    const sessions =
      kv?.store &&
      executorSessions({
        prefixes,
        store: kv.store,
        arena: kv.arena,
        node: options.node ?? "",
        modelName: s.description.name,
        policy: () => ({ chunkTokens: s.policy.resolved.chunkTokens, adaptive: s.policy.resolved.chunkMinTokens !== undefined, version: s.policy.version, name: s.policy.resolved.name }),
        diskBudget: options.sessionDiskBudget,
        gpuBytes: (id) => batch?.parkedBytes(id) ?? 0,
      })

    const maxBatch = Math.max(1, options.maxBatch ?? 1)
    let lanesVersion = s.policy.version
    const batch =
      maxBatch > 1
        ? executorBatch({
            model: () => s.model,
            policy: () => s.policy.resolved,
            tiers: { gpuBudgetBytes: kv?.gpuBudgetBytes, arena: kv?.arena, store: kv?.store },
            session,
            prefixes,
            maxBatch,
            prefillSlice: options.prefillSlice ?? 256,
            beforeStep: () => {
              // A live policy change: the executor's model first, then every lane (at most once per version).
              if (s.pending) applyAtStep()
              if (lanesVersion === s.policy.version) return
              lanesVersion = s.policy.version
              for (const lane of batch!.models()) {
                try {
                  lane.swapKvPolicy(engineOf(s.policy.resolved, lane.config, lane.maxContext))
                } catch {
                  // A lane whose budget refuses it keeps its policy to its end.
                }
              }
            },
          })
        : undefined
    yield* Effect.addFinalizer(() => Effect.sync(() => batch?.destroy()))

    /** Holds the executor alone while `effect` runs (a policy change that needs a new KV cache): once the batch is empty. */
    const serially = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
      batch ? Effect.acquireUseRelease(Effect.promise(() => batch.enterSerial()), () => effect, () => Effect.sync(() => batch.leaveSerial())) : effect

    const run = Effect.fn("GpuExecutor.run")(function* (req: RunRequest) {
      if (req.session && !sessions) return yield* leoamError("session_needs_tiered_policy", "this gpu-executor has no disk store for sessions")
      if (!req.session && req.ids.length + 1 > s.model.maxContext) {
        return yield* leoamError("context_overflow", `the prompt has ${req.ids.length} tokens; the context holds ${s.model.maxContext}`)
      }
      if (req.ids.some((id) => id >= s.description.vocab_size)) return yield* leoamError("invalid_ids", `a token id is outside the vocabulary (0..${s.description.vocab_size - 1})`)
      const batched = batch !== undefined
      // A live policy swap applies now (the lanes take it at their next step); one that needs
      // a new KV cache applies between runs, with the executor alone.
      if (batched && s.pending) applyAtStep()
      if (!batched || s.pending) yield* serially(applyAtRequest())
      if (batched) s.batched.add(req.run_id)
      else s.current = req.run_id
      s.runs++
      const model = s.model
      // The tiered cache's phase times at the end of prefill: the decode steps' share is what comes after.
      let atDecode: KvStats["time_ms"] | undefined
      // Decode steps issued (some may run past a stop and be dropped) and when the first began.
      let issued = 0
      let firstStepAt: number | undefined
      let tokensOpen = true
      // Prefill progress where the scheduler asks for it: a few events a second, same subject.
      const prefillEvents = req.progress
        ? prefillThrottle((done, total) => {
            if (!tokensOpen) return
            try {
              nc.publish(req.tokens, encodePrefillEvent(done, total))
            } catch {
              tokensOpen = false
            }
          })
        : undefined
      const genOptions = (maxTokens: number): GenerateOptions => ({
        maxTokens,
        ...(prefillEvents ? { onPrefill: prefillEvents } : {}),
          temperature: req.temperature,
          topP: req.top_p,
          topK: req.top_k,
          seed: req.seed,
          stopIds: req.stop_ids,
          // A live policy change (selection, eviction) takes effect between decode steps.
          beforeStep: () => {
            if (issued++ === 0) {
              firstStepAt = performance.now()
              // The cache the run decodes in: its lane in the batch, else the executor's model.
              const lane = batch ? batch.laneOf(req.run_id) : model
              atDecode = lane && laneTierStats(lane)?.time_ms
            }
            if (s.pending && !batched) applyAtStep()
          },
          onToken: (id, index) => {
            // Token events are a preview; the reply is the truth. One that cannot be sent (the
            // connection closing) ends them for this run rather than crash it or leave a gap.
            if (tokensOpen) {
              try {
                nc.publish(req.tokens, encodeTokenEvent(index, id))
              } catch {
                tokensOpen = false
              }
            }
            s.tokens++
            return s.cancelled.has(req.run_id)
          },
      })
      const gen = (prompt: ReadonlyArray<number>, maxTokens: number, resume: boolean) => generate(model, prompt, { ...genOptions(maxTokens), continue: resume })
      // A session run resumes the stored session around the generation (actors/executor-sessions.ts):
      // in a lane of the batch of its own, or in the executor's model with --max-batch 1.
      const inSession = (rs: NonNullable<RunRequest["session"]>) =>
        sessions!.run(req, rs, (tokens, runIn) =>
          batch
            ? batch.session(req.run_id, rs.id, tokens, (lane, generateIn, parking) => runIn(lane, (prompt, n) => generateIn(prompt, genOptions(n)), (prompt) => generateIn(prompt, genOptions(0)), parking))
            : runIn(model, (prompt, n) => gen(prompt, n, true)),
        )
      const maxTokens = Math.min(req.max_tokens, model.maxContext - req.ids.length)
      const session = req.session
      const out: Partial<SessionOutcome> & Pick<SessionOutcome, "r"> & { kv?: KvStats; shared?: number } = yield* enginePromise(() =>
        session ? inSession(session) : batch ? batch.run(req.run_id, req.ids, genOptions(maxTokens), req.user ?? "anonymous") : gen(req.ids, maxTokens, false).then((r) => ({ r })),
      )
      const r = out.r
      const cancelled = s.cancelled.has(req.run_id)
      // A session run's counters are read before it leaves the session (SessionOutcome.kv).
      const stats = out.kv ?? (batched ? undefined : model.tierStats())
      const t = s.totals
      t.decodeSteps += issued
      t.decodeMs += firstStepAt === undefined ? 0 : performance.now() - firstStepAt
      addPrefill(t, req.ids.length, r.timings.prefillMs)
      if (stats) addKv(t, stats, atDecode)
      const result: RunResult = {
        run_id: req.run_id,
        ids: r.ids,
        finish_reason: cancelled ? "cancelled" : r.finishReason,
        prefill_ms: r.timings.prefillMs,
        decode_ms_per_token: r.timings.decodeMsPerToken,
        total_ms: r.timings.totalMs,
        ...(stats ? { kv: stats } : {}),
        ...(out.shared ? { shared_tokens: out.shared } : {}),
        ...(out.session ? { session: out.session } : {}),
      }
      return result
    }, (effect, req) =>
      Effect.ensuring(
        effect,
        Effect.sync(() => {
          s.cancelled.delete(req.run_id)
          if (s.current === req.run_id) s.current = undefined
          s.batched.delete(req.run_id)
        }),
      ),
    )

    const service: GpuExecutorService = {
      run,
      cancel: Effect.fn("GpuExecutor.cancel")(function* (runId: string) {
        s.cancelled.add(runId)
        // Cancels of runs that never come would pile up: keep only recent ones.
        if (s.cancelled.size > 1024) s.cancelled.delete(s.cancelled.values().next().value!)
      }),
      describe: () => Effect.succeed(s.description),
      policyCheck: Effect.fn("GpuExecutor.policyCheck")(function* (resolved: ResolvedPolicy) {
        return { applies: (yield* check(resolved)).applies }
      }),
      policyChanged: Effect.fn("GpuExecutor.policyChanged")(function* (version: number, resolved: ResolvedPolicy) {
        // Versions only go up; a late or repeated broadcast changes nothing.
        if (version <= Math.max(s.policy.version, s.pending?.version ?? 0)) return { ok: true as const, version: s.policy.version }
        const { held } = yield* check(resolved).pipe(
          // Accepted elsewhere (another node's check) but not here: this executor stays on its policy.
          Effect.tapError((e) => Effect.sync(() => process.stderr.write(`leoam gpu-executor: policy v${version} refused here (${e.message}); staying on v${s.policy.version}\n`))),
        )
        s.pending = { version, ...held }
        // Idle: a live swap applies now; a new KV cache waits for the next request.
        if (s.current === undefined && s.batched.size === 0) applyAtStep()
        return { ok: true as const, version }
      }),
      stats: () =>
        Effect.sync(() =>
          executorStats({
            policy: { name: s.policy.resolved.name, active: s.policy.version, pending: s.pending?.version },
            tiers: s.model.tierStats(),
            gpuResidentBytes: s.model.length * kvBytesPerToken(s.model.config),
            gpuBudgetBytes: kv?.gpuBudgetBytes,
            runs: s.runs,
            tokens: s.tokens,
            current: s.current ?? s.batched.values().next().value,
            totals: s.totals,
            ...(batch ? { batch: batch.stats() } : {}),
          }),
        ),
      session: Effect.fn("GpuExecutor.session")(function* (op: "info" | "close" | "delete", id: string, owner: string) {
        if (!sessions) return yield* leoamError("session_not_found", `no session "${id}": this gpu-executor keeps none (no disk store)`)
        if (op === "info") return yield* engine(() => sessions.info(id, owner))
        // Never beside a run on the same session: close and delete wait for the runs on it before them.
        if (op === "close") {
          return yield* enginePromise(() =>
            sessions.exclusive(id, () => {
              const info = sessions.close(id, owner)
              batch?.leaveSession(id)
              return info
            }),
          )
        }
        return yield* enginePromise(() =>
          sessions.exclusive(id, () => {
            const info = sessions.info(id, owner)
            sessions.delete(id, owner)
            batch?.leaveSession(id)
            return info
          }),
        )
      }),
      sessionList: () => engine(() => ({ node: options.node ?? "", sessions: sessions ? sessions.list() : [] })),
      summary: () => ({
        runs: s.runs,
        tokens: s.tokens,
        current_run: s.current ?? null,
        context_length: s.model.maxContext,
        kv_policy: s.policy.resolved.name,
        policy_version: s.policy.version,
        ...(s.model.tierStats() ? { kv_totals: s.totals.kv } : {}),
      }),
    }
    return service
  })

export class GpuExecutor extends Context.Tag("leoam/actors/GpuExecutor")<GpuExecutor, GpuExecutorService>() {
  /** Acquires the device and loads the model; the scope's close destroys the model's buffers. */
  static readonly layer = (nc: NatsConnection, options: GpuExecutorOptions) => Layer.scoped(GpuExecutor, make(nc, options))
}

export const gpuExecutor = (nc: NatsConnection, options: GpuExecutorOptions): ActorDefinition<GpuExecutorService> => ({
  name: "gpu-executor",
  mailbox: 64,
  // Batched runs are served together; serial ones wait for the executor inside their handler.
  concurrency: Math.max(1, options.maxBatch ?? 1),
  service: serviceOf(GpuExecutor, GpuExecutor.layer(nc, options)),
  stats: (s) => s.summary(),
  // Every run held (queued, served, or waiting out a restart of this actor) is heartbeated on its token subject (actors/liveness.ts).
  handlers: [
    { ...serve("executorRun", (s: GpuExecutorService, req) => s.run(req)), watch: runHeartbeats(nc) },
    // Behind the runs before them: a session is never closed or deleted while a run uses it.
    serve("executorSessionClose", (s: GpuExecutorService, { session, owner }) => s.session("close", session, owner)),
    serve("executorSessionDelete", (s: GpuExecutorService, { session, owner }) => Effect.as(s.session("delete", session, owner), { ok: true as const })),
  ],
  immediate: [
    serve("executorCancel", (s: GpuExecutorService, { run_id }) => Effect.as(s.cancel(run_id), { ok: true as const })),
    serve("executorDescribe", (s: GpuExecutorService) => s.describe()),
    serve("executorPolicyCheck", (s: GpuExecutorService, { resolved }) => s.policyCheck(resolved)),
    serve("policyChanged", (s: GpuExecutorService, { version, resolved }) => s.policyChanged(version, resolved), { broadcast: internalSubjects.policyChanged }),
    serve("executorStats", (s: GpuExecutorService) => s.stats()),
    serve("executorSessionInfo", (s: GpuExecutorService, { session, owner }) => s.session("info", session, owner)),
    serve("sessionList", (s: GpuExecutorService) => s.sessionList(), { broadcast: internalSubjects.sessionList }),
  ],
})
