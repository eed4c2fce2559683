// Soak: `leoam serve` nodes on a nats-server of this program's own, under continuous short
// generates, with real faults injected round after round: kill -9 of `leoam serve` node a
// (restarted), a nats-server restarted on the same port, node a restarted on a truncated
// LMDB index (refused with kv_dir_unavailable, then started again after moving the index and
// store.json aside, as the README says), and kill -9 of the gpu-executor of node x, a node
// split over two processes (`leoam actor scheduler --node x` and `leoam actor gpu-executor
// --node x`, beside the `leoam serve` nodes in the queue group), then started again. Every request gets exactly one outcome: the golden
// greedy ids, an error code, lost (no reply within the deadline), unsent (published while this
// program's own connection was down: nats.js drops it), late (answered after the deadline) or
// doubled (two replies).
// Prints a table per fault kind, writes JSON with --out, and exits 1 if a request was lost
// or doubled or a child process is left. Every child is killed on every exit path.
//
//   npx tsx bench/soak.ts --rounds 3 --concurrency 2 [--nodes 2] [--out soak.json]
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command, Option } from "commander"
import type { NatsConnection } from "@nats-io/nats-core"
import { connectNats } from "../actors/nats.ts"
import { startEmbeddedNats } from "../actors/nats-server.ts"
import { publicSubjects } from "../protocol/subjects.ts"

const FAULTS = ["serve-kill", "nats-restart", "lmdb-truncate", "executor-kill"] as const
type Fault = (typeof FAULTS)[number]
const GOLDEN = [1936, 223, 20, 22] // greedy ids of "Once upon a time", 4 tokens, bundled model
const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const model = new URL("../models/tiny-leo-14m", import.meta.url).pathname

const opts = new Command("soak")
  .option("--rounds <n>", "fault rounds (the fault kinds in turn)", (v) => Number(v), 3)
  .option("--concurrency <n>", "generate requests in flight at once", (v) => Number(v), 2)
  .option("--nodes <n>", "leoam serve nodes (a, b, ...); node a takes the faults, the others answer what it held", (v) => Number(v), 2)
  .addOption(new Option("--faults <list>", "comma-separated fault kinds").default(FAULTS.join(",")))
  .option("--deadline <ms>", "a request with no reply by then is lost", (v) => Number(v), 20_000)
  .option("--restart-delay <ms>", "wait this long after kill -9 of node a before starting it again", (v) => Number(v), 0)
  .option("--settle <ms>", "load before each fault and after the last round", (v) => Number(v), 3000)
  .addOption(new Option("--device <kind>", "device of the nodes").choices(["cpu", "gpu", "auto"]).default("cpu"))
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts<{ rounds: number; concurrency: number; nodes: number; faults: string; deadline: number; restartDelay: number; settle: number; device: string; out?: string }>()
const faults = opts.faults.split(",").map((f) => f.trim()) as Fault[]
for (const f of faults) if (!FAULTS.includes(f)) throw new Error(`unknown fault ${f}: one of ${FAULTS.join(", ")}`)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const log = (s: string) => process.stderr.write(`soak: ${s}\n`)

// --- children: every one spawned is tracked and killed on exit ---
const children = new Set<ChildProcess>()
const spawnedPids: number[] = []
const tempDirs: string[] = []
const killAll = () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL")
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true })
}
process.on("exit", killAll)
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => (log(`${sig}: stopping`), killAll(), process.exit(130)))

const running = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return false
  }
}
/** Running children of `pid`, but tsx's own esbuild service (a child of this program when run through tsx). */
const childrenOf = (pid: number): number[] =>
  readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const m = /^\d+ \((.*)\) \S (\d+)/.exec(readFileSync(`/proc/${d}/stat`, "utf8"))
        return m !== null && Number(m[2]) === pid && m[1] !== "esbuild" && running(Number(d))
      } catch {
        return false
      }
    })
    .map(Number)

