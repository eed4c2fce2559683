// Matrix product for prefill on the GPU's matrix units (Dawn's subgroup matrices, lowered on
// Vulkan to VK_KHR_cooperative_matrix): Y[m, n] (+)= sum_k X[m, k] * W[n, k] (+ bias[n]).
// Same contract and bindings as gemm.wgsl, so either kernel serves one dispatch:
//   X: (M, K) f32 as vec4, rounded to f16 when staged;  W: (N, K) f16 packed in u32 pairs,
//   read as vec4<u32> (8 halves); K % 32 == 0;  Y: (M, N) f32, f32 accumulation;
//   ACC adds into Y (fused residual); BIAS adds bias[n]; SWIGLU: W rows are (gate, up) pairs
//   (lib/gemv_rows.wgsl phys) and Y is (M, N/2) = silu(gate) * up.
// A workgroup computes BM x BN = 64 x 128 outputs with 4 subgroups of SG lanes in a 2 x 2
// grid, each 32 x 64 = 2 x 4 accumulators of 16 x 16 (f16 x f16 -> f32, the 16x16x16
// configuration). K runs in steps of BK = 32 through two workgroup stages: the global loads
// of step t+1 are held in registers while step t multiplies, then staged (one barrier a step).
// Offsets of matrix loads and stores derive only from workgroup_id, subgroup_id and loop
// counters: Dawn requires them uniform within a subgroup. The workgroup must be exactly
// 4 subgroups, so SG must be the device's (fixed) subgroup size, 16..64.
enable f16;
enable chromium_experimental_subgroup_matrix;

struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

/* Lanes per subgroup (32 on NVIDIA); the workgroup is 4 subgroups. */
override SG: u32 = 32u;
/* Halves of padding after each staged row against bank conflicts: 8 (rows 16-byte aligned)
   where the device has 34 KiB of workgroup memory, 0 where it has 28 KiB. */
override PAD: u32 = 8u;

const BM: u32 = 64u;
const BN: u32 = 128u;
const BK: u32 = 32u;
const TILE_VEC4: u32 = 512u;         // vec4 loads per tile per step: X 64 rows x 8, W 128 rows x 4
override LD: u32 = BK + PAD;         // row stride of the staged tiles, in halves
override XSTAGE: u32 = BM * LD;
override WSTAGE: u32 = BN * LD;
override XS_SIZE: u32 = 2u * XSTAGE;
override WS_SIZE: u32 = 2u * WSTAGE;

var<workgroup> xs: array<f16, XS_SIZE>;  // (stage 2, BM, LD): X[m0 + r, k0 + c] as f16
var<workgroup> ws: array<f16, WS_SIZE>;  // (stage 2, BN, LD): W[phys(n0 + r), k0 + c]
var<workgroup> cs: array<f32, 1024>;     // (subgroup 4, 16, 16): one accumulator tile, for the epilogue

// The next step's global loads, TILE_VEC4 / (4 SG) per lane (at most 8: SG >= 16).
var<private> xr: array<vec4<f32>, 8>;
var<private> wr: array<vec4<u32>, 8>;

#include lib/gemv_rows.wgsl

fn fetch(lid: u32, m0: u32, n0: u32, k0: u32) {
  let k4 = p.K / 4u;
  let k8 = p.K / 8u;
  let loads = TILE_VEC4 / (4u * SG);
  for (var i = 0u; i < loads; i = i + 1u) {
    let idx = lid + i * 4u * SG;
    xr[i] = x[min(m0 + idx / 8u, p.M - 1u) * k4 + k0 / 4u + idx % 8u];
    wr[i] = w[phys(min(n0 + idx / 4u, p.N - 1u)) * k8 + k0 / 8u + idx % 4u];
  }
}

fn stage(lid: u32, s: u32) {
  let loads = TILE_VEC4 / (4u * SG);
  for (var i = 0u; i < loads; i = i + 1u) {
    let idx = lid + i * 4u * SG;
    let xo = s * XSTAGE + (idx / 8u) * LD + (idx % 8u) * 4u;
    // Activations beyond f16's range saturate rather than become infinities.
    let h = vec4<f16>(clamp(xr[i], vec4<f32>(-65504.0), vec4<f32>(65504.0)));
    xs[xo] = h.x;
    xs[xo + 1u] = h.y;
    xs[xo + 2u] = h.z;
    xs[xo + 3u] = h.w;
    let wo = s * WSTAGE + (idx / 4u) * LD + (idx % 4u) * 8u;
    let v = wr[i];
    let a = bitcast<vec2<f16>>(v.x);
    let b = bitcast<vec2<f16>>(v.y);
    let c = bitcast<vec2<f16>>(v.z);
    let d = bitcast<vec2<f16>>(v.w);
    ws[wo] = a.x;
    ws[wo + 1u] = a.y;
    ws[wo + 2u] = b.x;
    ws[wo + 3u] = b.y;
    ws[wo + 4u] = c.x;
    ws[wo + 5u] = c.y;
    ws[wo + 6u] = d.x;
    ws[wo + 7u] = d.y;
  }
}

