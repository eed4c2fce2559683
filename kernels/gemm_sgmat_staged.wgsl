// Matrix product for prefill on the GPU's matrix units (Dawn's subgroup matrices, lowered on
// Vulkan to VK_KHR_cooperative_matrix), with BOTH operands staged through workgroup memory:
// Y[m, n] (+)= sum_k X[m, k] * W[n, k] (+ bias[n]). The contract and epilogues of gemm.wgsl
// and gemm_sgmat.wgsl, with W bound as [gate; up] for SWIGLU:
//   X: (M, K) f32 as vec4, rounded to f16 when staged;  W: (N, K) f16, read 8 halves at a time;
//   K % BK == 0;  Y: (M, N) f32, f32 accumulation; ACC adds into Y (fused residual); BIAS adds
//   bias[n]; SWIGLU: W = [gate; up] (rows [0, N/2) and [N/2, N)) and Y is (M, N/2) = silu(gate) * up.
// Unlike gemm_sgmat (W's tiles loaded from global memory, 0.96-1.14x of gemm on an H100), this
// form has not been timed on a GPU yet: the engine uses it only where LEOAM_MATRIX_GEMM_TILING
// names a tiling (engine/matrix-check.ts), and bench/gemm-bench.ts --tilings times them.
// Tiling (MatrixGemmTiling): a workgroup of SGM x SGN subgroups of SG lanes computes BM x BN
// outputs (SWIGLU: BN rows of W, BN/2 outputs); each subgroup TM x TN 16 x 16 tiles (flags
// TM4 / TN4: 4, else 2), held in named accumulators: an array of them, indexed in a loop, may
// be lowered to memory (a likely cause of the earlier forms' "spills"). K runs in steps of BK
// through two stages of workgroup memory holding both operands as f16 (rows padded by PAD
// halves against bank conflicts); the next step's tiles are read from global memory into
// registers (vec4 loads) before this step's multiplies and stored into the other stage after
// them, one barrier a step. SWIGLU: a subgroup's TN column tiles are TN/2 gate tiles and the
// TN/2 up tiles of the same outputs, paired in the epilogue, so gate and up stay f32
// accumulators until silu(gate) * up. W's rows are clamped and outputs guarded, so N needs no
// multiple. Offsets of matrix loads and stores derive only from workgroup_id, subgroup_id,
// overrides and loop counters (Dawn requires them uniform). Every workgroup variable, row
// stride and matrix offset is a multiple of 16 bytes (attn_prefill_mx's matrix loads all went
// wrong on an H100 beside a 4-byte workgroup variable; test/gemm-sgmat.test.ts checks the sizes).
enable f16;
enable chromium_experimental_subgroup_matrix;
// Loop bounds and matrix offsets are uniform per subgroup by construction (subgroup_id,
// overrides); the analysis is off, as in llama.cpp's WebGPU kernels, in case it cannot prove it.
diagnostic(off, chromium.subgroup_matrix_uniformity);

struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

override SG: u32 = 32u;
override SGM: u32 = 2u;
override SGN: u32 = 2u;
override BK: u32 = 32u;
override PAD: u32 = 8u;
#if TM4
const TM: u32 = 4u;
#else
const TM: u32 = 2u;
#endif
#if TN4
const TN: u32 = 4u;
#else
const TN: u32 = 2u;
#endif
override THREADS: u32 = SGM * SGN * SG;
override BM: u32 = SGM * TM * 16u;
override BN: u32 = SGN * TN * 16u;
override LD: u32 = BK + PAD;
override XSTAGE: u32 = BM * LD;
override WSTAGE: u32 = BN * LD;
override XS_SIZE: u32 = 2u * XSTAGE;
override WS_SIZE: u32 = 2u * WSTAGE;
override CS_SIZE: u32 = SGM * SGN * 256u;
// Global loads a thread makes a step (the host keeps both whole and within the arrays below).
override XLOADS: u32 = BM * BK / 4u / THREADS;
override WLOADS: u32 = BN * BK / 8u / THREADS;
var<workgroup> xs: array<f16, XS_SIZE>;  // (stage 2, BM, LD): X[m0 + r, k0 + c]
var<workgroup> ws: array<f16, WS_SIZE>;  // (stage 2, BN, LD): W[row r of the tile, k0 + c]
var<workgroup> cs: array<f32, CS_SIZE>;  // (subgroup, 16, 16): one accumulator tile for the epilogue

var<private> xr: array<vec4<f32>, 8>;
var<private> wr: array<vec4<u32>, 8>;

// W's row for row r (0..BN) of the workgroup's tile, clamped into W (rows past its end are
// read but their outputs not written). SWIGLU: the tile is SGN blocks of TN * 16 rows, one a
// subgroup, each TN * 8 gate rows then the up rows of the same outputs.
fn wrow(wx: u32, r: u32) -> u32 {
#if SWIGLU
  let half_n = p.N / 2u;
  let q = r % (TN * 16u);
  let out = wx * (BN / 2u) + (r / (TN * 16u)) * (TN * 8u) + q % (TN * 8u);
  return min(out, half_n - 1u) + (q / (TN * 8u)) * half_n;
#else
  return min(wx * BN + r, p.N - 1u);
#endif
}

