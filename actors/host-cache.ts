// The host-cache actor: owns the byte-budgeted host arena of KV chunks (the middle tier)
// and answers stats over NATS. Chunk bytes never travel on NATS: the arena is shared
// memory of this process; the tiered cache (next issue) moves chunks through it.
import { internalSubjects } from "../protocol/subjects.ts"
import type { ActorDefinition } from "./actor.ts"
import { HostArena } from "../kv/host-arena.ts"
import { evictionPolicies } from "../kv/eviction.ts"
import { decodeAs } from "./nats.ts"
import { PolicyChanged } from "../protocol/internal.ts"
import { parsePolicy } from "../protocol/policy.ts"

/** With `arena`, the actor serves that arena (shared in-process with the gpu-executor's tiered cache). */
export const hostCacheActor = (options: { readonly budgetBytes: number; readonly arena?: HostArena }): ActorDefinition<HostArena> => ({
  name: "host-cache",
  mailbox: 1024,
  start: async () => options.arena ?? new HostArena({ budgetBytes: options.budgetBytes }),
  stats: (arena) => arena.stats(),
  immediate: [
    [internalSubjects.hostCacheStats, async (arena) => arena.stats()],
    [
      // A new policy version: its eviction ranks the arena's chunks from the next eviction on.
      { broadcast: internalSubjects.policyChanged },
      async (arena, body) => {
        const { policy } = decodeAs(PolicyChanged, body)
        arena.setPolicy(evictionPolicies[parsePolicy(policy).eviction])
        return { ok: true }
      },
    ],
  ],
})
