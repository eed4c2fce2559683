// Batched decode throughput (issue 14 §1), side by side in one run: per KV policy, B
// sequences of `--context` tokens of random KV (engine/synthetic-kv.ts, no prefill) decode
// together through one DecodeBatch (engine/batch.ts) with the GEMM and/or the GEMV
// projections, against batch 1 through the model's own GEMV step. The tiered policies share
// one host arena (`--host-kv-budget`) and one disk store; the GPU budget (`--gpu-kv-budget`)
// is shared by the largest batch: each sequence gets budget / max(--batches) at every B
// (its KV is filled once). Full attention's sequences take their KV blocks from one shared
// store (unless --no-shared-kv), so a batch attends all rows in one dispatch a layer
// (engine/batch-attention.ts); a setup "P:rows" runs projections P with attention per row
// instead, and "P:rowsample" samples per row (each row's logits copied to its model, 2
// dispatches a row) instead of all rows in one pass (engine/batch-sampling.ts), side by side
// (both: "P:rows:rowsample"); with --read-back, "P:overlap" encodes each step before the one
// before it is read. Tokens are chosen on the GPU, steps submitted back to back after
// two warm-up steps (DESIGN §6); with --read-back every step's tokens are read back before the
// next is encoded, as the serving loop does (engine/batch-loop.ts: one read of all rows, or
// with rowsample one per row). Prints a table and writes JSON (--out).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { parseSize } from "../cli/sizes.ts"
import { DecodeBatch, type MmaOptions, type Projections } from "../engine/batch.ts"
import { profileStep, type TimedStep } from "./gpu-timing.ts"
import { readBack } from "../engine/buffers.ts"
import { parseSkinnyForm } from "../engine/batch-mma.ts"
import { parseStreamForm } from "../engine/batch-stream.ts"
import { KvBlockStore } from "../engine/kv/block-store.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { isTiered, kvEngineOptions } from "../engine/kv/registry.ts"
import { GpuModel } from "../engine/model.ts"
import { synthesizeKv } from "../engine/synthetic-kv.ts"
import { DiskStore } from "../kv/disk-store.ts"
import { HostArena } from "../kv/host-arena.ts"
import { resolveDummyConfig } from "../models/config.ts"
import { DummyWeightSource } from "../models/dummy.ts"
import { openHfModel } from "../models/safetensors.ts"
import { parsePolicy } from "../protocol/policy.ts"

const list = (v: string) => v.split(",").filter((x) => x.length > 0)
const o = new Command()
  .option("--model <spec>", "a model directory, or dummy:<preset>", "dummy:llama-3.1-8b")
  .option("--context <n>", "tokens of (random) KV per sequence before decoding", (v) => Number(v), 1024)
  .option("--batches <list>", "batch sizes", "1,4,16")
  .option("--policies <list>", "KV policies (full, quest, leoam, leoam+pipe: leoam pipelined, leoam+nopipe: leoam unpipelined, offload-all); name@bits keeps a tiered policy's chunks at those bits (16, 8, 4 or importance), e.g. leoam@4", "full")
  .option("--projections <list>", "batched projections: gemm, gemv, multi (kernels/gemv_multi.wgsl), mma (the matrix units, engine/batch-mma.ts; LEOAM_MATRIX_UNITS=auto), stream (kernels/gemm_stream.wgsl, engine/batch-stream.ts; stream/4x2h a form)", "gemm,gemv,multi")
  .option("--budget-fraction <f>", "tokens attended per step by quest and leoam, as a fraction of the context", (v) => Number(v), 0.1)
  .option("--gpu-kv-budget <size>", "GPU KV budget of the tiered policies, shared by the largest batch", "6GiB")
  .option("--host-kv-budget <size>", "host arena of the tiered policies, shared by every sequence", "8GiB")
  .option("--kv-dir <dir>", "disk tier (default: a temporary directory, removed after)")
  .option("--steps <n>", "timed steps per setup", (v) => Number(v), 16)
  .option("--max-seconds <s>", "stop starting new setups after this long", (v) => Number(v), 400)
  .option("--fill-seconds <s>", "stop filling sequences of a policy after this long (the largest batches are then skipped)", (v) => Number(v), 200)
  .option("--mma-forms <list>", "forms of the matrix-unit projections, SPLITxCOLS[k] (engine/batch-mma.ts), each its own setup; a trailing :rows attends per row", "")
  .option("--no-shared-kv", "full attention: each sequence its own KV pool (attention per row)")
  .option("--profile", "after each setup, one step more with every dispatch timed on the GPU (timestamp queries): GPU time per kernel, and the step's dispatches, copies, queue writes and read-backs")
  .option("--read-back", "read every step's tokens back before encoding the next (as the serving loop)")
  .option("--out <file>", "write the results as JSON")
  .parse()
  .opts()

