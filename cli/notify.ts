// Readiness and stopping for systemd's Type=notify. Node cannot send on a unix datagram
// socket, so `systemd-notify` (a child; the unit has NotifyAccess=all) sends the message, and
// only when systemd gave a $NOTIFY_SOCKET. systemd-notify waits until the manager has read
// the message (no --no-block), so the child's exit cannot race its attribution to the unit.
import { spawn } from "node:child_process"

const send = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv): Promise<void> =>
  new Promise((resolve) => {
    const child = spawn("systemd-notify", [`--pid=${process.pid}`, ...args], { env, stdio: ["ignore", "ignore", "pipe"] })
    let err = ""
    child.stderr.on("data", (d: Buffer) => (err += d.toString()))
    child.on("error", (e) => {
      process.stderr.write(`leoam: could not tell systemd (${args.join(" ")}): ${e.message}\n`)
      resolve()
    })
    child.on("exit", (code) => {
      if (code !== 0) process.stderr.write(`leoam: could not tell systemd (${args.join(" ")}): systemd-notify exited ${code}${err ? `: ${err.trim()}` : ""}\n`)
      resolve()
    })
  })

/** READY=1 with a status line, when run by systemd with Type=notify; nothing otherwise. */
export const notifyReady = async (status: string, env: NodeJS.ProcessEnv = process.env): Promise<void> => {
  if (env.NOTIFY_SOCKET) await send(["--ready", `--status=${status}`], env)
}

/** STOPPING=1: the drain has begun. */
export const notifyStopping = async (env: NodeJS.ProcessEnv = process.env): Promise<void> => {
  if (env.NOTIFY_SOCKET) await send(["STOPPING=1", "--status=draining"], env)
}
