// Host <-> GPU transfer paths for KV chunks. UploadRing owns a fixed ring of persistently
// mapped MAP_WRITE staging buffers: bytes are written (or read from disk) straight into
// mapped memory and reach their destinations by copyBufferToBuffer, several slots in
// flight; ReadbackRing owns a pool of MAP_READ buffers for the way back. A staging
// buffer is in exactly one state: mapped (free, or being filled) or unmapped (its copies
// queued on the GPU). Only the rings' own methods change that state.
import "./gpu.ts" // installs the WebGPU globals (GPUBufferUsage, GPUMapMode)

const align4 = (n: number) => Math.ceil(n / 4) * 4

export interface RingOptions {
  /** Bytes per staging buffer: a multiple of 4. */
  readonly slotBytes: number
  /** Staging buffers; at least 2 lets the host fill one while the GPU copies another. */
  readonly slots: number
  readonly label?: string
}

/** A flushed slot's recorded copies: `size` bytes from byte `at` of the slot to `dst` at `dstOffset`. */
export interface RecordedCopy {
  readonly at: number
  readonly dst: GPUBuffer
  readonly dstOffset: number
  readonly size: number
}

/**
 * How a flush moves its slot's bytes to their destinations, when not by one
 * copyBufferToBuffer per copy (engine/staging-scatter.ts: one copy and a scatter pass).
 * `bytes` is how much of the slot was filled. Returns false, encoding nothing, where it
 * cannot keep the copies' order (overlapping destinations): the flush then copies one by one.
 */
export interface CopyEncoder {
  encode(encoder: GPUCommandEncoder, slot: GPUBuffer, bytes: number, copies: ReadonlyArray<RecordedCopy>): boolean
}

const checkOptions = (kind: string, o: RingOptions) => {
  if (!Number.isInteger(o.slotBytes) || o.slotBytes <= 0 || o.slotBytes % 4 !== 0) {
    throw new RangeError(`${kind}: slotBytes ${o.slotBytes} must be a positive multiple of 4`)
  }
  if (!Number.isInteger(o.slots) || o.slots < 1) throw new RangeError(`${kind}: slots ${o.slots} must be at least 1`)
}

// copyBufferToBuffer wants offsets and sizes that are multiples of 4.
const checkAligned = (what: string, offset: number, size: number) => {
  if (offset % 4 !== 0 || size % 4 !== 0 || offset < 0 || size < 0) {
    throw new RangeError(`${what}: offset ${offset} and size ${size} must be non-negative multiples of 4`)
  }
}

// --- upload -------------------------------------------------------------------------

/**
 * One copy out of a stage: `size` bytes from byte `from` of the staged bytes to
 * `dst` at `dstOffset`. `from`, `dstOffset` and `size` must be multiples of 4.
 */
export interface StagedCopy {
  readonly from: number
  readonly dst: GPUBuffer
  readonly dstOffset: number
  readonly size: number
}

interface UploadSlot {
  readonly buffer: GPUBuffer // (slotBytes) u8, MAP_WRITE | COPY_SRC
  /** The whole mapped range while mapped; undefined while its copies are in flight. */
  view: Uint8Array | undefined
  /** Settles when the slot is mapped again after a flush (its copies have run). */
  ready: Promise<void>
  /** Bytes packed so far, a multiple of 4. */
  used: number
  /** Recorded copies; `at` is the byte offset in this slot. */
  readonly copies: RecordedCopy[]
}

/**
 * Host -> GPU through a ring of mapped staging buffers. `stage` packs bytes into the
 * current slot and records copies; `flush` (also automatic when a slot fills) submits
 * them in one command buffer and re-maps the slot in the background. Stages run in call
 * order even when the caller does not await between them; a stage that must wait for a
 * slot delays the later ones, and `flush` submits only stages whose promise has resolved.
 */
export class UploadRing {
  readonly slotBytes: number
  /** Bytes given to stage(). */
  bytesStaged = 0
  /** Command buffers submitted. */
  submits = 0
  /** Stages that waited for a slot to come back from the GPU. */
  stalls = 0
  /** Copies recorded (what a flush without a CopyEncoder encodes one command each for). */
  copies = 0
  /** Flushes through `via` (a copy and a scatter pass each), and milliseconds of host time spent in flush(). */
  scattered = 0
  flushMs = 0
  private readonly slots: UploadSlot[]
  private readonly free: UploadSlot[] // oldest flush first: the next to come back
  private current: UploadSlot | undefined
  private queued = 0 // stages waiting behind one that waits for a slot
  private tail: Promise<void> = Promise.resolve()
  private destroyed = false

