// The scheduler's side of persistent sessions (leoam.v1.session.*). Two stages:
//   front:   every public session subject (and this node's own, leoam.v1.node.<id>.session.*)
//            is answered beside the mailbox: it names the requester (Nats-Request-Info) and
//            sends the request to the scheduler of the node holding the session (the node
//            its id names; this one for open) on that node's internal forward subject, which
//            clients cannot reach, then relays the answer. list gathers every node's sessions.
//   forward: the holding node's mailbox endpoint: validates and tokenizes (admission), then
//            runs it on its gpu-executor after the requests before it (FIFO, `busy` past the bound).
// A session belongs to the user who opened it: any other user gets session_not_found.
import type { Msg, MsgHdrs, NatsConnection } from "@nats-io/nats-core"
import { nuid } from "@nats-io/nuid"
import { Effect, Schema } from "effect"
import { type LeoamError, leoamError } from "../protocol/errors.ts"
import { type ModelDescription, type RunSession, SessionForward, SessionNodeList } from "../protocol/internal.ts"
import { EmptyRequest, type GenerateReply } from "../protocol/messages.ts"
import {
  nodeOfSession,
  SESSION_ID,
  SessionAppendRequest,
  SessionGenerateRequest,
  SessionOpenRequest,
  SessionRef,
  type SessionListReply,
  type SessionReply,
} from "../protocol/session.ts"
import { internalSubjects, NODE_PREFIX, nodeSessionSubject, PUBLIC_PREFIX, sessionSubjects, type SessionOp } from "../protocol/subjects.ts"
import type { Source } from "./actor.ts"
import { requesterOf } from "./access.ts"
import { askRun } from "./liveness.ts"
import { encodeJson, request } from "./nats.ts"
import { ask, decodeRequest } from "./rpc.ts"
import type { Admitted } from "./scheduler.ts"

/** How long the front waits for the holding node (a run there is watched by its own liveness). */
const FORWARD_TIMEOUT_MS = 10 * 60_000
/** A list waits this long after the last node's answer for another. */
const LIST_STALL_MS = 150

export interface SessionDeps {
  readonly nc: NatsConnection
  readonly node: string | undefined
  readonly model: () => ModelDescription
  /** The scheduler's admission of a generate request (`headers` name the requester). */
  readonly admitGenerate: (body: unknown, headers?: MsgHdrs) => Effect.Effect<Admitted, LeoamError>
  readonly encode: (text: string) => Effect.Effect<ReadonlyArray<number>, LeoamError>
  readonly generate: (admitted: Admitted, receivedAt: number) => Effect.Effect<GenerateReply, LeoamError>
  readonly runSilenceMs?: number
  /** --session-quota: sessions one user may hold over all nodes (absent: no limit). */
  readonly quota?: number
}

/** A session request admitted on the holding node. */
export type SessionAdmitted =
  | { readonly op: "generate"; readonly admitted: Admitted }
  | { readonly op: "open" | "append"; readonly session: RunSession; readonly ids: ReadonlyArray<number> }
  | { readonly op: "close" | "delete"; readonly id: string; readonly owner: string }

/** Headers that name the forwarded requester to the scheduler's admission (the stream check). */
const requesterHeaders = (user: string, account: string | undefined): MsgHdrs =>
  ({ get: (k: string) => (k === "Nats-Request-Info" ? JSON.stringify({ user, ...(account ? { acc: account } : {}) }) : "") }) as unknown as MsgHdrs