const comm = (pid: number) => {
  try {
    return `${pid} (${/^\d+ \((.*)\)/.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1]})`
  } catch {
    return String(pid)
  }
}

interface Node {
  readonly id: string
  readonly kvDir: string
  /** `leoam serve`, or for a split node `leoam actor scheduler`. */
  child?: ChildProcess
  /** A split node's `leoam actor gpu-executor`. */
  readonly split?: boolean
  executor?: ChildProcess
}

/** Starts `leoam serve` for the node (its scheduler, for a split node); resolves at its ready line, or rejects with its output when it exits first. */
const startServe = (node: Node, url: string, which: "main" | "executor" = "main"): Promise<number> =>
  new Promise((resolve, reject) => {
    const t0 = performance.now()
    const command = !node.split ? ["serve"] : which === "main" ? ["actor", "scheduler"] : ["actor", "gpu-executor"]
    const args = [bin, ...command, "--nats-url", url, "--node", node.id, "--kv-dir", node.kvDir, "--model", model, "--max-context", "256", "--device", opts.device]
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] })
    children.add(child)
    spawnedPids.push(child.pid!)
    if (which === "main") node.child = child
    else node.executor = child
    let out = ""
    const timer = setTimeout(() => (child.kill("SIGKILL"), reject(new Error(`node ${node.id} not ready in 120 s: ${out}`))), 120_000)
    child.stdout!.on("data", (d) => {
      out += String(d)
      if (/ready on \S+ \(pid \d+\)/.test(out)) (clearTimeout(timer), resolve(performance.now() - t0))
    })
    child.stderr!.on("data", (d) => (out = (out + String(d)).slice(-8000)))
    child.once("exit", (code, signal) => {
      children.delete(child)
      clearTimeout(timer)
      reject(Object.assign(new Error(`node ${node.id} exited (${signal ?? code}): ${out.trim()}`), { output: out }))
    })
  })

const killNode = async (node: Node, which: "main" | "executor" = "main") => {
  const c = which === "main" ? node.child : node.executor
  if (!c || c.exitCode !== null || c.signalCode !== null) return
  const gone = new Promise((r) => c.once("exit", r))
  c.kill("SIGKILL")
  await gone
}

// --- load: one outcome per request ---
type Outcome = "ok" | "lost" | string // else the error code (or wrong_ids)
interface Req {
  readonly n: number
  readonly sentAt: number
  phase: string // the phase when its outcome came: a request in flight at a fault counts for that fault
  replies: number
  outcome?: Outcome
  answeredMs?: number
  /** An error reply's message. */
  message?: string
  second?: { at_ms: number; code: string }
}
const requests: Req[] = []
let phase = "warm-up"
/** From each nats-server stop until this program's connection is back: what it publishes then is dropped by nats.js. */
const clientDown: Array<{ readonly from: number; to?: number }> = []
let loadOn = true

