// A load generator (issue 14 §1) against a running node over NATS: generate requests arrive
// as a Poisson process (`--rate` per second), with prompt and output lengths drawn from
// mixed lists, each streaming its tokens so that time to first token (TTFT) and the gaps
// between tokens (inter-token latency, ITL) are measured where a client sees them. Reports
// throughput (generated tokens per second of wall time), TTFT and ITL p50 / p99; writes
// JSON (--out) and an SVG plot (--svg: tokens over time, and each request's TTFT).
// Prompts are token ids (random words of the vocabulary, seeded), so no tokenizer is needed.
import { writeFileSync } from "node:fs"
import { Command } from "commander"
import { connectNats } from "../actors/nats.ts"
import { publicSubjects } from "../protocol/subjects.ts"
import { seededUniform } from "../engine/sampling.ts"

const list = (v: string) => v.split(",").map(Number)
const o = new Command()
  .option("--nats-url <url>", "the node's NATS", "nats://127.0.0.1:4222")
  .option("--requests <n>", "requests to send", (v) => Number(v), 24)
  .option("--rate <r>", "mean arrivals per second (Poisson)", (v) => Number(v), 1)
  .option("--prompt-lens <list>", "prompt lengths in tokens, drawn uniformly", "16,64,256")
  .option("--output-lens <list>", "max_tokens, drawn uniformly", "16,48")
  .option("--vocab <n>", "prompt ids are drawn below this", (v) => Number(v), 4000)
  .option("--seed <n>", "arrivals, lengths and prompts", (v) => Number(v), 1)
  .option("--timeout-s <s>", "per request", (v) => Number(v), 600)
  .option("--label <text>", "names the run in the outputs", "")
  .option("--out <file>", "write the results as JSON")
  .option("--svg <file>", "write a plot")
  .parse()
  .opts()

interface Sample {
  readonly sentAt: number // ms since start
  readonly prompt: number
  readonly maxTokens: number
  firstTokenAt?: number
  tokenTimes: number[]
  tokens: number
  doneAt?: number
  error?: string
}

let draw = 0
const uniform = () => seededUniform(o.seed, draw++)
const pick = <T>(xs: ReadonlyArray<T>): T => xs[Math.floor(uniform() * xs.length)]!
const percentile = (xs: ReadonlyArray<number>, p: number): number | null => {
  if (xs.length === 0) return null
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
}

const nc = await connectNats(o.natsUrl, "leoam-load-gen")
const enc = new TextEncoder()
const t0 = performance.now()
const now = () => performance.now() - t0
const samples: Sample[] = []

const send = async (i: number, prompt: number, maxTokens: number): Promise<void> => {
  const sample: Sample = { sentAt: now(), prompt, maxTokens, tokenTimes: [], tokens: 0 }
  samples.push(sample)
  const stream = `_INBOX.leoam-load.${process.pid}.${i}`
  const sub = nc.subscribe(stream, {
    callback: (_e, m) => {
      const e = m.json<{ index?: number; done?: boolean; prefill?: unknown }>()
      if (e.prefill !== undefined || e.done || e.index === undefined) return
      const t = now()
      sample.firstTokenAt ??= t
      sample.tokenTimes.push(t)
    },
  })
  const ids = Array.from({ length: prompt }, () => 10 + Math.floor(uniform() * (o.vocab - 10)))
  try {
    const reply = await nc.request(publicSubjects.generate, enc.encode(JSON.stringify({ ids, max_tokens: maxTokens, stream })), { timeout: o.timeoutS * 1000 })
    const error = reply.headers?.get("Nats-Service-Error-Code")
    if (error) sample.error = error
    else sample.tokens = reply.json<{ ids: number[] }>().ids.length
  } catch (e) {
    sample.error = (e as Error).message
  } finally {
    sample.doneAt = now()
    sub.unsubscribe()
  }
}

// Poisson arrivals: exponential gaps of mean 1 / rate.
const inFlight: Array<Promise<void>> = []
for (let i = 0, at = 0; i < o.requests; i++) {
  const prompt = pick(list(o.promptLens))
  const maxTokens = pick(list(o.outputLens))
  const wait = at - now()
  if (wait > 0) await new Promise((r) => setTimeout(r, wait))
  inFlight.push(send(i, prompt, maxTokens))
  at += (-Math.log(1 - uniform()) / o.rate) * 1000
}
await Promise.all(inFlight)
const wall = Math.max(...samples.map((s) => s.doneAt ?? 0))
await nc.close()

