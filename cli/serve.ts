// `leoam serve` (all actors, embedded NATS unless --nats-url) and `leoam actor NAME`
// (one actor against an existing NATS). Both print one ready line and drain on
// SIGTERM/SIGINT: new requests get `shutting_down`, admitted ones finish (bounded).
import { randomBytes } from "node:crypto"
import { actorNames, type NodeActorName, runActor } from "../actors/actor.ts"
import { startNode } from "../actors/node.ts"
import { ensuredDefaultKvDir, loadPolicyDocument } from "./kv.ts"
import { inboxPrefixOf, loadUsers, type UsersFile } from "../actors/access.ts"
import { type HttpGateway, httpGatewayActor } from "../actors/http-gateway.ts"
import { connectNats } from "../actors/nats.ts"
import { removeServeRecord, writeServeRecord } from "./local.ts"
import { CliError } from "./errors.ts"
import { notifyReady, notifyStopping } from "./notify.ts"

export interface ServeArgs {
  readonly actors: ReadonlyArray<NodeActorName>
  /** --node: this node's id on a shared bus (see nodeIdOf). */
  readonly node?: string
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
  /** --max-batch: generate requests decoding together. */
  readonly maxBatch?: number
  readonly kvDir?: string
  readonly hostKvBudget: number
  readonly kvPolicy?: string
  /** Whether --kv-policy was given (not its default). */
  readonly kvPolicyExplicit?: boolean
  readonly gpuKvBudget?: number
  /** --kv-disk-budget and --session-quota (sessions). */
  readonly kvDiskBudget?: number
  readonly sessionQuota?: number
  readonly drainTimeoutMs: number
  /** --http-port: the OpenAI-compatible HTTP gateway (actors/http-gateway.ts) beside the actors; 0: a free port. */
  readonly httpPort?: number
  readonly httpHost?: string
  readonly chatTemplate?: string
}

/** The names whose `USER:PASSWORD` API keys the gateway accepts (nkey users have no password to send). */
const keyUsers = (users: UsersFile | undefined): ReadonlySet<string> | undefined =>
  users && new Set(users.users.flatMap((u) => (u.user !== undefined ? [u.user] : [])))

/** Stops on the first SIGTERM or SIGINT, saying so; resolves when `stop` has finished. */
const untilSignal = (drainMs: number, stop: () => Promise<void>) =>
  new Promise<void>((resolve) => {
    let stopping = false
    const on = (signal: string) => {
      if (stopping) return
      stopping = true
      process.stderr.write(`leoam: ${signal}: draining (up to ${drainMs} ms)\n`)
      void notifyStopping()
      stop().then(resolve, (e) => {
        process.stderr.write(`leoam: error while stopping: ${(e as Error).message}\n`)
        resolve()
      })
    }
    process.once("SIGTERM", () => on("SIGTERM"))
    process.once("SIGINT", () => on("SIGINT"))
  })

/**
 * `leoam actor http-gateway`: the gateway alone against a NATS where a node serves (its
 * shared connection uses the --nats-* credentials; with --users, each request the caller's).
 */
export const runHttpGateway = async (args: ServeArgs & { readonly natsUrl: string; readonly inboxPrefix?: string }): Promise<void> => {
  const auth = { user: args.natsUser, pass: args.natsPass, credsFile: args.natsCreds, nkeySeedFile: args.natsNkey }
  // An actor like the others: it answers the actors' pings (leoam.v1.health) on this connection.
  const nc = await connectNats(args.natsUrl, "leoam-http-gateway", auth)
  let gateway: HttpGateway | undefined
  const actor = await runActor(
    nc,
    httpGatewayActor(
      {
        natsUrl: args.natsUrl,
        auth,
        // As the leoam CLI: a named user's replies come to its own inbox prefix (the only one a client user may use).
        inboxPrefix: args.inboxPrefix ?? (args.natsUser !== undefined ? inboxPrefixOf(args.natsUser) : undefined),
        users: keyUsers(args.users !== undefined ? loadUsers(args.users) : undefined),
        port: args.httpPort ?? 8000,
        host: args.httpHost,
        modelDir: args.model,
        chatTemplateFile: args.chatTemplate,
      },
      (g) => (gateway = g),
    ),
  ).catch(async (e) => {
    await nc.close().catch(() => undefined)
    throw e
  })
  process.stdout.write(`leoam: http-gateway ready on ${gateway!.url} for ${args.natsUrl} (pid ${process.pid}); chat template ${gateway!.chatTemplate}\n`)
  void notifyReady(`http-gateway ready on ${gateway!.url}`)
  await untilSignal(args.drainTimeoutMs, async () => {
    await actor.drain(args.drainTimeoutMs)
    await nc.drain().catch(() => undefined)
  })
  process.stdout.write("leoam: stopped\n")
}

