// Compiles and caches the compute pipelines of the kernels in kernels/*.wgsl. A pipeline
// is named by a typed key (op + feature flags + override constants) from which both the
// preprocessor defines and the cache key derive; shapes live in uniforms or `override`
// constants, never in the shader text. Pipelines are created asynchronously and can be
// prewarmed in parallel at start-up.
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import type { Gpu } from "./gpu.ts"

export type KernelName =
  | "embed"
  | "rmsnorm"
  | "gemv"
  | "gemv_multi"
  | "gemv_sg"
  | "gemm"
  | "gemm_sgmat"
  | "gemm_sgmat_staged"
  | "gemm_skinny"
  | "gemm_stream"
  | "half_rows"
  | "hidden_rows"
  | "gemm_reg"
  | "rope_kv"
  | "attn_decode"
  | "attn_combine"
  | "attn_prefill"
  | "attn_prefill_sg"
  | "attn_prefill_reg"
  | "attn_prefill_mx"
  | "attn_prefill_fa"
  | "swiglu"
  | "argmax"
  | "copy"
  | "fill"
  | "abstract"
  | "abstract_fold"
  | "quantize"
  | "chunk_mass"
  | "score"
  | "select"
  | "route"
  | "group_expand"
  | "scatter"
  | "lse"
  | "block_mass"
  | "h2o_keep"

export interface PipelineKey {
  readonly op: KernelName
  /** Boolean preprocessor defines (`#if NAME`), e.g. { NORM: true, RESIDUAL: false }. */
  readonly flags?: Readonly<Record<string, boolean>>
  /** WGSL `override` constants, e.g. { WG: 256, ROWS: 4 }. */
  readonly constants?: Readonly<Record<string, number>>
}

export const pipelineName = (key: PipelineKey): string => {
  const flags = Object.entries(key.flags ?? {})
    .filter(([, on]) => on)
    .map(([name]) => name.toLowerCase())
    .sort()
  const constants = Object.entries(key.constants ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, value]) => `${name}${value}`)
  return [key.op, ...flags, ...constants].join("_")
}

const kernelDir = fileURLToPath(new URL("../kernels/", import.meta.url))
const sources = new Map<string, string>()
const readKernelFile = (file: string): string => {
  let text = sources.get(file)
  if (text === undefined) {
    text = readFileSync(`${kernelDir}${file}`, "utf8")
    sources.set(file, text)
  }
  return text
}

/** A kernel's text with `#include FILE` lines (relative to kernels/) replaced, once each. */
const kernelSource = (op: KernelName): string => {
  const seen = new Set<string>()
  const expand = (file: string): string =>
    readKernelFile(file).replace(/^\s*#include\s+(\S+)\s*$/gm, (_, inc: string) => {
      if (seen.has(inc)) return ""
      seen.add(inc)
      return expand(inc)
    })
  return expand(`${op}.wgsl`)
}

/**
 * A minimal line preprocessor: `#if NAME`, `#if !NAME`, `#else`, `#endif` (nestable);
 * `#include FILE` is expanded before it (see kernelSource).
 * Needed because `enable subgroups;` and subgroup builtins must not appear at all in a
 * shader compiled for a device without them.
 */
export const preprocess = (text: string, defines: Readonly<Record<string, boolean>>): string => {
  const out: string[] = []
  const stack: Array<{ active: boolean; taken: boolean }> = []
  const active = () => stack.every((s) => s.active)
  for (const line of text.split("\n")) {
    const directive = /^\s*#(if|else|endif)\b\s*(!?)(\w*)/.exec(line)
    if (directive === null) {
      if (active()) out.push(line)
      continue
    }
    const [, kind, negate, name] = directive
    if (kind === "if") {
      const value = defines[name] === true
      const on = negate === "!" ? !value : value
      stack.push({ active: on, taken: on })
    } else if (kind === "else") {
      const top = stack.at(-1)
      if (!top) throw new Error("#else without #if")
      top.active = !top.taken
    } else {
      if (!stack.pop()) throw new Error("#endif without #if")
    }
  }
  if (stack.length > 0) throw new Error("unterminated #if")
  return out.join("\n")
}

export class Pipelines {
  private readonly cache = new Map<string, Promise<GPUComputePipeline>>()
  private readonly ready = new Map<string, GPUComputePipeline>()

  constructor(private readonly gpu: Gpu) {}

  /** The shader text for a key, with the device's features applied. */
  source(key: PipelineKey): string {
    const defines = { SUBGROUPS: this.gpu.hasSubgroups, ...(key.flags ?? {}) }
    const body = preprocess(kernelSource(key.op), defines)
    return (this.gpu.hasSubgroups ? "enable subgroups;\n" : "") + body
  }

  /** Compiles (once) and returns the pipeline for a key. */
  get(key: PipelineKey): Promise<GPUComputePipeline> {
    const name = pipelineName(key)
    let pending = this.cache.get(name)
    if (pending === undefined) {
      const device = this.gpu.device
      const module = device.createShaderModule({ label: name, code: this.source(key) })
      pending = module.getCompilationInfo().then(async (info) => {
        const errors = info.messages.filter((m) => m.type === "error")
        if (errors.length > 0) {
          throw new Error(`kernel ${name} failed to compile: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; ")}`)
        }
        const pipeline = await device.createComputePipelineAsync({
          label: name,
          layout: "auto",
          compute: { module, entryPoint: "main", constants: { ...(key.constants ?? {}) } },
        })
        this.ready.set(name, pipeline)
        return pipeline
      })
      this.cache.set(name, pending)
    }
    return pending
  }

  /** A pipeline already compiled by `get`/`prewarm`; throws if it was not prewarmed. */
  now(key: PipelineKey): GPUComputePipeline {
    const pipeline = this.ready.get(pipelineName(key))
    if (pipeline === undefined) throw new Error(`pipeline ${pipelineName(key)} used before it was prewarmed`)
    return pipeline
  }

  /** Compiles many pipelines in parallel. */
  async prewarm(keys: ReadonlyArray<PipelineKey>): Promise<void> {
    await Promise.all(keys.map((key) => this.get(key)))
  }
}
