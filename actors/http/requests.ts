// OpenAI's completion and chat completion requests as Effect Schemas, and their mapping to
// leoam's GenerateRequest. Fields leoam cannot honour are refused by name (n > 1, logprobs,
// batches of prompts, penalties other than 0, logit_bias, tools) rather than ignored; unknown
// fields too, as every leoam message does. Defaults follow OpenAI: temperature 1, top_p 1,
// max_tokens 16 for completions (the node's default, up to 256, for chat).
import { ParseResult, Schema } from "effect"
import type { GenerateRequest } from "../../protocol/messages.ts"
import { FieldError } from "./errors.ts"

const TokenId = Schema.Int.pipe(Schema.between(0, 2 ** 31 - 1))
const Ids = Schema.Array(TokenId).pipe(Schema.minItems(1), Schema.maxItems(1 << 20))
const Text = Schema.String.pipe(Schema.maxLength(4 * 1024 * 1024))
const Stop = Schema.Union(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256)), Schema.Array(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256))).pipe(Schema.maxItems(4)))
const NullOr = <A, I>(s: Schema.Schema<A, I>) => Schema.optional(Schema.NullOr(s))
/** Accepted only at the value that changes nothing (OpenAI's default). */
const Only = <L extends number | boolean>(value: L) => NullOr(Schema.Literal(value))

const sampling = {
  model: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256)),
  max_tokens: NullOr(Schema.Int.pipe(Schema.between(1, 1 << 20))),
  temperature: NullOr(Schema.Number.pipe(Schema.between(0, 2))),
  top_p: NullOr(Schema.Number.pipe(Schema.greaterThan(0), Schema.lessThanOrEqualTo(1))),
  /** Not OpenAI's, but vLLM's and llama.cpp's: sample among the k most likely tokens. */
  top_k: NullOr(Schema.Int.pipe(Schema.between(0, 1 << 20))),
  seed: NullOr(Schema.Int.pipe(Schema.between(0, 2 ** 32 - 1))),
  stop: NullOr(Stop),
  stream: NullOr(Schema.Boolean),
  stream_options: NullOr(Schema.Struct({ include_usage: Schema.optional(Schema.Boolean) })),
  n: Only(1),
  presence_penalty: Only(0),
  frequency_penalty: Only(0),
  /** An end-user id, for the operator's logs: accepted and not used. */
  user: Schema.optional(Schema.String.pipe(Schema.maxLength(256))),
}

export const CompletionRequest = Schema.Struct({
  ...sampling,
  /** A string, an array of one string, token ids, or an array of one id array (a batch of one). */
  prompt: Schema.Union(Text, Ids, Schema.Array(Text).pipe(Schema.minItems(1)), Schema.Array(Ids).pipe(Schema.minItems(1))),
  echo: Only(false),
  best_of: Only(1),
  logprobs: Schema.optional(Schema.Null),
}).annotations({ identifier: "CompletionRequest", parseOptions: { onExcessProperty: "error" } })
export type CompletionRequest = typeof CompletionRequest.Type

const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Text })
export const ChatMessage = Schema.Struct({
  role: Schema.Literal("system", "developer", "user", "assistant"),
  /** A string, or text parts (images and audio are refused). */
  content: Schema.Union(Text, Schema.Array(TextPart)),
  name: Schema.optional(Schema.String.pipe(Schema.maxLength(256))),
})
export type ChatMessage = typeof ChatMessage.Type

export const ChatRequest = Schema.Struct({
  ...sampling,
  messages: Schema.Array(ChatMessage).pipe(Schema.minItems(1), Schema.maxItems(4096)),
  /** The newer name of max_tokens (OpenAI's reasoning models); either may be given. */
  max_completion_tokens: NullOr(Schema.Int.pipe(Schema.between(1, 1 << 20))),
  logprobs: Only(false),
}).annotations({ identifier: "ChatCompletionRequest", parseOptions: { onExcessProperty: "error" } })
export type ChatRequest = typeof ChatRequest.Type

