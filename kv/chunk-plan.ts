// Adaptive chunk boundaries (LeoAM's IAKM): where a layer's attention concentrates, small
// chunks, so that choosing one brings few tokens along; over attention "deserts", large ones,
// so that few abstracts cover them. Input: the attention mass each 16-token block of the
// tokens to seal received at prefill (any scale: only ratios count), from the first unsealed
// block. Output: the sizes of the chunks to cut, in order, each of min..max tokens in whole
// blocks. Pure; the caller keeps blocks past the last planned chunk unsealed (fewer than a
// minimum chunk, or what the next pass will measure again).
//
// Rule: a block is hot when its mass exceeds HOT_FACTOR times the mean block mass. A chunk
// takes its first min blocks, then grows block by block up to max over blocks that are not
// hot, as long as it holds no hot block. Hot spots thus end up in chunks of min tokens and
// everything else (uniform attention included: no block stands out) in chunks of max tokens,
// cut short only before a hot block. A chunk also ends where the measured blocks end (a
// prefill pass's last tokens): chunks never wait for tokens not yet seen.

export interface AdaptiveChunking {
  readonly minTokens: number
  readonly maxTokens: number
}

/** A block is hot above this many times the mean block mass. */
export const HOT_FACTOR = 2

/** The mass above which a block is hot: HOT_FACTOR times the mean over these blocks. */
export const hotBound = (mass: ArrayLike<number>): number => {
  let total = 0
  for (let i = 0; i < mass.length; i++) total += mass[i]
  return mass.length === 0 ? 0 : (HOT_FACTOR * total) / mass.length
}

/**
 * The chunk sizes (tokens) to cut from blocks of `blockTokens` tokens whose attention masses
 * are `mass`, under `bounds` (multiples of blockTokens, min <= max). Chunks cover a prefix
 * of the blocks; what is left is less than a minimum chunk. `small(i)` marks blocks to keep in
 * minimum chunks whatever their mass (the caller's sink and recent windows, attended anyway).
 */
export const planChunks = (mass: ArrayLike<number>, blockTokens: number, bounds: AdaptiveChunking, small: (block: number) => boolean = () => false): number[] => {
  const minB = bounds.minTokens / blockTokens
  const maxB = bounds.maxTokens / blockTokens
  if (!Number.isInteger(minB) || !Number.isInteger(maxB) || minB < 1 || maxB < minB) {
    throw new RangeError(`adaptive chunking wants block multiples with min <= max, not ${bounds.minTokens}..${bounds.maxTokens} over ${blockTokens}-token blocks`)
  }
  const bound = hotBound(mass)
  const sizes: number[] = []
  let at = 0
  while (mass.length - at >= minB) {
    let hot = false
    const isHot = (i: number) => mass[i] > bound || small(i)
    for (let i = at; i < at + minB; i++) hot ||= isHot(i)
    let blocks = minB
    if (!hot) while (blocks < maxB && at + blocks < mass.length && !isHot(at + blocks)) blocks++
    sizes.push(blocks * blockTokens)
    at += blocks
  }
  return sizes
}
