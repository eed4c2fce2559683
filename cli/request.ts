// `leoam request SUBJECT [JSON]`: one request/reply against a leoam service, for people
// and scripts (any NATS client does the same). Error replies print the code and exit 1.
import { connectNats, type NatsAuth } from "../actors/nats.ts"
import { CliError } from "./errors.ts"

export const runRequest = async (o: { subject: string; body: string; natsUrl: string; auth: NatsAuth; timeoutMs: number }) => {
  const nc = await connectNats(o.natsUrl, "leoam-request", o.auth).catch((e) => {
    throw new CliError("actor_unavailable", `cannot connect to ${o.natsUrl}: ${(e as Error).message}`)
  })
  try {
    const reply = await nc.request(o.subject, new TextEncoder().encode(o.body), { timeout: o.timeoutMs }).catch((e) => {
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
