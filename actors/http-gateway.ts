// The http-gateway actor: OpenAI's HTTP API (completions, chat completions, models, SSE
// streaming) in front of the scheduler's public NATS subjects. It holds no model and no
// KV: every request is one NATS request as the caller's NATS user (actors/http/backend.ts),
// so it runs beside `leoam serve` (--http-port) or alone (`leoam actor http-gateway`).
// Listens on loopback unless a host is given. Stopping closes the listener, ends open
// connections and drains its NATS connections. As an actor (`httpGatewayActor`) its service
// is the listening gateway, built at start and rebuilt after a crash; it answers the actors'
// pings with its counters, so it shows in leoam.v1.health and the metrics.
import type { AddressInfo } from "node:net"
import type { Server } from "node:http"
import { serve } from "@hono/node-server"
import { Context, Effect, Layer } from "effect"
import { leoamError } from "../protocol/errors.ts"
import { type ActorDefinition, serviceOf } from "./actor.ts"
import { startup } from "./errors.ts"
import type { NatsAuth } from "./nats.ts"
import { gatewayApp, type GatewayCounters } from "./http/app.ts"
import { Backend } from "./http/backend.ts"
import { loadChatTemplate } from "./http/chat-template.ts"

export interface HttpGatewayOptions {
  readonly natsUrl: string
  /** Credentials of the shared connection when no users are given. */
  readonly auth?: NatsAuth
  /** The shared connection's inbox prefix (`_INBOX_<user>` for a client user); default `_INBOX`. */
  readonly inboxPrefix?: string
  /** Client and admin user names whose `USER:PASSWORD` API keys are accepted; absent: no key needed. */
  readonly users?: ReadonlySet<string>
  /** 0: a free port. */
  readonly port: number
  /** Default 127.0.0.1 (loopback only). */
  readonly host?: string
  /** The served model's directory, for its chat template (absent or dummy: ChatML). */
  readonly modelDir?: string
  /** A Jinja chat template file that overrides the model's. */
  readonly chatTemplateFile?: string
  /** How long a generate may take before it is answered 503 (default 10 minutes). */
  readonly generateTimeoutMs?: number
}

export interface HttpGateway {
  readonly url: string
  readonly port: number
  /** Where the chat template came from (also in GET /v1/models). */
  readonly chatTemplate: string
  readonly stats: () => GatewayCounters
  stop(): Promise<void>
}

export const DEFAULT_HTTP_HOST = "127.0.0.1"

export const startHttpGateway = async (o: HttpGatewayOptions): Promise<HttpGateway> => {
  const chatTemplate = loadChatTemplate(o.modelDir?.startsWith("dummy:") ? undefined : o.modelDir, o.chatTemplateFile)
  const generateTimeoutMs = o.generateTimeoutMs ?? 600_000
  const backend = new Backend({ natsUrl: o.natsUrl, auth: o.auth, inboxPrefix: o.inboxPrefix, users: o.users })
  const counters: GatewayCounters = { requests: 0, errors: 0, streams: 0, cancelled: 0 }
  const app = gatewayApp({ backend, chatTemplate, generateTimeoutMs, counters })
  const host = o.host ?? DEFAULT_HTTP_HOST
  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, port: o.port, hostname: host }) as Server
    s.once("listening", () => resolve(s))
    // A port in use or an address not of this machine: bad flags (exit 2), said as such.
    s.once("error", (e) => reject(leoamError("invalid_request", `the HTTP gateway cannot listen on ${host}:${o.port} (--http-host, --http-port): ${e.message}`)))
  })
  const port = (server.address() as AddressInfo).port
  const shown = host.includes(":") ? `[${host}]` : host
  return {
    url: `http://${shown}:${port}`,
    port,
    chatTemplate: chatTemplate.source,
    stats: () => ({ ...counters }),
    stop: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
      await backend.close()
    },
  }
}

export class HttpGatewayService extends Context.Tag("leoam/actors/HttpGateway")<HttpGatewayService, HttpGateway>() {
  /** Listens while the scope is open; a port that cannot be had fails for good (bad flags). */
  static readonly layer = (o: HttpGatewayOptions) =>
    Layer.scoped(
      HttpGatewayService,
      Effect.acquireRelease(startup()(() => startHttpGateway(o)), (g) => Effect.promise(() => g.stop())),
    )
}

/** What the gateway tells pings (leoam.v1.health) and the metrics: where it listens and its counters. */
export const gatewayStatus = (g: HttpGateway) => ({ url: g.url, chat_template: g.chatTemplate, ...g.stats() })

/**
 * The gateway as an actor of its node (`leoam serve --http-port`) or alone (`leoam actor
 * http-gateway`): no mailbox subjects (its requests come over HTTP and go out as NATS
 * requests), only the pings every actor answers. `onStart` is told of each gateway built.
 */
export const httpGatewayActor = (o: HttpGatewayOptions, onStart?: (g: HttpGateway) => void): ActorDefinition<HttpGateway> => ({
  name: "http-gateway",
  service: serviceOf(HttpGatewayService, HttpGatewayService.layer(o)).pipe(Effect.tap((g) => Effect.sync(() => onStart?.(g)))),
  stats: gatewayStatus,
})
