import { BaseSequencer, type TestSpecification } from "vitest/node"
import { defineConfig } from "vitest/config"

/**
 * The files that take minutes on the 2-core CI box, longest first (lavapipe; the CI logs of
 * 2026-12-07: layer-prefill 340 s, tiered 117 s, kv-quality 81-109 s, tiered-compression 41-71 s;
 * cli was 104-147 s with 22 processes and runs 9 since its bad-input cases went in-process, so
 * it comes last of them). A clean clone has no vitest cache of durations, so vitest would start
 * the largest files first and one of these could start late and run alone at the end; they
 * start first instead.
 */
const LONGEST = ["layer-prefill", "tiered", "kv-quality", "tiered-compression", "cli"]

class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (f: TestSpecification) => {
      const i = LONGEST.findIndex((name) => f.moduleId.endsWith(`/test/${name}.test.ts`))
      return i < 0 ? LONGEST.length : i
    }
    const sorted = await super.sort(files)
    return sorted.map((f, i) => ({ f, i })).sort((a, b) => rank(a.f) - rank(b.f) || a.i - b.i).map(({ f }) => f)
  }
}

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // lavapipe and the CPU reference each want a core; two workers on the 2-core CI box.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    sequence: { sequencer: LongestFirst },
  },
})
