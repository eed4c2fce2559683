// The bundled test model (models/tiny-leo-14m) on the process's one GPU (lavapipe in CI), set up
// once for a test file: the device and the tokenizer before its tests, released after them.
// Every model the file loads through `load` shares one upload of the weights and one set of
// compiled pipelines (GpuModel.sibling, with its own KV, activations and context), which on
// lavapipe saves the pipeline compilation and weight upload of each model after the first.
import { afterAll, beforeAll } from "vitest"
import { acquireGpu, type Gpu, releaseGpu } from "../../engine/gpu.ts"
import { type EngineOptions, GpuModel } from "../../engine/model.ts"
import { openHfModel } from "../../models/safetensors.ts"
import { loadTokenizer, type Tokenizer } from "../../models/tokenizer.ts"
import type { ModelConfig } from "../../models/types.ts"

export const modelDir = new URL("../../models/tiny-leo-14m", import.meta.url).pathname

export interface BundledModel {
  readonly gpu: Gpu
  readonly tok: Tokenizer
  readonly config: ModelConfig
  /** A model on the shared weights and pipelines (full attention unless `kv` says otherwise); its `destroy` leaves the weights. */
  load(options: Pick<EngineOptions, "maxContext" | "kv" | "layerMajor" | "decode" | "gemv">): Promise<GpuModel>
}

/** Registers the file's beforeAll / afterAll and returns the fixture (its fields are set once beforeAll ran). */
export const useBundledModel = (): BundledModel => {
  let gpu: Gpu | undefined
  let tok: Tokenizer | undefined
  let lead: GpuModel | undefined
  beforeAll(async () => {
    gpu = await acquireGpu()
    tok = loadTokenizer(modelDir)
    // The smallest context: the lead only owns the weights and pipelines; tests' models are its siblings.
    lead = await GpuModel.load(gpu, openHfModel(modelDir), { maxContext: 16 })
  })
  afterAll(async () => {
    lead?.destroy()
    await releaseGpu()
  })
  const ready = <T,>(v: T | undefined): T => {
    if (v === undefined) throw new Error("the bundled model is set up in beforeAll: use it inside a test or hook")
    return v
  }
  return {
    get gpu() {
      return ready(gpu)
    },
    get tok() {
      return ready(tok)
    },
    get config() {
      return ready(lead).config
    },
    load: (options) => ready(lead).sibling(options),
  }
}