interface Row {
  policy: string
  batch: number
  projections: Projections | "alone" | `${Projections}:rows` | `mma/${string}` | `stream/${string}`
  ms_per_step: number
  tokens_per_s: number
  steps: number
  /** Where the same projections ran with attention the other way at this B: whether every row chose the same ids. */
  same_ids?: boolean
  /** --profile: one step's GPU time per kernel (µs, summed over its dispatches) and its dispatches, the step's span and its time inside kernels (ms). */
  profile?: { span_ms: number; busy_ms: number; kernels: Array<{ kernel: string; us: number; dispatches: number }>; dispatches: number; copies: number; writes: number; maps: number }
  error?: string
}

/** A setup's variants: "rows" (attention per row), "rowsample" (sampling per row). */
const how = (setup: string) => setup.split(":").slice(1)
/**
 * DecodeBatch.open's projections and options for a setup "P[/FORM][:rows][:rowsample]" (FORM:
 * mma's SPLITxCOLS, stream's RxUNROLL[h][/WG]); minRows 1: the matrix units or gemm_stream at
 * every B, also where a batch would take the GEMVs.
 */
const batchArgs = (setup: string): [Projections, MmaOptions] => {
  const [what, ...variants] = setup.split(":")
  const [kind, ...rest] = what!.split("/") as [Projections, ...string[]]
  const form = rest.length > 0 ? rest.join("/") : undefined
  const forms = form === undefined ? {} : kind === "stream" ? { stream: parseStreamForm(form) } : { form: parseSkinnyForm(form) }
  return [kind, { minRows: 1, rowAttention: variants.includes("rows"), rowSampling: variants.includes("rowsample"), ...forms }]
}

/** One step with every dispatch in a timed pass of its own (bench/gpu-timing.ts): GPU time per kernel, largest first, and the step's read-backs. */
const profile = async (step: (timed: TimedStep) => void | Promise<void>): Promise<NonNullable<Row["profile"]>> => {
  const maps0 = maps
  const p = await profileStep(gpu.device, step)
  return { ...p, kernels: [...p.kernels], maps: maps - maps0 }
}
/** Read-backs mapped so far (--read-back): one a step for all rows, or one per row. */
let maps = 0

/**
 * A setup's step (i consumes slot i, chooses slot i + 1 of every member; `timed` for --profile)
 * and every member's chosen ids so far. With --read-back each step's tokens come back before the
 * next: the batch's one read (the rows' next inputs from the host, as engine/batch-loop.ts), or
 * alone and with per-row sampling a read per row through the row's own buffer (as before);
 * with `overlap` step i is encoded (its inputs in place in the batch) before step i - 1's
 * tokens are read, as the loop runs ahead.
 */
