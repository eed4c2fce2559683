// Merges the split partials of attn_decode: out[m, h, :] = sum_s w_s * o_s / sum_s w_s * l_s
// with w_s = exp(max_s - max over splits).
//   part_o: (M, H, stride, D) f32;  part_ml: (M, H, stride) vec2 (max, sum);  out: (M, H, D) f32
// The first S of each row's `stride` partials are merged (stride 0 means S).
// The threads share the loads of a row's (max, sum) pairs and reduce them in workgroup
// memory; the weights of CHUNK splits at a time go to workgroup memory, and each output
// element then reads its partials with LOADS loads in flight.
struct Params { H: u32, S: u32, D: u32, stride: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part_o: array<f32>;
@group(0) @binding(2) var<storage, read> part_ml: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 128;
const CHUNK: u32 = 256u;
const LOADS: u32 = 16u;

var<workgroup> red: array<f32, WG>;
var<workgroup> weight: array<f32, CHUNK>;

// Reduces red[0 .. WG) by max or by sum into red[0] (every thread calls it).
fn reduce(lid: u32, by_max: bool) {
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) {
      let a = red[lid];
      let b = red[lid + stride];
      red[lid] = select(a + b, max(a, b), by_max);
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.x;
  let m = wid.y;
  let row = m * p.H + h;
  let st = select(p.stride, p.S, p.stride == 0u);
  let base = row * st;

  var mx = -3.0e38;
  for (var s = lid; s < p.S; s = s + WG) { mx = max(mx, part_ml[base + s].x); }
  red[lid] = mx;
  reduce(lid, true);
  mx = red[0];
  workgroupBarrier();
  var den = 0.0;
  for (var s = lid; s < p.S; s = s + WG) {
    let ml = part_ml[base + s];
    den = den + exp(ml.x - mx) * ml.y;
  }
  red[lid] = den;
  reduce(lid, false);
  let inv = 1.0 / red[0];

  // Each thread owns the output elements lid, lid + WG, ...; at most 8 per thread (D <= 8 * WG).
  var num: array<f32, 8>;
  for (var j = 0u; j < 8u; j = j + 1u) { num[j] = 0.0; }
  for (var s0 = 0u; s0 < p.S; s0 = s0 + CHUNK) {
    let n = min(CHUNK, p.S - s0);
    workgroupBarrier();
    for (var s = lid; s < n; s = s + WG) { weight[s] = exp(part_ml[base + s0 + s].x - mx) * inv; }
    workgroupBarrier();
    var j = 0u;
    for (var d = lid; d < p.D; d = d + WG) {
      var s = 0u;
      for (; s + LOADS <= n; s = s + LOADS) {
        var v: array<f32, LOADS>;
        for (var k = 0u; k < LOADS; k = k + 1u) { v[k] = part_o[(base + s0 + s + k) * p.D + d]; }
        for (var k = 0u; k < LOADS; k = k + 1u) { num[j] = num[j] + weight[s + k] * v[k]; }
      }
      for (; s < n; s = s + 1u) { num[j] = num[j] + weight[s] * part_o[(base + s0 + s) * p.D + d]; }
      j = j + 1u;
    }
  }
  var j = 0u;
  for (var d = lid; d < p.D; d = d + WG) {
    out[row * p.D + d] = num[j];
    j = j + 1u;
  }
}
