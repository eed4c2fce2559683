// Batched decode's projections streamed at GEMV speed (kernels/gemm_stream.wgsl): the rows of
// a projection's input are rounded to f16 once (kernels/half_rows.wgsl, as for the matrix
// units, engine/batch-mma.ts), then one pass over the weights serves up to 16 rows on the
// plain ALUs, with the same fused epilogues (bias, residual, SwiGLU pairs). A step of m rows
// takes the pipeline compiled for the next power of two (MR 1, 2, 4, 8 or 16 rows a pass),
// so that a few rows cost little more than one; past 16 rows each group of 16 is a pass.
import { type Dispatch, dispatchOf, Uniform } from "./buffers.ts"
import type { Gpu } from "./gpu.ts"
import { type GemvOp, gemvShapes } from "./gemv-tuning.ts"
import type { ModelConfig } from "../models/types.ts"
import type { PipelineKey } from "./pipelines.ts"
import type { ProductOf, RowInputs } from "./batch-mma.ts"

/** Rows of xh one pass can carry (gemm_stream's MAX_MR). */
export const STREAM_MAX_ROWS = 16

/**
 * gemm_stream's form: WG threads a workgroup, R rows of W a team pass (SwiGLU: R/2 gate and
 * R/2 up rows), UNROLL steps of K loaded ahead, F16 the 8-term pieces in f16 (else f32 FMAs),
 * X32 the rows of x as f32 (half_rows' F32: twice the bytes of x, no conversions).
 */
export interface StreamForm {
  readonly WG: number
  readonly R: 2 | 4 | 8
  readonly UNROLL: 1 | 2 | 4
  readonly F16: boolean
  readonly X32?: boolean
}

/**
 * The default form, chosen without a GPU measurement (none could be made this session): R 4
 * (64 sums a lane at 16 rows), two steps of K in flight, f32 FMAs. The f16 pieces (F16, "h")
 * miss the GEMM tolerance (2e-3 of max(1, |y|)) on the checks' data: 3.5e-3 at K = 344 on
 * lavapipe, from rounding each 8-term piece to f16; they are kept for the benchmark, where
 * they tell whether the ALUs or the memory bound the kernel. bench/skinny-bench.ts times the
 * forms (--stream-forms).
 */
export const STREAM_FORM: StreamForm = { WG: 128, R: 4, UNROLL: 2, F16: false }

/** A form from its name: R x UNROLL, "h" for f16 pieces or "f" for f32 rows of x, "/WG" (e.g. 4x2h, 8x1, 4x2f/256). */
export const parseStreamForm = (name: string): StreamForm => {
  const m = /^([248])x([124])([hf]?)(?:\/(64|128|256))?$/.exec(name)
  if (!m) throw new RangeError(`a streamed form is RxUNROLL[h|f][/WG] with R 2, 4 or 8, UNROLL 1, 2 or 4 and WG 64, 128 or 256, not ${name}`)
  return { R: Number(m[1]) as 2 | 4 | 8, UNROLL: Number(m[2]) as 1 | 2 | 4, F16: m[3] === "h", ...(m[3] === "f" ? { X32: true } : {}), WG: m[4] ? Number(m[4]) : 128 }
}

/** The form a batch streams with: LEOAM_STREAM_FORM's (a name for parseStreamForm), else STREAM_FORM. */
export const streamFormOf = (env: string | undefined = process.env.LEOAM_STREAM_FORM): StreamForm => (env?.trim() ? parseStreamForm(env.trim()) : STREAM_FORM)

/** The form's name (parseStreamForm's inverse). */
export const streamFormName = (f: StreamForm): string => `${f.R}x${f.UNROLL}${f.F16 ? "h" : f.X32 ? "f" : ""}${f.WG === 128 ? "" : `/${f.WG}`}`

/** gemm_stream's constants on a device: the form (F16 only with shader-f16) and the teams a workgroup. */
export interface StreamConstants extends StreamForm {
  /** Teams a workgroup: its subgroups (at the device's smallest subgroup size), or 1 without subgroups. */
  readonly teams: number
}

/**
 * gemm_stream's constants for a model on a device, or undefined where it cannot run: every
 * projection's K a multiple of 8 (16-byte loads). Any subgroup size works (the teams of a
 * workgroup take its outputs in turn); without subgroups a team is the whole workgroup.
 */
