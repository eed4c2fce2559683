// `leoam request SUBJECT [JSON]`: one request/reply against a leoam service, for people
// and scripts (any NATS client does the same). Error replies print the code and exit 1;
// nothing subscribed to the subject is `no_responders` (at once), no reply in time `timeout`.
// With --stream, a generate's token events come to a fresh subject in this user's own space
// (its inbox prefix) and are printed as JSON lines before the reply.
import { createInbox, NoRespondersError, RequestError } from "@nats-io/nats-core"
import { type ClientAuth, connectClient, inboxOf } from "./connect.ts"
import { CliError, noRespondersError } from "./errors.ts"

/** NATS answered at once that no subscriber has the subject (the server's 503 no-responders status), as opposed to a timeout. */
const noResponders = (e: unknown): boolean =>
  (e instanceof RequestError && e.isNoResponders()) || e instanceof NoRespondersError || (e as { cause?: unknown })?.cause instanceof NoRespondersError

export const runRequest = async (o: { subject: string; body: string; natsUrl: string; auth: ClientAuth; timeoutMs: number; stream?: boolean }) => {
  let body = o.body
  const streamSubject = o.stream ? createInbox(inboxOf(o.auth) ?? "_INBOX") : undefined
  if (streamSubject !== undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(o.body === "" ? "{}" : o.body)
    } catch (e) {
      throw new CliError("invalid_json", `--stream needs a JSON object body: ${(e as Error).message}`)
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new CliError("invalid_request", "--stream needs a JSON object body")
    body = JSON.stringify({ ...parsed, stream: streamSubject })
  }
  const nc = await connectClient(o.natsUrl, "leoam-request", o.auth).catch((e) => {
    if (e instanceof CliError) throw e
    throw new CliError("actor_unavailable", `cannot connect to ${o.natsUrl}: ${(e as Error).message}`)
  })
  try {
    if (streamSubject !== undefined) {
      nc.subscribe(streamSubject, {
        callback: (_e, m) => {
          process.stdout.write(new TextDecoder().decode(m.data) + "\n")
        },
      })
      await nc.flush()
    }
    const reply = await nc.request(o.subject, new TextEncoder().encode(body), { timeout: o.timeoutMs }).catch((e) => {
      if (/Permissions Violation/i.test(String((e as Error).message)) || /Permissions Violation/i.test(String((e as { cause?: Error }).cause?.message))) {
        throw new CliError("permission_denied", `${o.subject}: ${(e as Error).message}`)
      }
      if (noResponders(e)) {
        throw noRespondersError(o.subject, o.natsUrl)
      }
      throw new CliError("timeout", `no reply on ${o.subject} within ${o.timeoutMs} ms: ${(e as Error).message}`)
    })
    const text = new TextDecoder().decode(reply.data)
    const code = reply.headers?.get("Nats-Service-Error-Code")
    if (code) {
      let body: { error?: { code?: string; message?: string } } = {}
      try {
        body = JSON.parse(text)
      } catch {
        // header only
      }
      throw new CliError(body.error?.code ?? "internal", body.error?.message ?? reply.headers?.get("Nats-Service-Error") ?? text)
    }
    process.stdout.write(text + "\n")
  } finally {
    await nc.close()
  }
}
