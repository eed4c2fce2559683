// The one message of the per-token path: gpu-executor -> scheduler, one per decode step on
// the run's token subject. Binary, 8 bytes: (index, id) as two little-endian u32, so a
// step costs no JSON (STYLE 9). Both sides use these two functions and nothing else.
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