const stepper = (members: ReadonlyArray<GpuModel>, batch: DecodeBatch | undefined, rowSampling: boolean, overlap: boolean) => {
  const sample = (i: number) => ({ outSlot: i + 1, temperature: 0, seed: 0, step: i })
  const fromSlots = async () => (await Promise.all(members.map(async (m) => [...new Uint32Array(await readBack(gpu.device, m.tokenIds, 4, (o.steps + 2) * 4))]))).join(";")
  if (!o.readBack) {
    const step = (i: number, timed?: TimedStep) => (batch ? batch.step(members.map((model) => ({ model, inSlot: i, sample: sample(i) })), timed) : members[0].decode(i, sample(i), undefined, timed))
    return { step, ids: fromSlots, destroy: () => {} }
  }
  const chosen: number[][] = members.map(() => [])
  const ids = async () => chosen.map((c) => c.slice(0, o.steps + 2)).join(";")
  if (batch && !rowSampling && overlap) {
    let unread = 0
    const collect = async () => {
      maps++
      unread--
      for (const [b, id] of (await batch.readTokens()).entries()) chosen[b]!.push(id)
    }
    const step = async (i: number, timed?: TimedStep) => {
      // The first step's inputs are each sequence's slot 0; later ones are in place.
      await batch.step(members.map((model, b) => ({ model, inSlot: i, sample: sample(i), idsOnHost: true, ...(unread === 0 && chosen[0]!.length === 0 ? { token: 1 + b } : {}) })), timed)
      unread++
      if (unread > 1) await collect()
    }
    return {
      step,
      ids: async () => {
        while (unread > 0) await collect()
        return ids()
      },
      destroy: () => {},
    }
  }
  if (batch && !rowSampling) {
    const last = members.map((_, b) => 1 + b) // each sequence's slot 0 (writeToken after its fill)
    const step = async (i: number, timed?: TimedStep) => {
      await batch.step(members.map((model, b) => ({ model, inSlot: i, sample: sample(i), token: last[b], idsOnHost: true })), timed)
      maps++
      for (const [b, id] of (await batch.readTokens()).entries()) {
        last[b] = id
        chosen[b]!.push(id)
      }
    }
    return { step, ids, destroy: () => {} }
  }
  const reads = members.map(() => gpu.device.createBuffer({ label: "bench token read-back", size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }))
  const step = async (i: number, timed?: TimedStep) => {
    const copyOut = (b: number) => ({ src: members[b]!.tokenIds, offset: ((i + 1) % GpuModel.idSlots) * 4, dst: reads[b]! })
    if (batch) await batch.step(members.map((model, b) => ({ model, inSlot: i, sample: sample(i), copyOut: copyOut(b) })), timed)
    else await members[0]!.decode(i, sample(i), copyOut(0), timed)
    await Promise.all(
      reads.map(async (r, b) => {
        maps++
        await r.mapAsync(GPUMapMode.READ, 0, 16)
        chosen[b]!.push(new Uint32Array(r.getMappedRange(0, 16))[0]!)
        r.unmap()
      }),
    )
  }
  return { step, ids, destroy: () => reads.forEach((r) => r.destroy()) }
}

const chosenIds = new Map<string, string>()
const started = performance.now()
const outOfTime = () => (performance.now() - started) / 1000 > o.maxSeconds
const batches = list(o.batches).map(Number)
const maxB = Math.max(...batches)
const gpu = await acquireGpu()
const source = () => (o.model.startsWith("dummy:") ? new DummyWeightSource(resolveDummyConfig(o.model.slice(6))) : openHfModel(o.model))
// The lead holds the weights (and a one-block cache of its own); the sequences are its siblings.
const lead = await GpuModel.load(gpu, source(), { maxContext: 64 })
const c = lead.config
const kvDir = o.kvDir ?? mkdtempSync(join(tmpdir(), "leoam-batch-bench-"))
const rows: Row[] = []
const print = (r: Row) =>
  console.log(`${r.policy.padEnd(12)} B=${String(r.batch).padStart(2)} ${r.projections.padEnd(8)} ${r.error ? `error: ${r.error}` : `${r.ms_per_step.toFixed(2)} ms/step  ${r.tokens_per_s.toFixed(1)} tokens/s  (${r.steps} steps)${r.same_ids === undefined ? "" : r.same_ids ? "  same ids as attention the other way" : "  ids DIFFER from attention the other way"}`}`)
