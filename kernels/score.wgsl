// Chunk scores from abstracts (Quest): for each listed chunk and KV head, the largest over
// the G query heads of that group of sum_d max(q_d * min_d, q_d * max_d) * scale, an upper
// bound of the chunk's attention logits.
//   q:      (H, D) f32, RoPE applied (one query token)
//   amin, amax: (slots, KV, D/2) f16 packed in u32 pairs
//   chunks: (n) u32 abstract slots;  scores: (n, KV) f32
// One thread per (chunk, kv head).
struct Params { n: u32, KV: u32, D: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> amin: array<u32>;
@group(0) @binding(3) var<storage, read> amax: array<u32>;
@group(0) @binding(4) var<storage, read> chunks: array<u32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;

override WG: u32 = 64;
override G: u32 = 1;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= p.n * p.KV) { return; }
  let c = i / p.KV;
  let kvh = i % p.KV;
  let half_d = p.D / 2u;
  let base = (chunks[c] * p.KV + kvh) * half_d;
  var best = -3.0e38;
  for (var g = 0u; g < G; g = g + 1u) {
    let qb = (kvh * G + g) * p.D;
    var s = 0.0;
    for (var j = 0u; j < half_d; j = j + 1u) {
      let lo = unpack2x16float(amin[base + j]);
      let hi = unpack2x16float(amax[base + j]);
      let qv = vec2<f32>(q[qb + 2u * j], q[qb + 2u * j + 1u]);
      let m = max(qv * lo, qv * hi);
      s = s + m.x + m.y;
    }
    best = max(best, s);
  }
  scores[i] = best * p.scale;
}
