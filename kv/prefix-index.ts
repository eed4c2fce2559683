// Which sequences hold the sealed chunks of which prompt prefixes, so that a request or a
// session whose tokens begin like a running request's or a stored session's links those
// chunks (written once, on disk) instead of prefilling and writing them again. With fixed
// chunking, chunk i holds tokens [iC, (i+1)C) and its KV depends on those tokens and every
// one before, so its key chains a hash over all of them (position included). A chunk key is
// reference-counted by the sequences that hold it (its holders); the disk store frees a
// chunk's bytes once no sequence's index entry points at them. The holders are the batch's
// running lanes (their prompts) and the stored sessions (their documents); the
// gpu-executor's batch and sessions change it.
import { createHash } from "node:crypto"
import type { DiskStore } from "./disk-store.ts"

/**
 * The keys of the whole chunks of `ids` for `user`'s requests and sessions (chunk i: a hash of
 * the user, the chunk size and tokens [0, (i+1)C)); a partial last chunk has none. Keys of
 * different users never match, so no one's first token is sped up by another user's prefix.
 */
export const prefixChunkKeys = (ids: ReadonlyArray<number>, chunkTokens: number, user: string): string[] => {
  const keys: string[] = []
  let previous = JSON.stringify({ user, chunk: chunkTokens })
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
  private readonly keysBy = new Map<string, ReadonlyArray<string>>()

  /** `sequence` holds the chunks of these keys (its prompt's whole chunks, in order). */
  add(sequence: string, keys: ReadonlyArray<string>): void {
    this.remove(sequence)
    this.keysBy.set(sequence, keys)
    for (const key of keys) {
      let set = this.holders.get(key)
      if (!set) this.holders.set(key, (set = new Set()))
      set.add(sequence)
    }
  }

  /** `sequence` holds nothing any more (its chunks are dropped, or it ended). */
  remove(sequence: string): void {
    for (const key of this.keysBy.get(sequence) ?? []) {
      const set = this.holders.get(key)
      set?.delete(sequence)
      if (set?.size === 0) this.holders.delete(key)
    }
    this.keysBy.delete(sequence)
  }

  /** The chunk keys `sequence` holds (none when it holds nothing). */
  keysOf(sequence: string): ReadonlyArray<string> {
    return this.keysBy.get(sequence) ?? []
  }

  /** How many sequences hold the chunk of `key`. */
  refs(key: string): number {
    return this.holders.get(key)?.size ?? 0
  }

  /** Each sequence holding `keys[0]`, with how many of `keys` from the first it holds. */
  runs(keys: ReadonlyArray<string>): Array<{ readonly sequence: string; readonly chunks: number }> {
    return [...(this.holders.get(keys[0] ?? "") ?? [])].map((sequence) => {
      const held = this.keysBy.get(sequence)!
      let chunks = 0
      while (chunks < keys.length && held[chunks] === keys[chunks]) chunks++
      return { sequence, chunks }
    })
  }
}

/**
 * Links into `to` the whole chunks of the longest prefix of `keys` some other holder has
 * sealed on disk in every layer (a holder registers its keys before its prefill seals them,
 * so what counts is the least of its run and its sealed chunks), pointing `to`'s first
 * entries at that holder's bytes. Returns the holder and the chunks linked; undefined when
 * none has any sealed. Synchronous, so no seal, drop or link comes between the count and the link.
 */
export const linkSharedPrefix = (
  index: PrefixIndex,
  store: DiskStore,
  to: string,
  keys: ReadonlyArray<string>,
  layers: number,
): { readonly from: string; readonly chunks: number } | undefined => {
  let best: { from: string; chunks: number } | undefined
  // Longest runs first: once a run is no longer than the best sealed count, none after it can beat it.
  for (const run of index.runs(keys).sort((x, y) => y.chunks - x.chunks)) {
    if (run.chunks <= (best?.chunks ?? 0)) break
    if (run.sequence === to) continue
    let chunks = run.chunks
    for (let l = 0; l < layers && chunks > 0; l++) chunks = Math.min(chunks, store.chunksOf(run.sequence, l).length)
    if (chunks > (best?.chunks ?? 0)) best = { from: run.sequence, chunks }
  }
  if (best) store.linkChunks(best.from, to, Array.from({ length: layers }, () => best.chunks))
  return best
}
