// The interface of the prefill attention kernels (attn_prefill.wgsl, attn_prefill_sg.wgsl):
//   q:     (M, H, D) f32 (RoPE applied);  out: (M, H, D) f32
//   kpool, vpool: (blocks, KV, BS, D) f16 packed in u32 pairs;  table: logical -> physical block
// and where a key's K/V words start. The tile load of the kernels that stage K/V through
// workgroup memory is lib/attn_prefill_tile.wgsl. The including kernel declares D.
//
// WINDOW: one pass over keys [k0, min(k1, causal end)) (k1 = 0: no upper bound; k0 a
// multiple of BS; table entries outside the window are never read). Passes over disjoint
// windows, in any order, combine through `state`; flags FIRST starts from the empty
// state, LAST writes `out`, otherwise the pass writes `state`. A row with no key in the
// window leaves its state unchanged. The uniform is 48 bytes here, 32 without WINDOW.
#if WINDOW
struct Params {
  M: u32, H: u32, KV: u32, BS: u32, pos0: u32, scale: f32,
  k0: u32, k1: u32, flags: u32, _p0: u32, _p1: u32, _p2: u32,
}
#else
struct Params { M: u32, H: u32, KV: u32, BS: u32, pos0: u32, scale: f32, _a: u32, _b: u32 }
#endif
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
#if KDIRECT
// The same pools as halves, for kernels that load K and V tiles as matrices (attn_prefill_mx).
@group(0) @binding(2) var<storage, read> kpool: array<f16>;
@group(0) @binding(3) var<storage, read> vpool: array<f16>;
#else
@group(0) @binding(2) var<storage, read> kpool: array<u32>;
@group(0) @binding(3) var<storage, read> vpool: array<u32>;
#endif
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

#if WINDOW
// (M, H, D + 2) f32: per row (query i, head h) at i * H + h, the D unnormalized output
// sums, then the running max of the scaled scores (NEG when no key was seen) and the sum
// of exp(score - max).
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
const FIRST: u32 = 1u;
const LAST: u32 = 2u;

fn state_base(qi: u32, h: u32) -> u32 { return (qi * p.H + h) * (D + 2u); }
fn keys_begin() -> u32 { return p.k0; }
fn keys_end(causal_end: u32) -> u32 { return select(causal_end, min(causal_end, p.k1), p.k1 > 0u); }
#else
fn keys_begin() -> u32 { return 0u; }
fn keys_end(causal_end: u32) -> u32 { return causal_end; }
#endif

// The first u32 word of key `pos`'s K (and V) of KV head kvh in the pools: (D/2) words follow.
fn kv_word(pos: u32, kvh: u32) -> u32 {
  return ((table[pos / p.BS] * p.KV + kvh) * p.BS + pos % p.BS) * (D / 2u);
}
