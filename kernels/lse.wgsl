// log-sum-exp pieces of softmax(logits * inv_temp) for host sampling over GPU-chosen
// candidates: pass 1 (FINAL off) reduces each workgroup's slice to (max, sum of exp(x - max));
// pass 2 (FINAL) merges the parts into out[0] = (max, sum).
//   logits: (V) f32;  part: (groups) vec2<f32>;  out: (1) vec2<f32>
struct Params { V: u32, groups: u32, inv_temp: f32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
#if FINAL
@group(0) @binding(2) var<storage, read_write> part: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec2<f32>>;
#else
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<vec2<f32>>;
#endif

override WG: u32 = 256;
var<workgroup> red: array<vec2<f32>, WG>;

fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  if (m <= -3.0e38) { return vec2<f32>(m, 0.0); }
  return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  var acc = vec2<f32>(-3.4e38, 0.0);
#if FINAL
  for (var g = lid; g < p.groups; g = g + WG) { acc = merge(acc, part[g]); }
#else
  let per = (p.V + p.groups - 1u) / p.groups;
  let start = wid.x * per;
  let stop = min(start + per, p.V);
  for (var i = start + lid; i < stop; i = i + WG) { acc = merge(acc, vec2<f32>(logits[i] * p.inv_temp, 1.0)); }
#endif
  red[lid] = acc;
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) { red[lid] = merge(red[lid], red[lid + stride]); }
  }
  workgroupBarrier();
  if (lid == 0u) {
#if FINAL
    out[0] = red[0];
#else
    part[wid.x] = red[0];
#endif
  }
}