export const streamFor = (gpu: Pick<Gpu, "hasF16" | "hasSubgroups" | "subgroupMinSize">, c: ModelConfig, form: StreamForm = STREAM_FORM): StreamConstants | undefined => {
  const fits = Object.values(gemvShapes(c)).every(([n, k]) => k % 8 === 0 && n % 2 === 0)
  if (!fits) return undefined
  const teams = gpu.hasSubgroups ? Math.max(1, Math.floor(form.WG / gpu.subgroupMinSize)) : 1
  return { ...form, F16: form.F16 && gpu.hasF16, teams }
}

/** Rows a pass for a step of m rows: the next power of two, at most STREAM_MAX_ROWS. */
export const streamRows = (m: number): number => Math.min(STREAM_MAX_ROWS, 2 ** Math.ceil(Math.log2(Math.max(1, m))))

/** Outputs a workgroup (SwiGLU: gate/up pairs): every team one pass. */
export const streamColumns = (k: StreamConstants, swiglu: boolean): number => k.teams * (swiglu ? k.R / 2 : k.R)

/** The key of gemm_stream with `flags` (ACC, BIAS, SWIGLU) in form k for MR rows a pass. */
export const streamKey = (flags: Record<string, boolean>, k: StreamConstants, MR: number): PipelineKey => ({
  op: "gemm_stream",
  flags: { ...flags, F16: k.F16, X32: k.X32 === true },
  constants: { WG: k.WG, R: k.R, UNROLL: k.UNROLL, MR, CPW: streamColumns(k, flags.SWIGLU === true) },
})

/** The passes' row counts a batch of up to `capacity` rows may take, from `minRows` rows a step. */
export const streamRowCounts = (capacity: number, minRows: number): number[] =>
  [1, 2, 4, 8, 16].filter((mr) => mr <= streamRows(capacity) && mr >= streamRows(minRows))

/** gemm_stream's flags for a projection (with and without a bias where the model may have one). */
const projectionFlags = (op: GemvOp, bias: boolean): Array<Record<string, boolean>> =>
  op === "qkv" ? [{}, ...(bias ? [{ BIAS: true }] : [])] : op === "o" ? [{ ACC: true }, ...(bias ? [{ ACC: true, BIAS: true }] : [])] : op === "gu" ? [{ SWIGLU: true }] : op === "down" ? [{ ACC: true }] : [{}]

/** Every pipeline the streamed projections of a batch need (prewarm them before building), besides half_rows. */
export const streamPipelineKeys = (k: StreamConstants, bias: boolean, c: ModelConfig, rowCounts: ReadonlyArray<number>): PipelineKey[] =>
  (Object.keys(gemvShapes(c)) as GemvOp[]).flatMap((op) => projectionFlags(op, bias).flatMap((flags) => rowCounts.map((mr) => streamKey(flags, k, mr))))

/**
 * gemm_stream as a batch's product (engine/batch-mma.ts rowProjections): one dispatch whose
 * pipeline and bind group follow the step's rows (streamRows); `rowCounts` the passes'
 * row counts prewarmed (streamRowCounts).
 */
export const streamProduct =
  (i: RowInputs, k: StreamConstants, rowCounts: ReadonlyArray<number>): ProductOf =>
  (op, flags, b) => {
    const [n, K] = gemvShapes(i.config)[op]
    const u = new Uniform(i.device, `batch gemm_stream ${op}`, "uuuu")
    const outs = flags.SWIGLU ? n / 2 : n
    const entries = [[0, u.buffer], [1, b.xh], [2, b.w], [3, b.y], ...(b.bias ? [[5, b.bias] as const] : [])] as const
    const forms = new Map(rowCounts.map((mr) => [mr, dispatchOf(i.device, i.pipelines.now(streamKey(flags, k, mr)), entries)]))
    const first = forms.get(rowCounts[0]!)!
    const dispatch: Dispatch = { ...first }
    return {
      dispatch,
      resize: (m) => {
        const mr = streamRows(m)
        const form = forms.get(mr)
        if (!form) throw new RangeError(`gemm_stream has no pipeline for ${mr} rows a pass (prewarmed: ${rowCounts.join(", ")})`)
        u.set(m, n, K, 0)
        const [x, y, z] = streamGrid(k, outs, flags.SWIGLU === true, m)
        Object.assign(dispatch, { pipeline: form.pipeline, bindGroup: form.bindGroup, x, y, z })
      },
    }
  }

/** gemm_stream's workgroups for a step of m rows: outputs over x, passes of streamRows(m) rows over z. */
export const streamGrid = (k: StreamConstants, outs: number, swiglu: boolean, m: number): [number, number, number] => [Math.ceil(outs / streamColumns(k, swiglu)), 1, Math.ceil(m / streamRows(m))]