  constructor(
    private readonly device: GPUDevice,
    options: RingOptions,
    /** Moves each flush's bytes (else one copyBufferToBuffer per copy). */
    private readonly via?: CopyEncoder,
  ) {
    checkOptions("UploadRing", options)
    this.slotBytes = options.slotBytes
    this.slots = Array.from({ length: options.slots }, (_, i) => {
      const buffer = device.createBuffer({
        label: `${options.label ?? "upload ring"} ${i}`,
        size: options.slotBytes,
        usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
        mappedAtCreation: true,
      })
      return { buffer, view: new Uint8Array(buffer.getMappedRange()), ready: Promise.resolve(), used: 0, copies: [] }
    })
    this.free = [...this.slots]
  }

  /** GPU memory held by the ring (count it against the GPU KV budget). */
  get bytes(): number {
    return this.slots.length * this.slotBytes
  }

  /**
   * Calls `fill` with a view of `bytes` bytes of mapped staging memory and records
   * `copies` out of it. Resolves once recorded (not copied: call flush()). Rejects with
   * a RangeError when bytes > slotBytes (split it, or use write()) or a copy is not
   * 4-byte aligned or leaves the staged bytes. The view is valid only during `fill`.
   */
  stage(bytes: number, fill: (view: Uint8Array) => void, copies: ReadonlyArray<StagedCopy>): Promise<void> {
    try {
      this.check(bytes, copies)
      if (this.queued === 0 && this.tryPlace(bytes)) {
        this.record(bytes, fill, copies)
        return Promise.resolve()
      }
    } catch (error) {
      return Promise.reject(error)
    }
    this.queued++
    const staged = this.tail
      .then(async () => {
        await this.place(bytes)
        this.record(bytes, fill, copies)
      })
      .finally(() => {
        this.queued--
      })
    this.tail = staged.catch(() => {}) // the caller sees the failure; later stages go on
    return staged
  }

  /** Uploads `src` (byteLength and dstOffset multiples of 4) in slot-sized stages. */
  async write(dst: GPUBuffer, dstOffset: number, src: Uint8Array): Promise<void> {
    checkAligned("UploadRing.write", dstOffset, src.byteLength)
    const pieces: Promise<void>[] = [] // all enqueued before the first await: call order holds
    for (let at = 0; at < src.byteLength; at += this.slotBytes) {
      const piece = src.subarray(at, Math.min(src.byteLength, at + this.slotBytes))
      const copy = { from: 0, dst, dstOffset: dstOffset + at, size: piece.byteLength }
      pieces.push(this.stage(piece.byteLength, (view) => view.set(piece), [copy]))
    }
    await Promise.all(pieces)
  }

  /**
   * Submits the recorded copies of the current slot in one command buffer and starts
   * re-mapping the slot. GPU work submitted after this runs after these copies.
   */
  flush(): void {
    const slot = this.current
    if (slot === undefined || slot.used === 0) return
    const t0 = performance.now()
    this.current = undefined
    slot.buffer.unmap() // a mapped buffer may not be used by a submit
    slot.view = undefined
    if (slot.copies.length > 0) {
      const encoder = this.device.createCommandEncoder({ label: "upload ring" })
      if (this.via?.encode(encoder, slot.buffer, slot.used, slot.copies)) {
        this.scattered++
      } else {
        for (const c of slot.copies) encoder.copyBufferToBuffer(slot.buffer, c.at, c.dst, c.dstOffset, c.size)
      }
      this.device.queue.submit([encoder.finish()])
      this.submits++
    }
    slot.copies.length = 0
    slot.used = 0
    slot.ready = this.remap(slot)
    this.free.push(slot)
    this.flushMs += performance.now() - t0
  }

  /** Destroys the staging buffers; unflushed stages are dropped, waiting ones reject. */
  destroy(): void {
    this.destroyed = true
    this.current = undefined
    this.free.length = 0
    for (const s of this.slots) {
      s.view = undefined
      s.buffer.destroy()
    }
  }