export const parseActorName = (name: string): NodeActorName => {
  if (!(actorNames as ReadonlyArray<string>).includes(name)) throw new CliError("invalid_argument", `unknown actor "${name}" (one of ${actorNames.join(", ")})`)
  return name as NodeActorName
}

/**
 * The node id: --node, else a fresh one for `leoam serve --nats-url` (every actor is in this
 * process, so nothing needs to find it, and two such nodes on one bus never share internal
 * subjects); else none (an embedded server's node, or `leoam actor` joining the single node).
 */
const nodeIdOf = (args: ServeArgs): string | undefined =>
  args.node ?? (args.natsUrl !== undefined && actorNames.every((a) => args.actors.includes(a)) ? randomBytes(4).toString("hex") : undefined)

export const runServe = async (args: ServeArgs): Promise<void> => {
  // The scheduler waits for the executor's description, so it starts last.
  const actors = [...args.actors].sort((a, b) => Number(a === "scheduler") - Number(b === "scheduler"))
  const nodeId = nodeIdOf(args)
  const users = args.users !== undefined ? loadUsers(args.users) : undefined
  const node = await startNode({
    actors,
    node: nodeId,
    model: args.model,
    natsUrl: args.natsUrl,
    natsPort: args.natsPort,
    natsUser: args.natsUser,
    natsPass: args.natsPass,
    natsCreds: args.natsCreds,
    natsNkey: args.natsNkey,
    users,
    metricsPort: args.metricsPort,
    maxContext: args.maxContext,
    device: args.device,
    queueCapacity: args.queue,
    maxBatch: args.maxBatch,
    kvDir: args.kvDir ?? ensuredDefaultKvDir(),
    hostKvBudget: args.hostKvBudget,
    kvPolicy: loadPolicyDocument(args.kvPolicy ?? "full"),
    gpuKvBudget: args.gpuKvBudget,
    kvDiskBudget: args.kvDiskBudget,
    sessionQuota: args.sessionQuota,
    drainTimeoutMs: args.drainTimeoutMs,
    // The HTTP gateway, one more actor of the node; the embedded server without --users needs no credentials, an existing one the node's.
    ...(args.httpPort !== undefined
      ? {
          http: {
            auth: { user: args.natsUser, pass: args.natsPass, credsFile: args.natsCreds, nkeySeedFile: args.natsNkey },
            users: keyUsers(users),
            port: args.httpPort,
            host: args.httpHost,
            modelDir: args.model,
            chatTemplateFile: args.chatTemplate,
          },
        }
      : {}),
  })
  const p = node.policy
  if (p?.stored && args.kvPolicy !== undefined && args.kvPolicyExplicit && p.name !== loadPolicyDocument(args.kvPolicy).resolved.name) {
    process.stderr.write(`leoam: the kv-dir's stored KV policy v${p.version} (${p.name}) is used, not --kv-policy ${args.kvPolicy}; change it with \`leoam admin policy set\`\n`)
  }
  const gateway = node.http?.()
  const extras = [
    p ? `KV policy ${p.name} v${p.version}${p.stored ? " (stored)" : ""}` : "",
    node.metricsUrl ? `metrics ${node.metricsUrl}` : "",
    gateway ? `http ${gateway.url} (chat template ${gateway.chatTemplate})` : "",
    nodeId !== undefined ? `node ${nodeId}` : "",
  ].filter(Boolean)
  if (actors.includes("scheduler")) writeServeRecord(node.url)
  process.stdout.write(`leoam: ${actors.join(", ")} ready on ${node.url} (pid ${process.pid})${extras.length ? `; ${extras.join("; ")}` : ""}\n`)
  void notifyReady(`${actors.join(", ")} ready on ${node.url}`)
  // The node drains its scheduler first (HTTP requests admitted meanwhile get shutting_down, those in flight their answer), its gateway last.
  await untilSignal(args.drainTimeoutMs, () => node.stop())
  removeServeRecord()
  process.stdout.write("leoam: stopped\n")
}
