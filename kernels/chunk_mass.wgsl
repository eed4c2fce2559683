// Where a prefill pass's attention goes among the tokens not yet sealed (adaptive chunking,
// kv/chunk-plan.ts): for R query rows spread over the pass, the softmax of each query head over
// the unsealed tokens it sees (causal: [start, its position]), summed per 16-token block over
// the query heads of a KV head. Normalized within the unsealed tokens: only the blocks' ratios
// matter to the planner. The `skip` tokens right before a row are left out of its masses (not
// of its softmax): attention to one's own neighbourhood marks every sampled row, not content.
//   q:     (m, H, D) f32, the pass's queries (RoPE applied); row r is position pos0 + r
//   kpool: (blocks, KV, BS, D) f16 packed; logical block b lies in physical block b % wrap (the tail ring)
//   mass:  (R, KV, NB) f32: block j is logical block start / BS + j (0 past a row's position)
// Workgroup (sample i, kv head); row r_i = (i + 1) * m / R - 1. Three passes over the keys per
// head (max, sum of exp, per-block sums): the keys are few (the tail) and this runs once a pass.
struct Params { m: u32, R: u32, H: u32, KV: u32, pos0: u32, start: u32, wrap: u32, NB: u32, scale: f32, skip: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kpool: array<u32>;
@group(0) @binding(3) var<storage, read_write> mass: array<f32>;

override WG: u32 = 64;    // a power of two
override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim, even
override BS: u32 = 16;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, G * D>;
var<workgroup> red: array<f32, WG>;
var<workgroup> stats: array<vec2<f32>, G>;   // per head: (max score, sum of exp)

fn score(g: u32, t: u32, kvh: u32) -> f32 {
  let b = (t / BS) % p.wrap;
  let base = ((b * p.KV + kvh) * BS + t % BS) * (D / 2u);
  var s = 0.0;
  for (var j = 0u; j < D / 2u; j = j + 1u) {
    let k = unpack2x16float(kpool[base + j]);
    s = s + qs[g * D + 2u * j] * k.x + qs[g * D + 2u * j + 1u] * k.y;
  }
  return s;
}

// Reduces red[] to red[0] with `op` 0: max, 1: sum.
fn reduce(lid: u32, op: u32) {
  for (var w = WG / 2u; w > 0u; w = w / 2u) {
    workgroupBarrier();
    if (lid < w) {
      if (op == 0u) { red[lid] = max(red[lid], red[lid + w]); } else { red[lid] = red[lid] + red[lid + w]; }
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let i = wid.x;
  let kvh = wid.y;
  let r = ((i + 1u) * p.m) / p.R - 1u;
  let last = p.pos0 + r;               // the row's position: it sees tokens [start, last]
  let n = last + 1u - p.start;
  for (var e = lid; e < G * D; e = e + WG) {
    let g = e / D;
    qs[e] = q[(r * p.H + kvh * G + g) * D + e % D] * p.scale;
  }
  workgroupBarrier();
  for (var g = 0u; g < G; g = g + 1u) {
    var mx = NEG;
    for (var t = lid; t < n; t = t + WG) { mx = max(mx, score(g, p.start + t, kvh)); }
    red[lid] = mx;
    reduce(lid, 0u);
    let m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var t = lid; t < n; t = t + WG) { sum = sum + exp(score(g, p.start + t, kvh) - m); }
    red[lid] = sum;
    reduce(lid, 1u);
    if (lid == 0u) { stats[g] = vec2<f32>(m, red[0]); }
    workgroupBarrier();
  }
  let b0 = p.start / BS;
  for (var j = lid; j < p.NB; j = j + WG) {
    var acc = 0.0;
    for (var g = 0u; g < G; g = g + 1u) {
      var s = 0.0;
      for (var o = 0u; o < BS; o = o + 1u) {
        let t = (b0 + j) * BS + o;
        if (t >= p.start && t + p.skip <= last) { s = s + exp(score(g, t, kvh) - stats[g].x); }
      }
      acc = acc + s / stats[g].y;
    }
    mass[(i * p.KV + kvh) * p.NB + j] = acc;
  }
}
