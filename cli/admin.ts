// `leoam admin policy set|get|history|list` and `leoam stats [--watch]`: the admin subjects
// from the command line. Each prints a short human summary, or with --json the reply as is.
// Error replies become `leoam: error [code]: message` (exit 2 for bad input, 1 otherwise).
import { readFileSync } from "node:fs"
import type { NatsConnection } from "@nats-io/nats-core"
import type { Schema } from "effect"
import { askPublic, runRequest } from "../actors/rpc.ts"
import { adminReplies, type AdminStatsReply } from "../protocol/admin.ts"
import { policyNames } from "../protocol/policy.ts"
import { adminSubjects } from "../protocol/subjects.ts"
import { type ClientAuth, connectClient } from "./connect.ts"
import { CliError, noRespondersError } from "./errors.ts"

export interface AdminConnection {
  readonly natsUrl: string
  readonly auth: ClientAuth
  readonly timeoutMs: number
}

type View = { name: string; chunk_tokens: number; chunk_min_tokens?: number | null; budget_tokens: number | null; budget_fraction: number | null; sink_tokens: number; recent_tokens: number; eviction: string; compression_bits?: 16 | 8 | 4 | "importance"; pipeline_depth?: number; pipeline_combine?: boolean }

const withNats = async <T>(c: AdminConnection, f: (nc: NatsConnection) => Promise<T>): Promise<T> => {
  const nc = await connectClient(c.natsUrl, "leoam-admin", c.auth).catch((e) => {
    if (e instanceof CliError) throw e
    throw new CliError("actor_unavailable", `cannot connect to ${c.natsUrl}: ${(e as Error).message}`)
  })
  try {
    return await f(nc)
  } finally {
    await nc.close().catch(() => undefined)
  }
}

type AdminKey = keyof typeof adminReplies

/** One admin request, its reply decoded by the subject's schema (error replies reject with their LeoamError). */
const askOn = <K extends AdminKey>(nc: NatsConnection, c: AdminConnection, key: K, body: unknown) =>
  runRequest(askPublic(nc, adminSubjects[key], adminReplies[key] as unknown as Schema.Schema<(typeof adminReplies)[K]["Type"], unknown>, body, c.timeoutMs)).catch((e) => {
    // askPublic reports any unanswered request as actor_unavailable; NATS's no-responders
    // status means no node serves the admin subjects at all, which the CLI says as such.
    if ((e as { code?: string }).code === "actor_unavailable" && /no responders/i.test((e as Error).message)) throw noRespondersError(adminSubjects[key], c.natsUrl)
    throw e
  })

const ask = <K extends AdminKey>(c: AdminConnection, key: K, body: unknown) => withNats(c, (nc) => askOn(nc, c, key, body))

const print = (json: boolean, value: unknown, human: () => string) => process.stdout.write((json ? JSON.stringify(value, null, 2) : human()) + "\n")

const describe = (v: View) => {
  const budget = v.budget_tokens !== null ? `${v.budget_tokens} tokens` : v.budget_fraction !== null ? `${+(v.budget_fraction * 100).toFixed(2)}% of the context` : "all tokens"
  const chunks = v.chunk_min_tokens != null ? `adaptive ${v.chunk_min_tokens}..${v.chunk_tokens}-token chunks` : `${v.chunk_tokens}-token chunks`
  const bits = v.compression_bits !== undefined && v.compression_bits !== 16 ? `, ${v.compression_bits === "importance" ? "int8/int4 by importance" : `int${v.compression_bits}`} chunks` : ""
  const pipeline = v.pipeline_depth ? `, pipelined step depth ${v.pipeline_depth}${v.pipeline_combine !== false ? " with the combine" : ""}` : ""
  return `${v.name}: ${chunks}, attends ${budget} (sink ${v.sink_tokens}, recent ${v.recent_tokens}), eviction ${v.eviction}${bits}${pipeline}`
}

/** A policy argument: a registered name, or a JSON file. */
const policyArgument = (spec: string): unknown => {
  if ((policyNames as ReadonlyArray<string>).includes(spec)) return spec
  let text: string
  try {
    text = readFileSync(spec, "utf8")
  } catch {
    throw new CliError("unknown_policy", `${spec}: not a policy (${policyNames.join(", ")}) nor a readable file`)
  }
  try {
    return JSON.parse(text)
  } catch (e) {
    throw new CliError("invalid_policy", `${spec}: not JSON: ${(e as Error).message}`)
  }
}

