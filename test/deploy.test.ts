// The systemd deployment: the unit passes `systemd-analyze verify` and its offline security
// check; `serve --config` takes a schema-checked file that flags override; install.sh
// --dry-run says what it would do and changes nothing; and a real `leoam serve` started as
// the unit starts it prints JSON lines and tells a (fake) systemd-notify it is ready, then
// that it is stopping.
import { execFile, spawn } from "node:child_process"
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Command } from "commander"
import { connect } from "@nats-io/transport-node"
import { describe, expect, it } from "vitest"
import { applyServeConfig, readServeConfig } from "../cli/config.ts"
import { classifyLine } from "../cli/log.ts"

const root = new URL("..", import.meta.url).pathname
const bin = join(root, "bin/leoam.js")
const unitFile = join(root, "deploy/leoam.service")
const temp = () => mkdtempSync(join(tmpdir(), "leoam-deploy-"))
const writeTemp = (name: string, text: string) => {
  const file = join(temp(), name)
  writeFileSync(file, text)
  return file
}

const run = (file: string, args: string[], env: NodeJS.ProcessEnv = process.env) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(file, args, { timeout: 60_000, env }, (error, stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    )
  })

/** The unit with ExecStart's node where this machine has it (verify checks the binary exists). */
const unitHere = () => {
  const dir = temp()
  const file = join(dir, "leoam.service")
  writeFileSync(file, readFileSync(unitFile, "utf8").replace("/usr/bin/node", process.execPath))
  return file
}

describe("deploy/leoam.service", () => {
  it("passes systemd-analyze verify without a warning, and fails it when broken", async () => {
    const ok = await run("systemd-analyze", ["verify", unitHere()])
    expect(ok.stderr).toBe("")
    expect(ok.code).toBe(0)
    const broken = unitHere()
    writeFileSync(broken, readFileSync(broken, "utf8").replace("KillMode=mixed", "KillMode=mixed\nProtectSystm=strict"))
    const bad = await run("systemd-analyze", ["verify", broken])
    expect(bad.stderr).toContain("Unknown key 'ProtectSystm'")
  })

  it("is hardened: offline exposure at most 5.0, notify readiness, drain-friendly stop", async () => {
    const sec = await run("systemd-analyze", ["security", "--offline=true", "--threshold=50", "--no-pager", unitHere()])
    expect(sec.stdout).toMatch(/Overall exposure level for leoam\.service: [0-4]\.\d/)
    expect(sec.code).toBe(0)
    const unit = readFileSync(unitFile, "utf8")
    const keys = new Map(unit.split("\n").filter((l) => /^\w+=/.test(l)).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]))
    expect(keys.get("Type")).toBe("notify")
    expect(keys.get("NotifyAccess")).toBe("all")
    expect(keys.get("KillMode")).toBe("mixed")
    expect(keys.get("Restart")).toBe("on-failure")
    expect(keys.get("StateDirectory")).toBe("leoam")
    expect(keys.has("PrivateDevices")).toBe(false) // the GPU's device nodes must stay visible
    // The stop timeout outlasts the default drain (30 s) with room for nats-server to stop.
    expect(Number(keys.get("TimeoutStopSec")) * 1000).toBeGreaterThan(30_000 + 10_000)
    expect(keys.get("ExecStart")).toContain("serve --config /etc/leoam/config.json")
  })
})

