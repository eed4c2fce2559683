// Safetensors files (one, or shards behind model.safetensors.index.json) and the
// Hugging Face weight source over them. Headers are validated against the file size
// before any tensor is trusted; tensor bytes are streamed with fs.readSync in pieces
// and converted to f16 bits piece by piece, so no shard is ever held whole in memory.

import * as fs from "node:fs"
import * as path from "node:path"
import { loadConfig } from "./config.ts"
import { modelError, shown } from "./errors.ts"
import { bf16ToF16Array, f32ToF16Array } from "./half.ts"
import { defaultMaxElements, expectedTensors, lmHeadName, numElements } from "./layout.ts"
import type { ModelConfig, TensorDtype, TensorInfo, WeightSource } from "./types.ts"

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("leoam reads safetensors only on little-endian hosts")

/** Bytes per element of every dtype safetensors defines; only F16/BF16/F32 can be read. */
const dtypeBytes: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
}
const readableDtypes: ReadonlyArray<string> = ["F16", "BF16", "F32"]
const isReadable = (dtype: string): dtype is TensorDtype => readableDtypes.includes(dtype)

/** The limit the reference implementation puts on a header. */
const maxHeaderBytes = 100_000_000

export interface SafetensorsEntry {
  readonly name: string
  /** As written in the header; may be one this reader cannot convert. */
  readonly dtype: string
  readonly shape: ReadonlyArray<number>
  /** Absolute byte offset of the tensor's data in the file. */
  readonly start: number
  readonly byteLength: number
}

export interface SafetensorsHeader {
  readonly file: string
  readonly fileSize: number
  readonly metadata: Readonly<Record<string, string>>
  readonly entries: ReadonlyMap<string, SafetensorsEntry>
}

// --- one file ---------------------------------------------------------------------

const readFully = (fd: number, into: Uint8Array, position: number, file: string, what: string): void => {
  let done = 0
  while (done < into.length) {
    const n = fs.readSync(fd, into, done, into.length - done, position + done)
    if (n === 0)
      throw modelError("safetensors_malformed", file, what, `ends early: ${into.length - done} bytes of ${what} missing`)
    done += n
  }
}

const malformed = (file: string, field: string | undefined, detail: string) =>
  modelError("safetensors_malformed", file, field, detail)

const parseEntry = (file: string, name: string, raw: unknown, dataStart: number, dataSize: number): SafetensorsEntry => {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw malformed(file, name, `tensor "${name}": header entry must be an object, got ${shown(raw)}`)
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>
  if (typeof dtype !== "string") throw malformed(file, name, `tensor "${name}": "dtype" must be a string, got ${shown(dtype)}`)
  const size = dtypeBytes[dtype]
  if (size === undefined)
    throw modelError("tensor_dtype", file, name, `tensor "${name}": unknown dtype ${shown(dtype)}`)
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw malformed(file, name, `tensor "${name}": "shape" must be a list of non-negative integers, got ${shown(shape)}`)
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  )
    throw malformed(file, name, `tensor "${name}": "data_offsets" must be [begin, end] with begin <= end, got ${shown(offsets)}`)
  const [begin, end] = offsets as [number, number]
  if (end > dataSize)
    throw malformed(
      file,
      name,
      `tensor "${name}": data_offsets end ${end} is past the end of the data (${dataSize} bytes; file truncated?)`,
    )
  const expected = numElements(shape) * size
  if (end - begin !== expected)
    throw malformed(
      file,
      name,
      `tensor "${name}": data_offsets span ${end - begin} bytes but ${dtype} ${shown(shape)} needs ${expected}`,
    )
  return { name, dtype, shape, start: dataStart + begin, byteLength: expected }
}

/** Reads and validates the header of an open safetensors file. */
export const readSafetensorsHeaderFd = (fd: number, file: string): SafetensorsHeader => {
  const fileSize = fs.fstatSync(fd).size
  if (fileSize < 8) throw malformed(file, undefined, `is ${fileSize} bytes, too short for a safetensors header`)
  const lenBytes = new Uint8Array(8)
  readFully(fd, lenBytes, 0, file, "the header length")
  const view = new DataView(lenBytes.buffer)
  const headerLen = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32
  if (headerLen < 2 || headerLen > maxHeaderBytes || 8 + headerLen > fileSize)
    throw malformed(file, undefined, `header length ${headerLen} does not fit the file (${fileSize} bytes)`)
  const headerBytes = new Uint8Array(headerLen)
  readFully(fd, headerBytes, 8, file, "the header")
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes))
  } catch (e) {
    throw malformed(file, undefined, `header is not valid JSON (${(e as Error).message})`)
  }
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw malformed(file, undefined, `header must be a JSON object, got ${shown(json)}`)

  const dataStart = 8 + headerLen
  const entries = new Map<string, SafetensorsEntry>()
  let metadata: Record<string, string> = {}
  for (const [name, raw] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || !Object.values(raw).every((v) => typeof v === "string"))
        throw malformed(file, name, `"__metadata__" must map strings to strings, got ${shown(raw)}`)
      metadata = raw as Record<string, string>
      continue
    }
    entries.set(name, parseEntry(file, name, raw, dataStart, fileSize - dataStart))
  }
  return { file, fileSize, metadata, entries }
}

