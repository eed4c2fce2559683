// Owns the one WebGPU device of the process: picks the adapter (a real GPU first, then
// lavapipe), requests the adapter's full limits and the features the kernels can use,
// and keeps Dawn's instance strongly referenced for the life of the device (DESIGN §5:
// if it is collected, Dawn crashes the process). `releaseGpu` lets the process exit.
// The GPU's matrix units (Dawn's experimental subgroup matrices) are asked for only when
// LEOAM_MATRIX_UNITS says so (see matrixUnitsWanted).
import { create, globals } from "webgpu"
import { pollDawnByTimer } from "./dawn-poll.ts"

/** One of the adapter's subgroup-matrix shapes: result (M x N) += left (M x K) * right (K x N). */
export interface SubgroupMatrixConfig {
  readonly componentType: string
  readonly resultComponentType: string
  readonly M: number
  readonly N: number
  readonly K: number
}

export interface Gpu {
  readonly device: GPUDevice
  readonly adapterName: string
  /** "discrete" for a real GPU, "cpu" for lavapipe/SwiftShader. */
  readonly kind: "discrete" | "integrated" | "cpu" | "unknown"
  readonly hasSubgroups: boolean
  readonly hasF16: boolean
  readonly subgroupMinSize: number
  readonly subgroupMaxSize: number
  readonly limits: GPUSupportedLimits
  /** The adapter's subgroup-matrix configurations (empty without the feature). */
  readonly subgroupMatrixConfigs: ReadonlyArray<SubgroupMatrixConfig>
  /**
   * The f16 x f16 -> f32 16x16x16 configuration the matrix GEMM uses, when the device was
   * opened with the feature, shader-f16 and subgroups; else undefined (today's kernels).
   */
  readonly matrixF16: SubgroupMatrixConfig | undefined
  /**
   * The same configuration for prefill attention (kernels/attn_prefill_mx.wgsl): set where the
   * device was opened with the feature, its own check passed and LEOAM_MATRIX_ATTENTION is not 0,
   * whatever the GEMM's check said; else undefined (today's attn_prefill kernels). matrixF16
   * likewise needs LEOAM_MATRIX_GEMM not 0 and the GEMM's check.
   */
  readonly matrixAttention: SubgroupMatrixConfig | undefined
  /** Where matrixAttention is set: true when only the OSHARED form (O in workgroup memory) passed. */
  readonly matrixAttentionShared: boolean
  /** Where matrixAttention is set: true when the KDIRECT form (K/V loaded from the pool as matrices) passed its check and is used (the first choice, unless LEOAM_MATRIX_ATTENTION=staged). */
  readonly matrixAttentionDirect: boolean
  /** Where matrixAttention is set: true when LEOAM_MATRIX_ATTENTION=split asked for attn_prefill_fa (the keys split among a workgroup's subgroups) and it passed its check. */
  readonly matrixAttentionSplit?: boolean
}

export class GpuUnavailable extends Error {
  readonly code = "gpu_unavailable"
  constructor(message: string) {
    super(message)
    this.name = "GpuUnavailable"
  }
}

interface Holder {
  instance: GPU | undefined
  /** The instance with MATRIX_TOGGLES, made only where they are wanted. */
  matrixInstance?: GPU | undefined
  gpu: Promise<Gpu> | undefined
}
// The instance lives on globalThis so that nothing can collect it while a device exists.
const holder: Holder = ((globalThis as any).__leoamGpu ??= { instance: undefined, gpu: undefined })

// GPUBufferUsage, GPUMapMode and friends, for every module that imports this one.
Object.assign(globalThis, globals)

export interface GpuOptions {
  /** "auto" (default: real GPU, else CPU), "gpu" (fail without a real GPU) or "cpu". */
  readonly prefer?: "auto" | "gpu" | "cpu"
  /** Ask Dawn for no subgroups even if offered (tests the fallback kernels). */
  readonly disableSubgroups?: boolean
  /** Ask for no subgroup matrices even if offered (LEOAM_MATRIX_UNITS=0 does the same). */
  readonly disableMatrixUnits?: boolean
}

export const SUBGROUP_MATRIX_FEATURE = "chromium-experimental-subgroup-matrix"
/** Dawn toggles that expose subgroup matrices and, on NVIDIA, f16 (withheld there for old drivers' bugs). */
export const MATRIX_TOGGLES = "allow_unsafe_apis,vulkan_enable_f16_on_nvidia,use_vulkan_memory_model"

/**
 * Whether to open the adapter with MATRIX_TOGGLES: 0 never, 1 on any adapter, "auto" (the
 * default) on NVIDIA only: the f16 path there is a risk Dawn does not take by default, so it
 * was measured on an H100 (driver 580.159, bench/results/2026-12-07-evening-gpu-session): the
 * golden check passes with them on (17/17), prefill's gemm_sgmat runs at 0.96-1.14x of gemm,
 * and a 16-row decode batch at 3.57x batch 1 against 1.27x with the GEMVs. Prefill attention
 * on them is used only where its own check at device open passes (it did not there). Anything
 * else is a configuration error.
 */
