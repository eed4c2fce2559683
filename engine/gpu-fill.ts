// Fills f16 ranges of buffers on the GPU (kernels/fill.wgsl): dummy weights at load, random
// KV and activations in benchmarks. Owns nothing past a call: each fill submits its own
// pass with a uniform of its own.
import { Uniform } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import type { Pipelines } from "./pipelines.ts"
import type { GpuFill } from "./weights.ts"

/** Fills f16 ranges of buffers on the GPU (kernels/fill.wgsl): random halves, or ones. */
export const gpuFiller = async (gpu: Gpu, pipelines: Pipelines): Promise<GpuFill> => {
  const device = gpu.device
  const random = await pipelines.get({ op: "fill" })
  const ones = await pipelines.get({ op: "fill", flags: { ONES: true } })
  const align = device.limits.minStorageBufferOffsetAlignment
  return (buffer, at, count, spec) => {
    const offset = at * 2
    if (offset % align !== 0 || count % 2 !== 0) return false
    const words = count / 2
    const pipeline = spec.kind === "ones" ? ones : random
    const uniform = new Uniform(device, "fill", "uufu")
    const groups = Math.min(Math.ceil(words / 256), 65535)
    uniform.set(words, spec.kind === "random" ? spec.seed : 0, spec.kind === "random" ? spec.amplitude : 0, groups * 256)
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: uniform.buffer } },
        { binding: 1, resource: { buffer, offset, size: words * 4 } },
      ],
    })
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    pass.setPipeline(pipeline)
    pass.setBindGroup(0, bindGroup)
    pass.dispatchWorkgroups(groups)
    pass.end()
    device.queue.submit([encoder.finish()])
    return true
  }
}
