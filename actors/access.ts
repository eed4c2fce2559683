// Access control of the embedded NATS server. The users file (`leoam serve --users FILE`)
// names client and admin users (password, bcrypt hash or nkey). The generated server
// config has three accounts:
//   LEOAM:   the node's own connection only (all subjects); it exports the public services,
//            the internal ones (to ADMIN only), the token streams and each client's inbox.
//   CLIENTS: the client users. They import the public services with `share: true`, so each
//            request carries the server-set Nats-Request-Info header naming the user, and may
//            publish only requests (never admin, internal or stream subjects) and subscribe
//            only to their own space: `_INBOX_<token>.>` (their inbox prefix, see
//            inboxPrefixOf) and `leoam.v1.stream.<token>.>`. A `stream` outside that space
//            is refused (streamAllowed, called by the scheduler with the header's user).
//   ADMIN:   the admin users, who import every leoam.v1.* and leoam.int.v1.* service (admin
//            subjects included) with `share: true`: that name goes into the policy history.
// Users get "Permissions Violation" from the server on denied subjects.
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { Effect, Schema } from "effect"
import { leoamError, type LeoamError } from "../protocol/errors.ts"
import { firstIssue } from "../protocol/schema-errors.ts"
import { ADMIN_PREFIX, INTERNAL_PREFIX, PUBLIC_PREFIX } from "../protocol/subjects.ts"

const Name = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_.@-]{1,128}$/))

export const UserEntry = Schema.Struct({
  /** User name and password (plain, or a bcrypt hash "$2a$..." as nats-server accepts). */
  user: Schema.optional(Name),
  password: Schema.optional(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(1024))),
  /** Or a public user nkey ("U..."); the client signs with its seed. */
  nkey: Schema.optional(Schema.String.pipe(Schema.pattern(/^U[A-Z2-7]{55}$/))),
  role: Schema.Literal("client", "admin"),
}).annotations({ parseOptions: { onExcessProperty: "error" } })
export type UserEntry = typeof UserEntry.Type

export const UsersFile = Schema.Struct({ users: Schema.Array(UserEntry).pipe(Schema.minItems(1)) }).annotations({
  identifier: "UsersFile",
  parseOptions: { onExcessProperty: "error" },
})
export type UsersFile = typeof UsersFile.Type

export class UsersFileError extends Error {
  readonly code = "invalid_argument"
}

/** The node's own user in the LEOAM account (a fresh password each start). */
export const NODE_USER = "leoam-node"

/** Reads and checks a users file: every entry has user + password or an nkey, names unique. */
export const loadUsers = (file: string): UsersFile => {
  let json: unknown
  try {
    json = JSON.parse(readFileSync(file, "utf8"))
  } catch (e) {
    throw new UsersFileError(`--users ${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : `not JSON: ${(e as Error).message}`}`)
  }
  const result = Schema.decodeUnknownEither(UsersFile, { errors: "all", onExcessProperty: "error" })(json)
  if (result._tag === "Left") throw new UsersFileError(`--users ${file}: ${firstIssue(result.left)}`)
  const seen = new Set<string>()
  result.right.users.forEach((u, i) => {
    const byName = u.user !== undefined && u.password !== undefined
    if (byName === (u.nkey !== undefined) || (u.user === undefined) !== (u.password === undefined)) {
      throw new UsersFileError(`--users ${file}: users[${i}] needs either "user" and "password" or "nkey"`)
    }
    const id = u.user ?? u.nkey!
    if (id === NODE_USER) throw new UsersFileError(`--users ${file}: users[${i}]: "${NODE_USER}" is reserved for the node itself`)
    if (seen.has(id)) throw new UsersFileError(`--users ${file}: users[${i}]: "${id}" appears twice`)
    seen.add(id)
  })
  return result.right
}

/** Token streams: a client user's are under `leoam.v1.stream.<token>.`. */
export const STREAM_PREFIX = `${PUBLIC_PREFIX}stream.`
export const CLIENTS_ACCOUNT = "CLIENTS"

/**
 * A user's name as one NATS subject token: as it is without a dot, else `~` and the hex of
 * its UTF-8 (user names never hold `~`, so the two forms cannot collide, and "a" cannot
 * cover "a.b"'s subjects).
 */
export const userToken = (user: string): string =>
  /^[A-Za-z0-9_@-]+$/.test(user) ? user : `~${Buffer.from(user, "utf8").toString("hex")}`

/** The inbox prefix a client user must connect with (nats.js `inboxPrefix`). */
export const inboxPrefixOf = (user: string): string => `_INBOX_${userToken(user)}`

/** The stream subjects a client user may subscribe to, and name as `stream`: this prefix then any tokens. */
export const streamPrefixOf = (user: string): string => `${STREAM_PREFIX}${userToken(user)}.`

/**
 * Whether a generate's `stream` may publish to `subject` for this requester. A client user
 * (account CLIENTS) only into its own space: its inbox or its stream subjects. Anyone else
 * (an admin, or no access control) anywhere but the actors' and admin subjects and `$`.
 */
