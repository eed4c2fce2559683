// Host <-> GPU bandwidth of the KV transfer paths (engine/staging.ts), side by side on one
// device: (a) queue.writeBuffer at several sizes; (b) UploadRing at several (slot size,
// slots), whole-slot writes and chunk-sized stages; (c) disk -> GPU, fs.readSync straight
// into the ring's mapped memory vs into a Buffer then writeBuffer (page-cache state
// reported, a cold pass where the cache can be dropped); (d) GPU -> host through
// ReadbackRing vs a fresh buffer per read. Every timing ends after onSubmittedWorkDone.
// Prints a table; --json writes the rows. Run: npx tsx bench/upload-bench.ts [--total-mib N]
import { spawnSync } from "node:child_process"
import { randomFillSync } from "node:crypto"
import { closeSync, fsyncSync, openSync, readFileSync, readSync, statfsSync, unlinkSync, writeFileSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { readBack, storageBuffer } from "../engine/buffers.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { ReadbackRing, UploadRing } from "../engine/staging.ts"

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const SRC_BYTES = 64 * MiB // host source of the uploads: larger than any CPU cache
const DST_BYTES = 256 * MiB // GPU destination, written round-robin
const BATCH_BYTES = 256 * MiB // writeBuffer paths wait for the batch before last: bounds Dawn's staging
const DISK_READ = 16 * MiB // bytes per readSync

interface Row {
  readonly path: string
  readonly config: string
  readonly bytes: number
  readonly seconds: number
  readonly gibs: number
  readonly note: string
}

const o = new Command()
  .name("upload-bench")
  .description("Host <-> GPU bandwidth of writeBuffer, the staging rings and disk -> GPU reads.")
  .option("--total-mib <n>", "bytes moved per case, MiB", (v) => parseInt(v, 10), 2048)
  .option("--file-mib <n>", "size of the temporary file of the disk cases, MiB (default: min(1024, total))", (v) => parseInt(v, 10))
  .option("--chunk-kib <n>", "stage / read-region size of the chunked cases, KiB", (v) => parseInt(v, 10), 1024)
  .option("--dir <dir>", "directory of the temporary file", tmpdir())
  .option("--json <file>", "write the results as JSON")
  .parse()
  .opts()

const total = o.totalMib * MiB
const chunk = o.chunkKib * KiB
const gpu = await acquireGpu()
const device = gpu.device
const done = () => device.queue.onSubmittedWorkDone()
const rows: Row[] = []

const src = new Uint8Array(SRC_BYTES)
randomFillSync(src)
const dst = storageBuffer(device, "upload bench dst (bytes) u8", DST_BYTES)

/** Times `run` through the GPU finishing its work; records and prints a row. */
const measure = async (path: string, config: string, bytes: number, run: () => Promise<string | void>) => {
  await done()
  const t0 = performance.now()
  const note = (await run()) ?? ""
  await done()
  const seconds = (performance.now() - t0) / 1000
  const row = { path, config, bytes, seconds, gibs: bytes / GiB / seconds, note }
  rows.push(row)
  printRow(row)
}

const size = (bytes: number) => (bytes >= MiB ? `${bytes / MiB} MiB` : `${bytes / KiB} KiB`)
const printRow = (r: Row) =>
  console.log(`${r.path.padEnd(40)} ${r.config.padEnd(22)} ${String(Math.round(r.bytes / MiB)).padStart(6)} ${r.seconds.toFixed(3).padStart(8)} ${r.gibs.toFixed(2).padStart(7)}  ${r.note}`)

/** writeBuffer pieces of `piece` bytes from `next()`, waiting per batch so Dawn's staging stays bounded. */
const writeBufferLoop = async (count: number, piece: number, next: (i: number) => Uint8Array) => {
  const batch = Math.max(1, Math.floor(BATCH_BYTES / piece))
  let previous: Promise<unknown> = Promise.resolve()
  for (let i = 0; i < count; i++) {
    const bytes = next(i)
    device.queue.writeBuffer(dst, (i * piece) % DST_BYTES, bytes.buffer, bytes.byteOffset, bytes.byteLength)
    if ((i + 1) % batch === 0) {
      device.queue.submit([])
      await previous
      previous = done()
    }
  }
}

// --- (a) host baseline and writeBuffer ----------------------------------------------

const benchHost = async () => {
  const out = new Uint8Array(SRC_BYTES)
  out.set(src) // first touch
  const n = Math.max(1, Math.round(total / SRC_BYTES))
  await measure("host memcpy (Uint8Array.set)", size(SRC_BYTES), n * SRC_BYTES, async () => {
    for (let i = 0; i < n; i++) out.set(src)
  })
}

const benchWriteBuffer = async (piece: number) => {
  const n = Math.max(1, Math.round(total / piece))
  const from = (i: number) => src.subarray((i * piece) % SRC_BYTES, ((i * piece) % SRC_BYTES) + piece)
  await writeBufferLoop(Math.min(n, Math.max(4, BATCH_BYTES / piece)), piece, from) // warm-up: Dawn's staging grows
  await measure("queue.writeBuffer", size(piece), n * piece, () => writeBufferLoop(n, piece, from))
}

// --- (b) UploadRing -------------------------------------------------------------------

const warmRing = async (ring: UploadRing) => {
  for (let k = 0; k < ring.bytes / ring.slotBytes; k++) await ring.write(dst, 0, src.subarray(0, ring.slotBytes))
  ring.flush()
  await done()
}

const ringNote = (ring: UploadRing, stalls0: number, submits0: number) => `${ring.stalls - stalls0} waits for a slot, ${ring.submits - submits0} submits`

const benchRing = async (slotBytes: number, slots: number) => {
  const ring = new UploadRing(device, { slotBytes, slots, label: "upload bench ring" })
  await warmRing(ring)
  const config = `${size(slotBytes)} x ${slots}`
  const writes = Math.max(1, Math.round(total / SRC_BYTES))
  let s0 = ring.stalls
  let q0 = ring.submits
  await measure("UploadRing.write (slot-sized stages)", config, writes * SRC_BYTES, async () => {
    for (let i = 0; i < writes; i++) await ring.write(dst, (i * SRC_BYTES) % DST_BYTES, src)
    ring.flush()
    return ringNote(ring, s0, q0)
  })
  const stages = Math.max(1, Math.round(total / chunk))
  s0 = ring.stalls
  q0 = ring.submits
  await measure(`UploadRing.stage (${size(chunk)} stages)`, config, stages * chunk, async () => {
    for (let i = 0; i < stages; i++) {
      const at = (i * chunk) % SRC_BYTES
      await ring.stage(chunk, (view) => view.set(src.subarray(at, at + chunk)), [{ from: 0, dst, dstOffset: (i * chunk) % DST_BYTES, size: chunk }])
    }
    ring.flush()
    return ringNote(ring, s0, q0)
  })
  ring.destroy()
}

// --- (c) disk -> GPU --------------------------------------------------------------------

const FS_TYPES: Record<number, string> = { 0x01021994: "tmpfs", 0xef53: "ext4", 0x58465342: "xfs", 0x9123683e: "btrfs", 0x794c7630: "overlayfs", 0x6969: "nfs" }

/** Fraction of the file in the page cache by fincore(1); undefined without it. */
const resident = (file: string, bytes: number): number | undefined => {
  const r = spawnSync("fincore", ["--bytes", "--noheadings", "--output", "RES", file], { encoding: "utf8" })
  const res = r.status === 0 ? parseInt(r.stdout.trim(), 10) : NaN
  return Number.isFinite(res) ? res / bytes : undefined
}

const cacheNote = (file: string, bytes: number) => {
  const f = resident(file, bytes)
  return f === undefined ? "page cache: unknown (no fincore), file just written" : `page cache: ${(100 * f).toFixed(0)}% resident before the run`
}

const cachedBytes = (): number | undefined => {
  const m = /^Cached:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"))
  return m ? Number(m[1]) * KiB : undefined
}

/**
 * Drops the file's cached pages (GNU dd iflag=nocache: fadvise DONTNEED) and returns how
 * that was verified, by fincore or else by /proc/meminfo's Cached falling by the file's
 * size; undefined when it could not be shown.
 */
const dropCache = (file: string, bytes: number): string | undefined => {
  const before = cachedBytes()
  if (spawnSync("dd", [`if=${file}`, "iflag=nocache", "count=0"], { stdio: "ignore" }).status !== 0) return undefined
  const f = resident(file, bytes)
  if (f !== undefined) return f < 0.05 ? `page cache: ${(100 * f).toFixed(0)}% resident before the run` : undefined
  const after = cachedBytes()
  if (before === undefined || after === undefined || before - after < 0.9 * bytes) return undefined
  return `page cache: dropped (meminfo Cached fell ${Math.round((before - after) / MiB)} MiB)`
}

const readFully = (fd: number, view: Uint8Array, position: number) => {
  for (let got = 0; got < view.byteLength; ) {
    const n = readSync(fd, view, got, view.byteLength - got, position + got)
    if (n === 0) throw new Error(`unexpected end of file at ${position + got}`)
    got += n
  }
}

const writeFile = (file: string, bytes: number) => {
  const t0 = performance.now()
  const fd = openSync(file, "w")
  for (let at = 0; at < bytes; at += SRC_BYTES) writeSync(fd, src, 0, Math.min(SRC_BYTES, bytes - at), at)
  fsyncSync(fd)
  closeSync(fd)
  return bytes / GiB / ((performance.now() - t0) / 1000)
}

interface DiskCase {
  readonly path: string
  /** Brings the path's own staging to steady state just before the timed run. */
  readonly warm: () => Promise<void>
  readonly run: () => Promise<void>
}

const diskCases = (fd: number, bytes: number, ring: UploadRing, host: Buffer): DiskCase[] => {
  const warmRing = async () => {
    await ring.write(dst, 0, src.subarray(0, ring.slotBytes))
    ring.flush()
  }
  // Dawn frees writeBuffer's staging between bursts: measured alone, the first burst pays its allocation.
  const warmWriteBuffer = () => writeBufferLoop(BATCH_BYTES / DISK_READ, DISK_READ, () => host)
  return [
    {
      path: "disk -> readSync into mapped ring",
      warm: warmRing,
      run: async () => {
        for (let at = 0; at < bytes; at += DISK_READ) {
          const n = Math.min(DISK_READ, bytes - at)
          await ring.stage(n, (view) => readFully(fd, view, at), [{ from: 0, dst, dstOffset: at % DST_BYTES, size: n }])
        }
        ring.flush()
      },
    },
    {
      path: "disk -> Buffer -> writeBuffer",
      warm: warmWriteBuffer,
      run: () =>
        writeBufferLoop(bytes / DISK_READ, DISK_READ, (i) => {
          readFully(fd, host, i * DISK_READ)
          return host
        }),
    },
    {
      path: "disk -> Buffer -> ring (one copy more)",
      warm: warmRing,
      run: async () => {
        for (let at = 0; at < bytes; at += DISK_READ) {
          readFully(fd, host, at)
          await ring.stage(DISK_READ, (view) => view.set(host), [{ from: 0, dst, dstOffset: at % DST_BYTES, size: DISK_READ }])
        }
        ring.flush()
      },
    },
  ]
}

const benchDisk = async () => {
  const bytes = Math.ceil(((o.fileMib ?? Math.min(1024, o.totalMib)) * MiB) / DISK_READ) * DISK_READ
  const file = join(o.dir, `leoam-upload-bench-${process.pid}.bin`)
  const fsType = FS_TYPES[Number(statfsSync(o.dir).type)] ?? `0x${Number(statfsSync(o.dir).type).toString(16)}`
  const writeGiBs = writeFile(file, bytes)
  console.log(`\n(c) disk -> GPU: ${size(bytes)} file in ${o.dir} (${fsType}), written at ${writeGiBs.toFixed(2)} GiB/s incl. fsync; ${DISK_READ / MiB} MiB reads, ring 64 MiB x 4`)
  const ring = new UploadRing(device, { slotBytes: 64 * MiB, slots: 4, label: "upload bench disk ring" })
  await warmRing(ring)
  const host = Buffer.allocUnsafe(DISK_READ)
  host.set(src.subarray(0, DISK_READ))
  const fd = openSync(file, "r")
  const cases = diskCases(fd, bytes, ring, host)
  const timed = async (c: DiskCase, config: string, note: () => string | undefined) => {
    await c.warm()
    const before = note()
    if (before === undefined) return false
    await measure(c.path, config, bytes, async () => (await c.run(), before))
    return true
  }
  let cold = false
  try {
    for (const c of cases) await timed(c, "warm: just written", () => cacheNote(file, bytes))
    // Cold: only where dropping the file's pages demonstrably worked (tmpfs never drops).
    cold = fsType !== "tmpfs"
    for (const c of cases.slice(0, 2)) cold = cold && (await timed(c, "cold: pages dropped", () => dropCache(file, bytes)))
    if (!cold) console.log("    (no cold pass: the file's pages could not be shown dropped from the page cache)")
  } finally {
    closeSync(fd)
    unlinkSync(file)
    ring.destroy()
  }
  return { file, fsType, bytes, writeGiBs, coldPass: cold }
}

// --- (d) GPU -> host --------------------------------------------------------------------

const benchReadback = async (slotBytes: number, slots: number) => {
  const ring = new ReadbackRing(device, { slotBytes, slots, label: "upload bench readback" })
  const span = Math.min(total, DST_BYTES)
  const regions = Array.from({ length: Math.ceil(span / chunk) }, (_, i) => ((i * 7919) % Math.ceil(span / chunk)) * chunk) // scattered order
  const copies = regions.map((at) => ({ src: dst, srcOffset: at, size: Math.min(chunk, span - at) }))
  const out = new Uint8Array(slotBytes)
  const sink = (view: Uint8Array) => out.set(view)
  await ring.read(copies.slice(0, slots), sink) // warm-up
  const reads = Math.max(1, Math.round(total / span))
  const q0 = ring.submits
  await measure(`ReadbackRing.read (${size(chunk)} regions)`, `${size(slotBytes)} x ${slots}`, reads * span, async () => {
    for (let r = 0; r < reads; r++) await ring.read(copies, sink)
    return `${ring.submits - q0} submits`
  })
  ring.destroy()
}

const benchFreshReadBack = async (piece: number) => {
  const n = Math.max(1, Math.round(total / piece))
  await readBack(device, dst, 0, piece)
  await measure("readBack (fresh MAP_READ buffer each)", size(piece), n * piece, async () => {
    for (let i = 0; i < n; i++) await readBack(device, dst, (i * piece) % DST_BYTES, piece)
  })
}

// --- main -------------------------------------------------------------------------------

console.log(`device: ${gpu.adapterName} (${gpu.kind}); ${size(total)} per case, chunks ${size(chunk)}`)
console.log("\n(a) host -> GPU through writeBuffer (host memcpy between two host arrays: for reference)")
console.log(`${"path".padEnd(40)} ${"config".padEnd(22)} ${"MiB".padStart(6)} ${"s".padStart(8)} ${"GiB/s".padStart(7)}  note`)
await benchHost()
for (const piece of [64 * KiB, MiB, 16 * MiB, 64 * MiB]) await benchWriteBuffer(piece)
console.log("\n(b) host -> GPU through the UploadRing (waits: the GPU was the bottleneck)")
for (const [slotBytes, slots] of [[16 * MiB, 4], [64 * MiB, 4], [64 * MiB, 8]] as const) await benchRing(slotBytes, slots)
const disk = await benchDisk()
console.log("\n(d) GPU -> host")
for (const [slotBytes, slots] of [[16 * MiB, 4], [64 * MiB, 4]] as const) await benchReadback(slotBytes, slots)
await benchFreshReadBack(16 * MiB)

if (o.json) {
  writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), device: gpu.adapterName, kind: gpu.kind, argv: process.argv.slice(2), totalBytes: total, chunkBytes: chunk, disk, rows }, null, 2))
}
dst.destroy()
await releaseGpu()