export const matrixUnitsWanted = (env: string | undefined, vendor: string): boolean => {
  const v = (env ?? "auto").trim().toLowerCase()
  if (v === "0" || v === "off") return false
  if (v === "1" || v === "on") return true
  if (v === "auto" || v === "") return /nvidia/i.test(vendor)
  throw new GpuUnavailable(`LEOAM_MATRIX_UNITS must be 0, 1 or auto, not "${env}"`)
}

/** The adapter's subgroup-matrix configurations, read field by field (the objects print as {}). */
export const readMatrixConfigs = (info: GPUAdapterInfo): SubgroupMatrixConfig[] => {
  const list = (info as GPUAdapterInfo & { subgroupMatrixConfigs?: ArrayLike<Record<string, unknown>> | Iterable<Record<string, unknown>> }).subgroupMatrixConfigs
  if (!list) return []
  return Array.from(list as ArrayLike<Record<string, unknown>>).map((c) => ({
    componentType: String(c.componentType),
    resultComponentType: String(c.resultComponentType),
    M: Number(c.M),
    N: Number(c.N),
    K: Number(c.K),
  }))
}

/** The configuration kernels/gemm_sgmat.wgsl is written for, if offered. */
export const pickMatrixF16 = (configs: ReadonlyArray<SubgroupMatrixConfig>): SubgroupMatrixConfig | undefined =>
  configs.find((c) => c.componentType === "f16" && c.resultComponentType === "f32" && c.M === 16 && c.N === 16 && c.K === 16)

const classify = (info: GPUAdapterInfo): Gpu["kind"] => {
  const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.toLowerCase()
  if (/llvmpipe|lavapipe|swiftshader|software|cpu/.test(text)) return "cpu"
  if ((info as any).type === "integrated GPU") return "integrated"
  if (/nvidia|amd|radeon|intel|apple|discrete/.test(text)) return "discrete"
  return "unknown"
}

const describe = (info: GPUAdapterInfo) =>
  [info.vendor, info.architecture, info.device, info.description].filter((s) => s && s.length > 0).join(" ") || "unnamed adapter"

const pickAdapter = async (gpu: GPU, prefer: GpuOptions["prefer"]): Promise<GPUAdapter> => {
  const high = await gpu.requestAdapter({ powerPreference: "high-performance" })
  const fallback = await gpu.requestAdapter({ forceFallbackAdapter: true }).catch(() => null)
  const candidates = [high, fallback].filter((a): a is GPUAdapter => a !== null)
  if (candidates.length === 0) {
    throw new GpuUnavailable(
      "no WebGPU adapter: Dawn found neither a GPU nor lavapipe. On Debian 12 install Mesa >= 24 from " +
        "bookworm-backports (mesa-vulkan-drivers) and libvulkan1; on an NVIDIA machine set VK_DRIVER_FILES " +
        "to the NVIDIA ICD json.",
    )
  }
  const real = candidates.find((a) => classify(a.info) !== "cpu")
  const cpu = candidates.find((a) => classify(a.info) === "cpu")
  if (prefer === "gpu") {
    if (!real) throw new GpuUnavailable(`no hardware GPU adapter (found only: ${candidates.map((a) => describe(a.info)).join(", ")})`)
    return real
  }
  if (prefer === "cpu") {
    if (!cpu) throw new GpuUnavailable(`no CPU (lavapipe) adapter (found only: ${candidates.map((a) => describe(a.info)).join(", ")})`)
    return cpu
  }
  return real ?? cpu ?? candidates[0]
}

const limitNames = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
] as const

const baseToggles = (): string[] => {
  // Pass timestamps (tiered-KV attention time) are wanted to the nanosecond, not quantized.
  // LEOAM_DAWN_TOGGLES (comma-separated Dawn toggles to enable, e.g. disable_robustness)
  // is for side-by-side measurements; the instance is made once per process.
  const extra = process.env.LEOAM_DAWN_TOGGLES?.trim()
  return ["disable-dawn-features=timestamp_quantization", ...(extra ? [`enable-dawn-features=${extra}`] : [])]
}

/**
 * The adapter, from an instance opened with the matrix toggles where they are wanted. Toggles
 * act at instance creation, so a second instance is made for them once the first has shown
 * the vendor; both stay referenced on the holder.
 */
