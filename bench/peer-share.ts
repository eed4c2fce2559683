// Prefix sharing on the GPU between running lanes (engine/kv/tiered/peers.ts): request A of a
// document + its question decodes; request B of the same document + another question joins it
// (--max-batch 2), links the document's chunks and, on the GPU, copies those A's slots hold
// instead of uploading them from the host arena or disk. Runs the pair twice in fresh nodes,
// peer copies on and off (LEOAM_PEER_COPIES=0), and reports B's time to first token, its
// peer-copied, host-read and uploaded bytes, and whether B got the ids it gets alone.
//
//   npx tsx bench/peer-share.ts --tokens 512 --device cpu                  # this CPU, bundled model
//   npx tsx bench/peer-share.ts --model dummy:llama-3.1-8b --tokens 8192 --device gpu \
//     --host-kv-budget 8GiB --out bench/results/peer-share.json
// No GPU budget by default: under one, a lone lane holds all of it (actors/kv-admission.ts),
// so B would wait for A to end and take its prefix from a hold, with no lane to copy from.
import { writeFileSync } from "node:fs"
import { Command, Option } from "commander"
import { parsePolicyDocument } from "../protocol/policy.ts"
import { adminSubjects, publicSubjects } from "../protocol/subjects.ts"
import { parseSize } from "../cli/sizes.ts"
import { startBenchNode } from "./bench-node.ts"

const opts = new Command("peer-share")
  .option("--model <dir>", "a model directory or dummy:PRESET", new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  .option("--tokens <n>", "document tokens", (v) => Number(v), 512)
  .option("--question <n>", "question tokens", (v) => Number(v), 16)
  .option("--a-tokens <n>", "tokens A generates (it must still decode when B joins)", (v) => Number(v), 64)
  .option("--max-tokens <n>", "tokens B generates", (v) => Number(v), 4)
  .option("--policy <name>", "a tiered policy with fixed chunks", "leoam")
  .option("--gpu-kv-budget <size>", "GPU bytes for KV (default: no limit; under one B waits for A to end)")
  .option("--host-kv-budget <size>", "host arena bytes", "256MiB")
  .addOption(new Option("--device <kind>").choices(["cpu", "gpu", "auto"]).default("auto"))
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts<{ model: string; tokens: number; question: number; aTokens: number; maxTokens: number; policy: string; gpuKvBudget?: string; hostKvBudget: string; device: "cpu" | "gpu" | "auto"; out?: string }>()

const ids = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 10 + ((i * 131 + salt * 17) % 3000))
const doc = ids(opts.tokens, 1)
const a = { ids: [...doc, ...ids(opts.question, 2)], max_tokens: opts.aTokens }
const b = { ids: [...doc, ...ids(opts.question, 3)], max_tokens: opts.maxTokens }

const pair = async (peers: boolean) => {
  process.env.LEOAM_PEER_COPIES = peers ? "1" : "0"
  const bench = await startBenchNode("peer-share", {
    model: opts.model,
    maxContext: opts.tokens + opts.question + opts.aTokens + 64,
    device: opts.device,
    hostKvBudget: parseSize(opts.hostKvBudget),
    ...(opts.gpuKvBudget ? { gpuKvBudget: parseSize(opts.gpuKvBudget) } : {}),
    kvPolicy: parsePolicyDocument(opts.policy),
    maxBatch: 2,
  })
  const ask = bench.ask
  try {
    await ask(publicSubjects.generate, { ids: ids(32, 9), max_tokens: 2 }) // warm-up: pipelines, first run
    const alone = await ask(publicSubjects.generate, b)
    const runA = ask(publicSubjects.generate, a)
    while (((await ask(adminSubjects.stats, {})).batch?.decoding ?? 0) === 0) await new Promise((r) => setTimeout(r, 5))
    const together = await ask(publicSubjects.generate, b)
    await runA
    const stats = (await ask(adminSubjects.stats, {})).batch
    const k = together.kv
    return {
      peers,
      same_ids: JSON.stringify(together.ids) === JSON.stringify(alone.ids),
      cached_tokens: together.usage.cached_tokens ?? 0,
      ttft_ms: together.timings.prefill_ms,
      alone_ttft_ms: alone.timings.prefill_ms,
      peer_copy_bytes: k.gpu.peer_copy_bytes ?? 0,
      host_bytes_read: k.host.bytes_read,
      disk_bytes_read: k.disk.bytes_read,
      upload_bytes: k.compression?.upload_bytes ?? 0,
      transfer_ms: k.time_ms.transfer,
      lanes_left: stats.gpu_peer_copies?.lanes ?? 0,
    }
  } finally {
    await bench.close()
  }
}

const rows = [await pair(true), await pair(false)]
console.log(`model ${opts.model}, policy ${opts.policy}, document ${opts.tokens} tokens, question ${opts.question}, GPU budget ${opts.gpuKvBudget ?? "none"}`)
console.log(["peers", "same ids", "cached", "B TTFT ms", "alone ms", "peer-copied B", "host read B", "uploaded B", "transfer ms", "lanes left"].join("\t"))
for (const r of rows) console.log([r.peers ? "on" : "off", r.same_ids, r.cached_tokens, r.ttft_ms.toFixed(1), r.alone_ttft_ms.toFixed(1), r.peer_copy_bytes, r.host_bytes_read, r.upload_bytes, r.transfer_ms.toFixed(1), r.lanes_left].join("\t"))
if (opts.out) writeFileSync(opts.out, JSON.stringify({ options: opts, rows }, null, 2) + "\n")
if (rows.some((r) => !r.same_ids)) process.exitCode = 1