describe("serve --config", () => {
  it("reads a good file: sizes in bytes, paths from the file's directory", () => {
    const dir = temp()
    writeFileSync(join(dir, "c.json"), JSON.stringify({ kv_dir: "kv", host_kv_budget: "1.5GiB", gpu_kv_budget: 4096, queue: 3, device: "cpu", kv_policy: "leoam" }))
    expect(readServeConfig(join(dir, "c.json"))).toEqual({ kv_dir: join(dir, "kv"), host_kv_budget: 1.5 * 1024 ** 3, gpu_kv_budget: 4096, queue: 3, device: "cpu", kv_policy: "leoam" })
  })

  it("lets flags given on the command line override the file", () => {
    const file = writeTemp("c.json", JSON.stringify({ queue: 3, drain_timeout: 1000 }))
    const cmd = new Command("serve").option("--config <file>").option("--queue <n>", "", Number, 64).option("--drain-timeout <ms>", "", Number, 30_000).exitOverride()
    cmd.parse(["--config", file, "--queue", "5"], { from: "user" })
    applyServeConfig(cmd)
    expect(cmd.opts()).toMatchObject({ queue: 5, drainTimeout: 1000 })
    expect(cmd.getOptionValueSource("drainTimeout")).toBe("config")
  })

  const bad: Array<[string, string, RegExp]> = [
    ["an unknown field", '{"queue": 3, "speed": "max"}', /speed: is unexpected/],
    ["a wrong type", '{"queue": "many"}', /queue: Expected number, actual "many"/],
    ["a number out of range", '{"nats_port": 70000}', /nats_port: /],
    ["a size that is not one", '{"host_kv_budget": "lots"}', /host_kv_budget/],
    ["a device not in the list", '{"device": "tpu"}', /device: expected one of "auto", "gpu", "cpu"/],
    ["a node id that is not one subject token", '{"node": "a.b"}', /node: Expected a string matching/],
    ["text that is not JSON", "{ nope", /is not JSON/],
  ]
  for (const [what, text, message] of bad) {
    it(`refuses ${what}: invalid_config naming the field`, () => {
      const file = writeTemp("c.json", text)
      let error: unknown
      try {
        readServeConfig(file)
      } catch (e) {
        error = e
      }
      expect(error).toMatchObject({ code: "invalid_config", message: expect.stringMatching(message) })
      expect((error as Error).message.startsWith(file)).toBe(true)
    })
  }

  it("on the command line: one error line, nothing on stdout, exit 2", async () => {
    const r = await run(process.execPath, [bin, "serve", "--config", writeTemp("c.json", '{"queue": "many"}')])
    expect(r.stderr).toMatch(/^leoam: error \[invalid_config\]: \/.*c\.json: queue: Expected number, actual "many"\n$/)
    expect(r.code).toBe(2)
    expect(r.stdout).toBe("")
  })

  it("refuses a field of another command (users for `leoam actor`)", async () => {
    const r = await run(process.execPath, [bin, "actor", "scheduler", "--nats-url", "nats://127.0.0.1:1", "--config", writeTemp("c.json", '{"users": "/etc/leoam/users.json"}')])
    expect(r.stderr).toContain("users: not an option of `leoam actor`")
    expect(r.code).toBe(2)
  })
})

describe("deploy/install.sh --dry-run", () => {
  it("prints every step with MemoryMax from the config, and changes nothing", async () => {
    const prefix = join(temp(), "opt-leoam")
    const before = ["/etc/leoam", "/etc/systemd/system/leoam.service"].map((p) => existsSync(p))
    const r = await run("bash", [join(root, "deploy/install.sh"), "--dry-run", "--prefix", prefix])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`+ mkdir -p ${prefix}`)
    const userExists = (await run("getent", ["passwd", "leoam"])).code === 0
    if (userExists) expect(r.stderr).toContain("user leoam exists")
    else expect(r.stdout).toContain("+ useradd --system --user-group --home-dir /var/lib/leoam --no-create-home --shell /usr/sbin/nologin leoam")
    expect(r.stdout).toContain("+ install -d -m 0750 -o root -g leoam /etc/leoam")
    expect(r.stdout).toMatch(/\+ write \/etc\/systemd\/system\/leoam\.service \(mode 0644, root:root\)/)
    expect(r.stdout).toContain(`ExecStart=${process.execPath} ${prefix}/bin/leoam.js serve --config /etc/leoam/config.json`)
    expect(r.stdout).toContain("+ systemctl enable leoam.service")
    if (!existsSync("/etc/leoam/config.json")) {
      expect(r.stdout).toContain("+ write /etc/leoam/config.json (mode 0640, root:leoam)")
      // host_kv_budget 256 MiB + the bundled model's two shards + 1 GiB
      const model = join(root, "models/tiny-leo-14m")
      const weights = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"].reduce((s, f) => s + statSync(join(model, f)).size, 0)
      expect(r.stdout).toContain(`MemoryMax=${Math.ceil((256 * 2 ** 20 + weights + 2 ** 30) / 2 ** 20)}M`)
    }
    expect(r.stderr).toContain("dry run: nothing is changed")
    expect(existsSync(prefix)).toBe(false)
    expect(["/etc/leoam", "/etc/systemd/system/leoam.service"].map((p) => existsSync(p))).toEqual(before)
  })

  it("refuses an unknown option with its usage", async () => {
    const r = await run("bash", [join(root, "deploy/install.sh"), "--frobnicate"])
    expect(r.code).toBe(2)
    expect(r.stderr).toContain("usage: deploy/install.sh")
  })
})

