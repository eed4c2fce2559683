// Optional spans of a decode step's host-side phases (waiting for a choice, planning the GPU
// cache, staging chunks to the GPU and the staging ring's flush inside it, disk reads), for
// a benchmark's timeline (bench/step-timeline.ts). Off unless a benchmark sets a trace: then
// one branch per phase and nothing else (STYLE 9).

/** The host lanes of a step's timeline. */
export type TraceLane = "choice wait" | "host->GPU" | "disk read" | "plan" | "flush"

export interface StepTrace {
  /** A span of `lane` from t0 to t1 (performance.now() ms); `label` names it (a layer). */
  span(lane: TraceLane, t0: number, t1: number, label: string): void
}

let active: StepTrace | undefined

/** Sets (or, with undefined, clears) the trace every phase reports to. */
export const setStepTrace = (trace: StepTrace | undefined): void => {
  active = trace
}

/** Reports a span that began at t0 and ends now, when a trace is set (labelled by layer, and chunk). */
export const traceSpan = (lane: TraceLane, t0: number, layer: number, chunk?: number): void => {
  if (active) active.span(lane, t0, performance.now(), chunk === undefined ? `L${layer}` : `L${layer} c${chunk}`)
}
