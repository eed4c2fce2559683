// A leoam node: starts (or joins) NATS, registers the public service with the NATS
// services API, and runs the chosen actors as fibers of this process. `leoam serve` runs
// all four; `leoam actor NAME` runs one against the same NATS. SIGTERM/SIGINT drain:
// new requests get `shutting_down`, those in flight finish (bounded), then it stops. An
// embedded nats-server dies with this process, however it ends (nats-server.ts).
import { readFileSync } from "node:fs"
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { Svcm } from "@nats-io/services"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer } from "../models/tokenizer.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { releaseGpu } from "../engine/gpu.ts"
import { type KvPolicyDocument, parsePolicy, parsePolicyDocument, type ResolvedPolicy } from "../protocol/policy.ts"
import { DiskStore } from "../kv/disk-store.ts"
import type { ReclaimReport } from "../kv/reclaim.ts"
import { HostArena } from "../kv/host-arena.ts"
import { AdminStatsReply } from "../protocol/admin.ts"
import { leoamError } from "../protocol/errors.ts"
import { ADMIN_PREFIX, adminSubjects, NODE_ID, SERVICE_NAME } from "../protocol/subjects.ts"
import { accountsConfig, type UsersFile } from "./access.ts"
import { type NodeActorName, pingActors, type RunningActor, runActor, type Source } from "./actor.ts"
import { type HttpGateway, httpGatewayActor, type HttpGatewayOptions } from "./http-gateway.ts"
import { type MetricsServer, startMetricsServer } from "./metrics.ts"
import { diskStoreActor } from "./disk-store.ts"
import { gpuExecutor } from "./gpu-executor.ts"
import { hostCacheActor } from "./host-cache.ts"
import { connectNats, type EmbeddedNats, type NatsAuth } from "./nats.ts"
import { startEmbeddedNats } from "./nats-server.ts"
import { nodeView, refuseDuplicate } from "./node-bus.ts"
import { type NodeLeases, startLeases } from "./node-leases.ts"
import { askPublic, runRequest } from "./rpc.ts"
import { scheduler } from "./scheduler.ts"
import { sessionSources } from "./sessions.ts"

