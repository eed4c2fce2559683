// Optional phase times of a session run (finding the session, its lane's admission and
// build, resuming the stored chunk tables and abstracts, prefill to the first token, the
// rest, closing), for a benchmark that asks where a run's time goes (bench/session-ttft.ts).
// Off unless a benchmark sets a sink: then one branch per phase and nothing else (STYLE 9),
// like kv/step-trace.ts for a decode step's host phases.

/** The phases of a session run, in order. */
export type RunPhase = "find" | "admit" | "lane" | "resume" | "first token" | "decode" | "close"

export type RunPhaseSink = (phase: RunPhase, ms: number) => void

let active: RunPhaseSink | undefined

/** Sets (or, with undefined, clears) the sink every phase reports to. */
export const setRunPhases = (sink: RunPhaseSink | undefined): void => {
  active = sink
}

/** Reports `ms` of `phase`, when a sink is set. */
export const reportPhase = (phase: RunPhase, ms: number): void => {
  active?.(phase, ms)
}

/** Reports that `phase` began at t0 (performance.now() ms) and ends now, when a sink is set; returns now. */
export const runPhase = (phase: RunPhase, t0: number): number => {
  const now = performance.now()
  active?.(phase, now - t0)
  return now
}
