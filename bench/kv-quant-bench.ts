// The cost of kv/quant.ts on the CPU: the reference quantizer (seals quantize on the GPU since
// kernels/quantize.wgsl; bench/seal-bench.ts times them) and the codec a load uses where the GPU
// slots cannot hold the stored bits (dequantize, convert). Times quantize, dequantize to fp16
// and int4 -> int8 widening of one chunk at a model's shapes, medians of repeated runs, and
// what a decode step's seals would cost on the CPU at that rate. Prints a table, writes JSON (--json).
import { writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { Command } from "commander"
import { chunkBytesAt, convertChunk, dequantizeInto, floatToHalf, type KvShape, quantizeChunk } from "../kv/quant.ts"

const shapes: Record<string, { shape: KvShape; layers: number }> = {
  "tiny-leo-14m": { shape: { kvHeads: 2, blockTokens: 16, headDim: 64 }, layers: 8 },
  "llama-3.1-8b": { shape: { kvHeads: 8, blockTokens: 16, headDim: 128 }, layers: 32 },
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const time = (runs: number, f: () => void): number => {
  // Warm up for 300 ms (the JIT optimizes after many calls; the first cases would pay for it).
  for (const t0 = performance.now(); performance.now() - t0 < 300; ) f()
  const ms: number[] = []
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now()
    f()
    ms.push(performance.now() - t0)
  }
  return median(ms)
}

const main = () => {
  const o = new Command()
    .option("--tokens <n>", "tokens per chunk (default 32)", (v) => parseInt(v, 10), 32)
    .option("--runs <n>", "timed runs per case (default 15)", (v) => parseInt(v, 10), 15)
    .option("--json <file>", "write the results as JSON")
    .parse()
    .opts()
  const rows: Array<Record<string, string | number>> = []
  for (const [model, { shape, layers }] of Object.entries(shapes)) {
    const tokens: number = o.tokens
    const f16 = new Uint16Array(chunkBytesAt(shape, tokens, 16) / 2)
    for (let i = 0; i < f16.length; i++) f16[i] = floatToHalf(Math.sin(i * 0.37) * 3)
    const src = new Uint8Array(f16.buffer)
    const elements = f16.length
    const view = new Uint8Array(src.length)
    for (const bits of [8, 4] as const) {
      const q = quantizeChunk(src, shape, tokens, bits)
      const quantMs = time(o.runs, () => quantizeChunk(src, shape, tokens, bits))
      const dequantMs = time(o.runs, () => dequantizeInto(q, shape, tokens, bits, view))
      const widenMs = bits === 4 ? time(o.runs, () => convertChunk(q, shape, tokens, 4, 8)) : NaN
      rows.push({
        model,
        bits,
        chunk_bytes_f16: src.length,
        chunk_bytes: q.length,
        ratio: +(q.length / src.length).toFixed(3),
        quantize_ms: +quantMs.toFixed(3),
        quantize_ns_per_value: +((quantMs * 1e6) / elements).toFixed(1),
        dequantize_ms: +dequantMs.toFixed(3),
        widen_4_to_8_ms: Number.isNaN(widenMs) ? "-" : +widenMs.toFixed(3),
        // A decode step seals one chunk per layer every `tokens` steps.
        seal_ms_per_step: +((quantMs * layers) / tokens).toFixed(3),
      })
    }
  }
  const head = Object.keys(rows[0])
  console.log(`kv/quant.ts on the CPU (${cpus()[0]?.model ?? "?"}, ${cpus().length} cores), ${o.tokens}-token chunks, median of ${o.runs}`)
  console.log(head.join("  "))
  for (const r of rows) console.log(head.map((h) => String(r[h])).join("  "))
  if (o.json) writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), tokens: o.tokens, runs: o.runs, rows }, null, 2))
}

main()
