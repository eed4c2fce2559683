// Compression composed with the decode core (issue 13) on the test model (lavapipe): decode's
// compressed GPU slots are filled at the switch from prefill (warm) and take chunks sealed
// during decode straight from the seal's quantizer, so a budget that holds every int4 chunk
// misses none; the pipelined step routes on compressed slots (the route writes attn_decode's
// QUANT entries) with the greedy ids of the unpipelined step at the same compression, with
// the combine and prefetch too.
import { describe, expect, it } from "vitest"
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { useBundledModel } from "./support/bundled-model.ts"
import { runTiered } from "./support/tiered-run.ts"

const bundled = useBundledModel()

const leoam = (extra: object = {}) => ({
  name: "leoam",
  chunking: { fixed: { tokens: 16 } },
  selection: { topk: { budget_tokens: 128, sink_tokens: 16, recent_tokens: 32 } },
  compression: { bits: 4 },
  ...extra,
})

/** Greedy ids and tier stats of `policy` with a GPU budget of `gpu` times the fp16 KV (the host arena holds half). */
const run = async (policy: unknown, ids: ReadonlyArray<number>, maxTokens: number, gpuFraction: number) => ({
  ...(await runTiered(bundled, policy, ids, maxTokens, { gpu: gpuFraction, host: 0.5, name: "quantpipe" })),
  layers: bundled.config.numLayers,
})

describe("compressed GPU slots with the decode core", () => {
  const prompt = () => passKeyPrompt(bundled.tok, 256, passKey(3), 0.4)
  // A budget that holds every int4 chunk (1.2) and one that holds a choice but not every chunk (0.5).
  const runs = new Map<string, ReturnType<typeof run>>()
  const once = (key: string, policy: unknown, gpuFraction: number) => {
    if (!runs.has(key)) runs.set(key, run(policy, prompt().ids, 18, gpuFraction))
    return runs.get(key)!
  }

  it("warms the compressed slots at the switch and admits chunks sealed in decode: a budget holding every int4 chunk misses none", async () => {
    const p = prompt()
    // 18 tokens decoded: with the prompt's, they seal one more 16-token chunk per layer during decode.
    const got = await once("alone", leoam({ pipeline: { enabled: false } }), 1.2)
    const kv = got.kv
    expect(bundled.tok.decode(got.ids)).toContain(p.key)
    const chunks = Math.floor(p.ids.length / 16)
    expect(kv.compression.slot_bits).toBe(4)
    expect(kv.compression.gpu_slots).toBeGreaterThanOrEqual(chunks + 1)
    // Every prefill chunk of every layer went up at the switch, int4 bytes as stored.
    expect(kv.compression.warm.chunks).toBe(got.layers * chunks)
    expect(kv.compression.warm.bytes).toBeGreaterThan(0)
    expect(kv.compression.admitted).toBe(got.layers)
    expect(kv.gpu.hits).toBeGreaterThan(0)
    expect(kv.gpu.misses).toBe(0)
  }, 300_000)

  it("pipelines on compressed slots (route, combine, prefetch) with the unpipelined step's greedy ids", async () => {
    // Every chunk held: every layer is routed and none rewinds.
    const all = await once("piped", leoam({ pipeline: { enabled: true, depth: 2 } }), 1.2)
    const alone = await once("alone", leoam({ pipeline: { enabled: false } }), 1.2)
    expect(all.ids).toEqual(alone.ids)
    expect(all.kv.pipeline.rewinds).toBe(0)
    expect(all.kv.pipeline.layers_routed).toBeGreaterThan(0)
    // Not every chunk held: layers miss, evict, rewind or combine; prefetch loads forecasts.
    const off = await once("off", leoam({ pipeline: { enabled: false } }), 0.5)
    expect(off.kv.gpu.misses).toBeGreaterThan(0)
    const piped = await once("piped-tight", leoam({ pipeline: { enabled: true, depth: 2 }, prefetch: { layers: 1, steps: true } }), 0.5)
    expect(piped.ids).toEqual(off.ids)
    expect(piped.kv.pipeline.layers_routed).toBeGreaterThan(0)
    expect(piped.kv.prefetch?.forecasts).toBeGreaterThan(0)
    expect(piped.kv.prefetch?.failed).toBe(0)
    console.log(JSON.stringify({ alone: alone.kv.gpu, piped: all.kv.pipeline, off: [off.kv.gpu, off.kv.compression], tight: [piped.kv.gpu, piped.kv.pipeline, piped.kv.prefetch] }))
  }, 300_000)
})
