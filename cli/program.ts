// The `leoam` command line: parses arguments (commander), runs the subcommand, and turns
// any failure into `leoam: error [code]: message` on stderr with a stable exit status
// (runCli; cli/main.ts is the process's entry around it).
import { Command, InvalidArgumentError, Option } from "commander"
import { readFileSync } from "node:fs"
import { ModelError } from "../models/errors.ts"
import { CliError, exitCodeOf } from "./errors.ts"
import { kvPolicyHelp } from "./kv.ts"
import { type AdminConnection, adminPolicyGet, adminPolicyHistory, adminPolicyList, adminPolicySet, runStats } from "./admin.ts"
import { policyNames } from "../protocol/policy.ts"
import { NODE_ID } from "../protocol/subjects.ts"
import { defaultNatsUrl } from "./local.ts"
import { bundledModelDir, runGenerate } from "./generate.ts"
import { type ClientAuth, passwordOf } from "./connect.ts"
import { runRequest } from "./request.ts"
import { parseActorName, runHttpGateway, runServe } from "./serve.ts"
import { applyServeConfig } from "./config.ts"
import { installJsonLog, logFormatOf } from "./log.ts"
import { parseSize } from "./sizes.ts"

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }

const integer = (name: string, min: number, max = Number.MAX_SAFE_INTEGER) => (value: string) => {
  if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError(`${name} must be an integer`)
  const n = Number(value)
  if (n < min || n > max) throw new InvalidArgumentError(`${name} must be between ${min} and ${max}`)
  return n
}
const real = (name: string, min: number, max: number, minExclusive = false) => (value: string) => {
  const n = Number(value)
  if (value.trim() === "" || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number`)
  if (n > max || n < min || (minExclusive && n === min)) throw new InvalidArgumentError(`${name} must be in ${minExclusive ? "(" : "["}${min}, ${max}]`)
  return n
}

/** The `leoam` command line, a fresh one per parse (commander keeps the values it parsed). */
export const leoamProgram = (): Command => {
  const program = new Command()
    .name("leoam")
    .description("Long-context LLM inference on one GPU with a three-tier (GPU, host, disk) KV cache.")
    .version(pkg.version)
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput({ outputError: (text, write) => write(`leoam: error [invalid_argument]: ${text.replace(/^error: /, "")}`) })
    .exitOverride()

  const size = (name: string) => (value: string) => {
    try {
      return parseSize(value)
    } catch (e) {
      throw new InvalidArgumentError(`${name}: ${(e as Error).message}`)
    }
  }

  program
    .command("generate")
    .description("Generate a continuation of one prompt on the GPU (or lavapipe on the CPU).")
    .option("--model <dir>", "Hugging Face model directory (Llama family), or dummy:PRESET for random weights (llama-3.1-8b, llama-2-7b, longchat-7b-32k, llama-3.2-1b, mistral-7b, qwen2-0.5b, tiny)", bundledModelDir)
    .option("--prompt <text>", "prompt text (tokenized as is; the tokenizer adds no <s> by itself, write it in the text if the model wants it)")
    .option("--ids <ids>", "prompt as token ids, comma or space separated: 1,2,3")
    .option("--ids-file <file>", "prompt as token ids read from a file, comma or whitespace separated")
    .option("--max-tokens <n>", "most tokens to generate (capped by the context)", integer("--max-tokens", 1, 1 << 20), 64)
    .option("--temperature <t>", "0 = greedy; > 0 samples from softmax(logits / t)", real("--temperature", 0, 100), 0)
    .option("--top-p <p>", "nucleus sampling: keep the smallest set of tokens with probability >= p", real("--top-p", 0, 1, true), 1)
    .option("--top-k <k>", "sample only among the k most likely tokens (0 = no limit)", integer("--top-k", 0), 0)
    .option("--seed <s>", "random seed: the same seed and inputs give the same tokens", integer("--seed", 0, 2 ** 32 - 1), 0)
    .option("--max-context <n>", "context window to allocate (default: the model's max_position_embeddings)", integer("--max-context", 2))
    .addOption(new Option("--device <kind>", "gpu: a hardware GPU only; cpu: lavapipe; auto: a GPU if there is one").choices(["auto", "gpu", "cpu"]).default("auto"))
    .option("--kv-policy <name|file>", kvPolicyHelp, "full")
    .option("--gpu-kv-budget <size>", "GPU memory for KV (pools and staging): bytes or KiB/MiB/GiB (default: no limit)", size("--gpu-kv-budget"))
    .option("--host-kv-budget <size>", "host-memory KV arena (tiered policies): bytes or KiB/MiB/GiB", size("--host-kv-budget"), 256 * 1024 * 1024)
    .option("--kv-dir <dir>", "the disk tier (tiered policies): LMDB index and chunk files (default: $XDG_CACHE_HOME/leoam/kv)")
    .option("--json", "print one JSON object: ids, text, finish_reason, usage, timings {load_ms, prefill_ms, decode_ms_per_token, total_ms}, kv (tiered policies: bytes and hits per tier)")
    .addHelpText(
      "after",
      `
  Exit status: 0 on success, 2 for bad input (unknown model, bad ids, prompt longer than the
  context, malformed model files), 1 for other failures (no GPU adapter, numerical failure).
  Errors are printed as "leoam: error [code]: message".`,
    )
    .action(async (o) => {
      await runGenerate({
        model: o.model,
        prompt: o.prompt,
        ids: o.ids,
        idsFile: o.idsFile,
        maxTokens: o.maxTokens,
        temperature: o.temperature,
        topP: o.topP,
        topK: o.topK,
        seed: o.seed,
        maxContext: o.maxContext,
        device: o.device,
        json: !!o.json,
        kvPolicy: o.kvPolicy,
        gpuKvBudget: o.gpuKvBudget,
        hostKvBudget: o.hostKvBudget,
        kvDir: o.kvDir,
      })
    })


  const nodeId = (value: string) => {
    if (!NODE_ID.test(value)) throw new InvalidArgumentError("--node: letters, digits, - and _ only (one NATS subject token), at most 64")
    return value
  }

  /** Options shared by `serve` and `actor`. */
  const nodeOptions = (cmd: Command, embedded: boolean) => {
    cmd
      .option("--model <dir>", "Hugging Face model directory (the scheduler needs its tokenizer); dummy:PRESET for a gpu-executor alone", bundledModelDir)
      .option("--nats-url <url>", embedded ? "use this NATS server instead of starting an embedded one" : "the NATS server the other actors use (required)")
      .option("--nats-user <user>", "NATS user name")
      .option("--nats-pass <password>", "NATS password (visible to other local users in `ps`: prefer --nats-pass-file or $LEOAM_NATS_PASS)")
      .option("--nats-pass-file <file>", "file whose first line is the NATS password (default: $LEOAM_NATS_PASS)")
      .option("--nats-creds <file>", "NATS credentials file (JWT and nkey seed) for --nats-url")
      .option("--nats-nkey <file>", "file holding a NATS user nkey seed (SU...) for --nats-url")
      .option("--metrics-port <port>", "serve the admin stats as Prometheus text on http://127.0.0.1:PORT/metrics (0: a free port)", integer("--metrics-port", 0, 65535))
      .option("--max-context <n>", "context window to allocate (default: the model's max_position_embeddings)", integer("--max-context", 2))
      .addOption(new Option("--device <kind>", "gpu, cpu (lavapipe) or auto").choices(["auto", "gpu", "cpu"]).default("auto"))
      .option("--queue <n>", "generate requests admitted (queued or running) before new ones get `busy`", integer("--queue", 1, 1 << 16), 64)
      .option("--max-batch <n>", "generate requests decoding together (continuous batching, in turns across NATS users); 1: one at a time", integer("--max-batch", 1, 256), 4)
      .option("--kv-dir <dir>", "the disk tier: LMDB index and chunk files (default: $XDG_CACHE_HOME/leoam/kv)")
      .option("--host-kv-budget <size>", "host-memory KV arena: bytes or KiB/MiB/GiB", size("--host-kv-budget"), 256 * 1024 * 1024)
      .option("--kv-policy <name|file>", kvPolicyHelp, "full")
      .option("--gpu-kv-budget <size>", "GPU memory for KV (pools and staging): bytes or KiB/MiB/GiB (default: no limit)", size("--gpu-kv-budget"))
      .option("--drain-timeout <ms>", "on SIGTERM, how long in-flight requests may take to finish", integer("--drain-timeout", 0), 30_000)
      .option("--kv-disk-budget <size>", "disk bytes the sessions' KV chunks may take (leoam.v1.session.*): past it the least recently used sessions are deleted, never one in use (default: no limit)", size("--kv-disk-budget"))
      .option("--session-quota <n>", "sessions one NATS user may hold over all nodes (with --users: each user; without: everyone together) (default: no limit)", integer("--session-quota", 0))
      .option("--node <id>", "this node's id on a NATS shared with other nodes (letters, digits, - and _): its internal subjects are leoam.int.v1.node.<id>.*; `serve --nats-url` picks one when absent, `actor` joins the node of that id (default: the single node, leoam.int.v1.*)", nodeId)
      .option("--config <file>", "a JSON file of these options in snake_case (kv_dir, host_kv_budget, ...; schema: protocol/schema/ServeConfig.json); flags given here override it")
      .addOption(new Option("--log-format <format>", "text, or json: one JSON object per line on stderr and stdout (default: json when stderr is the systemd journal, else text)").choices(["text", "json"]))
      .option("--http-port <port>", `the OpenAI-compatible HTTP API (POST /v1/completions, /v1/chat/completions, GET /v1/models) on this port (0: a free one)${embedded ? "" : "; `actor http-gateway` only (default 8000)"}`, integer("--http-port", 0, 65535))
      .option("--http-host <host>", "the address the HTTP API listens on (default 127.0.0.1, loopback only; 0.0.0.0 for every interface)")
      .option("--chat-template <file>", "a Jinja chat template for /v1/chat/completions instead of the model's (tokenizer_config.json chat_template; ChatML when the model has none)")
    if (!embedded) {
      cmd.option("--users <file>", "`actor http-gateway` only: the node's users file; each HTTP request then needs `Authorization: Bearer USER:PASSWORD` and runs as that NATS user")
      cmd.option("--inbox-prefix <prefix>", "`actor http-gateway` only: where its replies come (default: _INBOX_<user> with --nats-user, else _INBOX)")
    }
    if (embedded) {
      cmd.option("--nats-port <port>", "port of the embedded nats-server on 127.0.0.1 (default: a free one)", integer("--nats-port", 1, 65535))
      cmd.option(
        "--users <file>",
        'access control for the embedded nats-server: JSON {"users": [{"user", "password", "role": "client" | "admin"} | {"nkey", "role"}]}; clients may use leoam.v1.* but not leoam.v1.admin.* nor internal subjects, admins everything (default: no access control)',
      )
    }
    return cmd
  }

  /** The options after `--config` (flags win) with the log format in effect installed. */
  const configured = (cmd: Command): Record<string, any> => {
    // JSON from the start when asked or under the journal, so that a bad config file is logged as JSON too.
    if (logFormatOf(cmd.getOptionValue("logFormat")) === "json") installJsonLog()
    applyServeConfig(cmd)
    const o = cmd.opts()
    if (logFormatOf(o.logFormat) === "json") installJsonLog()
    return o
  }

  const serveArgs = (o: Record<string, any>, actors: ReturnType<typeof parseActorName>[], cmd: Command) => ({
    actors,
    node: o.node,
    model: o.model,
    natsUrl: o.natsUrl,
    natsPort: o.natsPort,
    natsUser: o.natsUser,
    natsPass: passwordOf(o),
    natsCreds: o.natsCreds,
    natsNkey: o.natsNkey,
    users: o.users,
    metricsPort: o.metricsPort,
    kvPolicyExplicit: ["cli", "config"].includes(cmd.getOptionValueSource("kvPolicy") ?? ""),
    maxContext: o.maxContext,
    device: o.device,
    queue: o.queue,
    maxBatch: o.maxBatch,
    kvDir: o.kvDir,
    hostKvBudget: o.hostKvBudget,
    kvPolicy: o.kvPolicy,
    gpuKvBudget: o.gpuKvBudget,
    kvDiskBudget: o.kvDiskBudget,
    sessionQuota: o.sessionQuota,
    drainTimeoutMs: o.drainTimeout,
    httpPort: o.httpPort,
    httpHost: o.httpHost,
    chatTemplate: o.chatTemplate,
  })

  nodeOptions(
    program.command("serve").description("Run all four actors (scheduler, gpu-executor, host-cache, disk-store) and the public NATS service leoam.v1.*; starts an embedded nats-server on 127.0.0.1 unless --nats-url is given."),
    true,
  ).action(async (_o, cmd) => runServe(serveArgs(configured(cmd), ["gpu-executor", "disk-store", "host-cache", "scheduler"], cmd)))

  nodeOptions(
    program
      .command("actor")
      .argument("<name>", "scheduler | gpu-executor | disk-store (host-cache runs with gpu-executor) | http-gateway (the OpenAI-compatible HTTP API in front of the node's NATS subjects)")
      .description(
        "Run one actor alone against an existing NATS server (the others run elsewhere on the same bus). The host arena lives in the gpu-executor's process, so `actor gpu-executor` runs the host-cache actor beside it and `actor host-cache` alone is refused.",
      ),
    false,
  ).action(async (name, _o, cmd) => {
    const o = configured(cmd)
    if (!o.natsUrl) throw new CliError("invalid_argument", "`leoam actor` needs --nats-url (the bus the other actors are on)")
    if (name === "http-gateway") return runHttpGateway({ ...serveArgs(o, [], cmd), natsUrl: o.natsUrl, inboxPrefix: o.inboxPrefix })
    for (const flag of ["httpPort", "httpHost", "chatTemplate", "users", "inboxPrefix"]) {
      if (o[flag] === undefined) continue
      if (cmd.getOptionValueSource(flag) === "config") {
        throw new CliError("invalid_config", `${o.config}: ${flag.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}: not an option of \`leoam actor\` (only of \`leoam actor http-gateway\`)`)
      }
      throw new CliError("invalid_argument", `--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is an option of \`leoam actor http-gateway\` (or \`leoam serve\`), not of \`leoam actor ${name}\``)
    }
    const actor = parseActorName(name)
    await runServe(serveArgs(o, actor === "gpu-executor" ? ["gpu-executor", "host-cache"] : [actor], cmd))
  })

  /** The client commands' NATS credentials and inbox prefix from their flags and the environment. */
  const clientAuth = (o: Record<string, any>): ClientAuth => ({
    user: o.natsUser,
    pass: passwordOf(o),
    credsFile: o.natsCreds,
    nkeySeedFile: o.natsNkey,
    inboxPrefix: o.inboxPrefix,
  })

  /** Connection options of the admin and stats commands. */
  const adminConnection = (cmd: Command) =>
    cmd
      .option("--nats-url <url>", "the NATS server of the leoam node (default: $LEOAM_NATS_URL, else the running `leoam serve` of this user, else nats://127.0.0.1:4222)")
      .option("--nats-user <user>", "NATS user name (an admin user where access control is on)")
      .option("--nats-pass <password>", "NATS password (visible to other local users in `ps`: prefer --nats-pass-file or $LEOAM_NATS_PASS)")
      .option("--nats-pass-file <file>", "file whose first line is the NATS password (default: $LEOAM_NATS_PASS)")
      .option("--nats-creds <file>", "NATS credentials file (JWT and nkey seed)")
      .option("--nats-nkey <file>", "file holding a NATS user nkey seed (SU...)")
      .option("--inbox-prefix <prefix>", "where replies come (default: _INBOX_<user> for a named user, the only inbox a client user may use under `serve --users`; else _INBOX)")
      .option("--timeout <ms>", "how long to wait for a reply", integer("--timeout", 1), 30_000)
      .option("--json", "print the reply as JSON")
  const connectionOf = (o: Record<string, any>): AdminConnection => ({
    natsUrl: o.natsUrl ?? defaultNatsUrl(),
    auth: clientAuth(o),
    timeoutMs: o.timeout,
  })

  const admin = program.command("admin").description("Administer a running leoam node over leoam.v1.admin.* (an admin NATS user where access control is on).")
  const policy = admin.command("policy").description("The live KV policy: every actor switches at its next step boundary; requests in flight go on.")
  adminConnection(
    policy
      .command("set")
      .argument("<policy>", `a policy name (${policyNames.join(", ")}) or a JSON policy file`)
      .option("--reason <text>", "why, for the history")
      .description("Validate, version, store (LMDB) and apply a KV policy; an invalid one is refused with the reason and changes nothing."),
  ).action(async (spec, o) => adminPolicySet(connectionOf(o), spec, { reason: o.reason, json: !!o.json }))
  adminConnection(policy.command("get").description("The active KV policy: version, who set it and when, its parameters.")).action(async (o) =>
    adminPolicyGet(connectionOf(o), { json: !!o.json }),
  )
  adminConnection(
    policy
      .command("history")
      .option("--limit <n>", "the most recent changes only", integer("--limit", 1, 100_000))
      .description("Every policy change: version, time, NATS user, the policy."),
  ).action(async (o) => adminPolicyHistory(connectionOf(o), { limit: o.limit, json: !!o.json }))
  adminConnection(policy.command("list").description("The registered policies, their defaults and the policy document's JSON Schema (--json).")).action(async (o) =>
    adminPolicyList(connectionOf(o), { json: !!o.json }),
  )

  adminConnection(
    program
      .command("stats")
      .option("--watch", "redraw every --interval seconds until Ctrl-C")
      .option("--interval <s>", "seconds between updates with --watch", real("--interval", 0.1, 3600), 1)
      .description("Tier residency and budgets, bytes moved, hit rates, decode time by phase, queue depth and policy version (leoam.v1.admin.stats)."),
  ).action(async (o) => runStats(connectionOf(o), { watch: !!o.watch, intervalMs: o.interval * 1000, json: !!o.json }))

  program
    .command("request")
    .argument("<subject>", "e.g. leoam.v1.generate, leoam.v1.health")
    .argument("[json]", "the request body", "")
    .description("Send one request to a leoam service and print the reply (exit 1 on an error reply).")
    .option("--nats-url <url>", "the NATS server (default: $LEOAM_NATS_URL, else the running `leoam serve` of this user, else nats://127.0.0.1:4222)")
    .option("--nats-user <user>", "NATS user name")
    .option("--nats-pass <password>", "NATS password (visible to other local users in `ps`: prefer --nats-pass-file or $LEOAM_NATS_PASS)")
      .option("--nats-pass-file <file>", "file whose first line is the NATS password (default: $LEOAM_NATS_PASS)")
    .option("--nats-creds <file>", "NATS credentials file (JWT and nkey seed)")
    .option("--nats-nkey <file>", "file holding a NATS user nkey seed (SU...)")
    .option("--inbox-prefix <prefix>", "where replies come (default: _INBOX_<user> for a named user, the only inbox a client user may use under `serve --users`; else _INBOX)")
    .option("--stream", "for leoam.v1.generate: set `stream` to a fresh subject under this user's inbox prefix and print each token event as a JSON line before the reply")
    .option("--timeout <ms>", "how long to wait for the reply", integer("--timeout", 1), 600_000)
    .action(async (subject, json, o) =>
      runRequest({ subject, body: json, natsUrl: o.natsUrl ?? defaultNatsUrl(), auth: clientAuth(o), timeoutMs: o.timeout, stream: !!o.stream }),
    )
  return program
}

/** Writes a failure as `leoam: error [code]: message` and gives its exit status. */
const fail = (code: string, message: string): number => {
  process.stderr.write(`leoam: error [${code}]: ${message}\n`)
  return exitCodeOf(code)
}

/**
 * Runs the command line `argv` (node, script, then the arguments) and gives the exit status:
 * 0 on success, 2 for bad input, 1 otherwise; every failure is one line on stderr. In-process,
 * so tests of argument handling need no process; cli/main.ts exits with it.
 */
export const runCli = async (argv: ReadonlyArray<string>): Promise<number> => {
  try {
    await leoamProgram().parseAsync([...argv])
    return 0
  } catch (e) {
    const err = e as { code?: string; message?: string; exitCode?: number }
    if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.code === "commander.help") return 0
    if (typeof err.code === "string" && err.code.startsWith("commander.")) return 2 // already printed
    if (e instanceof CliError || e instanceof ModelError) return fail(e.code, e.message)
    if (typeof err.code === "string") return fail(err.code, err.message ?? String(e))
    return fail("internal", (e as Error)?.stack ?? String(e))
  }
}