const ok = samples.filter((s) => !s.error)
const ttft = ok.flatMap((s) => (s.firstTokenAt !== undefined ? [s.firstTokenAt - s.sentAt] : []))
const itl = ok.flatMap((s) => s.tokenTimes.slice(1).map((t, i) => t - s.tokenTimes[i]!))
const tokens = ok.reduce((n, s) => n + s.tokens, 0)
const summary = {
  label: o.label,
  requests: samples.length,
  errors: samples.length - ok.length,
  error_codes: [...new Set(samples.flatMap((s) => (s.error ? [s.error] : [])))],
  generated_tokens: tokens,
  wall_s: wall / 1000,
  tokens_per_s: tokens / (wall / 1000),
  ttft_ms: { p50: percentile(ttft, 0.5), p99: percentile(ttft, 0.99) },
  itl_ms: { p50: percentile(itl, 0.5), p99: percentile(itl, 0.99) },
  settings: { rate: o.rate, prompt_lens: list(o.promptLens), output_lens: list(o.outputLens), seed: o.seed },
}
const f = (x: number | null) => (x === null ? "-" : x.toFixed(1))
console.log(
  `${o.label ? `${o.label}: ` : ""}${summary.requests} requests (${summary.errors} errors), ${tokens} tokens in ${summary.wall_s.toFixed(1)} s: ` +
    `${summary.tokens_per_s.toFixed(2)} tokens/s; TTFT p50 ${f(summary.ttft_ms.p50)} p99 ${f(summary.ttft_ms.p99)} ms; ITL p50 ${f(summary.itl_ms.p50)} p99 ${f(summary.itl_ms.p99)} ms`,
)
if (o.out) writeFileSync(o.out, JSON.stringify({ ...summary, samples }, null, 2))
if (o.svg) writeFileSync(o.svg, plot(samples, wall))

/** Two panels: generated tokens over time (all requests), and each request's TTFT at its arrival. */
function plot(ss: ReadonlyArray<Sample>, wallMs: number): string {
  const W = 640
  const H = 200
  const pad = 40
  const times = ss.flatMap((s) => s.tokenTimes).sort((a, b) => a - b)
  const x = (t: number) => pad + ((W - 2 * pad) * t) / Math.max(1, wallMs)
  const yTok = (n: number) => H - pad + 0 - ((H - 2 * pad) * n) / Math.max(1, times.length)
  const path = times.map((t, i) => `${i === 0 ? "M" : "L"}${x(t).toFixed(1)},${yTok(i + 1).toFixed(1)}`).join(" ")
  const maxTtft = Math.max(1, ...ss.map((s) => (s.firstTokenAt ?? s.sentAt) - s.sentAt))
  const yTtft = (ms: number) => 2 * H - pad - ((H - 2 * pad) * ms) / maxTtft
  const dots = ss
    .filter((s) => s.firstTokenAt !== undefined)
    .map((s) => `<circle cx="${x(s.sentAt).toFixed(1)}" cy="${yTtft(s.firstTokenAt! - s.sentAt).toFixed(1)}" r="3" fill="#c33"/>`)
    .join("")
  const text = (tx: number, ty: number, s: string) => `<text x="${tx}" y="${ty}" font-size="11" font-family="sans-serif">${s}</text>`
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${2 * H}">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    text(pad, 16, `${o.label} tokens over time: ${times.length} tokens in ${(wallMs / 1000).toFixed(1)} s`),
    `<path d="${path}" fill="none" stroke="#36c" stroke-width="1.5"/>`,
    `<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#999"/>`,
    text(pad, H + 16, `time to first token by arrival (max ${maxTtft.toFixed(0)} ms)`),
    dots,
    `<line x1="${pad}" y1="${2 * H - pad}" x2="${W - pad}" y2="${2 * H - pad}" stroke="#999"/>`,
    text(W - pad - 60, 2 * H - pad + 14, `${(wallMs / 1000).toFixed(0)} s`),
    `</svg>`,
  ].join("\n")
}
