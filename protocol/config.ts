// The `leoam serve --config FILE` document: the serve flags as JSON (snake_case), every field
// optional, unknown fields refused. Flags given on the command line override the file. Its JSON
// Schema is protocol/schema/ServeConfig.json (`npm run schemas`).
import { Schema } from "effect"
import { firstIssue } from "./schema-errors.ts"
import { NODE_ID } from "./subjects.ts"

const Port = Schema.Int.pipe(Schema.between(1, 65535))
/** Bytes, or a number with a binary unit: 8589934592, "8GiB", "512 MiB". */
const Size = Schema.Union(
  Schema.Int.pipe(Schema.nonNegative()),
  Schema.String.pipe(Schema.pattern(/^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$/)),
)

export const ServeConfig = Schema.Struct({
  /** Hugging Face model directory (default: the bundled tiny-leo-14m). */
  model: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  max_context: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(2))),
  /** Generate requests admitted (queued or running) before new ones get `busy`. */
  queue: Schema.optional(Schema.Int.pipe(Schema.between(1, 1 << 16))),
  /** Generate requests decoding together (continuous batching); 1: one at a time. */
  max_batch: Schema.optional(Schema.Int.pipe(Schema.between(1, 256))),
  /** A policy name or a JSON policy file (README "The tiered KV cache"). */
  kv_policy: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  gpu_kv_budget: Schema.optional(Size),
  host_kv_budget: Schema.optional(Size),
  kv_dir: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  /** Disk bytes the sessions' chunks may take (least recently used sessions deleted past it). */
  kv_disk_budget: Schema.optional(Size),
  /** Sessions one NATS user may hold over all nodes. */
  session_quota: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  /** An existing NATS server; without it an embedded nats-server runs on 127.0.0.1:nats_port. */
  nats_url: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  nats_port: Schema.optional(Port),
  nats_user: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  /** A file whose first line is the NATS password (never the password itself here). */
  nats_pass_file: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  nats_creds: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  nats_nkey: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  /** This node's id on a NATS shared with other nodes (README "Several nodes on one NATS"). */
  node: Schema.optional(Schema.String.pipe(Schema.pattern(NODE_ID))),
  /** The users file of the embedded nats-server (client and admin roles). */
  users: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
  metrics_port: Schema.optional(Schema.Int.pipe(Schema.between(0, 65535))),
  /** Milliseconds in-flight requests may take to finish after SIGTERM. */
  drain_timeout: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  device: Schema.optional(Schema.Literal("auto", "gpu", "cpu")),
  log_format: Schema.optional(Schema.Literal("text", "json")),
  /** The OpenAI-compatible HTTP API (README "OpenAI-compatible HTTP"); 0: a free port. */
  http_port: Schema.optional(Schema.Int.pipe(Schema.between(0, 65535))),
  /** The address it listens on (default 127.0.0.1). */
  http_host: Schema.optional(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(255))),
  /** A Jinja chat template file instead of the model's. */
  chat_template: Schema.optional(Schema.String.pipe(Schema.minLength(1))),
}).annotations({ identifier: "ServeConfig", parseOptions: { onExcessProperty: "error" } })
export type ServeConfig = typeof ServeConfig.Type

/** The document, or the first problem as "field: message". */
export const decodeServeConfig = (value: unknown): { ok: true; config: ServeConfig } | { ok: false; error: string } => {
  const r = Schema.decodeUnknownEither(ServeConfig)(value, { onExcessProperty: "error" })
  return r._tag === "Right" ? { ok: true, config: r.right } : { ok: false, error: firstIssue(r.left) }
}
