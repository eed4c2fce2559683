// Text <-> token ids over @huggingface/tokenizers, loaded from a model directory's
// tokenizer.json (+ tokenizer_config.json), and a streaming decoder that turns ids
// arriving one by one into text deltas without ever emitting half a UTF-8 character.

import * as fs from "node:fs"
import * as path from "node:path"
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers"
import { modelError } from "./errors.ts"

export interface DecodeOptions {
  /** Drop special tokens such as `<s>` and `</s>` (default false, as in transformers). */
  readonly skipSpecialTokens?: boolean
}

export class Tokenizer {
  /** Number of ids the tokenizer knows, added tokens included. */
  readonly vocabSize: number

  private constructor(
    readonly file: string,
    private readonly hf: HfTokenizer,
  ) {
    this.vocabSize = hf.get_vocab(true).size
  }

  /** Reads `<dir>/tokenizer.json` and, if present, `<dir>/tokenizer_config.json`. */
  static load(dir: string): Tokenizer {
    const file = path.join(dir, "tokenizer.json")
    if (!fs.existsSync(file)) throw modelError("tokenizer_missing", file, undefined, "no tokenizer.json in the model directory")
    const json = readJson(file)
    const configFile = path.join(dir, "tokenizer_config.json")
    const config = fs.existsSync(configFile) ? readJson(configFile) : {}
    // tokenizers.js turns clean_up_tokenization_spaces on when the config is silent;
    // transformers 5 leaves it off, and it is lossy (" ." -> "."), so default to off.
    const settings = { clean_up_tokenization_spaces: false, ...(config as object) }
    try {
      return new Tokenizer(file, new HfTokenizer(json as object, settings))
    } catch (e) {
      throw modelError("tokenizer_malformed", file, undefined, `cannot build the tokenizer: ${(e as Error).message}`)
    }
  }

  /**
   * Text -> ids. Special tokens written in the text (`<s>`) become their ids, and the
   * tokenizer.json post-processor runs (it may add BOS; the test model's adds nothing).
   * No BOS is added here otherwise.
   */
  encode(text: string): number[] {
    return this.hf.encode(text).ids
  }

  decode(ids: ReadonlyArray<number>, options: DecodeOptions = {}): string {
    if (ids.length === 0) return ""
    return this.hf.decode(ids as number[], { skip_special_tokens: options.skipSpecialTokens ?? false })
  }

  /** One token's text; a token holding part of a UTF-8 character decodes to U+FFFD. */
  decodeToken(id: number): string {
    return this.decode([id])
  }

  /** The token's vocabulary string (byte-level form, e.g. "Ġthe"), if the id exists. */
  tokenString(id: number): string | undefined {
    return this.hf.id_to_token(id)
  }

  tokenId(token: string): number | undefined {
    return this.hf.token_to_id(token)
  }

  /** A streaming decoder; `context` (e.g. the prompt) shapes the first token's spacing. */
  streamDecoder(context: ReadonlyArray<number> = [], options: DecodeOptions = {}): StreamDecoder {
    return new StreamDecoder(this, context, options)
  }
}

export const loadTokenizer = (dir: string): Tokenizer => Tokenizer.load(dir)

const readJson = (file: string): unknown => {
  let text: string
  try {
    text = fs.readFileSync(file, "utf8")
  } catch (e) {
    throw modelError("tokenizer_missing", file, undefined, `cannot read: ${(e as Error).message}`)
  }
  try {
    return JSON.parse(text)
  } catch (e) {
    throw modelError("tokenizer_malformed", file, undefined, `is not valid JSON (${(e as Error).message})`)
  }
}

/** How many ids before the unread ones are decoded with them, for spacing and merges. */
const contextWindow = 5

/**
 * Text deltas from ids arriving one at a time (the scheme of text-generation-inference):
 * decode a short window ending at the new id and emit what it adds beyond the window's
 * already-emitted part. A delta ending in U+FFFD (a character whose bytes have not all
 * arrived) is held back until a later id completes it. Work per id is O(window).
 */
export class StreamDecoder {
  private readonly ids: number[]
  private prefixOffset: number
  private readOffset: number

  constructor(
    private readonly tokenizer: Tokenizer,
    context: ReadonlyArray<number> = [],
    private readonly options: DecodeOptions = {},
  ) {
    this.ids = [...context]
    this.readOffset = this.ids.length
    this.prefixOffset = Math.max(0, this.ids.length - contextWindow)
  }

  /** Adds one id; returns the text it completes (often "", sometimes several characters). */
  push(id: number): string {
    this.ids.push(id)
    const prefix = this.decodeRange(this.prefixOffset, this.readOffset)
    const full = this.decodeRange(this.prefixOffset, this.ids.length)
    if (full.length <= prefix.length || full.endsWith("\uFFFD") || !full.startsWith(prefix)) return ""
    this.prefixOffset = this.readOffset
    this.readOffset = this.ids.length
    return full.slice(prefix.length)
  }

  /** The text held back so far (an incomplete character at the end decodes as U+FFFD). */
  flush(): string {
    const prefix = this.decodeRange(this.prefixOffset, this.readOffset)
    const full = this.decodeRange(this.prefixOffset, this.ids.length)
    this.prefixOffset = this.readOffset
    this.readOffset = this.ids.length
    return full.startsWith(prefix) ? full.slice(prefix.length) : full
  }

  private decodeRange(from: number, to: number): string {
    return this.tokenizer.decode(this.ids.slice(from, to), this.options)
  }
}

/** Yields the text deltas of `ids` as they arrive, then whatever was held back. */
export function* decodeStream(tokenizer: Tokenizer, ids: Iterable<number>, options: DecodeOptions = {}): Generator<string> {
  const decoder = new StreamDecoder(tokenizer, [], options)
  for (const id of ids) {
    const delta = decoder.push(id)
    if (delta !== "") yield delta
  }
  const rest = decoder.flush()
  if (rest !== "") yield rest
}