export const adminPolicySet = async (c: AdminConnection, spec: string, o: { reason?: string; json: boolean }) => {
  const r = await ask(c, "policySet", { policy: policyArgument(spec), ...(o.reason ? { reason: o.reason } : {}) })
  print(o.json, r, () => `policy v${r.version} set by ${r.user}: ${describe(r.resolved)}; applies at the ${r.applies === "next_step" ? "next decode step" : "next request (a new KV cache)"}`)
}

export const adminPolicyGet = async (c: AdminConnection, o: { json: boolean }) => {
  const r = await ask(c, "policyGet", {})
  print(o.json, r, () => {
    const runs = r.executor.pending_version !== null ? `; the gpu-executor runs v${r.executor.active_version}, v${r.executor.pending_version} pending` : ""
    return `policy v${r.version}, set ${r.at} by ${r.user}${runs}\n  ${describe(r.resolved)}`
  })
}

export const adminPolicyHistory = async (c: AdminConnection, o: { limit?: number; json: boolean }) => {
  const r = await ask(c, "policyHistory", o.limit !== undefined ? { limit: o.limit } : {})
  print(o.json, r, () =>
    r.history
      .map((h) => `v${h.version}  ${h.at}  ${h.user}${h.account ? `@${h.account}` : ""}  ${JSON.stringify(h.policy)}${h.applies ? `  (${h.applies.replace("_", " ")})` : ""}${h.reason ? `  "${h.reason}"` : ""}`)
      .join("\n"),
  )
}

export const adminPolicyList = async (c: AdminConnection, o: { json: boolean }) => {
  const r = await ask(c, "policyList", {})
  print(o.json, r, () => [...r.policies.map((p) => `${p.name}: ${p.description}\n  defaults: ${describe(p.defaults)}`), `eviction: ${r.eviction.join(", ")}`].join("\n"))
}

