// Owns the one WebGPU device of the process: picks the adapter (a real GPU first, then
// lavapipe), requests the adapter's full limits and the features the kernels can use,
// and keeps Dawn's instance strongly referenced for the life of the device (DESIGN §5:
// if it is collected, Dawn crashes the process). `releaseGpu` lets the process exit.
import { create, globals } from "webgpu"

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
}

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

const openGpu = async (options: GpuOptions): Promise<Gpu> => {
  // Pass timestamps (tiered-KV attention time) are wanted to the nanosecond, not quantized.
  // LEOAM_DAWN_TOGGLES (comma-separated Dawn toggles to enable, e.g. disable_robustness)
  // is for side-by-side measurements; the instance is made once per process.
  const toggles = process.env.LEOAM_DAWN_TOGGLES?.trim()
  holder.instance ??= create(["disable-dawn-features=timestamp_quantization", ...(toggles ? [`enable-dawn-features=${toggles}`] : [])])
  const adapter = await pickAdapter(holder.instance, options.prefer ?? "auto")
  const wanted: GPUFeatureName[] = []
  const hasSubgroups = adapter.features.has("subgroups") && !options.disableSubgroups
  if (hasSubgroups) wanted.push("subgroups")
  const hasF16 = adapter.features.has("shader-f16")
  if (adapter.features.has("timestamp-query")) wanted.push("timestamp-query")
  const requiredLimits: Record<string, number> = {}
  for (const name of limitNames) requiredLimits[name] = adapter.limits[name]
  const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits })
  device.addEventListener("uncapturederror", (event) => {
    // A validation error is a bug in leoam: make it loud rather than wrong numbers.
    process.stderr.write(`[leoam gpu] uncaptured WebGPU error: ${(event as GPUUncapturedErrorEvent).error.message}\n`)
  })
  const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number }
  return {
    device,
    adapterName: describe(info),
    kind: classify(info),
    hasSubgroups,
    hasF16,
    subgroupMinSize: info.subgroupMinSize ?? 4,
    subgroupMaxSize: info.subgroupMaxSize ?? 128,
    limits: device.limits,
  }
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
}
