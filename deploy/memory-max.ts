// MemoryMax for the unit, from a serve config file: the host KV budget (the arena) + the
// weights' host staging (the safetensors files' size: weights pass through host memory on
// their way to the GPU; dummy: weights are made on the GPU) + a 1 GiB margin (Node, Dawn,
// the tokenizer, LMDB pages). Prints the value for MemoryMax= in MiB ("1536M") on stdout and
// the sum on stderr. Usage: node --import tsx deploy/memory-max.ts CONFIG [BUNDLED_MODEL_DIR]
import { readdirSync, statSync } from "node:fs"
import { join } from "node:path"
import { readServeConfig } from "../cli/config.ts"
import { CliError } from "../cli/errors.ts"

const MiB = 1024 ** 2
export const marginBytes = 1024 * MiB
export const defaultHostKvBudget = 256 * MiB

/** Bytes of the model's *.safetensors files (0 for dummy: weights). */
export const weightBytes = (model: string): number => {
  if (model.startsWith("dummy:")) return 0
  let files: string[]
  try {
    files = readdirSync(model).filter((f) => f.endsWith(".safetensors"))
  } catch (e) {
    throw new CliError("unknown_model", `model ${model}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
  }
  return files.reduce((sum, f) => sum + statSync(join(model, f)).size, 0)
}

export const memoryMaxBytes = (hostKvBudget: number, weights: number): number => hostKvBudget + weights + marginBytes

const [file, bundled] = process.argv.slice(2)
if (file === undefined) {
  process.stderr.write("usage: memory-max.ts CONFIG [BUNDLED_MODEL_DIR]\n")
  process.exit(2)
}
try {
  const config = readServeConfig(file)
  const host = Number(config.host_kv_budget ?? defaultHostKvBudget)
  const model = String(config.model ?? bundled ?? new URL("../models/tiny-leo-14m", import.meta.url).pathname)
  const weights = weightBytes(model)
  const total = memoryMaxBytes(host, weights)
  const mib = (n: number) => `${Math.ceil(n / MiB)} MiB`
  process.stderr.write(`MemoryMax = host_kv_budget ${mib(host)} + weights ${mib(weights)} (${model}) + margin ${mib(marginBytes)} = ${mib(total)}\n`)
  process.stdout.write(`${Math.ceil(total / MiB)}M\n`)
} catch (e) {
  process.stderr.write(`leoam: error [${(e as { code?: string }).code ?? "internal"}]: ${(e as Error).message}\n`)
  process.exit(2)
}