const bytes = (n: number | null | undefined) => {
  if (n === null || n === undefined) return "-"
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]
  let v = n
  let u = 0
  while (v >= 1024 && u < units.length - 1) (v /= 1024), u++
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`
}
const pct = (x: number | null) => (x === null ? "-" : `${(x * 100).toFixed(1)}%`)

/** The compact view of `leoam stats`. */
/** The batch and who waits: " batch 3+1/4 (2 waiting for KV)  waiting ann 2, ben 1". */
const batchLine = (s: AdminStatsReply): string => {
  const b = s.batch
  const waiting = Object.entries(s.queue.queued_by_user ?? {}).map(([user, n]) => `${user} ${n}`)
  return (
    (b ? `  batch ${b.decoding}+${b.prefilling}/${b.max}${b.waiting_for_kv > 0 ? ` (${b.waiting_for_kv} waiting for KV)` : ""}` : "") +
    (waiting.length > 0 ? `  waiting ${waiting.join(", ")}` : "")
  )
}

/** Prefetch's line, where it loaded anything: chunks loaded, chosen at their visit, wasted bytes, chosen chunks still missing. */
const prefetchLine = (s: AdminStatsReply): string[] => {
  const p = s.steps.prefetch
  if (!p || p.chunks === 0) return []
  return [`prefetch ${p.chunks} chunks (${bytes(p.bytes)}): ${p.hits} chosen (${pct(p.hits / p.chunks)}), ${bytes(p.wasted_bytes)} wasted; ${p.misses} chosen chunks still missed at forecast layers`]
}

/** Recompute's line, where it wrote or read any hidden record: disk chunks recomputed against fetched, hidden bytes. */
const recomputeLine = (s: AdminStatsReply): string[] => {
  const r = s.steps.recompute
  if (!r || r.hidden_bytes_written + r.hidden_bytes_read === 0) return []
  return [`recompute ${r.chunks_recomputed} disk chunks from hidden states, ${r.chunks_fetched_from_disk} fetched as K/V; hidden records ${bytes(r.hidden_bytes_read)} read, ${bytes(r.hidden_bytes_written)} written`]
}

export const formatStats = (s: AdminStatsReply): string => {
  const t = s.tiers
  const perStep = (ms: number) => (s.steps.count > 0 ? (ms / s.steps.count).toFixed(2) : "-")
  const m = s.steps.ms
  return [
    `leoam ${s.at}  policy ${s.policy.name} v${s.policy.active_version}${s.policy.pending_version !== null ? ` (v${s.policy.pending_version} pending)` : ""}  queue ${s.queue.depth}/${s.queue.capacity}, ${s.queue.in_flight} running${batchLine(s)}  requests ${s.requests.completed}, tokens ${s.requests.generated_tokens}`,
    `tier   budget      resident    hits      misses    hit rate  read        written`,
    `gpu    ${bytes(t.gpu.budget_bytes).padEnd(11)} ${bytes(t.gpu.resident_bytes).padEnd(11)} ${String(t.gpu.hits).padEnd(9)} ${String(t.gpu.misses).padEnd(9)} ${pct(t.gpu.hit_rate).padEnd(9)} ${bytes(t.gpu.bytes_read).padEnd(11)} -`,
    `host   ${bytes(t.host.budget_bytes).padEnd(11)} ${bytes(t.host.resident_bytes).padEnd(11)} ${String(t.host.hits).padEnd(9)} ${String(t.host.misses).padEnd(9)} ${pct(t.host.hit_rate).padEnd(9)} ${bytes(t.host.bytes_read).padEnd(11)} ${bytes(t.host.bytes_written)}`,
    `disk   -           ${bytes(t.disk.resident_bytes).padEnd(11)} ${String(t.disk.hits).padEnd(9)} -         -         ${bytes(t.disk.bytes_read).padEnd(11)} ${bytes(t.disk.bytes_written)}`,
    ...(t.gpu.prefill_hits !== undefined ? [`gpu prefill windows: ${t.gpu.prefill_hits} hits, ${t.gpu.prefill_misses ?? 0} misses (the gpu row's are decode's)`] : []),
    ...(t.gpu.abstract_bytes !== undefined ? [`chunk abstracts: ${bytes(t.gpu.abstract_bytes)} on the GPU (in its budget), ${bytes(t.disk.abstract_bytes ?? 0)} in LMDB`] : []),
    `decode ${s.steps.count} steps, host ms/step: total ${perStep(m.total)} = choice wait ${perStep(m.scoring)} + transfer ${perStep(m.transfer)} + seal ${perStep(m.seal)} + rest ${perStep(m.rest)}; GPU attention ${perStep(s.steps.gpu_ms.attention)} (inside the waits)   prefill ${s.prefill.tokens} tokens in ${(s.prefill.ms / 1000).toFixed(1)} s (last ${s.prefill.recent.runs}: ${s.prefill.recent.tokens_per_s === null ? "-" : s.prefill.recent.tokens_per_s.toFixed(0)} tokens/s)`,
    ...prefetchLine(s),
    ...recomputeLine(s),
  ].join("\n")
}

export const runStats = async (c: AdminConnection, o: { watch: boolean; intervalMs: number; json: boolean }) => {
  if (!o.watch) {
    const s = await ask(c, "stats", {})
    print(o.json, s, () => formatStats(s))
    return
  }
  await withNats(c, async (nc) => {
    const tty = process.stdout.isTTY && !o.json
    let stop = false
    const onSignal = () => (stop = true)
    process.once("SIGINT", onSignal)
    process.once("SIGTERM", onSignal)
    try {
      while (!stop) {
        const s = await askOn(nc, c, "stats", {})
        // On a terminal the view redraws in place; piped, one block (or JSON line) per interval.
        if (tty) process.stdout.write(`\x1b[H\x1b[2J${formatStats(s)}\n(every ${o.intervalMs / 1000} s; Ctrl-C stops)\n`)
        else process.stdout.write((o.json ? JSON.stringify(s) : formatStats(s) + "\n") + "\n")
        const until = Date.now() + o.intervalMs
        while (!stop && Date.now() < until) await new Promise((r) => setTimeout(r, Math.min(100, until - Date.now())))
      }
    } finally {
      process.off("SIGINT", onSignal)
      process.off("SIGTERM", onSignal)
    }
  })
}
