// Prefill throughput against prompt length (issue 12's plot): reads the JSON replies that
// `gpu-run.sh prefill` writes (prefill-<order>-<tokens>.json, `leoam generate --json`) from
// one or more result folders, and writes a Markdown table and an SVG plot of tokens/s per
// prompt length, one line per folder and prefill order, beside the issue's anchors on an
// H200 (llama.cpp's Vulkan build and Hugging Face transformers at 32K) and its targets.
//   npx tsx bench/prefill-plot.ts --svg plot.svg --md table.md LABEL=DIR [LABEL=DIR ...]
import { readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Command } from "commander"

const program = new Command()
  .option("--svg <file>", "write the plot here")
  .option("--md <file>", "write the table here (else stdout)")
  .argument("<series...>", "LABEL=DIR: a folder of prefill-<order>-<tokens>.json replies")
  .parse()
const o = program.opts<{ svg?: string; md?: string }>()

interface Point {
  readonly tokens: number
  readonly seconds: number
}

interface Series {
  readonly label: string
  readonly points: ReadonlyArray<Point>
  readonly kind: "measured" | "anchor" | "target"
}

/** The issue's figures: llama.cpp and transformers on an H200 (not the card of our runs), and the targets. */
const references: ReadonlyArray<Series> = [
  { label: "llama.cpp Vulkan (H200, issue 12)", kind: "anchor", points: [{ tokens: 32768, seconds: 3.88 }] },
  { label: "HF transformers (H200, issue 12)", kind: "anchor", points: [{ tokens: 32768, seconds: 1.45 }] },
  {
    label: "targets",
    kind: "target",
    points: [
      { tokens: 8192, seconds: 0.5 },
      { tokens: 32768, seconds: 2 },
      { tokens: 65536, seconds: 6 },
      { tokens: 131072, seconds: 20 },
    ],
  },
]

const readFolder = (label: string, dir: string): Series[] => {
  const byOrder = new Map<string, Point[]>()
  for (const name of readdirSync(dir)) {
    const m = /^prefill-(.+)-(\d+)\.json$/.exec(name)
    if (!m) continue
    let reply: { timings?: { prefill_ms?: number }; usage?: { prompt_tokens?: number } }
    try {
      reply = JSON.parse(readFileSync(join(dir, name), "utf8"))
    } catch {
      continue // a run stopped by its time limit leaves an empty or cut file
    }
    const ms = reply.timings?.prefill_ms
    if (typeof ms !== "number" || !(ms > 0)) continue
    const tokens = reply.usage?.prompt_tokens ?? Number(m[2])
    byOrder.set(m[1]!, [...(byOrder.get(m[1]!) ?? []), { tokens, seconds: ms / 1000 }])
  }
  return [...byOrder].map(([order, points]) => ({ label: `${label} ${order}`, kind: "measured" as const, points: points.sort((a, b) => a.tokens - b.tokens) }))
}

const measured = program.args.flatMap((spec) => {
  const at = spec.indexOf("=")
  if (at <= 0) program.error(`expected LABEL=DIR, got ${spec}`)
  return readFolder(spec.slice(0, at), spec.slice(at + 1))
})
const all = [...measured, ...references]

const lengths = [...new Set(all.flatMap((s) => s.points.map((p) => p.tokens)))].sort((a, b) => a - b)
const table = [
  `| series | ${lengths.map((n) => `${n / 1024}K`).join(" | ")} |`,
  `| --- | ${lengths.map(() => "---:").join(" | ")} |`,
  ...all.map((s) => {
    const cell = (n: number) => {
      const p = s.points.find((q) => q.tokens === n)
      return p ? `${p.seconds.toFixed(p.seconds < 10 ? 2 : 1)} s (${Math.round(p.tokens / p.seconds)} tok/s)` : "–"
    }
    return `| ${s.label} | ${lengths.map(cell).join(" | ")} |`
  }),
].join("\n")
if (o.md) writeFileSync(o.md, `${table}\n`)
else console.log(table)

if (o.svg) {
  const W = 760
  const H = 420
  const pad = { left: 70, right: 250, top: 30, bottom: 50 }
  const rate = (p: Point) => p.tokens / p.seconds
  const xs = lengths.map(Math.log2)
  const ys = all.flatMap((s) => s.points.map((p) => Math.log10(rate(p))))
  const [x0, x1] = [Math.min(...xs) - 0.3, Math.max(...xs) + 0.3]
  const [y0, y1] = [Math.floor(Math.min(...ys)), Math.ceil(Math.max(...ys))]
  const px = (n: number) => pad.left + ((Math.log2(n) - x0) / (x1 - x0)) * (W - pad.left - pad.right)
  const py = (r: number) => H - pad.bottom - ((Math.log10(r) - y0) / (y1 - y0 || 1)) * (H - pad.top - pad.bottom)
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
  const parts: string[] = []
  for (let e = y0; e <= y1; e++) {
    const y = py(10 ** e)
    parts.push(`<line x1="${pad.left}" x2="${W - pad.right}" y1="${y}" y2="${y}" stroke="#ddd"/><text x="${pad.left - 8}" y="${y + 4}" text-anchor="end" font-size="11">1e${e}</text>`)
  }
  for (const n of lengths) {
    const x = px(n)
    parts.push(`<line x1="${x}" x2="${x}" y1="${pad.top}" y2="${H - pad.bottom}" stroke="#eee"/><text x="${x}" y="${H - pad.bottom + 16}" text-anchor="middle" font-size="11">${n / 1024}K</text>`)
  }
  all.forEach((s, i) => {
    const colour = s.kind === "target" ? "#999" : colours[i % colours.length]!
    const pts = s.points.map((p) => `${px(p.tokens).toFixed(1)},${py(rate(p)).toFixed(1)}`)
    if (pts.length > 1) parts.push(`<polyline points="${pts.join(" ")}" fill="none" stroke="${colour}" stroke-width="2"${s.kind === "target" ? ' stroke-dasharray="5,4"' : ""}/>`)
    for (const p of s.points) {
      const [x, y] = [px(p.tokens), py(rate(p))]
      parts.push(s.kind === "anchor" ? `<rect x="${x - 5}" y="${y - 5}" width="10" height="10" fill="${colour}"/>` : `<circle cx="${x}" cy="${y}" r="4" fill="${colour}"/>`)
    }
    const ly = pad.top + 18 * i
    parts.push(`<rect x="${W - pad.right + 12}" y="${ly - 8}" width="10" height="10" fill="${colour}"/><text x="${W - pad.right + 28}" y="${ly + 1}" font-size="11">${s.label}</text>`)
  })
  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${pad.left}" y="18" font-size="13">Prefill, Llama-3.1-8B shapes: prompt tokens per second (log scales)</text>`,
    ...parts,
    `<text x="${(pad.left + W - pad.right) / 2}" y="${H - 12}" text-anchor="middle" font-size="12">prompt length (tokens)</text>`,
    `</svg>`,
  ].join("\n")
  writeFileSync(o.svg, svg)
}
