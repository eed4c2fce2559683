// engine/kv/tiered/peers.ts over a real DiskStore (no GPU: the lanes' caches are stand-ins
// with pools as plain objects): a lane finds a peer's slot for a chunk only where both disk
// entries are one stored record at 16 bits and the peer's slot holds it with its bytes in the
// queue; a lane with the same tokens written by itself (another user's, never linked) has its
// own record and is never a source; a lane that leaves is no source any more.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { DiskStore } from "../kv/disk-store.ts"
import { type PeerCache, TierPeers } from "../engine/kv/tiered/peers.ts"

const temps: string[] = []
const stores: DiskStore[] = []
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close()
  for (const d of temps.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

const openStore = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-peers-"))
  temps.push(dir)
  const store = DiskStore.open({ kvDir: path.join(dir, "kv") })
  stores.push(store)
  return store
}

/** Seals `chunks` chunks of 2 layers for `session` at `dtype`. */
const seal = (store: DiskStore, session: string, chunks: number, dtype = "f16") => {
  for (const layer of [0, 1]) {
    store.putChunks(Array.from({ length: chunks }, (_, chunk) => ({ key: [session, layer, chunk] as const, bytes: Uint8Array.of(layer, chunk, 7, 9), meta: { tokens: 2, dtype } })))
    store.putAbstracts(Array.from({ length: chunks }, (_, chunk) => ({ key: [session, layer, chunk] as const, bytes: Uint8Array.of(chunk) })))
  }
}

const device = {} as GPUDevice
const BLOCK = 256

/** A lane's cache as its peers see it: `resident` maps "layer/chunk" to the slot's first block. */
const lane = (session: string, resident: Record<string, number>): PeerCache & { pools: Array<{ k: GPUBuffer; v: GPUBuffer }> } => ({
  device,
  session: () => session,
  blockBytes: BLOCK,
  pools: [0, 1].map((l) => ({ k: { label: `${session} k${l}` } as GPUBuffer, v: { label: `${session} v${l}` } as GPUBuffer })),
  residentBlock: (l, chunk) => resident[`${l}/${chunk}`],
})

describe("tier peers", () => {
  it("a linked chunk a peer holds resident is copied from the peer's slot; unlinked, unsealed or quantized ones are not", () => {
    const store = openStore()
    const peers = new TierPeers(store)
    seal(store, "lane-a", 3)
    const a = lane("lane-a", { "0/0": 4, "0/1": 6, "1/0": 4, "0/2": 8 })
    const b = lane("lane-b", {})
    const linkA = peers.join(a)
    const linkB = peers.join(b)
    expect(linkB.source(0, 0)).toBeUndefined() // b holds no entry yet: nothing it could be the same as
    store.linkChunks("lane-a", "lane-b", [2, 2]) // b's prompt began like a's: its first 2 chunks are a's bytes
    expect(linkB.source(0, 1)).toEqual({ k: a.pools[0].k, v: a.pools[0].v, offset: 6 * BLOCK })
    expect(linkB.source(1, 0)).toEqual({ k: a.pools[1].k, v: a.pools[1].v, offset: 4 * BLOCK })
    expect(linkB.source(1, 1)).toBeUndefined() // a holds it in no slot (evicted, or loading)
    expect(linkB.source(0, 2)).toBeUndefined() // resident in a, but not linked into b
    // A is no source for itself, and b holds nothing resident for a.
    expect(linkA.source(0, 0)).toBeUndefined()
    linkB.copied(100)
    linkB.copied(28)
    expect([peers.copies, peers.bytes]).toEqual([2, 128])
    linkA.leave()
    expect(linkB.source(0, 1)).toBeUndefined()
    expect(peers.size).toBe(1)
    linkB.leave()
    expect(peers.size).toBe(0)
  })

  it("the same tokens sealed by another lane (another user's prompt, never linked) are not a source: their records differ", () => {
    const store = openStore()
    const peers = new TierPeers(store)
    seal(store, "ann-lane", 2)
    seal(store, "ben-lane", 2) // the same chunks, written by ben's own prefill
    const ann = lane("ann-lane", { "0/0": 4, "0/1": 6, "1/0": 4, "1/1": 6 })
    const ben = peers.join(lane("ben-lane", {}))
    peers.join(ann)
    for (const [l, c] of [[0, 0], [0, 1], [1, 0], [1, 1]]) expect(ben.source(l, c)).toBeUndefined()
  })

  it("chunks stored at fewer than 16 bits are not copied from a peer's fp16 slot (its bytes differ from what the upload writes)", () => {
    const store = openStore()
    const peers = new TierPeers(store)
    seal(store, "lane-a", 1, "int8")
    const a = lane("lane-a", { "0/0": 4 })
    peers.join(a)
    const b = peers.join(lane("lane-b", {}))
    store.linkChunks("lane-a", "lane-b", [1, 1])
    expect(b.source(0, 0)).toBeUndefined()
  })
})
