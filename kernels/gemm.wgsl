// Matrix product for prefill: Y[m, n] (+)= sum_k X[m, k] * W[n, k] (+ bias[n]).
//   X: (M, K) f32 as vec4;  W: (N, K) f16 packed, read as vec4<u32> (8 halves); K % 16 == 0
//   Y: (M, N) f32; ACC adds into Y (fused residual); SWIGLU: W rows are (gate, up) pairs
//      and Y is (M, N/2) = silu(gate) * up
// Tiles of 64x64 outputs per workgroup of 256 threads, 4x4 outputs per thread, K in steps
// of 16 through workgroup memory (both operands as f32, X transposed for broadcast reads).
struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> xs: array<vec4<f32>, 256>;   // (BK, BM/4): xs[k * 16 + i/4] holds X[m0+i..i+3, k]
var<workgroup> ws: array<vec4<f32>, 256>;   // (BK, BN/4): ws[k * 16 + j/4] holds W[n0+j..j+3, k]

#include lib/gemv_rows.wgsl

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let tm = lid / 16u;   // output rows m0 + tm*4 .. +3
  let tn = lid % 16u;   // output cols n0 + tn*4 .. +3
  let k4 = p.K / 4u;
  let k8 = p.K / 8u;

  var acc: array<vec4<f32>, 4>;
  for (var i = 0u; i < 4u; i = i + 1u) { acc[i] = vec4<f32>(0.0); }

  // Loader roles: X tile 64 rows x 16 k = 256 vec4 (one per thread: row lid/4, k-quad lid%4);
  // W tile 64 rows x 16 k = 128 vec4<u32> (threads < 128: row lid/2, k-oct lid%2).
  let xr = lid / 4u;
  let xq = lid % 4u;
  let xrow = min(m0 + xr, p.M - 1u);
  let wr = lid / 2u;
  let wo = lid % 2u;
  let wrow = phys(min(n0 + wr, p.N - 1u));

  for (var kt = 0u; kt < p.K; kt = kt + BK) {
    let xv = x[xrow * k4 + kt / 4u + xq];
    // transpose into xs: element k = xq*4 + c of row xr
    let slot = xr / 4u;
    let lane = xr % 4u;
    // Each vec4 in xs packs 4 consecutive rows for one k; write component `lane`.
    workgroupBarrier();
    xs[(xq * 4u + 0u) * 16u + slot][lane] = xv.x;
    xs[(xq * 4u + 1u) * 16u + slot][lane] = xv.y;
    xs[(xq * 4u + 2u) * 16u + slot][lane] = xv.z;
    xs[(xq * 4u + 3u) * 16u + slot][lane] = xv.w;
    if (lid < 128u) {
      let wv = w[wrow * k8 + kt / 8u + wo];
      let a = unpack2x16float(wv.x);
      let b = unpack2x16float(wv.y);
      let c = unpack2x16float(wv.z);
      let d = unpack2x16float(wv.w);
      let wslot = wr / 4u;
      let wlane = wr % 4u;
      ws[(wo * 8u + 0u) * 16u + wslot][wlane] = a.x;
      ws[(wo * 8u + 1u) * 16u + wslot][wlane] = a.y;
      ws[(wo * 8u + 2u) * 16u + wslot][wlane] = b.x;
      ws[(wo * 8u + 3u) * 16u + wslot][wlane] = b.y;
      ws[(wo * 8u + 4u) * 16u + wslot][wlane] = c.x;
      ws[(wo * 8u + 5u) * 16u + wslot][wlane] = c.y;
      ws[(wo * 8u + 6u) * 16u + wslot][wlane] = d.x;
      ws[(wo * 8u + 7u) * 16u + wslot][wlane] = d.y;
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k = k + 1u) {
      let xv4 = xs[k * 16u + tm];
      let wv4 = ws[k * 16u + tn];
      acc[0] = acc[0] + xv4.x * wv4;
      acc[1] = acc[1] + xv4.y * wv4;
      acc[2] = acc[2] + xv4.z * wv4;
      acc[3] = acc[3] + xv4.w * wv4;
    }
  }

  let n = n0 + tn * 4u;
  for (var i = 0u; i < 4u; i = i + 1u) {
    let m = m0 + tm * 4u + i;
    if (m >= p.M) { continue; }
    store_quad(m, n, acc[i]);
  }
}

#include lib/gemm_store.wgsl
