// Structured logs for `leoam serve` under systemd: with `--log-format json` (or, by default,
// when stderr is the journal's stream, `$JOURNAL_STREAM`), every line written to stderr or
// stdout leaves as one JSON object (pino: time, level, msg, and fields such as `component`).
// Only whole lines written by the node's few messages go through here; the per-token path
// writes nothing.
import { fstatSync } from "node:fs"
import { pino, type Logger } from "pino"

export type LogFormat = "text" | "json"

/** Whether fd 2 is the stream systemd named in $JOURNAL_STREAM ("DEV:INODE"). */
export const stderrIsJournal = (env: NodeJS.ProcessEnv = process.env): boolean => {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? "")
  if (!m) return false
  try {
    const st = fstatSync(2, { bigint: true })
    return st.dev === BigInt(m[1]) && st.ino === BigInt(m[2])
  } catch {
    return false
  }
}

/** The flag wins; without it, JSON when stderr goes to the journal. */
export const logFormatOf = (flag: LogFormat | undefined, env: NodeJS.ProcessEnv = process.env): LogFormat =>
  flag ?? (env.JOURNAL_STREAM !== undefined && stderrIsJournal(env) ? "json" : "text")

type Level = "info" | "warn" | "error"
// journald reads a leading "<N>" as the line's syslog priority (SyslogLevelPrefix=yes).
const syslogPriority: Record<Level, number> = { error: 3, warn: 4, info: 6 }

/** One line as the node writes it ("leoam gpu-executor: policy v3 refused ...") -> level and fields. */
export const classifyLine = (line: string, fallback: Level): { level: Level; msg: string; fields: Record<string, string> } => {
  const m = /^(?:leoam|\[leoam) ?([a-z-]+)?\]?: (.*)$/s.exec(line)
  const fields: Record<string, string> = {}
  let msg = line
  if (m) {
    if (m[1]) fields.component = m[1]
    msg = m[2]
  }
  const code = /^error \[([a-z_]+)\]: /.exec(msg)
  if (code) fields.code = code[1]
  const url = /\bready on (\S+)/.exec(msg)
  if (url) fields.url = url[1]
  const level: Level =
    code || /\berror\b|could not|uncaptured/i.test(msg) ? "error"
    : /refused|not valid|is used, not/.test(msg) ? "warn"
    : url || /: draining|^stopped$/.test(msg) ? "info"
    : fallback
  return { level, msg, fields }
}

const makeLogger = (fd: 1 | 2, journal: boolean): Logger =>
  pino(
    {
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // The priority prefix is read and stripped by journald; the journal keeps the JSON.
      ...(journal ? { hooks: { streamWrite: (s: string) => `<${syslogPriority[(JSON.parse(s) as { level: Level }).level] ?? 6}>${s}` } } : {}),
    },
    pino.destination({ fd, sync: true }),
  )

/** Replaces stream.write so that each complete line becomes one JSON object on the same fd. */
const wrapStream = (stream: NodeJS.WriteStream, logger: Logger, fallback: Level) => {
  let pending = ""
  stream.write = ((chunk: string | Uint8Array, encoding?: unknown, cb?: unknown) => {
    pending += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8")
    let nl: number
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      if (line.trim() === "") continue
      const { level, msg, fields } = classifyLine(line, fallback)
      logger[level](fields, msg)
    }
    const done = typeof encoding === "function" ? encoding : cb
    if (typeof done === "function") queueMicrotask(() => (done as () => void)())
    return true
  }) as typeof stream.write
}

/** Turns the process's stdout and stderr lines into JSON lines (idempotent). */
let installed = false
export const installJsonLog = (env: NodeJS.ProcessEnv = process.env) => {
  if (installed) return
  installed = true
  const journal = stderrIsJournal(env)
  wrapStream(process.stderr, makeLogger(2, journal), "warn")
  // stdout carries only info lines (ready, stopped): journald files unprefixed lines as info.
  wrapStream(process.stdout, makeLogger(1, false), "info")
}
