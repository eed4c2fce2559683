// The chat template of /v1/chat/completions: `--chat-template FILE`, else the model
// directory's `chat_template.jinja` or `tokenizer_config.json` `chat_template` (as Hugging
// Face transformers reads them), else ChatML (DEFAULT_CHAT_TEMPLATE), which the bundled
// tiny-leo-14m uses since it has none. Rendered by @huggingface/jinja, a maintained Jinja
// implementation of the subset HF templates use. Loaded once at start; never changes.
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { Template } from "@huggingface/jinja"
import { leoamError } from "../../protocol/errors.ts"
import { type ChatMessage, contentOf } from "./requests.ts"
import { FieldError } from "./errors.ts"

/** ChatML, the default of models without a template (as vLLM and llama.cpp fall back to it). */
export const DEFAULT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
/** Under ChatML the assistant's turn ends at this marker, which the model may not have as a token: it is a stop string. */
export const CHATML_END = "<|im_end|>"

export interface ChatTemplate {
  /** Where it came from: "file:PATH", "model:tokenizer_config.json", "model:chat_template.jinja" or "default:chatml". */
  readonly source: string
  /** Stop strings the template's turn ends with (CHATML_END for the default). */
  readonly stops: ReadonlyArray<string>
  render(messages: ReadonlyArray<ChatMessage>): string
}

type TokenConfig = { chat_template?: unknown; bos_token?: unknown; eos_token?: unknown }
const tokenText = (t: unknown): string => (typeof t === "string" ? t : typeof t === "object" && t !== null && typeof (t as { content?: unknown }).content === "string" ? (t as { content: string }).content : "")

const readJson = (file: string): TokenConfig => {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as TokenConfig
  } catch (e) {
    throw leoamError("invalid_request", `cannot read ${file}: ${(e as Error).message}`)
  }
}

/** A `chat_template` field: a string, or HF's list of named templates (the one named "default"). */
const templateOf = (field: unknown): string | undefined => {
  if (typeof field === "string") return field
  if (Array.isArray(field)) {
    const named = field.find((t) => (t as { name?: unknown }).name === "default") ?? field[0]
    const text = (named as { template?: unknown } | undefined)?.template
    return typeof text === "string" ? text : undefined
  }
  return undefined
}

const compile = (text: string, source: string, specials: { bos_token: string; eos_token: string }, stops: ReadonlyArray<string>): ChatTemplate => {
  let template: Template
  try {
    template = new Template(text)
  } catch (e) {
    throw leoamError("invalid_request", `the chat template (${source}) does not parse: ${(e as Error).message}`)
  }
  return {
    source,
    stops,
    render: (messages) => {
      try {
        return template.render({
          messages: messages.map((m) => ({ role: m.role, content: contentOf(m), ...(m.name !== undefined ? { name: m.name } : {}) })),
          add_generation_prompt: true,
          ...specials,
        })
      } catch (e) {
        // The template's own raise_exception ("roles must alternate") lands here too.
        throw new FieldError("messages", `the chat template (${source}) failed on these messages: ${(e as Error).message}`)
      }
    },
  }
}

/**
 * The template to use: `file` (a Jinja file) wins, then the model directory's own, then
 * ChatML. `modelDir` may be absent or not a directory (dummy weights): then ChatML.
 */
export const loadChatTemplate = (modelDir: string | undefined, file?: string): ChatTemplate => {
  const config = modelDir && existsSync(join(modelDir, "tokenizer_config.json")) ? readJson(join(modelDir, "tokenizer_config.json")) : {}
  const specials = { bos_token: tokenText(config.bos_token), eos_token: tokenText(config.eos_token) }
  if (file !== undefined) {
    let text: string
    try {
      text = readFileSync(file, "utf8")
    } catch (e) {
      throw leoamError("invalid_request", `--chat-template ${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`)
    }
    return compile(text, `file:${file}`, specials, text.includes(CHATML_END) ? [CHATML_END] : [])
  }
  const jinjaFile = modelDir ? join(modelDir, "chat_template.jinja") : undefined
  if (jinjaFile && existsSync(jinjaFile)) return compile(readFileSync(jinjaFile, "utf8"), "model:chat_template.jinja", specials, [])
  const own = templateOf(config.chat_template)
  if (own !== undefined) return compile(own, "model:tokenizer_config.json", specials, [])
  return compile(DEFAULT_CHAT_TEMPLATE, "default:chatml", specials, [CHATML_END])
}
