import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { decodeStream, loadTokenizer } from "../models/tokenizer.ts"
import { modelErrorOf } from "./support/errors.ts"

const tinyDir = fileURLToPath(new URL("../models/tiny-leo-14m/", import.meta.url))
const golden: ReadonlyArray<{ prompt: string; input_ids: number[]; greedy_ids: number[]; greedy_text: string }> = JSON.parse(
  fs.readFileSync(path.join(tinyDir, "golden/hf-transformers-5.17-fp32.json"), "utf8"),
)

describe("Tokenizer on the test model", () => {
  const tok = loadTokenizer(tinyDir)

  it("knows its vocabulary", () => {
    expect(tok.vocabSize).toBe(4096)
    expect(tok.tokenString(0)).toBe("<s>")
    expect(tok.tokenId("</s>")).toBe(1)
  })

  it.each(golden.map((g) => [g.prompt, g] as const))("encodes %j as transformers does", (_, g) => {
    expect(tok.encode(g.prompt)).toEqual(g.input_ids)
    expect(tok.decode(g.input_ids)).toBe(g.prompt)
  })

  it.each(golden.map((g) => [g.prompt, g] as const))("decodes the greedy ids of %j", (_, g) => {
    expect(tok.decode(g.greedy_ids)).toBe(g.greedy_text)
    expect([...decodeStream(tok, g.greedy_ids)].join("")).toBe(g.greedy_text)
  })

  it("adds no BOS by itself, but reads <s> written in the text", () => {
    expect(tok.encode("hello")[0]).not.toBe(0)
    expect(tok.encode("<s>hello")[0]).toBe(0)
    expect(tok.decode(tok.encode("<s>hello"))).toBe("<s>hello")
    expect(tok.decode(tok.encode("<s>hello"), { skipSpecialTokens: true })).toBe("hello")
    expect(tok.decode([])).toBe("")
  })

  it("round-trips text without cleaning up spaces", () => {
    const text = "Hello , world . It 's 12345 ! Don 't"
    expect(tok.decode(tok.encode(text))).toBe(text)
  })

  it("streams multi-byte characters split across tokens without U+FFFD", () => {
    const text = "Café 日本語 — naïve 😀 résumé."
    const ids = tok.encode(text)
    expect(ids.length).toBeGreaterThan([...text].length / 2) // byte-level: characters span tokens
    expect(ids.some((id) => tok.decodeToken(id) === "\uFFFD")).toBe(true)
    const deltas = [...decodeStream(tok, ids)]
    expect(deltas.join("")).toBe(text)
    for (const d of deltas) expect(d).not.toContain("\uFFFD")
  })

  it("continues after a prompt context and flushes an incomplete character", () => {
    const prompt = tok.encode("The pass key is")
    const answer = tok.encode(" 48213.")
    const dec = tok.streamDecoder(prompt)
    expect(answer.map((id) => dec.push(id)).join("") + dec.flush()).toBe(" 48213.")
    const euro = tok.encode("€") // three bytes, several tokens
    const d2 = tok.streamDecoder()
    expect(d2.push(euro[0]!)).toBe("")
    expect(d2.flush()).toBe("\uFFFD")
  })
})

describe("loadTokenizer failures", () => {
  it("reports a missing and a malformed tokenizer.json", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "leoam-tok-"))
    try {
      const missing = modelErrorOf(() => loadTokenizer(dir))
      expect(missing.code).toBe("tokenizer_missing")
      expect(missing.message).toContain(path.join(dir, "tokenizer.json"))
      fs.writeFileSync(path.join(dir, "tokenizer.json"), "{ nope")
      const bad = modelErrorOf(() => loadTokenizer(dir))
      expect(bad.code).toBe("tokenizer_malformed")
      expect(bad.message).toContain(path.join(dir, "tokenizer.json"))
      fs.writeFileSync(path.join(dir, "tokenizer.json"), "{}")
      expect(modelErrorOf(() => loadTokenizer(dir)).code).toBe("tokenizer_malformed")
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
