// attn_decode's QUANT variant (dequantization fused into the decode attention) against the
// CPU reference: softmax attention over the keys and values that kv/quant.ts dequantizes.
// The pool holds fp16 tail blocks, then quantized slots holding int8 and int4 chunks (one
// with a partial last block); the entries mix both kinds in a shuffled order
// (bench/quant-attn-case.ts, which bench/attn-decode-quant.ts checks on a GPU too). The fold
// form (QFOLD) is not run here: it hangs lavapipe at some shapes (see engine/kv/tiered/select.ts).
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { acquireGpu, releaseGpu } from "../engine/gpu.ts"
import { quantAttnCase } from "../bench/quant-attn-case.ts"
import { expectClose, KernelRig } from "./kernel-rig.ts"

let rig: KernelRig

beforeAll(async () => {
  rig = new KernelRig(await acquireGpu())
})

afterAll(async () => {
  rig?.destroy()
  await releaseGpu()
})

describe("attn_decode QUANT (fused int8/int4 dequantization)", () => {
  it.each([
    [3, 2, 64, 8],
    [1, 1, 32, 4],
  ])("G %i, KV %i, D %i, slots of %i bits: fp16 tail blocks and quantized chunks in one list", async (G, KV, D, slotBits) => {
    const c = quantAttnCase(G, KV, D, slotBits as 8 | 4)
    const H = c.H
    const BS = 16
    const EPS = 256 / BS // one tile per split: several splits over the list
    const S = Math.ceil(c.entries / EPS)
    const partO = rig.output(H * S * D * 4)
    const partML = rig.output(H * S * 8)
    const out = rig.output(H * D * 4)
    await rig.run(
      { op: "attn_decode", flags: { QUANT: true, V16: D % 32 === 0 }, constants: { G, D } },
      { layout: "uuuuufuuuuuu", values: [H, KV, BS, EPS, S, 1 / Math.sqrt(D), 0, 0, c.qbase, c.slotBlocks, c.kSlotWords, c.vSlotWords] },
      { 1: rig.input(c.q), 2: rig.input(c.kpool), 3: rig.input(c.vpool), 4: rig.input(c.list), 5: rig.input(Uint32Array.of(0, c.entries)), 6: partO, 7: partML },
      [S, KV, 1],
    )
    await rig.run({ op: "attn_combine" }, { layout: "uuuu", values: [H, S, D] }, { 1: partO, 2: partML, 3: out }, [H, 1])
    const got = await rig.f32(out, H * D)
    // The same dequantized values (f32 fma on the GPU: one rounding apart) and f32 sums in another order.
    expectClose(got, c.want, { abs: 2e-4, rel: 2e-4 }, "quantized attention")
    const chunkTokens = slotBits === 8 ? 32 + 32 + 20 : 32 + 20
    expect(c.tokens).toBe(16 + 16 + 7 + chunkTokens)
  })
})
