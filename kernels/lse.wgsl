// log-sum-exp pieces of softmax(logits * inv_temp) for host sampling over GPU-chosen
// candidates: pass 1 (FINAL off) reduces each workgroup's slice to (max, sum of exp(x - max));
// pass 2 (FINAL) merges the parts into out[0] = (max, sum).
//   logits: (V) f32;  part: (groups) vec2<f32>;  out: (1) vec2<f32>
// With ROWS, several rows of a decode batch's logits (rows, V) at once (workgroup y = j): row
// rows[j].x at its own 1 / temperature (bits of rows[j].z), into out[j]; the same slices and
// reductions as the row alone.
struct Params { V: u32, groups: u32, inv_temp: f32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
#if FINAL
@group(0) @binding(2) var<storage, read_write> part: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec2<f32>>;
#else
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<vec2<f32>>;
#if ROWS
@group(0) @binding(4) var<storage, read> rows: array<vec4<u32>>;
#endif
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
  // List j of a batch (ROWS; 0 otherwise): its slice of part.
  let j = wid.y;
  let base = j * p.groups;
#if FINAL
  for (var g = lid; g < p.groups; g = g + WG) { acc = merge(acc, part[base + g]); }
#else
#if ROWS
  let row = rows[j].x * p.V;
  let inv_temp = bitcast<f32>(rows[j].z);
#else
  let row = 0u;
  let inv_temp = p.inv_temp;
#endif
  let per = (p.V + p.groups - 1u) / p.groups;
  let start = wid.x * per;
  let stop = min(start + per, p.V);
  for (var i = start + lid; i < stop; i = i + WG) { acc = merge(acc, vec2<f32>(logits[row + i] * inv_temp, 1.0)); }
#endif
  red[lid] = acc;
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) { red[lid] = merge(red[lid], red[lid + stride]); }
  }
  workgroupBarrier();
  if (lid == 0u) {
#if FINAL
    out[j] = red[0];
#else
    part[base + wid.x] = red[0];
#endif
  }
}
