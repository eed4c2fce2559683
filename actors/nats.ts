// NATS plumbing shared by every actor: connections, request bodies (size, nesting, UTF-8,
// JSON), replies that never throw (one too large for the server becomes a small
// `payload_too_large` reply), and error replies (JSON body plus the NATS services error
// headers) in both directions.
import { readFileSync } from "node:fs"
import { createServer } from "node:net"
import { connect, credsAuthenticator, headers, type NatsConnection, nkeyAuthenticator } from "@nats-io/transport-node"
import type { Msg } from "@nats-io/nats-core"
import { Effect } from "effect"
import { type ErrorCode, errorStatus, leoamError, type LeoamError } from "../protocol/errors.ts"

/** Largest request body a public endpoint accepts (the server's max_payload is larger). */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024
export const SERVER_MAX_PAYLOAD = 8 * 1024 * 1024
/**
 * Deepest nesting of arrays and objects a request may have. Every leoam message is a few
 * levels deep; deeper input is refused before JSON.parse because the schema decoders and
 * their error formatter recurse over the value (5000 levels overflowed the stack).
 */
export const MAX_JSON_DEPTH = 32

/** A nats-server started by startEmbeddedNats (actors/nats-server.ts, the one way to start one). */
export interface EmbeddedNats {
  readonly url: string
  readonly port: number
  stop(): Promise<void>
}

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port
      srv.close(() => resolve(port))
    })
  })

/** How a connection authenticates: user and password, a creds file (JWT + seed), or an nkey seed file. */
export interface NatsAuth {
  readonly user?: string
  readonly pass?: string
  readonly credsFile?: string
  readonly nkeySeedFile?: string
}

const authOptions = (auth: NatsAuth | undefined) => {
  if (!auth) return {}
  const read = (file: string, what: string) => {
    try {
      return readFileSync(file)
    } catch (e) {
      throw leoamError("actor_unavailable", `cannot read the NATS ${what} file ${file}: ${(e as Error).message}`)
    }
  }
  if (auth.credsFile) return { authenticator: credsAuthenticator(read(auth.credsFile, "creds")) }
  if (auth.nkeySeedFile) return { authenticator: nkeyAuthenticator(new TextEncoder().encode(read(auth.nkeySeedFile, "nkey seed").toString("utf8").trim())) }
  return { ...(auth.user !== undefined ? { user: auth.user } : {}), ...(auth.pass !== undefined ? { pass: auth.pass } : {}) }
}

export const connectNats = (url: string, name: string, auth?: NatsAuth, inboxPrefix?: string): Promise<NatsConnection> =>
  connect({ servers: url, name, maxReconnectAttempts: -1, ...authOptions(auth), ...(inboxPrefix !== undefined ? { inboxPrefix } : {}) })

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

export const encodeJson = (value: unknown): Uint8Array => encoder.encode(JSON.stringify(value))

/**
 * The deepest nesting of `[` and `{` outside strings, stopping once it passes `limit`.
 * A loop over the bytes (no recursion, no allocation), so any body is scanned in one pass.
 */