fn fetch(lid: u32, m0: u32, wx: u32, k0: u32) {
  let k4 = p.K / 4u;
  let k8 = p.K / 8u;
  for (var i = 0u; i < XLOADS; i = i + 1u) {
    let idx = lid + i * THREADS;
    xr[i] = x[min(m0 + idx / (BK / 4u), p.M - 1u) * k4 + k0 / 4u + idx % (BK / 4u)];
  }
  for (var i = 0u; i < WLOADS; i = i + 1u) {
    let idx = lid + i * THREADS;
    wr[i] = w[wrow(wx, idx / (BK / 8u)) * k8 + k0 / 8u + idx % (BK / 8u)];
  }
}

fn stage(lid: u32, s: u32) {
  for (var i = 0u; i < XLOADS; i = i + 1u) {
    let idx = lid + i * THREADS;
    let o = s * XSTAGE + (idx / (BK / 4u)) * LD + (idx % (BK / 4u)) * 4u;
    // Activations beyond f16's range saturate rather than become infinities.
    let h = vec4<f16>(clamp(xr[i], vec4<f32>(-65504.0), vec4<f32>(65504.0)));
    xs[o] = h.x;
    xs[o + 1u] = h.y;
    xs[o + 2u] = h.z;
    xs[o + 3u] = h.w;
  }
  for (var i = 0u; i < WLOADS; i = i + 1u) {
    let idx = lid + i * THREADS;
    let o = s * WSTAGE + (idx / (BK / 8u)) * LD + (idx % (BK / 8u)) * 8u;
    let v = wr[i];
    let a = bitcast<vec2<f16>>(v.x);
    let b = bitcast<vec2<f16>>(v.y);
    let c = bitcast<vec2<f16>>(v.z);
    let d = bitcast<vec2<f16>>(v.w);
    ws[o] = a.x;
    ws[o + 1u] = a.y;
    ws[o + 2u] = b.x;
    ws[o + 3u] = b.y;
    ws[o + 4u] = c.x;
    ws[o + 5u] = c.y;
    ws[o + 6u] = d.x;
    ws[o + 7u] = d.y;
  }
}

// Writes the tile in cs[at..at+256) to Y rows m.., columns n.. (plain) or, with SWIGLU, takes
// it as up and the gate values held in gv (lane's elements e = lane + j * SG).
var<private> gv: array<f32, 16>;
fn drain(at: u32, lane: u32, m: u32, n: u32) {
#if SWIGLU
  let cols = p.N / 2u;
#else
  let cols = p.N;
#endif
  for (var j = 0u; j < 256u / SG; j = j + 1u) {
    let e = lane + j * SG;
    let r = e / 16u;
    let c = e % 16u;
    if (m + r < p.M && n + c < cols) {
      var v = cs[at + e];
#if SWIGLU
      var g = gv[j];
#if BIAS
      g = g + bias[n + c];
      v = v + bias[cols + n + c];
#endif
      v = g / (1.0 + exp(-g)) * v;
#else
#if BIAS
      v = v + bias[n + c];
#endif
#endif
      let idx = (m + r) * cols + n + c;
#if ACC
      y[idx] = y[idx] + v;
#else
      y[idx] = v;
#endif
    }
  }
}

fn hold_gate(at: u32, lane: u32) {
  for (var j = 0u; j < 256u / SG; j = j + 1u) { gv[j] = cs[at + lane + j * SG]; }
}

@compute @workgroup_size(THREADS)
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(subgroup_id) sg: u32,
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let m0 = wid.y * BM;
  let sm = sg % SGM;
  let sn = sg / SGM;
  let steps = p.K / BK;

  var a00 = subgroup_matrix_result<f32, 16, 16>();
  var a01 = subgroup_matrix_result<f32, 16, 16>();
  var a10 = subgroup_matrix_result<f32, 16, 16>();
  var a11 = subgroup_matrix_result<f32, 16, 16>();
#if TN4
  var a02 = subgroup_matrix_result<f32, 16, 16>();
  var a03 = subgroup_matrix_result<f32, 16, 16>();
  var a12 = subgroup_matrix_result<f32, 16, 16>();
  var a13 = subgroup_matrix_result<f32, 16, 16>();
#endif
#if TM4
  var a20 = subgroup_matrix_result<f32, 16, 16>();
  var a21 = subgroup_matrix_result<f32, 16, 16>();
  var a30 = subgroup_matrix_result<f32, 16, 16>();
  var a31 = subgroup_matrix_result<f32, 16, 16>();
#if TN4
  var a22 = subgroup_matrix_result<f32, 16, 16>();
  var a23 = subgroup_matrix_result<f32, 16, 16>();
  var a32 = subgroup_matrix_result<f32, 16, 16>();
  var a33 = subgroup_matrix_result<f32, 16, 16>();
