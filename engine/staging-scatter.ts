// The upload ring's flush as one copy and one scatter pass (kernels/scatter.wgsl): the slot's
// filled bytes land in a device-local buffer by one copyBufferToBuffer, then a dispatch per
// destination buffer moves every recorded copy out of it. Dawn's Vulkan backend puts a
// transfer -> transfer barrier between two copies into the same buffer (a write after a
// write), so the tiered cache's per-chunk copies (a K half and a V half per chunk, ~110 per
// layer at 8B 64K) ran one after another, each a small read across PCIe; one big copy and a
// pass of one synchronisation scope do not wait on each other. The landing buffer is one
// staging slot of GPU memory more: the tiered layout counts it.
import "./gpu.ts"
import type { CopyEncoder, RecordedCopy } from "./staging.ts"

/** Words a workgroup moves at most: a copy is cut into pieces of this many, so that a large one spreads over workgroups. */
const PIECE_WORDS = 4096
/** The most workgroups of one dispatch (WebGPU's default limit per dimension). */
const MAX_GROUPS = 65535

/** Whether two of the copies (into one buffer) write a byte in common. */
const overlaps = (list: ReadonlyArray<RecordedCopy>): boolean => {
  const sorted = [...list].sort((a, b) => a.dstOffset - b.dstOffset)
  for (let i = 1; i < sorted.length; i++) if (sorted[i].dstOffset < sorted[i - 1].dstOffset + sorted[i - 1].size) return true
  return false
}

export class UploadScatter implements CopyEncoder {
  /** (slotBytes) u32: a flushed slot's bytes on the GPU. */
  private readonly landing: GPUBuffer
  /** (pieces) vec4<u32> (source word, destination word, words, _); grown when a flush needs more. */
  private table: GPUBuffer
  private tableHost: Uint32Array
  /** Per dispatch of a flush: its (first piece, count) uniform. */
  private readonly params: GPUBuffer[] = []
  /** Bind groups by destination buffer, then dispatch index (they name the table: rebuilt when it grows). */
  private groups = new Map<GPUBuffer, GPUBindGroup[]>()
  /** Dispatches encoded (one per destination buffer and flush). */
  dispatches = 0

  constructor(
    private readonly device: GPUDevice,
    private readonly pipeline: GPUComputePipeline,
    slotBytes: number,
    label = "upload scatter",
  ) {
    this.landing = device.createBuffer({ label: `${label} landing (slotBytes) u32`, size: Math.max(4, Math.ceil(slotBytes / 4) * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST })
    this.tableHost = new Uint32Array(8 * 1024)
    this.table = this.makeTable(this.tableHost.length)
  }

  /** GPU memory it holds besides the ring (the landing buffer; the table is small). */
  get bytes(): number {
    return this.landing.size
  }

  encode(encoder: GPUCommandEncoder, slot: GPUBuffer, bytes: number, copies: ReadonlyArray<RecordedCopy>): boolean {
    // Pieces grouped by destination, in the order each destination first appears.
    const byDst = new Map<GPUBuffer, RecordedCopy[]>()
    for (const c of copies) {
      const list = byDst.get(c.dst)
      if (list) list.push(c)
      else byDst.set(c.dst, [c])
    }
    // A pass runs its pieces in no order: copies whose destinations overlap keep theirs only one by one.
    for (const list of byDst.values()) if (overlaps(list)) return false
    encoder.copyBufferToBuffer(slot, 0, this.landing, 0, Math.ceil(bytes / 4) * 4)
    let pieces = 0
    for (const c of copies) pieces += Math.ceil(c.size / 4 / PIECE_WORDS)
    if (pieces * 4 > this.tableHost.length) this.grow(pieces * 4)
    const t = this.tableHost
    const runs: Array<{ dst: GPUBuffer; first: number; count: number }> = []
    let n = 0
    for (const [dst, list] of byDst) {
      let first = n
      for (const c of list) {
        const words = c.size / 4
        for (let w = 0; w < words; w += PIECE_WORDS) {
          t[n * 4] = c.at / 4 + w
          t[n * 4 + 1] = c.dstOffset / 4 + w
          t[n * 4 + 2] = Math.min(PIECE_WORDS, words - w)
          t[n * 4 + 3] = 0
          n++
          if (n - first === MAX_GROUPS) {
            runs.push({ dst, first, count: n - first })
            first = n
          }
        }
      }
      if (n > first) runs.push({ dst, first, count: n - first })
    }
    // Queue order: these writes land before this encoder's submit and after every earlier one.
    this.device.queue.writeBuffer(this.table, 0, t.buffer, 0, n * 16)
    const pass = encoder.beginComputePass({ label: "upload scatter" })
    pass.setPipeline(this.pipeline)
    runs.forEach((r, i) => {
      this.device.queue.writeBuffer(this.paramsOf(i), 0, Uint32Array.of(r.first, r.count, 0, 0))
      pass.setBindGroup(0, this.groupOf(r.dst, i))
      pass.dispatchWorkgroups(r.count)
      this.dispatches++
    })
    pass.end()
    return true
  }

  destroy(): void {
    this.landing.destroy()
    this.table.destroy()
    for (const b of this.params) b.destroy()
  }

  private makeTable(words: number): GPUBuffer {
    return this.device.createBuffer({ label: "upload scatter table (pieces) vec4<u32>", size: words * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST })
  }

  private grow(words: number): void {
    let size = this.tableHost.length
    while (size < words) size *= 2
    this.tableHost = new Uint32Array(size)
    // The old table may still be read by submitted work: destroy() waits for it (WebGPU defers the free).
    this.table.destroy()
    this.table = this.makeTable(size)
    this.groups = new Map()
  }

  private paramsOf(i: number): GPUBuffer {
    while (this.params.length <= i) this.params.push(this.device.createBuffer({ label: `upload scatter params ${this.params.length}`, size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }))
    return this.params[i]
  }

  private groupOf(dst: GPUBuffer, i: number): GPUBindGroup {
    let list = this.groups.get(dst)
    if (!list) this.groups.set(dst, (list = []))
    return (list[i] ??= this.device.createBindGroup({
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.paramsOf(i) } },
        { binding: 1, resource: { buffer: this.table } },
        { binding: 2, resource: { buffer: this.landing } },
        { binding: 3, resource: { buffer: dst } },
      ],
    }))
  }
}
