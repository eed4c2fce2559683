// A real nats-server on a free loopback port and one connection to it, as a layer: tests
// that exercise actors share it (`layer(NatsTest.layer, { excludeTestServices: true })`),
// and the server stops when the layer's scope closes (and dies with the worker: startEmbeddedNats).
import type { NatsConnection } from "@nats-io/nats-core"
import { Context, Effect, Layer } from "effect"
import { connectNats } from "../../actors/nats.ts"
import { startEmbeddedNats } from "../../actors/nats-server.ts"

export class NatsTest extends Context.Tag("leoam/test/Nats")<NatsTest, { readonly url: string; readonly nc: NatsConnection }>() {
  static readonly layer = Layer.scoped(
    NatsTest,
    Effect.gen(function* () {
      const server = yield* Effect.acquireRelease(
        Effect.promise(() => startEmbeddedNats()),
        (s) => Effect.promise(() => s.stop()),
      )
      const nc = yield* Effect.acquireRelease(
        Effect.promise(() => connectNats(server.url, "test")),
        (c) => Effect.promise(() => c.close()),
      )
      return { url: server.url, nc }
    }),
  )
}

const enc = new TextEncoder()

/** A raw JSON request; an error reply comes back as its body ({ error: { code, message } }). */
export const call = (nc: NatsConnection, subject: string, body: unknown) =>
  Effect.promise(async () => {
    const m = await nc.request(subject, enc.encode(JSON.stringify(body)), { timeout: 10_000 })
    return m.json<any>()
  })
