// Live re-sharing of the GPU budget (actors/lane-reshare.ts): request A decodes alone under
// --gpu-kv-budget (its lane holds the whole budget); request B arrives while A decodes. With
// re-sharing, A's lane moves to half the budget at the next step boundary and B starts on the
// other half; without it (LEOAM_RESHARE=0) B waits for A to end. Runs the pair in fresh nodes,
// on and off, and reports B's wall time and first token (send to first token, from its reply's
// decode rate), whether B answered before A, A's decode rate against alone, the moves and
// their time, and whether both got the ids they get alone.
//
//   npx tsx bench/reshare-bench.ts --device cpu --gpu-kv-budget 3MiB      # this CPU, bundled model
//   npx tsx bench/reshare-bench.ts --model dummy:llama-3.1-8b --tokens 8192 --a-tokens 128 \
//     --gpu-kv-budget 6GiB --host-kv-budget 8GiB --device gpu --out bench/results/reshare.json
import { writeFileSync } from "node:fs"
import { Command, Option } from "commander"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects } from "../protocol/subjects.ts"
import { parseSize } from "../cli/sizes.ts"
import { startBenchNode } from "./bench-node.ts"

const opts = new Command("reshare-bench")
  .option("--model <dir>", "a model directory or dummy:PRESET", new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  .option("--tokens <n>", "A's prompt tokens", (v) => Number(v), 200)
  .option("--b-tokens <n>", "B's prompt tokens", (v) => Number(v), 64)
  .option("--a-tokens <n>", "tokens A generates (it must still decode when B arrives)", (v) => Number(v), 48)
  .option("--max-tokens <n>", "tokens B generates", (v) => Number(v), 4)
  .option("--policy <name>", "a tiered policy, by name or as a JSON document (e.g. '{\"name\":\"leoam\",\"compression\":{\"bits\":8}}')", "leoam")
  .option("--gpu-kv-budget <size>", "GPU bytes for KV, shared by the lanes", "3MiB")
  .option("--host-kv-budget <size>", "host arena bytes", "256MiB")
  .addOption(new Option("--device <kind>").choices(["cpu", "gpu", "auto"]).default("auto"))
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts<{ model: string; tokens: number; bTokens: number; aTokens: number; maxTokens: number; policy: string; gpuKvBudget: string; hostKvBudget: string; device: "cpu" | "gpu" | "auto"; out?: string }>()

const ids = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 10 + ((i * 131 + salt * 17) % 3000))
const a = { ids: ids(opts.tokens, 1), max_tokens: opts.aTokens }
const b = { ids: ids(opts.bTokens, 2), max_tokens: opts.maxTokens }

const pair = async (reshare: boolean) => {
  process.env.LEOAM_RESHARE = reshare ? "1" : "0"
  const bench = await startBenchNode("reshare", {
    model: opts.model,
    maxContext: Math.max(opts.tokens + opts.aTokens, opts.bTokens + opts.maxTokens) + 64,
    device: opts.device,
    hostKvBudget: parseSize(opts.hostKvBudget),
    gpuKvBudget: parseSize(opts.gpuKvBudget),
    kvPolicy: parsePolicyDocument(opts.policy.startsWith("{") ? JSON.parse(opts.policy) : opts.policy),
    maxBatch: 2,
  })
  const ask = bench.ask
  try {
    await ask(publicSubjects.generate, { ids: ids(32, 9), max_tokens: 2 }) // warm-up: pipelines, first run
    const aloneA = await ask(publicSubjects.generate, a)
    const aloneB = await ask(publicSubjects.generate, b)
    const before = (await ask(adminSubjects.stats, {})).batch.gpu_shares?.reshares ?? { shrunk: 0, grown: 0, ms: 0 }
    let aDone = 0
    const runA = ask(publicSubjects.generate, a).then((r) => ((aDone = performance.now()), r))
    while (((await ask(adminSubjects.stats, {})).batch?.decoding ?? 0) === 0) await new Promise((r) => setTimeout(r, 5))
    const sent = performance.now()
    const together = await ask(publicSubjects.generate, b)
    const bDone = performance.now()
    const withA = await runA
    const after = (await ask(adminSubjects.stats, {})).batch.gpu_shares?.reshares ?? { shrunk: 0, grown: 0, ms: 0 }
    const wall = bDone - sent
    return {
      reshare,
      same_ids: JSON.stringify(together.ids) === JSON.stringify(aloneB.ids) && JSON.stringify(withA.ids) === JSON.stringify(aloneA.ids),
      b_wall_ms: wall,
      b_first_token_ms: wall - Math.max(0, together.ids.length - 1) * together.timings.decode_ms_per_token,
      b_alone_ttft_ms: aloneB.timings.prefill_ms,
      b_before_a: aDone === 0 || bDone < aDone,
      b_budget_bytes: together.kv.gpu.budget_bytes,
      a_ms_per_token: withA.timings.decode_ms_per_token,
      a_alone_ms_per_token: aloneA.timings.decode_ms_per_token,
      shrunk: after.shrunk - before.shrunk,
      grown: after.grown - before.grown,
      move_ms: after.ms - before.ms,
    }
  } finally {
    await bench.close()
  }
}

const rows = [await pair(true), await pair(false)]
console.log(`model ${opts.model}, policy ${opts.policy}, A ${opts.tokens}+${opts.aTokens} tokens, B ${opts.bTokens}+${opts.maxTokens}, GPU budget ${opts.gpuKvBudget}`)
console.log(["reshare", "same ids", "B wall ms", "B 1st token ms", "B alone TTFT", "B before A", "B budget", "A ms/tok", "A alone", "shrunk", "grown", "move ms"].join("\t"))
for (const r of rows) console.log([r.reshare ? "on" : "off", r.same_ids, r.b_wall_ms.toFixed(0), r.b_first_token_ms.toFixed(0), r.b_alone_ttft_ms.toFixed(0), r.b_before_a, r.b_budget_bytes, r.a_ms_per_token.toFixed(1), r.a_alone_ms_per_token.toFixed(1), r.shrunk, r.grown, r.move_ms.toFixed(1)].join("\t"))
if (opts.out) writeFileSync(opts.out, JSON.stringify({ options: opts, rows }, null, 2) + "\n")
if (rows.some((r) => !r.same_ids)) process.exitCode = 1
