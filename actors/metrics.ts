// The admin stats as Prometheus text (prom-client), on an optional loopback HTTP port:
// `leoam serve --metrics-port N` serves http://127.0.0.1:N/metrics. Each scrape asks the
// node for leoam.v1.admin.stats once and renders every number of it, and pings the node's
// actors (as leoam.v1.health does): each one's state and restarts, and the HTTP gateway's
// request counters.
import { createServer, type Server } from "node:http"
import { Counter, Gauge, Registry } from "prom-client"
import type { AdminStatsReply } from "../protocol/admin.ts"
import type { ActorStatus } from "../protocol/internal.ts"

export interface MetricsServer {
  readonly url: string
  close(): Promise<void>
}

/** A registry whose metrics are set from one AdminStatsReply. */
export const statsRegistry = () => {
  const registry = new Registry()
  const gauge = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name, help, labelNames, registers: [registry] })
  const counter = (name: string, help: string, labelNames: string[] = []) => new Counter({ name, help, labelNames, registers: [registry] })
  const m = {
    policyVersion: gauge("leoam_policy_version", "KV policy version the gpu-executor runs", ["policy"]),
    policyPending: gauge("leoam_policy_pending_version", "KV policy version accepted but not yet applied (0: none)"),
    queueDepth: gauge("leoam_queue_depth", "generate requests waiting in the scheduler"),
    queueCapacity: gauge("leoam_queue_capacity", "generate requests admitted before `busy`"),
    inFlight: gauge("leoam_in_flight", "generate requests being served"),
    requests: counter("leoam_requests_total", "generate requests admitted"),
    generated: counter("leoam_generated_tokens_total", "tokens generated"),
    budget: gauge("leoam_tier_budget_bytes", "KV budget of a tier (absent: no limit)", ["tier"]),
    resident: gauge("leoam_tier_resident_bytes", "KV bytes resident in a tier", ["tier"]),
    hits: counter("leoam_tier_hits_total", "KV chunk hits per tier", ["tier"]),
    misses: counter("leoam_tier_misses_total", "KV chunk misses per tier", ["tier"]),
    hitRate: gauge("leoam_tier_hit_ratio", "hits / (hits + misses) per tier", ["tier"]),
    prefillChunks: counter("leoam_gpu_prefill_chunks_total", "KV chunks of prefill windows in the GPU cache, by outcome: hit (held), miss (loaded); leoam_tier_hits_total and leoam_tier_misses_total count decode's for tier gpu", ["outcome"]),
    read: counter("leoam_tier_read_bytes_total", "KV bytes read from a tier", ["tier"]),
    written: counter("leoam_tier_written_bytes_total", "KV bytes written to a tier", ["tier"]),
    steps: counter("leoam_decode_steps_total", "decode steps"),
    stepSeconds: counter("leoam_decode_seconds_total", "decode host wall time by phase: total, and the disjoint phases scoring, transfer, seal, rest that add up to it", ["phase"]),
    stepGpuSeconds: counter("leoam_decode_gpu_seconds_total", "decode GPU time by kernel (overlaps the host phases scoring and transfer)", ["kernel"]),
    prefetchChunks: counter("leoam_prefetch_chunks_total", "KV chunks prefetched into the GPU cache, by outcome at their layer's visit: loaded, hit (chosen), miss (a chosen chunk still missing)", ["outcome"]),
    recomputeChunks: counter("leoam_recompute_chunks_total", "KV chunks read from disk, by how: recomputed (hidden states read, K and V recomputed on the GPU) or fetched (K and V read)", ["how"]),
    recomputeBytes: counter("leoam_recompute_hidden_bytes_total", "hidden-state record bytes of recompute, read and written", ["kind"]),
    prefetchBytes: counter("leoam_prefetch_bytes_total", "KV bytes prefetched into the GPU cache: loaded, and wasted (loaded, not chosen)", ["kind"]),
    prefillTokens: counter("leoam_prefill_tokens_total", "prompt tokens prefilled"),
    prefillSeconds: counter("leoam_prefill_seconds_total", "prefill wall time"),
    actorUp: gauge("leoam_actor_up", "an actor that answered the scrape's ping: 1 running, 0 restarting", ["actor", "pid"]),
    actorRestarts: counter("leoam_actor_restarts_total", "restarts of an actor's service after a crash", ["actor", "pid"]),
    http: counter("leoam_http_requests_total", "HTTP gateway requests by outcome: all, errors (OpenAI-shaped error replies), streams (SSE), cancelled (client gone)", ["kind", "pid"]),
  }
  // Counters hold totals the node keeps: each scrape sets them to those totals.
  const setCounter = (c: Counter, value: number, labels?: Record<string, string>) => {
    if (labels) {
      c.remove(labels)
      c.inc(labels, Math.max(0, value))
    } else {
      c.reset()
      c.inc(Math.max(0, value))
    }
  }
  const set = (s: AdminStatsReply) => {
    m.policyVersion.reset()
    m.policyVersion.set({ policy: s.policy.name }, s.policy.active_version)
    m.policyPending.set(s.policy.pending_version ?? 0)
    m.queueDepth.set(s.queue.depth)
    m.queueCapacity.set(s.queue.capacity)
    m.inFlight.set(s.queue.in_flight)
    setCounter(m.requests, s.requests.completed)
    setCounter(m.generated, s.requests.generated_tokens)
    for (const tier of ["gpu", "host", "disk"] as const) {
      const t = s.tiers[tier] as AdminStatsReply["tiers"]["host"] & AdminStatsReply["tiers"]["disk"]
      const label = { tier }
      if (t.budget_bytes !== undefined && t.budget_bytes !== null) m.budget.set(label, t.budget_bytes)
      else m.budget.remove(label)
      m.resident.set(label, t.resident_bytes)
      setCounter(m.hits, t.hits, label)
      setCounter(m.read, t.bytes_read, label)
      if (t.misses !== undefined) setCounter(m.misses, t.misses, label)
      if (t.hit_rate !== undefined && t.hit_rate !== null) m.hitRate.set(label, t.hit_rate)
      if (t.bytes_written !== undefined) setCounter(m.written, t.bytes_written, label)
    }
    const g = s.tiers.gpu
    if (g.prefill_hits !== undefined) setCounter(m.prefillChunks, g.prefill_hits, { outcome: "hit" })
    if (g.prefill_misses !== undefined) setCounter(m.prefillChunks, g.prefill_misses, { outcome: "miss" })
    setCounter(m.steps, s.steps.count)
    for (const [phase, ms] of Object.entries(s.steps.ms)) setCounter(m.stepSeconds, ms / 1000, { phase })
    for (const [kernel, ms] of Object.entries(s.steps.gpu_ms)) setCounter(m.stepGpuSeconds, ms / 1000, { kernel })
    const p = s.steps.prefetch
    if (p) {
      for (const [outcome, n] of [["loaded", p.chunks], ["hit", p.hits], ["miss", p.misses]] as const) setCounter(m.prefetchChunks, n, { outcome })
      for (const [kind, n] of [["loaded", p.bytes], ["wasted", p.wasted_bytes]] as const) setCounter(m.prefetchBytes, n, { kind })
    }
    const r = s.steps.recompute
    if (r) {
      for (const [how, n] of [["recomputed", r.chunks_recomputed], ["fetched", r.chunks_fetched_from_disk]] as const) setCounter(m.recomputeChunks, n, { how })
      for (const [kind, n] of [["read", r.hidden_bytes_read], ["written", r.hidden_bytes_written]] as const) setCounter(m.recomputeBytes, n, { kind })
    }
    setCounter(m.prefillTokens, s.prefill.tokens)
    setCounter(m.prefillSeconds, s.prefill.ms / 1000)
  }
  /** The actors that answered a ping (absent ones leave the series). */
  const setActors = (actors: ReadonlyArray<ActorStatus>) => {
    for (const g of [m.actorUp, m.actorRestarts, m.http]) g.reset()
    for (const a of actors) {
      const label = { actor: a.name, pid: String(a.pid) }
      m.actorUp.set(label, a.status === "running" ? 1 : 0)
      setCounter(m.actorRestarts, a.restarts, label)
      const g = a.name === "http-gateway" ? (a.stats as Partial<Record<"requests" | "errors" | "streams" | "cancelled", number>> | undefined) : undefined
      if (g) for (const kind of ["requests", "errors", "streams", "cancelled"] as const) setCounter(m.http, g[kind] ?? 0, { kind, pid: String(a.pid) })
    }
  }
  return { registry, set, setActors }
}

/** Serves GET /metrics on 127.0.0.1:port (0: a free port). */
export const startMetricsServer = async (port: number, stats: () => Promise<AdminStatsReply>, actors: () => Promise<ReadonlyArray<ActorStatus>> = async () => []): Promise<MetricsServer> => {
  const { registry, set, setActors } = statsRegistry()
  const server: Server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "/").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("only GET /metrics\n")
      return
    }
    Promise.all([stats(), actors()])
      .then(async ([s, a]) => {
        set(s)
        setActors(a)
        res.writeHead(200, { "content-type": registry.contentType }).end(await registry.metrics())
      })
      .catch((e) => res.writeHead(503, { "content-type": "text/plain" }).end(`leoam stats unavailable: ${(e as Error).message}\n`))
  })
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(Object.assign(new Error(`--metrics-port ${port}: ${(e as Error).message}`), { code: "invalid_argument" })))
    server.listen(port, "127.0.0.1", () => resolve())
  })
  const bound = (server.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${bound}/metrics`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}
