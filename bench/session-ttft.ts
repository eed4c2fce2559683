// Time to first token of a question to a session against a fresh prefill of the same
// document + question: one in-process leoam node (all actors, a tiered policy, a temporary
// kv-dir), a warm-up generate, a fresh generate of document + question per round (before the
// session exists: with --max-batch above 1 a generate beginning with a stored session's
// document links its chunks), the session's open, then per round the question asked to the
// session twice (with --max-batch above 1 in the open's lane, parked on the session on the
// GPU; with 1, resumed from the tiers, the second finding the host arena warm) and, with
// --max-batch above 1, as a plain generate of document + question, which shares the session's chunks (prefix
// sharing), then the question to the session once more (cold: that generate took the GPU, so
// the session's parked lane was let go and the question resumes it from the tiers). Each
// reply's prefill_ms is its time to first token as the executor measures it;
// the client-side round trip is printed beside it. Checks that every answer is the first
// one's greedy ids. --no-fresh skips the fresh generates (the open's prefill is the
// document's cost then). Prints a table, each request's phases (kv/run-phases.ts: admission,
// lane, resume, first token, decode, close; and the tiered cache's host->GPU, flush and disk
// read spans inside them) and writes JSON with --out. LEOAM_SESSION_PARK=0: no lane stays
// on its session, every question resumes from the tiers (to compare).
//
//   npx tsx bench/session-ttft.ts --tokens 2048                        # this CPU, bundled model
//   npx tsx bench/session-ttft.ts --model dummy:llama-3.1-8b --tokens 32768 --device gpu \
//     --gpu-kv-budget 6GiB --host-kv-budget 8GiB --out bench/results/session-ttft-h200.json
import { writeFileSync } from "node:fs"
import { Command, Option } from "commander"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { publicSubjects, sessionSubjects } from "../protocol/subjects.ts"
import { parseSize } from "../cli/sizes.ts"
import { type RunPhase, setRunPhases } from "../kv/run-phases.ts"
import { setStepTrace, type TraceLane } from "../kv/step-trace.ts"
import { startBenchNode } from "./bench-node.ts"