const openAdapter = async (options: GpuOptions): Promise<GPUAdapter> => {
  holder.instance ??= create(baseToggles())
  const adapter = await pickAdapter(holder.instance, options.prefer ?? "auto")
  if (options.disableMatrixUnits || !matrixUnitsWanted(process.env.LEOAM_MATRIX_UNITS, adapter.info.vendor)) return adapter
  const base = baseToggles()
  const extra = process.env.LEOAM_DAWN_TOGGLES?.trim()
  try {
    holder.matrixInstance ??= create([base[0], `enable-dawn-features=${MATRIX_TOGGLES}${extra ? `,${extra}` : ""}`])
    return await pickAdapter(holder.matrixInstance, options.prefer ?? "auto")
  } catch (e) {
    process.stderr.write(`[leoam gpu] matrix units not used (the adapter with their toggles failed: ${(e as Error).message})\n`)
    return adapter
  }
}

const openGpu = async (options: GpuOptions): Promise<Gpu> => {
  const adapter = await openAdapter(options)
  const wanted: GPUFeatureName[] = []
  const hasSubgroups = adapter.features.has("subgroups") && !options.disableSubgroups
  if (hasSubgroups) wanted.push("subgroups")
  const hasF16 = adapter.features.has("shader-f16")
  // Enabling f16 changes no kernel that does not ask for it (`enable f16;`).
  if (hasF16) wanted.push("shader-f16")
  if (adapter.features.has("timestamp-query")) wanted.push("timestamp-query")
  const subgroupMatrixConfigs = readMatrixConfigs(adapter.info)
  const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number }
  // The matrix GEMM needs a fixed subgroup size of 16..64 (its workgroup is 4 whole subgroups).
  const candidate = pickMatrixF16(subgroupMatrixConfigs)
  const matrixF16 =
    candidate && hasSubgroups && hasF16 && !options.disableMatrixUnits && adapter.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName) &&
    info.subgroupMinSize === info.subgroupMaxSize &&
    (info.subgroupMaxSize ?? 0) >= 16 &&
    (info.subgroupMaxSize ?? 0) <= 64
      ? candidate
      : undefined
  if (matrixF16) wanted.push(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)
  const requiredLimits: Record<string, number> = {}
  for (const name of limitNames) requiredLimits[name] = adapter.limits[name]
  let matrixRefused = false
  const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits }).catch((e: Error) => {
    if (!matrixF16) throw e
    process.stderr.write(`[leoam gpu] matrix units not used (a device with them was refused: ${e.message})\n`)
    matrixRefused = true
    return adapter.requestDevice({ requiredFeatures: wanted.filter((f) => (f as string) !== SUBGROUP_MATRIX_FEATURE), requiredLimits })
  })
  device.addEventListener("uncapturederror", (event) => {
    // A validation error is a bug in leoam: make it loud rather than wrong numbers.
    process.stderr.write(`[leoam gpu] uncaptured WebGPU error: ${(event as GPUUncapturedErrorEvent).error.message}\n`)
  })
  const gpu: Gpu = {
    device,
    adapterName: describe(info),
    kind: classify(info),
    hasSubgroups,
    hasF16,
    subgroupMinSize: info.subgroupMinSize ?? 4,
    subgroupMaxSize: info.subgroupMaxSize ?? 128,
    limits: device.limits,
    subgroupMatrixConfigs,
    matrixF16: matrixRefused ? undefined : matrixF16,
    matrixAttention: matrixRefused ? undefined : matrixF16,
    matrixAttentionShared: false,
    matrixAttentionDirect: false,
  }
  if (gpu.kind === "cpu") pollDawnByTimer()
  if (!gpu.matrixF16) return gpu
  // Imported here, not at the top: the checks need buffers.ts, which needs this module's globals.
  const { checkMatrixGemm, matrixGemmConstants } = await import("./matrix-check.ts")
  const { checkMatrixAttention, checkSplitAttention, matrixAttnConstants, splitAttnConstants } = await import("./attn-check.ts")
  const room = `no room for its workgroup memory (${device.limits.maxComputeWorkgroupStorageSize} bytes)`
  const constants = matrixGemmConstants(gpu.subgroupMaxSize, device.limits.maxComputeWorkgroupStorageSize)
  const refused = !matrixKernelWanted("LEOAM_MATRIX_GEMM", process.env.LEOAM_MATRIX_GEMM)
    ? "LEOAM_MATRIX_GEMM=0"
    : constants
      ? await checkMatrixGemm(gpu, constants)
      : room
  if (refused !== undefined) process.stderr.write(`[leoam gpu] matrix units not used for the GEMMs (today's GEMM instead): ${refused}\n`)
  // Attention: the KDIRECT form (K and V loaded from the pool as matrices; 1.3-1.6x the register
  // form on an H100, bench/results/2026-12-07-late-gpu-session), else the register form, else the
  // OSHARED form (O in workgroup memory), else none. LEOAM_MATRIX_ATTENTION=direct: KDIRECT alone;
  // =staged: the staged forms alone (register, then OSHARED).
  const attnCheck = async (shared: boolean, direct = false) => {
    const k = matrixAttnConstants(gpu.subgroupMaxSize, device.limits.maxComputeWorkgroupStorageSize, 128, shared)
    return k ? checkMatrixAttention(gpu, k, shared, direct) : room
  }
  const attnEnv = process.env.LEOAM_MATRIX_ATTENTION?.trim().toLowerCase()
  const attnForm =
    attnEnv === "direct" || attnEnv === "staged" || attnEnv === "split"
      ? attnEnv
      : matrixKernelWanted("LEOAM_MATRIX_ATTENTION", process.env.LEOAM_MATRIX_ATTENTION, ["direct", "staged", "split"])
        ? "any"
        : "off"
  let attnRefused: string | undefined = "LEOAM_MATRIX_ATTENTION=0"
  let attnShared = false
  let attnDirect = false
  let attnSplit = false
  // =split: attn_prefill_fa (the keys split among a workgroup's subgroups; not yet timed against
  // KDIRECT on a GPU, so only on request), else the forms below as without it.
  if (attnForm === "split") {
    const k = splitAttnConstants(gpu.subgroupMaxSize, device.limits.maxComputeWorkgroupStorageSize, 128)
    const split = k ? await checkSplitAttention(gpu, k) : `${room}, or subgroups of ${gpu.subgroupMaxSize} lanes, not 32`
    attnSplit = split === undefined
    if (attnSplit) attnRefused = undefined
    process.stderr.write(`[leoam gpu] prefill attention on the matrix units, keys split among subgroups (attn_prefill_fa): ${split ?? "ok, used"}\n`)
  }
  if (attnForm !== "off" && !attnSplit) {
    const direct = attnForm === "staged" ? "LEOAM_MATRIX_ATTENTION=staged" : await attnCheck(false, true)
    attnDirect = direct === undefined
    attnRefused = direct === undefined ? undefined : `KDIRECT: ${direct}`
    if (!attnDirect && attnForm !== "direct") {
      const registers = await attnCheck(false)
      const shared = registers === undefined ? undefined : await attnCheck(true)
      if (attnForm !== "staged") process.stderr.write(`[leoam gpu] prefill attention on the matrix units, K/V from the pool (KDIRECT): ${direct}; O in registers: ${registers ?? "ok, used"}${registers === undefined ? "" : `; O in workgroup memory: ${shared ?? "ok, used"}`}\n`)
      attnRefused = registers === undefined || shared === undefined ? undefined : `${attnRefused}; registers: ${registers}; OSHARED: ${shared}`
      attnShared = registers !== undefined && shared === undefined
    }
  }
  if (attnRefused !== undefined) process.stderr.write(`[leoam gpu] matrix units not used for prefill attention (today's kernel instead): ${attnRefused}\n`)
  return {
    ...gpu,
    matrixF16: refused === undefined ? gpu.matrixF16 : undefined,
    matrixAttention: attnRefused === undefined ? gpu.matrixAttention : undefined,
    matrixAttentionShared: attnShared,
    matrixAttentionDirect: attnDirect,
    matrixAttentionSplit: attnSplit,
  }
}

