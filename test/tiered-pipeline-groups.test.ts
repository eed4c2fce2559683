// The pipelined step with group abstracts (issue 13 §1 with §4) on the test model (lavapipe):
// a routed layer's grouped choice (groups scored and kept, their chunks listed, scored and
// selected) runs on the GPU with no read-back between its passes, so the pipeline no longer
// turns itself off where groups are on. Same greedy tokens as the unpipelined step at the same
// policy, the pass key found, and the chunks scored counted from what the GPU scored. Budgeted
// abstracts (fetched from LMDB by the host) still go the unpipelined way (pipeline depth 0).
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { useBundledModel } from "./support/bundled-model.ts"
import { runTiered } from "./support/tiered-run.ts"

const bundled = useBundledModel()

// 256 tokens in 16-token chunks: 16 a layer in 8 groups of 2, of which a step keeps 5 (twice the ~5 chunks the budget chooses, in groups).
const leoam = (extra: object = {}) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  abstracts: { gpu_resident: "all", group_chunks: 2 },
  ...extra,
})

const run = (policy: unknown, ids: ReadonlyArray<number>, maxTokens: number) =>
  // A GPU cache that holds a choice but not every chunk, a host arena of half the KV: layers miss, some reads go to disk.
  runTiered(bundled, policy, ids, maxTokens, { gpu: 1.2, host: 0.5, name: "pipe-groups" })

describe("pipelined step with group abstracts", () => {
  it("routes grouped choices chosen on the GPU alone, with the tokens of the unpipelined step and honest scoring counts", async () => {
    const prompt = passKeyPrompt(bundled.tok, 256, passKey(5), 0.4)
    const off = await run(leoam({ pipeline: { enabled: false } }), prompt.ids, 6)
    expect(bundled.tok.decode(off.ids)).toContain(prompt.key)
    const scoring = off.kv.abstract_scoring
    expect(scoring.groups_scored_per_step).toBeGreaterThan(0)
    expect(off.kv.pipeline.layers_routed).toBe(0)

    // Pipelined with the combine: layers that missed last are routed and combined, the others run
    // ahead one layer (a miss rewinds them). The tokens and the GPU cache's hits and misses are the unpipelined step's.
    const piped = await run(leoam({ pipeline: { enabled: true, depth: 1 } }), prompt.ids, 6)
    expect(piped.ids).toEqual(off.ids)
    expect([piped.kv.gpu.hits, piped.kv.gpu.misses]).toEqual([off.kv.gpu.hits, off.kv.gpu.misses])
    const p = piped.kv.pipeline
    expect(p.depth).toBe(1)
    expect(p.layers_routed).toBeGreaterThan(0)
    // Scoring counted from the GPU's own count: the unpipelined step's, plus the layers computed
    // again after a rewind (the rewound layer itself keeps its choice), each scoring its groups
    // (at most 8) and the chunks of the groups it keeps (at most 5 of 2).
    const steps = piped.kv.steps
    expect(steps).toBe(off.kv.steps)
    const again = p.layers_rewound - p.rewinds
    const g = piped.kv.abstract_scoring
    expect(g.groups_scored_per_step * steps).toBeGreaterThanOrEqual(scoring.groups_scored_per_step * steps + again * 7)
    expect(g.groups_scored_per_step * steps).toBeLessThanOrEqual(scoring.groups_scored_per_step * steps + again * 8)
    expect(g.chunks_scored_per_step * steps).toBeGreaterThanOrEqual(scoring.chunks_scored_per_step * steps)
    expect(g.chunks_scored_per_step * steps).toBeLessThanOrEqual(scoring.chunks_scored_per_step * steps + again * 10)
  }, 600_000)
})