const runLoad = (nc: NatsConnection, prefix: string) => {
  const waiting = new Map<number, (body: { ids?: number[]; error?: { code?: string; message?: string } }, code: string) => void>()
  nc.subscribe(`${prefix}.>`, {
    callback: (_e, m) => {
      const n = Number(m.subject.slice(prefix.length + 1))
      const req = requests[n]
      if (!req) return
      req.replies++
      let body: { ids?: number[]; error?: { code?: string; message?: string } } = {}
      try {
        body = m.data.length > 0 ? m.json() : {}
      } catch {
        body = { error: { code: "unparsable_reply" } }
      }
      if (req.outcome === "lost" && req.replies === 1) {
        // After its deadline: not lost, but later than the client waited.
        req.outcome = "late"
        req.answeredMs = performance.now() - req.sentAt
        return void log(`request ${req.n} answered ${req.answeredMs.toFixed(0)} ms after it was sent, past the deadline`)
      }
      if (req.replies > 1) {
        req.phase = phase
        req.second = { at_ms: performance.now(), code: body.error?.code ?? "ok" }
        return void log(`request ${n} got a second reply (${req.second.code}) ${(req.second.at_ms - req.sentAt).toFixed(0)} ms after it was sent, in ${phase}`)
      }
      waiting.get(n)?.(body, m.headers?.get("Nats-Service-Error-Code") ?? "")
    },
  })
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const req: Req = { n: requests.length, sentAt: performance.now(), phase, replies: 0 }
      requests.push(req)
      const timer = setTimeout(() => (waiting.delete(req.n), (req.outcome = "lost"), (req.phase = phase), log(`request ${req.n} (${req.phase}) lost`), resolve()), opts.deadline)
      waiting.set(req.n, (body, status) => {
        clearTimeout(timer)
        waiting.delete(req.n)
        req.answeredMs = performance.now() - req.sentAt
        req.phase = phase
        const ok = !body.error && JSON.stringify(body.ids) === JSON.stringify(GOLDEN)
        req.outcome = ok ? "ok" : body.error ? (body.error.code ?? (status || "error")) : "wrong_ids"
        if (body.error?.message) req.message = body.error.message
        resolve()
      })
      nc.publish(publicSubjects.generate, JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 }), { reply: `${prefix}.${req.n}` })
    })
  const worker = async () => {
    while (loadOn) {
      await one()
      if (requests[requests.length - 1]?.outcome !== "ok") await sleep(200) // no hot loop while the node is down
    }
  }
  return Promise.all(Array.from({ length: opts.concurrency }, worker))
}

/** A probe generate on its own request/reply: ms from `since` until one is answered with the golden ids. */
const servedAgain = async (nc: NatsConnection, since: number, limitMs = 120_000): Promise<number> => {
  for (;;) {
    try {
      await nc.flush() // back on the server first: nats.js drops a request published while it is disconnected
      const m = await nc.request(publicSubjects.generate, JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 }), { timeout: opts.deadline })
      const body = m.json<{ ids?: number[] }>()
      if (JSON.stringify(body.ids) === JSON.stringify(GOLDEN)) return performance.now() - since
    } catch {
      // not yet: no responders, a timeout or the connection reconnecting
    }
    if (performance.now() - since > limitMs) throw new Error(`not served again within ${limitMs} ms`)
    await sleep(100)
  }
}

interface Round {
  readonly round: number
  readonly fault: Fault
  readonly at_ms: number // since the program started, as the requests' sentAt
  recovery_ms: number
  restart_ms?: number
  refused?: string
  note?: string
}

