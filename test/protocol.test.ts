// The checked-in JSON Schema files are exactly what the Effect Schemas generate
// (run `npm run schemas` after changing protocol/messages.ts), and every subject string
// comes from protocol/subjects.ts.
import { readFileSync, readdirSync } from "node:fs"
import { describe, expect, it } from "vitest"
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
})
