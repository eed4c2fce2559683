// The one message the nodes on a bus share: a node's lease (clusterSubjects.leases).
import { Schema } from "effect"

export const NodeLease = Schema.Struct({
  /** The node id ("" for a node without one). */
  node: Schema.String,
  /** This process's start of the node (a restarted node is a new instance). */
  instance: Schema.String,
  pid: Schema.Int,
  /** The reply subjects of the generates this node holds: received, not yet answered. */
  inflight: Schema.Array(Schema.String),
  /** Set on the last lease of a node that stops (its requests were all answered). */
  leaving: Schema.optional(Schema.Boolean),
})
export type NodeLease = typeof NodeLease.Type
