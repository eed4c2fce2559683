// The CLI as a user runs it: `leoam generate --json` on the bundled model, and bad input
// answered with a stable code and exit status 2. A few cases start the real process (its exit
// status, stdout holding only the JSON); the others run the same command line in-process
// (runCli: the exit status it gives, and what it writes to stdout and stderr), since a process
// spends ~2 s on the 2-core CI box loading its modules before it parses anything. Those that
// run the GPU are processes (a process opens and releases the GPU once).
import { execFile } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it, vi } from "vitest"
import { runCli } from "../cli/program.ts"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname
const tempDir = () => mkdtempSync(join(tmpdir(), "leoam-cli-kv-"))
const writeTemp = (name: string, text: string) => {
  const file = join(tempDir(), name)
  writeFileSync(file, text)
  return file
}

interface Run {
  code: number
  stdout: string
  stderr: string
}

/** `leoam ARGS` as a process. */
const leoamProcess = (...args: string[]) =>
  new Promise<Run>((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    )
  })

/** `leoam ARGS` in this process: the exit status runCli gives and what it wrote. */
const leoam = async (...args: string[]): Promise<Run> => {
  const run = { code: -1, stdout: "", stderr: "" }
  const capture = (stream: "stdout" | "stderr") =>
    vi.spyOn(process[stream], "write").mockImplementation((chunk: string | Uint8Array) => {
      run[stream] += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8")
      return true
    })
  const spies = [capture("stdout"), capture("stderr")]
  try {
    run.code = await runCli([process.execPath, bin, ...args])
  } finally {
    for (const s of spies) s.mockRestore()
  }
  return run
}