/**
 * Whether one use of the matrix units (LEOAM_MATRIX_GEMM: the GEMMs, prefill's and batched
 * decode's, everything matrixF16 gates; LEOAM_MATRIX_ATTENTION: prefill attention) is allowed where the device was opened with them (LEOAM_MATRIX_UNITS
 * decides that): unset, 1 or auto yes, 0 no. Side-by-side runs turn one off to time the other.
 * (LEOAM_MATRIX_ATTENTION's forms, direct and staged, are read before this by openGpu; `otherValues` names them in the error.)
 */
export const matrixKernelWanted = (variable: string, env: string | undefined, otherValues: ReadonlyArray<string> = []): boolean => {
  const v = (env ?? "auto").trim().toLowerCase()
  if (v === "0" || v === "off") return false
  if (v === "1" || v === "on" || v === "auto" || v === "") return true
  const values = ["0", "1", "auto", ...otherValues]
  throw new GpuUnavailable(`${variable} must be ${values.slice(0, -1).join(", ")} or ${values.at(-1)}, not "${env}"`)
}

/** The process's device, opened on first use with the options of that first call. */
export const acquireGpu = (options: GpuOptions = {}): Promise<Gpu> => {
  holder.gpu ??= openGpu(options).catch((error) => {
    holder.gpu = undefined
    throw error
  })
  return holder.gpu
}

/** Destroys the device and drops Dawn's instance so that Node can exit. */
export const releaseGpu = async (): Promise<void> => {
  const pending = holder.gpu
  holder.gpu = undefined
  if (pending) {
    const gpu = await pending.catch(() => undefined)
    gpu?.device.destroy()
  }
  holder.instance = undefined
  holder.matrixInstance = undefined
}