  private check(bytes: number, copies: ReadonlyArray<StagedCopy>): void {
    if (this.destroyed) throw new Error("UploadRing: destroyed")
    if (!Number.isInteger(bytes) || bytes < 0 || bytes > this.slotBytes) {
      throw new RangeError(`UploadRing.stage: ${bytes} bytes do not fit a slot of ${this.slotBytes}: split the upload`)
    }
    for (const c of copies) {
      checkAligned("UploadRing.stage copy", c.from, c.size)
      checkAligned("UploadRing.stage copy destination", c.dstOffset, c.size)
      if (c.from + c.size > bytes) throw new RangeError(`UploadRing.stage: copy [${c.from}, +${c.size}) leaves the ${bytes} staged bytes`)
    }
  }

  /** Makes `current` a mapped slot with room for `bytes` if that needs no wait. */
  private tryPlace(bytes: number): boolean {
    if (this.current !== undefined && this.current.used + bytes <= this.slotBytes) return true
    this.flush()
    const next = this.free[0]
    if (next?.view === undefined) return false
    this.current = this.free.shift()
    return true
  }

  private async place(bytes: number): Promise<void> {
    if (this.destroyed) throw new Error("UploadRing: destroyed")
    if (this.tryPlace(bytes)) return
    this.stalls++
    const next = this.free.shift() // after tryPlace's flush no slot is current, so one is here
    if (next === undefined) throw new Error("UploadRing: no slot left (a re-map failed: device lost?)")
    await next.ready
    if (this.destroyed) throw new Error("UploadRing: destroyed")
    this.current = next
  }

  private record(bytes: number, fill: (view: Uint8Array) => void, copies: ReadonlyArray<StagedCopy>): void {
    const slot = this.current!
    const at = slot.used
    fill(slot.view!.subarray(at, at + bytes))
    for (const c of copies) {
      if (c.size > 0) slot.copies.push({ at: at + c.from, dst: c.dst, dstOffset: c.dstOffset, size: c.size })
    }
    this.copies += copies.length
    slot.used = at + align4(bytes)
    this.bytesStaged += bytes
    if (slot.used >= this.slotBytes) this.flush() // full: let the GPU start on it now
  }

  private remap(slot: UploadSlot): Promise<void> {
    const ready = slot.buffer.mapAsync(GPUMapMode.WRITE).then(() => {
      slot.view = new Uint8Array(slot.buffer.getMappedRange())
    })
    ready.catch(() => {}) // rejects only when destroyed; a waiting stage sees it
    return ready
  }
}

// --- readback -----------------------------------------------------------------------

export interface ReadCopy {
  readonly src: GPUBuffer
  /** Multiple of 4. */
  readonly srcOffset: number
  /** Multiple of 4. */
  readonly size: number
}

/** One staging buffer's worth of a read: pieces packed from byte 0 in order. */
export interface ReadGroup {
  readonly bytes: number
  readonly pieces: ReadonlyArray<ReadCopy>
}

/** Packs copies in order into groups of at most slotBytes, splitting a copy across groups. */
export const planReadback = (copies: ReadonlyArray<ReadCopy>, slotBytes: number): ReadGroup[] => {
  const groups: ReadGroup[] = []
  let pieces: ReadCopy[] = []
  let bytes = 0
  for (const c of copies) {
    for (let done = 0; done < c.size; ) {
      const n = Math.min(c.size - done, slotBytes - bytes)
      pieces.push({ src: c.src, srcOffset: c.srcOffset + done, size: n })
      bytes += n
      done += n
      if (bytes === slotBytes) {
        groups.push({ bytes, pieces })
        pieces = []
        bytes = 0
      }
    }
  }
  if (bytes > 0) groups.push({ bytes, pieces })
  return groups
}

interface Pending {
  readonly buffer: GPUBuffer // (slotBytes) u8, MAP_READ | COPY_DST
  readonly bytes: number
  readonly mapped: Promise<void>
}

/**
 * GPU -> host through a pool of MAP_READ staging buffers. A read submits as many of its
 * groups as there are free buffers, then hands them to `sink` in order as they map. The
 * source regions must stay unchanged until the read resolves.
 */
export class ReadbackRing {
  readonly slotBytes: number
  /** Bytes handed to sinks. */
  bytesRead = 0
  submits = 0
  /** Groups that waited for a staging buffer held by another read. */
  stalls = 0
  private readonly buffers: GPUBuffer[]
  private readonly free: GPUBuffer[]
  private readonly waiters: Array<{ resolve: (b: GPUBuffer) => void; reject: (e: Error) => void }> = []
  private destroyed = false

