// Chunk scores from abstracts (Quest): for each listed chunk and KV head, the largest over
// the G query heads of that group of sum_d max(q_d * min_d, q_d * max_d) * scale, an upper
// bound of the chunk's attention logits.
//   q:      (H, D) f32, RoPE applied (one query token)
//   amin, amax: (slots, KV, D/2) f16 packed in u32 pairs
//   chunks: (n) u32 abstract slots;  scores: (n, KV) f32
// Workgroup (chunk, kv head), thread j the element pair (2j, 2j+1): one load of each
// abstract per thread, then a tree sum per query head (the step is latency-bound otherwise).
// With ALL_HEADS (the tiered cache moves whole chunks, all heads together): workgroup
// (chunk) scores every KV head in turn and writes the largest bound, scores: (n) f32.
struct Params { n: u32, KV: u32, D: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> amin: array<u32>;
@group(0) @binding(3) var<storage, read> amax: array<u32>;
@group(0) @binding(4) var<storage, read> chunks: array<u32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;

override G: u32 = 1;      // query heads per KV head, at most 8
override HALF_D: u32 = 64; // D / 2: the workgroup size
const MAX_G: u32 = 8u;

var<workgroup> red: array<f32, MAX_G * HALF_D>;

@compute @workgroup_size(HALF_D)
fn main(@builtin(local_invocation_index) j: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = wid.y * 65535u + wid.x;
  if (c >= p.n) { return; }   // uniform per workgroup
#if ALL_HEADS
  var best = -3.0e38;
  for (var kvh = 0u; kvh < p.KV; kvh = kvh + 1u) {
    best = max(best, bound(c, kvh, j));
  }
  if (j == 0u) { scores[c] = best * p.scale; }
#else
  let best = bound(c, wid.z, j);
  if (j == 0u) { scores[c * p.KV + wid.z] = best * p.scale; }
#endif
}

// The largest over the group's query heads of chunk c's bound for KV head kvh (in every
// thread; uniform control flow).
fn bound(c: u32, kvh: u32, j: u32) -> f32 {
  let a = (chunks[c] * p.KV + kvh) * HALF_D + j;
  let lo = unpack2x16float(amin[a]);
  let hi = unpack2x16float(amax[a]);
  for (var g = 0u; g < G; g = g + 1u) {
    let qb = (kvh * G + g) * p.D + 2u * j;
    let qv = vec2<f32>(q[qb], q[qb + 1u]);
    let m = max(qv * lo, qv * hi);
    red[g * HALF_D + j] = m.x + m.y;
  }
  for (var stride = HALF_D / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (j < stride) {
      for (var g = 0u; g < G; g = g + 1u) { red[g * HALF_D + j] = red[g * HALF_D + j] + red[g * HALF_D + j + stride]; }
    }
  }
  workgroupBarrier();
  var best = -3.0e38;
  for (var g = 0u; g < G; g = g + 1u) { best = max(best, red[g * HALF_D]); }
  workgroupBarrier();   // red is reused by the next call
  return best;
}
