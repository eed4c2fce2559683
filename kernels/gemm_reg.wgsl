// Matrix product for prefill on devices where workgroup memory and barriers cost more than
// they save (lavapipe: a workgroup runs on one CPU thread, 8 invocations per SIMD group,
// and every barrier switches all of its invocations). Same contract as gemm.wgsl:
//   Y[m, n] (+)= sum_k X[m, k] * W[n, k] (+ bias[n]);  X: (M, K) f32 as vec4;
//   W: (N, K) f16 packed, read as vec2<u32> (4 halves); K % 16 == 0;  Y: (M, N) f32;
//   ACC adds into Y; SWIGLU: W rows are (gate, up) pairs and Y is (M, N/2) = silu(gate) * up.
// Each invocation computes TM x 4 outputs straight from global memory (no workgroup memory,
// no barrier); a workgroup covers 64 columns (16 invocations of 4) by 64 rows (8 of TM).
struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

const TM: u32 = 8u;   // rows per invocation (4 and 2 were slower on lavapipe, 2 cores)

#include lib/gemv_rows.wgsl

// 16 column groups x 8 row groups of TM rows: 64 x 64 outputs per workgroup.
@compute @workgroup_size(16, 8)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let n = wid.x * 64u + lid.x * 4u;
  let m0 = wid.y * 64u + lid.y * TM;
  if (n >= p.N || m0 >= p.M) { return; }
  let k4 = p.K / 4u;
  var wrow: array<u32, 4>;
  for (var c = 0u; c < 4u; c = c + 1u) { wrow[c] = phys(min(n + c, p.N - 1u)) * k4; }
  var xrow: array<u32, TM>;
  for (var i = 0u; i < TM; i = i + 1u) { xrow[i] = min(m0 + i, p.M - 1u) * k4; }

  var acc: array<vec4<f32>, TM>;
  for (var i = 0u; i < TM; i = i + 1u) { acc[i] = vec4<f32>(0.0); }
  for (var kq = 0u; kq < k4; kq = kq + 1u) {
    let w0 = w[wrow[0] + kq];
    let w1 = w[wrow[1] + kq];
    let w2 = w[wrow[2] + kq];
    let w3 = w[wrow[3] + kq];
    let c0 = vec4<f32>(unpack2x16float(w0.x), unpack2x16float(w0.y));
    let c1 = vec4<f32>(unpack2x16float(w1.x), unpack2x16float(w1.y));
    let c2 = vec4<f32>(unpack2x16float(w2.x), unpack2x16float(w2.y));
    let c3 = vec4<f32>(unpack2x16float(w3.x), unpack2x16float(w3.y));
    for (var i = 0u; i < TM; i = i + 1u) {
      let xv = x[xrow[i] + kq];
      acc[i] = acc[i] + vec4<f32>(dot(xv, c0), dot(xv, c1), dot(xv, c2), dot(xv, c3));
    }
  }

  for (var i = 0u; i < TM; i = i + 1u) {
    let m = m0 + i;
    if (m >= p.M) { continue; }
    store_quad(m, n, acc[i]);
  }
}

#include lib/gemm_store.wgsl
