// GPU time of a tiered decode step's attention passes, where the device has timestamp
// queries: each pass claims a (begin, end) pair while pairs last (later passes go untimed),
// the step resolves them at its end, and the sum comes back after the step. Benchmarks keep
// the last timed step's stamps for its timeline.

/** Timestamp queries per decode step (two per attention window). */
const MAX_QUERIES = 512

export class AttnTiming {
  private readonly querySet: GPUQuerySet
  private readonly resolveBuffer: GPUBuffer
  private readonly read: GPUBuffer
  private queries = 0
  private resolved = 0
  /** Keep the last timed step's (begin, end) stamps of its attention passes. */
  keepStamps = false
  lastStamps: ReadonlyArray<readonly [bigint, bigint]> = []

  /** Undefined where the device has no timestamp queries. */
  static of(device: GPUDevice): AttnTiming | undefined {
    return device.features.has("timestamp-query") ? new AttnTiming(device) : undefined
  }

  private constructor(device: GPUDevice) {
    this.querySet = device.createQuerySet({ label: "tier attention timestamps", type: "timestamp", count: MAX_QUERIES })
    this.resolveBuffer = device.createBuffer({ label: "tier timestamps resolved", size: MAX_QUERIES * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC })
    this.read = device.createBuffer({ label: "tier timestamps read-back", size: MAX_QUERIES * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  }

  /** The next pass's timestamp writes, or undefined once this step's pairs are used up. */
  claim(): GPUComputePassTimestampWrites | undefined {
    if (this.queries + 2 > MAX_QUERIES) return undefined
    const q = this.queries
    this.queries += 2
    return { querySet: this.querySet, beginningOfPassWriteIndex: q, endOfPassWriteIndex: q + 1 }
  }

  /** At the step's end: resolves its stamps and copies them for reading. */
  resolve(encoder: GPUCommandEncoder): void {
    this.resolved = this.queries
    if (this.resolved === 0) return
    encoder.resolveQuerySet(this.querySet, 0, this.resolved, this.resolveBuffer, 0)
    encoder.copyBufferToBuffer(this.resolveBuffer, 0, this.read, 0, this.resolved * 8)
  }

  /** After the step's submit: the attention ms it resolved, once read (undefined if none). */
  after(): Promise<number> | undefined {
    const n = this.resolved
    this.queries = 0
    this.resolved = 0
    return n > 0 ? this.sum(n) : undefined
  }

  private async sum(queries: number): Promise<number> {
    await this.read.mapAsync(GPUMapMode.READ, 0, queries * 8)
    const stamps = new BigUint64Array(this.read.getMappedRange(0, queries * 8))
    let ns = 0
    for (let i = 0; i < queries; i += 2) if (stamps[i + 1] > stamps[i]) ns += Number(stamps[i + 1] - stamps[i])
    if (this.keepStamps) this.lastStamps = Array.from({ length: queries / 2 }, (_, i) => [stamps[2 * i], stamps[2 * i + 1]] as const)
    this.read.unmap()
    return ns / 1e6
  }

  destroy(): void {
    this.querySet.destroy()
    this.resolveBuffer.destroy()
    this.read.destroy()
  }
}
