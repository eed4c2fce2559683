// The interface of the decode GEMVs (gemv.wgsl, gemv_sg.wgsl):
//   W:  (N, K) f16, packed two halves per u32, read as vec4<u32> (8 halves); K % 8 == 0
//   x:  (M, K) f32, read as vec4<f32>;  x' = x, or with NORM x * rsqrt(mean(x^2) + eps) * gamma
//   y:  (M, N) f32; ACC: y += (residual add); SWIGLU: rows are (gate, up) pairs (see phys)
//       and y is (M, N/2) = silu(gate) * up;  BIAS: + bias[row], laid out like W's rows
struct Params {
  N: u32,        // rows of W
  K: u32,        // columns of W
  eps: f32,      // RMSNorm epsilon (NORM)
  groups_x: u32, // workgroups along x (row groups are split over x and y past 65535)
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if NORM
@group(0) @binding(4) var<storage, read> gamma: array<vec4<u32>>;
#endif
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

#include lib/swiglu_rows.wgsl

fn dot8(wv: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(unpack2x16float(wv.x), xa.xy) + dot(unpack2x16float(wv.y), xa.zw)
       + dot(unpack2x16float(wv.z), xb.xy) + dot(unpack2x16float(wv.w), xb.zw);
}

// The 8 inputs matching weight vec4 i of row m's x (RMSNorm applied with NORM).
fn load_x(xbase: u32, i: u32, scale: f32) -> array<vec4<f32>, 2> {
  var xa = x[xbase + 2u * i];
  var xb = x[xbase + 2u * i + 1u];
#if NORM
  let g = gamma[i];
  xa = xa * vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y)) * scale;
  xb = xb * vec4<f32>(unpack2x16float(g.z), unpack2x16float(g.w)) * scale;
#endif
  return array<vec4<f32>, 2>(xa, xb);
}

// The output of row `row` (its bias added), or with SWIGLU of the pair (row, row + 1)
// given gate and up: silu(gate + bias) * (up + bias).
fn finish(m: u32, row: u32, v: f32, up: f32) {
#if SWIGLU
  var g = v;
  var u = up;
#if BIAS
  g = g + bias[phys(row)];
  u = u + bias[phys(row + 1u)];
#endif
  write_out(m, row, g / (1.0 + exp(-g)) * u);
#else
  var out = v;
#if BIAS
  out = out + bias[row];
#endif
  write_out(m, row, out);
#endif
}

// Writes one output: silu(gate) * up for a SWIGLU pair (row even), else the row's value.
fn write_out(m: u32, row: u32, v: f32) {
#if SWIGLU
  let idx = m * (p.N / 2u) + row / 2u;
#else
  let idx = m * p.N + row;
#endif
#if ACC
  y[idx] = y[idx] + v;
#else
  y[idx] = v;
#endif
}
