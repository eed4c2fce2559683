// Pass-key prompts (the retrieval task the test model was trained on): filler text with
// "The pass key is N. Remember it. N is the pass key." at a chosen depth, then the query.
// Shared by tests, the demo and the quality programs.
import type { Tokenizer } from "../models/tokenizer.ts"

const FILLER =
  " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

export interface PassKeyPrompt {
  readonly ids: number[]
  readonly key: string
  readonly depth: number
}

/**
 * Builds a prompt of about `tokens` tokens (BOS included) with the key at `depth`
 * (0 = start, 1 = end of the filler).
 */
export const passKeyPrompt = (tok: Tokenizer, tokens: number, key: string, depth: number, bos = 0): PassKeyPrompt => {
  const needle = ` The pass key is ${key}. Remember it. ${key} is the pass key.`
  const query = " What is the pass key? The pass key is"
  const fillerIds = tok.encode(FILLER)
  const needleIds = tok.encode(needle)
  const queryIds = tok.encode(query)
  const room = Math.max(0, tokens - 1 - needleIds.length - queryIds.length)
  const reps = Math.ceil(room / fillerIds.length)
  const filler = Array.from({ length: reps }, () => fillerIds).flat().slice(0, room)
  // Insert at a sentence boundary near the depth so the needle is not glued to a word.
  let at = Math.round(filler.length * Math.min(1, Math.max(0, depth)))
  at -= at % fillerIds.length
  const ids = [bos, ...filler.slice(0, at), ...needleIds, ...filler.slice(at), ...queryIds]
  return { ids, key, depth }
}

/** A deterministic 5-digit key for case i. */
export const passKey = (i: number): string => String(10000 + ((i * 48271 + 12345) % 90000))

/** The same task as text (the server tokenizes it): `<s>`, filler, needle at `depth`, query. */
export const passKeyText = (approxTokens: number, key: string, depth: number): string => {
  // The filler sentence is 26 tokens with the test model's tokenizer (the demo reports the real count).
  const reps = Math.max(1, Math.round((approxTokens - 40) / 26))
  const at = Math.round(reps * Math.min(1, Math.max(0, depth)))
  const filler = (n: number) => FILLER.repeat(n)
  return `<s>${filler(at)} The pass key is ${key}. Remember it. ${key} is the pass key.${filler(reps - at)} What is the pass key? The pass key is`
}
