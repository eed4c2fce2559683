// The messages of the session subjects (leoam.v1.session.*), one Effect Schema each, and the
// session id. A session is a document prefilled once into the tiered KV cache (chunks and
// abstracts on disk, in LMDB), then asked many times; it belongs to the NATS user who opened
// it and lives on the node that prefilled it (the node's id starts the session id).
import { Schema } from "effect"
import { GenerateReply, GenerateRequest } from "./messages.ts"

const strict = { parseOptions: { onExcessProperty: "error" } } as const
const TokenId = Schema.Int.pipe(Schema.between(0, 2 ** 31 - 1))

/**
 * A session id: `<node>.<id>` on a node with an id (`a.KxP3...`), or `<id>` alone; the id is
 * 16-32 letters and digits (a NUID). The node part routes requests to the node that holds it.
 */
export const SESSION_ID = /^(?:([A-Za-z0-9_-]{1,64})\.)?([A-Za-z0-9]{16,32})$/
export const SessionId = Schema.String.pipe(
  Schema.pattern(SESSION_ID, { message: (i) => `${JSON.stringify(i.actual)} is not a session id (from leoam.v1.session.open)` }),
).annotations({ description: "a session id as leoam.v1.session.open answered it: [<node>.]<16-32 letters and digits>" })

/** The node a session id names (undefined: a node without an id). */
export const nodeOfSession = (id: string): string | undefined => SESSION_ID.exec(id)?.[1]

const text = Schema.String.pipe(Schema.maxLength(4 * 1024 * 1024))
const ids = Schema.Array(TokenId).pipe(Schema.minItems(1), Schema.maxItems(1 << 20))
const model = Schema.String.pipe(Schema.maxLength(256))

/** leoam.v1.session.open: the document, as text or ids (exactly one). */
export const SessionOpenRequest = Schema.Struct({
  prompt: Schema.optional(text),
  ids: Schema.optional(ids),
  model: Schema.optional(model),
}).annotations({ identifier: "SessionOpenRequest", ...strict })
export type SessionOpenRequest = typeof SessionOpenRequest.Type

/** The subjects that reach the node holding a session directly (the public ones route there too). */
export const SessionSubjects = Schema.Struct({
  append: Schema.String,
  generate: Schema.String,
  close: Schema.String,
  delete: Schema.String,
})

/** open and append answer the session, its length in tokens, and where it lives. */
export const SessionReply = Schema.Struct({
  session: Schema.String,
  tokens: Schema.Int,
  /** The node id holding it ("" for a node without an id). */
  node: Schema.String,
  subjects: SessionSubjects,
  /** Prefill of what this request added. */
  prefill_ms: Schema.Number,
  /** open: the leading tokens whose chunks the new session shares with a stored session or a running request (not prefilled, not written again). */
  shared_tokens: Schema.optional(Schema.Int),
}).annotations({ identifier: "SessionReply" })
export type SessionReply = typeof SessionReply.Type

/** leoam.v1.session.append: more of the document, as text or ids (exactly one). */
export const SessionAppendRequest = Schema.Struct({
  session: SessionId,
  prompt: Schema.optional(text),
  ids: Schema.optional(ids),
}).annotations({ identifier: "SessionAppendRequest", ...strict })
export type SessionAppendRequest = typeof SessionAppendRequest.Type

/**
 * leoam.v1.session.generate: generate's fields (the question as `prompt` or `ids`, appended
 * after the document), the session, and `append`: keep the question and the answer in the
 * session (default false: the session is unchanged).
 */
export const SessionGenerateRequest = Schema.Struct({
  ...GenerateRequest.fields,
  session: SessionId,
  append: Schema.optional(Schema.Boolean),
}).annotations({ identifier: "SessionGenerateRequest", ...strict })
export type SessionGenerateRequest = typeof SessionGenerateRequest.Type

/**
 * What session.generate answers: exactly generate's reply for the document followed by the
 * question; with `append: true` also `session`, its length now.
 */
export const SessionGenerateReply = Schema.Struct({
  ...GenerateReply.fields,
  session: Schema.optional(Schema.Struct({ session: Schema.String, tokens: Schema.Int })),
}).annotations({ identifier: "SessionGenerateReply" })
export type SessionGenerateReply = typeof SessionGenerateReply.Type

/** close and delete name one session. */
export const SessionRef = Schema.Struct({ session: SessionId }).annotations({ identifier: "SessionRef", ...strict })
export type SessionRef = typeof SessionRef.Type

export const SessionDone = Schema.Struct({ session: Schema.String, closed: Schema.optional(Schema.Boolean), deleted: Schema.optional(Schema.Boolean) }).annotations({
  identifier: "SessionDone",
})
export type SessionDone = typeof SessionDone.Type

/** One session as list shows it. */
export const SessionInfo = Schema.Struct({
  session: Schema.String,
  tokens: Schema.Int,
  model: Schema.String,
  node: Schema.String,
  created: Schema.String,
  last_used: Schema.String,
  /** Whether the node holds it in memory (host arena) as well as on disk. */
  open: Schema.Boolean,
  bytes: Schema.Struct({ gpu: Schema.Number, host: Schema.Number, disk: Schema.Number }),
}).annotations({ identifier: "SessionInfo" })
export type SessionInfo = typeof SessionInfo.Type

export const SessionListReply = Schema.Struct({
  sessions: Schema.Array(SessionInfo),
  /** The nodes that answered (a node that did not is missing its sessions). */
  nodes: Schema.Array(Schema.String),
}).annotations({ identifier: "SessionListReply" })
export type SessionListReply = typeof SessionListReply.Type