/** Fields that OpenAI has and leoam refuses, with why (answered before the schema's generic "unknown field"). */
const refused: Record<string, string> = {
  logprobs: "log probabilities are not returned by leoam",
  top_logprobs: "log probabilities are not returned by leoam",
  logit_bias: "logit_bias is not supported",
  suffix: "suffix (insertion) is not supported",
  tools: "tools and function calling are not supported",
  tool_choice: "tools and function calling are not supported",
  functions: "tools and function calling are not supported",
  function_call: "tools and function calling are not supported",
  response_format: "response_format (JSON mode) is not supported",
}

const refuseKnown = (body: Record<string, unknown>) => {
  for (const [field, why] of Object.entries(refused)) {
    const v = body[field]
    if (v === undefined || v === null || v === false) continue
    throw new FieldError(field, `${field}: ${why}`)
  }
  if (typeof body.n === "number" && body.n !== 1) throw new FieldError("n", "n: only n = 1 is supported (one choice per request); send several requests")
  if (typeof body.best_of === "number" && body.best_of !== 1) throw new FieldError("best_of", "best_of: only 1 is supported")
  for (const p of ["presence_penalty", "frequency_penalty"]) {
    if (typeof body[p] === "number" && body[p] !== 0) throw new FieldError(p, `${p}: only 0 is supported`)
  }
}

const decode = <A, I>(schema: Schema.Schema<A, I>, body: unknown): A => {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new FieldError(null, "the request body must be a JSON object")
  refuseKnown(body as Record<string, unknown>)
  const r = Schema.decodeUnknownEither(schema)(body, { errors: "first", onExcessProperty: "error" })
  if (r._tag === "Right") return r.right
  const issue = ParseResult.ArrayFormatter.formatErrorSync(r.left).find((i) => !/^Expected undefined/.test(i.message)) ?? ParseResult.ArrayFormatter.formatErrorSync(r.left)[0]
  const param = issue?.path.length ? String(issue.path[0]) : null
  const at = issue?.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "")
  const message = issue?.message ?? r.left.message
  throw new FieldError(param, at ? `${at}: ${message.length > 400 ? `${message.slice(0, 397)}...` : message}` : message)
}

export const decodeCompletion = (body: unknown): CompletionRequest => decode(CompletionRequest, body)
export const decodeChat = (body: unknown): ChatRequest => decode(ChatRequest, body)

/** The one prompt of a completion: text or ids; a batch of more than one is refused. */
export const promptOf = (prompt: CompletionRequest["prompt"]): { prompt: string } | { ids: ReadonlyArray<number> } => {
  if (typeof prompt === "string") return { prompt }
  if (prompt.length > 0 && typeof prompt[0] === "number") return { ids: prompt as ReadonlyArray<number> }
  if (prompt.length !== 1) throw new FieldError("prompt", `prompt: a batch of ${prompt.length} prompts; leoam takes one prompt per request (send them as separate requests)`)
  const one = prompt[0] as string | ReadonlyArray<number>
  return typeof one === "string" ? { prompt: one } : { ids: one }
}

const stopsOf = (stop: string | ReadonlyArray<string> | null | undefined): ReadonlyArray<string> => (stop == null ? [] : typeof stop === "string" ? [stop] : stop)

/** The sampling fields of either request, as leoam's. */
export const samplingOf = (r: CompletionRequest | ChatRequest, maxTokens: number | undefined, extraStops: ReadonlyArray<string> = []): Omit<GenerateRequest, "prompt" | "ids" | "stream"> => {
  const stop = [...stopsOf(r.stop), ...extraStops]
  return {
    model: r.model,
    ...(maxTokens !== undefined ? { max_tokens: maxTokens } : {}),
    temperature: r.temperature ?? 1,
    top_p: r.top_p ?? 1,
    ...(r.top_k != null ? { top_k: r.top_k } : {}),
    ...(r.seed != null ? { seed: r.seed } : {}),
    ...(stop.length > 0 ? { stop } : {}),
  }
}

/** OpenAI's legacy completions default to 16 tokens. */
export const COMPLETION_DEFAULT_MAX_TOKENS = 16

export const completionToGenerate = (r: CompletionRequest): Omit<GenerateRequest, "stream"> => ({
  ...promptOf(r.prompt),
  ...samplingOf(r, r.max_tokens ?? COMPLETION_DEFAULT_MAX_TOKENS),
})

/** The text of a message: its string, or its text parts joined. */
export const contentOf = (m: ChatMessage): string => (typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join(""))
