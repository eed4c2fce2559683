// Typed internal RPC: the table covers every internal subject; the token event codec;
// the resolved policy's wire form; the disk-store actor (a real LMDB in a temporary dir)
// served and asked through the table over a real nats-server, with requests its schema
// refuses and a reply the asking side cannot decode; the boundary's error table.
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, relative, resolve } from "node:path"
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import { runActor } from "../actors/actor.ts"
import { diskStoreActor } from "../actors/disk-store.ts"
import { codedError } from "../actors/errors.ts"
import { ask } from "../actors/rpc.ts"
import { diskStoreError } from "../kv/disk-errors.ts"
import { hostCacheError } from "../kv/host-errors.ts"
import { errorStatus, LeoamError } from "../protocol/errors.ts"
import { internalRpc, PolicyChanged } from "../protocol/internal.ts"
import { parsePolicy, PolicyError } from "../protocol/policy.ts"
import { internalSubjects } from "../protocol/subjects.ts"
import { decodeTokenEvent, encodeTokenEvent } from "../protocol/token-event.ts"
import { call, NatsTest } from "./support/nats-layer.ts"

describe("the internal RPC table", () => {
  it("has one entry per internal subject, on that subject", () => {
    expect(Object.keys(internalRpc).sort()).toEqual(Object.keys(internalSubjects).sort())
    for (const [key, rpc] of Object.entries(internalRpc)) expect(rpc.subject).toBe(internalSubjects[key as keyof typeof internalSubjects])
  })

  it("token events are 8 bytes both ways; other lengths are not events", () => {
    const data = encodeTokenEvent(7, 2 ** 31 + 5)
    expect(data.byteLength).toBe(8)
    expect(decodeTokenEvent(data)).toEqual({ index: 7, id: 2 ** 31 + 5 })
    expect(decodeTokenEvent(new Uint8Array(9))).toBeUndefined()
    // A view into a larger buffer decodes from its own offset.
    const big = new Uint8Array(16)
    big.set(data, 4)
    expect(decodeTokenEvent(big.subarray(4, 12))).toEqual({ index: 7, id: 2 ** 31 + 5 })
  })

  it("policy.changed carries the resolved policy: every parameter, through JSON and back", () => {
    const policies = [
      parsePolicy("leoam"),
      parsePolicy({ name: "quest", selection: { topk: { budget_tokens: 128 } }, eviction: "lfu" }),
      parsePolicy({ name: "leoam", chunking: { adaptive: { min_tokens: 16, max_tokens: 128 } }, pipeline: { enabled: true, depth: 3 }, compression: { bits: 8 } }),
      parsePolicy({ name: "leoam", pipeline: { enabled: true, combine: false }, prefetch: { layers: 2, from: "query", steps: true, adaptive: true, probe_steps: 5 } }),
      parsePolicy({ name: "leoam", abstracts: { gpu_resident: "budgeted", group_chunks: 16 } }),
      parsePolicy({ name: "leoam", recompute: { mode: "auto", disk_gb_per_s: 7 } }),
    ]
    for (const resolved of policies) {
      const wire = JSON.parse(JSON.stringify(Schema.encodeSync(PolicyChanged)({ version: 3, resolved })))
      expect(Object.keys(wire.resolved).sort()).toEqual([
        "abstracts_gpu_resident", "budget_fraction", "budget_tokens", "chunk_min_tokens", "chunk_tokens", "compression_bits", "eviction", "group_chunks", "name", "pipeline_combine", "pipeline_depth",
        "prefetch_adaptive", "prefetch_from", "prefetch_layers", "prefetch_probe_steps", "prefetch_steps", "recent_tokens", "recompute_disk_gb_per_s", "recompute_gemm_tflops", "recompute_mode", "sink_tokens",
      ])
      expect(Schema.decodeUnknownSync(PolicyChanged)(wire)).toEqual({ version: 3, resolved })
    }
  })
})

