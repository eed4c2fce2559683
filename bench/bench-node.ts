// A whole leoam node for a benchmark that measures through NATS (bench/peer-share.ts,
// reshare-bench.ts, session-ttft.ts): the four actors on an embedded nats-server, its disk tier
// in a fresh temporary directory, one client connection, and requests that throw on an error
// reply; close stops everything and removes the directory.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { connectNats } from "../actors/nats.ts"
import { type LeoamNode, type NodeOptions, startNode } from "../actors/node.ts"

export interface BenchNode {
  readonly node: LeoamNode
  /** The reply's JSON; an error reply throws `subject: code: message`. */
  ask(subject: string, body: unknown): Promise<any>
  close(): Promise<void>
}

/** Starts the node (`name` names its directory and its client connection). */
export const startBenchNode = async (name: string, options: Omit<NodeOptions, "actors" | "kvDir">): Promise<BenchNode> => {
  const kvDir = mkdtempSync(join(tmpdir(), `leoam-${name}-`))
  const node = await startNode({ actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"], kvDir, ...options })
  const nc = await connectNats(node.url, name)
  return {
    node,
    ask: async (subject, body) => {
      const m = await nc.request(subject, new TextEncoder().encode(JSON.stringify(body)), { timeout: 3_600_000 })
      const json = m.json<any>()
      if (json.error) throw new Error(`${subject}: ${json.error.code}: ${json.error.message}`)
      return json
    },
    close: async () => {
      await nc.close()
      await node.stop()
      rmSync(kvDir, { recursive: true, force: true })
    },
  }
}
