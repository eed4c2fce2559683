// GPU-side sharing of prefix chunks between the tiered lanes of one node. A lane that links a
// shared prefix (kv/prefix-index.ts: its disk entries point at the bytes another lane or a
// stored session wrote, within one user's requests) would upload those chunks from the host
// arena or disk into its GPU cache; when a lane running beside it holds the same chunk in a
// GPU slot, it copies the chunk from there on the device instead (two copyBufferToBuffer,
// no host read, no staging, no PCIe transfer). Same bytes, not same tokens: a peer's slot is
// a source only where both lanes' disk entries of the chunk are one record (file and offset)
// stored at 16 bits, so the copy is bit for bit what the upload would have written, and
// another user's lane, whose prompt was never linked to these bytes, is never a source.
// Each lane still holds its own copy in its own slots, counted in its own budget share:
// attending a peer's slot in place (one copy counted once) needs pools shared by the lanes
// (see the README's prefix sharing section).
// The copy is submitted at once, before the work that reads it; the source slot's bytes are
// in the queue by then (a peer's slot counts only once its load is flushed or, sealed, its
// copy submitted), and a later eviction of that slot is queued after the copy.
import type { DiskStore } from "../../../kv/disk-store.ts"

/** What a lane offers its peers: its session (the disk entries' key) and its resident fp16 slots. */
export interface PeerCache {
  readonly device: GPUDevice
  readonly session: () => string
  readonly blockBytes: number
  /** Per layer: the K and V pools. */
  readonly pools: ReadonlyArray<{ readonly k: GPUBuffer; readonly v: GPUBuffer }>
  /** The first pool block of the fp16 slot holding chunk `chunk` of layer `l` with its bytes in the queue, else undefined. */
  readonly residentBlock: (l: number, chunk: number) => number | undefined
}

/** A peer's slot holding a chunk: its pools and the byte offset of the chunk's K (and V) there. */
export interface PeerSource {
  readonly k: GPUBuffer
  readonly v: GPUBuffer
  readonly offset: number
}

/** A lane's part in its node's TierPeers. */
export interface PeerLink {
  readonly leave: () => void
  /** A peer's slot holding the very bytes of this lane's chunk `chunk` of layer `l`, or undefined. */
  readonly source: (l: number, chunk: number) => PeerSource | undefined
  /** Counts a chunk of `bytes` copied from a peer instead of uploaded. */
  readonly copied: (bytes: number) => void
}

/** The node's tiered lanes, for device copies of shared chunks between them; totals since start. */
export class TierPeers {
  private readonly members = new Set<PeerCache>()
  /** Chunks copied from a peer's slot instead of uploaded, and their bytes (the uploads saved). */
  copies = 0
  bytes = 0

  constructor(private readonly store: DiskStore) {}

  /** `cache` offers its slots and looks in its peers' until `leave` is called. */
  join(cache: PeerCache): PeerLink {
    this.members.add(cache)
    return {
      leave: () => void this.members.delete(cache),
      source: (l, chunk) => this.source(cache, l, chunk),
      copied: (bytes) => {
        this.copies++
        this.bytes += bytes
      },
    }
  }

  /** Lanes joined now. */
  get size(): number {
    return this.members.size
  }

  /** A peer's slot holding the very bytes of `self`'s chunk `chunk` of layer `l`, or undefined. */
  private source(self: PeerCache, l: number, chunk: number): PeerSource | undefined {
    if (this.members.size < 2) return undefined
    let mine: ReturnType<DiskStore["chunkEntry"]> | null = null
    for (const peer of this.members) {
      if (peer === self || peer.device !== self.device || peer.blockBytes !== self.blockBytes) continue
      const block = peer.residentBlock(l, chunk)
      if (block === undefined) continue
      // Looked up once there is a candidate: most misses have none.
      mine ??= this.store.chunkEntry([self.session(), l, chunk]) ?? undefined
      if (mine === undefined || mine.dtype !== "f16") return undefined
      const theirs = this.store.chunkEntry([peer.session(), l, chunk])
      if (theirs?.file !== mine.file || theirs.offset !== mine.offset) continue
      const pool = peer.pools[l]
      return { k: pool.k, v: pool.v, offset: block * peer.blockBytes }
    }
    return undefined
  }
}
