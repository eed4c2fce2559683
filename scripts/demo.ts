// The demo: starts `leoam serve` (all four actors, an embedded nats-server, the bundled
// model), then, as a NATS client would, sends a long-context request — a pass key hidden
// in the middle of ~3000 tokens of text — to leoam.v1.generate and prints the answer.
// The server runs the leoam KV policy with a GPU budget of about a quarter of the request's
// KV and a host arena of a quarter: the rest of the cache lives on disk (a temporary
// --kv-dir), and the reply's `kv` says what each tier served. Then it changes the KV policy
// live over leoam.v1.admin.policy.set and prints the node's leoam.v1.admin.stats.
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { connect } from "@nats-io/transport-node"
import { passKey, passKeyText } from "../bench/passkey.ts"
import { formatStats } from "../cli/admin.ts"
import type { AdminStatsReply } from "../protocol/admin.ts"

const tokens = Number(process.argv[2] ?? 3000)
const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const say = (line: string) => process.stdout.write(`[leoam demo] ${line}\n`)

const kvDir = mkdtempSync(join(tmpdir(), "leoam-demo-kv-"))
// The default --max-batch 4: the lone request's lane gets the whole GPU budget (the budget is
// split by the lanes in use, and 3 MiB holds 2 lanes of the 1.28 MiB a leoam lane needs here).
// A 4K context (the prompt's 3K and the answer): the budget also holds the chunk abstracts of
// the whole context, 520 KiB at 4K where the model's 16K would take 2 MiB of the 3.
const flags = ["--kv-policy", "leoam", "--gpu-kv-budget", "3MiB", "--host-kv-budget", "3MiB", "--max-context", "4096", "--kv-dir", kvDir]
say(`starting \`leoam serve ${flags.join(" ")}\` (embedded nats-server, bundled model models/tiny-leo-14m)`)
const server = spawn(process.execPath, [bin, "serve", ...flags], { stdio: ["ignore", "pipe", "inherit"] })
const url = await new Promise<string>((resolve, reject) => {
  let out = ""
  server.stdout!.on("data", (d) => {
    out += String(d)
    const m = /ready on (nats:\/\/\S+)/.exec(out)
    if (m) resolve(m[1])
  })
  server.once("exit", (code) => reject(new Error(`leoam serve exited (${code}) before it was ready`)))
})
say(`service up on ${url}`)
let failed = false
try {
  const nc = await connect({ servers: url })
  const key = passKey(1)
  const prompt = passKeyText(tokens, key, 0.5)
  const count = (await nc.request("leoam.v1.tokenize", JSON.stringify({ text: prompt }), { timeout: 30_000 })).json<{ count: number }>().count
  say(`request: leoam.v1.generate, ${count} prompt tokens, pass key ${key} hidden at 50% depth`)
  say(`prompt ends: ...${JSON.stringify(prompt.slice(-60))}`)
  const t0 = Date.now()
  const reply = await nc.request("leoam.v1.generate", JSON.stringify({ prompt, max_tokens: 8, stop: ["."] }), { timeout: 900_000 })
  const body = reply.json<{
    text?: string
    error?: { code: string; message: string }
    timings?: { prefill_ms: number; decode_ms_per_token: number }
    kv?: { gpu: { hits: number; misses: number }; host: { hits: number; bytes_read: number }; disk: { hits: number; bytes_read: number; bytes_written: number }; tokens_selected_per_step: number }
  }>()
  if (body.error) throw new Error(`${body.error.code}: ${body.error.message}`)
  const correct = body.text!.trim() === key
  failed = !correct
  say(`answer: ${JSON.stringify(body.text)} ${correct ? "(correct)" : `(WRONG: expected ${key})`} in ${((Date.now() - t0) / 1000).toFixed(1)} s ` +
    `(prefill ${body.timings!.prefill_ms.toFixed(0)} ms, decode ${body.timings!.decode_ms_per_token.toFixed(1)} ms/token)`)
  const kv = body.kv
  if (kv) {
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`
    say(`kv: GPU chunk hits ${kv.gpu.hits}, misses ${kv.gpu.misses}; host served ${kv.host.hits} (${mib(kv.host.bytes_read)}); ` +
      `disk served ${kv.disk.hits} (${mib(kv.disk.bytes_read)}), wrote ${mib(kv.disk.bytes_written)}; ${kv.tokens_selected_per_step.toFixed(0)} tokens attended per decode step`)
  }
  // The admin side (no access control here: see README, "Live policies, stats and access control").
  const set = (await nc.request("leoam.v1.admin.policy.set", JSON.stringify({ policy: { name: "leoam", eviction: "lfu", selection: { topk: { budget_fraction: 0.2 } } }, reason: "demo" }), { timeout: 30_000 })).json<{ version: number; applies: string; error?: { code: string; message: string } }>()
  if (set.error) throw new Error(`admin.policy.set: ${set.error.code}: ${set.error.message}`)
  say(`admin: leoam.v1.admin.policy.set {leoam, eviction lfu, 20 % budget} -> version ${set.version}, applies at the ${set.applies.replace("_", " ")}`)
  const stats = (await nc.request("leoam.v1.admin.stats", "{}", { timeout: 30_000 })).json<AdminStatsReply>()
  say(`admin: leoam.v1.admin.stats (what \`leoam stats\` shows):\n${formatStats(stats)}`)
  await nc.close()
} catch (e) {
  failed = true
  say(`FAILED: ${(e as Error).message}`)
} finally {
  server.kill("SIGTERM")
  await new Promise((r) => server.once("exit", r))
  rmSync(kvDir, { recursive: true, force: true })
}
process.exit(failed ? 1 : 0)
