// Typed internal RPC over the table protocol/internal.ts `internalRpc`: `ask` encodes a
// request and decodes the reply by the subject's schemas; `serve` makes an actor endpoint
// that decodes the request and encodes the reply by the same schemas. A request the schema
// refuses is `invalid_request`; a reply its own actor cannot encode is a bug (a defect:
// the actor restarts); a reply the asking side cannot decode is `internal`.
import type { Msg, NatsConnection } from "@nats-io/nats-core"
import { Cause, Effect, Exit, Schema } from "effect"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
import { internalRpc, type ReplyOf, type RequestOf, type RpcKey } from "../protocol/internal.ts"
import { firstIssue } from "../protocol/schema-errors.ts"
import type { Endpoint, Source } from "./actor.ts"
import { encodeJson, request } from "./nats.ts"

const short = (text: string) => (text.length > 400 ? `${text.slice(0, 397)}...` : text)

/** Decodes a request body: unknown fields and wrong types are `invalid_request`, with the path. */
export const decodeRequest = <A, I>(schema: Schema.Schema<A, I>, body: unknown): Effect.Effect<A, LeoamError> =>
  Schema.decodeUnknown(schema, { errors: "first", onExcessProperty: "error" })(body).pipe(
    Effect.mapError((e) => leoamError("invalid_request", short(firstIssue(e)))),
  )

/** Decodes a reply by its schema (fields it does not know are dropped). */
export const decodeReply = <A, I>(schema: Schema.Schema<A, I>, subject: string, reply: Msg): Effect.Effect<A, LeoamError> =>
  Effect.try({ try: () => reply.json<unknown>(), catch: () => leoamError("internal", `the reply on ${subject} is not JSON`) }).pipe(
    Effect.flatMap((json) => Schema.decodeUnknown(schema)(json)),
    Effect.mapError((e) => (e._tag === "LeoamError" ? e : leoamError("internal", short(`the reply on ${subject} does not match its schema: ${firstIssue(e)}`)))),
  )

/** One request to another actor, checked both ways. */
export const ask = <K extends RpcKey>(nc: NatsConnection, key: K, body: RequestOf<K>, timeoutMs = 10_000): Effect.Effect<ReplyOf<K>, LeoamError> => {
  const rpc = internalRpc[key]
  return Schema.encode(rpc.request as unknown as Schema.Schema<RequestOf<K>, unknown>)(body).pipe(
    Effect.orDie,
    Effect.flatMap((encoded) => request(nc, rpc.subject, encodeJson(encoded), timeoutMs)),
    Effect.flatMap((reply) => decodeReply(rpc.reply as unknown as Schema.Schema<ReplyOf<K>, unknown>, rpc.subject, reply)),
  )
}

/**
 * Publishes a message of the table without waiting for an answer (the policy broadcast, a
 * cancel). A send the client refuses (the connection closed or draining) is
 * `actor_unavailable`, never a defect: the caller decides whether it matters (a cancel is
 * best effort; a policy that was recorded but not announced is told to the admin).
 */
export const publish = <K extends RpcKey>(nc: NatsConnection, key: K, body: RequestOf<K>): Effect.Effect<void, LeoamError> => {
  const rpc = internalRpc[key]
  return Schema.encode(rpc.request as unknown as Schema.Schema<RequestOf<K>, unknown>)(body).pipe(
    Effect.orDie,
    Effect.flatMap((encoded) =>
      Effect.try({
        try: () => nc.publish(rpc.subject, encodeJson(encoded)),
        catch: (e) => leoamError("actor_unavailable", `could not publish on ${rpc.subject}: ${(e as Error)?.message ?? String(e)}`),
      }),
    ),
  )
}

/**
 * An actor endpoint for an internal subject: the handler gets the decoded request and its
 * reply is encoded by the table's schema. `source` overrides where messages come from
 * (a broadcast subject; default: the subject, in the actor's queue group).
 */
export const serve = <K extends RpcKey, S>(
  key: K,
  handle: (service: S, request: RequestOf<K>, msg: Msg) => Effect.Effect<ReplyOf<K>, LeoamError>,
  source?: Source,
): Endpoint<S> => {
  const rpc = internalRpc[key]
  return {
    source: source ?? rpc.subject,
    handler: (service, body, msg) =>
      decodeRequest(rpc.request as unknown as Schema.Schema<RequestOf<K>, unknown>, body).pipe(
        Effect.flatMap((req) => handle(service, req, msg)),
        Effect.flatMap((reply) => Schema.encode(rpc.reply as unknown as Schema.Schema<ReplyOf<K>, unknown>)(reply).pipe(Effect.orDie)),
      ),
  }
}

/** A public request whose reply is decoded by `schema` (the admin CLI, the metrics endpoint). */
export const askPublic = <A, I>(nc: NatsConnection, subject: string, schema: Schema.Schema<A, I>, body: unknown, timeoutMs = 10_000): Effect.Effect<A, LeoamError> =>
  request(nc, subject, encodeJson(body), timeoutMs).pipe(Effect.flatMap((reply) => decodeReply(schema, subject, reply)))

/** Runs a request from promise-land: rejects with the LeoamError itself (its `code` intact), or the defect. */
export const runRequest = async <A>(effect: Effect.Effect<A, LeoamError>): Promise<A> => {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/** Encodes a handler's reply by its public schema (a reply the schema refuses is a bug: a defect). */
export const replyBy =
  <A, I>(schema: Schema.Schema<A, I>) =>
  <E>(reply: Effect.Effect<A, E>): Effect.Effect<I, E> =>
    Effect.flatMap(reply, (value) => Effect.orDie(Schema.encode(schema)(value)))