describe("structured logs", () => {
  it("classifies the node's lines: component, error code, level", () => {
    expect(classifyLine("leoam gpu-executor: policy v3 refused (bad); staying on v2", "warn")).toEqual({ level: "warn", msg: "policy v3 refused (bad); staying on v2", fields: { component: "gpu-executor" } })
    expect(classifyLine("leoam: error [kv_dir_unavailable]: /x: missing", "warn")).toMatchObject({ level: "error", fields: { code: "kv_dir_unavailable" } })
    expect(classifyLine("leoam: SIGTERM: draining (up to 5 ms)", "warn").level).toBe("info")
  })

  it("prefixes the syslog priority only when stderr is the stream $JOURNAL_STREAM names", async () => {
    const dir = temp()
    const script = join(dir, "log.ts")
    writeFileSync(script, `import { installJsonLog, logFormatOf } from ${JSON.stringify(join(root, "cli/log.ts"))}\nif (logFormatOf(undefined) === "json") installJsonLog()\nprocess.stderr.write("leoam: error [x]: bad\\nleoam gpu-executor: policy v2 refused\\n")\n`)
    const errFile = join(dir, "err.log")
    const once = async (journalStream: (ino: string) => string) => {
      writeFileSync(errFile, "")
      const st = statSync(errFile, { bigint: true })
      const { openSync, closeSync } = await import("node:fs")
      const fd = openSync(errFile, "a")
      const child = spawn(process.execPath, ["--import", "tsx", script], { cwd: root, stdio: ["ignore", "ignore", fd], env: { ...process.env, JOURNAL_STREAM: journalStream(`${st.dev}:${st.ino}`) } })
      await new Promise((resolve) => child.on("exit", resolve))
      closeSync(fd)
      return readFileSync(errFile, "utf8").trim().split("\n")
    }
    const journal = await once((id) => id)
    expect(journal[0]).toMatch(/^<3>\{/)
    expect(JSON.parse(journal[0].slice(3))).toMatchObject({ level: "error", code: "x", msg: "error [x]: bad" })
    expect(journal[1]).toMatch(/^<4>\{.*"component":"gpu-executor"/)
    // Another stream's id (stderr redirected away from the journal): plain text as written.
    expect(await once(() => "1:2")).toEqual(["leoam: error [x]: bad", "leoam gpu-executor: policy v2 refused"])
  })
})

describe("leoam serve as the unit runs it", () => {
  it("prints JSON lines, reports READY=1 then STOPPING=1 through systemd-notify, config under flags", async () => {
    const dir = temp()
    const fakeBin = join(dir, "bin")
    const record = join(dir, "notify.log")
    const { mkdirSync } = await import("node:fs")
    mkdirSync(fakeBin)
    writeFileSync(join(fakeBin, "systemd-notify"), `#!/bin/sh\necho "$NOTIFY_SOCKET $*" >> ${record}\n`)
    chmodSync(join(fakeBin, "systemd-notify"), 0o755)
    const config = join(dir, "config.json")
    writeFileSync(config, JSON.stringify({ kv_dir: "kv", max_context: 512, queue: 3, device: "cpu", drain_timeout: 2000 }))
    const child = spawn(process.execPath, [bin, "serve", "--config", config, "--queue", "5", "--log-format", "json"], {
      env: { ...process.env, PATH: `${fakeBin}:${process.env.PATH}`, NOTIFY_SOCKET: join(dir, "notify.sock"), XDG_CACHE_HOME: join(dir, "cache") },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let stdout = ""
    let stderr = ""
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
    try {
      const ready = await new Promise<{ url: string; msg: string }>((resolve, reject) => {
        child.stdout.on("data", (d: Buffer) => {
          stdout += d.toString()
          const line = stdout.split("\n").find((l) => l.includes("ready on"))
          if (line) resolve(JSON.parse(line))
        })
        exited.then((code) => reject(new Error(`serve exited ${code}: ${stderr}`)))
      })
      expect(ready).toMatchObject({ level: "info", pid: child.pid, url: expect.stringMatching(/^nats:\/\/127\.0\.0\.1:\d+$/) })
      const nc = await connect({ servers: ready.url })
      const health = JSON.parse(new TextDecoder().decode((await nc.request("leoam.v1.health", "", { timeout: 10_000 })).data))
      const models = JSON.parse(new TextDecoder().decode((await nc.request("leoam.v1.models", "", { timeout: 10_000 })).data))
      await nc.close()
      expect(health.queue.capacity).toBe(5) // --queue 5 over the file's 3
      expect(models.models[0].context_length).toBe(512) // from the file
      for (let i = 0; i < 100 && !existsSync(record); i++) await new Promise((r) => setTimeout(r, 50))
      expect(readFileSync(record, "utf8")).toContain(`${join(dir, "notify.sock")} --pid=${child.pid} --ready --status=`)
      child.kill("SIGTERM")
      expect(await exited).toBe(0)
    } finally {
      child.kill("SIGKILL")
    }
    expect(readFileSync(record, "utf8").trim().split("\n")[1]).toBe(`${join(dir, "notify.sock")} --pid=${child.pid} STOPPING=1 --status=draining`)
    expect(existsSync(join(dir, "kv"))).toBe(true) // kv_dir relative to the config file
    // Every line is one JSON object with time, level and msg, but Dawn's own warnings, which
    // its native code writes straight to fd 2.
    const lines = (stdout + stderr).split("\n").filter((l) => l.trim() !== "" && !l.startsWith("Warning: "))
    expect(lines.length).toBeGreaterThanOrEqual(3)
    for (const line of lines) expect(JSON.parse(line)).toMatchObject({ time: expect.any(String), level: expect.any(String), msg: expect.any(String) })
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(expect.arrayContaining(["stopped", "SIGTERM: draining (up to 2000 ms)"]))
  })
})
