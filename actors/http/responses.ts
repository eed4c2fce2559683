// leoam's GenerateReply and StreamEvents as OpenAI's response objects and stream chunks
// (text_completion, chat.completion, chat.completion.chunk). Pure functions of their input.
import type { GenerateReply, ModelsReply } from "../../protocol/messages.ts"

export type Kind = "completion" | "chat"

export interface Ids {
  readonly id: string
  readonly created: number
  readonly model: string
}

export const usageOf = (r: GenerateReply) => ({
  prompt_tokens: r.usage.prompt_tokens,
  completion_tokens: r.usage.completion_tokens,
  total_tokens: r.usage.prompt_tokens + r.usage.completion_tokens,
  // OpenAI's place for prompt tokens served from a cache: here, a shared prefix's chunks.
  ...(r.usage.cached_tokens ? { prompt_tokens_details: { cached_tokens: r.usage.cached_tokens } } : {}),
})

/** The whole answer of a request that did not stream. */
export const responseOf = (kind: Kind, ids: Ids, r: GenerateReply) =>
  kind === "completion"
    ? { id: ids.id, object: "text_completion", created: ids.created, model: ids.model, choices: [{ index: 0, text: r.text, logprobs: null, finish_reason: r.finish_reason }], usage: usageOf(r) }
    : {
        id: ids.id,
        object: "chat.completion",
        created: ids.created,
        model: ids.model,
        choices: [{ index: 0, message: { role: "assistant", content: r.text }, logprobs: null, finish_reason: r.finish_reason }],
        usage: usageOf(r),
      }

/** One stream chunk: a text delta, or (with `finish`) the last choice chunk. Chat's first chunk carries the role. */
export const chunkOf = (kind: Kind, ids: Ids, delta: { text?: string; role?: boolean; finish?: "stop" | "length" }, usage?: boolean) => {
  const head = { id: ids.id, object: kind === "completion" ? "text_completion" : "chat.completion.chunk", created: ids.created, model: ids.model }
  const finish_reason = delta.finish ?? null
  const choice =
    kind === "completion"
      ? { index: 0, text: delta.text ?? "", logprobs: null, finish_reason }
      : { index: 0, delta: { ...(delta.role ? { role: "assistant" } : {}), ...(delta.text !== undefined ? { content: delta.text } : {}) }, logprobs: null, finish_reason }
  // With stream_options.include_usage every chunk has `usage: null` but the last, which has no choices.
  return usage ? { ...head, choices: [choice], usage: null } : { ...head, choices: [choice] }
}

/** The last chunk under stream_options.include_usage: no choices, the usage. */
export const usageChunkOf = (kind: Kind, ids: Ids, r: GenerateReply) => ({
  id: ids.id,
  object: kind === "completion" ? "text_completion" : "chat.completion.chunk",
  created: ids.created,
  model: ids.model,
  choices: [],
  usage: usageOf(r),
})

/** GET /v1/models: OpenAI's list, with leoam's shape of each model and the chat template in use. */
export const modelListOf = (m: ModelsReply, created: number, chatTemplate: string) => ({
  object: "list",
  data: m.models.map((x) => modelOf(x, created, chatTemplate)),
})

export const modelOf = (x: ModelsReply["models"][number], created: number, chatTemplate: string) => ({
  id: x.name,
  object: "model",
  created,
  owned_by: "leoam",
  context_length: x.context_length,
  default: x.default,
  chat_template: chatTemplate,
})
