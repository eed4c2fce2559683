// The engine's StepEncoder (engine/step-encoder.ts) against a recording fake device: one
// command encoder and one lazily opened compute pass per stretch of dispatches, passes ended
// before copies and submits, no empty passes, and dispatches with a zero dimension skipped.
import { describe, expect, it } from "vitest"
import type { Dispatch } from "../engine/buffers.ts"
import { PassEncoder } from "../engine/step-encoder.ts"

/** A device whose encoders, passes and queue append what they are asked to a log. */
const recordingDevice = () => {
  const log: string[] = []
  let encoders = 0
  const device = {
    createCommandEncoder: () => {
      const id = ++encoders
      return {
        beginComputePass: () => {
          log.push(`e${id} pass`)
          return {
            setPipeline: (p: { label: string }) => log.push(`e${id} ${p.label}`),
            setBindGroup: () => {},
            dispatchWorkgroups: (x: number) => log.push(`e${id} x${x}`),
            end: () => log.push(`e${id} end`),
          }
        },
        copyBufferToBuffer: () => log.push(`e${id} copy`),
        finish: () => `cb${id}`,
      }
    },
    queue: { submit: (cbs: string[]) => log.push(`submit ${cbs.join()}`) },
  }
  return { device: device as unknown as GPUDevice, log }
}

const dispatch = (label: string, x = 1): Dispatch => ({ pipeline: { label } as GPUComputePipeline, bindGroup: {} as GPUBindGroup, x, y: 1, z: 1 })

describe("PassEncoder", () => {
  it("encodes a step's dispatches into one pass of one encoder, the copy after the pass, one submit", () => {
    const { device, log } = recordingDevice()
    const step = new PassEncoder(device).open()
    step.encode([dispatch("a"), dispatch("skipped", 0)])
    step.encode([dispatch("b", 3)])
    step.finish((e) => e.copyBufferToBuffer({} as GPUBuffer, 0, {} as GPUBuffer, 0, 4))
    expect(log).toEqual(["e1 pass", "e1 a", "e1 x1", "e1 b", "e1 x3", "e1 end", "e1 copy", "submit cb1"])
  })

  it("submits mid-step into a new encoder, opening a pass only when something is encoded", () => {
    const { device, log } = recordingDevice()
    const step = new PassEncoder(device).open()
    step.encode([dispatch("pre")])
    step.submit()
    step.record((e) => e.copyBufferToBuffer({} as GPUBuffer, 0, {} as GPUBuffer, 0, 8))
    step.submit()
    step.compute((pass) => pass.dispatchWorkgroups(2))
    step.finish()
    expect(log).toEqual(["e1 pass", "e1 pre", "e1 x1", "e1 end", "submit cb1", "e2 copy", "submit cb2", "e3 pass", "e3 x2", "e3 end", "submit cb3"])
  })

  it("refuses to encode outside a step", () => {
    const { device } = recordingDevice()
    const step = new PassEncoder(device).open()
    step.finish()
    expect(() => step.encode([dispatch("late")])).toThrow(/outside a step/)
  })
})
