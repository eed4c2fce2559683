// The left operand of a matrix-unit product (gemm_skinny.wgsl): rows of x (f32) as f16, with
// NORM x * rsqrt(mean(x^2) + eps) * gamma (the decode GEMVs' fused RMSNorm), scaled before
// rounding so that the halves hold O(1) values. One workgroup per row; rows M.. (the padding
// of the last 16-row group) are written as zeros. Values beyond f16's range saturate.
//   x: (M, K) f32 as vec4;  gamma: (K) f16 pairs as vec2<u32>;  xh: (rows, K) f16 as vec2<u32>,
//   or with F32 the same values as f32, not rounded, for a kernel that multiplies in f32
//   (gemm_stream.wgsl's X32: no conversions in its loop)
struct Params { M: u32, K: u32, eps: f32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
#if F32
@group(0) @binding(2) var<storage, read_write> xh: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read_write> xh: array<vec2<u32>>;
#endif
#if NORM
@group(0) @binding(4) var<storage, read> gamma: array<vec2<u32>>;
#endif

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;
#include lib/rms_scale.wgsl

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let row = wid.x;
  let k4 = p.K / 4u;
  let base = row * k4;
  if (row >= p.M) {   // uniform per workgroup
#if F32
    for (var i = lid; i < k4; i = i + WG) { xh[base + i] = vec4<f32>(0.0); }
#else
    for (var i = lid; i < k4; i = i + WG) { xh[base + i] = vec2<u32>(0u); }
#endif
    return;
  }
  var scale = 1.0;
#if NORM
  scale = row_rms_scale(base, k4, p.K, p.eps, lid);
#endif
  for (var i = lid; i < k4; i = i + WG) {
    var v = x[base + i] * scale;
#if NORM
    let g = gamma[i];
    v = v * vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y));
#endif
    v = clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0));
#if F32
    xh[base + i] = v;
#else
    xh[base + i] = vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw));
#endif
  }
}
