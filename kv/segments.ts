// The chunk directory: append-only segment files, one per session (`<kvDir>/chunks/<name>.seg`).
// Owns the open file descriptors and each file's append tail. Invariants: bytes are only
// ever appended at the tail; a failed append truncates its file back to where it started,
// so no partial chunk stays behind; only this process (the store's owner) writes here.
// Appends are synchronous (see DiskStore.putChunks); reads may be asynchronous (libuv's
// thread pool), and a file descriptor being read is closed only once its reads are done.

import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { diskStoreError, errnoCode, writeError } from "./disk-errors.ts"

/** The file calls the store makes, injectable so tests can simulate a full disk. */
export interface FileIo {
  /** As fs.writeSync(fd, buffer, offset, length, position): returns bytes written. */
  readonly write: (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => number
  /** As fs.readSync(fd, buffer, offset, length, position): returns bytes read. */
  readonly read: (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => number
  /** As fs.read(fd, buffer, offset, length, position) on the thread pool: resolves to bytes read. */
  readonly readAsync: (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => Promise<number>
}

export const nodeFileIo: FileIo = {
  write: (fd, buffer, offset, length, position) => fs.writeSync(fd, buffer, offset, length, position),
  read: (fd, buffer, offset, length, position) => fs.readSync(fd, buffer, offset, length, position),
  readAsync: (fd, buffer, offset, length, position) =>
    new Promise((resolve, reject) => fs.read(fd, buffer, offset, length, position, (error, n) => (error ? reject(error) : resolve(n)))),
}

/**
 * The segment file name of a session: the id itself when it is a plain name, else `~` and
 * a hash (ids may hold `/`, `..` or be long); `~` never starts a plain name, so the two
 * forms cannot collide.
 */
export const segmentFileName = (session: string): string =>
  /^[A-Za-z0-9_-]{1,100}$/.test(session)
    ? `${session}.seg`
    : `~${createHash("sha256").update(session, "utf8").digest("hex").slice(0, 40)}.seg`

interface OpenFile {
  readonly fd: number
  /** Where the next append lands: the file's size as this process knows it. */
  tail: number
  dirty: boolean
  /** Asynchronous reads in flight on `fd`. */
  readers: number
  /** Closed while read: the last reader closes `fd`. */
  orphaned: boolean
}

/** One chunk to append: its bytes go to `file`. */
export interface Append {
  readonly file: string
  readonly bytes: Uint8Array
}

export class SegmentFiles {
  /** Open files by name, least recently used first (Map keeps insertion order). */
  private readonly open = new Map<string, OpenFile>()

  constructor(
    readonly dir: string,
    private readonly io: FileIo,
    private readonly maxOpenFiles: number,
  ) {}

  pathOf(file: string): string {
    return path.join(this.dir, file)
  }

  /**
   * Appends every buffer, in order, and returns each one's offset in its file. All or
   * nothing: on a failure every touched file is truncated back to its tail before the call.
   */
  appendAll(appends: ReadonlyArray<Append>): number[] {
    const startTails = new Map<string, number>()
    const offsets: number[] = []
    try {
      for (const { file, bytes } of appends) {
        const f = this.file(file, true)
        if (!startTails.has(file)) startTails.set(file, f.tail)
        offsets.push(f.tail)
        this.writeFully(file, f, bytes)
      }
    } catch (e) {
      this.rollback(startTails)
      throw e
    }
    return offsets
  }

  /** Truncates files back to the given tails (used when the index commit after an append fails). */
  rollback(tails: ReadonlyMap<string, number>): void {
    for (const [file, tail] of tails) {
      try {
        const f = this.file(file, true)
        try {
          fs.ftruncateSync(f.fd, tail)
          f.tail = tail
        } catch {
          // The bytes past `tail` are unindexed, so they are only wasted space.
          f.tail = fs.fstatSync(f.fd).size
        }
      } catch {
        // Cannot even reopen it: the next append reopens and appends after whatever is there.
      }
    }
  }

  /** Tails of the given files now, to hand back to rollback(). */
  tails(files: Iterable<string>): Map<string, number> {
    const out = new Map<string, number>()
    for (const file of files) out.set(file, this.file(file, true).tail)
    return out
  }

  /** Reads up to `length` bytes at `offset` into `into`; returns how many were read (short at EOF). */
  read(file: string, offset: number, into: Uint8Array): number {
    const f = this.fileToRead(file)
    let done = 0
    while (done < into.length) {
      let n: number
      try {
        n = this.io.read(f.fd, into, done, into.length - done, offset + done)
      } catch (e) {
        throw diskStoreError("io_failed", this.pathOf(file), `read failed at ${offset + done}: ${(e as Error).message}`)
      }
      if (n === 0) break
      done += n
    }
    return done
  }

  /** read() on the thread pool: the event loop goes on while the bytes come. */
  async readAsync(file: string, offset: number, into: Uint8Array): Promise<number> {
    const f = this.fileToRead(file)
    f.readers++
    try {
      let done = 0
      while (done < into.length) {
        let n: number
        try {
          n = await this.io.readAsync(f.fd, into, done, into.length - done, offset + done)
        } catch (e) {
          throw diskStoreError("io_failed", this.pathOf(file), `read failed at ${offset + done}: ${(e as Error).message}`)
        }
        if (n === 0) break
        done += n
      }
      return done
    } finally {
      if (--f.readers === 0 && f.orphaned) fs.closeSync(f.fd)
    }
  }

  /** fsyncs every file written since the last sync. */
  sync(): void {
    for (const [file, f] of this.open) {
      if (!f.dirty) continue
      try {
        fs.fsyncSync(f.fd)
      } catch (e) {
        throw writeError(this.pathOf(file), e)
      }
      f.dirty = false
    }
  }

  /** Closes and deletes a segment file; a file that is not there is fine. */
  remove(file: string): void {
    this.closeFile(file)
    try {
      fs.unlinkSync(this.pathOf(file))
    } catch (e) {
      if (errnoCode(e) !== "ENOENT") throw diskStoreError("io_failed", this.pathOf(file), `unlink failed: ${(e as Error).message}`)
    }
  }

  /** Bytes held by all segment files on disk (live and dead chunks alike). */
  fileBytes(): number {
    let total = 0
    for (const name of fs.readdirSync(this.dir)) {
      if (name.endsWith(".seg")) total += fs.statSync(path.join(this.dir, name)).size
    }
    return total
  }

  closeAll(): void {
    for (const file of [...this.open.keys()]) this.closeFile(file)
  }

  private fileToRead(file: string): OpenFile {
    try {
      return this.file(file, false)
    } catch (e) {
      if (errnoCode(e) === "ENOENT") throw diskStoreError("chunk_corrupt", this.pathOf(file), "segment file is missing")
      throw diskStoreError("io_failed", this.pathOf(file), `open failed: ${(e as Error).message}`)
    }
  }

  private writeFully(file: string, f: OpenFile, bytes: Uint8Array): void {
    let done = 0
    while (done < bytes.length) {
      let n: number
      try {
        n = this.io.write(f.fd, bytes, done, bytes.length - done, f.tail + done)
      } catch (e) {
        throw writeError(this.pathOf(file), e)
      }
      if (n <= 0) throw writeError(this.pathOf(file), new Error(`wrote ${n} bytes`))
      done += n
    }
    f.tail += bytes.length
    f.dirty = true
  }

  /** The open file by name, opening (and for writes creating) it; the least recently used closes past the cap. */
  private file(file: string, create: boolean): OpenFile {
    const known = this.open.get(file)
    if (known !== undefined) {
      this.open.delete(file)
      this.open.set(file, known)
      return known
    }
    const flags = create ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDWR
    let fd: number
    try {
      fd = fs.openSync(this.pathOf(file), flags, 0o600)
    } catch (e) {
      if (create) throw writeError(this.pathOf(file), e)
      throw e
    }
    const opened: OpenFile = { fd, tail: fs.fstatSync(fd).size, dirty: false, readers: 0, orphaned: false }
    this.open.set(file, opened)
    while (this.open.size > this.maxOpenFiles) {
      const oldest = this.open.keys().next().value as string
      if (oldest === file) break
      this.closeFile(oldest)
    }
    return opened
  }

  private closeFile(file: string): void {
    const f = this.open.get(file)
    if (f === undefined) return
    this.open.delete(file)
    try {
      if (f.dirty) fs.fsyncSync(f.fd)
    } finally {
      if (f.readers > 0) f.orphaned = true
      else fs.closeSync(f.fd)
    }
  }
}