export const jsonDepth = (data: Uint8Array, limit = Infinity): number => {
  let depth = 0
  let max = 0
  let inString = false
  for (let i = 0; i < data.length; i++) {
    const c = data[i]
    if (inString) {
      if (c === 0x5c) i++ // a backslash escapes the next byte (a quote or another backslash)
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max && (max = depth) > limit) return max
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return max
}

/** Parses a request body: empty -> {}, else strict UTF-8 JSON nested at most MAX_JSON_DEPTH deep. */
export const parseBody = (data: Uint8Array): unknown => {
  if (data.length > MAX_REQUEST_BYTES) {
    throw leoamError("payload_too_large", `the request is ${data.length} bytes; at most ${MAX_REQUEST_BYTES} are accepted`)
  }
  if (data.length === 0) return {}
  if (jsonDepth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
    throw leoamError("invalid_request", `the request nests arrays or objects more than ${MAX_JSON_DEPTH} deep; no leoam message needs more than a few levels`)
  }
  let text: string
  try {
    text = decoder.decode(data)
  } catch {
    throw leoamError("invalid_json", "the request is not valid UTF-8")
  }
  try {
    return JSON.parse(text)
  } catch (e) {
    throw leoamError("invalid_json", `the request is not JSON: ${(e as Error).message}`)
  }
}

type Respondable = Pick<Msg, "reply" | "respond">
type RespondOptions = Parameters<Msg["respond"]>[1]

const errorReply = (error: LeoamError) => {
  const h = headers()
  h.set("Nats-Service-Error-Code", String(errorStatus[error.code]))
  h.set("Nats-Service-Error", `${error.code}: ${error.message}`.slice(0, 1000).replace(/[\r\n]+/g, " "))
  return { body: encodeJson({ error: { code: error.code, message: error.message } }), headers: h }
}

/**
 * Sends a reply and never throws: a reply the server would refuse (over its max_payload,
 * which the client checks before sending) becomes a small `payload_too_large` error reply;
 * any other failure to send (a closed connection) a small `internal` one, if it can still go.
 * A handler's caller may therefore reply from anywhere, a fiber or a NATS callback.
 */
export const respondSafely = (msg: Respondable, data: Uint8Array, opts?: RespondOptions): boolean => {
  if (!msg.reply) return false
  try {
    return msg.respond(data, opts)
  } catch (e) {
    const reason = (e as Error)?.message ?? String(e)
    const fallback = /max_payload/i.test(reason)
      ? leoamError("payload_too_large", `the reply is ${data.length} bytes, more than this NATS server carries in one message (${reason}); ask for less`)
      : leoamError("internal", `the reply could not be sent: ${reason}`)
    const { body, headers: h } = errorReply(fallback)
    try {
      msg.respond(body, { headers: h })
    } catch {
      // The connection itself is gone: nobody is left to tell.
    }
    return false
  }
}

/** A JSON reply that never throws (see respondSafely). */
export const respondJson = (msg: Respondable, value: unknown): boolean => respondSafely(msg, encodeJson(value))

/**
 * Replies with an error: JSON body plus the NATS services error headers (the same headers
 * the services API's respondError sets, so internal subjects carry them too). Never throws.
 */
export const respondError = (msg: Respondable, error: LeoamError): void => {
  const { body, headers: h } = errorReply(error)
  respondSafely(msg, body, { headers: h })
}

/** An error reply (services headers + JSON body) as a LeoamError; undefined for a value reply. */
export const errorOf = (m: Msg): LeoamError | undefined => {
  const code = m.headers?.get("Nats-Service-Error-Code")
  if (!code) return undefined
  let body: { error?: { code?: string; message?: string } } = {}
  try {
    body = m.json()
  } catch {
    // the header alone
  }
  const c = body.error?.code && body.error.code in errorStatus ? (body.error.code as ErrorCode) : "internal"
  return leoamError(c, body.error?.message ?? m.headers?.get("Nats-Service-Error") ?? "the actor failed")
}

/** One request: the reply message, an error reply as its LeoamError, or no answer as actor_unavailable. */
export const request = (nc: NatsConnection, subject: string, data: Uint8Array, timeoutMs: number): Effect.Effect<Msg, LeoamError> =>
  Effect.tryPromise({
    try: () => nc.request(subject, data, { timeout: timeoutMs }),
    catch: (e) => {
      const message = (e as Error)?.message ?? String(e)
      if (/permissions violation/i.test(message)) return leoamError("permission_denied", `${message}: this NATS user may not use ${subject}`)
      return leoamError("actor_unavailable", `no answer on ${subject}: ${message}`)
    },
  }).pipe(
    Effect.flatMap((reply) => {
      const failure = errorOf(reply)
      return failure ? Effect.fail(failure) : Effect.succeed(reply)
    }),
  )
