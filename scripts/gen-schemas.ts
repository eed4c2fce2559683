// Writes protocol/schema/*.json from the Effect Schemas (see protocol/json-schema.ts).
import { mkdirSync, writeFileSync } from "node:fs"
import { renderSchemas } from "../protocol/json-schema.ts"

const dir = new URL("../protocol/schema/", import.meta.url)
mkdirSync(dir, { recursive: true })
for (const [file, text] of Object.entries(renderSchemas())) writeFileSync(new URL(file, dir), text)
console.log(`wrote ${Object.keys(renderSchemas()).length} schemas to protocol/schema/`)
