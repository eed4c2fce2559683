// The messages of the per-token path: gpu-executor -> scheduler, one per decode step on
// the run's token subject. Binary, 8 bytes: (index, id) as two little-endian u32, so a
// step costs no JSON (STYLE 9); before the first, prefill progress (12 bytes, below). Both
// sides use these functions and nothing else.
export const TOKEN_EVENT_BYTES = 8

export interface TokenEvent {
  /** Position of the token among the run's generated tokens (0-based). */
  readonly index: number
  readonly id: number
}

export const encodeTokenEvent = (index: number, id: number): Uint8Array => {
  const out = new Uint8Array(TOKEN_EVENT_BYTES)
  const view = new DataView(out.buffer)
  view.setUint32(0, index, true)
  view.setUint32(4, id, true)
  return out
}

/** Undefined for a message that is not a token event (wrong length). */
export const decodeTokenEvent = (data: Uint8Array): TokenEvent | undefined => {
  if (data.byteLength !== TOKEN_EVENT_BYTES) return undefined
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  return { index: view.getUint32(0, true), id: view.getUint32(4, true) }
}

// Prefill progress, on the same subject before the run's first token: 12 bytes, a u32 tag
// no token index reaches (0xFFFFFFFF), then (done, total) prompt tokens, little-endian.
export const PREFILL_EVENT_BYTES = 12
const PREFILL_TAG = 0xffffffff

export interface PrefillEvent {
  /** Prompt tokens through the model so far, of `total`. */
  readonly done: number
  readonly total: number
}

export const encodePrefillEvent = (done: number, total: number): Uint8Array => {
  const out = new Uint8Array(PREFILL_EVENT_BYTES)
  const view = new DataView(out.buffer)
  view.setUint32(0, PREFILL_TAG, true)
  view.setUint32(4, done, true)
  view.setUint32(8, total, true)
  return out
}

/** Undefined for a message that is not a prefill event. */
export const decodePrefillEvent = (data: Uint8Array): PrefillEvent | undefined => {
  if (data.byteLength !== PREFILL_EVENT_BYTES) return undefined
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  if (view.getUint32(0, true) !== PREFILL_TAG) return undefined
  return { done: view.getUint32(4, true), total: view.getUint32(8, true) }
}

/**
 * Calls `send(done, total)` for prefill progress at most every `intervalMs` (a few a second),
 * always for the first report and for done = total, never with a smaller `done` than before.
 */
export const prefillThrottle = (send: (done: number, total: number) => void, intervalMs = 250, now: () => number = () => performance.now()) => {
  let last = -Infinity
  let lastDone = -1
  return (done: number, total: number): void => {
    if (done <= lastDone) return
    const t = now()
    if (done < total && lastDone >= 0 && t - last < intervalMs) return
    last = t
    lastDone = done
    send(done, total)
  }
}