export const streamAllowed = (who: { readonly user: string; readonly account?: string }, subject: string): boolean => {
  if (who.account === CLIENTS_ACCOUNT) {
    return subject.startsWith(`${inboxPrefixOf(who.user)}.`) || subject.startsWith(streamPrefixOf(who.user))
  }
  return subject.startsWith(STREAM_PREFIX) || !(subject.startsWith("leoam.") || subject.startsWith("$"))
}

/**
 * The scheduler's check of a generate's `stream` against the requester the server names in
 * Nats-Request-Info: undefined when allowed, else the `invalid_request` failure to answer.
 */
export const refuseStream = (headers: { get(k: string): string } | undefined, stream: string | undefined): Effect.Effect<never, LeoamError> | undefined => {
  if (stream === undefined) return undefined
  const who = requesterOf(headers)
  return streamAllowed(who, stream) ? undefined : Effect.fail(leoamError("invalid_request", streamRefusal(who, stream)))
}

/** The refusal message of a stream that streamAllowed refuses. */
export const streamRefusal = (who: { readonly user: string; readonly account?: string }, subject: string): string =>
  who.account === CLIENTS_ACCOUNT
    ? `stream subject "${subject}" is not yours: use ${inboxPrefixOf(who.user)}.* or ${streamPrefixOf(who.user)}*`
    : `stream subject "${subject}" is reserved: use _INBOX.*, ${STREAM_PREFIX}* or a subject outside leoam.* and $*`

const q = (s: string) => JSON.stringify(s)

const clientPermissions = (u: UserEntry): string => {
  const id = u.user ?? u.nkey!
  return `{ publish: { allow: [${q(`${PUBLIC_PREFIX}>`)}, "$SRV.>"], deny: [${q(`${ADMIN_PREFIX}>`)}, ${q(`${STREAM_PREFIX}>`)}, ${q(`${INTERNAL_PREFIX}>`)}] }, subscribe: { allow: [${q(`${inboxPrefixOf(id)}.>`)}, ${q(`${streamPrefixOf(id)}>`)}] } }`
}

const userLine = (u: UserEntry, permissions?: string) => {
  const who = u.nkey !== undefined ? `nkey: ${q(u.nkey)}` : `user: ${q(u.user!)}, password: ${q(u.password!)}`
  return `      { ${who}${permissions ? `, permissions: ${permissions}` : ""} }`
}

/** The accounts block of the embedded server's config, and the node's own credentials. */
export const accountsConfig = (users: UsersFile): { readonly config: string; readonly node: { readonly user: string; readonly pass: string } } => {
  const node = { user: NODE_USER, pass: randomBytes(24).toString("base64url") }
  const clients = users.users.filter((u) => u.role === "client")
  const admins = users.users.filter((u) => u.role === "admin")
  const inboxes = clients.map((u) => `${inboxPrefixOf(u.user ?? u.nkey!)}.>`)
  const config = `accounts {
  LEOAM: {
    users: [
      { user: ${q(node.user)}, password: ${q(node.pass)} }
    ]
    exports: [
      { service: ${q(`${PUBLIC_PREFIX}>`)} }
      { service: ${q(`${INTERNAL_PREFIX}>`)}, accounts: [ADMIN] }
      { service: "$SRV.>" }
      { stream: ${q(`${STREAM_PREFIX}>`)} }
${inboxes.map((inbox) => `      { stream: ${q(inbox)}, accounts: [${CLIENTS_ACCOUNT}] }`).join("\n")}
    ]
  }
  ${CLIENTS_ACCOUNT}: {
    users: [
${clients.map((u) => userLine(u, clientPermissions(u))).join("\n")}
    ]
    imports: [
      { service: { account: LEOAM, subject: ${q(`${PUBLIC_PREFIX}>`)} }, share: true }
      { service: { account: LEOAM, subject: "$SRV.>" } }
      { stream: { account: LEOAM, subject: ${q(`${STREAM_PREFIX}>`)} } }
${inboxes.map((inbox) => `      { stream: { account: LEOAM, subject: ${q(inbox)} } }`).join("\n")}
    ]
  }
  ADMIN: {
    users: [
${admins.map((u) => userLine(u)).join("\n")}
    ]
    imports: [
      { service: { account: LEOAM, subject: ${q(`${PUBLIC_PREFIX}>`)} }, share: true }
      { service: { account: LEOAM, subject: ${q(`${INTERNAL_PREFIX}>`)} }, share: true }
      { service: { account: LEOAM, subject: "$SRV.>" } }
      { stream: { account: LEOAM, subject: ${q(`${STREAM_PREFIX}>`)} } }
    ]
  }
}
`
  return { config, node }
}

/**
 * Who sent a request: the user the server names in Nats-Request-Info (requests that crossed
 * from the ADMIN account), else "anonymous" (no access control, or the node's own account).
 */
export const requesterOf = (headers: { get(k: string): string } | undefined): { readonly user: string; readonly account?: string } => {
  const info = headers?.get("Nats-Request-Info")
  if (!info) return { user: "anonymous" }
  try {
    const parsed = JSON.parse(info) as { user?: unknown; acc?: unknown }
    return { user: typeof parsed.user === "string" && parsed.user ? parsed.user : "anonymous", ...(typeof parsed.acc === "string" ? { account: parsed.acc } : {}) }
  } catch {
    return { user: "anonymous" }
  }
}
