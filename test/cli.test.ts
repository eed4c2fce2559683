// The CLI as a user runs it: `leoam generate --json` on the bundled model, and bad input
// answered with a stable code and exit status 2.
import { execFile } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const bin = new URL("../bin/leoam.js", import.meta.url).pathname

const leoam = (...args: string[]) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    )
  })

describe("leoam generate", () => {
  it("--json gives ids, text and timings equal to the golden greedy run", async () => {
    const r = await leoam("generate", "--prompt", "Once upon a time", "--max-tokens", "8", "--json")
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
    const a = JSON.parse((await leoam("generate", "--ids-file", join(dir, "ids.txt"), "--max-tokens", "3", "--json")).stdout)
    const b = JSON.parse((await leoam("generate", "--ids", "610,451,1262,621", "--max-tokens", "3", "--json")).stdout)
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
  ]
  for (const [what, args, code] of bad) {
    it(`answers ${what} with [${code}] and exit status 2`, async () => {
      const r = await leoam("generate", ...args, "--json")
      expect(r.code).toBe(2)
      expect(r.stderr).toContain(`leoam: error [${code}]`)
      expect(r.stdout).toBe("")
    })
  }

  it("rejects a model directory with a malformed config.json, naming the file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "leoam-bad-model-"))
    writeFileSync(join(dir, "config.json"), "{ not json")
    const r = await leoam("generate", "--model", dir, "--ids", "1")
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/\[config_malformed\].*config\.json/)
  })
})