const opts = new Command("session-ttft")
  .option("--model <dir>", "a model directory or dummy:PRESET", new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  .option("--tokens <n>", "document tokens", (v) => Number(v), 2048)
  .option("--question <n>", "question tokens", (v) => Number(v), 16)
  .option("--max-tokens <n>", "tokens generated per answer", (v) => Number(v), 4)
  .option("--rounds <n>", "rounds (fresh, session, session, shared)", (v) => Number(v), 2)
  .option("--max-batch <n>", "the node's --max-batch (above 1: plain generates share a stored session's chunks)", (v) => Number(v), 1)
  .option("--no-fresh", "skip the fresh generates of document + question")
  .option("--policy <name>", "a tiered policy", "leoam")
  .option("--gpu-kv-budget <size>", "GPU bytes for KV (default: no limit)")
  .option("--host-kv-budget <size>", "host arena bytes", "256MiB")
  .addOption(new Option("--device <kind>").choices(["cpu", "gpu", "auto"]).default("auto"))
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts<{ model: string; tokens: number; question: number; maxTokens: number; rounds: number; maxBatch: number; fresh: boolean; policy: string; gpuKvBudget?: string; hostKvBudget: string; device: "cpu" | "gpu" | "auto"; out?: string }>()

const bench = await startBenchNode("session-ttft", {
  model: opts.model,
  maxContext: opts.tokens + opts.question + opts.maxTokens + 64,
  device: opts.device,
  hostKvBudget: parseSize(opts.hostKvBudget),
  ...(opts.gpuKvBudget ? { gpuKvBudget: parseSize(opts.gpuKvBudget) } : {}),
  kvPolicy: parsePolicyDocument(opts.policy),
  maxBatch: opts.maxBatch,
})
// Where each request's time goes (the node runs in this process): the session run's phases
// (kv/run-phases.ts) and, inside them, the tiered cache's host phases (kv/step-trace.ts), summed.
let phases: Partial<Record<RunPhase | TraceLane | "gpu hits" | "gpu misses" | "gpu prefill hits" | "gpu prefill misses", number>> = {}
setRunPhases((phase, ms) => (phases[phase] = (phases[phase] ?? 0) + ms))
setStepTrace({ span: (lane, t0, t1) => (phases[lane] = (phases[lane] ?? 0) + t1 - t0) })
const ask = async (subject: string, body: unknown) => {
  phases = {}
  const t0 = performance.now()
  const json = await bench.ask(subject, body)
  const ms = performance.now() - t0
  // The chunks the lane's GPU slots held, and those it uploaded (or copied from a peer): decode's choices, and prefill's windows apart.
  if (json.kv) Object.assign(phases, { "gpu hits": json.kv.gpu.hits, "gpu misses": json.kv.gpu.misses, "gpu prefill hits": json.kv.gpu.prefill_hits ?? 0, "gpu prefill misses": json.kv.gpu.prefill_misses ?? 0 })
  return { json, ms, phases }
}
const ids = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 10 + ((i * 131 + salt * 17) % 3000))
const rows: Array<{ what: string; prefill_ms: number; round_trip_ms: number; same_ids?: boolean; cached_tokens?: number; phases_ms?: typeof phases }> = []
try {
  await ask(publicSubjects.generate, { ids: ids(32, 9), max_tokens: 2 }) // warm-up: pipelines, first run
  const doc = ids(opts.tokens, 1)
  const questions = Array.from({ length: opts.rounds }, (_, r) => ids(opts.question, 100 + r))
  /** Each round's first answer: the fresh generate's, else the session's first. */
  const first: Array<string | undefined> = questions.map(() => undefined)
  const same = (r: number, got: ReadonlyArray<number>) => (first[r] ??= JSON.stringify(got)) === JSON.stringify(got)
  if (opts.fresh) {
    for (const [r, q] of questions.entries()) {
      const fresh = await ask(publicSubjects.generate, { ids: [...doc, ...q], max_tokens: opts.maxTokens })
      same(r, fresh.json.ids)
      rows.push({ what: `generate, document + question (round ${r + 1})`, prefill_ms: fresh.json.timings.prefill_ms, round_trip_ms: fresh.ms, phases_ms: fresh.phases })
    }
  }
  const opened = await ask(sessionSubjects.open, { ids: doc })
  rows.push({ what: `session.open (${opts.tokens} tokens)`, prefill_ms: opened.json.prefill_ms, round_trip_ms: opened.ms, phases_ms: opened.phases })
  for (const [r, q] of questions.entries()) {
    for (const k of [1, 2]) {
      const s = await ask(sessionSubjects.generate, { session: opened.json.session, ids: q, max_tokens: opts.maxTokens })
      rows.push({ what: `session.generate #${k} (round ${r + 1})`, prefill_ms: s.json.timings.prefill_ms, round_trip_ms: s.ms, same_ids: same(r, s.json.ids), phases_ms: s.phases })
    }
    if (opts.maxBatch > 1) {
      const shared = await ask(publicSubjects.generate, { ids: [...doc, ...q], max_tokens: opts.maxTokens })
      const cached = shared.json.usage.cached_tokens as number | undefined
      rows.push({ what: `generate, shared prefix (round ${r + 1})`, prefill_ms: shared.json.timings.prefill_ms, round_trip_ms: shared.ms, same_ids: same(r, shared.json.ids), ...(cached ? { cached_tokens: cached } : {}), phases_ms: shared.phases })
      // That generate took the GPU: the session's lane was let go, so this question resumes it from the tiers.
      const cold = await ask(sessionSubjects.generate, { session: opened.json.session, ids: q, max_tokens: opts.maxTokens })
      rows.push({ what: `cold: session.generate after it (round ${r + 1})`, prefill_ms: cold.json.timings.prefill_ms, round_trip_ms: cold.ms, same_ids: same(r, cold.json.ids), phases_ms: cold.phases })
    }
  }
} finally {
  await bench.close()
}
const of = (prefix: string) => rows.filter((r) => r.what.startsWith(prefix)).map((r) => r.prefill_ms)
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
// The document's cost: a fresh generate of document + question, else the session's open.
const fresh = opts.fresh ? of("generate, document") : of("session.open")
const session = of("session.generate")
const shared = of("generate, shared")
console.log(`model ${opts.model}, policy ${opts.policy}, document ${opts.tokens} tokens, question ${opts.question}, --max-batch ${opts.maxBatch}`)
console.log("what".padEnd(48), "TTFT ms".padStart(10), "round trip ms".padStart(14), " same ids", " cached")
for (const r of rows) console.log(r.what.padEnd(48), r.prefill_ms.toFixed(1).padStart(10), r.round_trip_ms.toFixed(1).padStart(14), r.same_ids === undefined ? "" : ` ${r.same_ids}`, r.cached_tokens ?? "")
console.log("phases, ms (host->GPU, flush and disk read are spans inside them, summed over layers):")
for (const r of rows) console.log(" ", r.what.padEnd(46), Object.entries(r.phases_ms ?? {}).map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toFixed(1)}`).join(", "))
const first = opts.fresh ? "fresh" : "open"
console.log(`median TTFT: ${first} ${median(fresh).toFixed(1)} ms, session ${median(session).toFixed(1)} ms: ${(median(fresh) / median(session)).toFixed(1)}x`)
if (shared.length > 0) console.log(`median TTFT of a generate sharing the session's prefix: ${median(shared).toFixed(1)} ms: ${(median(fresh) / median(shared)).toFixed(1)}x`)
const cold = of("cold:")
if (cold.length > 0) console.log(`median TTFT of a session question after another run (its lane let go, resumed from the tiers): ${median(cold).toFixed(1)} ms: ${(median(fresh) / median(cold)).toFixed(1)}x`)
if (opts.out) {
  const sharedSpeedup = shared.length > 0 ? { shared_speedup: median(fresh) / median(shared), cold_speedup: median(fresh) / median(cold) } : {}
  writeFileSync(opts.out, JSON.stringify({ options: opts, rows, speedup: median(fresh) / median(session), ...sharedSpeedup }, null, 2) + "\n")
}
