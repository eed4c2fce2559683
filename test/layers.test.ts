// The folders form layers that import only downwards (STYLE 10):
//   protocol, models, kernels  (the bottom: no project imports but each other's types as listed)
//   kv                          (tier libraries: no GPU, no NATS)
//   engine                      (the GPU forward pass and the KV managers)
//   actors                      (NATS and the actor runtime)
//   cli
// bench/, scripts/ and test/ may import anything. A test keeps it so, and keeps
// every source file outside tests and generated schemas under 500 lines.
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"

const root = path.resolve(import.meta.dirname, "..")

/** Which project folders each folder may import from (besides itself). */
const allowed: Record<string, ReadonlyArray<string>> = {
  protocol: [],
  models: [],
  kernels: [],
  kv: ["protocol"],
  engine: ["kernels", "kv", "models", "protocol"],
  actors: ["engine", "kv", "models", "protocol"],
  cli: ["actors", "engine", "kv", "models", "protocol"],
}

/** Packages that must stay out of a folder (kv/ is a leaf without GPU or NATS). */
const forbiddenPackages: Record<string, ReadonlyArray<RegExp>> = {
  kv: [/^webgpu$/, /^@nats-io\//],
  engine: [/^@nats-io\//],
  protocol: [/^webgpu$/, /^lmdb$/],
}

const sourceFiles = (dir: string): string[] =>
  fs.readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = path.join(dir, e.name)
    if (e.isDirectory()) return sourceFiles(rel)
    return /\.(ts|js)$/.test(e.name) ? [rel] : []
  })

const importsOf = (file: string): string[] => {
  const text = fs.readFileSync(path.join(root, file), "utf8")
  const specs: string[] = []
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^"'`;]*?from\s*["']([^"']+)["']/g)) specs.push(m[1])
  for (const m of text.matchAll(/\bimport\s*\(\s*["']([^"']+)["']\s*\)/g)) specs.push(m[1])
  for (const m of text.matchAll(/(?:^|\n)\s*import\s*["']([^"']+)["']/g)) specs.push(m[1])
  return specs
}

const folderOf = (file: string) => file.split(path.sep)[0]

describe("layers", () => {
  for (const folder of Object.keys(allowed)) {
    it(`${folder}/ imports only ${allowed[folder].join(", ") || "itself"}`, () => {
      const violations: string[] = []
      for (const file of sourceFiles(folder)) {
        for (const spec of importsOf(file)) {
          if (spec.startsWith(".")) {
            const target = path.normalize(path.join(path.dirname(file), spec))
            const to = folderOf(target)
            if (to !== folder && !allowed[folder].includes(to)) violations.push(`${file} -> ${target}`)
          } else if ((forbiddenPackages[folder] ?? []).some((re) => re.test(spec))) {
            violations.push(`${file} -> package ${spec}`)
          }
        }
      }
      expect(violations).toEqual([])
    })
  }

  it("no source file over 500 lines outside tests and generated schemas", () => {
    const long: string[] = []
    for (const folder of [...Object.keys(allowed), "bench", "scripts"]) {
      for (const file of sourceFiles(folder)) {
        if (file.startsWith(path.join("protocol", "schema"))) continue
        const lines = fs.readFileSync(path.join(root, file), "utf8").split("\n").length
        if (lines > 500) long.push(`${file}: ${lines}`)
      }
    }
    expect(long).toEqual([])
  })
})
