// The demo: starts `leoam serve` (all four actors, an embedded nats-server, the bundled
// model), then, as a NATS client would, sends a long-context request — a pass key hidden
// in the middle of ~3000 tokens of text — to leoam.v1.generate and prints the answer.
import { spawn } from "node:child_process"
import { connect } from "@nats-io/transport-node"
import { passKey, passKeyText } from "../bench/passkey.ts"

const tokens = Number(process.argv[2] ?? 3000)
const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const say = (line: string) => process.stdout.write(`[leoam demo] ${line}\n`)

say("starting `leoam serve` (embedded nats-server, bundled model models/tiny-leo-14m)")
const server = spawn(process.execPath, [bin, "serve"], { stdio: ["ignore", "pipe", "inherit"] })
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
  const body = reply.json<{ text?: string; error?: { code: string; message: string }; timings?: { prefill_ms: number; decode_ms_per_token: number } }>()
  if (body.error) throw new Error(`${body.error.code}: ${body.error.message}`)
  const correct = body.text!.trim() === key
  failed = !correct
  say(`answer: ${JSON.stringify(body.text)} ${correct ? "(correct)" : `(WRONG: expected ${key})`} in ${((Date.now() - t0) / 1000).toFixed(1)} s ` +
    `(prefill ${body.timings!.prefill_ms.toFixed(0)} ms, decode ${body.timings!.decode_ms_per_token.toFixed(1)} ms/token)`)
  await nc.close()
} catch (e) {
  failed = true
  say(`FAILED: ${(e as Error).message}`)
} finally {
  server.kill("SIGTERM")
  await new Promise((r) => server.once("exit", r))
}
process.exit(failed ? 1 : 0)