export const sessionHandlers = (deps: SessionDeps) => {
  const { nc } = deps
  const forwardSubject = (node: string | undefined) => (node === undefined || node === deps.node ? internalSubjects.sessionForward : `${NODE_PREFIX}${node}.session.forward`)

  /** What the tokenizer's post-processor puts before any text (a BOS), found once. */
  let lead: ReadonlyArray<number> | undefined
  /** A text that continues a session (append, a question) is tokenized without that lead: no BOS mid-sequence. */
  const continuing = (ids: ReadonlyArray<number>) =>
    Effect.map(lead ? Effect.succeed(lead) : Effect.tap(deps.encode(""), (l) => Effect.sync(() => (lead = l))), (l) =>
      l.length > 0 && l.every((id, i) => ids[i] === id) ? ids.slice(l.length) : ids,
    )

  /** The ids of a prompt: exactly one of text and ids, in the vocabulary; `continues` a session: without the tokenizer's lead. */
  const idsOf = (req: { readonly prompt?: string; readonly ids?: ReadonlyArray<number> }, continues = false) =>
    Effect.gen(function* () {
      if ((req.prompt === undefined) === (req.ids === undefined)) return yield* leoamError("invalid_request", "give exactly one of `prompt` and `ids`")
      const encoded = req.prompt !== undefined ? yield* deps.encode(req.prompt) : req.ids!
      const ids = req.prompt !== undefined && continues ? yield* continuing(encoded) : encoded
      if (ids.length === 0) return yield* leoamError("invalid_request", "the prompt is empty")
      const m = deps.model()
      const bad = ids.find((id) => id >= m.vocab_size)
      if (bad !== undefined) return yield* leoamError("invalid_ids", `token id ${bad} is outside the vocabulary (0..${m.vocab_size - 1})`)
      return ids
    })

  /** Room for `more` tokens after `tokens`, with `least` new ones: else context_overflow. */
  const fits = (tokens: number, more: number, least: number) => {
    const context = deps.model().context_length
    return tokens + more + least > context
      ? Effect.fail(leoamError("context_overflow", `the session has ${tokens} tokens and the request ${more}; the context holds ${context}${least > 0 ? ` (with at least ${least} new)` : ""}`))
      : Effect.void
  }

  const info = (session: string, owner: string) => ask(nc, "executorSessionInfo", { session, owner })

  /** Admission on the holding node: checks, tokenizes, and looks the session up before it takes a mailbox place. */
  const admit = Effect.fn("Sessions.admit")(function* (body: unknown) {
    const fwd = yield* decodeRequest(SessionForward, body)
    const owner = fwd.user
    switch (fwd.op) {
      case "open": {
        const req = yield* decodeRequest(SessionOpenRequest, fwd.body)
        const m = deps.model()
        if (req.model !== undefined && req.model !== m.name) return yield* leoamError("unknown_model", `no model "${req.model}"; this server has "${m.name}"`)
        const ids = yield* idsOf(req)
        yield* fits(0, ids.length, 1)
        const id = deps.node === undefined ? nuid.next() : `${deps.node}.${nuid.next()}`
        return { op: "open", session: { id, op: "open", owner, keep: true }, ids } satisfies SessionAdmitted
      }
      case "append": {
        const req = yield* decodeRequest(SessionAppendRequest, fwd.body)
        const ids = yield* idsOf(req, true)
        const held = yield* info(req.session, owner)
        yield* fits(held.tokens, ids.length, 1)
        return { op: "append", session: { id: req.session, op: "append", owner, keep: true }, ids } satisfies SessionAdmitted
      }
      case "generate": {
        const req = yield* decodeRequest(SessionGenerateRequest, fwd.body)
        const { session, append, ...rest } = req
        const admission = yield* deps.admitGenerate(rest, requesterHeaders(owner, fwd.account))
        const admitted = rest.prompt === undefined ? admission : { ...admission, ids: yield* continuing(admission.ids) }
        if (admitted.ids.length === 0) return yield* leoamError("invalid_request", "the question is empty")
        const held = yield* info(session, owner)
        const total = held.tokens + admitted.ids.length
        const room = deps.model().context_length - total
        if (room < 1) return yield* leoamError("context_overflow", `the session has ${held.tokens} tokens and the question ${admitted.ids.length}; the context holds ${deps.model().context_length} (with at least one new token)`)
        if (rest.max_tokens !== undefined && rest.max_tokens > room) {
          return yield* leoamError("context_overflow", `max_tokens ${rest.max_tokens} does not fit: the session and the question have ${total} tokens of a ${deps.model().context_length}-token context`)
        }
        const maxTokens = rest.max_tokens ?? Math.min(admitted.maxTokens, room)
        const run: RunSession = { id: session, op: "generate", owner, keep: append === true }
        return { op: "generate", admitted: { ...admitted, maxTokens, session: run } } satisfies SessionAdmitted
      }
      case "close":
      case "delete": {
        const { session } = yield* decodeRequest(SessionRef, fwd.body)
        return { op: fwd.op, id: session, owner } satisfies SessionAdmitted
      }
    }
  })

  const reply = (id: string, tokens: number, prefillMs: number, shared?: number): SessionReply => {
    const node = nodeOfSession(id)
    const subjects = { append: nodeSessionSubject(node, "append"), generate: nodeSessionSubject(node, "generate"), close: nodeSessionSubject(node, "close"), delete: nodeSessionSubject(node, "delete") }
    return { session: id, tokens, node: node ?? "", subjects, prefill_ms: prefillMs, ...(shared ? { shared_tokens: shared } : {}) }
  }

  /** Runs an admitted session request on this node's gpu-executor. */
  const handle = Effect.fn("Sessions.handle")(function* (a: SessionAdmitted, receivedAt: number) {
    switch (a.op) {
      case "generate": {
        const r = yield* deps.generate(a.admitted, receivedAt)
        const kept = a.admitted.session
        if (!kept?.keep) return r
        // The executor's count: with stop strings it kept the ids it generated up to the stop's detection.
        const held = yield* info(kept.id, kept.owner)
        return { ...r, session: { session: kept.id, tokens: held.tokens } }
      }
      case "open":
      case "append": {
        const runId = nuid.next()
        const result = yield* askRun(
          nc,
          { run_id: runId, ids: [...a.ids], max_tokens: 1, temperature: 0, top_p: 1, top_k: 0, seed: 0, stop_ids: [], tokens: `_INBOX.leoam.tokens.${runId}`, session: a.session },
          { onToken: () => undefined, silenceMs: deps.runSilenceMs },
        )
        return reply(a.session.id, result.session?.tokens ?? 0, result.prefill_ms, result.session?.shared_tokens)
      }
      case "close": {
        const held = yield* ask(nc, "executorSessionClose", { session: a.id, owner: a.owner }, FORWARD_TIMEOUT_MS)
        return { session: held.session, closed: true }
      }
      case "delete": {
        yield* ask(nc, "executorSessionDelete", { session: a.id, owner: a.owner }, FORWARD_TIMEOUT_MS)
        return { session: a.id, deleted: true }
      }
    }
  })

  /** Every node's sessions of the requester. */
  const list = Effect.fn("Sessions.list")(function* (owner: string) {
    const replies = yield* Effect.tryPromise({
      try: async () => {
        const out: Array<typeof SessionNodeList.Type> = []
        const it = await nc.requestMany(internalSubjects.sessionList, encodeJson({}), { strategy: "stall", stall: LIST_STALL_MS, maxWait: 5000 })
        for await (const m of it) {
          const decoded = Schema.decodeUnknownOption(SessionNodeList)(m.json<unknown>())
          if (decoded._tag === "Some") out.push(decoded.value)
        }
        return out
      },
      catch: (e) => leoamError("actor_unavailable", `no gpu-executor answered the session list: ${(e as Error).message}`),
    })
    const sessions = replies.flatMap((r) => r.sessions.filter((s) => s.owner === owner).map(({ owner: _, ...s }) => s))
    sessions.sort((x, y) => (x.created < y.created ? -1 : x.created > y.created ? 1 : 0))
    return { sessions, nodes: replies.map((r) => r.node).sort() } satisfies SessionListReply
  })

  /** A public (or node-scoped) session subject: routes to the holding node's forward subject and relays its answer. */
  const front = (op: SessionOp) =>
    Effect.fn("Sessions.front")(function* (body: unknown, msg: Msg) {
      const who = requesterOf(msg.headers)
      if (op === "list") {
        yield* decodeRequest(EmptyRequest, body)
        return yield* list(who.user)
      }
      // Counted over every node before the open goes to this node's queue (two opens at once may both pass).
      if (op === "open" && deps.quota !== undefined && (yield* list(who.user)).sessions.length >= deps.quota) {
        return yield* leoamError("session_quota", `user "${who.user}" holds ${deps.quota} sessions, the most --session-quota allows: delete one (leoam.v1.session.delete)`)
      }
      const id = typeof body === "object" && body !== null ? (body as { session?: unknown }).session : undefined
      // A malformed id is refused by the holder's schema; only a well-formed one names a node.
      const node = op === "open" || typeof id !== "string" || !SESSION_ID.test(id) ? deps.node : nodeOfSession(id)
      const subject = forwardSubject(node)
      const forward: SessionForward = { op, body, user: who.user, ...(who.account ? { account: who.account } : {}) }
      const m = yield* request(nc, subject, encodeJson(forward), FORWARD_TIMEOUT_MS).pipe(
        Effect.mapError((e) => (e.code === "actor_unavailable" && node !== deps.node ? leoamError("actor_unavailable", `node "${node}" holding this session does not answer: ${e.message}`) : e)),
      )
      return m.data.length > 0 ? m.json<unknown>() : {}
    })

  return { admit, handle, front }
}

