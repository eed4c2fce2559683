// RMSNorm over rows: y[m, :] = x[m, :] * rsqrt(mean(x[m, :]^2) + eps) * gamma
//   x, y: (M, H) f32 as vec4 (H % 4 == 0);  gamma: (H) f16 packed, read as vec2<u32>
struct Params { H: u32, eps: f32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gamma: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

override WG: u32 = 256;
var<workgroup> red: array<f32, WG>;
#include lib/rms_scale.wgsl

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let n4 = p.H / 4u;
  let base = wid.y * n4;   // one workgroup per row, rows along y
  let scale = row_rms_scale(base, n4, p.H, p.eps, lid);
  for (var i = lid; i < n4; i = i + WG) {
    let g = gamma[i];
    y[base + i] = x[base + i] * scale * vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y));
  }
}
