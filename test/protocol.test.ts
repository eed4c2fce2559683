// The checked-in JSON Schema files are exactly what the Effect Schemas generate
// (run `npm run schemas` after changing protocol/messages.ts), every subject string
// comes from protocol/subjects.ts, and the request bounds that keep replies and parsing safe.
import { readFileSync, readdirSync } from "node:fs"
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { SERVER_MAX_PAYLOAD } from "../actors/nats.ts"
import { EmptyRequest, MAX_TOKENIZE_TEXT, PublishSubject } from "../protocol/messages.ts"
import { renderSchemas } from "../protocol/json-schema.ts"
import { internalSubjects, INTERNAL_PREFIX, PUBLIC_PREFIX, publicSubjects } from "../protocol/subjects.ts"

const dir = new URL("../protocol/schema/", import.meta.url)

describe("protocol", () => {
  it("JSON Schema files are up to date (npm run schemas)", () => {
    const want = renderSchemas()
    expect(readdirSync(dir).filter((f) => f.endsWith(".json")).sort()).toEqual(Object.keys(want).sort())
    for (const [file, text] of Object.entries(want)) expect(readFileSync(new URL(file, dir), "utf8"), file).toBe(text)
  })
  it("public subjects are versioned and internal ones live apart", () => {
    for (const s of Object.values(publicSubjects)) expect(s.startsWith(PUBLIC_PREFIX)).toBe(true)
    for (const s of Object.values(internalSubjects)) expect(s.startsWith(INTERNAL_PREFIX)).toBe(true)
  })
  it("a stream is a NATS subject to publish to: non-empty tokens, no whitespace, no wildcards", () => {
    const ok = Schema.is(PublishSubject)
    for (const s of ["a", "a.b", "_INBOX.x.y", "leoam.v1.stream.abc", "a-b_c$.9"]) expect([s, ok(s)]).toEqual([s, true])
    for (const s of ["", "a..b", ".a", "a.", "a b", "a\tb", "a.*", "a.>", "*", ">", "a\n", "x".repeat(257)]) expect([s, ok(s)]).toEqual([s, false])
  })
  it("models and health take an empty object and nothing else", () => {
    const ok = Schema.is(EmptyRequest)
    expect(ok({})).toBe(true)
    for (const v of [[], 5, "x", null, true, { a: 1 }, [{}]]) expect([v, ok(v)]).toEqual([v, false])
  })
  it("the longest tokenize text has a reply that fits the embedded server's max_payload", () => {
    // At most 3 UTF-8 bytes per UTF-16 unit, one id per byte (byte fallback), 8 bytes per id ("1234567,").
    expect(MAX_TOKENIZE_TEXT * 3 * 8 + 1024).toBeLessThan(SERVER_MAX_PAYLOAD)
  })
})
