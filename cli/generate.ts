// `leoam generate`: load a model (the bundled one by default), run one prompt, print the
// text as it comes (or one JSON object with --json). Input is validated before anything
// is loaded; every failure ends in `leoam: error [code]: message` and a non-zero exit.
import { existsSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../models/tokenizer.ts"
import type { WeightSource } from "../models/types.ts"
import { parameterCount } from "../models/layout.ts"
import { CliError } from "./errors.ts"
import { ensuredDefaultKvDir, loadPolicy } from "./kv.ts"
import { isTiered, kvEngineOptions } from "../engine/kv/registry.ts"
import { HostArena } from "../kv/host-arena.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { Progress } from "./progress.ts"

export const bundledModelDir = fileURLToPath(new URL("../models/tiny-leo-14m", import.meta.url))

export interface GenerateArgs {
  readonly model: string
  readonly prompt?: string
  readonly ids?: string
  readonly idsFile?: string
  readonly maxTokens: number
  readonly temperature: number
  readonly topP: number
  readonly topK: number
  readonly seed: number
  readonly maxContext?: number
  readonly device: "auto" | "gpu" | "cpu"
  readonly json: boolean
  readonly kvPolicy?: string
  readonly gpuKvBudget?: number
  readonly hostKvBudget?: number
  readonly kvDir?: string
}

/** Parses "1,2, 3" (or whitespace-separated) into ids, each a non-negative integer. */
export const parseIds = (text: string, what: string): number[] => {
  const parts = text.split(/[\s,]+/).filter((s) => s.length > 0)
  if (parts.length === 0) throw new CliError("invalid_ids", `${what}: no token ids`)
  return parts.map((s) => {
    if (!/^\d+$/.test(s)) throw new CliError("invalid_ids", `${what}: "${s}" is not a token id (a non-negative integer)`)
    return Number(s)
  })
}

const openSource = (spec: string): { source: WeightSource; tokenizer: Tokenizer | undefined } => {
  if (spec.startsWith("dummy:")) return { source: new DummyWeightSource(resolveDummyConfig(spec.slice(6))), tokenizer: undefined }
  if (!existsSync(spec)) throw new CliError("unknown_model", `--model ${spec}: no such directory (or use dummy:PRESET)`)
  const source = openHfModel(spec)
  return { source, tokenizer: loadTokenizer(spec) }
}

export const runGenerate = async (args: GenerateArgs): Promise<void> => {
  const inputs = [args.prompt, args.ids, args.idsFile].filter((v) => v !== undefined).length
  if (inputs !== 1) throw new CliError("invalid_request", "give exactly one of --prompt, --ids, --ids-file")
  const { source, tokenizer } = openSource(args.model)
  const config = source.config
  let prompt: number[]
  if (args.prompt !== undefined) {
    if (!tokenizer) throw new CliError("invalid_request", `${args.model} has no tokenizer: use --ids or --ids-file`)
    prompt = tokenizer.encode(args.prompt)
    if (prompt.length === 0) throw new CliError("invalid_request", "--prompt is empty")
  } else if (args.ids !== undefined) {
    prompt = parseIds(args.ids, "--ids")
  } else {
    if (!existsSync(args.idsFile!)) throw new CliError("invalid_ids", `--ids-file ${args.idsFile}: no such file`)
    prompt = parseIds(readFileSync(args.idsFile!, "utf8"), `--ids-file ${args.idsFile}`)
  }
  const bad = prompt.find((id) => id >= config.vocabSize)
  if (bad !== undefined) throw new CliError("invalid_ids", `token id ${bad} is outside the vocabulary (0..${config.vocabSize - 1})`)
  const maxContext = Math.min(args.maxContext ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings)
  if (prompt.length >= maxContext) {
    throw new CliError("context_overflow", `the prompt has ${prompt.length} tokens; the context holds ${maxContext} (prompt plus at least one new token)`)
  }
  const maxTokens = Math.min(args.maxTokens, maxContext - prompt.length)
  const policy = loadPolicy(args.kvPolicy ?? "full")
  const kv = isTiered(policy) ? openTiers(args) : undefined

  const progress = new Progress(!args.json && process.stderr.isTTY === true)
  const t0 = performance.now()
  const gpu = await acquireGpu({ prefer: args.device })
  try {
    progress.start("load", parameterCount(config) * 2)
    const context = prompt.length + maxTokens
    const kvOptions = kvEngineOptions(policy, { gpuBudgetBytes: args.gpuKvBudget, arena: kv?.arena, store: kv?.store, session: kv?.session ?? "" }, config, context)
    const model = await GpuModel.load(gpu, source, { maxContext: context, ...kvOptions }, (b) => progress.add(b))
    progress.stop()
    const loadMs = performance.now() - t0
    const decoder = tokenizer?.streamDecoder()
    let streamed = false
    progress.start("prefill", prompt.length, "tokens")
    const result = await generate(model, prompt, {
      maxTokens,
      temperature: args.temperature,
      topK: args.topK,
      topP: args.topP,
      seed: args.seed,
      stopIds: config.eosTokenIds,
      onPrefill: (done) => progress.update(done),
      onToken: (id) => {
        progress.stop()
        if (!args.json && decoder) {
          process.stdout.write(decoder.push(id))
          streamed = true
        }
      },
    })
    progress.stop()
    const text = tokenizer ? tokenizer.decode(result.ids) : ""
    if (args.json) {
      process.stdout.write(
        JSON.stringify({
          model: config.name,
          device: gpu.adapterName,
          prompt_ids: prompt,
          ids: result.ids,
          text,
          finish_reason: result.finishReason,
          usage: { prompt_tokens: prompt.length, completion_tokens: result.ids.length },
          timings: {
            load_ms: round(loadMs),
            prefill_ms: round(result.timings.prefillMs),
            decode_ms_per_token: round(result.timings.decodeMsPerToken),
            total_ms: round(result.timings.totalMs),
          },
          kv: { policy: policy.name, ...model.tierStats() },
        }) + "\n",
      )
    } else {
      if (decoder) process.stdout.write(decoder.flush())
      if (!tokenizer) process.stdout.write(result.ids.join(" "))
      if (streamed || !tokenizer) process.stdout.write("\n")
      process.stderr.write(
        `[leoam] ${prompt.length} prompt tokens, ${result.ids.length} generated (${result.finishReason}); ` +
          `prefill ${result.timings.prefillMs.toFixed(1)} ms, decode ${result.timings.decodeMsPerToken.toFixed(2)} ms/token on ${gpu.adapterName}\n`,
      )
    }
    model.destroy()
  } finally {
    progress.stop()
    source.close()
    await releaseGpu()
    if (kv) {
      kv.store.dropSession(kv.session)
      await kv.store.close()
    }
  }
}

/** The host arena and the disk store of one `leoam generate` (its chunks are dropped at the end). */
const openTiers = (args: GenerateArgs) => {
  const kvDir = args.kvDir ?? ensuredDefaultKvDir()
  const arena = new HostArena({ budgetBytes: args.hostKvBudget ?? 256 * 2 ** 20 })
  let store: DiskStore
  try {
    store = DiskStore.open({ kvDir })
  } catch (e) {
    throw new CliError((e as { code?: string }).code ?? "kv_dir_unavailable", `--kv-dir ${kvDir}: ${(e as Error).message}`)
  }
  return { arena, store, session: `generate-${process.pid}-${Date.now()}` }
}

const round = (ms: number) => Math.round(ms * 1000) / 1000