/** Reads and validates the header of a safetensors file by path. */
export const readSafetensorsHeader = (file: string): SafetensorsHeader => {
  const fd = openShard(file, undefined)
  try {
    return readSafetensorsHeaderFd(fd, file)
  } finally {
    fs.closeSync(fd)
  }
}

const openShard = (file: string, forTensor: string | undefined): number => {
  try {
    return fs.openSync(file, "r")
  } catch (e) {
    const which = forTensor === undefined ? "" : ` (it holds tensor "${forTensor}")`
    throw modelError("shard_missing", file, forTensor, `cannot open weights file${which}: ${(e as Error).message}`)
  }
}

/**
 * Streams one tensor as f16 bits. One piece buffer is allocated per call and reused;
 * BF16 and F32 are read into a second buffer and converted per piece.
 */
export const streamTensorF16 = (
  fd: number,
  file: string,
  entry: SafetensorsEntry,
  sink: (piece: Uint16Array, elementOffset: number) => void,
  maxElements = defaultMaxElements,
): void => {
  if (!isReadable(entry.dtype))
    throw modelError(
      "tensor_dtype",
      file,
      entry.name,
      `tensor "${entry.name}" has dtype ${entry.dtype}; only ${readableDtypes.join(", ")} can be loaded`,
    )
  if (!(Number.isSafeInteger(maxElements) && maxElements > 0))
    throw new RangeError(`maxElements must be a positive integer, got ${maxElements}`)
  const count = numElements(entry.shape)
  const pieceLen = Math.min(maxElements, count)
  const piece = new Uint16Array(pieceLen)
  const raw =
    entry.dtype === "F16" ? undefined : entry.dtype === "BF16" ? new Uint16Array(pieceLen) : new Float32Array(pieceLen)
  const elemBytes = dtypeBytes[entry.dtype]!
  for (let at = 0; at < count; at += pieceLen) {
    const n = Math.min(pieceLen, count - at)
    const position = entry.start + at * elemBytes
    const out = n === pieceLen ? piece : piece.subarray(0, n)
    if (raw === undefined) {
      readFully(fd, new Uint8Array(piece.buffer, 0, n * 2), position, file, `tensor "${entry.name}"`)
    } else {
      readFully(fd, new Uint8Array(raw.buffer, 0, n * elemBytes), position, file, `tensor "${entry.name}"`)
      if (raw instanceof Float32Array) f32ToF16Array(raw.subarray(0, n), out)
      else bf16ToF16Array(raw.subarray(0, n), out)
    }
    sink(out, at)
  }
}

// --- a set of files ---------------------------------------------------------------

interface Located {
  readonly fd: number
  readonly file: string
  readonly entry: SafetensorsEntry
}

/** The safetensors files of a model directory, open for reading until close(). */
export class SafetensorsFiles {
  private constructor(
    /** The index file, or the single model.safetensors: what "the weights" are called in messages. */
    readonly source: string,
    readonly located: ReadonlyMap<string, Located>,
    private readonly fds: Array<number>,
  ) {}

  /** `model.safetensors.index.json` if present, else `model.safetensors`. */
  static open(dir: string): SafetensorsFiles {
    const index = path.join(dir, "model.safetensors.index.json")
    if (fs.existsSync(index)) return SafetensorsFiles.openIndexed(dir, index)
    const single = path.join(dir, "model.safetensors")
    return SafetensorsFiles.openFiles(single, new Map([[single, undefined]]))
  }

  private static openIndexed(dir: string, index: string): SafetensorsFiles {
    const weightMap = readWeightMap(index)
    const shards = new Map<string, string>() // shard path -> first tensor mapped to it
    for (const [tensor, shard] of weightMap) {
      const file = path.join(dir, shard)
      if (path.relative(dir, file).startsWith("..") || path.isAbsolute(shard))
        throw malformed(index, `weight_map.${tensor}`, `shard "${shard}" of tensor "${tensor}" is outside the model directory`)
      if (!shards.has(file)) shards.set(file, tensor)
    }
    const files = SafetensorsFiles.openFiles(index, shards)
    for (const [tensor, shard] of weightMap) {
      const at = files.located.get(tensor)
      if (at === undefined || at.file !== path.join(dir, shard)) {
        files.close()
        throw modelError(
          "tensor_missing",
          path.join(dir, shard),
          tensor,
          `tensor "${tensor}" is not in this shard, though ${path.basename(index)} maps it here`,
        )
      }
    }
    return files
  }

