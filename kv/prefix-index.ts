// Which sequences hold the sealed chunks of which prompt prefixes, so that a request whose
// prompt begins like a running one's links those chunks (written once, on disk) instead of
// prefilling and writing them again. With fixed chunking, chunk i holds tokens [iC, (i+1)C)
// and its KV depends on those tokens and every one before, so its key chains a hash over
// all of them (position included). A chunk key is reference-counted by the sequences that
// hold it (its holders); the disk store frees a chunk's bytes once no sequence's index
// entry points at them. Pure bookkeeping; the gpu-executor's batch alone changes it.
import { createHash } from "node:crypto"

/**
 * The keys of the whole chunks of `ids` (chunk i: a hash of the chunk size and tokens
 * [0, (i+1)C)); a partial last chunk has none.
 */
export const prefixChunkKeys = (ids: ReadonlyArray<number>, chunkTokens: number): string[] => {
  const keys: string[] = []
  let previous = `chunk ${chunkTokens}`
  for (let end = chunkTokens; end <= ids.length; end += chunkTokens) {
    const h = createHash("sha256").update(previous)
    h.update(new Uint8Array(Uint32Array.from(ids.slice(end - chunkTokens, end)).buffer))
    previous = h.digest("hex")
    keys.push(previous)
  }
  return keys
}

export class PrefixIndex {
  /** Sequences holding each chunk key. */
  private readonly holders = new Map<string, Set<string>>()
  /** Each sequence's chunk keys. */
  private readonly keysOf = new Map<string, ReadonlyArray<string>>()

  /** `sequence` holds the chunks of these keys (its prompt's whole chunks, in order). */
  add(sequence: string, keys: ReadonlyArray<string>): void {
    this.remove(sequence)
    this.keysOf.set(sequence, keys)
    for (const key of keys) {
      let set = this.holders.get(key)
      if (!set) this.holders.set(key, (set = new Set()))
      set.add(sequence)
    }
  }

  /** `sequence` holds nothing any more (its chunks are dropped, or it ended). */
  remove(sequence: string): void {
    for (const key of this.keysOf.get(sequence) ?? []) {
      const set = this.holders.get(key)
      set?.delete(sequence)
      if (set?.size === 0) this.holders.delete(key)
    }
    this.keysOf.delete(sequence)
  }

  /** How many sequences hold the chunk of `key`. */
  refs(key: string): number {
    return this.holders.get(key)?.size ?? 0
  }

  /** The sequence holding the longest run of `keys` from the first, and that run's length; undefined when none holds the first. */
  longest(keys: ReadonlyArray<string>): { readonly sequence: string; readonly chunks: number } | undefined {
    let candidates = [...(this.holders.get(keys[0] ?? "") ?? [])]
    let chunks = 0
    while (candidates.length > 0 && chunks < keys.length) {
      const next = candidates.filter((s) => this.holders.get(keys[chunks])?.has(s))
      if (next.length === 0) break
      candidates = next
      chunks++
    }
    return chunks > 0 ? { sequence: candidates[0], chunks } : undefined
  }
}
