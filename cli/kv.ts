// The KV flags shared by `leoam generate` and `leoam serve`: --kv-policy NAME|FILE,
// --gpu-kv-budget, --host-kv-budget, --kv-dir. A policy file is a JSON KvPolicyDocument
// (protocol/policy.ts); errors name the file and what is wrong with it.
import { existsSync, mkdirSync, readFileSync } from "node:fs"
import { homedir } from "node:os"
import { join } from "node:path"
import { type KvPolicyDocument, parsePolicyDocument, PolicyError, policyNames, type ResolvedPolicy } from "../protocol/policy.ts"
import { CliError } from "./errors.ts"

/** A policy from a registered name or a JSON file. */
export const loadPolicy = (spec: string): ResolvedPolicy => loadPolicyDocument(spec).resolved

/** A policy document (a name becomes `{name}`) from a registered name or a JSON file, and its resolved parameters. */
export const loadPolicyDocument = (spec: string): { readonly document: KvPolicyDocument; readonly resolved: ResolvedPolicy } => {
  try {
    if ((policyNames as ReadonlyArray<string>).includes(spec)) return parsePolicyDocument(spec)
    if (!existsSync(spec)) {
      throw new PolicyError("unknown_policy", `--kv-policy ${spec}: not a policy (${policyNames.join(", ")}) nor a file`)
    }
    let doc: unknown
    try {
      doc = JSON.parse(readFileSync(spec, "utf8"))
    } catch (e) {
      throw new PolicyError("invalid_policy", `--kv-policy ${spec}: not JSON: ${(e as Error).message}`)
    }
    return parsePolicyDocument(doc)
  } catch (e) {
    if (e instanceof PolicyError) throw new CliError(e.code, e.message.startsWith("--kv-policy") ? e.message : `--kv-policy ${spec}: ${e.message}`)
    throw e
  }
}

export const kvPolicyHelp = `KV policy: ${policyNames.join(", ")}, or a JSON file {"name", "chunking": {"fixed": {"tokens"}}, "selection": {"topk": {"budget_tokens" | "budget_fraction", "sink_tokens", "recent_tokens"}}, "eviction": "lru" | "lfu" | "importance"}`

export const defaultKvDir = () => join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "leoam", "kv")

/** The default KV directory, created with its parents, owner only (an explicit --kv-dir is not created here). */
export const ensuredDefaultKvDir = () => {
  const dir = defaultKvDir()
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  return dir
}
