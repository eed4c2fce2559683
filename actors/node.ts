// A leoam node: starts (or joins) NATS, registers the public service with the NATS
// services API, and runs the chosen actors as fibers of this process. `leoam serve` runs
// all four; `leoam actor NAME` runs one against the same NATS. SIGTERM/SIGINT drain:
// new requests get `shutting_down`, those in flight finish (bounded), then it stops.
import { readFileSync } from "node:fs"
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { Svcm } from "@nats-io/services"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer } from "../models/tokenizer.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { releaseGpu } from "../engine/gpu.ts"
import { isTiered } from "../engine/kv-setup.ts"
import type { ResolvedPolicy } from "../protocol/policy.ts"
import { DiskStore } from "./disk-store/store.ts"
import { HostArena } from "./host-cache/arena.ts"
import { SERVICE_NAME } from "../protocol/subjects.ts"
import { type ActorName, type RunningActor, startActor } from "./actor.ts"
import { diskStoreActor } from "./disk-store.ts"
import { gpuExecutor } from "./gpu-executor.ts"
import { hostCacheActor } from "./host-cache.ts"
import { connectNats, type EmbeddedNats, startNatsServer } from "./nats.ts"
import { scheduler } from "./scheduler.ts"

export const packageVersion = (): string =>
  (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version

export interface NodeOptions {
  readonly actors: ReadonlyArray<ActorName>
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
  readonly kvDir: string
  readonly hostKvBudget: number
  /** The KV policy (default full) and the GPU budget for KV. */
  readonly kvPolicy?: ResolvedPolicy
  readonly gpuKvBudget?: number
  readonly drainTimeoutMs?: number
}

export interface LeoamNode {
  readonly url: string
  readonly nc: NatsConnection
  readonly actors: ReadonlyArray<RunningActor>
  /** Drains and stops everything this node started. */
  stop(): Promise<void>
}

export const startNode = async (options: NodeOptions): Promise<LeoamNode> => {
  let embedded: EmbeddedNats | undefined
  if (!options.natsUrl) embedded = await startNatsServer({ port: options.natsPort })
  const url = options.natsUrl ?? embedded!.url
  const running: RunningActor[] = []
  let nc: NatsConnection | undefined
  let draining = false
  let tiers: SharedTiers | undefined
  try {
    tiers = openSharedTiers(options)
    nc = await connectNats(url, `leoam-${options.actors.join("+")}`, { user: options.natsUser, pass: options.natsPass })
    const version = packageVersion()
    for (const name of options.actors) {
      running.push(await startNamed(nc, name, options, version, () => draining, tiers))
    }
  } catch (e) {
    for (const a of running.reverse()) await a.drain(0).catch(() => undefined)
    await nc?.close().catch(() => undefined)
    await tiers?.store?.close().catch(() => undefined)
    await embedded?.stop()
    throw e
  }
  const conn = nc
  return {
    url,
    nc: conn,
    actors: running,
    stop: async () => {
      draining = true
      // The scheduler first (it refuses new work and finishes what it admitted), then the
      // gpu-executor (it may still write chunks), then the tiers it writes to.
      const rank = (n: string) => ["scheduler", "gpu-executor", "host-cache", "disk-store"].indexOf(n)
      const order = [...running].sort((a, b) => rank(a.name) - rank(b.name))
      for (const a of order) await a.drain(options.drainTimeoutMs ?? 30_000)
      await tiers?.store?.close().catch(() => undefined)
      await conn.drain().catch(() => undefined)
      await embedded?.stop()
      await releaseGpu()
    },
  }
}

/**
 * The host arena and disk store of this process, shared by its host-cache, disk-store and
 * gpu-executor actors (KV bytes move through them in memory, never over NATS). A
 * gpu-executor alone under a tiered policy gets its own arena and opens the same kv-dir
 * (LMDB allows several processes).
 */
interface SharedTiers {
  readonly arena?: HostArena
  readonly store?: DiskStore
}

const openSharedTiers = (o: NodeOptions): SharedTiers => {
  const tiered = o.kvPolicy !== undefined && isTiered(o.kvPolicy) && o.actors.includes("gpu-executor")
  const arena = tiered || o.actors.includes("host-cache") ? new HostArena({ budgetBytes: o.hostKvBudget }) : undefined
  const store = tiered || o.actors.includes("disk-store") ? DiskStore.open({ kvDir: o.kvDir }) : undefined
  return { arena, store }
}

const openWeights = (spec: string) => (spec.startsWith("dummy:") ? new DummyWeightSource(resolveDummyConfig(spec.slice(6))) : openHfModel(spec))

const startNamed = async (
  nc: NatsConnection,
  name: ActorName,
  o: NodeOptions,
  version: string,
  draining: () => boolean,
  tiers: SharedTiers,
): Promise<RunningActor> => {
  switch (name) {
    case "gpu-executor": {
      const kv = o.kvPolicy ? { policy: o.kvPolicy, gpuBudgetBytes: o.gpuKvBudget, arena: tiers.arena, store: tiers.store } : undefined
      return startActor(nc, gpuExecutor(nc, { openWeights: () => openWeights(o.model), maxContext: o.maxContext, device: o.device, kv }))
    }
    case "host-cache":
      return startActor(nc, hostCacheActor({ budgetBytes: o.hostKvBudget, arena: tiers.arena }))
    case "disk-store":
      return startActor(nc, diskStoreActor({ kvDir: o.kvDir, store: tiers.store }))
    case "scheduler": {
      const svc = await new Svcm(nc).add({ name: SERVICE_NAME, version, description: "leoam: long-context LLM inference with a three-tier KV cache" })
      const group = svc.addGroup("leoam.v1")
      const source = (endpoint: string) => (callback: (err: Error | null, msg: Msg) => void) => {
        group.addEndpoint(endpoint, { handler: callback })
      }
      let self: RunningActor | undefined
      const actor = await startActor(
        nc,
        scheduler(nc, {
          loadTokenizer: o.model.startsWith("dummy:") ? undefined : () => loadTokenizer(o.model),
          queueCapacity: o.queueCapacity ?? 64,
          version,
          sources: {
            generate: source("generate"),
            tokenize: source("tokenize"),
            models: source("models"),
            health: source("health"),
          },
          load: () => self?.load() ?? { queued: 0, busy: false, capacity: o.queueCapacity ?? 64 },
          draining,
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
