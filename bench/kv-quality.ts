// The KV quality program (issue 4, "Quality") on the bundled model: for `full` and each
// policy x selection budget (budget_fraction of the context), (1) greedy pass-key accuracy at
// about 2K, 6K and 11K tokens with the needle at several depths, and whether each answer is
// full's; (2) the mean KL(full || policy) of next-token distributions over a held-out text,
// teacher-forced. Tiered policies (leoam) run with the GPU holding at most 10% of the request's
// KV (or the least the engine accepts), the host arena 25%, the rest served from disk.
// Prints a table, writes JSON (--json). Importable without running (test/kv-quality.test.ts).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { Command } from "commander"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { generate } from "../engine/generate.ts"
import { acquireGpu, type Gpu, releaseGpu } from "../engine/gpu.ts"
import { isTiered, kvBytesPerToken, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import type { TierStats } from "../engine/kv/tiered/index.ts"
import { abstractLayout } from "../engine/kv/tiered/abstract-layout.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import { type CompressionBits, parsePolicy, type PolicyName, type ResolvedPolicy } from "../protocol/policy.ts"
import { passKey, passKeyPrompt } from "./passkey.ts"

export const MODEL_DIR = fileURLToPath(new URL("../models/tiny-leo-14m", import.meta.url))
export const HELDOUT_FILE = fileURLToPath(new URL("./data/heldout.txt", import.meta.url))
/** Tiered policies' tiers as fractions of the request's KV: GPU at most, host arena; the rest is on disk. */
export const TIER_FRACTIONS = { gpu: 0.1, host: 0.25 } as const
/** Greedy tokens generated per pass-key prompt. */
export const ANSWER_TOKENS = 8
const BOS = 0

// ---- variants: a policy and its selection budget

export interface Variant {
  readonly policy: PolicyName
  /** selection.topk.budget_fraction; undefined: the policy has none (full). */
  readonly budget?: number
  /** Tiered policies: compression.bits (16 when left out). */
  readonly compression?: CompressionBits
}

const pct = (x: number, digits = 0) => `${(100 * x).toFixed(digits)}%`

const bitsName = (c: CompressionBits) => (c === 16 ? "" : c === "importance" ? ":mixed" : `:int${c}`)

export const variantName = (v: Variant): string => (v.budget === undefined ? v.policy : `${v.policy}@${pct(v.budget)}${bitsName(v.compression ?? 16)}`)

export const policyOf = (v: Variant): ResolvedPolicy =>
  parsePolicy(
    v.budget === undefined
      ? v.policy
      : { name: v.policy, selection: { topk: { budget_fraction: v.budget } }, ...(v.compression === undefined || v.compression === 16 ? {} : { compression: { bits: v.compression } }) },
  )

// ---- engines: the model under a variant's policy

export interface Engine {
  readonly model: GpuModel
  /**
   * Tiered policies: the GPU KV budget used, of which `abstractBytes` hold the chunk abstracts
   * (the rest, `kvFraction` of the request's KV, the KV itself); `raised` when TIER_FRACTIONS.gpu
   * was refused as too small.
   */
  readonly gpu?: { readonly budgetBytes: number; readonly abstractBytes: number; readonly kvFraction: number; readonly raised: boolean }
  close(): Promise<void>
}

// One prefill pass per prompt: on lavapipe a 6K prompt takes 147 s in one pass and 268 s in
// 512-token passes. (Tiered engines still prefill in what their GPU budget leaves room for.)
const loadModel = async (gpu: Gpu, policy: ResolvedPolicy, maxContext: number, tiers: Parameters<typeof kvEngineOptions>[1]) => {
  const source = openHfModel(MODEL_DIR)
  try {
    return await GpuModel.load(gpu, source, { maxContext, prefillChunk: maxContext, ...kvEngineOptions(policy, tiers, source.config, maxContext) })
  } finally {
    source.close()
  }
}

/** Loads the model under a variant's policy for requests of up to `requestTokens` tokens. */
export const loadEngine = async (gpu: Gpu, v: Variant, requestTokens: number): Promise<Engine> => {
  const policy = policyOf(v)
  const maxContext = requestTokens + 64
  if (!isTiered(policy)) {
    const model = await loadModel(gpu, policy, maxContext, { session: "kv-quality" })
    return { model, close: async () => model.destroy() }
  }
  const source = openHfModel(MODEL_DIR)
  const config = source.config
  const kvBytes = requestTokens * kvBytesPerToken(config)
  source.close()
  let abstractBytes = 0
  let wanted = 0
  let budget = 0
  for (let attempt = 0; ; attempt++) {
    const kvDir = mkdtempSync(join(tmpdir(), "leoam-kv-quality-"))
    const store = DiskStore.open({ kvDir })
    const arena = new HostArena({ budgetBytes: Math.floor(kvBytes * TIER_FRACTIONS.host) })
    const discard = async () => {
      await store.close()
      rmSync(kvDir, { recursive: true, force: true })
    }
    if (attempt === 0) {
      // The GPU's share of the KV, and besides it the chunk abstracts, counted in the budget too.
      const spec = kvEngineOptions(policy, { arena, store, session: "kv-quality" }, config, maxContext).kv
      abstractBytes = spec.kind === "tiered" ? abstractLayout(config, spec.policy, { maxContext, minChunkTokens: spec.policy.chunkMinTokens ?? spec.policy.chunkTokens }).bytes : 0
      wanted = Math.floor(kvBytes * TIER_FRACTIONS.gpu) + abstractBytes
      budget = wanted
    }
    try {
      const model = await loadModel(gpu, policy, maxContext, { gpuBudgetBytes: budget, arena, store, session: "kv-quality" })
      const close = async () => (model.destroy(), await discard())
      return { model, gpu: { budgetBytes: budget, abstractBytes, kvFraction: (budget - abstractBytes) / kvBytes, raised: budget > wanted }, close }
    } catch (e) {
      await discard()
      if ((e as { code?: string }).code !== "kv_budget_too_small" || attempt >= 1) throw e
      // The engine names the least budget it accepts (small requests: the tail, sink, recent
      // and one chosen chunk per layer, and the staging rings).
      const least = Number(/at least (\d+) bytes/.exec((e as Error).message)?.[1] ?? 0)
      if (!(least > budget)) throw e
      budget = least
    }
  }
}

// ---- pass keys

export interface PassKeyCase {
  readonly context: number
  readonly depth: number
  readonly key: string
}

export interface PassKeyAnswer extends PassKeyCase {
  readonly promptTokens: number
  readonly ids: ReadonlyArray<number>
  readonly text: string
  readonly correct: boolean
  readonly ms: number
}

/** The cases of a run; a case's key depends only on its context and depth, so runs compare. */
export const passKeyCases = (contexts: ReadonlyArray<number>, depths: ReadonlyArray<number>): PassKeyCase[] =>
  contexts.flatMap((context) => depths.map((depth) => ({ context, depth, key: passKey(context + Math.round(depth * 1000)) })))

export const answerPassKey = async (model: GpuModel, tok: Tokenizer, c: PassKeyCase, maxTokens = ANSWER_TOKENS): Promise<PassKeyAnswer> => {
  const prompt = passKeyPrompt(tok, c.context, c.key, c.depth, BOS)
  const r = await generate(model, prompt.ids, { maxTokens, temperature: 0 })
  const text = tok.decode(r.ids)
  return { ...c, promptTokens: prompt.ids.length, ids: r.ids, text, correct: text.includes(c.key), ms: r.timings.totalMs }
}

// ---- KL divergence over the held-out text

/** The held-out text's token ids, BOS first (training rows began with it). */
export const heldOutIds = (tok: Tokenizer): number[] => [BOS, ...tok.encode(readFileSync(HELDOUT_FILE, "utf8"))]

export const logSoftmax = (logits: Float32Array): Float64Array => {
  let max = -Infinity
  for (const x of logits) max = Math.max(max, x)
  let sum = 0
  for (const x of logits) sum += Math.exp(x - max)
  const lse = max + Math.log(sum)
  return Float64Array.from(logits, (x) => x - lse)
}

/** KL(p || q) in nats, from log-probabilities. NaN if either is not finite. */
export const klDivergence = (p: Float64Array, q: Float64Array): number => {
  let s = 0
  for (let i = 0; i < p.length; i++) if (p[i] > -Infinity) s += Math.exp(p[i]) * (p[i] - q[i])
  return s
}

const argmax = (xs: Float64Array): number => xs.reduce((best, x, i) => (x > xs[best] ? i : best), 0)

/**
 * Teacher-forced next-token log-probabilities: prefills ids[0, prefix), then feeds the
 * following ids one by one; the i-th yielded vector predicts ids[prefix + i].
 */
export async function* forcedLogProbs(model: GpuModel, ids: ReadonlyArray<number>, prefix: number, positions: number): AsyncGenerator<Float64Array> {
  if (prefix < 1 || prefix + positions > ids.length) throw new RangeError(`${prefix} + ${positions} positions exceed the ${ids.length} tokens of the text`)
  model.reset()
  await model.prefill(ids.slice(0, prefix))
  for (let i = 0; i < positions; i++) {
    if (i > 0) {
      model.writeToken(i, ids[prefix + i - 1])
      await model.decode(i)
    }
    yield logSoftmax(await model.readLogits())
  }
}

export const referenceLogProbs = async (model: GpuModel, ids: ReadonlyArray<number>, prefix: number, positions: number): Promise<Float64Array[]> => {
  const out: Float64Array[] = []
  for await (const lp of forcedLogProbs(model, ids, prefix, positions)) out.push(lp)
  return out
}

export interface KlResult {
  readonly prefix: number
  readonly positions: number
  /** Mean and max KL(full || policy) in nats (NaN if any position is not finite). */
  readonly mean: number
  readonly max: number
  /** Positions whose most likely token is full's. */
  readonly top1Agreement: number
  readonly nonFinite: number
}

/** KL(reference || model) at the reference's positions of the same text. */
export const klAgainst = async (model: GpuModel, ids: ReadonlyArray<number>, prefix: number, reference: ReadonlyArray<Float64Array>): Promise<KlResult> => {
  let sum = 0
  let max = 0
  let agree = 0
  let nonFinite = 0
  let i = 0
  for await (const lp of forcedLogProbs(model, ids, prefix, reference.length)) {
    const kl = klDivergence(reference[i], lp)
    if (!Number.isFinite(kl)) nonFinite++
    sum += kl
    max = Math.max(max, kl)
    agree += argmax(reference[i]) === argmax(lp) ? 1 : 0
    i++
  }
  return { prefix, positions: i, mean: sum / i, max: nonFinite > 0 ? NaN : max, top1Agreement: agree / i, nonFinite }
}

// ---- one variant: pass keys at every context, then KL

export interface Settings {
  readonly contexts: ReadonlyArray<number>
  readonly depths: ReadonlyArray<number>
  readonly budgets: ReadonlyArray<number>
  readonly policies: ReadonlyArray<PolicyName>
  readonly klPrefix: number
  readonly klPositions: number
  /** compression.bits of the tiered policies' variants (each budget once per setting). */
  readonly compression: ReadonlyArray<CompressionBits>
}

export interface VariantReport {
  readonly name: string
  readonly policy: PolicyName
  readonly budget: number | null
  /** "ok", or why it has no (complete) results. */
  readonly status: "ok" | "not available" | "failed"
  readonly error?: string
  /** Tiered policies: the GPU budget of each engine, by the request size it was made for. */
  readonly gpuBudgets: Array<{ readonly use: "pass key" | "KL"; readonly requestTokens: number; readonly budgetBytes: number; readonly kvFraction: number; readonly raised: boolean }>
  /** `kv`: the tiered cache's counters of that request. */
  readonly answers: Array<PassKeyAnswer & { readonly sameAsFull: boolean; readonly kv?: TierStats }>
  readonly kl?: KlResult & { readonly kv?: TierStats }
  readonly seconds: number
}

export interface Reference {
  readonly answers: ReadonlyArray<PassKeyAnswer>
  readonly logProbs: ReadonlyArray<Float64Array>
}

/**
 * Runs a variant: one engine for everything, or (tiered) one per request size so that the
 * GPU budget is a fraction of that request's KV. Without `reference`, the variant is the
 * reference (full) and its log-probs are returned for the others.
 */
export const runVariant = async (
  gpu: Gpu,
  tok: Tokenizer,
  text: ReadonlyArray<number>,
  v: Variant,
  s: Settings,
  reference: Reference | undefined,
  log: (line: string) => void,
): Promise<{ report: VariantReport; logProbs?: Float64Array[] }> => {
  const t0 = performance.now()
  const name = variantName(v)
  const tiered = isTiered(policyOf(v))
  const klTokens = s.klPrefix + s.klPositions
  const largest = Math.max(...s.contexts.map((c) => c + ANSWER_TOKENS), s.klPositions > 0 ? klTokens : 0)
  const report: { -readonly [K in keyof VariantReport]: VariantReport[K] } = {
    name, policy: v.policy, budget: v.budget ?? null, status: "ok", gpuBudgets: [], answers: [], seconds: 0,
  }
  let logProbs: Float64Array[] | undefined
  let engine: { readonly tokens: number; readonly e: Engine } | undefined
  const engineFor = async (use: "pass key" | "KL", requestTokens: number): Promise<GpuModel> => {
    const tokens = tiered ? requestTokens : largest
    if (engine?.tokens === tokens) return engine.e.model
    await engine?.e.close()
    engine = undefined
    const e = await loadEngine(gpu, v, tokens)
    engine = { tokens, e }
    if (e.gpu) report.gpuBudgets.push({ use, requestTokens: tokens, ...e.gpu })
    if (e.gpu?.raised) {
      log(`  ${name}: a GPU budget of ${pct(TIER_FRACTIONS.gpu)} of a ${tokens}-token request's KV is too small for the engine; using ${e.gpu.budgetBytes} bytes (${pct(e.gpu.kvFraction, 1)}), the least it accepts`)
    }
    return e.model
  }
  let phase = "load"
  try {
    for (const c of passKeyCases(s.contexts, s.depths)) {
      const model = await engineFor("pass key", c.context + ANSWER_TOKENS)
      phase = "run"
      const a = await answerPassKey(model, tok, c)
      const want = reference?.answers.find((r) => r.context === c.context && r.depth === c.depth)
      const sameAsFull = want === undefined || (want.ids.length === a.ids.length && want.ids.every((id, i) => id === a.ids[i]))
      report.answers.push({ ...a, sameAsFull, kv: model.tierStats() })
      log(`  ${name.padEnd(10)} ${String(c.context).padStart(6)} depth ${c.depth.toFixed(2)} key ${c.key}: ${JSON.stringify(a.text)} ${a.correct ? "correct" : "WRONG"}${sameAsFull ? "" : " (differs from full)"} ${(a.ms / 1000).toFixed(1)} s`)
    }
    if (s.klPositions > 0) {
      phase = "load"
      const model = await engineFor("KL", klTokens)
      phase = "run"
      const k0 = performance.now()
      if (reference) {
        report.kl = { ...(await klAgainst(model, text, s.klPrefix, reference.logProbs)), kv: model.tierStats() }
      } else {
        logProbs = await referenceLogProbs(model, text, s.klPrefix, s.klPositions)
        report.kl = { prefix: s.klPrefix, positions: s.klPositions, mean: 0, max: 0, top1Agreement: 1, nonFinite: 0 }
      }
      log(`  ${name.padEnd(10)} KL over ${s.klPositions} positions after ${s.klPrefix}: mean ${report.kl.mean.toExponential(3)} nats, top-1 ${pct(report.kl.top1Agreement, 1)} ${((performance.now() - k0) / 1000).toFixed(1)} s`)
    }
  } catch (e) {
    // A policy the engine does not (yet) take is "not available"; a failure while running is a finding.
    report.status = phase === "load" && report.answers.length === 0 ? "not available" : "failed"
    report.error = `${(e as { code?: string }).code ?? (e as Error).name}: ${(e as Error).message}`
    log(`  ${name}: ${report.status}: ${report.error}`)
  } finally {
    await engine?.e.close()
  }
  report.seconds = (performance.now() - t0) / 1000
  return { report, logProbs }
}

// ---- report

const fraction = (xs: ReadonlyArray<boolean>) => `${xs.filter(Boolean).length}/${xs.length}`

const gpuColumn = (r: VariantReport): string => {
  const keys = r.gpuBudgets.filter((b) => b.use === "pass key")
  if (keys.length === 0) return r.gpuBudgets.length === 0 ? "all" : "-"
  return `<=${pct(Math.max(...keys.map((b) => b.kvFraction)), 1)}${keys.some((b) => b.raised) ? "*" : ""}`
}

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length

export const formatTable = (reports: ReadonlyArray<VariantReport>, s: Settings): string => {
  const head = ["variant", "GPU KV", ...s.contexts.map((c) => `key@${c}`), "key all", "=full", "KL mean", "KL max", "top-1", "sel/step", "disk/key", "s"]
  const rows = reports.map((r) => {
    if (r.status !== "ok" && r.answers.length === 0) return [r.name, `${r.status}: ${r.error}`]
    const kl = r.kl
    const disk = r.answers.flatMap((a) => (a.kv ? [a.kv.disk.bytes_read] : []))
    return [
      r.name,
      gpuColumn(r),
      ...s.contexts.map((c) => fraction(r.answers.filter((a) => a.context === c).map((a) => a.correct))),
      fraction(r.answers.map((a) => a.correct)),
      fraction(r.answers.map((a) => a.sameAsFull)),
      kl ? kl.mean.toExponential(2) : "-",
      kl ? kl.max.toExponential(2) : "-",
      kl ? pct(kl.top1Agreement, 1) : "-",
      kl?.kv ? kl.kv.tokens_selected_per_step.toFixed(0) : "-",
      disk.length > 0 ? `${(mean(disk) / 2 ** 20).toFixed(1)} MiB` : "-",
      r.seconds.toFixed(0),
      ...(r.status === "ok" ? [] : [`${r.status}: ${r.error}`]),
    ]
  })
  const widths = head.map((h, i) => Math.max(h.length, ...rows.filter((r) => r.length > 2).map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.length === 2 ? `${cells[0].padEnd(widths[0])}  ${cells[1]}` : cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i] ?? 0))).join("  ")
  const notes = reports.flatMap((r) =>
    r.gpuBudgets
      .filter((b) => b.raised)
      .map((b) => `  * ${r.name}, ${b.use} request of ${b.requestTokens} tokens: ${pct(TIER_FRACTIONS.gpu)} of its KV is below the engine's minimum; ran with ${b.budgetBytes} bytes (${pct(b.kvFraction, 1)})`),
  )
  return [line(head), ...rows.map(line), ...(notes.length > 0 ? ["", ...notes] : [])].join("\n")
}

