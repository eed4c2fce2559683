// Reads what run.sh brought back (untar step.tar.gz into DIR) and prints, per run, the step's
// accounting: ms/token, misses and host MiB per step, the upload ring's counters, the traced
// step's lanes summed, the host gap between a layer's choice and its staging, the time from
// staging's end to the layer's GPU attention (GPU attention spans are labelled by pass, which is
// the layer only where each layer has one pass: leoam without the pipeline), and the CPU
// profiles' heaviest functions (self time).
//   node bench/results/2026-12-07-night-tiered-step/analyze.mjs DIR
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"

const dir = process.argv[2] ?? "."
for (const f of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
  const j = JSON.parse(readFileSync(join(dir, f), "utf8"))
  for (const r of j.rows) {
    console.log(`\n== ${f} ${r.policy}: ${r.ms_per_token?.toFixed(2)} ms/token over ${r.steps} steps${r.error ? ` (${r.error})` : ""}`)
    const kv = r.kv
    if (kv) {
      const w = kv.warmup
      const per = (a, b) => ((a - b) / r.steps).toFixed(1)
      console.log(`  per step: misses ${per(kv.gpu.misses, w.gpu.misses)}, host MiB ${((kv.host.bytes_read - w.host.bytes_read) / r.steps / 2 ** 20).toFixed(1)}, select wait ${per(kv.time_ms.select, w.time_ms.select)} ms, transfer ${per(kv.time_ms.transfer, w.time_ms.transfer)} ms, attention ${per(kv.time_ms.attention, w.time_ms.attention)} ms`)
    }
    if (r.upload) console.log(`  upload ring per step: ${JSON.stringify(r.upload)}`)
    const t = r.timeline
    if (!t) continue
    const lanes = {}
    for (const s of t.spans) lanes[s.lane] = (lanes[s.lane] ?? 0) + s.t1 - s.t0
    console.log(`  traced step ${t.step_ms.toFixed(1)} ms: ${Object.entries(lanes).map(([l, ms]) => `${l} ${ms.toFixed(1)}`).join(", ")}`)
    const at = (lane, l) => t.spans.find((s) => s.lane === lane && (s.label === `L${l}` || s.label === String(l)))
    let gap = 0
    let toAttn = 0
    for (let l = 0; l < 128; l++) {
      const cw = at("choice wait", l)
      const h = at("host->GPU", l)
      const a = at("GPU attention", l)
      if (cw && h) gap += h.t0 - cw.t1
      if (h && a) toAttn += a.t0 - h.t1
    }
    console.log(`  summed over layers: choice -> staging ${gap.toFixed(1)} ms, staging end -> GPU attention ${toAttn.toFixed(1)} ms`)
  }
}
for (const d of readdirSync(dir).filter((d) => d.startsWith("prof-"))) {
  for (const f of readdirSync(join(dir, d)).filter((f) => f.endsWith(".cpuprofile"))) {
    const p = JSON.parse(readFileSync(join(dir, d, f), "utf8"))
    const byId = new Map(p.nodes.map((n) => [n.id, n]))
    const self = new Map()
    p.samples.forEach((id, i) => {
      const n = byId.get(id)
      const k = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").slice(-1)[0]}`
      self.set(k, (self.get(k) ?? 0) + (p.timeDeltas[i + 1] ?? 0) / 1000)
    })
    const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)
    console.log(`\n== ${d}/${f}: ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s profiled, self ms:\n${top.map(([k, ms]) => `  ${ms.toFixed(0).padStart(7)} ${k}`).join("\n")}`)
  }
}
