// The host-cache actor: the NATS face of the host arena of KV chunks (the middle tier).
// Which process holds the arena: the gpu-executor's. Its tiered KV cache moves chunk bytes
// through the arena in memory (never over NATS), so the arena is built by the node that
// runs the gpu-executor and handed to this actor; `leoam actor host-cache` without the
// gpu-executor in the same process is refused (actors/node.ts). This actor never changes
// the arena: its eviction is switched by the gpu-executor's KV manager when a policy
// change applies (not on the broadcast), so the two cannot run different versions.
import { Context, Effect, Layer } from "effect"
import type { HostArena } from "../kv/host-arena.ts"
import type { HostCacheStats } from "../protocol/internal.ts"
import { type ActorDefinition, serviceOf } from "./actor.ts"
import { serve } from "./rpc.ts"

export interface HostCacheService {
  readonly stats: () => Effect.Effect<HostCacheStats>
}

export class HostCache extends Context.Tag("leoam/actors/HostCache")<HostCache, HostCacheService>() {
  /** Serves `arena`, which belongs to this process's gpu-executor. */
  static readonly layer = (arena: HostArena) =>
    Layer.succeed(HostCache, {
      stats: Effect.fn("HostCache.stats")(function* () {
        return { pid: process.pid, eviction: arena.policy.name, ...arena.stats() }
      }),
    })
}

export const hostCacheActor = (arena: HostArena): ActorDefinition<HostCacheService> => ({
  name: "host-cache",
  mailbox: 1024,
  service: serviceOf(HostCache, HostCache.layer(arena)),
  stats: (s) => Effect.runSync(s.stats()),
  immediate: [serve("hostCacheStats", (s: HostCacheService) => s.stats())],
})
