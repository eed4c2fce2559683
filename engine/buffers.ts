// GPU buffer helpers: typed creation, uniform packing and read-back. Every buffer the
// engine creates goes through here so that its label names its shape and dtype.
import "./gpu.ts" // installs the WebGPU globals (GPUBufferUsage, GPUMapMode)

export const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC
export const UNIFORM = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST

const align = (n: number, to: number) => Math.ceil(n / to) * to

export const storageBuffer = (device: GPUDevice, label: string, bytes: number): GPUBuffer =>
  device.createBuffer({ label, size: Math.max(16, align(bytes, 16)), usage: STORAGE })

/** A uniform of 32-bit fields: "u" for u32, "f" for f32, in declaration order. */
export class Uniform {
  readonly buffer: GPUBuffer
  private readonly data: ArrayBuffer
  private readonly u32: Uint32Array
  private readonly f32: Float32Array

  constructor(
    private readonly device: GPUDevice,
    label: string,
    private readonly layout: string,
  ) {
    const bytes = align(layout.length * 4, 16)
    this.buffer = device.createBuffer({ label, size: bytes, usage: UNIFORM })
    this.data = new ArrayBuffer(bytes)
    this.u32 = new Uint32Array(this.data)
    this.f32 = new Float32Array(this.data)
  }

  /** Writes all fields (in layout order) to the queue. */
  set(...values: number[]): void {
    for (let i = 0; i < values.length; i++) {
      if (this.layout[i] === "f") this.f32[i] = values[i]
      else this.u32[i] = values[i] >>> 0
    }
    this.device.queue.writeBuffer(this.buffer, 0, this.data)
  }
}

/** Copies `bytes` from a GPU buffer back to the host (slow path: tests and one-off reads). */
export const readBack = async (device: GPUDevice, src: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> => {
  const size = align(bytes, 4)
  const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  const encoder = device.createCommandEncoder()
  encoder.copyBufferToBuffer(src, offset, staging, 0, size)
  device.queue.submit([encoder.finish()])
  await staging.mapAsync(GPUMapMode.READ)
  const copy = staging.getMappedRange().slice(0, bytes)
  staging.unmap()
  staging.destroy()
  return copy
}

export const readF32 = async (device: GPUDevice, src: GPUBuffer, offset = 0, count = (src.size - offset) / 4) =>
  new Float32Array(await readBack(device, src, offset, count * 4))

export const upload = (device: GPUDevice, label: string, data: ArrayBufferView, usage = STORAGE): GPUBuffer => {
  const buffer = device.createBuffer({ label, size: Math.max(16, align(data.byteLength, 16)), usage })
  device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, align(data.byteLength, 4))
  return buffer
}

/** One compute dispatch, prepared once (pipeline and bind group) and replayed every step. */
export interface Dispatch {
  readonly pipeline: GPUComputePipeline
  readonly bindGroup: GPUBindGroup
  x: number
  y: number
  z: number
}

/** A bound buffer: all of it, or a range (offset a multiple of minStorageBufferOffsetAlignment). */
export type Bound = GPUBuffer | { readonly buffer: GPUBuffer; readonly offset: number; readonly size: number }

const resourceOf = (b: Bound): GPUBufferBinding => ("offset" in b && "buffer" in b ? { buffer: b.buffer, offset: b.offset, size: b.size } : { buffer: b as GPUBuffer })

export const bind = (
  device: GPUDevice,
  pipeline: GPUComputePipeline,
  entries: ReadonlyArray<readonly [binding: number, buffer: Bound]>,
  label?: string,
): GPUBindGroup =>
  device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: entries.map(([binding, b]) => ({ binding, resource: resourceOf(b) })),
  })

/** A dispatch of `pipeline` whose bind group (entries: [binding, buffer]) is built once. */
export const dispatchOf = (
  device: GPUDevice,
  pipeline: GPUComputePipeline,
  entries: ReadonlyArray<readonly [number, Bound]>,
  x = 1,
  y = 1,
  z = 1,
): Dispatch => ({ pipeline, bindGroup: bind(device, pipeline, entries), x, y, z })

export const encodeAll = (pass: GPUComputePassEncoder, program: ReadonlyArray<Dispatch>): void => {
  for (const d of program) {
    if (d.x === 0 || d.y === 0 || d.z === 0) continue
    pass.setPipeline(d.pipeline)
    pass.setBindGroup(0, d.bindGroup)
    pass.dispatchWorkgroups(d.x, d.y, d.z)
  }
}
