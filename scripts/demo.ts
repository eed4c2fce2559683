// The demo: a pass key hidden in the middle of ~2K tokens of filler, asked for at the end,
// answered by the bundled model through `leoam generate`'s engine path.
import { passKey, passKeyPrompt } from "../bench/passkey.ts"
import { bundledModelDir } from "../cli/generate.ts"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { generate } from "../engine/generate.ts"
import { GpuModel } from "../engine/model.ts"
import { openHfModel } from "../models/safetensors.ts"
import { loadTokenizer } from "../models/tokenizer.ts"

const tokens = Number(process.argv[2] ?? 2048)
const tok = loadTokenizer(bundledModelDir)
const prompt = passKeyPrompt(tok, tokens, passKey(Date.now() % 1000), 0.5)
const gpu = await acquireGpu()
const model = await GpuModel.load(gpu, openHfModel(bundledModelDir), { maxContext: prompt.ids.length + 16 })
console.log(`device: ${gpu.adapterName}`)
console.log(`prompt: ${prompt.ids.length} tokens, pass key ${prompt.key} at depth 50%`)
console.log(`query:  ...${tok.decode(prompt.ids.slice(-24))}`)
const r = await generate(model, prompt.ids, { maxTokens: 8, temperature: 0, stopIds: model.config.eosTokenIds })
const answer = tok.decode(r.ids)
console.log(`answer: ${JSON.stringify(answer)}  ${answer.trim().startsWith(prompt.key) ? "(correct)" : "(WRONG)"}`)
console.log(`prefill ${r.timings.prefillMs.toFixed(0)} ms, decode ${r.timings.decodeMsPerToken.toFixed(1)} ms/token`)
model.destroy()
await releaseGpu()
