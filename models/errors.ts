// The one error type of model loading: config, weights and tokenizer. Loading is
// synchronous and throws ModelError (an Error); Effect callers wrap it with
// Effect.try. `code` is stable and meant for replies; `message` names file and field.

import { Schema } from "effect"

export const ModelErrorCode = Schema.Literal(
  "config_missing",
  "config_malformed",
  "unsupported_architecture",
  "shard_missing",
  "tensor_missing",
  "tensor_shape",
  "tensor_dtype",
  "safetensors_malformed",
  "tokenizer_missing",
  "tokenizer_malformed",
  "unknown_model",
)
export type ModelErrorCode = typeof ModelErrorCode.Type

export class ModelError extends Schema.TaggedError<ModelError>()("ModelError", {
  code: ModelErrorCode,
  /** The file at fault, as the caller named it (usually a full path). */
  file: Schema.optional(Schema.String),
  /** The JSON field or tensor name at fault. */
  field: Schema.optional(Schema.String),
  message: Schema.String,
}) {}

/** Builds a ModelError whose message starts with the file: `<file>: <detail>`. */
export const modelError = (code: ModelErrorCode, file: string | undefined, field: string | undefined, detail: string) =>
  new ModelError({ code, file, field, message: file === undefined ? detail : `${file}: ${detail}` })

/** A value as it should appear after "got" in a message: JSON, shortened. */
export const shown = (value: unknown): string => {
  if (value === undefined) return "nothing"
  let text: string
  try {
    text = JSON.stringify(value) ?? String(value)
  } catch {
    text = String(value)
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}