export const packageVersion = (): string =>
  (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version

export interface NodeOptions {
  readonly actors: ReadonlyArray<NodeActorName>
  /**
   * The node id: this node's internal subjects are `leoam.int.v1.node.<id>.*`, its own on a
   * bus shared with other nodes. Absent: the single-node subjects `leoam.int.v1.*`.
   */
  readonly node?: string
  /** Silence of a peer node's lease after which its requests are answered here (default RUN_SILENCE_MS). */
  readonly leaseSilenceMs?: number
  /** An existing NATS server; when absent an embedded nats-server is started. */
  readonly natsUrl?: string
  readonly natsPort?: number
  readonly natsUser?: string
  readonly natsPass?: string
  /** A Hugging Face model directory, or dummy:PRESET. */
  readonly model: string
  readonly maxContext?: number
  readonly device?: "auto" | "gpu" | "cpu"
  readonly queueCapacity?: number
  /** Generate requests decoding together (continuous batching; default 1: one at a time). */
  readonly maxBatch?: number
  readonly kvDir: string
  readonly hostKvBudget: number
  /** NATS credentials for an existing server: a creds file (JWT + seed) or an nkey seed file. */
  readonly natsCreds?: string
  readonly natsNkey?: string
  /** Users of the embedded server (client and admin roles); absent: no access control. */
  readonly users?: UsersFile
  /**
   * The KV policy a kv-dir starts with (default full); once a policy is stored there (the
   * first start records this one as version 1), the stored one is used. And the GPU budget for KV.
   */
  readonly kvPolicy?: { readonly document: KvPolicyDocument; readonly resolved: ResolvedPolicy }
  readonly gpuKvBudget?: number
  readonly drainTimeoutMs?: number
  /** Prometheus text of the admin stats on http://127.0.0.1:PORT/metrics (with the scheduler). */
  readonly metricsPort?: number
  /** Silence of the gpu-executor after which the scheduler gives a run up (default RUN_SILENCE_MS, actors/liveness.ts). */
  readonly runSilenceMs?: number
  /** Chunk bytes the sessions may hold on disk (least recently used evicted past it); absent: no limit. */
  readonly kvDiskBudget?: number
  /** Sessions one NATS user may hold over all nodes; absent: no limit. */
  readonly sessionQuota?: number
  /** The OpenAI-compatible HTTP gateway as one more actor of the node (--http-port), against the node's NATS. */
  readonly http?: Omit<HttpGatewayOptions, "natsUrl">
}

export interface LeoamNode {
  readonly url: string
  /** The node's view of the bus (its internal subjects under its prefix: actors/node-bus.ts). */
  readonly nc: NatsConnection
  readonly node?: string
  readonly actors: ReadonlyArray<RunningActor>
  /** The KV policy the gpu-executor started with, and where it came from. */
  readonly policy?: { readonly version: number; readonly name: string; readonly stored: boolean }
  /** The metrics endpoint, when one was asked for. */
  readonly metricsUrl?: string
  /** The HTTP gateway, when one was asked for (the one listening now: a crash rebuilds it). */
  readonly http?: () => HttpGateway | undefined
  /** Drains and stops everything this node started. */
  stop(): Promise<void>
}

export const startNode = async (options: NodeOptions): Promise<LeoamNode> => {
  if (options.actors.includes("host-cache") && !options.actors.includes("gpu-executor")) {
    throw leoamError(
      "invalid_request",
      "the host-cache actor serves the host arena of the gpu-executor's process (its tiered KV cache uses the arena in memory): run it with the gpu-executor (`leoam serve`), not alone",
    )
  }
  if (options.node !== undefined && !NODE_ID.test(options.node)) {
    throw leoamError("invalid_request", `node id "${options.node}": letters, digits, - and _ only (one NATS subject token), at most 64`)
  }
  let embedded: EmbeddedNats | undefined
  let auth: NatsAuth = { user: options.natsUser, pass: options.natsPass, credsFile: options.natsCreds, nkeySeedFile: options.natsNkey }
  if (!options.natsUrl) {
    const access = options.users ? accountsConfig(options.users) : undefined
    if (access) auth = access.node
    embedded = await startEmbeddedNats({ port: options.natsPort, extraConfig: access?.config, auth: access?.node })
  }
  const url = options.natsUrl ?? embedded!.url
  const running: RunningActor[] = []
  let nc: NatsConnection | undefined
  let draining = false
  let tiers: SharedTiers | undefined
  let metrics: MetricsServer | undefined
  let policy: StartPolicy | undefined
  let leases: NodeLeases | undefined
  let gateway: HttpGateway | undefined
  try {
    const raw = await connectNats(url, `leoam-${options.node ?? ""}${options.node ? ":" : ""}${options.actors.join("+")}`, auth)
    nc = nodeView(raw, options.node)
    // Before the kv-dir is touched: a refused duplicate leaves the live node's store alone.
    if (options.node !== undefined && options.natsUrl) await refuseDuplicate(nc, options.node, options.actors)
    tiers = openSharedTiers(options)
    policy = startPolicy(options, tiers)
    if (options.actors.includes("scheduler")) leases = startLeases(raw, options.node, options.leaseSilenceMs)
    const version = packageVersion()
    for (const name of options.actors) {
      running.push(await startNamed(nc, raw, name, options, version, () => draining, tiers, policy, leases))
    }
    if (options.http) running.push(await runActor(nc, httpGatewayActor({ ...options.http, natsUrl: url }, (g) => (gateway = g))))
    if (options.metricsPort !== undefined && options.actors.includes("scheduler")) {
      const conn = nc
      metrics = await startMetricsServer(options.metricsPort, () => runRequest(askPublic(conn, adminSubjects.stats, AdminStatsReply, {}, 10_000)), () => pingActors(conn))
    }
  } catch (e) {
    for (const a of running.reverse()) await a.drain(0).catch(() => undefined)
    leases?.stop()
    await nc?.close().catch(() => undefined)
    await tiers?.store?.close().catch(() => undefined)
    await embedded?.stop()
    throw e
  }
  const conn = nc
  return {
    url,
    nc: conn,
    node: options.node,
    actors: running,
    policy: policy && { version: policy.version, name: policy.resolved.name, stored: policy.stored },
    metricsUrl: metrics?.url,
    ...(options.http ? { http: () => gateway } : {}),
    stop: async () => {
      draining = true
      await metrics?.close()
      // The scheduler first (it refuses new work and finishes what it admitted: HTTP requests
      // meanwhile get shutting_down, those in flight their answer), then the gpu-executor (it
      // may still write chunks), then the tiers it writes to, then the HTTP gateway.
      const rank = (n: string) => ["scheduler", "gpu-executor", "host-cache", "disk-store", "http-gateway"].indexOf(n)
      const order = [...running].sort((a, b) => rank(a.name) - rank(b.name))
      for (const a of order) await a.drain(options.drainTimeoutMs ?? 30_000)
      leases?.stop()
      await tiers?.store?.close().catch(() => undefined)
      await conn.drain().catch(() => undefined)
      await embedded?.stop()
      await releaseGpu()
    },
  }
}

/**
 * The host arena and disk store of this process. The gpu-executor's tiered KV cache uses
 * both in memory (KV bytes never travel over NATS), so the arena exists only in the
 * gpu-executor's process, where the host-cache actor serves its stats. The store is opened
 * by the gpu-executor's process and by a disk-store actor's process (the same kv-dir; LMDB
 * allows several processes): in one process they share one handle.
 */
interface SharedTiers {
  readonly arena?: HostArena
  readonly store?: DiskStore
}

const openSharedTiers = (o: NodeOptions): SharedTiers => {
  // The gpu-executor always has both: a live policy change may move it to a tiered policy,
  // and the stored policy lives in the kv-dir.
  const executor = o.actors.includes("gpu-executor")
  const arena = executor ? new HostArena({ budgetBytes: o.hostKvBudget }) : undefined
  const store = executor || o.actors.includes("disk-store") ? DiskStore.open({ kvDir: o.kvDir }) : undefined
  const reclaimed = store && reclaimNotice(o.kvDir, store.reclaimed)
  if (reclaimed) process.stderr.write(`${reclaimed}\n`)
  return { arena, store }
}

/** What opening the kv-dir took back from crashed writers (kv/reclaim.ts), for stderr; undefined when nothing. */
export const reclaimNotice = (kvDir: string, r: ReclaimReport): string | undefined => {
  if (r.sessions + r.entries + r.files + r.bytes === 0) return undefined
  const n = (count: number, one: string) => `${count} ${one}${count === 1 ? "" : "s"}`
  const size = r.bytes < 1024 * 1024 ? `${r.bytes} bytes` : `${(r.bytes / (1024 * 1024)).toFixed(1)} MiB`
  return `leoam: kv-dir ${kvDir}: reclaimed what crashed writers left: ${n(r.sessions, "session")}, ${r.entries} ${r.entries === 1 ? "entry" : "entries"}, ${n(r.files, "file")}, ${size}`
}

interface StartPolicy {
  readonly version: number
  readonly resolved: ResolvedPolicy
  /** True when it was read back from the kv-dir (a change made earlier survives the restart). */
  readonly stored: boolean
}

/**
 * The policy the gpu-executor starts with: the latest version stored in the kv-dir, or the
 * one given (recorded as the first version, by "startup"). Undefined without a gpu-executor.
 */
const startPolicy = (o: NodeOptions, tiers: SharedTiers): StartPolicy | undefined => {
  if (!o.actors.includes("gpu-executor") || !tiers.store) return undefined
  const given = o.kvPolicy ?? parsePolicyDocument("full")
  const latest = tiers.store.latestPolicy()
  if (latest) return { version: latest.version, resolved: parsePolicy(latest.policy), stored: true }
  const record = tiers.store.appendPolicy({ policy: given.document, user: "startup", reason: "the policy the kv-dir was first served with" })
  return { version: record.version, resolved: given.resolved, stored: false }
}

const openWeights = (spec: string) => (spec.startsWith("dummy:") ? new DummyWeightSource(resolveDummyConfig(spec.slice(6))) : openHfModel(spec))

const startNamed = async (
  nc: NatsConnection,
  raw: NatsConnection,
  name: NodeActorName,
  o: NodeOptions,
  version: string,
  draining: () => boolean,
  tiers: SharedTiers,
  policy: StartPolicy | undefined,
  leases: NodeLeases | undefined,
): Promise<RunningActor> => {
  switch (name) {
    case "gpu-executor": {
      const kv = { policy: policy?.resolved ?? parsePolicy("full"), version: policy?.version ?? 0, gpuBudgetBytes: o.gpuKvBudget, arena: tiers.arena, store: tiers.store }
      return runActor(nc, gpuExecutor(nc, { openWeights: () => openWeights(o.model), maxContext: o.maxContext, device: o.device, kv, node: o.node, sessionDiskBudget: o.kvDiskBudget, maxBatch: o.maxBatch }))
    }
    case "host-cache":
      if (!tiers.arena) throw leoamError("invalid_request", "no host arena in this process (it lives with the gpu-executor)")
      return runActor(nc, hostCacheActor(tiers.arena))
    case "disk-store":
      return runActor(nc, diskStoreActor({ kvDir: o.kvDir, store: tiers.store }))
    case "scheduler": {
      // The service instance names its node (`$SRV.INFO`, `$SRV.STATS`: which node served what).
      const svc = await new Svcm(raw).add({
        name: SERVICE_NAME,
        version,
        description: "leoam: long-context LLM inference with a three-tier KV cache",
        metadata: { node: o.node ?? "", pid: String(process.pid), ...(leases ? { instance: leases.instance } : {}) },
      })
      const group = svc.addGroup("leoam.v1")
      // A generate is held in the node's lease from arrival to reply (actors/node-leases.ts).
      const source = (endpoint: string) => (callback: (err: Error | null, msg: Msg) => void) => {
        group.addEndpoint(endpoint, {
          handler: endpoint === "generate" && leases ? (err, msg) => (err || leases.hold(msg), callback(err, msg)) : callback,
        })
      }
      // Admin endpoints: leoam.v1.admin.policy.get and so on (names without dots, subjects with).
      const adminGroup = svc.addGroup(ADMIN_PREFIX.slice(0, -1))
      const adminSource = (subject: string) => (callback: (err: Error | null, msg: Msg) => void) => {
        const rest = subject.slice(ADMIN_PREFIX.length)
        adminGroup.addEndpoint(`admin-${rest.replace(/\./g, "-")}`, { subject: rest, handler: callback })
      }
      const adminSources = Object.fromEntries(Object.entries(adminSubjects).map(([k, subject]) => [k, adminSource(subject)])) as Record<keyof typeof adminSubjects, Source>
      let self: RunningActor | undefined
      const actor = await runActor(
        nc,
        scheduler(nc, {
          loadTokenizer: o.model.startsWith("dummy:") ? undefined : () => loadTokenizer(o.model),
          queueCapacity: o.queueCapacity ?? 64,
          maxBatch: o.maxBatch,
          version,
          sources: {
            generate: source("generate"),
            tokenize: source("tokenize"),
            models: source("models"),
            health: source("health"),
          },
          adminSources,
          load: () => self?.load() ?? { queued: 0, busy: false, capacity: o.queueCapacity ?? 64 },
          draining,
          runSilenceMs: o.runSilenceMs,
          node: o.node,
          sessionSources: sessionSources(group, o.node, leases?.hold),
          sessionQuota: o.sessionQuota,
          holdRequest: leases?.hold,
        }),
      )
      self = actor
      return {
        ...actor,
        drain: async (ms) => {
          await actor.drain(ms)
          await svc.stop().catch(() => undefined)
        },
      }
    }
  }
}
