// Every NATS subject leoam uses, in one place. Public subjects are versioned
// (`leoam.v1.*`); internal actor subjects live under `leoam.int.v1.*` so that access
// control can deny them to clients by one wildcard.
export const SERVICE_NAME = "leoam"

export const publicSubjects = {
  generate: "leoam.v1.generate",
  tokenize: "leoam.v1.tokenize",
  models: "leoam.v1.models",
  health: "leoam.v1.health",
} as const

/** Admin subjects: only NATS users with admin permissions reach them (README, "Access control"). */
export const adminSubjects = {
  policyGet: "leoam.v1.admin.policy.get",
  policySet: "leoam.v1.admin.policy.set",
  policyList: "leoam.v1.admin.policy.list",
  policyHistory: "leoam.v1.admin.policy.history",
  stats: "leoam.v1.admin.stats",
} as const

export const ADMIN_PREFIX = "leoam.v1.admin."

/** Internal control plane between the actors (never KV bytes); request and reply schemas: protocol/internal.ts internalRpc. */
export const internalSubjects = {
  /** scheduler -> gpu-executor: prefill a prompt and decode up to n tokens (one message per run). */
  executorRun: "leoam.int.v1.gpu-executor.run",
  /** scheduler -> gpu-executor: stop a run early (a stop string matched, the client left). */
  executorCancel: "leoam.int.v1.gpu-executor.cancel",
  /** -> gpu-executor: the model it serves (ModelDescription). */
  executorDescribe: "leoam.int.v1.gpu-executor.describe",
  /** -> host-cache: the host arena's counters (served by the process that holds the arena). */
  hostCacheStats: "leoam.int.v1.host-cache.stats",
  /** -> disk-store: the disk store's counters. */
  diskStats: "leoam.int.v1.disk-store.stats",
  /** -> gpu-executor: would this policy fit, and would it apply at the next step or request? */
  executorPolicyCheck: "leoam.int.v1.gpu-executor.policy.check",
  /** -> gpu-executor: its totals and the policy version it runs (admin stats). */
  executorStats: "leoam.int.v1.gpu-executor.stats",
  /** -> disk-store: store an accepted policy as the next version (LMDB). */
  diskPolicyPut: "leoam.int.v1.disk-store.policy.put",
  /** -> disk-store: the latest stored policy version. */
  diskPolicyGet: "leoam.int.v1.disk-store.policy.get",
  diskPolicyHistory: "leoam.int.v1.disk-store.policy.history",
  /** Broadcast (no queue group): a new resolved policy version; the gpu-executor decides when each tier switches. */
  policyChanged: "leoam.int.v1.policy.changed",
  /** Every actor answers here with its name and generation (restart count). */
  ping: "leoam.int.v1.ping",
} as const

export const INTERNAL_PREFIX = "leoam.int.v1."
export const PUBLIC_PREFIX = "leoam.v1."