  private static openFiles(source: string, shards: ReadonlyMap<string, string | undefined>): SafetensorsFiles {
    const fds: Array<number> = []
    const located = new Map<string, Located>()
    try {
      for (const [file, forTensor] of shards) {
        const fd = openShard(file, forTensor)
        fds.push(fd)
        for (const entry of readSafetensorsHeaderFd(fd, file).entries.values()) {
          const prior = located.get(entry.name)
          if (prior !== undefined)
            throw malformed(file, entry.name, `tensor "${entry.name}" is also in ${prior.file}`)
          located.set(entry.name, { fd, file, entry })
        }
      }
    } catch (e) {
      for (const fd of fds) fs.closeSync(fd)
      throw e
    }
    return new SafetensorsFiles(source, located, fds)
  }

  readF16(name: string, sink: (piece: Uint16Array, elementOffset: number) => void, maxElements?: number): void {
    const at = this.located.get(name)
    if (at === undefined) throw modelError("tensor_missing", this.source, name, `tensor "${name}" is not in the weights`)
    streamTensorF16(at.fd, at.file, at.entry, sink, maxElements)
  }

  close(): void {
    for (const fd of this.fds) fs.closeSync(fd)
    this.fds.length = 0
  }
}

const readWeightMap = (index: string): ReadonlyMap<string, string> => {
  let json: unknown
  try {
    json = JSON.parse(fs.readFileSync(index, "utf8"))
  } catch (e) {
    throw malformed(index, undefined, `cannot read the shard index (${(e as Error).message})`)
  }
  const weightMap = (json as { weight_map?: unknown } | null)?.weight_map
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap))
    throw malformed(index, "weight_map", `field "weight_map" must be an object, got ${shown(weightMap)}`)
  const out = new Map<string, string>()
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard.length === 0)
      throw malformed(index, `weight_map.${tensor}`, `field "weight_map.${tensor}" must be a file name, got ${shown(shard)}`)
    out.set(tensor, shard)
  }
  return out
}

// --- the Hugging Face weight source -----------------------------------------------

/** A Hugging Face model directory: config.json plus safetensors, checked against the Llama layout. */
export class HfWeightSource implements WeightSource {
  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    private readonly files: SafetensorsFiles,
  ) {}

  static open(dir: string): HfWeightSource {
    const config = loadConfig(dir)
    const files = SafetensorsFiles.open(dir)
    try {
      checkLayout(config, files)
    } catch (e) {
      files.close()
      throw e
    }
    const tensors = new Map<string, TensorInfo>()
    for (const [name, { entry }] of files.located) {
      // A tied model's lm_head (some exporters write it anyway) is never read.
      if (config.tieWordEmbeddings && name === lmHeadName) continue
      if (isReadable(entry.dtype)) tensors.set(name, { name, dtype: entry.dtype, shape: entry.shape })
    }
    return new HfWeightSource(dir, config, tensors, files)
  }

  readF16(name: string, sink: (piece: Uint16Array, elementOffset: number) => void, maxElements?: number): void {
    if (!this.tensors.has(name)) throw modelError("tensor_missing", this.files.source, name, `tensor "${name}" is not in the weights`)
    this.files.readF16(name, sink, maxElements)
  }

  close(): void {
    this.files.close()
  }
}

export const openHfModel = (dir: string): HfWeightSource => HfWeightSource.open(dir)

const checkLayout = (config: ModelConfig, files: SafetensorsFiles): void => {
  for (const want of expectedTensors(config)) {
    const at = files.located.get(want.name)
    if (at === undefined)
      throw modelError(
        "tensor_missing",
        files.source,
        want.name,
        `tensor "${want.name}" (shape ${shown(want.shape)}) is missing from the weights`,
      )
    const { entry } = at
    if (!isReadable(entry.dtype))
      throw modelError(
        "tensor_dtype",
        at.file,
        want.name,
        `tensor "${want.name}" has dtype ${entry.dtype}; only ${readableDtypes.join(", ")} can be loaded`,
      )
    if (entry.shape.length !== want.shape.length || entry.shape.some((d, i) => d !== want.shape[i]))
      throw modelError(
        "tensor_shape",
        at.file,
        want.name,
        `tensor "${want.name}" has shape ${shown(entry.shape)}, but config.json implies ${shown(want.shape)}`,
      )
  }
}