/** Per policy: does it answer every pass key exactly as full does, and where not. */
export const formatAgreement = (reports: ReadonlyArray<VariantReport>, policies: ReadonlyArray<PolicyName>): string =>
  policies
    .map((p) => {
      const answers = reports.filter((r) => r.policy === p).flatMap((r) => r.answers.map((a) => ({ ...a, name: r.name })))
      if (answers.length === 0) return `${p}: no answers`
      const differ = answers.filter((a) => !a.sameAsFull)
      const verdict = differ.length === 0 ? "answers exactly as full does" : "does NOT always answer as full does"
      const where = differ.map((a) => `${a.name} ${a.context}@${a.depth} ${JSON.stringify(a.text)}${a.correct ? "" : " (wrong)"}`)
      return `${p} ${verdict}: ${answers.length - differ.length}/${answers.length} answers identical${where.length > 0 ? `; differing: ${where.join(", ")}` : ""}`
    })
    .join("\n")

// ---- the program

const list = (parse: (x: string) => number) => (v: string) => v.split(",").map((x) => parse(x.trim()))

const settingsFrom = (o: Record<string, any>): Settings => {
  const quick = !!o.quick
  return {
    // `--contexts 0`: no pass keys (a KL-only run).
    contexts: (o.contexts ?? (quick ? [2048] : [2048, 6144, 11264])).filter((c: number) => c > 0),
    depths: o.depths ?? (quick ? [0.3, 0.7] : [0.1, 0.3, 0.5, 0.7, 0.9]),
    budgets: o.budgets ?? (quick ? [0.1, 0.5] : [0.05, 0.1, 0.25, 0.5]),
    policies: o.policies ?? ["quest", "h2o", "leoam"],
    klPrefix: o.klPrefix ?? (quick ? 512 : 1024),
    klPositions: o.klPositions ?? (quick ? 64 : 256),
    compression: o.compression ?? [16],
  }
}

