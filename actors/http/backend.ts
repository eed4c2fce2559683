// The gateway's NATS side: who a request runs as, and its requests to the scheduler's public
// subjects. Without users every request shares one connection. With users (`--users`) an API
// key `USER:PASSWORD` opens (and caches, by a hash of the key) a connection as that NATS user
// with its own inbox prefix, so the server checks the password (plain or bcrypt) and the
// user's permissions, the scheduler sees the user in Nats-Request-Info, and one user's
// replies and tokens never reach another's connection. The gateway holds no passwords.
import { createHash } from "node:crypto"
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core"
import { nuid } from "@nats-io/nuid"
import { Effect } from "effect"
import { leoamError, type LeoamError } from "../../protocol/errors.ts"
import { type GenerateReply, GenerateReply as GenerateReplySchema, type GenerateRequest, ModelsReply, type StreamEvent } from "../../protocol/messages.ts"
import { cancelSubject, publicSubjects } from "../../protocol/subjects.ts"
import { inboxPrefixOf, streamPrefixOf } from "../access.ts"
import { connectNats, encodeJson, type NatsAuth, request } from "../nats.ts"
import { decodeReply } from "../rpc.ts"
import { connect } from "@nats-io/transport-node"
import { openAiError, type OpenAiError } from "./errors.ts"

export interface BackendOptions {
  readonly natsUrl: string
  /** The shared connection's credentials (no users). */
  readonly auth?: NatsAuth
  /** The shared connection's inbox prefix (a client user's must be `_INBOX_<user>`); default `_INBOX`. */
  readonly inboxPrefix?: string
  /** Users whose keys are accepted (names from the users file); absent: no key needed. */
  readonly users?: ReadonlySet<string>
  /** Idle per-user connections are closed after this (default 5 minutes). */
  readonly idleMs?: number
}

/** One caller's view of the bus: its connection and where its streams go. */
export interface Caller {
  readonly nc: NatsConnection
  /** A fresh subject in this caller's own space for a generate's token events. */
  streamSubject(): string
  readonly user?: string
}

interface Pooled {
  readonly caller: Promise<Caller>
  lastUsed: number
}

const MAX_CONNECTIONS = 256

export class Backend {
  private shared: Promise<NatsConnection> | undefined
  private readonly pool = new Map<string, Pooled>()
  private readonly sweep: NodeJS.Timeout
  constructor(private readonly o: BackendOptions) {
    this.sweep = setInterval(() => this.closeIdle(), 30_000)
    this.sweep.unref()
  }

  /** Whether requests need an API key. */
  get keyed(): boolean {
    return this.o.users !== undefined
  }

  /** The caller of an Authorization header, or the 401 to answer. */
  async callerOf(authorization: string | undefined): Promise<Caller> {
    if (!this.o.users) {
      // A named user's streams go to its own stream subjects, which a client user may subscribe to.
      const named = this.o.auth?.user
      this.shared ??= connectNats(this.o.natsUrl, "leoam-http-gateway", this.o.auth, this.o.inboxPrefix)
      const nc = await this.shared.catch((e) => {
        this.shared = undefined
        throw unavailable(e)
      })
      // A connection the client closed for good (not one reconnecting) is opened afresh.
      if (nc.isClosed()) {
        this.shared = undefined
        return this.callerOf(authorization)
      }
      return { nc, streamSubject: () => (named !== undefined ? `${streamPrefixOf(named)}${nuid.next()}` : `_INBOX.leoam-http.${nuid.next()}`) }
    }
    const key = /^Bearer\s+(.+)$/i.exec(authorization?.trim() ?? "")?.[1]?.trim()
    if (!key) throw openAiError(401, "invalid_api_key", "no API key: send Authorization: Bearer USER:PASSWORD (a user of the node's users file)")
    const at = key.indexOf(":")
    const user = at > 0 ? key.slice(0, at) : ""
    if (!this.o.users.has(user)) throw openAiError(401, "invalid_api_key", "invalid API key: it is USER:PASSWORD of a user of the node's users file")
    const id = createHash("sha256").update(key).digest("hex")
    let entry = this.pool.get(id)
    if (!entry) {
      if (this.pool.size >= MAX_CONNECTIONS) this.closeIdle(0)
      entry = { caller: this.open(user, key.slice(at + 1)), lastUsed: Date.now() }
      this.pool.set(id, entry)
      // A refused key is not kept: the next try connects again (the server checks it each time).
      entry.caller.catch(() => this.pool.delete(id))
    }
    entry.lastUsed = Date.now()
    const caller = await entry.caller
    if (caller.nc.isClosed()) {
      // Closed for good (say the user's password changed and reconnecting was refused): the next try connects again.
      if (this.pool.get(id) === entry) this.pool.delete(id)
      throw openAiError(503, "actor_unavailable", "this API key's NATS connection was closed; send the request again")
    }
    return caller
  }