/** Every project file a module imports, directly or not (relative imports), and the packages they name. */
const importGraph = (entry: string) => {
  const files = new Set<string>()
  const packages = new Set<string>()
  const visit = (file: string) => {
    if (files.has(file)) return
    files.add(file)
    for (const m of readFileSync(file, "utf8").matchAll(/(?:^|\n)\s*(?:import|export)\b[^"'`;]*?from\s*["']([^"']+)["']/g)) {
      if (m[0].includes("import type") || m[0].includes("export type")) continue
      if (m[1].startsWith(".")) visit(resolve(dirname(file), m[1]))
      else packages.add(m[1])
    }
  }
  visit(resolve(import.meta.dirname, entry))
  return { files: [...files].map((f) => relative(resolve(import.meta.dirname, ".."), f)), packages: [...packages] }
}

describe("the scheduler's imports", () => {
  it("load neither the engine nor Dawn (the token codec is in protocol/)", () => {
    const { files, packages } = importGraph("../actors/scheduler.ts")
    expect(files.filter((f) => f.startsWith("engine/"))).toEqual([])
    expect(packages).not.toContain("webgpu")
    expect(files).toContain("protocol/token-event.ts")
  })
})

describe("the boundary's error table", () => {
  it("answers conditions with their code and treats bug codes as crashes", () => {
    expect(codedError(diskStoreError("disk_full", "/kv", "ENOSPC"))?.code).toBe("disk_full")
    expect(codedError(diskStoreError("chunk_corrupt", "/kv/seg", "crc"))?.code).toBe("chunk_corrupt")
    expect(codedError(diskStoreError("store_closed", undefined, "closed"))).toBeUndefined()
    expect(codedError(hostCacheError("budget_exceeded", "k", "big"))?.code).toBe("budget_exceeded")
    for (const bug of ["ticket_stale", "entry_busy", "not_pinned", "not_resident", "invalid_size"] as const) {
      expect(codedError(hostCacheError(bug, "k", "bug"))).toBeUndefined()
    }
    expect(codedError(new PolicyError("unknown_policy", "no"))?.code).toBe("unknown_policy")
    // A string code alone is not enough.
    expect(codedError(Object.assign(new Error("x"), { code: "disk_full" }))).toBeUndefined()
    expect(codedError(new RangeError("x"))).toBeUndefined()
    const mapped = codedError(diskStoreError("io_failed", "/kv", "EIO"))
    expect(mapped).toBeInstanceOf(LeoamError)
    expect(errorStatus[mapped!.code]).toBe(500)
  })
})

layer(NatsTest.layer, { excludeTestServices: true })("the disk-store actor through the table", (it) => {
  it.scoped("stores and answers policy versions; refuses what its schemas refuse", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const kvDir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "leoam-rpc-"))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true })),
      )
      yield* Effect.acquireRelease(
        Effect.promise(() => runActor(nc, diskStoreActor({ kvDir }))),
        (a) => Effect.promise(() => a.drain(1000)),
      )
      const none = yield* Effect.exit(ask(nc, "diskPolicyGet", {}))
      expect(Exit.isFailure(none) && JSON.stringify(none.cause)).toContain("unknown_policy")
      const v1 = yield* ask(nc, "diskPolicyPut", { policy: { name: "leoam", eviction: "lfu" }, user: "test", applies: "next_step" })
      expect(v1).toMatchObject({ version: 1, user: "test", policy: { name: "leoam", eviction: "lfu" } })
      yield* ask(nc, "diskPolicyPut", { policy: { name: "full" }, user: "test" })
      expect((yield* ask(nc, "diskPolicyGet", {})).version).toBe(2)
      expect((yield* ask(nc, "diskPolicyHistory", { limit: 1 })).history.map((h) => h.version)).toEqual([2])
      const stats = yield* ask(nc, "diskStats", {})
      expect(stats).toMatchObject({ pid: process.pid, kv_dir: kvDir, chunkCount: 0 })

      // Requests the schemas refuse: an unknown field, a policy that is no document.
      const extra = yield* call(nc, internalSubjects.diskPolicyHistory, { limit: 1, since: 3 })
      expect(extra.error.code).toBe("invalid_request")
      const bad = yield* call(nc, internalSubjects.diskPolicyPut, { policy: { name: "nope" }, user: "x" })
      expect(bad.error.code).toBe("invalid_request")
      expect((yield* ask(nc, "diskPolicyGet", {})).version).toBe(2)
    }),
  )

  it.scoped("a reply that does not match its schema is `internal` on the asking side", () =>
    Effect.gen(function* () {
      const { nc } = yield* NatsTest
      const sub = yield* Effect.acquireRelease(
        Effect.sync(() => nc.subscribe(internalSubjects.executorDescribe, { callback: (_e, m) => void m.respond(new TextEncoder().encode(JSON.stringify({ name: 5 }))) })),
        (s) => Effect.sync(() => s.unsubscribe()),
      )
      expect(sub.getSubject()).toBe(internalSubjects.executorDescribe)
      const exit = yield* Effect.exit(ask(nc, "executorDescribe", {}, 2000))
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("internal")
    }),
  )
})
