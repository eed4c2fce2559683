// Loads into decode's compressed GPU slots (GpuCache's loads where the slots are quantized):
// the stored bytes go up as they are (int4 into a slot of 8 bits too), K part into the K pool
// and V part into the V pool; a chunk stored at bits the slot cannot hold (fp16, or int8 into
// a slot of 4) is converted on the CPU first.
import type { Placed } from "../../../kv/plan.ts"
import { blockWords, convertChunk, type KvBits, type KvShape } from "../../../kv/quant.ts"
import type { ChunkLoad } from "../../../kv/tier-io.ts"
import type { UploadRing } from "../../staging.ts"
import type { ChunkTables } from "./chunks.ts"
import type { QuantSlots } from "./layout.ts"
import type { TierCounters } from "./stats.ts"

export interface QuantTarget {
  readonly quant: QuantSlots
  /** The layer's K and V pools. */
  readonly pool: { readonly k: GPUBuffer; readonly v: GPUBuffer }
  readonly shape: KvShape
  readonly tables: ChunkTables
  readonly upload: UploadRing
  /** Records the bits a chunk's slot holds it at (and tells the slot map). */
  readonly hold: (chunk: number, slot: number, bits: KvBits) => void
}

/** The tier loads of layer l's chunks into their compressed slots; `read[i]` gets the bytes load i read from its tier. */
export const quantLoads = (t: QuantTarget, l: number, loads: ReadonlyArray<Placed>, read: number[], k: TierCounters): ChunkLoad[] => {
  const q = t.quant
  const s = t.shape
  return loads.map(({ chunk, slot }, i) => {
    const bytes = t.tables.chunkBytes(l, chunk)
    const tokens = t.tables.layers[l].sizes[chunk]
    const stage = (src: Uint8Array, stored: KvBits) => {
      read[i] = src.length
      const bits = stored === q.bits || (q.bits === 8 && stored === 4) ? stored : q.bits
      const data = bits === stored ? src : convertChunk(src, s, tokens, stored, bits)
      const kBytes = Math.ceil(tokens / s.blockTokens) * blockWords(s, bits as 8 | 4).k * 4
      const copies = [
        { from: 0, dst: t.pool.k, dstOffset: (q.qbase + slot * q.kSlotWords) * 4, size: kBytes },
        { from: kBytes, dst: t.pool.v, dstOffset: (q.qbase + slot * q.vSlotWords) * 4, size: data.length - kBytes },
      ]
      t.hold(chunk, slot, bits)
      k.uploadBytes += data.length
      return t.upload.stage(data.length, (view) => view.set(data), copies)
    }
    return { layer: l, chunk, bytes, tokens, stage }
  })
}
