// The CLI's error: a stable code (the same vocabulary as the NATS replies) and a message.
// main.ts maps every failure, from here or from the engine, to one line and an exit code.
export class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message)
    this.name = "CliError"
  }
}

/** Exit status: 2 for bad input (the caller can fix it), 1 for everything else. */
export const exitCodeOf = (code: string): number =>
  ["invalid_request", "invalid_ids", "invalid_argument", "context_overflow", "unknown_model", "config_missing",
    "config_malformed", "unsupported_architecture", "shard_missing", "tensor_missing", "tensor_shape", "tensor_dtype",
    "safetensors_malformed", "tokenizer_missing", "tokenizer_malformed", "unsupported_shape", "unknown_policy", "invalid_policy",
    "kv_budget_too_small", "kv_dir_unavailable", "permission_denied", "invalid_config", "node_id_in_use"].includes(code)
    ? 2
    : 1

/** `no_responders`: NATS answered at once that nothing subscribes to the subject (no leoam node there), not a timeout. */
export const noRespondersError = (subject: string, natsUrl: string): CliError =>
  new CliError("no_responders", `nothing serves ${subject} on ${natsUrl} (NATS: no responders): no leoam node is running there, or the subject is misspelt (leoam.v1.generate, leoam.v1.health, ...)`)
