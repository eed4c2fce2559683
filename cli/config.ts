// `--config FILE` for `leoam serve` and `leoam actor`: reads the JSON document of
// protocol/config.ts and sets each of its fields as the option of the same name, unless that
// option was given on the command line (flags override the file). Relative paths in the file
// are taken from the file's directory. A bad file is `invalid_config` naming the field.
import type { Command } from "commander"
import { readFileSync } from "node:fs"
import { dirname, isAbsolute, resolve } from "node:path"
import { decodeServeConfig, type ServeConfig } from "../protocol/config.ts"
import { policyNames } from "../protocol/policy.ts"
import { CliError } from "./errors.ts"
import { parseSize } from "./sizes.ts"

type Key = keyof ServeConfig
const optionOf = (key: Key): string => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())

const pathKeys: ReadonlySet<Key> = new Set(["kv_dir", "users", "nats_pass_file", "nats_creds", "nats_nkey", "chat_template"])

/** The file's fields as option values (sizes in bytes, paths absolute). */
export const readServeConfig = (file: string): Partial<Record<Key, string | number>> => {
  let text: string
  try {
    text = readFileSync(file, "utf8")
  } catch (e) {
    throw new CliError("invalid_config", `cannot read the config file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new CliError("invalid_config", `${file} is not JSON: ${(e as Error).message}`)
  }
  const decoded = decodeServeConfig(json)
  if (!decoded.ok) throw new CliError("invalid_config", `${file}: ${decoded.error}`)
  const base = dirname(resolve(file))
  const out: Partial<Record<Key, string | number>> = {}
  for (const [key, value] of Object.entries(decoded.config) as Array<[Key, string | number]>) {
    if (value === undefined) continue
    if (key === "gpu_kv_budget" || key === "host_kv_budget" || key === "kv_disk_budget") {
      try {
        out[key] = typeof value === "number" ? value : parseSize(value)
      } catch (e) {
        throw new CliError("invalid_config", `${file}: ${key}: ${(e as Error).message}`)
      }
    } else if (typeof value === "string" && !isAbsolute(value) && (pathKeys.has(key) || (key === "model" && !value.startsWith("dummy:")) || (key === "kv_policy" && !(policyNames as ReadonlyArray<string>).includes(value)))) {
      out[key] = resolve(base, value)
    } else out[key] = value
  }
  return out
}

/** Applies `--config` to the command's options (the command line wins). */
export const applyServeConfig = (cmd: Command): void => {
  const file = cmd.getOptionValue("config") as string | undefined
  if (file === undefined) return
  const known = new Set(cmd.options.map((o) => o.attributeName()))
  for (const [key, value] of Object.entries(readServeConfig(file)) as Array<[Key, string | number]>) {
    const option = optionOf(key)
    if (!known.has(option)) throw new CliError("invalid_config", `${file}: ${key}: not an option of \`leoam ${cmd.name()}\``)
    if (cmd.getOptionValueSource(option) === "cli") continue
    cmd.setOptionValueWithSource(option, value, "config")
  }
}