const main = async () => {
  const program = new Command()
    .name("kv-quality")
    .description("Pass-key accuracy and KL divergence from full attention of each KV policy and selection budget, on the bundled model.")
    .option("--quick", "a small subset: one ~2K context, 2 depths, budgets 0.1 and 0.5, 64 KL positions")
    .option("--contexts <list>", "pass-key prompt lengths in tokens (default 2048,6144,11264; 0: none)", list((x) => parseInt(x, 10)))
    .option("--depths <list>", "needle depths in [0, 1] (default 0.1,0.3,0.5,0.7,0.9)", list(Number))
    .option("--budgets <list>", "selection budgets, fractions of the context (default 0.05,0.1,0.25,0.5)", list(Number))
    .option("--policies <list>", "policies compared with full (default quest,h2o,leoam)", (v) => v.split(",").map((x) => parsePolicy(x.trim()).name))
    .option("--kl-prefix <n>", "held-out tokens prefilled before the scored positions (default 1024)", (v) => parseInt(v, 10))
    .option("--kl-positions <n>", "teacher-forced positions scored for KL; 0 skips KL (default 256)", (v) => parseInt(v, 10))
    .option("--compression <list>", "compression.bits of the tiered policies: 16, 8, 4, importance (default 16)", (v) =>
      v.split(",").map((x): CompressionBits => (x.trim() === "importance" ? "importance" : (Number(x) as 16 | 8 | 4))),
    )
    .option("--json <file>", "write everything as JSON")
    .parse()
  const o = program.opts()
  const s = settingsFrom(o)
  const started = new Date()
  const gpu = await acquireGpu()
  const tok = loadTokenizer(MODEL_DIR)
  const text = heldOutIds(tok)
  const log = (line: string) => console.log(line)
  const command = ["npx tsx bench/kv-quality.ts", ...process.argv.slice(2)].join(" ")
  log(`${command}\n${started.toISOString()}; device: ${gpu.adapterName} (${gpu.kind}); model ${MODEL_DIR}`)
  log(`pass keys: contexts ${s.contexts.join(", ")} x depths ${s.depths.join(", ")}, ${ANSWER_TOKENS} greedy tokens, correct if the text contains the key`)
  log(`KL(full || policy): ${s.klPositions} teacher-forced positions after a ${s.klPrefix}-token prefix of ${HELDOUT_FILE} (${text.length} tokens)`)
  log(`tiered policies: GPU KV budget ${pct(TIER_FRACTIONS.gpu)} of the request's KV (or the least accepted), host arena ${pct(TIER_FRACTIONS.host)}, the rest on disk\n`)
  const tiered = (p: PolicyName) => p === "leoam" || p === "offload-all"
  const variants: Variant[] = [
    { policy: "full" },
    ...s.policies.flatMap((policy) => s.budgets.flatMap((budget) => (tiered(policy) ? s.compression : [16 as const]).map((compression) => ({ policy, budget, compression })))),
  ]
  const reports: VariantReport[] = []
  // Written after every variant too, so a run stopped by a time limit keeps what it measured.
  const writeJson = (complete: boolean) => {
    if (!o.json) return
    const seconds = (Date.now() - started.getTime()) / 1000
    writeFileSync(o.json, JSON.stringify({ date: started.toISOString(), command, argv: process.argv.slice(2), complete, device: gpu.adapterName, model: MODEL_DIR, settings: s, tierFractions: TIER_FRACTIONS, answerTokens: ANSWER_TOKENS, heldOutTokens: text.length, seconds, variants: reports }, null, 2))
  }
  let reference: Reference | undefined
  for (const v of variants) {
    const { report, logProbs } = await runVariant(gpu, tok, text, v, s, reference, log)
    reports.push(report)
    writeJson(false)
    if (!reference) {
      if (report.status !== "ok") throw new Error(`the reference (full) failed: ${report.error}`)
      reference = { answers: report.answers, logProbs: logProbs ?? [] }
    }
  }
  const seconds = (Date.now() - started.getTime()) / 1000
  log(`\n${formatTable(reports, s)}\n`)
  log(`${formatAgreement(reports, s.policies)}\n`)
  log(
    "GPU KV: the tiered cache's GPU budget as a share of the pass-key request's KV (all: every policy that keeps all KV on the GPU); key: pass keys found, per context and overall; " +
      "=full: answers identical to full's, token for token; KL(full || policy) in nats and top-1: positions whose most likely token is full's, over the held-out text; " +
      "sel/step: tokens of sealed chunks a tiered policy attends per step (KL run; plus the unsealed tail); disk/key: bytes the tiered cache read from disk per pass-key request; s: seconds",
  )
  log(`total ${(seconds / 60).toFixed(1)} min`)
  writeJson(true)
  await releaseGpu()
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main()
