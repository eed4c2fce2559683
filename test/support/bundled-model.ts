// The bundled test model (models/tiny-leo-14m) on the process's one GPU (lavapipe in CI), set up
// once for a test file: the device and the tokenizer before its tests, released after them.
// Each model `load` gives is loaded afresh (GpuModel.load): siblings of one lead model (shared
// weights and pipelines) made tiered-compression's cases slower on lavapipe, 67-78 s against
// 43-58 s, not faster.
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
  /** The bundled model with these options (full attention unless `kv` says otherwise). */
  load(options: EngineOptions): Promise<GpuModel>
}

/** Registers the file's beforeAll / afterAll and returns the fixture (its fields are set once beforeAll ran). */
export const useBundledModel = (): BundledModel => {
  let gpu: Gpu | undefined
  let tok: Tokenizer | undefined
  let config: ModelConfig | undefined
  beforeAll(async () => {
    gpu = await acquireGpu()
    tok = loadTokenizer(modelDir)
    const source = openHfModel(modelDir)
    config = source.config
    source.close()
  })
  afterAll(async () => {
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
      return ready(config)
    },
    load: (options) => GpuModel.load(ready(gpu), openHfModel(modelDir), options),
  }
}
