// Test servers: a real nats-server on a free loopback port and a leoam node (chosen
// actors, the bundled model, a temporary KV directory), started and stopped by the test.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { NatsConnection } from "@nats-io/nats-core"
import type { NodeActorName } from "../../actors/actor.ts"
import { connectNats, type EmbeddedNats } from "../../actors/nats.ts"
import { startEmbeddedNats } from "../../actors/nats-server.ts"
import { type LeoamNode, startNode } from "../../actors/node.ts"

export const modelDir = new URL("../../models/tiny-leo-14m", import.meta.url).pathname

export interface TestCluster {
  readonly nats: EmbeddedNats
  readonly node: LeoamNode
  readonly client: NatsConnection
  readonly kvDir: string
  stop(): Promise<void>
}

export const startCluster = async (
  options: {
    actors?: ReadonlyArray<NodeActorName>
    queueCapacity?: number
    maxContext?: number
    drainTimeoutMs?: number
    maxBatch?: number
    kvPolicy?: Parameters<typeof startNode>[0]["kvPolicy"]
    gpuKvBudget?: number
  } = {},
): Promise<TestCluster> => {
  const nats = await startEmbeddedNats()
  const kvDir = mkdtempSync(join(tmpdir(), "leoam-kv-"))
  const node = await startNode({
    actors: options.actors ?? ["gpu-executor", "disk-store", "host-cache", "scheduler"],
    natsUrl: nats.url,
    model: modelDir,
    maxContext: options.maxContext ?? 2048,
    queueCapacity: options.queueCapacity ?? 8,
    maxBatch: options.maxBatch,
    kvPolicy: options.kvPolicy,
    gpuKvBudget: options.gpuKvBudget,
    kvDir,
    hostKvBudget: 8 * 1024 * 1024,
    drainTimeoutMs: options.drainTimeoutMs ?? 20_000,
  })
  const client = await connectNats(nats.url, "test-client")
  return {
    nats,
    node,
    client,
    kvDir,
    stop: async () => {
      await client.close().catch(() => undefined)
      await node.stop()
      await nats.stop()
      rmSync(kvDir, { recursive: true, force: true })
    },
  }
}

const enc = new TextEncoder()

/** A request whose reply is parsed as JSON; error replies come back as { error } with their header code. */
export const ask = async (nc: NatsConnection, subject: string, body: unknown, timeout = 120_000) => {
  const data = typeof body === "string" ? enc.encode(body) : body instanceof Uint8Array ? body : enc.encode(JSON.stringify(body))
  const m = await nc.request(subject, data, { timeout })
  const json = m.data.length > 0 ? m.json<any>() : {}
  return { json, status: m.headers?.get("Nats-Service-Error-Code") ?? "", headerError: m.headers?.get("Nats-Service-Error") ?? "" }
}
