// Chunk abstracts (LKA, Quest-style): per chunk and KV head, the channel-wise min and max of
// its keys (post-RoPE), from which an upper bound of q·k over the chunk follows for any q.
// Stored as f16 rounded outward (min toward -inf, max toward +inf), so the bound stays a bound.
//   kpool: (blocks, KV, BS, D) f16 packed in u32 pairs
//   jobs:  (n) vec4<u32> (first physical block, tokens, abstract slot, 0): a chunk of several
//          blocks lies in consecutive physical blocks, modulo `wrap` when it is not 0 (a ring)
//   amin, amax: (slots, KV, D/2) f16 packed in u32 pairs
// Workgroup (job, kv head); thread j covers the element pair (2j, 2j+1).
struct Params { KV: u32, BS: u32, D: u32, wrap: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> kpool: array<u32>;
@group(0) @binding(2) var<storage, read> jobs: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> amin: array<u32>;
@group(0) @binding(4) var<storage, read_write> amax: array<u32>;

override WG: u32 = 64;

// The f16 nearest to v on the side of `up` (toward +inf when up, else toward -inf).
fn outward(v: f32, up: bool) -> f32 {
  let h = unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
  if ((up && h >= v) || (!up && h <= v)) { return h; }
  // One f16 ulp further out: step the 16-bit pattern away from (or toward) zero.
  var bits = pack2x16float(vec2<f32>(h, 0.0)) & 0xffffu;
  let negative = (bits & 0x8000u) != 0u;
  if (h == 0.0) { bits = select(0x8001u, 0x0001u, up); }
  else if (up != negative) { bits = bits + 1u; } else { bits = bits - 1u; }
  return unpack2x16float(bits).x;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let job = jobs[wid.x];
  let kvh = wid.y;
  let half_d = p.D / 2u;
  for (var j = lid; j < half_d; j = j + WG) {
    var lo = vec2<f32>(3.0e38);
    var hi = vec2<f32>(-3.0e38);
    for (var t = 0u; t < job.y; t = t + 1u) {
      var b = job.x + t / p.BS;
      if (p.wrap > 0u) { b = b % p.wrap; }
      let k = unpack2x16float(kpool[((b * p.KV + kvh) * p.BS + t % p.BS) * half_d + j]);
      lo = min(lo, k);
      hi = max(hi, k);
    }
    let o = (job.z * p.KV + kvh) * half_d + j;
    amin[o] = pack2x16float(vec2<f32>(outward(lo.x, false), outward(lo.y, false)));
    amax[o] = pack2x16float(vec2<f32>(outward(hi.x, true), outward(hi.y, true)));
  }
}
