// A leoam node (the chosen actors, the bundled model, a temporary KV directory) on a real
// nats-server on a free loopback port, as a layer for `@effect/vitest`: started once for
// the tests that share it, drained and removed when the layer's scope closes.
import { Context, Effect, Layer } from "effect"
import { ask, startCluster, type TestCluster } from "./server.ts"

type Reply = Awaited<ReturnType<typeof ask>>

export interface ClusterService {
  readonly cluster: TestCluster
  /** A request whose reply is parsed as JSON (error replies as { error } with their header code). */
  readonly ask: (subject: string, body: unknown, timeoutMs?: number) => Effect.Effect<Reply>
}

export class ClusterTest extends Context.Tag("leoam/test/Cluster")<ClusterTest, ClusterService>() {
  static readonly layer = (options: Parameters<typeof startCluster>[0] = {}) =>
    Layer.scoped(
      ClusterTest,
      Effect.acquireRelease(
        Effect.promise(() => startCluster(options)),
        (c) => Effect.promise(() => c.stop()),
      ).pipe(
        Effect.map((cluster): ClusterService => ({
          cluster,
          ask: (subject, body, timeoutMs) => Effect.promise(() => ask(cluster.client, subject, body, timeoutMs)),
        })),
      ),
    )
}