/** A NATS services group (leoam.v1) to add endpoints to. */
interface EndpointGroup {
  addEndpoint(name: string, opts: { readonly subject: string; readonly handler: (err: Error | null, msg: Msg) => void }): unknown
}

/**
 * The session subjects as service endpoints of the `leoam.v1` group: the public ones (shared
 * by the nodes' queue group) and, on a node with an id, its own `node.<id>.session.*`.
 */
export const sessionSources = (group: EndpointGroup, node: string | undefined, hold?: (msg: Msg) => void): Array<{ op: SessionOp; source: Source }> =>
  (Object.keys(sessionSubjects) as SessionOp[]).flatMap((op) => {
    // Held in the node's lease from arrival to reply, as generate: a peer answers it if this node dies.
    const add = (name: string, subject: string): Source => (callback) =>
      void group.addEndpoint(name, { subject, handler: hold ? (err, msg) => (err || hold(msg), callback(err, msg)) : callback })
    const own = node === undefined || op === "list" ? [] : [{ op, source: add(`node-session-${op}`, nodeSessionSubject(node, op).slice(PUBLIC_PREFIX.length)) }]
    return [{ op, source: add(`session-${op}`, sessionSubjects[op].slice(PUBLIC_PREFIX.length)) }, ...own]
  })
