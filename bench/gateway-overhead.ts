// The cost of the OpenAI-compatible HTTP gateway: the same requests straight over NATS and
// through the gateway (HTTP -> gateway -> NATS -> scheduler), alternating, on one node in
// this process: GET /v1/models against leoam.v1.models (the fixed cost of a request), and a
// streamed completion against leoam.v1.generate with a stream subject (time to the first
// token and the spacing of tokens as the client sees them). Prints a table, writes JSON.
//   npx tsx bench/gateway-overhead.ts [--model DIR|dummy:PRESET] [--tokens 32] [--runs 5] [--small 200]
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { startHttpGateway } from "../actors/http-gateway.ts"
import { connectNats } from "../actors/nats.ts"
import { startNode } from "../actors/node.ts"
import { publicSubjects } from "../protocol/subjects.ts"

const o = new Command()
  .option("--model <spec>", "a model directory or dummy:PRESET", new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  .option("--prompt-tokens <n>", "prompt length (token ids)", (v) => parseInt(v, 10), 64)
  .option("--tokens <n>", "tokens per completion", (v) => parseInt(v, 10), 32)
  .option("--runs <n>", "completions of each kind", (v) => parseInt(v, 10), 5)
  .option("--small <n>", "models requests of each kind", (v) => parseInt(v, 10), 200)
  .option("--out <file>", "write JSON here")
  .parse()
  .opts()

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]
const kvDir = mkdtempSync(join(tmpdir(), "leoam-bench-gw-"))
const node = await startNode({ actors: ["gpu-executor", "disk-store", "host-cache", "scheduler"], model: o.model, maxContext: o.promptTokens + o.tokens + 8, kvDir, hostKvBudget: 64 << 20 })
const gateway = await startHttpGateway({ natsUrl: node.url, port: 0, modelDir: o.model })
const nc = await connectNats(node.url, "bench-gateway")
const model = (await nc.request(publicSubjects.models, "{}")).json<{ models: Array<{ name: string; vocab_size: number }> }>().models[0]
const ids = Array.from({ length: o.promptTokens }, (_, i) => (i * 7919 + 13) % model.vocab_size)

/** One streamed generate over NATS: ms to the first token event, ms between the others. */
const viaNats = async () => {
  const stream = `bench.gw.${Math.random().toString(36).slice(2)}`
  const arrivals: number[] = []
  const sub = nc.subscribe(stream, { callback: () => void arrivals.push(performance.now()) })
  await nc.flush()
  const t0 = performance.now()
  await nc.request(publicSubjects.generate, JSON.stringify({ ids, max_tokens: o.tokens, temperature: 0, stream }), { timeout: 600_000 })
  const total = performance.now() - t0
  sub.unsubscribe()
  return { first: arrivals[0] - t0, gaps: arrivals.slice(1, o.tokens).map((t, i) => t - arrivals[i]), total }
}

/** The same through POST /v1/completions with stream: true (one SSE chunk per text delta). */
const viaHttp = async () => {
  const t0 = performance.now()
  const res = await fetch(`${gateway.url}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ model: model.name, prompt: ids, max_tokens: o.tokens, temperature: 0, stream: true }),
  })
  const arrivals: number[] = []
  const reader = res.body!.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    const text = new TextDecoder().decode(value)
    for (let i = 0; i < (text.match(/"finish_reason":null/g)?.length ?? 0); i++) arrivals.push(performance.now())
  }
  return { first: arrivals[0] - t0, gaps: arrivals.slice(1).map((t, i) => t - arrivals[i]), total: performance.now() - t0 }
}

const small = { nats: [] as number[], http: [] as number[] }
for (let i = 0; i < o.small; i++) {
  let t = performance.now()
  await nc.request(publicSubjects.models, "{}")
  small.nats.push(performance.now() - t)
  t = performance.now()
  await (await fetch(`${gateway.url}/v1/models`)).json()
  small.http.push(performance.now() - t)
}
await viaNats() // warm-up of the model path
const runs = { nats: [] as Awaited<ReturnType<typeof viaNats>>[], http: [] as Awaited<ReturnType<typeof viaHttp>>[] }
for (let r = 0; r < o.runs; r++) {
  runs.nats.push(await viaNats())
  runs.http.push(await viaHttp())
}

const row = (name: string, xs: Array<{ first: number; gaps: number[]; total: number }>) => ({
  path: name,
  first_token_ms_p50: pct(xs.map((x) => x.first), 0.5),
  token_gap_ms_p50: pct(xs.flatMap((x) => x.gaps), 0.5),
  token_gap_ms_p99: pct(xs.flatMap((x) => x.gaps), 0.99),
  total_ms_p50: pct(xs.map((x) => x.total), 0.5),
})
const result = {
  model: model.name,
  prompt_tokens: o.promptTokens,
  tokens: o.tokens,
  runs: o.runs,
  models_request_ms: { nats_p50: pct(small.nats, 0.5), nats_p99: pct(small.nats, 0.99), http_p50: pct(small.http, 0.5), http_p99: pct(small.http, 0.99), n: o.small },
  completions: [row("nats leoam.v1.generate", runs.nats), row("http /v1/completions", runs.http)],
}
console.log(`model ${model.name}; ${o.promptTokens} prompt tokens, ${o.tokens} generated, ${o.runs} runs each; ${o.small} models requests each`)
console.log(`models request ms   nats p50 ${result.models_request_ms.nats_p50.toFixed(2)} p99 ${result.models_request_ms.nats_p99.toFixed(2)}   http p50 ${result.models_request_ms.http_p50.toFixed(2)} p99 ${result.models_request_ms.http_p99.toFixed(2)}`)
console.log("path                      first token ms  gap p50 ms  gap p99 ms  total ms")
for (const r of result.completions) {
  console.log(`${r.path.padEnd(26)}${r.first_token_ms_p50.toFixed(1).padStart(14)}${r.token_gap_ms_p50.toFixed(2).padStart(12)}${r.token_gap_ms_p99.toFixed(2).padStart(12)}${r.total_ms_p50.toFixed(1).padStart(10)}`)
}
if (o.out) writeFileSync(o.out, JSON.stringify(result, null, 2) + "\n")
await nc.close()
await gateway.stop()
await node.stop()
rmSync(kvDir, { recursive: true, force: true })
process.exit(0)
