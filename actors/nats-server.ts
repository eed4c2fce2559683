// The embedded nats-server of `leoam serve`: a child that dies with its parent and a config
// that does not outlive start-up. Node cannot set PR_SET_PDEATHSIG on a child, so the
// child is started through util-linux `setpriv --pdeathsig KILL`, which sets it and execs
// nats-server: the kernel kills nats-server when this process ends, however it ends
// (kill -9 included). The config (it holds the `--users` passwords) is written 0600 in a
// private 0700 directory named after this pid, and removed as soon as nats-server accepts
// clients (it has read it) or start-up fails; one left by a process killed during start-up
// is removed by the next start.
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { connectNats, type EmbeddedNats, freePort, type NatsAuth, SERVER_MAX_PAYLOAD } from "./nats.ts"

const DIR_PREFIX = "leoam-nats-"

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** Removes config directories left by leoam processes that were killed while their nats-server started. */
const removeStale = (dir: string) => {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return
  }
  for (const name of names) {
    const m = /^leoam-nats-(\d+)-/.exec(name)
    if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue
    try {
      rmSync(join(dir, name), { recursive: true, force: true })
    } catch {
      // Another user's: theirs to remove (its 0700 directory keeps it from us anyway).
    }
  }
}

/** Resolves once nats-server accepts a client with `auth`; rejects if it exits first or takes over 10 s. */
const ready = async (url: string, auth: NatsAuth | undefined, exited: Promise<string>): Promise<void> => {
  let early: string | undefined
  void exited.then((why) => (early = why))
  const deadline = Date.now() + 10_000
  for (;;) {
    await new Promise((r) => setTimeout(r, 50))
    if (early !== undefined) throw new Error(`nats-server ${early}`)
    try {
      await (await connectNats(url, "leoam-probe", auth)).close()
      return
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`nats-server did not accept connections on ${url} within 10 s: ${(e as Error).message}`)
    }
  }
}

/** Starts nats-server on 127.0.0.1 (a free port unless given), bound to this process's life. */
export const startEmbeddedNats = async (options: { port?: number; extraConfig?: string; auth?: NatsAuth } = {}): Promise<EmbeddedNats & { readonly pid: number }> => {
  const port = options.port ?? (await freePort())
  removeStale(tmpdir())
  const dir = mkdtempSync(join(tmpdir(), `${DIR_PREFIX}${process.pid}-`)) // 0700
  const conf = join(dir, "nats.conf")
  let child: ChildProcess | undefined
  try {
    writeFileSync(conf, `listen: "127.0.0.1:${port}"\nmax_payload: ${SERVER_MAX_PAYLOAD}\n${options.extraConfig ?? ""}\n`, { mode: 0o600, flag: "wx" })
    child = spawn("setpriv", ["--pdeathsig", "KILL", "--", "nats-server", "-c", conf], { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr!.on("data", (d) => (stderr = (stderr + String(d)).slice(-4000)))
    const spawned = child
    const exited = new Promise<string>((resolve) => {
      spawned.once("error", (e) =>
        resolve((e as NodeJS.ErrnoException).code === "ENOENT" ? "could not start: `setpriv` (util-linux) is not installed" : `could not start: ${e.message}`),
      )
      spawned.once("exit", (code, signal) => resolve(`exited (${signal ?? code}) at start: ${stderr.trim() || "is nats-server installed?"}`))
    })
    const url = `nats://127.0.0.1:${port}`
    await ready(url, options.auth, exited)
    rmSync(dir, { recursive: true, force: true })
    const stopped = new Promise<void>((resolve) => (spawned.exitCode !== null || spawned.signalCode !== null ? resolve() : spawned.once("exit", () => resolve())))
    return {
      url,
      port,
      pid: spawned.pid!,
      stop: async () => {
        if (spawned.exitCode === null && spawned.signalCode === null) {
          spawned.kill("SIGTERM")
          await Promise.race([stopped, new Promise((r) => setTimeout(r, 3000))])
          if (spawned.exitCode === null && spawned.signalCode === null) spawned.kill("SIGKILL")
        }
      },
    }
  } catch (e) {
    child?.kill("SIGKILL")
    rmSync(dir, { recursive: true, force: true })
    throw e
  }
}