describe("leoam generate", () => {
  it("--json gives ids, text and timings equal to the golden greedy run (the process: exit status 0, stdout only the JSON)", async () => {
    const r = await leoamProcess("generate", "--prompt", "Once upon a time", "--max-tokens", "8", "--json")
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.prompt_ids).toEqual([3622, 347, 1407, 261, 577])
    expect(out.ids).toEqual([1936, 223, 20, 22, 16, 2357, 1878, 1082])
    expect(out.text).toBe("els 24. However By cle")
    expect(out.usage).toEqual({ prompt_tokens: 5, completion_tokens: 8 })
    expect(out.timings.prefill_ms).toBeGreaterThan(0)
    expect(out.timings.decode_ms_per_token).toBeGreaterThan(0)
  })

  it("--ids-file and --ids agree", async () => {
    const dir = mkdtempSync(join(tmpdir(), "leoam-cli-"))
    writeFileSync(join(dir, "ids.txt"), "610 451 1262\n621")
    const a = JSON.parse((await leoamProcess("generate", "--ids-file", join(dir, "ids.txt"), "--max-tokens", "3", "--json")).stdout)
    const b = JSON.parse((await leoamProcess("generate", "--ids", "610,451,1262,621", "--max-tokens", "3", "--json")).stdout)
    expect(a.ids).toEqual(b.ids)
  })

  const bad: Array<[string, string[], string]> = [
    ["a non-numeric id", ["--ids", "1,x"], "invalid_ids"],
    ["an id outside the vocabulary", ["--ids", "4096"], "invalid_ids"],
    ["two prompts", ["--ids", "1", "--prompt", "a"], "invalid_request"],
    ["no prompt", [], "invalid_request"],
    ["an unknown model directory", ["--model", "/nonexistent", "--ids", "1"], "unknown_model"],
    ["a negative temperature", ["--ids", "1", "--temperature", "-1"], "invalid_argument"],
    ["top-p of 0", ["--ids", "1", "--top-p", "0"], "invalid_argument"],
    ["a prompt longer than the context", ["--ids", "1,2,3,4", "--max-context", "4"], "context_overflow"],
    ["a missing ids file", ["--ids-file", "/nonexistent/ids"], "invalid_ids"],
    ["an unknown KV policy", ["--ids", "1", "--kv-policy", "lru-magic"], "unknown_policy"],
    ["a policy file that is not JSON", ["--ids", "1", "--kv-policy", writeTemp("policy.json", "{ nope")], "invalid_policy"],
    ["a policy with an unknown field", ["--ids", "1", "--kv-policy", writeTemp("p2.json", '{"name":"leoam","speed":"max"}')], "invalid_policy"],
    ["a budget below sink + recent", ["--ids", "1", "--kv-policy", writeTemp("p3.json", '{"name":"leoam","selection":{"topk":{"budget_tokens":16,"sink_tokens":32}}}')], "invalid_policy"],
    ["a chunk size that is not a multiple of 16", ["--ids", "1", "--kv-policy", writeTemp("p4.json", '{"name":"leoam","chunking":{"fixed":{"tokens":24}}}')], "invalid_policy"],
    ["a GPU KV budget too small for the tiers", ["--ids", "1", "--kv-policy", "leoam", "--gpu-kv-budget", "64KiB", "--kv-dir", tempDir()], "kv_budget_too_small"],
    ["full attention over budget", ["--ids", "1", "--kv-policy", "full", "--gpu-kv-budget", "1KiB"], "kv_budget_too_small"],
    ["a --kv-dir whose parent is missing", ["--ids", "1", "--kv-policy", "leoam", "--kv-dir", "/nonexistent/parent/kv"], "kv_dir_unavailable"],
    ["a malformed size", ["--ids", "1", "--gpu-kv-budget", "lots"], "invalid_argument"],
  ]
  // Those refused once the GPU is open (kv_budget_too_small) run as processes: the GPU is
  // acquired and released per command, and a process may do that once (a released device's
  // Dawn instance can be collected under the next one: DESIGN §5).
  const opensGpu = (code: string) => code === "kv_budget_too_small"
  for (const [what, args, code] of bad) {
    it(`answers ${what} with [${code}] and exit status 2`, async () => {
      const r = await (opensGpu(code) ? leoamProcess : leoam)("generate", ...args, "--json")
      expect(r.code).toBe(2)
      expect(r.stderr).toContain(`leoam: error [${code}]`)
      expect(r.stdout).toBe("")
    })
  }

  it("the process exits with status 2 on an error commander prints itself (a negative temperature)", async () => {
    const r = await leoamProcess("generate", "--ids", "1", "--temperature", "-1", "--json")
    expect(r.code).toBe(2)
    expect(r.stderr).toContain("leoam: error [invalid_argument]")
    expect(r.stdout).toBe("")
  })

  it("--kv-policy leoam spreads the KV over GPU, host and disk and reports it under kv", async () => {
    const ids = Array.from({ length: 700 }, (_, i) => 5 + ((i * 7) % 300)).join(",")
    const args = ["generate", "--ids", ids, "--max-tokens", "6", "--json"]
    const full = JSON.parse((await leoamProcess(...args)).stdout)
    const kvDir = tempDir()
    // A context of 1024 (not the model's 16K): all its chunk abstracts stay on the GPU, within the budget.
    const r = await leoamProcess(...args, "--max-context", "1024", "--kv-policy", writeTemp("all.json", '{"name":"leoam","selection":{"topk":{"budget_fraction":1}}}'), "--gpu-kv-budget", "1536KiB", "--host-kv-budget", "512KiB", "--kv-dir", kvDir)
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.ids).toEqual(full.ids) // attending every chunk is exact
    expect(out.kv.policy).toBe("leoam")
    expect(out.kv.disk.bytes_written).toBeGreaterThan(0)
    expect(out.kv.disk.bytes_read).toBeGreaterThan(0)
    expect(full.kv).toEqual({ policy: "full" })
  }, 180_000)

  it("rejects a model directory with a malformed config.json, naming the file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "leoam-bad-model-"))
    writeFileSync(join(dir, "config.json"), "{ not json")
    const r = await leoamProcess("generate", "--model", dir, "--ids", "1")
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/\[config_malformed\].*config\.json/)
  })
})
