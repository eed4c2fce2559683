// The KV directory itself: created owner-only when missing, checked writable, and its
// files kept private (they hold prompt KV). Used by DiskStore.open.
import * as fs from "node:fs"
import { diskStoreError, errnoCode } from "./disk-errors.ts"

/** Makes sure `dir` is a writable directory, creating it (not its parents) if missing. */
export const ensureDir = (dir: string): void => {
  let stat: fs.Stats | undefined
  try {
    stat = fs.statSync(dir)
  } catch (e) {
    const code = errnoCode(e)
    if (code === "ENOTDIR") throw diskStoreError("kv_dir_unavailable", dir, "a parent of the KV directory is not a directory")
    if (code !== "ENOENT") throw diskStoreError("kv_dir_unavailable", dir, `cannot stat: ${(e as Error).message}`)
  }
  if (stat === undefined) {
    try {
      fs.mkdirSync(dir, { mode: 0o700 })
    } catch (e) {
      const code = errnoCode(e)
      const why = code === "ENOENT" ? "its parent directory does not exist" : code === "ENOTDIR" ? "its parent is not a directory" : (e as Error).message
      throw diskStoreError("kv_dir_unavailable", dir, `cannot create the KV directory: ${why}`)
    }
    return
  }
  if (!stat.isDirectory()) throw diskStoreError("kv_dir_unavailable", dir, "exists but is not a directory")
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK)
  } catch {
    throw diskStoreError("kv_dir_unavailable", dir, "is not writable")
  }
}

/** The chunk directory and the index hold prompt KV: owner only (lmdb-js creates its files 0644; older stores made 0755 directories). */
export const privateFiles = (...files: string[]): void => {
  for (const file of files) {
    try {
      fs.chmodSync(file, fs.statSync(file).isDirectory() ? 0o700 : 0o600)
    } catch {
      // Another user's file in a shared directory: leave it as its owner made it.
    }
  }
}
