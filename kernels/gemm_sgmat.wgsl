// Matrix product for prefill on the GPU's matrix units (Dawn's subgroup matrices, lowered on
// Vulkan to VK_KHR_cooperative_matrix): Y[m, n] (+)= sum_k X[m, k] * W[n, k] (+ bias[n]).
// The contract and epilogues of gemm.wgsl, so either kernel serves one dispatch of 64-row,
// 128-column tiles, except that W is bound as halves and N (SWIGLU: N/2) must be a multiple
// of 16:  X: (M, K) f32 as vec4, rounded to f16 when staged;  W: (N, K) f16;  K % 32 == 0;
//   Y: (M, N) f32, f32 accumulation; ACC adds into Y (fused residual); BIAS adds bias[n];
//   SWIGLU: W = [gate; up] (rows [0, N/2) and [N/2, N)) and Y is (M, N/2) = silu(gate) * up.
// Only X is staged through workgroup memory (its f32 -> f16 conversion); W's 16 x 16 tiles
// are loaded as matrices straight from global memory (already f16; the two subgroups that
// share a column block hit the L1 cache). Staging W as well, with eight scalar f16 stores per
// 16 bytes (the first form of this kernel), ran at 0.70-0.86x of gemm on an H100; this one at
// 1.02-1.27x; 64 x 64 outputs a subgroup (4 x 4 accumulators) at 0.72-0.88x
// (bench/results/2026-12-07-matrix-gemm-2). SWIGLU: a subgroup's four column tiles are two
// gate tiles and the two up tiles of the same outputs (rows j and N/2 + j of W), paired in
// the epilogue.
// The workgroup is 4 subgroups of SG lanes in a 2 x 2 grid; K runs in steps of BK = 32
// through two stages of X in workgroup memory (the next step's X is held in registers while
// this one multiplies; one barrier a step). Offsets of matrix loads and stores derive only
// from workgroup_id, subgroup_id, uniforms and loop counters (Dawn requires them uniform).
enable f16;
enable chromium_experimental_subgroup_matrix;
// Loop bounds and matrix offsets are uniform per subgroup by construction (subgroup_id,
// uniforms); the analysis is off, as in llama.cpp's WebGPU kernels, in case it cannot prove it.
diagnostic(off, chromium.subgroup_matrix_uniformity);

struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<f16>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

override SG: u32 = 32u;
/* Halves of padding after each staged row of X (against bank conflicts). */
override PAD: u32 = 8u;
const TM: u32 = 2u;       // 16-row tiles per subgroup
const BM: u32 = 32u * TM; // rows per workgroup (2 subgroups of TM tiles)
const BK: u32 = 32u;
override LD: u32 = BK + PAD;
override XSTAGE: u32 = BM * LD;
override XS_SIZE: u32 = 2u * XSTAGE;
var<workgroup> xs: array<f16, XS_SIZE>;  // (stage 2, BM, LD): X[m0 + r, k0 + c] as f16
var<workgroup> cs: array<f32, 2048>;     // (subgroup 4, 2, 16, 16): accumulator tiles for the epilogue

// The next step's X, BM * BK / 4 vec4 over 4 SG lanes: at most 8 a lane (SG >= 16).
var<private> xr: array<vec4<f32>, 8>;

fn fetch(lid: u32, m0: u32, k0: u32) {
  let k4 = p.K / 4u;
  let loads = BM * 8u / (4u * SG);
  for (var i = 0u; i < loads; i = i + 1u) {
    let idx = lid + i * 4u * SG;
    xr[i] = x[min(m0 + idx / 8u, p.M - 1u) * k4 + k0 / 4u + idx % 8u];
  }
}

fn stage(lid: u32, s: u32) {
  let loads = BM * 8u / (4u * SG);
  for (var i = 0u; i < loads; i = i + 1u) {
    let idx = lid + i * 4u * SG;
    let xo = s * XSTAGE + (idx / 8u) * LD + (idx % 8u) * 4u;
    // Activations beyond f16's range saturate rather than become infinities.
    let h = vec4<f16>(clamp(xr[i], vec4<f32>(-65504.0), vec4<f32>(65504.0)));
    xs[xo] = h.x;
    xs[xo + 1u] = h.y;
    xs[xo + 2u] = h.z;
    xs[xo + 3u] = h.w;
  }
}

// The first row of W of this subgroup's column tile j (0..3), clamped into W for tiles past
// its end (their outputs are not written). SWIGLU: tiles 0, 1 gate rows, 2, 3 the up rows.
fn wrow(nb: u32, j: u32) -> u32 {
#if SWIGLU
  let half_n = p.N / 2u;
  let r = nb + (j % 2u) * 16u;
  return min(r, half_n - 16u) + (j / 2u) * half_n;
#else
  return min(nb + j * 16u, p.N - 16u);
#endif
}