#endif
#endif

  fetch(lid, m0, wid.x, 0u);
  stage(lid, 0u);
  workgroupBarrier();
  for (var t = 0u; t < steps; t = t + 1u) {
    let cur = t % 2u;
    let more = t + 1u < steps;
    if (more) { fetch(lid, m0, wid.x, (t + 1u) * BK); }
    for (var kk = 0u; kk < BK; kk = kk + 16u) {
      let xb = cur * XSTAGE + sm * (TM * 16u) * LD + kk;
      let wb = cur * WSTAGE + sn * (TN * 16u) * LD + kk;
      // Right: W's rows as columns (column-major), both from this stage.
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb, LD);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + 16u * LD, LD);
#if TN4
      let b2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + 32u * LD, LD);
      let b3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, wb + 48u * LD, LD);
#endif
      let l0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb, LD);
      a00 = subgroupMatrixMultiplyAccumulate(l0, b0, a00);
      a01 = subgroupMatrixMultiplyAccumulate(l0, b1, a01);
#if TN4
      a02 = subgroupMatrixMultiplyAccumulate(l0, b2, a02);
      a03 = subgroupMatrixMultiplyAccumulate(l0, b3, a03);
#endif
      let l1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + 16u * LD, LD);
      a10 = subgroupMatrixMultiplyAccumulate(l1, b0, a10);
      a11 = subgroupMatrixMultiplyAccumulate(l1, b1, a11);
#if TN4
      a12 = subgroupMatrixMultiplyAccumulate(l1, b2, a12);
      a13 = subgroupMatrixMultiplyAccumulate(l1, b3, a13);
#endif
#if TM4
      let l2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + 32u * LD, LD);
      a20 = subgroupMatrixMultiplyAccumulate(l2, b0, a20);
      a21 = subgroupMatrixMultiplyAccumulate(l2, b1, a21);
#if TN4
      a22 = subgroupMatrixMultiplyAccumulate(l2, b2, a22);
      a23 = subgroupMatrixMultiplyAccumulate(l2, b3, a23);
#endif
      let l3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, xb + 48u * LD, LD);
      a30 = subgroupMatrixMultiplyAccumulate(l3, b0, a30);
      a31 = subgroupMatrixMultiplyAccumulate(l3, b1, a31);
#if TN4
      a32 = subgroupMatrixMultiplyAccumulate(l3, b2, a32);
      a33 = subgroupMatrixMultiplyAccumulate(l3, b3, a33);
#endif
#endif
    }
    // The other stage was last read a step ago, before the previous barrier.
    if (more) { stage(lid, 1u - cur); }
    workgroupBarrier();
  }

  // Epilogue: each tile through this subgroup's part of cs to Y. SWIGLU: the gate tile first
  // (its values kept in registers), then the up tile of the same outputs.
  let mr = m0 + sm * (TM * 16u);
  let at = sg * 256u;
#if SWIGLU
  let nc = wid.x * (BN / 2u) + sn * (TN * 8u);
#if TN4
  subgroupMatrixStore<row_major>(&cs, at, a00, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a02, 16u); workgroupBarrier(); drain(at, lane, mr, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a01, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a03, 16u); workgroupBarrier(); drain(at, lane, mr, nc + 16u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a10, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a12, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a11, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a13, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc + 16u); workgroupBarrier();
#if TM4
  subgroupMatrixStore<row_major>(&cs, at, a20, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a22, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a21, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a23, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc + 16u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a30, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a32, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a31, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a33, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc + 16u); workgroupBarrier();
#endif
#else
  subgroupMatrixStore<row_major>(&cs, at, a00, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a01, 16u); workgroupBarrier(); drain(at, lane, mr, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a10, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a11, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc); workgroupBarrier();
#if TM4
  subgroupMatrixStore<row_major>(&cs, at, a20, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a21, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a30, 16u); workgroupBarrier(); hold_gate(at, lane); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a31, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc); workgroupBarrier();
#endif
#endif
#else
  let nc = wid.x * BN + sn * (TN * 16u);
  subgroupMatrixStore<row_major>(&cs, at, a00, 16u); workgroupBarrier(); drain(at, lane, mr, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a01, 16u); workgroupBarrier(); drain(at, lane, mr, nc + 16u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a10, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a11, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc + 16u); workgroupBarrier();
#if TN4
  subgroupMatrixStore<row_major>(&cs, at, a02, 16u); workgroupBarrier(); drain(at, lane, mr, nc + 32u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a03, 16u); workgroupBarrier(); drain(at, lane, mr, nc + 48u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a12, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc + 32u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a13, 16u); workgroupBarrier(); drain(at, lane, mr + 16u, nc + 48u); workgroupBarrier();
#endif
#if TM4
  subgroupMatrixStore<row_major>(&cs, at, a20, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a21, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc + 16u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a30, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a31, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc + 16u); workgroupBarrier();
#if TN4
  subgroupMatrixStore<row_major>(&cs, at, a22, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc + 32u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a23, 16u); workgroupBarrier(); drain(at, lane, mr + 32u, nc + 48u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a32, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc + 32u); workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, a33, 16u); workgroupBarrier(); drain(at, lane, mr + 48u, nc + 48u); workgroupBarrier();
#endif
#endif
#endif
}