console.log(`batch-bench: ${c.name}, ${o.context} tokens of context per sequence, device ${gpu.adapterName}`)

/** Times `steps` back-to-back steps of `step` after two warm-up steps; ms per step. */
const time = async (step: (i: number) => void | Promise<void>): Promise<{ ms: number; steps: number }> => {
  for (let i = 0; i < 2; i++) await step(i)
  await gpu.device.queue.onSubmittedWorkDone()
  const t0 = performance.now()
  for (let i = 2; i < 2 + o.steps; i++) await step(i)
  await gpu.device.queue.onSubmittedWorkDone()
  return { ms: (performance.now() - t0) / o.steps, steps: o.steps }
}

for (const spec of list(o.policies)) {
  if (outOfTime()) break
  // `name@bits` (e.g. leoam@4): that policy with its chunks kept at those bits (compression.bits).
  // `leoam+pipe`: leoam with the pipeline enabled (depth 2 where a step can rewind, batch 1 alone;
  // the combine alone in a batch, whose rows keep no layer inputs); `leoam+nopipe`: enabled false
  // (leoam's default, said explicitly).
  const [head, bits] = spec.split("@") as [string, string | undefined]
  const piped = head === "leoam+pipe"
  const unpiped = head === "leoam+nopipe"
  const base = unpiped || piped ? "leoam" : head
  const name = spec
  const compression = bits === undefined ? {} : { compression: { bits: bits === "importance" ? "importance" : Number(bits) } }
  const pipeline = unpiped ? { pipeline: { enabled: false } } : piped ? { pipeline: { enabled: true } } : {}
  const doc = base === "quest" || base === "leoam" ? { name: base, selection: { topk: { budget_fraction: o.budgetFraction } }, ...compression, ...pipeline } : { name: base, ...compression }
  const policy = parsePolicy(doc)
  const tiered = isTiered(policy)
  // A directory per policy: an LMDB index closed and reopened in one process is refused as damaged.
  const policyDir = join(kvDir, spec.replace(/[^a-z0-9-]/gi, "_"))
  if (tiered) mkdirSync(policyDir, { recursive: true })
  const store = tiered ? DiskStore.open({ kvDir: policyDir }) : undefined
  const arena = tiered ? new HostArena({ budgetBytes: parseSize(o.hostKvBudget) }) : undefined
  const maxContext = o.context + 2 * (o.steps + 2) + 16
  const seqs: GpuModel[] = []
  // Full attention: every sequence's blocks in one store, so that a batch attends them together.
  const shared = !tiered && policy.name === "full" && o.sharedKv ? new KvBlockStore(gpu.device, c, lead.blockTokens, maxB * Math.ceil(maxContext / lead.blockTokens)) : undefined
  try {
    const fillStart = performance.now()
    for (let i = 0; i < maxB && !outOfTime() && (performance.now() - fillStart) / 1000 < o.fillSeconds; i++) {
      const tiers = { gpuBudgetBytes: tiered ? Math.floor(parseSize(o.gpuKvBudget) / maxB) : undefined, arena, store, session: `bench-${name.replace(/[^a-z0-9-]/gi, "_")}-${i}` }
      const model = await lead.sibling({ maxContext, ...kvEngineOptions(policy, tiers, c, maxContext), kvBlocks: shared })
      seqs.push(model)
      const f0 = performance.now()
      await synthesizeKv(model, o.context, 1 + i)
      model.writeToken(0, 1 + i)
      console.log(`  ${name}: sequence ${i} filled in ${((performance.now() - f0) / 1000).toFixed(1)} s`)
    }
    for (const b of batches) {
      const chosen = [...list(o.projections), ...list(o.mmaForms).map((f) => `mma/${f}`)] as Array<Row["projections"]>
      const setups: Array<Row["projections"]> = b === 1 ? ["alone", ...chosen] : chosen
      for (const projections of setups) {
        if (outOfTime() || b > seqs.length) break
        const row: Row = { policy: name, batch: b, projections, ms_per_step: 0, tokens_per_s: 0, steps: 0 }
        try {
          const members = seqs.slice(0, b)
          // Each step consumes slot i and writes slot i + 1 of every sequence (steps past the context are refused).
          const batch = projections === "alone" ? undefined : await DecodeBatch.open(lead, b, ...batchArgs(projections))
          const setup = stepper(members, batch, how(projections).includes("rowsample"), how(projections).includes("overlap"))
          try {
            const t = await time((i) => setup.step(i))
            Object.assign(row, { ms_per_step: t.ms, tokens_per_s: (b * 1000) / t.ms, steps: t.steps })
            if (batch && b > 1 && shared && !batch.attendsTogether && !how(projections).includes("rows")) throw new Error("the rows did not attend together")
            // One step more, as the timed ones (the batch's tokens in place), every dispatch timed.
            if (o.profile && gpu.device.features.has("timestamp-query")) {
              try {
                row.profile = await profile((timed) => setup.step(2 + o.steps, timed))
              } catch (e) {
                console.log(`    profile failed: ${(e as Error).message}`)
              }
            }
            // Every row's chosen ids, against the same projections with attention or sampling the other way.
            const ids = await setup.ids()
            const key = `${name} ${b} ${projections.split(":")[0]}`
            const before = chosenIds.get(key)
            if (before === undefined) chosenIds.set(key, ids)
            else row.same_ids = before === ids
          } finally {
            batch?.destroy()
            setup.destroy()
          }
          for (const m of members) {
            await m.settle()
            m.truncate(o.context) // the next setup starts from the same context
          }
        } catch (e) {
          row.error = (e as Error).message
        }
        rows.push(row)
        print(row)
        if (row.profile) {
          const p = row.profile
          console.log(`    one step: ${p.dispatches} dispatches, ${p.copies} copies, ${p.writes} queue writes, ${p.maps} read-backs`)
          console.log(`    one step timed per dispatch: ${p.busy_ms.toFixed(2)} ms in kernels, ${p.span_ms.toFixed(2)} ms span; ${p.kernels.slice(0, 8).map((k) => `${k.kernel} ${(k.us / 1000).toFixed(2)} ms/${k.dispatches}`).join(", ")}`)
        }
      }
    }
  } catch (e) {
    const row: Row = { policy: name, batch: seqs.length + 1, projections: "alone", ms_per_step: 0, tokens_per_s: 0, steps: 0, error: (e as Error).message }
    rows.push(row)
    print(row)
  } finally {
    for (const m of seqs) m.destroy()
    shared?.destroy()
    await store?.close()
  }
}

// Throughput against batch 1 (alone) of the same policy.
const speedups = rows
  .filter((r) => !r.error && r.projections !== "alone")
  .map((r) => {
    const one = rows.find((x) => x.policy === r.policy && x.projections === "alone" && !x.error)
    return { policy: r.policy, batch: r.batch, projections: r.projections, vs_batch1: one ? r.tokens_per_s / one.tokens_per_s : null }
  })
for (const s of speedups) console.log(`${s.policy.padEnd(12)} B=${String(s.batch).padStart(2)} ${s.projections.padEnd(8)} ${s.vs_batch1 === null ? "" : `${s.vs_batch1.toFixed(2)}x batch 1`}`)
if (o.out) writeFileSync(o.out, JSON.stringify({ model: c.name, device: gpu.adapterName, context: o.context, gpu_kv_budget: o.gpuKvBudget, host_kv_budget: o.hostKvBudget, rows, speedups }, null, 2))
lead.destroy()
if (!o.kvDir) rmSync(kvDir, { recursive: true, force: true })
await releaseGpu()
