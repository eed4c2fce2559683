// Errors of the HTTP gateway in OpenAI's shape, {"error": {"message", "type", "param", "code"}},
// with the HTTP status OpenAI clients expect. `code` is leoam's stable code (protocol/errors.ts)
// or one of the gateway's own (invalid_api_key, not_found, method_not_allowed); the table
// below is the only place a leoam code becomes an HTTP status.
import { type ErrorCode, errorStatus, LeoamError } from "../../protocol/errors.ts"

export interface OpenAiError {
  readonly status: number
  readonly body: { readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string } }
}

/** HTTP statuses that differ from the NATS one: OpenAI answers a prompt too long for the context with 400. */
const statusOverride: Partial<Record<ErrorCode, number>> = {
  context_overflow: 400,
  timeout: 503,
  kv_dir_unavailable: 503,
}

const typeOf = (status: number): string =>
  status === 401
    ? "authentication_error"
    : status === 403
      ? "permission_error"
      : status === 404
        ? "not_found_error"
        : status === 429
          ? "rate_limit_error"
          : status >= 500
            ? "server_error"
            : "invalid_request_error"

export const openAiError = (status: number, code: string, message: string, param: string | null = null): OpenAiError => ({
  status,
  body: { error: { message, type: typeOf(status), param, code } },
})

/** A leoam error as the gateway answers it. */
export const fromLeoam = (e: LeoamError, param: string | null = null): OpenAiError => {
  const status = statusOverride[e.code] ?? errorStatus[e.code]
  return openAiError(status, e.code, e.message, param)
}

/** Anything thrown inside a route: a LeoamError keeps its code, anything else is `internal` (500). */
export const fromUnknown = (e: unknown): OpenAiError =>
  e instanceof LeoamError ? fromLeoam(e) : openAiError(500, "internal", `the gateway failed: ${(e as Error)?.message ?? String(e)}`)

/** A refusal of one request field, naming it as OpenAI's `param`. */
export class FieldError extends Error {
  constructor(
    readonly param: string | null,
    message: string,
    readonly code: ErrorCode = "invalid_request",
  ) {
    super(message)
  }
  toOpenAi(): OpenAiError {
    return openAiError(this.code === "context_overflow" ? 400 : errorStatus[this.code], this.code, this.message, this.param)
  }
}