  private async open(user: string, pass: string): Promise<Caller> {
    const inboxPrefix = inboxPrefixOf(user)
    const nc = await connect({ servers: this.o.natsUrl, name: `leoam-http-gateway:${user}`, user, pass, inboxPrefix, maxReconnectAttempts: -1 }).catch((e) => {
      if (/authoriz|authenticat/i.test(String((e as Error)?.message)) || /AUTHORIZATION/i.test(String((e as { code?: string })?.code))) {
        throw openAiError(401, "invalid_api_key", "invalid API key: the NATS server refused this user and password")
      }
      throw unavailable(e)
    })
    const streams = streamPrefixOf(user)
    return { nc, user, streamSubject: () => `${streams}${nuid.next()}` }
  }

  private closeIdle(idleMs = this.o.idleMs ?? 300_000) {
    const now = Date.now()
    for (const [id, entry] of this.pool) {
      if (now - entry.lastUsed < idleMs) continue
      this.pool.delete(id)
      void entry.caller.then((c) => c.nc.close()).catch(() => undefined)
    }
  }

  async close(): Promise<void> {
    clearInterval(this.sweep)
    const all = [...this.pool.values()].map((e) => e.caller.then((c) => c.nc.close()).catch(() => undefined))
    this.pool.clear()
    if (this.shared) all.push(this.shared.then((nc) => nc.close()).catch(() => undefined))
    await Promise.all(all)
  }
}

const unavailable = (e: unknown): OpenAiError => openAiError(503, "actor_unavailable", `the gateway cannot reach NATS: ${(e as Error)?.message ?? String(e)}`)

/** The served models (leoam.v1.models). */
export const models = (caller: Caller): Effect.Effect<ModelsReply, LeoamError> =>
  request(caller.nc, publicSubjects.models, encodeJson({}), 30_000).pipe(Effect.flatMap((m) => decodeReply(ModelsReply, publicSubjects.models, m)))

export interface GenerateCall {
  /** The reply (the truth), or the LeoamError of an error reply. */
  readonly reply: Promise<GenerateReply>
  /** Asks the node to stop the run (the client left); best effort. */
  cancel(): void
}

/**
 * One generate with its token events going to `onEvent` as they come (a preview: the reply
 * is the truth). The events go to a fresh subject in the caller's own space, always, so that
 * a client that leaves can have its run cancelled by that subject (leoam.v1.cancel).
 */
export const generate = (caller: Caller, body: Omit<GenerateRequest, "stream">, onEvent: (e: StreamEvent) => void, timeoutMs: number): GenerateCall => {
  const stream = caller.streamSubject()
  let sub: Subscription | undefined
  let settled = false
  const reply = (async () => {
    sub = caller.nc.subscribe(stream, {
      callback: (err, m: Msg) => {
        if (err || settled) return
        try {
          onEvent(m.json<StreamEvent>())
        } catch {
          // A malformed event is skipped: the reply carries the whole text.
        }
      },
    })
    try {
      await caller.nc.flush()
      const msg = await Effect.runPromise(
        request(caller.nc, publicSubjects.generate, encodeJson({ ...body, stream }), timeoutMs).pipe(
          Effect.flatMap((m) => decodeReply(GenerateReplySchema, publicSubjects.generate, m)),
          Effect.mapError((e) => (e.code === "actor_unavailable" && /timeout/i.test(e.message) ? leoamError("actor_unavailable", `no reply from leoam.v1.generate within ${timeoutMs} ms`) : e)),
          Effect.either,
        ),
      )
      if (msg._tag === "Left") throw msg.left
      return msg.right
    } finally {
      settled = true
      sub.unsubscribe()
    }
  })()
  return {
    reply,
    cancel: () => {
      if (settled) return
      try {
        caller.nc.publish(cancelSubject, encodeJson({ stream }))
      } catch {
        // The connection is gone: the run ends at its max_tokens.
      }
    },
  }
}
