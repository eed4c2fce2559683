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

/**
 * Broadcast to every node (no queue group): `{"stream": SUBJECT}` stops the generate whose
 * `stream` that is (its client left: the HTTP gateway sends it); only a requester allowed
 * that stream may. Not among publicSubjects: it needs no reply (a request gets each node's).
 */
export const cancelSubject = "leoam.v1.cancel"

/** Admin subjects: only NATS users with admin permissions reach them (README, "Access control"). */
export const adminSubjects = {
  policyGet: "leoam.v1.admin.policy.get",
  policySet: "leoam.v1.admin.policy.set",
  policyList: "leoam.v1.admin.policy.list",
  policyHistory: "leoam.v1.admin.policy.history",
  stats: "leoam.v1.admin.stats",
} as const

export const ADMIN_PREFIX = "leoam.v1.admin."

/** Session subjects (protocol/session.ts): any node answers; one that does not hold the session routes it to the node that does. */
export const sessionSubjects = {
  open: "leoam.v1.session.open",
  append: "leoam.v1.session.append",
  generate: "leoam.v1.session.generate",
  close: "leoam.v1.session.close",
  list: "leoam.v1.session.list",
  delete: "leoam.v1.session.delete",
} as const
export type SessionOp = keyof typeof sessionSubjects

/** A node's own session subjects, `leoam.v1.node.<id>.session.<op>` (named in the open reply); without a node id, the public ones. */
export const nodeSessionSubject = (node: string | undefined, op: SessionOp): string =>
  node === undefined ? sessionSubjects[op] : `leoam.v1.node.${node}.session.${op}`

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
  /** -> gpu-executor: a stored session's record (owner, tokens), or session_not_found. */
  executorSessionInfo: "leoam.int.v1.gpu-executor.session.info",
  /** -> gpu-executor (its mailbox, after the runs before it): free a session's memory, keep it on disk. */
  executorSessionClose: "leoam.int.v1.gpu-executor.session.close",
  /** -> gpu-executor (its mailbox): remove a session and its chunks. */
  executorSessionDelete: "leoam.int.v1.gpu-executor.session.delete",
  /** Broadcast to every node's gpu-executor (a cluster subject): the sessions each holds. */
  sessionList: "leoam.int.v1.cluster.session.list",
  /** scheduler -> the scheduler of the node holding a session: a session request with its requester (clients cannot send it). */
  sessionForward: "leoam.int.v1.session.forward",
} as const

export const INTERNAL_PREFIX = "leoam.int.v1."

/**
 * Several nodes on one NATS: a node with an id keeps its internal subjects to itself under
 * `leoam.int.v1.node.<id>.` (`leoam.int.v1.node.a.gpu-executor.run`), so its scheduler's runs,
 * policy broadcasts, stats and pings never reach another node's actors. A node without an id
 * (the default, one node per bus) uses `internalSubjects` as they are.
 */
export const NODE_PREFIX = "leoam.int.v1.node."
/** A node id: one NATS subject token of letters, digits, `-` and `_`. */
export const NODE_ID = /^[A-Za-z0-9_-]{1,64}$/

/** Shared on purpose by every node on the bus (never scoped to a node). */
export const clusterSubjects = {
  /** Broadcast: each node's lease, the reply subjects of the generates it holds (actors/node-leases.ts). */
  leases: "leoam.int.v1.cluster.leases",
} as const
export const CLUSTER_PREFIX = "leoam.int.v1.cluster."

/** Where `subject` lives for node `node`: internal subjects move under the node's prefix; public and cluster ones stay. */
export const onNode = (subject: string, node: string | undefined): string =>
  node === undefined || !subject.startsWith(INTERNAL_PREFIX) || subject.startsWith(CLUSTER_PREFIX) || subject.startsWith(NODE_PREFIX)
    ? subject
    : `${NODE_PREFIX}${node}.${subject.slice(INTERNAL_PREFIX.length)}`

export const PUBLIC_PREFIX = "leoam.v1."
