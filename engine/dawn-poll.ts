// How Dawn's node binding is polled on a CPU adapter. While any of its promises is pending
// (mapAsync, onSubmittedWorkDone, createComputePipelineAsync), the binding calls
// globalThis.setImmediate with a native callback that processes its events and schedules
// itself again: a busy loop on the main thread for as long as the GPU works. On a real GPU
// that costs an idle core and buys the least latency; on lavapipe the "GPU" is the same few
// cores, and the loop takes one from the rasterizer's threads doing the work. There its
// polls go through a timer (node's least, 1 ms) instead: a 1024-token prefill of the bundled
// model (lavapipe, 2 cores loaded by other work) took 6.4-7.7 s of wall and 0.25 s of the
// main thread's CPU against 18-21 s and 2.6-2.9 s with the loop.
// Only the binding's callbacks change: native, unnamed and taking no arguments (a bound
// function is named "bound …", a promise's resolve takes one); anything else goes to
// setImmediate as before. LEOAM_DAWN_POLL=spin keeps Dawn's loop (side-by-side measurement).

let installed = false

const isDawnPoll = (fn: unknown): fn is (...args: unknown[]) => void =>
  typeof fn === "function" && fn.name === "" && fn.length === 0 && Function.prototype.toString.call(fn).includes("[native code]")

/** On a CPU adapter, Dawn's event polls wait on a 1 ms timer instead of spinning (once per process). */
export const pollDawnByTimer = (): void => {
  if (installed || process.env.LEOAM_DAWN_POLL?.trim().toLowerCase() === "spin") return
  installed = true
  const immediate = globalThis.setImmediate
  const polled = function (this: unknown, fn: (...args: unknown[]) => void, ...args: unknown[]) {
    if (isDawnPoll(fn)) return setTimeout(fn, 0, ...args) as unknown as NodeJS.Immediate
    return Reflect.apply(immediate, this, [fn, ...args]) as NodeJS.Immediate
  }
  // util.promisify(setImmediate) and friends read its own properties.
  Object.defineProperties(polled, Object.getOwnPropertyDescriptors(immediate))
  globalThis.setImmediate = polled as typeof setImmediate
}
