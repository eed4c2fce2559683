// After the fused QKV projection: rotates q and k (RoPE, Hugging Face rotate_half layout:
// element i pairs with i +- D/2) and appends k and v to the paged KV pool.
//   qkv:  (M, (H + 2*KV) * D) f32: q heads, then k heads, then v heads
//   rope: (M, D/2) vec2 (cos, sin) of position(m) * inv_freq[i], computed on the host
//   slot: (M) u32 physical token slot = block * BS + offset in block
//   q:    (M, H * D) f32 rotated queries
//   kpool, vpool: (blocks, KV, BS, D) f16 packed in u32 pairs
// One thread per (row, head of the H + 2*KV, element pair).
struct Params { M: u32, H: u32, KV: u32, D: u32, BS: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> slot: array<u32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> kpool: array<u32>;
@group(0) @binding(6) var<storage, read_write> vpool: array<u32>;

override WG: u32 = 64;

fn rotated(base: u32, i: u32, m: u32) -> f32 {
  let half_d = p.D / 2u;
  if (i < half_d) {
    let cs = rope[m * half_d + i];
    return qkv[base + i] * cs.x - qkv[base + i + half_d] * cs.y;
  }
  let cs = rope[m * half_d + i - half_d];
  return qkv[base + i] * cs.x + qkv[base + i - half_d] * cs.y;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let half_d = p.D / 2u;
  let heads = p.H + 2u * p.KV;
  let m = gid.y;
  let t = gid.x;
  if (m >= p.M || t >= heads * half_d) { return; }
  let head = t / half_d;
  let j = t % half_d;
  let base = (m * heads + head) * p.D;
  if (head < p.H) {
    let o = (m * p.H + head) * p.D + 2u * j;
    q[o] = rotated(base, 2u * j, m);
    q[o + 1u] = rotated(base, 2u * j + 1u, m);
    return;
  }
  let s = slot[m];
  let kvh = (head - p.H) % p.KV;
  let dst = (((s / p.BS) * p.KV + kvh) * p.BS + s % p.BS) * half_d + j;
  if (head < p.H + p.KV) {
    kpool[dst] = pack2x16float(vec2<f32>(rotated(base, 2u * j, m), rotated(base, 2u * j + 1u, m)));
  } else {
    vpool[dst] = pack2x16float(vec2<f32>(qkv[base + 2u * j], qkv[base + 2u * j + 1u]));
  }
}