const main = async (): Promise<number> => {
  const base = mkdtempSync(join(tmpdir(), "leoam-soak-"))
  tempDirs.push(base)
  let nats = await startEmbeddedNats()
  const natsPids = [nats.pid]
  let nc: NatsConnection | undefined
  const rounds: Round[] = []
  try {
    const nodes: Node[] = Array.from({ length: Math.max(1, opts.nodes) }, (_, i) => ({ id: String.fromCharCode(97 + i), kvDir: join(base, `kv-${i}`) }))
    // Node x, split over two processes, takes the executor-kill faults.
    const x: Node | undefined = faults.includes("executor-kill") ? { id: "x", kvDir: join(base, "kv-x"), split: true } : undefined
    if (x) nodes.push(x)
    const readyMs = await Promise.all([...nodes.map((n) => startServe(n, nats.url)), ...(x ? [startServe(x, nats.url, "executor")] : [])])
    log(`nats ${nats.url}; nodes ${nodes.map((n) => n.id).join(", ")} ready in ${readyMs.map((m) => m.toFixed(0)).join(", ")} ms`)
    nc = await connectNats(nats.url, "leoam-soak")
    void (async () => {
      for await (const s of nc!.status()) if (s.type === "reconnect") for (const w of clientDown) w.to ??= performance.now()
    })().catch(() => undefined)
    const load = runLoad(nc, `_INBOX.soak.${process.pid}`)
    const a = nodes[0]
    for (let r = 0; r < opts.rounds; r++) {
      await sleep(opts.settle)
      const fault = faults[r % faults.length]
      phase = `${r}:${fault}`
      log(`round ${r}: ${fault}`)
      const t0 = performance.now()
      if (fault === "serve-kill") {
        await killNode(a)
        await sleep(opts.restartDelay)
        const restart = performance.now()
        const restart_ms = await startServe(a, nats.url).then(() => performance.now() - restart)
        rounds.push({ round: r, fault, at_ms: t0, recovery_ms: performance.now() - t0, restart_ms, note: "until node a is ready again" })
      } else if (fault === "executor-kill") {
        await killNode(x!, "executor")
        await sleep(opts.restartDelay)
        const restart = performance.now()
        const restart_ms = await startServe(x!, nats.url, "executor").then(() => performance.now() - restart)
        rounds.push({ round: r, fault, at_ms: t0, recovery_ms: performance.now() - t0, restart_ms, note: "until node x's gpu-executor is ready again" })
      } else if (fault === "nats-restart") {
        const port = nats.port
        clientDown.push({ from: performance.now() })
        await nats.stop()
        nats = await startEmbeddedNats({ port })
        natsPids.push(nats.pid)
        rounds.push({ round: r, fault, at_ms: t0, recovery_ms: await servedAgain(nc, t0), note: "until a probe generate is served" })
      } else {
        await killNode(a)
        const index = join(a.kvDir, "index.lmdb")
        const size = statSync(index).size
        truncateSync(index, size > 16384 ? 8192 : 100)
        let refused = "started (not refused)"
        try {
          await startServe(a, nats.url)
          await killNode(a)
        } catch (e) {
          const out = String((e as { output?: string }).output ?? (e as Error).message)
          refused = /kv_dir_unavailable/.test(out) ? "kv_dir_unavailable" : `other: ${out.slice(-300)}`
        }
        const aside = join(base, `aside-${r}`)
        for (const f of ["index.lmdb", "store.json"]) if (existsSync(join(a.kvDir, f))) renameSync(join(a.kvDir, f), `${aside}-${f}`)
        const restart = performance.now()
        await startServe(a, nats.url)
        rounds.push({ round: r, fault, at_ms: t0, recovery_ms: performance.now() - t0, restart_ms: performance.now() - restart, refused, note: `index ${size} bytes truncated; until node a is ready again` })
      }
      log(`round ${r}: ${fault} recovered in ${rounds[rounds.length - 1].recovery_ms.toFixed(0)} ms`)
    }
    phase = "cool-down"
    await sleep(opts.settle)
    loadOn = false
    await load
    await sleep(1000) // a second reply would come now
  } finally {
    loadOn = false
    await nc?.close().catch(() => undefined)
    killAll()
    await nats.stop()
    await sleep(300)
    rmSync(base, { recursive: true, force: true })
  }

  // --- report ---
  const alive = () => [...new Set([...childrenOf(process.pid), ...spawnedPids.filter(running), ...natsPids.filter(running)])]
  for (let i = 0; i < 30 && alive().length > 0; i++) await sleep(100) // SIGKILLed: gone within moments
  const leftover = alive()
  const q = (xs: number[], p: number) => (xs.length ? [...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(p * xs.length))] : NaN)
  // A lost request counts for the fault it was sent during (before that fault's recovery), else for the first fault
  // after it was sent (it was in flight then), not for the phase of its deadline. One this program published while its own connection was down (from the
  // nats-server's stop until this client was back on the new one) never left it: nats.js drops what is published while
  // it is disconnected, so no node could answer; the client's own timeout is its answer. Those count as `unsent`.
  for (const q of requests) if (q.outcome === "lost" || q.outcome === "late") {
    const during = [...rounds].reverse().find((r) => r.at_ms <= q.sentAt && q.sentAt <= r.at_ms + r.recovery_ms)
    const r = during ?? rounds.find((r) => r.at_ms >= q.sentAt) ?? [...rounds].reverse().find((r) => r.at_ms <= q.sentAt)
    if (r) q.phase = `${r.round}:${r.fault}`
    if (q.outcome === "lost" && clientDown.some((w) => q.sentAt >= w.from && q.sentAt <= (w.to ?? Infinity))) q.outcome = "unsent"
  }
  const kinds = [...new Set(rounds.map((r) => r.fault))]
  const rows = kinds.map((fault) => {
    const rs = rounds.filter((r) => r.fault === fault)
    const reqs = requests.filter((q) => q.phase.endsWith(`:${fault}`))
    const errors: Record<string, number> = {}
    for (const q of reqs) if (q.outcome && !["ok", "lost", "unsent", "late"].includes(q.outcome)) errors[q.outcome] = (errors[q.outcome] ?? 0) + 1
    return {
      fault,
      count: rs.length,
      recovery_p50_ms: Math.round(q(rs.map((r) => r.recovery_ms), 0.5)),
      recovery_max_ms: Math.round(Math.max(...rs.map((r) => r.recovery_ms))),
      requests: reqs.length,
      ok: reqs.filter((q) => q.outcome === "ok").length,
      errors,
      lost: reqs.filter((q) => q.outcome === "lost" || q.outcome === undefined).length,
      unsent: reqs.filter((q) => q.outcome === "unsent").length,
      late: reqs.filter((q) => q.outcome === "late").length,
      doubled: reqs.filter((q) => q.replies > 1).length,
      refused: rs.map((r) => r.refused).filter(Boolean),
    }
  })
  const all = {
    requests: requests.length,
    ok: requests.filter((q) => q.outcome === "ok").length,
    lost: requests.filter((q) => q.outcome === "lost" || q.outcome === undefined).length,
    unsent: requests.filter((q) => q.outcome === "unsent").length,
    late: requests.filter((q) => q.outcome === "late").length,
    doubled: requests.filter((q) => q.replies > 1).length,
  }
  const pad = (s: unknown, n: number) => String(s).padEnd(n)
  console.log(["fault", "count", "recovery p50", "max", "requests", "ok", "errors by code", "lost", "doubled", "unsent", "late"].map((h, i) => pad(h, [14, 6, 13, 8, 9, 6, 34, 5, 8, 7, 5][i])).join(" "))
  for (const r of rows) {
    const errs = Object.entries(r.errors).map(([k, v]) => `${k} ${v}`).join(", ") || "-"
    console.log([r.fault, r.count, `${r.recovery_p50_ms} ms`, `${r.recovery_max_ms} ms`, r.requests, r.ok, errs, r.lost, r.doubled, r.unsent, r.late].map((v, i) => pad(v, [14, 6, 13, 8, 9, 6, 34, 5, 8, 7, 5][i])).join(" "))
  }
  for (const r of rows.filter((r) => r.refused.length)) console.log(`${r.fault}: restart on the damaged index: ${r.refused.join(", ")}`)
  console.log(`all phases: ${all.requests} requests, ${all.ok} ok, ${all.lost} lost, ${all.doubled} doubled, ${all.unsent} unsent (published while this client was disconnected), ${all.late} late (answered after --deadline); leftover processes: ${leftover.length ? leftover.map(comm).join(", ") : "none"}`)
  if (opts.out) writeFileSync(opts.out, `${JSON.stringify({ options: opts, rounds, by_fault: rows, all, leftover, requests }, null, 1)}\n`)
  const refusedWrong = rounds.some((r) => r.fault === "lmdb-truncate" && r.refused !== "kv_dir_unavailable")
  return all.lost > 0 || all.doubled > 0 || leftover.length > 0 || refusedWrong ? 1 : 0
}

main().then(
  (code) => process.exit(code),
  (e) => (log(`failed: ${(e as Error).stack ?? e}`), killAll(), process.exit(2)),
)
