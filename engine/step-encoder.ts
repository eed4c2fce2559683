// The engine's StepEncoder: one command encoder and one compute pass for as long as nothing
// needs to leave the pass (a copy, a timed pass, a submit). The pass opens lazily, so a
// submit that nothing follows leaves no empty pass behind. `open` starts a step; one
// instance serves a model's steps one after the other (steps never overlap).
import { type Dispatch, encodeAll } from "./buffers.ts"
import type { StepEncoder } from "./kv/manager.ts"

export class PassEncoder implements StepEncoder {
  private encoder: GPUCommandEncoder | undefined
  private pass: GPUComputePassEncoder | undefined

  constructor(private readonly device: GPUDevice) {}

  /** Starts a step (a new command encoder). */
  open(): this {
    this.encoder = this.device.createCommandEncoder()
    this.pass = undefined
    return this
  }

  encode(dispatches: ReadonlyArray<Dispatch>): void {
    encodeAll((this.pass ??= this.commands().beginComputePass()), dispatches)
  }

  compute(use: (pass: GPUComputePassEncoder) => void): void {
    use((this.pass ??= this.commands().beginComputePass()))
  }

  record(use: (encoder: GPUCommandEncoder) => void): void {
    this.endPass()
    use(this.commands())
  }

  submit(): void {
    this.endPass()
    this.device.queue.submit([this.commands().finish()])
    this.encoder = this.device.createCommandEncoder()
  }

  finish(last?: (encoder: GPUCommandEncoder) => void): void {
    this.endPass()
    const encoder = this.commands()
    last?.(encoder)
    this.device.queue.submit([encoder.finish()])
    this.encoder = undefined
  }

  private endPass(): void {
    this.pass?.end()
    this.pass = undefined
  }

  private commands(): GPUCommandEncoder {
    if (this.encoder === undefined) throw new Error("StepEncoder used outside a step (open it first)")
    return this.encoder
  }
}
