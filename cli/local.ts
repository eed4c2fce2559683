// Where the CLI finds a local node: `leoam serve` records its NATS URL and pid in
// $XDG_CACHE_HOME/leoam/serve.json while it runs, so `leoam admin`, `leoam stats` and
// `leoam request` reach it without --nats-url. LEOAM_NATS_URL overrides; the fallback is
// nats://127.0.0.1:4222 (the systemd unit's port).
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { homedir } from "node:os"
import { dirname, join } from "node:path"

export const serveRecordPath = () => join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "leoam", "serve.json")

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** Records this process's node (best effort: a read-only home only loses the convenience). */
export const writeServeRecord = (url: string): void => {
  try {
    const file = serveRecordPath()
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
    writeFileSync(file, JSON.stringify({ url, pid: process.pid, started: new Date().toISOString() }) + "\n", { mode: 0o600 })
  } catch {
    // no record: the CLI then needs --nats-url
  }
}

/** Removes the record if it is still this process's. */
export const removeServeRecord = (): void => {
  try {
    const file = serveRecordPath()
    if ((JSON.parse(readFileSync(file, "utf8")) as { pid?: number }).pid === process.pid) rmSync(file, { force: true })
  } catch {
    // gone already, or another node's
  }
}

/** The NATS URL of the local node: LEOAM_NATS_URL, a running `leoam serve`'s record, or port 4222. */
export const defaultNatsUrl = (): string => {
  if (process.env.LEOAM_NATS_URL) return process.env.LEOAM_NATS_URL
  try {
    const r = JSON.parse(readFileSync(serveRecordPath(), "utf8")) as { url?: unknown; pid?: unknown }
    if (typeof r.url === "string" && typeof r.pid === "number" && alive(r.pid)) return r.url
  } catch {
    // no record
  }
  return "nats://127.0.0.1:4222"
}