// Writes tile `at` of cs (16 x 16; SWIGLU: gate at, up at + 256) to Y rows m.., columns n..
fn drain(at: u32, lane: u32, m: u32, n: u32) {
#if SWIGLU
  let half_n = p.N / 2u;
  for (var e = lane; e < 256u; e = e + SG) {
    let r = e / 16u;
    let c = e % 16u;
    if (m + r < p.M && n + c < half_n) {
      var g = cs[at + e];
      var u = cs[at + 256u + e];
#if BIAS
      g = g + bias[n + c];
      u = u + bias[half_n + n + c];
#endif
      let idx = (m + r) * half_n + n + c;
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
      var v = cs[at + e];
#if BIAS
      v = v + bias[n + c];
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
  let sm = sg % 2u;
  let sn = sg / 2u;
#if SWIGLU
  let nb = wid.x * 64u + sn * 32u;   // this subgroup's first output (gate row)
#else
  let nb = wid.x * 128u + sn * 64u;  // this subgroup's first output column
#endif
  let w0 = wrow(nb, 0u) * p.K;
  let w1 = wrow(nb, 1u) * p.K;
  let w2 = wrow(nb, 2u) * p.K;
  let w3 = wrow(nb, 3u) * p.K;
  let steps = p.K / BK;

  var a00 = subgroup_matrix_result<f32, 16, 16>();
  var a01 = subgroup_matrix_result<f32, 16, 16>();
  var a02 = subgroup_matrix_result<f32, 16, 16>();
  var a03 = subgroup_matrix_result<f32, 16, 16>();
  var a10 = subgroup_matrix_result<f32, 16, 16>();
  var a11 = subgroup_matrix_result<f32, 16, 16>();
  var a12 = subgroup_matrix_result<f32, 16, 16>();
  var a13 = subgroup_matrix_result<f32, 16, 16>();

  fetch(lid, m0, 0u);
  stage(lid, 0u);
  workgroupBarrier();
  for (var t = 0u; t < steps; t = t + 1u) {
    let cur = t % 2u;
    let more = t + 1u < steps;
    if (more) { fetch(lid, m0, (t + 1u) * BK); }
    let xb = cur * XSTAGE + sm * TM * 16u * LD;
    for (var kk = 0u; kk < BK; kk = kk + 16u) {
      let k = t * BK + kk;
      // Right: W^T, i.e. W's rows as columns (column-major, stride K), from global memory.
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, w0 + k, p.K);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, w1 + k, p.K);
      let b2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, w2 + k, p.K);
      let b3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, w3 + k, p.K);
      let l0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + 0u * LD + kk, LD);
      a00 = subgroupMatrixMultiplyAccumulate(l0, b0, a00);
      a01 = subgroupMatrixMultiplyAccumulate(l0, b1, a01);
      a02 = subgroupMatrixMultiplyAccumulate(l0, b2, a02);
      a03 = subgroupMatrixMultiplyAccumulate(l0, b3, a03);
      let l1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + 16u * LD + kk, LD);
      a10 = subgroupMatrixMultiplyAccumulate(l1, b0, a10);
      a11 = subgroupMatrixMultiplyAccumulate(l1, b1, a11);
      a12 = subgroupMatrixMultiplyAccumulate(l1, b2, a12);
      a13 = subgroupMatrixMultiplyAccumulate(l1, b3, a13);
    }
    // The other stage was last read a step ago, before the previous barrier.
    if (more) { stage(lid, 1u - cur); }
    workgroupBarrier();
  }

  // Epilogue: each subgroup's tiles through its own part of cs to the fused output.
  let mr = m0 + sm * TM * 16u;
  let at = sg * 512u;
#if SWIGLU
  subgroupMatrixStore<row_major>(&cs, at, a00, 16u);
  subgroupMatrixStore<row_major>(&cs, at + 256u, a02, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 0u, nb + 0u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a01, 16u);
  subgroupMatrixStore<row_major>(&cs, at + 256u, a03, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 0u, nb + 16u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a10, 16u);
  subgroupMatrixStore<row_major>(&cs, at + 256u, a12, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 16u, nb + 0u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a11, 16u);
  subgroupMatrixStore<row_major>(&cs, at + 256u, a13, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 16u, nb + 16u);
  workgroupBarrier();
#else
  subgroupMatrixStore<row_major>(&cs, at, a00, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 0u, nb + 0u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a01, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 0u, nb + 16u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a02, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 0u, nb + 32u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a03, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 0u, nb + 48u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a10, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 16u, nb + 0u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a11, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 16u, nb + 16u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a12, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 16u, nb + 32u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a13, 16u);
  workgroupBarrier();
  drain(at, lane, mr + 16u, nb + 48u);
  workgroupBarrier();
#endif
}
