// Byte sizes on the command line: "1048576", "512KiB", "64 MiB", "8GiB", "1.5GiB" (binary
// units; KB/MB/GB are read as the same binary units, as most tools do).
const units: Record<string, number> = { "": 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4 }

export const parseSize = (text: string): number => {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text)
  const unit = m ? units[m[2].toLowerCase()] : undefined
  if (!m || unit === undefined) throw new RangeError(`"${text}" is not a size (bytes, or a number with KiB, MiB, GiB, TiB)`)
  const bytes = Math.floor(Number(m[1]) * unit)
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`"${text}" is too large`)
  return bytes
}
