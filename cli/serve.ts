// `leoam serve` (all actors, embedded NATS unless --nats-url) and `leoam actor NAME`
// (one actor against an existing NATS). Both print one ready line and drain on
// SIGTERM/SIGINT: new requests get `shutting_down`, admitted ones finish (bounded).
import { type ActorName, actorNames } from "../actors/actor.ts"
import { startNode } from "../actors/node.ts"
import { ensuredDefaultKvDir, loadPolicyDocument } from "./kv.ts"
import { loadUsers } from "../actors/access.ts"
import { removeServeRecord, writeServeRecord } from "./local.ts"
import { CliError } from "./errors.ts"

export interface ServeArgs {
  readonly actors: ReadonlyArray<ActorName>
  readonly model: string
  readonly natsUrl?: string
  readonly natsPort?: number
  readonly natsUser?: string
  readonly natsPass?: string
  readonly natsCreds?: string
  readonly natsNkey?: string
  /** A users file for the embedded server (client and admin roles). */
  readonly users?: string
  readonly metricsPort?: number
  readonly maxContext?: number
  readonly device: "auto" | "gpu" | "cpu"
  readonly queue: number
  readonly kvDir?: string
  readonly hostKvBudget: number
  readonly kvPolicy?: string
  /** Whether --kv-policy was given (not its default). */
  readonly kvPolicyExplicit?: boolean
  readonly gpuKvBudget?: number
  readonly drainTimeoutMs: number
}

export const parseActorName = (name: string): ActorName => {
  if (!(actorNames as ReadonlyArray<string>).includes(name)) throw new CliError("invalid_argument", `unknown actor "${name}" (one of ${actorNames.join(", ")})`)
  return name as ActorName
}

export const runServe = async (args: ServeArgs): Promise<void> => {
  // The scheduler waits for the executor's description, so it starts last.
  const actors = [...args.actors].sort((a, b) => Number(a === "scheduler") - Number(b === "scheduler"))
  const node = await startNode({
    actors,
    model: args.model,
    natsUrl: args.natsUrl,
    natsPort: args.natsPort,
    natsUser: args.natsUser,
    natsPass: args.natsPass,
    natsCreds: args.natsCreds,
    natsNkey: args.natsNkey,
    users: args.users !== undefined ? loadUsers(args.users) : undefined,
    metricsPort: args.metricsPort,
    maxContext: args.maxContext,
    device: args.device,
    queueCapacity: args.queue,
    kvDir: args.kvDir ?? ensuredDefaultKvDir(),
    hostKvBudget: args.hostKvBudget,
    kvPolicy: loadPolicyDocument(args.kvPolicy ?? "full"),
    gpuKvBudget: args.gpuKvBudget,
    drainTimeoutMs: args.drainTimeoutMs,
  })
  const p = node.policy
  if (p?.stored && args.kvPolicy !== undefined && args.kvPolicyExplicit && p.name !== loadPolicyDocument(args.kvPolicy).resolved.name) {
    process.stderr.write(`leoam: the kv-dir's stored KV policy v${p.version} (${p.name}) is used, not --kv-policy ${args.kvPolicy}; change it with \`leoam admin policy set\`\n`)
  }
  const extras = [p ? `KV policy ${p.name} v${p.version}${p.stored ? " (stored)" : ""}` : "", node.metricsUrl ? `metrics ${node.metricsUrl}` : ""].filter(Boolean)
  if (actors.includes("scheduler")) writeServeRecord(node.url)
  process.stdout.write(`leoam: ${actors.join(", ")} ready on ${node.url} (pid ${process.pid})${extras.length ? `; ${extras.join("; ")}` : ""}\n`)
  await new Promise<void>((resolve) => {
    let stopping = false
    const stop = (signal: string) => {
      if (stopping) return
      stopping = true
      process.stderr.write(`leoam: ${signal}: draining (up to ${args.drainTimeoutMs} ms)\n`)
      node.stop().then(resolve, (e) => {
        process.stderr.write(`leoam: error while stopping: ${(e as Error).message}\n`)
        resolve()
      })
    }
    process.once("SIGTERM", () => stop("SIGTERM"))
    process.once("SIGINT", () => stop("SIGINT"))
  })
  removeServeRecord()
  process.stdout.write("leoam: stopped\n")
}