  constructor(
    private readonly device: GPUDevice,
    options: RingOptions,
  ) {
    checkOptions("ReadbackRing", options)
    this.slotBytes = options.slotBytes
    this.buffers = Array.from({ length: options.slots }, (_, i) =>
      device.createBuffer({
        label: `${options.label ?? "readback ring"} ${i}`,
        size: options.slotBytes,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
    )
    this.free = [...this.buffers]
  }

  get bytes(): number {
    return this.buffers.length * this.slotBytes
  }

  /**
   * Copies the regions back and calls `sink` with consecutive pieces of their
   * concatenation (once per staging buffer used, in order). A view is valid only during
   * its `sink` call. Resolves after the last sink returned.
   *
   * `prepare`, when given, records commands (e.g. a kernel writing the copies' source) into the
   * encoder of the copies, just before them: they then run in queue order with every other read,
   * so reads may share the buffer it writes. The copies must then fit one staging buffer.
   * `submitted` is called once every copy is in the queue (or the read failed): the sources
   * may be overwritten from then on.
   */
  async read(copies: ReadonlyArray<ReadCopy>, sink: (view: Uint8Array) => void, prepare?: (encoder: GPUCommandEncoder) => void, submitted?: () => void): Promise<void> {
    let told = false
    const tell = () => {
      if (!told) submitted?.()
      told = true
    }
    if (this.destroyed) {
      tell()
      throw new Error("ReadbackRing: destroyed")
    }
    for (const c of copies) checkAligned("ReadbackRing.read copy", c.srcOffset, c.size)
    const groups = planReadback(copies, this.slotBytes)
    if (prepare && groups.length > 1) tell()
    if (prepare && groups.length > 1) throw new RangeError(`ReadbackRing.read: a prepared read of ${groups.reduce((a, g) => a + g.bytes, 0)} bytes exceeds a staging buffer of ${this.slotBytes}`)
    const inFlight: Pending[] = []
    let next = 0
    try {
      while (next < groups.length || inFlight.length > 0) {
        while (next < groups.length) {
          // Take free buffers greedily; wait for one only when this read holds none (no deadlock).
          const buffer = this.free.pop() ?? (inFlight.length === 0 ? await this.acquire() : undefined)
          if (buffer === undefined) break
          inFlight.push(this.submit(buffer, groups[next++]!, prepare))
          if (next === groups.length) tell()
        }
        const head = inFlight.shift()!
        try {
          await head.mapped
          sink(new Uint8Array(head.buffer.getMappedRange(0, head.bytes)))
          this.bytesRead += head.bytes
        } finally {
          this.giveBack(head.buffer)
        }
      }
    } finally {
      tell()
      for (const p of inFlight) p.mapped.then(() => this.giveBack(p.buffer), () => this.giveBack(p.buffer))
    }
  }

  /** Destroys the staging buffers; reads waiting for one reject. */
  destroy(): void {
    this.destroyed = true
    this.free.length = 0
    for (const w of this.waiters.splice(0)) w.reject(new Error("ReadbackRing: destroyed"))
    for (const b of this.buffers) b.destroy()
  }

  private submit(buffer: GPUBuffer, group: ReadGroup, prepare?: (encoder: GPUCommandEncoder) => void): Pending {
    const encoder = this.device.createCommandEncoder({ label: "readback ring" })
    prepare?.(encoder)
    let at = 0
    for (const p of group.pieces) {
      encoder.copyBufferToBuffer(p.src, p.srcOffset, buffer, at, p.size)
      at += p.size
    }
    this.device.queue.submit([encoder.finish()])
    this.submits++
    const mapped = buffer.mapAsync(GPUMapMode.READ, 0, group.bytes)
    mapped.catch(() => {}) // awaited in order by read(); this keeps a later one from going unhandled
    return { buffer, bytes: group.bytes, mapped }
  }

  private acquire(): Promise<GPUBuffer> {
    this.stalls++
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }))
  }

  private giveBack(buffer: GPUBuffer): void {
    if (this.destroyed) return
    buffer.unmap() // no-op when the mapping failed
    const waiter = this.waiters.shift()
    if (waiter) waiter.resolve(buffer)
    else this.free.push(buffer)
  }
}
