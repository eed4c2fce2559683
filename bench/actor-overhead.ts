// The cost of the actor system (issue 3): decode ms/token of a direct engine call versus
// the same request through NATS and the actors (client -> scheduler -> gpu-executor,
// one token event per step -> scheduler -> the client's stream subject), side by side in
// one run on one device, same model and inputs. The actor figure is what the client sees:
// the spacing of token arrivals on its stream subject. Prints a table, writes JSON.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { connectNats } from "../actors/nats.ts"
import { startNode } from "../actors/node.ts"
import { acquireGpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { openHfModel } from "../models/safetensors.ts"

const o = new Command()
  .option("--model <spec>", "dummy:PRESET or a model directory", "dummy:llama-3.1-8b")
  .option("--context <n>", "prompt tokens", (v) => parseInt(v, 10), 1024)
  .option("--tokens <n>", "tokens generated per run", (v) => parseInt(v, 10), 128)
  .option("--runs <n>", "runs of each kind (alternating)", (v) => parseInt(v, 10), 7)
  .option("--out <file>", "write JSON here")
  .parse()
  .opts()

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const openWeights = () => (o.model.startsWith("dummy:") ? new DummyWeightSource(resolveDummyConfig(o.model.slice(6))) : openHfModel(o.model))
const config = openWeights().config
const prompt = Array.from({ length: o.context }, (_, i) => (i * 7919 + 13) % config.vocabSize)
const maxContext = o.context + o.tokens + 8
const gpu = await acquireGpu()
console.log(`device: ${gpu.adapterName}; model ${o.model}; ${o.context} prompt tokens, ${o.tokens} generated, ${o.runs} runs each`)

// Both paths hold the same model on the same GPU at once, and the runs alternate
// (direct, actors, direct, ...), so that clock and memory state are shared fairly.
const directModel = await GpuModel.load(gpu, openWeights(), { maxContext })
const kvDir = mkdtempSync(join(tmpdir(), "leoam-bench-kv-"))
const node = await startNode({ actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"], model: o.model, maxContext, kvDir, hostKvBudget: 64 << 20 })
const nc = await connectNats(node.url, "bench-client")
const direct: number[] = []
const viaActors: number[] = []
const executorSide: number[] = []
const request = async (tokens: number) => {
  const arrivals: number[] = []
  const subject = `bench.stream.${Math.random().toString(36).slice(2)}`
  const sub = nc.subscribe(subject, { callback: (_e, m) => void (m.json<{ done: boolean }>().done ? undefined : arrivals.push(performance.now())) })
  const reply = await nc.request("leoam.v1.generate", JSON.stringify({ ids: prompt, max_tokens: tokens, stream: subject }), { timeout: 600_000 })
  sub.unsubscribe()
  const body = reply.json<{ ids: number[]; timings: { decode_ms_per_token: number }; error?: unknown }>()
  if (body.error) throw new Error(JSON.stringify(body.error))
  return { arrivals, body }
}
await generate(directModel, prompt, { maxTokens: 16, temperature: 0 }) // warm-up of both
await request(16)
for (let r = 0; r < o.runs; r++) {
  const res = await generate(directModel, prompt, { maxTokens: o.tokens, temperature: 0 })
  direct.push(res.timings.decodeMsPerToken)
  const { arrivals, body } = await request(o.tokens)
  viaActors.push((arrivals[arrivals.length - 1] - arrivals[0]) / (arrivals.length - 1))
  executorSide.push(body.timings.decode_ms_per_token)
}
await nc.close()
directModel.destroy()
await node.stop()
rmSync(kvDir, { recursive: true, force: true })

const d = median(direct)
const a = median(viaActors)
console.log("\n| path | decode ms/token (median of runs) |\n| --- | --- |")
console.log(`| direct engine call | ${d.toFixed(3)} |`)
console.log(`| through NATS + actors, as the client sees tokens arrive | ${a.toFixed(3)} |`)
console.log(`| (inside the gpu-executor, for reference) | ${median(executorSide).toFixed(3)} |`)
console.log(`\nratio actors / direct: ${(a / d).toFixed(4)}`)
const result = { date: new Date().toISOString(), device: gpu.adapterName, argv: process.argv.slice(2), direct, viaActors, executorSide, ratio: a / d }
if (o.out) writeFileSync(o.out, JSON.stringify(result, null, 2))
process.exit(0)
