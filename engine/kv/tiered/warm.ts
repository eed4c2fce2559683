// The order a layer's chunks fill decode's compressed GPU slots at the switch from prefill
// (GpuCache.warm): the slots hold more chunks than prefill's fp16 ones in the same bytes
// (int4: about 3.5x), often the whole context, so they are filled at once instead of miss by
// miss. First the sink chunks (every step attends them), then the chunks with a known
// importance (the host arena's score, set where decode attended them: a session's earlier
// turns), highest first, then the rest newest first (the recent window is attended every
// step; recency stands in for importance where none is known, as after a prefill).

/** Chunk numbers of a layer (its chunk table's starts) in fill order: sink, then by known importance, then newest first. */
export const warmOrder = (layer: { readonly starts: ArrayLike<number> }, sinkTokens: number, scoreOf: (chunk: number) => number): number[] => {
  const n = layer.starts.length
  const sink: number[] = []
  const scored: Array<{ chunk: number; score: number }> = []
  const rest: number[] = []
  for (let ch = n - 1; ch >= 0; ch--) {
    if (layer.starts[ch] < sinkTokens) sink.push(ch)
    else {
      const score = scoreOf(ch)
      if (score > 0) scored.push({ chunk: ch, score })
      else rest.push(ch)
    }
  }
  sink.reverse()
  // A stable sort: equal scores stay newest first.
  scored.sort((a, b) => b.score - a.score)
  return [...sink, ...scored.map((s) => s.chunk), ...rest]
}