// Writes the 16 x 16 tile at cs[sg] to Y rows m.., columns n.. with the epilogue.
fn drain(sg: u32, lane: u32, m: u32, n: u32) {
  let base = sg * 256u;
#if SWIGLU
  // Columns (n + c, n + c + 1), c even, are a (gate, up) pair; n is a multiple of 16.
  let half_n = p.N / 2u;
  for (var e = lane; e < 128u; e = e + SG) {
    let r = e / 8u;
    let c = (e % 8u) * 2u;
    if (m + r < p.M && n + c + 1u < p.N) {
      let g = cs[base + r * 16u + c];
      let u = cs[base + r * 16u + c + 1u];
      let idx = (m + r) * half_n + (n + c) / 2u;
      let out = g / (1.0 + exp(-g)) * u;
#if ACC
      y[idx] = y[idx] + out;
#else
      y[idx] = out;
#endif
    }
  }
#else
  for (var e = lane; e < 256u; e = e + SG) {
    let r = e / 16u;
    let c = e % 16u;
    if (m + r < p.M && n + c < p.N) {
      var v = cs[base + e];
#if BIAS
      v = v + bias[phys(n + c)];
#endif
      let idx = (m + r) * p.N + n + c;
#if ACC
      y[idx] = y[idx] + v;
#else
      y[idx] = v;
#endif
    }
  }
#endif
}

@compute @workgroup_size(4u * SG)
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(subgroup_id) sg: u32,
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let steps = p.K / BK;
  // This subgroup's 32 x 64 block: rows m0 + sm * 32, columns n0 + sn * 64.
  let sm = sg % 2u;
  let sn = sg / 2u;

  var acc00 = subgroup_matrix_result<f32, 16, 16>();
  var acc01 = subgroup_matrix_result<f32, 16, 16>();
  var acc02 = subgroup_matrix_result<f32, 16, 16>();
  var acc03 = subgroup_matrix_result<f32, 16, 16>();
  var acc10 = subgroup_matrix_result<f32, 16, 16>();
  var acc11 = subgroup_matrix_result<f32, 16, 16>();
  var acc12 = subgroup_matrix_result<f32, 16, 16>();
  var acc13 = subgroup_matrix_result<f32, 16, 16>();

  fetch(lid, m0, n0, 0u);
  stage(lid, 0u);
  workgroupBarrier();
  for (var t = 0u; t < steps; t = t + 1u) {
    let cur = t % 2u;
    let more = t + 1u < steps;
    if (more) { fetch(lid, m0, n0, (t + 1u) * BK); }
    let xb = cur * XSTAGE + sm * 32u * LD;
    let wb = cur * WSTAGE + sn * 64u * LD;
    for (var kk = 0u; kk < BK; kk = kk + 16u) {
      // Left: X rows (row-major in xs). Right: W^T, i.e. W's rows as columns (column-major in ws).
      let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + kk, LD);
      let a1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + 16u * LD + kk, LD);
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + kk, LD);
      acc00 = subgroupMatrixMultiplyAccumulate(a0, b0, acc00);
      acc10 = subgroupMatrixMultiplyAccumulate(a1, b0, acc10);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + 16u * LD + kk, LD);
      acc01 = subgroupMatrixMultiplyAccumulate(a0, b1, acc01);
      acc11 = subgroupMatrixMultiplyAccumulate(a1, b1, acc11);
      let b2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + 32u * LD + kk, LD);
      acc02 = subgroupMatrixMultiplyAccumulate(a0, b2, acc02);
      acc12 = subgroupMatrixMultiplyAccumulate(a1, b2, acc12);
      let b3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + 48u * LD + kk, LD);
      acc03 = subgroupMatrixMultiplyAccumulate(a0, b3, acc03);
      acc13 = subgroupMatrixMultiplyAccumulate(a1, b3, acc13);
    }
    // The other stage was last read a step ago, before the previous barrier.
    if (more) { stage(lid, 1u - cur); }
    workgroupBarrier();
  }

  // Epilogue: each accumulator goes through this subgroup's cs tile to the fused output.
  let mr = m0 + sm * 32u;
  let nc = n0 + sn * 64u;
  let at = sg * 256u;
  subgroupMatrixStore<row_major>(&cs, at, acc00, 16u);
  workgroupBarrier();
  drain(sg, lane, mr, nc);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc01, 16u);
  workgroupBarrier();
  drain(sg, lane, mr, nc + 16u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc02, 16u);
  workgroupBarrier();
  drain(sg, lane, mr, nc + 32u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc03, 16u);
  workgroupBarrier();
  drain(sg, lane, mr, nc + 48u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc10, 16u);
  workgroupBarrier();
  drain(sg, lane, mr + 16u, nc);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc11, 16u);
  workgroupBarrier();
  drain(sg, lane, mr + 16u, nc + 16u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc12, 16u);
  workgroupBarrier();
  drain(sg, lane, mr + 16u, nc + 32u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, acc13, 16u);
  workgroupBarrier();
  drain(sg, lane, mr + 16u, nc + 48u);
}
