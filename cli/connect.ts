// How the CLI's client commands connect: the auth flags (user and password, a password file
// or LEOAM_NATS_PASS, a creds file, an nkey seed file) and the inbox prefix. Under the
// embedded server's access control a client user may subscribe only to its own inbox
// prefix (actors/access.ts, inboxPrefixOf), so a named user connects with it unless
// --inbox-prefix says otherwise; without a user the default `_INBOX` is kept.
import { readFileSync } from "node:fs"
import { connect, credsAuthenticator, nkeyAuthenticator, type NatsConnection } from "@nats-io/transport-node"
import { fromSeed } from "@nats-io/nkeys"
import { inboxPrefixOf } from "../actors/access.ts"
import { CliError } from "./errors.ts"

export interface ClientAuth {
  readonly user?: string
  readonly pass?: string
  readonly credsFile?: string
  readonly nkeySeedFile?: string
  /** Overrides the inbox prefix derived from the user. */
  readonly inboxPrefix?: string
}

const readFile = (file: string, what: string): string => {
  try {
    return readFileSync(file, "utf8")
  } catch (e) {
    throw new CliError("invalid_argument", `cannot read the ${what} ${file}: ${(e as Error).message}`)
  }
}

/**
 * The password of the flags: --nats-pass-file (its first line), else LEOAM_NATS_PASS, else
 * --nats-pass (visible to other local users in `ps`); several of them is an error.
 */
export const passwordOf = (o: { natsPass?: string; natsPassFile?: string }, env: NodeJS.ProcessEnv = process.env): string | undefined => {
  const given = [o.natsPass !== undefined, o.natsPassFile !== undefined].filter(Boolean).length
  if (given > 1) throw new CliError("invalid_argument", "give one of --nats-pass and --nats-pass-file")
  if (o.natsPassFile !== undefined) return readFile(o.natsPassFile, "password file").split(/\r?\n/)[0]
  return o.natsPass ?? (env.LEOAM_NATS_PASS || undefined)
}

/** The user a connection authenticates as: the name, or an nkey seed's public key. */
export const userOf = (auth: ClientAuth): string | undefined => {
  if (auth.user !== undefined) return auth.user
  if (auth.nkeySeedFile !== undefined) {
    try {
      return fromSeed(new TextEncoder().encode(readFile(auth.nkeySeedFile, "nkey seed file").trim())).getPublicKey()
    } catch (e) {
      if (e instanceof CliError) throw e
      throw new CliError("invalid_argument", `${auth.nkeySeedFile} does not hold an nkey seed: ${(e as Error).message}`)
    }
  }
  return undefined
}

/** The inbox prefix this user's replies come to. */
export const inboxOf = (auth: ClientAuth): string | undefined => {
  if (auth.inboxPrefix !== undefined) return auth.inboxPrefix
  const user = userOf(auth)
  return user === undefined ? undefined : inboxPrefixOf(user)
}

export const connectClient = (url: string, name: string, auth: ClientAuth): Promise<NatsConnection> => {
  const inboxPrefix = inboxOf(auth)
  const credentials = auth.credsFile
    ? { authenticator: credsAuthenticator(new TextEncoder().encode(readFile(auth.credsFile, "creds file"))) }
    : auth.nkeySeedFile
      ? { authenticator: nkeyAuthenticator(new TextEncoder().encode(readFile(auth.nkeySeedFile, "nkey seed file").trim())) }
      : { ...(auth.user !== undefined ? { user: auth.user } : {}), ...(auth.pass !== undefined ? { pass: auth.pass } : {}) }
  return connect({ servers: url, name, ...(inboxPrefix !== undefined ? { inboxPrefix } : {}), ...credentials })
}
