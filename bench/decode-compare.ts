// Decode ms/token of GpuModel at the shapes of a dummy model, for side-by-side runs of two
// trees (scripts/gpu-run.sh compare; BASE=<commit> bash scripts/gpu-bundle.sh builds the
// base's copy): full attention at CONTEXT and quest at LONG, steps pipelined as generation
// runs them (no read-back between steps), 3 rounds after a warm-up, medians.
//   node decode-compare.mjs [PRESET] [CONTEXT] [LONG (0: skip)] [STEPS]
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { type EngineOptions, GpuModel } from "../engine/model.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"

const [preset = "llama-3.1-8b", contextArg = "1024", longArg = "16384", stepsArg = "128"] = process.argv.slice(2)
const gpu = await acquireGpu()
const config = resolveDummyConfig(preset)
const steps = Number(stepsArg)
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const run = async (name: string, context: number, kv: Pick<EngineOptions, "kv">) => {
  const model = await GpuModel.load(gpu, new DummyWeightSource(config), { maxContext: context + 8 * steps + 64, prefillChunk: 1024, ...kv })
  await model.prefill(Array.from({ length: context }, (_, i) => (i * 7919 + 13) % config.vocabSize))
  model.sample({ outSlot: 0, temperature: 0, seed: 0, step: 0 })
  let slot = 0
  const times: number[] = []
  let encodeMs = 0
  for (let round = 0; round < 3; round++) {
    // Warm-up right before timing: the GPU's clock drops after ~0.5 s idle.
    for (let i = 0; i < 8; i++) await model.decode(slot, { outSlot: ++slot, temperature: 0, seed: 0, step: slot })
    await gpu.device.queue.onSubmittedWorkDone()
    const t0 = performance.now()
    let host = 0
    for (let i = 0; i < steps; i++) {
      const h0 = performance.now()
      await model.decode(slot, { outSlot: ++slot, temperature: 0, seed: 0, step: slot })
      host += performance.now() - h0
    }
    await gpu.device.queue.onSubmittedWorkDone()
    times.push((performance.now() - t0) / steps)
    encodeMs = host / steps
  }
  console.log(`${name}: ${times.map((t) => t.toFixed(3)).join(" / ")} ms/token, median ${median(times).toFixed(3)}; host encode ${encodeMs.toFixed(3)} ms/step`)
  model.destroy()
}

await run(`full ${contextArg}`, Number(contextArg), {})
const policy = { budgetTokens: 2048, sinkTokens: 64, recentTokens: 256 }
if (Number(longArg) > 0) await run(`quest ${longArg}`, Number(longArg), { kv: { kind: "quest", policy } })
await releaseGpu()
