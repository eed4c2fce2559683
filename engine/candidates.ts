// Sampling candidates on the GPU, for host top-k / top-p with minimal read-back: the
// `count` largest logits (select.wgsl with VALUES over token ids) and the softmax mass of
// the whole vocabulary (lse.wgsl), read back in count * 8 + 8 bytes. Owns its buffers,
// rebuilt when the count changes.
import { bind, type Dispatch, encodeAll, storageBuffer, Uniform } from "./buffers.ts"
import { ARGMAX_GROUPS, type pipelineKeys } from "./model-resources.ts"
import type { PipelineKey, Pipelines } from "./pipelines.ts"

export interface Candidates {
  readonly ids: Uint32Array
  readonly logits: Float32Array
  /** max and sum of exp(l / T - max) over the whole vocabulary. */
  readonly max: number
  readonly sumExp: number
}

interface State {
  readonly count: number
  readonly select: Uniform
  readonly lse: Uniform
  readonly owned: GPUBuffer[]
  readonly entries: GPUBuffer // (count) vec2<u32> (id, logit bits)
  readonly lseOut: GPUBuffer // (1) vec2<f32> (max, sum)
  readonly readback: GPUBuffer // count * 8 + 16 bytes, MAP_READ
  readonly program: Dispatch[]
}

export class SamplingCandidates {
  private state: State | undefined
  private readonly identity: GPUBuffer // (vocab) u32: 0, 1, 2, ...

  constructor(
    private readonly device: GPUDevice,
    private readonly pipelines: Pipelines,
    private readonly keys: ReturnType<typeof pipelineKeys>,
    private readonly logits: GPUBuffer,
    private readonly vocab: number,
  ) {
    this.identity = storageBuffer(device, "token ids 0..V (V) u32", vocab * 4)
    device.queue.writeBuffer(this.identity, 0, Uint32Array.from({ length: vocab }, (_, i) => i))
  }

  async read(count: number, temperature: number): Promise<Candidates> {
    const n = Math.max(1, Math.min(count, this.vocab))
    const s = this.stateFor(n)
    s.select.set(this.vocab, 1, 0, 0, n, 0, n, 0)
    s.lse.set(this.vocab, ARGMAX_GROUPS, 1 / temperature)
    const encoder = this.device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    encodeAll(pass, s.program)
    pass.end()
    encoder.copyBufferToBuffer(s.entries, 0, s.readback, 0, n * 8)
    encoder.copyBufferToBuffer(s.lseOut, 0, s.readback, n * 8, 8)
    this.device.queue.submit([encoder.finish()])
    await s.readback.mapAsync(GPUMapMode.READ, 0, n * 8 + 8)
    const raw = s.readback.getMappedRange(0, n * 8 + 8).slice(0)
    s.readback.unmap()
    const words = new Uint32Array(raw, 0, n * 2)
    const asFloat = new Float32Array(raw, 0, n * 2)
    const ids = new Uint32Array(n)
    const logits = new Float32Array(n)
    for (let i = 0; i < n; i++) {
      ids[i] = words[2 * i]
      logits[i] = asFloat[2 * i + 1]
    }
    const lse = new Float32Array(raw, n * 8, 2)
    return { ids, logits, max: lse[0], sumExp: lse[1] }
  }

  private stateFor(count: number): State {
    if (this.state?.count === count) return this.state
    this.freeState()
    const device = this.device
    const entries = storageBuffer(device, "sampling candidates (count) vec2<u32> (id, logit bits)", count * 8)
    const seqs = storageBuffer(device, "sampling candidates count", 16)
    const lsePart = storageBuffer(device, "lse parts (groups) vec2", ARGMAX_GROUPS * 8)
    const lseOut = storageBuffer(device, "lse (max, sum)", 16)
    const readback = device.createBuffer({ label: "sampling readback", size: count * 8 + 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    const select = new Uniform(device, "candidates", "uuuuuuuu")
    const lse = new Uniform(device, "lse", "uufu")
    const P = (key: PipelineKey) => this.pipelines.now(key)
    const mk = (pipeline: GPUComputePipeline, e: Array<readonly [number, GPUBuffer]>, x: number): Dispatch => ({ pipeline, bindGroup: bind(device, pipeline, e), x, y: 1, z: 1 })
    const program = [
      mk(P(this.keys.candidates), [[0, select.buffer], [1, this.logits], [2, this.identity], [3, entries], [4, seqs]], 1),
      mk(P(this.keys.lse), [[0, lse.buffer], [1, this.logits], [2, lsePart]], ARGMAX_GROUPS),
      mk(P(this.keys.lseFinal), [[0, lse.buffer], [2, lsePart], [3, lseOut]], 1),
    ]
    const owned = [entries, seqs, lsePart, lseOut, readback, select.buffer, lse.buffer]
    this.state = { count, select, lse, owned, entries, lseOut, readback, program }
    return this.state
  }

  private freeState(): void {
    for (const b of this.state?.owned ?? []) b.destroy()
    this.state = undefined
  }

  destroy(): void {
    this.freeState()
    this.identity.destroy()
  }
}
