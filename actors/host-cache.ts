// The host-cache actor: owns the byte-budgeted host arena of KV chunks (the middle tier)
// and answers stats over NATS. Chunk bytes never travel on NATS: the arena is shared
// memory of this process; the tiered cache (next issue) moves chunks through it.
import { internalSubjects } from "../protocol/subjects.ts"
import type { ActorDefinition } from "./actor.ts"
import { HostArena } from "./host-cache/arena.ts"

export const hostCacheActor = (options: { readonly budgetBytes: number }): ActorDefinition<HostArena> => ({
  name: "host-cache",
  mailbox: 1024,
  start: async () => new HostArena({ budgetBytes: options.budgetBytes }),
  stats: (arena) => arena.stats(),
  immediate: [[internalSubjects.hostCacheStats, async (arena) => arena.stats()]],
})
