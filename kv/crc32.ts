// CRC-32 (IEEE 802.3, the zlib/gzip polynomial) of chunk bytes. Uses node:zlib's native
// crc32 where the runtime has it (Node >= 20.15) and a table-driven fallback otherwise;
// both give the same value, so files written by one read back under the other.

import * as zlib from "node:zlib"

const TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** The table-driven CRC-32; `previous` continues a running CRC over split buffers. */
export const crc32Table = (bytes: Uint8Array, previous = 0): number => {
  let c = (previous ^ 0xffffffff) >>> 0
  for (let i = 0; i < bytes.length; i++) c = TABLE[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

const native: ((bytes: Uint8Array, previous?: number) => number) | undefined =
  typeof (zlib as { crc32?: unknown }).crc32 === "function" ? zlib.crc32 : undefined

/** CRC-32 of `bytes` as an unsigned 32-bit integer. */
export const crc32 = (bytes: Uint8Array, previous = 0): number =>
  native === undefined ? crc32Table(bytes, previous) : native(bytes, previous) >>> 0

/** Whether the fast native implementation is in use (reported in stats). */
export const crc32IsNative = native !== undefined
